//! The robust lock word ([`RawLock`]) and the non-recursive [`Lock`]
//! (Python's `multiprocessing.Lock`).
//!
//! The word follows the kernel's robust futex format (see the module docs
//! of `sync-objects`): the holder's pid in bits 0-29, `OWNER_DIED` in bit 30,
//! `WAITERS` in bit 31; 0 is free. Taking the lock is one compare-and-swap
//! from a free word to the caller's pid, so the owner is recorded in the
//! same atomic step. Contended acquirers set `WAITERS` before sleeping on
//! the word; a release swaps the word to 0 and makes the wake system call
//! only if `WAITERS` was set. A sleeper that wakes and takes the lock sets
//! `WAITERS` again, since other sleepers may remain (the classic three-state
//! futex mutex: at most one wake call too many per contended hand-over).
//!
//! Layout of a `Lock` (after the 24-byte header):
//!
//! ```text
//!  24  4  lock word
//!  28  4  holder's thread id (recursive locks; 0 otherwise)
//!  32  8  holder's pid << 32 | low 32 bits of its start time
//! ```
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `lock-handoff`: `unlock`'s Release compare-and-swap of the lock word
//!   publishes the critical section to the next holder's Acquire
//!   compare-and-swap (taking over a dead holder's lock is an Acquire too,
//!   and sees what it stored before dying).

use super::{
    sync_object_common, Acquired, AliveFn, Header, Me, ObjectError, Placed, ReleaseError, Slept, WaitError, Waiter,
    LOCK_SPIN,
};
use shm_primitives::futex;
use shm_primitives::handle::Kind;
use shm_primitives::process::ProcessId;
use shm_primitives::region::Region;
use shm_primitives::sync::{spin_loop, AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

/// Someone may be sleeping on the word: a release must wake.
pub(crate) const WAITERS: u32 = 1 << 31;
/// The holder took the lock over from a dead process.
pub(crate) const OWNER_DIED: u32 = 1 << 30;
/// The holder's pid.
pub(crate) const PID_MASK: u32 = OWNER_DIED - 1;

/// A robust process-shared lock word with its owner record.
#[repr(C)]
pub struct RawLock {
    word: AtomicU32,
    /// Holder's thread id, maintained by recursive locks (0: none).
    pub(crate) tid: AtomicU32,
    /// Holder's `pid << 32 | start_lo`, written just after taking the word.
    stamp: AtomicU64,
}

impl Default for RawLock {
    fn default() -> RawLock {
        RawLock::new()
    }
}

impl fmt::Debug for RawLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawLock").field("holder", &self.holder()).finish_non_exhaustive()
    }
}

impl RawLock {
    /// A free lock (all zero, like one in fresh shared memory).
    #[inline]
    pub fn new() -> RawLock {
        RawLock { word: AtomicU32::new(0), tid: AtomicU32::new(0), stamp: AtomicU64::new(0) }
    }

    fn record(&self, me: &Me) {
        // Relaxed: the stamp is only a hint for liveness checks, which fall
        // back to a pid-only check when its pid does not match the word.
        self.stamp.store(me.stamp(), Ordering::Relaxed);
    }

    /// Pid of the holder, if held.
    pub fn holder(&self) -> Option<u32> {
        // Relaxed: a snapshot for reporting; it synchronises nothing.
        let pid = self.word.load(Ordering::Relaxed) & PID_MASK;
        (pid != 0).then_some(pid)
    }

    /// Whether the current holder took the lock over from a dead process.
    pub fn owner_died_flag(&self) -> bool {
        // Relaxed: a snapshot for reporting.
        self.word.load(Ordering::Relaxed) & OWNER_DIED != 0
    }

    /// If the word still reads `v` and its holder is dead, take the lock.
    fn take_if_dead(&self, v: u32, me: &Me, alive: AliveFn) -> Option<Acquired> {
        let pid = v & PID_MASK;
        if pid == 0 {
            return None;
        }
        // Relaxed: see `record`; a stale stamp only weakens the check to
        // pid-only.
        let holder = match ProcessId::from_stamp(self.stamp.load(Ordering::Relaxed)) {
            Some(p) if p.pid == pid => p,
            _ => ProcessId::pid_only(pid),
        };
        if alive(&holder) {
            return None;
        }
        // SYNC POINT lock-handoff: Acquire, like any acquisition; the dead
        // holder never released, so only what it stored before dying is seen.
        let new = me.process.pid | OWNER_DIED | (v & WAITERS);
        match self.word.compare_exchange(v, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => {
                self.record(me);
                Some(Acquired::OwnerDied { pid })
            }
            Err(_) => None,
        }
    }

