//! Counting semaphores, unbounded or bounded: `multiprocessing.Semaphore`
//! and `BoundedSemaphore`.
//!
//! The value is a futex word. Acquirers that find it 0 announce themselves
//! in a sleeper count before sleeping on it; a release only makes the wake
//! system call when the count is non-zero. The announce / re-check / sleep
//! handshake is Dekker's: the acquirer increments the sleeper count, issues
//! a `SeqCst` fence and reads the value; the releaser raises the value,
//! issues a `SeqCst` fence and reads the sleeper count. The two fences are
//! totally ordered, so at least one side sees the other's write: either the
//! releaser wakes, or the acquirer sees the unit (and the futex, which
//! compares the value as it queues the sleeper, closes the rest of the gap).
//!
//! Layout (after the 24-byte header):
//!
//! ```text
//!  24  4  value
//!  28  4  sleepers
//!  32  4  maximum value (SEM_VALUE_MAX when unbounded)
//! ```
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `sem-post`: `release`'s Release compare-and-swap of the value publishes
//!   the releaser's writes to the Acquire compare-and-swap that takes the
//!   unit.
//! - `sem-announce`: Dekker's pattern, as `event-announce`: the sleeper
//!   count and the value, each written before a SeqCst fence and the other
//!   read after it.

use super::{sync_object_common, Header, ObjectError, Placed, ReleaseError, Slept, WaitError, Waiter, SIGNAL_SPIN};
use shm_primitives::futex;
use shm_primitives::handle::Kind;
use shm_primitives::region::Region;
use shm_primitives::sync::{fence, spin_loop, AtomicU32, Ordering};
use std::time::Duration;

/// Largest value a semaphore may hold (as POSIX semaphores on Linux).
pub const SEM_VALUE_MAX: u32 = i32::MAX as u32;

#[repr(C)]
struct SemShared {
    header: Header,
    value: AtomicU32,
    sleepers: AtomicU32,
    max: AtomicU32,
    bounded: AtomicU32,
}

/// A process-shared counting semaphore.
pub struct Semaphore<R: Region> {
    p: Placed<R, SemShared>,
}

sync_object_common!(Semaphore, SemShared, Kind::Semaphore);

impl<R: Region> Semaphore<R> {
    /// Bytes a semaphore occupies in its region.
    pub const SIZE: usize = super::footprint::<SemShared>();

    /// Create a semaphore with `value`, bounded by `max` if given (releasing
    /// it past `max` is then an error).
    ///
    /// # Safety
    ///
    /// Nothing else may use the [`Semaphore::SIZE`] bytes at `offset` during
    /// or after the call, and no other thread or process may touch them
    /// until this returns.
    pub unsafe fn init(
        region: R,
        offset: usize,
        id: u64,
        generation: u64,
        value: u32,
        max: Option<u32>,
    ) -> Result<Semaphore<R>, ObjectError> {
        if value > max.unwrap_or(SEM_VALUE_MAX) {
            return Err(ObjectError::InvalidParameter("semaphore value above its maximum"));
        }
        if max.is_some_and(|m| m > SEM_VALUE_MAX || m == 0) {
            return Err(ObjectError::InvalidParameter("semaphore maximum must be in 1..=2147483647"));
        }
        let shared = SemShared {
            header: Header::new(Kind::Semaphore, id, generation),
            value: AtomicU32::new(value),
            sleepers: AtomicU32::new(0),
            max: AtomicU32::new(max.unwrap_or(SEM_VALUE_MAX)),
            bounded: AtomicU32::new(u32::from(max.is_some())),
        };
        // SAFETY: forwarded from the caller.
        let p = unsafe { Placed::init(region, offset, Self::SIZE, shared)? };
        p.get().header.publish();
        Ok(Semaphore { p })
    }

