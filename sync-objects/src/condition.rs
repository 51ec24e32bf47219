//! Condition variables: `multiprocessing.Condition`, used with a [`Lock`]
//! or an [`RLock`] passed to each wait.
//!
//! Every waiter takes a slot in a table inside the condition, under a small
//! robust internal lock: the slot records the waiter's pid, start time and
//! a ticket (its arrival order), and its state word is what the waiter
//! sleeps on. `notify(n)` marks the `n` oldest waiting slots notified and
//! wakes each one's word, so exactly `min(n, waiters)` current waiters wake,
//! in arrival order; waiters that arrive after the notify, and waiters that
//! already timed out (they free their slot under the internal lock), cannot
//! take a notification. When `n` is smaller than the number of waiters,
//! `notify` checks each chosen waiter's liveness and frees the slots of dead
//! ones instead of spending a notification on them.
//!
//! Slot states: `FREE -> WAITING` (the waiter, under the internal lock),
//! `WAITING -> NOTIFIED` (a notifier, under the internal lock), `WAITING ->
//! FREE` (the waiter giving up, under the internal lock), `NOTIFIED -> FREE`
//! (the waiter, after seeing its notification; no lock needed since no one
//! else changes a notified slot). A full table reclaims slots of dead
//! waiters, then fails with [`CondError::TooManyWaiters`].
//!
//! Layout (after the 24-byte header):
//!
//! ```text
//!  24  16  internal lock (lock word, tid, stamp)
//!  40  4   capacity (slots)
//!  44  4   high-water mark (slots at or above it were never used)
//!  48  4   next ticket
//!  52  4   reserved
//!  56  16 × capacity   slots: state, pid, start_lo, ticket
//! ```
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `cond-notify`: a notifier's Release store of `NOTIFIED` in a waiter's
//!   slot publishes its writes to the waiter's Acquire load of the slot's
//!   state.
//! - `cond-slot-free`: a waiter done with its slot stores `FREE` with
//!   Release; a registering waiter takes a slot it read `FREE` with Acquire,
//!   after the old waiter's last use of it.

use super::lock::RawLock;
use super::{
    sync_object_common, Acquired, AliveFn, Header, Lock, Me, ObjectError, Placed, RLock, ReleaseError, WaitError,
    Waiter,
};
use shm_primitives::futex;
use shm_primitives::handle::Kind;
use shm_primitives::process::ProcessId;
use shm_primitives::region::Region;
use shm_primitives::sync::{AtomicU32, Ordering};
use std::fmt;
use std::time::Duration;

const FREE: u32 = 0;
const WAITING: u32 = 1;
const NOTIFIED: u32 = 2;

/// Most waiter slots a condition may have.
pub const MAX_WAITERS: u32 = 1 << 20;

#[repr(C)]
struct CondShared {
    header: Header,
    mu: RawLock,
    capacity: AtomicU32,
    high: AtomicU32,
    next_ticket: AtomicU32,
    reserved: AtomicU32,
}

#[repr(C)]
struct Slot {
    state: AtomicU32,
    pid: AtomicU32,
    start_lo: AtomicU32,
    ticket: AtomicU32,
}

impl Slot {
    /// The waiter recorded in the slot (start time: its low 32 bits).
    fn waiter(&self) -> ProcessId {
        // Relaxed: callers hold the internal lock, which orders the slot's
        // fields.
        ProcessId { pid: self.pid.load(Ordering::Relaxed), start: u64::from(self.start_lo.load(Ordering::Relaxed)) }
    }
}

/// How a [`Condition::wait`] ended (the lock is held again in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CondWait {
    /// `true` if notified, `false` if the timeout elapsed first.
    pub notified: bool,
    /// How the lock was re-acquired (its holder may have died meanwhile).
    pub lock: Acquired,
}

/// Why a [`Condition::wait`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CondError {
    /// The calling thread does not hold the lock; nothing changed.
    NotHeld(ReleaseError),
    /// Every waiter slot is taken by a live waiter; the lock is still held.
    TooManyWaiters {
        /// Slots in this condition.
        capacity: u32,
    },
    /// The interrupt hook asked to stop; the lock is held again.
    Interrupted {
        /// How the lock was re-acquired.
        lock: Acquired,
    },
}