    /// Take the lock if it is free or its holder is dead.
    #[inline]
    pub fn try_lock(&self, me: &Me, alive: AliveFn) -> Option<Acquired> {
        // Relaxed: a first guess, confirmed by the compare-and-swap.
        let mut v = self.word.load(Ordering::Relaxed);
        loop {
            if v & PID_MASK == 0 {
                // SYNC POINT lock-handoff: pairs with the Release in
                // `unlock`: the previous holder's writes happen-before ours.
                match self.word.compare_exchange(
                    v,
                    me.process.pid | (v & WAITERS),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.record(me);
                        return Some(Acquired::Normal);
                    }
                    Err(cur) => {
                        v = cur;
                        continue;
                    }
                }
            }
            if let Some(a) = self.take_if_dead(v, me, alive) {
                return Some(a);
            }
            // Relaxed: a re-read after a lost race, confirmed by a CAS.
            let cur = self.word.load(Ordering::Relaxed);
            if cur == v {
                return None;
            }
            v = cur;
        }
    }

    /// Take the lock, sleeping while it is held by a live process.
    #[inline]
    pub fn lock(&self, me: &Me, alive: AliveFn, w: &mut Waiter<'_>) -> Result<Acquired, WaitError> {
        // SYNC POINT lock-handoff: as in `try_lock`.
        if self.word.compare_exchange(0, me.process.pid, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.record(me);
            return Ok(Acquired::Normal);
        }
        for _ in 0..LOCK_SPIN {
            spin_loop();
            // Relaxed: polling; the CAS below synchronises.
            let v = self.word.load(Ordering::Relaxed);
            if v & PID_MASK == 0
                // SYNC POINT lock-handoff: as in `try_lock`.
                && self.word.compare_exchange(v, me.process.pid | (v & WAITERS), Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                self.record(me);
                return Ok(Acquired::Normal);
            }
        }
        let mut slept = false;
        loop {
            // Relaxed: every decision below is confirmed by a CAS, or by the
            // futex comparing the word atomically with going to sleep.
            let mut v = self.word.load(Ordering::Relaxed);
            if v & PID_MASK == 0 {
                // After sleeping we cannot know whether others still sleep,
                // so keep WAITERS set: the next release wakes one of them.
                let new = me.process.pid | if slept { WAITERS } else { v & WAITERS };
                // SYNC POINT lock-handoff: as in `try_lock`.
                if self.word.compare_exchange(v, new, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    self.record(me);
                    return Ok(Acquired::Normal);
                }
                continue;
            }
            if v & WAITERS == 0 {
                // Relaxed: announcing ourselves needs no ordering beyond the
                // word's own modification order: a release either sees the
                // bit (and wakes) or changes the word first (and our futex
                // wait, which compares the word, does not sleep).
                if self.word.compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err() {
                    continue;
                }
                v |= WAITERS;
            }
            match w.sleep(&self.word, v) {
                Ok(Slept::Woken) => slept = true,
                Ok(Slept::SliceEnd) => {
                    slept = true;
                    if let Some(a) = self.take_if_dead(v, me, alive) {
                        return Ok(a);
                    }
                }
                Err(e) => {
                    if e == WaitError::TimedOut {
                        // One last look: free, or held by the dead.
                        if let Some(a) = self.try_lock(me, alive) {
                            return Ok(a);
                        }
                    }
                    // We may have consumed a wake meant for the next sleeper:
                    // if the lock is free, pass it on.
                    // Relaxed: a heuristic; an extra wake is harmless.
                    if slept && self.word.load(Ordering::Relaxed) & PID_MASK == 0 {
                        futex::wake(&self.word, 1);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Release the lock, whoever holds it.
    #[inline]
    pub fn unlock(&self) -> Result<(), ReleaseError> {
        // Relaxed: a first guess, confirmed by the compare-and-swap.
        let mut v = self.word.load(Ordering::Relaxed);
        loop {
            if v & PID_MASK == 0 {
                return Err(ReleaseError::NotHeld);
            }
            // SYNC POINT lock-handoff: Release publishes the critical
            // section to the next acquirer's Acquire CAS.
            match self.word.compare_exchange(v, 0, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => {
                    if v & WAITERS != 0 {
                        futex::wake(&self.word, 1);
                    }
                    return Ok(());
                }
                Err(cur) => v = cur,
            }
        }
    }
}

#[repr(C)]
struct LockShared {
    header: Header,
    raw: RawLock,
}

/// A process-shared, non-recursive lock: `multiprocessing.Lock`.
///
/// Any thread or process may release it while it is held (it is a
/// semaphore of maximum value 1); releasing it when it is free is an error.
pub struct Lock<R: Region> {
    p: Placed<R, LockShared>,
}

sync_object_common!(Lock, LockShared, Kind::Lock);

impl<R: Region> Lock<R> {
    /// Bytes a lock occupies in its region.
    pub const SIZE: usize = super::footprint::<LockShared>();

    /// Create a free lock at `offset` of `region`.
    ///
    /// # Safety
    ///
    /// Nothing else may use the [`Lock::SIZE`] bytes at `offset` during or
    /// after the call, and no other thread or process may touch them until
    /// this returns.
    pub unsafe fn init(region: R, offset: usize, id: u64, generation: u64) -> Result<Lock<R>, ObjectError> {
        let shared = LockShared { header: Header::new(Kind::Lock, id, generation), raw: RawLock::new() };
        // SAFETY: forwarded from the caller.
        let p = unsafe { Placed::init(region, offset, Self::SIZE, shared)? };
        p.get().header.publish();
        Ok(Lock { p })
    }

    /// Attach to the lock at `offset`, checking kind, id and generation.
    pub fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Lock<R>, ObjectError> {
        let p = Placed::<R, LockShared>::attach(region, offset, Self::SIZE)?;
        p.get().header.check(Kind::Lock, id, generation)?;
        Ok(Lock { p })
    }

    pub(crate) fn raw(&self) -> &RawLock {
        &self.p.get().raw
    }

    /// Acquire, waiting at most `timeout` (`None`: no limit).
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Acquired, WaitError> {
        self.raw().lock(&Me::current(), ProcessId::is_alive, &mut Waiter::new(timeout, None))
    }

    /// [`Lock::acquire`] with an interrupt hook, called when a signal
    /// interrupts the sleep and at least every liveness slice; returning
    /// `false` gives up with [`WaitError::Interrupted`].
    pub fn acquire_with(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Acquired, WaitError> {
        self.raw().lock(&Me::current(), ProcessId::is_alive, &mut Waiter::new(timeout, Some(interrupt)))
    }

    /// Acquire if free (or held by a dead process), without waiting.
    pub fn try_acquire(&self) -> Option<Acquired> {
        self.raw().try_lock(&Me::current(), ProcessId::is_alive)
    }

    /// Release. Fails with [`ReleaseError::NotHeld`] if the lock is free.
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.raw().unlock()
    }

    /// Whether the lock is held (by anyone).
    pub fn is_locked(&self) -> bool {
        self.raw().holder().is_some()
    }

    /// Pid of the holding process, if held.
    pub fn holder(&self) -> Option<u32> {
        self.raw().holder()
    }

    /// Whether the holder took the lock over from a dead process.
    pub fn holder_recovered(&self) -> bool {
        self.raw().owner_died_flag()
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::super::test_util::{region, watchdog};
    use super::*;
    use std::sync::Arc;

    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn layout_matches_the_docs() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<Header>(), 24);
        assert_eq!(offset_of!(LockShared, raw), 24);
        assert_eq!(offset_of!(RawLock, tid), 4);
        assert_eq!(offset_of!(RawLock, stamp), 8);
        assert_eq!(size_of::<RawLock>(), 16);
        assert_eq!(Lock::<shm_primitives::region::HeapRegion>::SIZE, 64);
    }

    #[test]
    fn python_lock_semantics() {
        let r = region();
        // SAFETY: a fresh region used only by this lock.
        let l = unsafe { Lock::init(r, 0, 7, 1) }.unwrap();
        assert!(!l.is_locked());
        assert_eq!(l.acquire(None), Ok(Acquired::Normal));
        assert_eq!(l.holder(), Some(std::process::id()));
        assert_eq!(l.try_acquire(), None);
        assert_eq!(l.acquire(Some(Duration::from_millis(20))), Err(WaitError::TimedOut));
        assert_eq!(l.release(), Ok(()));
        assert_eq!(l.release(), Err(ReleaseError::NotHeld));
        assert_eq!(l.try_acquire(), Some(Acquired::Normal));
        l.release().unwrap();
    }

    #[test]
    fn any_thread_may_release() {
        let r = region();
        // SAFETY: a fresh region used only by this lock.
        let l = Arc::new(unsafe { Lock::init(r, 0, 7, 1) }.unwrap());
        l.acquire(None).unwrap();
        let l2 = Arc::clone(&l);
        std::thread::spawn(move || l2.release().unwrap()).join().unwrap();
        assert!(!l.is_locked());
    }

    #[test]
    fn mutual_exclusion_between_threads() {
        watchdog(|| {
            let r = region();
            // SAFETY: a fresh region; offset 0 for the lock, the counter at
            // 1024 is touched only under the lock.
            let l = Arc::new(unsafe { Lock::init(Arc::clone(&r), 0, 1, 1) }.unwrap());
            let counter = r.base().as_ptr() as usize + 1024;
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let l = Arc::clone(&l);
                    std::thread::spawn(move || {
                        for _ in 0..5000 {
                            l.acquire(None).unwrap();
                            let p = counter as *mut u64;
                            // SAFETY: in-bounds, aligned, and only touched
                            // while holding the lock.
                            unsafe { p.write_volatile(p.read_volatile() + 1) };
                            l.release().unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            // SAFETY: all writers joined.
            assert_eq!(unsafe { (counter as *const u64).read() }, 20000);
        });
    }

    #[test]
    fn dead_holder_is_taken_over() {
        watchdog(|| {
            let r = region();
            // SAFETY: a fresh region used only by this lock.
            let l = unsafe { Lock::init(r, 0, 7, 1) }.unwrap();
            let ghost = Me { process: ProcessId::pid_only(dead_pid()), tid: 0 };
            assert_eq!(l.raw().try_lock(&ghost, ProcessId::is_alive), Some(Acquired::Normal));
            // Non-blocking acquire checks the holder at once.
            assert_eq!(l.try_acquire(), Some(Acquired::OwnerDied { pid: ghost.process.pid }));
            assert!(l.holder_recovered());
            l.release().unwrap();
            assert!(!l.holder_recovered());
            // A blocking acquire notices within a liveness slice.
            assert_eq!(l.raw().try_lock(&ghost, ProcessId::is_alive), Some(Acquired::Normal));
            assert_eq!(l.acquire(Some(Duration::from_secs(10))), Ok(Acquired::OwnerDied { pid: ghost.process.pid }));
            l.release().unwrap();
            // A timed acquire shorter than a slice still checks at its end.
            assert_eq!(l.raw().try_lock(&ghost, ProcessId::is_alive), Some(Acquired::Normal));
            assert_eq!(l.acquire(Some(Duration::from_millis(1))), Ok(Acquired::OwnerDied { pid: ghost.process.pid }));
        });
    }

    #[test]
    fn reused_pid_is_not_the_holder() {
        let r = region();
        // SAFETY: a fresh region used only by this lock.
        let l = unsafe { Lock::init(r, 0, 7, 1) }.unwrap();
        // Our own pid, but with another start time: a previous process that
        // had this pid.
        let me = Me::current();
        let old = Me { process: ProcessId { start: me.process.start + 1, ..me.process }, ..me };
        assert!(l.raw().try_lock(&old, ProcessId::is_alive).is_some());
        assert_eq!(l.try_acquire(), Some(Acquired::OwnerDied { pid: me.process.pid }));
    }

    #[test]
    fn interrupt_hook_stops_a_wait() {
        watchdog(|| {
            let r = region();
            // SAFETY: a fresh region used only by this lock.
            let l = unsafe { Lock::init(r, 0, 7, 1) }.unwrap();
            l.acquire(None).unwrap();
            let mut calls = 0;
            let mut hook = || {
                calls += 1;
                calls < 3
            };
            assert_eq!(l.acquire_with(None, &mut hook), Err(WaitError::Interrupted));
            assert_eq!(calls, 3);
            assert!(l.is_locked());
        });
    }

    #[test]
    fn attach_validates() {
        let r = region();
        // SAFETY: a fresh region; the lock at 0 and nothing else.
        let _l = unsafe { Lock::init(Arc::clone(&r), 0, 7, 3) }.unwrap();
        assert!(Lock::attach(Arc::clone(&r), 0, 7, 3).is_ok());
        assert!(matches!(Lock::attach(Arc::clone(&r), 0, 8, 3), Err(ObjectError::IdMismatch { .. })));
        assert!(matches!(Lock::attach(Arc::clone(&r), 0, 7, 4), Err(ObjectError::GenerationMismatch { .. })));
        assert!(matches!(Lock::attach(Arc::clone(&r), 64, 7, 3), Err(ObjectError::BadMagic { found: 0 })));
        assert!(matches!(Lock::attach(Arc::clone(&r), 3, 7, 3), Err(ObjectError::Misaligned { .. })));
        assert!(matches!(Lock::attach(Arc::clone(&r), r.len(), 7, 3), Err(ObjectError::OutOfBounds { .. })));
        assert!(matches!(
            super::super::Event::attach(Arc::clone(&r), 0, 7, 3),
            Err(ObjectError::WrongKind { expected: Kind::Event, found: 2 })
        ));
    }
}
