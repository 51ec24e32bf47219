//! The recursive lock: `multiprocessing.RLock`.
//!
//! The owner is a (process, thread) pair: the lock word holds the pid (the
//! robust format of [`super::lock`]), the word beside it the thread id, and
//! a counter the recursion depth. Only the owning thread writes the thread
//! id and the counter; it clears the thread id before it releases the word,
//! so a thread never mistakes a later holder in its own process for itself.
//!
//! Layout (after the 24-byte header):
//!
//! ```text
//!  24  16  lock word, holder thread id, holder stamp (as a Lock)
//!  40  4   recursion count
//! ```

use super::lock::{RawLock, PID_MASK};
use super::{sync_object_common, Acquired, AliveFn, Header, Me, ObjectError, Placed, ReleaseError, WaitError, Waiter};
use shm_primitives::handle::Kind;
use shm_primitives::process::ProcessId;
use shm_primitives::region::Region;
use shm_primitives::sync::{AtomicU32, Ordering};
use std::time::Duration;

#[repr(C)]
struct RLockShared {
    header: Header,
    raw: RawLock,
    count: AtomicU32,
}

/// A process-shared recursive lock: `multiprocessing.RLock`.
///
/// Owned by one thread of one process; the owner may acquire it again, and
/// must release it as many times. Releasing it from another thread is an
/// error ([`ReleaseError::NotOwner`]).
pub struct RLock<R: Region> {
    p: Placed<R, RLockShared>,
}

sync_object_common!(RLock, RLockShared, Kind::RLock);

impl<R: Region> RLock<R> {
    /// Bytes a recursive lock occupies in its region.
    pub const SIZE: usize = super::footprint::<RLockShared>();

    /// Create a free recursive lock at `offset` of `region`.
    ///
    /// # Safety
    ///
    /// Nothing else may use the [`RLock::SIZE`] bytes at `offset` during or
    /// after the call, and no other thread or process may touch them until
    /// this returns.
    pub unsafe fn init(region: R, offset: usize, id: u64, generation: u64) -> Result<RLock<R>, ObjectError> {
        let shared = RLockShared {
            header: Header::new(Kind::RLock, id, generation),
            raw: RawLock::new(),
            count: AtomicU32::new(0),
        };
        // SAFETY: forwarded from the caller.
        let p = unsafe { Placed::init(region, offset, Self::SIZE, shared)? };
        p.get().header.publish();
        Ok(RLock { p })
    }

    /// Attach to the recursive lock at `offset`, checking kind, id and
    /// generation.
    pub fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<RLock<R>, ObjectError> {
        let p = Placed::<R, RLockShared>::attach(region, offset, Self::SIZE)?;
        p.get().header.check(Kind::RLock, id, generation)?;
        Ok(RLock { p })
    }

    fn s(&self) -> &RLockShared {
        self.p.get()
    }

    fn mine(&self, me: &Me) -> bool {
        let s = self.s();
        // Relaxed: if we own the lock, both words were last written by this
        // thread; if we do not, neither can read as ours (we cleared the
        // thread id before releasing, and coherence forbids reading back an
        // older value of our own).
        s.raw.holder() == Some(me.process.pid & PID_MASK) && s.raw.tid.load(Ordering::Relaxed) == me.tid
    }

    pub(crate) fn acquire_as(&self, me: &Me, alive: AliveFn, w: &mut Waiter<'_>) -> Result<Acquired, WaitError> {
        let s = self.s();
        if self.mine(me) {
            // Relaxed: only the owning thread touches the count.
            let c = s.count.load(Ordering::Relaxed);
            let c = c.checked_add(1).ok_or(WaitError::RecursionLimit)?;
            s.count.store(c, Ordering::Relaxed);
            return Ok(Acquired::Normal);
        }
        let a = s.raw.lock(me, alive, w)?;
        self.take(me, 1);
        Ok(a)
    }

    fn take(&self, me: &Me, count: u32) {
        let s = self.s();
        // Relaxed: owner-only fields, ordered by the lock word's Acquire.
        s.raw.tid.store(me.tid, Ordering::Relaxed);
        s.count.store(count, Ordering::Relaxed);
    }

    pub(crate) fn try_acquire_as(&self, me: &Me, alive: AliveFn) -> Result<Option<Acquired>, WaitError> {
        if self.mine(me) {
            return self.acquire_as(me, alive, &mut Waiter::forever()).map(Some);
        }
        Ok(self.s().raw.try_lock(me, alive).inspect(|_| self.take(me, 1)))
    }

    pub(crate) fn release_as(&self, me: &Me) -> Result<(), ReleaseError> {
        if !self.mine(me) {
            return Err(ReleaseError::NotOwner);
        }
        let s = self.s();
        // Relaxed: owner-only field.
        let c = s.count.load(Ordering::Relaxed);
        if c > 1 {
            s.count.store(c - 1, Ordering::Relaxed);
            return Ok(());
        }
        self.release_fully(me).map(|_| ())
    }

    /// Release every level; returns the depth that was held.
    pub(crate) fn release_fully(&self, me: &Me) -> Result<u32, ReleaseError> {
        if !self.mine(me) {
            return Err(ReleaseError::NotOwner);
        }
        let s = self.s();
        // Relaxed: owner-only fields; the unlock below publishes them.
        let c = s.count.load(Ordering::Relaxed);
        s.count.store(0, Ordering::Relaxed);
        s.raw.tid.store(0, Ordering::Relaxed);
        s.raw.unlock()?;
        Ok(c.max(1))
    }