impl fmt::Display for CondError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CondError::NotHeld(e) => write!(f, "cannot wait on a condition without holding its lock ({e})"),
            CondError::TooManyWaiters { capacity } => {
                write!(f, "condition has {capacity} waiters already, its capacity; create it with more slots")
            }
            CondError::Interrupted { .. } => f.write_str("condition wait interrupted"),
        }
    }
}

impl std::error::Error for CondError {}

// The sealed trait's methods take crate-private types on purpose: only this
// crate's locks implement it, and nobody outside can call them.
#[allow(private_interfaces)]
mod sealed {
    use super::super::{Acquired, AliveFn, Me, ReleaseError};

    /// What a condition needs from the lock a waiter holds.
    pub trait WaitLock {
        /// Release completely for a wait; returns what `reacquire` restores.
        fn release_for_wait(&self, me: &Me) -> Result<u32, ReleaseError>;
        /// Acquire again after a wait (no deadline, robust).
        fn reacquire_after_wait(&self, me: &Me, alive: AliveFn, saved: u32) -> Acquired;
    }
}

/// A lock a [`Condition`] can be waited on with: [`Lock`] or [`RLock`].
pub trait CondLock: sealed::WaitLock {}

#[allow(private_interfaces)]
impl<R: Region> sealed::WaitLock for Lock<R> {
    fn release_for_wait(&self, _me: &Me) -> Result<u32, ReleaseError> {
        self.raw().unlock().map(|()| 1)
    }
    fn reacquire_after_wait(&self, me: &Me, alive: AliveFn, _saved: u32) -> Acquired {
        match self.raw().lock(me, alive, &mut Waiter::forever()) {
            Ok(a) => a,
            Err(e) => unreachable!("a wait without deadline or hook cannot fail: {e}"),
        }
    }
}
impl<R: Region> CondLock for Lock<R> {}

#[allow(private_interfaces)]
impl<R: Region> sealed::WaitLock for RLock<R> {
    fn release_for_wait(&self, me: &Me) -> Result<u32, ReleaseError> {
        self.release_fully(me)
    }
    fn reacquire_after_wait(&self, me: &Me, alive: AliveFn, saved: u32) -> Acquired {
        self.reacquire_as(me, alive, saved)
    }
}
impl<R: Region> CondLock for RLock<R> {}

/// A process-shared condition variable.
pub struct Condition<R: Region> {
    p: Placed<R, CondShared>,
    /// Validated copy of the slot count (the shared one is not trusted).
    capacity: u32,
}

sync_object_common!(Condition, CondShared, Kind::Condition);

impl<R: Region> Condition<R> {
    /// Default number of waiter slots (a 16 KiB object).
    pub const DEFAULT_WAITERS: u32 = 1020;

    /// Bytes a condition with `waiters` slots occupies.
    pub const fn size_for(waiters: u32) -> usize {
        let n = std::mem::size_of::<CondShared>() + waiters as usize * std::mem::size_of::<Slot>();
        n.div_ceil(super::OBJECT_ALIGN) * super::OBJECT_ALIGN
    }

    /// Create a condition with room for `waiters` simultaneous waiters.
    ///
    /// # Safety
    ///
    /// Nothing else may use the [`Condition::size_for`]`(waiters)` bytes at
    /// `offset` during or after the call, and no other thread or process may
    /// touch them until this returns.
    pub unsafe fn init(
        region: R,
        offset: usize,
        id: u64,
        generation: u64,
        waiters: u32,
    ) -> Result<Condition<R>, ObjectError> {
        if waiters == 0 || waiters > MAX_WAITERS {
            return Err(ObjectError::InvalidParameter("condition waiter slots must be in 1..=1048576"));
        }
        let shared = CondShared {
            header: Header::new(Kind::Condition, id, generation),
            mu: RawLock::new(),
            capacity: AtomicU32::new(waiters),
            high: AtomicU32::new(0),
            next_ticket: AtomicU32::new(0),
            reserved: AtomicU32::new(0),
        };
        // SAFETY: forwarded from the caller.
        let p = unsafe { Placed::init(region, offset, Self::size_for(waiters), shared)? };
        let c = Condition { p, capacity: waiters };
        for i in 0..waiters {
            let slot = Slot {
                state: AtomicU32::new(FREE),
                pid: AtomicU32::new(0),
                start_lo: AtomicU32::new(0),
                ticket: AtomicU32::new(0),
            };
            // SAFETY: slot `i` lies within the placed size; the caller
            // guarantees exclusive access until publication.
            unsafe { c.slot_ptr(i).write(slot) };
        }
        c.p.get().header.publish();
        Ok(c)
    }

