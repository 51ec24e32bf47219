//! Events: `multiprocessing.Event`.
//!
//! One futex word holds the flag in bit 0 and, in bits 1-31, a count of the
//! times the flag went from clear to set. A waiter records the word when it
//! starts and returns `true` as soon as the word differs: since clearing an
//! already clear word changes nothing, any change means a `set` happened, so
//! a waiter is not stranded by a `set` quickly followed by a `clear` (as
//! with `threading.Event`). Waiters announce themselves in a sleeper count
//! so `set` only makes the wake system call when someone sleeps; the
//! announce / re-check / sleep handshake is Dekker's with a `SeqCst` fence
//! on each side, as in the semaphore.
//!
//! Layout (after the 24-byte header):
//!
//! ```text
//!  24  4  set count << 1 | flag
//!  28  4  sleepers
//! ```
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `event-set`: `set`'s Release compare-and-swap of the flag publishes
//!   what the setter wrote to a waiter's (or `is_set`'s) Acquire load that
//!   sees the flag.
//! - `event-announce`: Dekker's pattern, not an acquire/release edge: a
//!   waiter counts itself as a sleeper, a SeqCst fence, then re-reads the
//!   flag; `set` changes the flag, a SeqCst fence, then reads the sleeper
//!   count: one of the two sees the other, so no waiter sleeps through a
//!   `set`.

use super::{sync_object_common, Header, Interrupted, ObjectError, Placed, Slept, WaitError, Waiter, SIGNAL_SPIN};
use shm_primitives::futex;
use shm_primitives::handle::Kind;
use shm_primitives::region::Region;
use shm_primitives::sync::{fence, spin_loop, AtomicU32, Ordering};
use std::time::Duration;

#[repr(C)]
struct EventShared {
    header: Header,
    word: AtomicU32,
    sleepers: AtomicU32,
}

/// A process-shared event flag.
pub struct Event<R: Region> {
    p: Placed<R, EventShared>,
}

sync_object_common!(Event, EventShared, Kind::Event);

impl<R: Region> Event<R> {
    /// Bytes an event occupies in its region.
    pub const SIZE: usize = super::footprint::<EventShared>();

    /// Create a clear event at `offset` of `region`.
    ///
    /// # Safety
    ///
    /// Nothing else may use the [`Event::SIZE`] bytes at `offset` during or
    /// after the call, and no other thread or process may touch them until
    /// this returns.
    pub unsafe fn init(region: R, offset: usize, id: u64, generation: u64) -> Result<Event<R>, ObjectError> {
        let shared = EventShared {
            header: Header::new(Kind::Event, id, generation),
            word: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        };
        // SAFETY: forwarded from the caller.
        let p = unsafe { Placed::init(region, offset, Self::SIZE, shared)? };
        p.get().header.publish();
        Ok(Event { p })
    }

    /// Attach to the event at `offset`, checking kind, id and generation.
    pub fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Event<R>, ObjectError> {
        let p = Placed::<R, EventShared>::attach(region, offset, Self::SIZE)?;
        p.get().header.check(Kind::Event, id, generation)?;
        Ok(Event { p })
    }

    fn s(&self) -> &EventShared {
        self.p.get()
    }

    /// Set the flag and wake every waiter.
    pub fn set(&self) {
        let s = self.s();
        // Relaxed: a first guess, confirmed by the compare-and-swap.
        let mut v = s.word.load(Ordering::Relaxed);
        loop {
            // Setting a set flag still writes the word, so a waiter that
            // sees it set is ordered after this call too.
            let new = if v & 1 == 1 { v } else { v.wrapping_add(2) | 1 };
            // SYNC POINT event-set: Release: what we wrote before `set` is seen
            // by a waiter whose Acquire load sees the flag.
            match s.word.compare_exchange_weak(v, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(cur) => v = cur,
            }
        }
        if v & 1 == 1 {
            return;
        }
        // SYNC POINT event-announce: the fence orders the set before the
        // sleeper check (Dekker with `wait_since`); the load is Relaxed
        // because the fences do the ordering.
        fence(Ordering::SeqCst);
        if s.sleepers.load(Ordering::Relaxed) > 0 {
            futex::wake_all(&s.word);
        }
    }