    /// Attach to the semaphore at `offset`, checking kind, id and generation.
    pub fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Semaphore<R>, ObjectError> {
        let p = Placed::<R, SemShared>::attach(region, offset, Self::SIZE)?;
        p.get().header.check(Kind::Semaphore, id, generation)?;
        let s = p.get();
        // Relaxed: immutable fields, ordered after the header's Acquire.
        let max = s.max.load(Ordering::Relaxed);
        if max == 0 || max > SEM_VALUE_MAX || s.bounded.load(Ordering::Relaxed) > 1 {
            return Err(ObjectError::Corrupt("semaphore maximum"));
        }
        Ok(Semaphore { p })
    }

    fn s(&self) -> &SemShared {
        self.p.get()
    }

    /// Take one unit if the value is positive.
    pub fn try_acquire(&self) -> bool {
        let s = self.s();
        // Relaxed: a first guess, confirmed by the compare-and-swap.
        let mut v = s.value.load(Ordering::Relaxed);
        while v > 0 {
            // SYNC POINT sem-post: Acquire pairs with the Release in
            // `release`: what the releaser did before it happens-before our
            // return.
            match s.value.compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(cur) => v = cur,
            }
        }
        false
    }

    fn acquire_inner(&self, w: &mut Waiter<'_>) -> Result<(), WaitError> {
        if self.try_acquire() {
            return Ok(());
        }
        for _ in 0..SIGNAL_SPIN {
            spin_loop();
            if self.try_acquire() {
                return Ok(());
            }
        }
        let s = self.s();
        // SYNC POINT sem-announce: Relaxed increment, ordered before our next
        // read of the value by the SeqCst fence (Dekker, see module docs).
        s.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut woken = false;
        let r = loop {
            if self.try_acquire() {
                break Ok(());
            }
            match w.sleep(&s.value, 0) {
                Ok(Slept::Woken) | Ok(Slept::SliceEnd) => woken = true,
                Err(e) => {
                    if e == WaitError::TimedOut && self.try_acquire() {
                        break Ok(());
                    }
                    break Err(e);
                }
            }
        };
        // Relaxed: retracting only makes releasers skip a wake we no
        // longer need.
        s.sleepers.fetch_sub(1, Ordering::Relaxed);
        // Relaxed: a heuristic; an extra wake is harmless.
        if r.is_err() && woken && s.value.load(Ordering::Relaxed) > 0 && s.sleepers.load(Ordering::Relaxed) > 0 {
            // We may have taken the wake of a unit we are not using: pass it on.
            futex::wake(&s.value, 1);
        }
        r
    }

    /// Take one unit, waiting at most `timeout` (`None`: no limit) for the
    /// value to become positive. Fails only with [`WaitError::TimedOut`].
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<(), WaitError> {
        self.acquire_inner(&mut Waiter::new(timeout, None).unwatched())
    }

    /// [`Semaphore::acquire`] with an interrupt hook (see
    /// [`super::Lock::acquire_with`]).
    pub fn acquire_with(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<(), WaitError> {
        self.acquire_inner(&mut Waiter::new(timeout, Some(interrupt)).unwatched())
    }

    /// Give one unit back. A bounded semaphore at its maximum (and any
    /// semaphore at [`SEM_VALUE_MAX`]) fails with [`ReleaseError::Overflow`]
    /// and is unchanged.
    pub fn release(&self) -> Result<(), ReleaseError> {
        let s = self.s();
        // Relaxed: immutable after creation.
        let max = s.max.load(Ordering::Relaxed);
        // Relaxed: a first guess, confirmed by the compare-and-swap.
        let mut v = s.value.load(Ordering::Relaxed);
        loop {
            if v >= max {
                return Err(ReleaseError::Overflow { max });
            }
            // SYNC POINT sem-post: Release: our prior writes reach the
            // acquirer whose Acquire CAS takes this unit.
            match s.value.compare_exchange_weak(v, v + 1, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(cur) => v = cur,
            }
        }
        // SYNC POINT sem-announce: the fence orders the raise before the
        // sleeper check (Dekker with `acquire_inner`); the load is Relaxed
        // because the fences do the ordering.
        fence(Ordering::SeqCst);
        if s.sleepers.load(Ordering::Relaxed) > 0 {
            futex::wake(&s.value, 1);
        }
        Ok(())
    }

    /// The current value (a snapshot).
    pub fn value(&self) -> u32 {
        // Relaxed: a snapshot for reporting.
        self.s().value.load(Ordering::Relaxed)
    }

    /// Whether the value is 0 (a snapshot).
    pub fn is_zero(&self) -> bool {
        self.value() == 0
    }

    /// The maximum value if bounded.
    pub fn max(&self) -> Option<u32> {
        let s = self.s();
        // Relaxed: immutable after creation.
        (s.bounded.load(Ordering::Relaxed) == 1).then(|| s.max.load(Ordering::Relaxed))
    }

    /// Number of processes and threads announced as sleeping (a snapshot;
    /// a sleeper that died stays counted, which only costs wake calls).
    pub fn sleepers(&self) -> u32 {
        // Relaxed: a snapshot for reporting.
        self.s().sleepers.load(Ordering::Relaxed)
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
        assert_eq!(offset_of!(SemShared, value), 24);
        assert_eq!(offset_of!(SemShared, sleepers), 28);
        assert_eq!(offset_of!(SemShared, max), 32);
        assert_eq!(offset_of!(SemShared, bounded), 36);
    }

    #[test]
    fn python_semaphore_semantics() {
        // SAFETY: a fresh region used only by this semaphore.
        let s = unsafe { Semaphore::init(region(), 0, 1, 1, 2, None) }.unwrap();
        assert_eq!(s.value(), 2);
        assert_eq!(s.acquire(None), Ok(()));
        assert_eq!(s.acquire(None), Ok(()));
        assert!(s.is_zero());
        assert!(!s.try_acquire());
        assert_eq!(s.acquire(Some(Duration::from_millis(10))), Err(WaitError::TimedOut));
        for v in 1..=4 {
            s.release().unwrap();
            assert_eq!(s.value(), v);
        }
        assert_eq!(s.max(), None);
    }

    #[test]
    fn bounded_semaphore_refuses_extra_release() {
        // SAFETY: a fresh region used only by this semaphore.
        let s = unsafe { Semaphore::init(region(), 0, 1, 1, 2, Some(2)) }.unwrap();
        assert_eq!(s.release(), Err(ReleaseError::Overflow { max: 2 }));
        assert_eq!(s.value(), 2);
        s.acquire(None).unwrap();
        s.release().unwrap();
        assert_eq!(s.max(), Some(2));
        // SAFETY: as above.
        assert!(unsafe { Semaphore::init(region(), 0, 1, 1, 3, Some(2)) }.is_err());
        // SAFETY: as above.
        let full = unsafe { Semaphore::init(region(), 0, 1, 1, SEM_VALUE_MAX, None) }.unwrap();
        assert_eq!(full.release(), Err(ReleaseError::Overflow { max: SEM_VALUE_MAX }));
    }

    #[test]
    fn units_are_conserved_between_threads() {
        watchdog(|| {
            // SAFETY: a fresh region used only by this semaphore.
            let s = Arc::new(unsafe { Semaphore::init(region(), 0, 1, 1, 0, None) }.unwrap());
            let consumers: Vec<_> = (0..3)
                .map(|_| {
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || {
                        for _ in 0..2000 {
                            s.acquire(None).unwrap();
                        }
                    })
                })
                .collect();
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || {
                        for _ in 0..3000 {
                            s.release().unwrap();
                        }
                    })
                })
                .collect();
            for t in producers.into_iter().chain(consumers) {
                t.join().unwrap();
            }
            assert_eq!(s.value(), 0);
            assert_eq!(s.sleepers(), 0);
        });
    }
}