    /// Attach to the condition at `offset`, checking kind, id, generation
    /// and that its slot table fits in the region.
    pub fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Condition<R>, ObjectError> {
        let p = Placed::<R, CondShared>::attach(region, offset, Self::size_for(0))?;
        p.get().header.check(Kind::Condition, id, generation)?;
        // Relaxed: immutable after creation, ordered after the header check.
        let capacity = p.get().capacity.load(Ordering::Relaxed);
        if capacity == 0 || capacity > MAX_WAITERS {
            return Err(ObjectError::Corrupt("condition capacity"));
        }
        let (region, offset) = (p.region, p.offset);
        let p = Placed::<R, CondShared>::attach(region, offset, Self::size_for(capacity))?;
        Ok(Condition { p, capacity })
    }

    fn s(&self) -> &CondShared {
        self.p.get()
    }

    fn slot_ptr(&self, i: u32) -> *mut Slot {
        assert!(i < self.capacity, "slot index out of range");
        // SAFETY: `i < capacity` and the placement checked that
        // `capacity` slots fit after the fixed part.
        unsafe { self.p.tail().cast::<Slot>().add(i as usize) }
    }

    fn slot(&self, i: u32) -> &Slot {
        // SAFETY: in bounds (see `slot_ptr`), aligned (the fixed part is a
        // multiple of 4 bytes), initialised by `init` or holding atomics in
        // an attached region, where any bit pattern is valid.
        unsafe { &*self.slot_ptr(i) }
    }

    /// Slots that may be in use: below the high-water mark.
    fn high(&self) -> u32 {
        // Relaxed: read under the internal lock (or as a snapshot).
        self.s().high.load(Ordering::Relaxed).min(self.capacity)
    }

    fn lock_mu(&self, me: &Me, alive: AliveFn) {
        // A dead holder of the internal lock leaves the table consistent:
        // every change under it is a single store.
        if let Err(e) = self.s().mu.lock(me, alive, &mut Waiter::forever()) {
            unreachable!("a wait without deadline or hook cannot fail: {e}");
        }
    }

    fn unlock_mu(&self) {
        // The internal lock is only released by the holder that took it.
        let _ = self.s().mu.unlock();
    }

    /// Take a free slot for `me` (under the internal lock).
    fn register(&self, me: &Me, alive: AliveFn) -> Option<u32> {
        let high = self.high();
        // SYNC POINT cond-slot-free: Acquire pairs with the Release store of
        // FREE by a waiter that saw its notification.
        let mut found = (0..high).find(|&i| self.slot(i).state.load(Ordering::Acquire) == FREE);
        if found.is_none() && high < self.capacity {
            // Relaxed: under the internal lock.
            self.s().high.store(high + 1, Ordering::Relaxed);
            found = Some(high);
        }
        if found.is_none() {
            found = (0..self.capacity).find(|&i| {
                let slot = self.slot(i);
                // Relaxed: under the internal lock.
                !alive(&slot.waiter())
            });
        }
        let i = found?;
        let s = self.s();
        let slot = self.slot(i);
        // Relaxed: under the internal lock, which orders these for notifiers.
        let ticket = s.next_ticket.load(Ordering::Relaxed);
        s.next_ticket.store(ticket.wrapping_add(1), Ordering::Relaxed);
        slot.pid.store(me.process.pid, Ordering::Relaxed);
        slot.start_lo.store(me.process.start as u32, Ordering::Relaxed);
        slot.ticket.store(ticket, Ordering::Relaxed);
        slot.state.store(WAITING, Ordering::Relaxed);
        Some(i)
    }