    /// Clear the flag.
    pub fn clear(&self) {
        // Relaxed: clearing publishes nothing; waits that see the flag set
        // synchronise with the `set` that wrote it.
        self.s().word.fetch_and(!1, Ordering::Relaxed);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        // SYNC POINT event-set: Acquire pairs with the setter's SeqCst CAS.
        self.s().word.load(Ordering::Acquire) & 1 == 1
    }

    /// The word a wait starting now compares against.
    pub(crate) fn snapshot(&self) -> u32 {
        // SYNC POINT event-set: Acquire, as in `is_set`.
        self.s().word.load(Ordering::Acquire)
    }

    fn wait_inner(&self, w: &mut Waiter<'_>) -> Result<bool, Interrupted> {
        self.wait_since(self.snapshot(), w)
    }

    /// Wait until the flag is set or has been set since the word read `v0`.
    pub(crate) fn wait_since(&self, v0: u32, w: &mut Waiter<'_>) -> Result<bool, Interrupted> {
        let s = self.s();
        if v0 & 1 == 1 {
            return Ok(true);
        }
        for _ in 0..SIGNAL_SPIN {
            spin_loop();
            // SYNC POINT event-set: as above.
            if s.word.load(Ordering::Acquire) != v0 {
                return Ok(true);
            }
        }
        // SYNC POINT event-announce: ordered before the re-check below by the
        // SeqCst fence (Dekker with `set`).
        s.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let r = loop {
            // SYNC POINT event-set: Acquire, as in `is_set`.
            if s.word.load(Ordering::Acquire) != v0 {
                break Ok(true);
            }
            match w.sleep(&s.word, v0) {
                Ok(Slept::Woken) | Ok(Slept::SliceEnd) => {}
                Err(WaitError::Interrupted) => break Err(Interrupted),
                // Timed out: the final re-check happened at the loop top.
                Err(_) => break Ok(false),
            }
        };
        // Relaxed: retracting only makes setters skip a wake we no longer
        // need.
        s.sleepers.fetch_sub(1, Ordering::Relaxed);
        r
    }

    /// Wait until the flag is set, at most `timeout` (`None`: no limit).
    /// Returns whether it was set (`false`: timed out).
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        match self.wait_inner(&mut Waiter::new(timeout, None).unwatched()) {
            Ok(set) => set,
            Err(Interrupted) => unreachable!("no interrupt hook"),
        }
    }

    /// [`Event::wait`] with an interrupt hook (see
    /// [`super::Lock::acquire_with`]).
    pub fn wait_with(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<bool, Interrupted> {
        self.wait_inner(&mut Waiter::new(timeout, Some(interrupt)).unwatched())
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::super::test_util::{region, watchdog};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn layout_matches_the_docs() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(EventShared, word), 24);
        assert_eq!(offset_of!(EventShared, sleepers), 28);
    }

    #[test]
    fn python_event_semantics() {
        // SAFETY: a fresh region used only by this event.
        let e = unsafe { Event::init(region(), 0, 1, 1) }.unwrap();
        assert!(!e.is_set());
        assert!(!e.wait(Some(Duration::ZERO)));
        assert!(!e.wait(Some(Duration::from_millis(20))));
        e.set();
        assert!(e.is_set());
        assert!(e.wait(None));
        assert!(e.wait(Some(Duration::from_millis(20))));
        e.set();
        e.clear();
        assert!(!e.is_set());
        assert!(!e.wait(Some(Duration::from_millis(1))));
    }

    #[test]
    fn set_wakes_every_waiter() {
        watchdog(|| {
            // SAFETY: a fresh region used only by this event.
            let e = Arc::new(unsafe { Event::init(region(), 0, 1, 1) }.unwrap());
            let ts: Vec<_> = (0..4)
                .map(|_| {
                    let e = Arc::clone(&e);
                    std::thread::spawn(move || e.wait(None))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            e.set();
            e.clear();
            // Even though the flag is clear again, every waiter saw the set.
            for t in ts {
                assert!(t.join().unwrap());
            }
            assert_eq!(e.s().sleepers.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn interrupt_stops_wait() {
        // SAFETY: a fresh region used only by this event.
        let e = unsafe { Event::init(region(), 0, 1, 1) }.unwrap();
        let mut n = 0;
        assert_eq!(
            e.wait_with(None, &mut || {
                n += 1;
                n < 2
            }),
            Err(Interrupted)
        );
    }
}