    /// Acquire again after [`RLock::release_fully`], restoring the depth.
    pub(crate) fn reacquire_as(&self, me: &Me, alive: AliveFn, depth: u32) -> Acquired {
        let a = match self.s().raw.lock(me, alive, &mut Waiter::forever()) {
            Ok(a) => a,
            Err(e) => unreachable!("a wait without deadline or hook cannot fail: {e}"),
        };
        self.take(me, depth.max(1));
        a
    }

    /// Acquire, waiting at most `timeout` (`None`: no limit). An owner that
    /// acquires again just deepens the recursion.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Acquired, WaitError> {
        self.acquire_as(&Me::with_tid(), ProcessId::is_alive, &mut Waiter::new(timeout, None))
    }

    /// [`RLock::acquire`] with an interrupt hook (see [`super::Lock::acquire_with`]).
    pub fn acquire_with(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Acquired, WaitError> {
        self.acquire_as(&Me::with_tid(), ProcessId::is_alive, &mut Waiter::new(timeout, Some(interrupt)))
    }

    /// Acquire without waiting: `Ok(None)` if another live thread holds it.
    pub fn try_acquire(&self) -> Result<Option<Acquired>, WaitError> {
        self.try_acquire_as(&Me::with_tid(), ProcessId::is_alive)
    }

    /// Release one level. Fails with [`ReleaseError::NotOwner`] unless the
    /// calling thread holds the lock.
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.release_as(&Me::with_tid())
    }

    /// Whether the calling thread holds the lock (SemLock's `_is_mine()`).
    pub fn is_mine(&self) -> bool {
        self.mine(&Me::with_tid())
    }

    /// The calling thread's recursion depth, 0 if it does not hold the lock
    /// (SemLock's `_count()`).
    pub fn count(&self) -> u32 {
        if self.is_mine() {
            // Relaxed: owner-only field, read by the owner.
            self.s().count.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Whether anyone holds the lock.
    pub fn is_locked(&self) -> bool {
        self.s().raw.holder().is_some()
    }

    /// Pid of the holding process, if held.
    pub fn holder(&self) -> Option<u32> {
        self.s().raw.holder()
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
        assert_eq!(offset_of!(RLockShared, raw), 24);
        assert_eq!(offset_of!(RLockShared, count), 40);
    }

    #[test]
    fn python_rlock_semantics() {
        // SAFETY: a fresh region used only by this lock.
        let l = Arc::new(unsafe { RLock::init(region(), 0, 1, 1) }.unwrap());
        assert_eq!(l.count(), 0);
        assert!(!l.is_mine());
        for i in 1..=3 {
            assert_eq!(l.acquire(None), Ok(Acquired::Normal));
            assert_eq!(l.count(), i);
        }
        assert!(l.is_mine());
        let l2 = Arc::clone(&l);
        std::thread::spawn(move || {
            assert!(!l2.is_mine());
            assert_eq!(l2.count(), 0);
            assert_eq!(l2.try_acquire(), Ok(None));
            assert_eq!(l2.release(), Err(ReleaseError::NotOwner));
            assert_eq!(l2.acquire(Some(Duration::from_millis(10))), Err(WaitError::TimedOut));
        })
        .join()
        .unwrap();
        for _ in 0..3 {
            assert_eq!(l.release(), Ok(()));
        }
        assert_eq!(l.release(), Err(ReleaseError::NotOwner));
        assert!(!l.is_locked());
    }

    #[test]
    fn threads_of_one_process_exclude_each_other() {
        watchdog(|| {
            let r = region();
            // SAFETY: the lock at 0; the counter at 1024 is only touched
            // under the lock.
            let l = Arc::new(unsafe { RLock::init(Arc::clone(&r), 0, 1, 1) }.unwrap());
            let counter = r.base().as_ptr() as usize + 1024;
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let l = Arc::clone(&l);
                    std::thread::spawn(move || {
                        for _ in 0..3000 {
                            l.acquire(None).unwrap();
                            l.acquire(None).unwrap();
                            let p = counter as *mut u64;
                            // SAFETY: in-bounds, aligned, under the lock.
                            unsafe { p.write_volatile(p.read_volatile() + 1) };
                            l.release().unwrap();
                            l.release().unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            // SAFETY: all writers joined.
            assert_eq!(unsafe { (counter as *const u64).read() }, 9000);
        });
    }

    #[test]
    fn release_fully_and_restore() {
        // SAFETY: a fresh region used only by this lock.
        let l = unsafe { RLock::init(region(), 0, 1, 1) }.unwrap();
        let me = Me::with_tid();
        l.acquire(None).unwrap();
        l.acquire(None).unwrap();
        assert_eq!(l.release_fully(&me), Ok(2));
        assert!(!l.is_locked());
        assert_eq!(l.reacquire_as(&me, ProcessId::is_alive, 2), Acquired::Normal);
        assert_eq!(l.count(), 2);
    }

    #[test]
    fn dead_owner_is_taken_over() {
        // SAFETY: a fresh region used only by this lock.
        let l = unsafe { RLock::init(region(), 0, 1, 1) }.unwrap();
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let ghost = Me { process: ProcessId::pid_only(c.id()), tid: c.id() };
        c.wait().unwrap();
        l.acquire_as(&ghost, ProcessId::is_alive, &mut Waiter::forever()).unwrap();
        l.acquire_as(&ghost, ProcessId::is_alive, &mut Waiter::forever()).unwrap();
        assert_eq!(l.acquire(Some(Duration::from_secs(10))), Ok(Acquired::OwnerDied { pid: ghost.process.pid }));
        assert_eq!(l.count(), 1, "the recursion depth starts afresh");
        l.release().unwrap();
        assert!(!l.is_locked());
    }
}