    pub(crate) fn wait_as(
        &self,
        me: &Me,
        alive: AliveFn,
        lock: &dyn CondLock,
        w: &mut Waiter<'_>,
    ) -> Result<CondWait, CondError> {
        self.lock_mu(me, alive);
        let Some(i) = self.register(me, alive) else {
            self.unlock_mu();
            return Err(CondError::TooManyWaiters { capacity: self.capacity });
        };
        self.unlock_mu();
        let slot = self.slot(i);
        let saved = match lock.release_for_wait(me) {
            Ok(saved) => saved,
            Err(e) => {
                // Not ours to wait with: withdraw, handing on a notification
                // that raced in.
                self.lock_mu(me, alive);
                // Relaxed: under the internal lock.
                let st = slot.state.load(Ordering::Relaxed);
                // SYNC POINT cond-slot-free: see `register`.
                slot.state.store(FREE, Ordering::Release);
                if st == NOTIFIED {
                    self.notify_locked(1, alive);
                }
                self.unlock_mu();
                return Err(CondError::NotHeld(e));
            }
        };
        let mut interrupted = false;
        let notified = loop {
            // SYNC POINT cond-notify: Acquire pairs with the notifier's Release
            // store of NOTIFIED.
            if slot.state.load(Ordering::Acquire) == NOTIFIED {
                break true;
            }
            match w.sleep(&slot.state, WAITING) {
                Ok(_) => {}
                Err(e) => {
                    self.lock_mu(me, alive);
                    // SYNC POINT cond-notify: as above.
                    let notified = slot.state.load(Ordering::Acquire) == NOTIFIED;
                    if !notified {
                        // SYNC POINT cond-slot-free: see `register`.
                        slot.state.store(FREE, Ordering::Release);
                    }
                    self.unlock_mu();
                    // A notification that raced with the timeout or the
                    // interrupt counts: it was meant for us.
                    interrupted = !notified && e == WaitError::Interrupted;
                    break notified;
                }
            }
        };
        if notified {
            // SYNC POINT cond-slot-free: see `register`.
            slot.state.store(FREE, Ordering::Release);
        }
        let acquired = lock.reacquire_after_wait(me, alive, saved);
        if interrupted {
            return Err(CondError::Interrupted { lock: acquired });
        }
        Ok(CondWait { notified, lock: acquired })
    }

    /// Notify up to `n` waiters, oldest first (under the internal lock).
    fn notify_locked(&self, n: u32, alive: AliveFn) -> u32 {
        let high = self.high();
        // Relaxed: under the internal lock.
        let waiting = (0..high).filter(|&i| self.slot(i).state.load(Ordering::Relaxed) == WAITING).count() as u32;
        let mut woken = 0;
        if n >= waiting {
            for i in 0..high {
                let slot = self.slot(i);
                // Relaxed: under the internal lock.
                if slot.state.load(Ordering::Relaxed) == WAITING {
                    self.wake_slot(slot);
                    woken += 1;
                }
            }
            return woken;
        }
        // Relaxed: under the internal lock.
        let now = self.s().next_ticket.load(Ordering::Relaxed);
        while woken < n {
            let oldest = (0..high)
                .filter(|&i| self.slot(i).state.load(Ordering::Relaxed) == WAITING)
                .max_by_key(|&i| now.wrapping_sub(self.slot(i).ticket.load(Ordering::Relaxed)));
            let Some(i) = oldest else { break };
            let slot = self.slot(i);
            // Relaxed: under the internal lock.
            if alive(&slot.waiter()) {
                self.wake_slot(slot);
                woken += 1;
            } else {
                slot.state.store(FREE, Ordering::Relaxed);
            }
        }
        woken
    }

    fn wake_slot(&self, slot: &Slot) {
        // SYNC POINT cond-notify: Release publishes the notifier's writes to
        // the waiter's Acquire load of its state.
        slot.state.store(NOTIFIED, Ordering::Release);
        futex::wake(&slot.state, 1);
    }

    pub(crate) fn notify_as(&self, me: &Me, alive: AliveFn, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.lock_mu(me, alive);
        let woken = self.notify_locked(n, alive);
        self.unlock_mu();
        woken
    }

    /// Release `lock` (fully, for an [`RLock`]), wait for a notification or
    /// the timeout, and acquire `lock` again. The calling thread must hold
    /// `lock`. Returns whether it was notified.
    pub fn wait(&self, lock: &dyn CondLock, timeout: Option<Duration>) -> Result<CondWait, CondError> {
        self.wait_as(&Me::with_tid(), ProcessId::is_alive, lock, &mut Waiter::new(timeout, None).unwatched())
    }

    /// [`Condition::wait`] with an interrupt hook (see
    /// [`super::Lock::acquire_with`]). The lock is re-acquired even when
    /// interrupted.
    pub fn wait_with(
        &self,
        lock: &dyn CondLock,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<CondWait, CondError> {
        self.wait_as(&Me::with_tid(), ProcessId::is_alive, lock, &mut Waiter::new(timeout, Some(interrupt)).unwatched())
    }

    /// Wake up to `n` of the current waiters, oldest first; returns how
    /// many were notified. When `n` is smaller than the number of waiters,
    /// dead waiters are skipped; when it covers them all, every slot is
    /// notified without liveness checks (the count then includes waiters
    /// that died). Python requires the caller to hold the lock; this layer
    /// does not check it, but only waiters that registered before the call
    /// can be woken by it.
    pub fn notify(&self, n: u32) -> u32 {
        self.notify_as(&Me::current(), ProcessId::is_alive, n)
    }

    /// Wake every current waiter; returns how many were woken.
    pub fn notify_all(&self) -> u32 {
        self.notify(u32::MAX)
    }

    /// Waiters not yet notified (a snapshot).
    pub fn waiting(&self) -> u32 {
        // Relaxed: a snapshot for reporting.
        (0..self.high()).filter(|&i| self.slot(i).state.load(Ordering::Relaxed) == WAITING).count() as u32
    }

    /// Waiters notified but not yet returned (a snapshot).
    pub fn notified_pending(&self) -> u32 {
        // Relaxed: a snapshot for reporting.
        (0..self.high()).filter(|&i| self.slot(i).state.load(Ordering::Relaxed) == NOTIFIED).count() as u32
    }

    /// Waiter slots of this condition.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::super::test_util::{region, watchdog};
    use super::*;
    use std::sync::Arc;

    type R = Arc<shm_primitives::region::HeapRegion>;
    type Objects = (Arc<Condition<R>>, Arc<Lock<R>>, Arc<RLock<R>>);

    fn setup(waiters: u32) -> Objects {
        let r = region();
        // SAFETY: disjoint places in a fresh region.
        unsafe {
            let c = Condition::init(Arc::clone(&r), 0, 1, 1, waiters).unwrap();
            let off = Condition::<R>::size_for(waiters);
            let l = Lock::init(Arc::clone(&r), off, 2, 1).unwrap();
            let rl = RLock::init(Arc::clone(&r), off + Lock::<R>::SIZE, 3, 1).unwrap();
            (Arc::new(c), Arc::new(l), Arc::new(rl))
        }
    }

    #[test]
    fn layout_matches_the_docs() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(CondShared, mu), 24);
        assert_eq!(offset_of!(CondShared, capacity), 40);
        assert_eq!(offset_of!(CondShared, high), 44);
        assert_eq!(offset_of!(CondShared, next_ticket), 48);
        assert_eq!(size_of::<CondShared>(), 56);
        assert_eq!(size_of::<Slot>(), 16);
        assert_eq!(Condition::<R>::size_for(Condition::<R>::DEFAULT_WAITERS), 16384);
    }

    #[test]
    fn wait_times_out_and_keeps_the_lock() {
        let (c, l, rl) = setup(4);
        l.acquire(None).unwrap();
        let r = c.wait(&*l, Some(Duration::from_millis(20))).unwrap();
        assert_eq!(r, CondWait { notified: false, lock: Acquired::Normal });
        assert!(l.is_locked());
        l.release().unwrap();
        assert!(matches!(c.wait(&*l, None), Err(CondError::NotHeld(ReleaseError::NotHeld))));
        assert!(matches!(c.wait(&*rl, None), Err(CondError::NotHeld(ReleaseError::NotOwner))));
        assert_eq!(c.waiting() + c.notified_pending(), 0);
        rl.acquire(None).unwrap();
        rl.acquire(None).unwrap();
        assert!(!c.wait(&*rl, Some(Duration::from_millis(5))).unwrap().notified);
        assert_eq!(rl.count(), 2, "the recursion depth is restored");
    }

    fn spawn_waiters(c: &Arc<Condition<R>>, l: &Arc<RLock<R>>, n: usize) -> Vec<std::thread::JoinHandle<bool>> {
        let ts: Vec<_> = (0..n)
            .map(|_| {
                let (c, l) = (Arc::clone(c), Arc::clone(l));
                std::thread::spawn(move || {
                    l.acquire(None).unwrap();
                    let r = c.wait(&*l, Some(Duration::from_secs(30))).unwrap();
                    l.release().unwrap();
                    r.notified
                })
            })
            .collect();
        while c.waiting() < n as u32 {
            std::thread::sleep(Duration::from_millis(1));
        }
        ts
    }

    #[test]
    fn notify_counts_are_exact() {
        watchdog(|| {
            let (c, _, l) = setup(8);
            let ts = spawn_waiters(&c, &l, 6);
            assert_eq!(c.notify(2), 2);
            assert_eq!(c.waiting(), 4);
            assert_eq!(c.notify(3), 3);
            assert_eq!(c.waiting(), 1);
            assert_eq!(c.notify_all(), 1);
            assert_eq!(c.notify(3), 0);
            for t in ts {
                assert!(t.join().unwrap());
            }
            assert_eq!(c.waiting() + c.notified_pending(), 0);
        });
    }

    #[test]
    fn timed_out_waiters_do_not_absorb_notifications() {
        watchdog(|| {
            let (c, _, l) = setup(8);
            let early: Vec<_> = (0..3)
                .map(|_| {
                    let (c, l) = (Arc::clone(&c), Arc::clone(&l));
                    std::thread::spawn(move || {
                        l.acquire(None).unwrap();
                        let r = c.wait(&*l, Some(Duration::from_millis(10))).unwrap();
                        l.release().unwrap();
                        r.notified
                    })
                })
                .collect();
            for t in early {
                assert!(!t.join().unwrap());
            }
            let ts = spawn_waiters(&c, &l, 2);
            assert_eq!(c.notify(1), 1);
            assert_eq!(c.notify(1), 1);
            for t in ts {
                assert!(t.join().unwrap());
            }
        });
    }

    #[test]
    fn full_table_is_a_clear_error_and_dead_slots_are_reclaimed() {
        watchdog(|| {
            let (c, l, _) = setup(1);
            let (c2, l2) = (Arc::clone(&c), Arc::clone(&l));
            l.acquire(None).unwrap();
            let t = std::thread::spawn(move || {
                l2.acquire(None).unwrap();
                let r = c2.wait(&*l2, None).unwrap();
                l2.release().unwrap();
                r
            });
            l.release().unwrap();
            while c.waiting() < 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            l.acquire(None).unwrap();
            assert_eq!(c.wait(&*l, None), Err(CondError::TooManyWaiters { capacity: 1 }));
            assert!(l.is_locked(), "the lock is still held after the error");
            l.release().unwrap();
            assert_eq!(c.notify(1), 1);
            assert!(t.join().unwrap().notified);

            // A slot left by a dead waiter is reclaimed, and notify does not
            // spend a notification on it.
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let ghost = Me { process: ProcessId::pid_only(child.id()), tid: 1 };
            child.wait().unwrap();
            c.lock_mu(&ghost, ProcessId::is_alive);
            assert_eq!(c.register(&ghost, ProcessId::is_alive), Some(0));
            c.unlock_mu();
            assert_eq!(c.waiting(), 1);
            l.acquire(None).unwrap();
            let r = c.wait(&*l, Some(Duration::from_millis(5))).unwrap();
            assert!(!r.notified);
        });
    }

    #[test]
    fn notify_skips_dead_waiters_when_choosing() {
        let (c, _, _) = setup(4);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let ghost = Me { process: ProcessId::pid_only(child.id()), tid: 1 };
        child.wait().unwrap();
        let me = Me::with_tid();
        c.lock_mu(&me, ProcessId::is_alive);
        c.register(&ghost, ProcessId::is_alive).unwrap();
        let live = c.register(&me, ProcessId::is_alive).unwrap();
        c.register(&me, ProcessId::is_alive).unwrap();
        // notify(1) < 3 waiters: the oldest, dead one is skipped and freed.
        assert_eq!(c.notify_locked(1, ProcessId::is_alive), 1);
        c.unlock_mu();
        assert_eq!(c.slot(live).state.load(Ordering::Relaxed), NOTIFIED);
        assert_eq!(c.waiting(), 1);
    }
}
