//! Barriers with `threading.Barrier` semantics: `multiprocessing.Barrier`.
//!
//! State lives under a small robust internal lock: the number of parties,
//! how many have arrived in the current generation, the generation number,
//! a broken flag, who is running the barrier action, and a 64-bit history
//! whose bit `g % 64` says whether generation `g` ended broken. Waiters
//! sleep on a sequence word that changes (under the internal lock) whenever
//! a generation ends or the barrier breaks.
//!
//! Unlike `threading.Barrier`, a generation does not wait for its waiters
//! to leave before the next can fill: a waiter of generation `g` that wakes
//! late reads how `g` ended from the history. So a process that dies while
//! waiting cannot block the next generation. The history covers the last
//! 64 generations; a waiter that sleeps through 64 further generations of
//! the same barrier (only possible with many more processes than parties,
//! or a stopped process) reports the barrier broken.
//!
//! Layout (after the 24-byte header):
//!
//! ```text
//!  24  16  internal lock (lock word, tid, stamp)
//!  40  4   sequence word (futex)
//!  44  4   parties
//!  48  4   arrived in this generation
//!  52  4   broken (0 or 1)
//!  56  8   generation
//!  64  8   history: bit g % 64 set if generation g ended broken
//!  72  8   stamp (pid << 32 | start_lo) of the process running the action, 0: none
//! ```

use super::lock::RawLock;
use super::{stamp_alive, sync_object_common, Acquired, AliveFn, Header, Me, ObjectError, Placed, WaitError, Waiter};
use shm_primitives::futex;
use shm_primitives::handle::Kind;
use shm_primitives::process::ProcessId;
use shm_primitives::region::Region;
use shm_primitives::sync::{AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

#[repr(C)]
struct BarrierShared {
    header: Header,
    mu: RawLock,
    seq: AtomicU32,
    parties: AtomicU32,
    count: AtomicU32,
    broken: AtomicU32,
    generation: AtomicU64,
    history: AtomicU64,
    releaser: AtomicU64,
}

/// Why a [`Barrier::wait`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken (aborted, reset while waiting, timed out by
    /// another party, or a party died in its critical section or action).
    Broken,
    /// This caller's timeout elapsed; the barrier is now broken for all.
    TimedOut,
    /// The interrupt hook asked to stop; the caller left the barrier, which
    /// is not broken.
    Interrupted,
    /// The barrier action failed; the barrier is now broken for all.
    ActionFailed,
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BarrierError::Broken => "barrier is broken",
            BarrierError::TimedOut => "barrier wait timed out; the barrier is now broken",
            BarrierError::Interrupted => "barrier wait interrupted",
            BarrierError::ActionFailed => "barrier action failed; the barrier is now broken",
        })
    }
}

impl std::error::Error for BarrierError {}

/// A process-shared, reusable barrier for a fixed number of parties.
pub struct Barrier<R: Region> {
    p: Placed<R, BarrierShared>,
}

sync_object_common!(Barrier, BarrierShared, Kind::Barrier);

/// Breaks the barrier if the action unwinds.
struct ActionGuard<'a, R: Region> {
    barrier: &'a Barrier<R>,
    me: &'a Me,
    alive: AliveFn,
    generation: u64,
    armed: bool,
}

impl<R: Region> Drop for ActionGuard<'_, R> {
    fn drop(&mut self) {
        if self.armed {
            self.barrier.lock_mu(self.me, self.alive);
            let s = self.barrier.s();
            // Relaxed: under the internal lock.
            if s.generation.load(Ordering::Relaxed) == self.generation {
                s.releaser.store(0, Ordering::Relaxed);
                self.barrier.break_locked();
            }
            self.barrier.unlock_mu();
        }
    }
}

impl<R: Region> Barrier<R> {
    /// Bytes a barrier occupies in its region.
    pub const SIZE: usize = super::footprint::<BarrierShared>();

    /// Create a barrier for `parties` parties (at least 1).
    ///
    /// # Safety
    ///
    /// Nothing else may use the [`Barrier::SIZE`] bytes at `offset` during
    /// or after the call, and no other thread or process may touch them
    /// until this returns.
    pub unsafe fn init(
        region: R,
        offset: usize,
        id: u64,
        generation: u64,
        parties: u32,
    ) -> Result<Barrier<R>, ObjectError> {
        if parties == 0 || parties > i32::MAX as u32 {
            return Err(ObjectError::InvalidParameter("a barrier needs 1..=2147483647 parties"));
        }
        let shared = BarrierShared {
            header: Header::new(Kind::Barrier, id, generation),
            mu: RawLock::new(),
            seq: AtomicU32::new(0),
            parties: AtomicU32::new(parties),
            count: AtomicU32::new(0),
            broken: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            history: AtomicU64::new(0),
            releaser: AtomicU64::new(0),
        };
        // SAFETY: forwarded from the caller.
        let p = unsafe { Placed::init(region, offset, Self::SIZE, shared)? };
        p.get().header.publish();
        Ok(Barrier { p })
    }

    /// Attach to the barrier at `offset`, checking kind, id and generation.
    pub fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Barrier<R>, ObjectError> {
        let p = Placed::<R, BarrierShared>::attach(region, offset, Self::SIZE)?;
        p.get().header.check(Kind::Barrier, id, generation)?;
        // Relaxed: immutable after creation, ordered after the header check.
        let parties = p.get().parties.load(Ordering::Relaxed);
        if parties == 0 || parties > i32::MAX as u32 {
            return Err(ObjectError::Corrupt("barrier parties"));
        }
        Ok(Barrier { p })
    }

    fn s(&self) -> &BarrierShared {
        self.p.get()
    }

    /// Take the internal lock; if its holder died mid-update, the state may
    /// be inconsistent, so the barrier breaks.
    fn lock_mu(&self, me: &Me, alive: AliveFn) {
        match self.s().mu.lock(me, alive, &mut Waiter::forever()) {
            Ok(Acquired::Normal) => {}
            Ok(Acquired::OwnerDied { .. }) => self.break_locked(),
            Err(e) => unreachable!("a wait without deadline or hook cannot fail: {e}"),
        }
    }

    fn unlock_mu(&self) {
        // The internal lock is only released by the holder that took it.
        let _ = self.s().mu.unlock();
    }

    fn bump(&self) {
        let s = self.s();
        // Relaxed: changed under the internal lock; waiters read it under
        // the lock before sleeping, and the futex compares it atomically.
        s.seq.fetch_add(1, Ordering::Relaxed);
        futex::wake_all(&s.seq);
    }

    /// Break the current generation (under the internal lock).
    fn break_locked(&self) {
        let s = self.s();
        // Relaxed (this function): every field here is read and written
        // under the internal lock, whose Acquire/Release orders them.
        if s.broken.load(Ordering::Relaxed) != 0 {
            return;
        }
        s.broken.store(1, Ordering::Relaxed);
        let g = s.generation.load(Ordering::Relaxed);
        s.history.fetch_or(1 << (g % 64), Ordering::Relaxed);
        self.bump();
    }

    /// Start generation `g + 1` (under the internal lock); `g` ended broken
    /// or not as the history already says.
    fn next_generation(&self) {
        let s = self.s();
        // Relaxed (this function): under the internal lock.
        let g = s.generation.load(Ordering::Relaxed).wrapping_add(1);
        s.generation.store(g, Ordering::Relaxed);
        s.history.fetch_and(!(1 << (g % 64)), Ordering::Relaxed);
        s.count.store(0, Ordering::Relaxed);
        s.broken.store(0, Ordering::Relaxed);
        s.releaser.store(0, Ordering::Relaxed);
        self.bump();
    }

    /// How generation `g` ended, seen from generation `now > g`.
    fn outcome(&self, g: u64, now: u64, index: u32) -> Result<u32, BarrierError> {
        // Relaxed: under the internal lock.
        let history = self.s().history.load(Ordering::Relaxed);
        if now.wrapping_sub(g) >= 64 || history & (1 << (g % 64)) != 0 {
            Err(BarrierError::Broken)
        } else {
            Ok(index)
        }
    }

    pub(crate) fn wait_as(
        &self,
        me: &Me,
        alive: AliveFn,
        w: &mut Waiter<'_>,
        action: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<u32, BarrierError> {
        let s = self.s();
        self.lock_mu(me, alive);
        // Relaxed (this function, unless noted): fields under the internal lock.
        // Arrivals wait while the previous generation's action runs.
        loop {
            if s.broken.load(Ordering::Relaxed) != 0 {
                self.unlock_mu();
                return Err(BarrierError::Broken);
            }
            let releaser = s.releaser.load(Ordering::Relaxed);
            if releaser == 0 {
                break;
            }
            if !stamp_alive(releaser, alive) {
                self.break_locked();
                continue;
            }
            let seq = s.seq.load(Ordering::Relaxed);
            self.unlock_mu();
            let r = w.sleep(&s.seq, seq);
            self.lock_mu(me, alive);
            match r {
                Ok(_) => {}
                Err(WaitError::Interrupted) => {
                    self.unlock_mu();
                    return Err(BarrierError::Interrupted);
                }
                Err(_) => {
                    self.break_locked();
                    self.unlock_mu();
                    return Err(BarrierError::TimedOut);
                }
            }
        }
        let g = s.generation.load(Ordering::Relaxed);
        let index = s.count.load(Ordering::Relaxed);
        s.count.store(index + 1, Ordering::Relaxed);
        if index + 1 >= s.parties.load(Ordering::Relaxed) {
            if let Some(action) = action {
                s.releaser.store(me.stamp(), Ordering::Relaxed);
                self.unlock_mu();
                let mut guard = ActionGuard { barrier: self, me, alive, generation: g, armed: true };
                let ok = action();
                guard.armed = false;
                self.lock_mu(me, alive);
                if s.generation.load(Ordering::Relaxed) != g {
                    // Reset while the action ran: the reset cleared our stamp.
                    self.unlock_mu();
                    return Err(BarrierError::Broken);
                }
                if s.broken.load(Ordering::Relaxed) != 0 {
                    // Aborted while the action ran.
                    s.releaser.store(0, Ordering::Relaxed);
                    self.unlock_mu();
                    return Err(BarrierError::Broken);
                }
                s.releaser.store(0, Ordering::Relaxed);
                if !ok {
                    self.break_locked();
                    self.unlock_mu();
                    return Err(BarrierError::ActionFailed);
                }
            }
            self.next_generation();
            self.unlock_mu();
            return Ok(index);
        }
        loop {
            let seq = s.seq.load(Ordering::Relaxed);
            self.unlock_mu();
            let r = w.sleep(&s.seq, seq);
            self.lock_mu(me, alive);
            let now = s.generation.load(Ordering::Relaxed);
            if now != g {
                let out = self.outcome(g, now, index);
                self.unlock_mu();
                return out;
            }
            if s.broken.load(Ordering::Relaxed) != 0 {
                self.unlock_mu();
                return Err(BarrierError::Broken);
            }
            let releaser = s.releaser.load(Ordering::Relaxed);
            if releaser != 0 && !stamp_alive(releaser, alive) {
                self.break_locked();
                self.unlock_mu();
                return Err(BarrierError::Broken);
            }
            match r {
                Ok(_) => {}
                Err(WaitError::Interrupted) => {
                    if releaser == 0 {
                        // Leave the generation: we no longer count as arrived.
                        let c = s.count.load(Ordering::Relaxed);
                        s.count.store(c.saturating_sub(1), Ordering::Relaxed);
                    }
                    self.unlock_mu();
                    return Err(BarrierError::Interrupted);
                }
                Err(_) => {
                    self.break_locked();
                    self.unlock_mu();
                    return Err(BarrierError::TimedOut);
                }
            }
        }
    }

    /// Wait until all parties have called `wait`, at most `timeout` (`None`:
    /// no limit). Returns this caller's arrival index, `0..parties` (exactly
    /// one caller gets each). A timeout breaks the barrier for everyone.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u32, BarrierError> {
        self.wait_as(&Me::current(), ProcessId::is_alive, &mut Waiter::new(timeout, None), None)
    }

    /// [`Barrier::wait`] with the barrier action and an interrupt hook. The
    /// last party to arrive runs `action` (in its own process) before
    /// anyone is released; if it returns `false` (or unwinds) the barrier
    /// breaks. Each party passes its own copy of the action: exactly one of
    /// them runs per generation.
    pub fn wait_with(
        &self,
        timeout: Option<Duration>,
        action: Option<&mut dyn FnMut() -> bool>,
        interrupt: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<u32, BarrierError> {
        self.wait_as(&Me::current(), ProcessId::is_alive, &mut Waiter::new(timeout, interrupt), action)
    }

    pub(crate) fn abort_as(&self, me: &Me, alive: AliveFn) {
        self.lock_mu(me, alive);
        self.break_locked();
        self.unlock_mu();
    }

    /// Break the barrier: current and future waiters get
    /// [`BarrierError::Broken`] until [`Barrier::reset`].
    pub fn abort(&self) {
        self.abort_as(&Me::current(), ProcessId::is_alive)
    }

    pub(crate) fn reset_as(&self, me: &Me, alive: AliveFn) {
        self.lock_mu(me, alive);
        let s = self.s();
        // Relaxed: under the internal lock.
        let busy = s.count.load(Ordering::Relaxed) != 0
            || s.broken.load(Ordering::Relaxed) != 0
            || s.releaser.load(Ordering::Relaxed) != 0;
        if busy {
            // Current waiters get Broken; the barrier starts afresh.
            let g = s.generation.load(Ordering::Relaxed);
            s.history.fetch_or(1 << (g % 64), Ordering::Relaxed);
            self.next_generation();
        }
        self.unlock_mu();
    }

    /// Return the barrier to its initial state: waiters of the current
    /// generation get [`BarrierError::Broken`]; later calls work normally.
    pub fn reset(&self) {
        self.reset_as(&Me::current(), ProcessId::is_alive)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        // Relaxed: a snapshot for reporting.
        self.s().broken.load(Ordering::Relaxed) != 0
    }

    /// Parties waiting in the current generation (0 when broken).
    pub fn n_waiting(&self) -> u32 {
        let s = self.s();
        // Relaxed: a snapshot for reporting.
        if s.broken.load(Ordering::Relaxed) != 0 {
            0
        } else {
            s.count.load(Ordering::Relaxed)
        }
    }

    /// Number of parties.
    pub fn parties(&self) -> u32 {
        // Relaxed: immutable after creation.
        self.s().parties.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::super::test_util::{region, watchdog};
    use super::*;
    use shm_primitives::sync::local::{AtomicUsize, Ordering as StdOrdering};
    use std::sync::Arc;

    type R = Arc<shm_primitives::region::HeapRegion>;

    fn barrier(parties: u32) -> Arc<Barrier<R>> {
        // SAFETY: a fresh region used only by this barrier.
        Arc::new(unsafe { Barrier::init(region(), 0, 1, 1, parties) }.unwrap())
    }

    fn run<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
        let f = Arc::new(f);
        let ts: Vec<_> = (0..n)
            .map(|i| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f(i))
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn layout_matches_the_docs() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(BarrierShared, mu), 24);
        assert_eq!(offset_of!(BarrierShared, seq), 40);
        assert_eq!(offset_of!(BarrierShared, parties), 44);
        assert_eq!(offset_of!(BarrierShared, count), 48);
        assert_eq!(offset_of!(BarrierShared, broken), 52);
        assert_eq!(offset_of!(BarrierShared, generation), 56);
        assert_eq!(offset_of!(BarrierShared, history), 64);
        assert_eq!(offset_of!(BarrierShared, releaser), 72);
    }

    #[test]
    fn indexes_are_a_permutation_over_many_generations() {
        watchdog(|| {
            let b = barrier(4);
            let b2 = Arc::clone(&b);
            let all =
                run(4, move |_| (0..200).map(|_| b2.wait(Some(Duration::from_secs(30))).unwrap()).collect::<Vec<_>>());
            for gen in 0..200 {
                let mut idx: Vec<u32> = all.iter().map(|v| v[gen]).collect();
                idx.sort_unstable();
                assert_eq!(idx, vec![0, 1, 2, 3]);
            }
            assert_eq!(b.n_waiting(), 0);
            assert!(!b.broken());
        });
    }

    #[test]
    fn action_runs_once_per_generation() {
        watchdog(|| {
            let b = barrier(3);
            let ran = Arc::new(AtomicUsize::new(0));
            let (b2, ran2) = (Arc::clone(&b), Arc::clone(&ran));
            run(3, move |_| {
                for _ in 0..20 {
                    let mut act = || {
                        ran2.fetch_add(1, StdOrdering::SeqCst);
                        true
                    };
                    b2.wait_with(Some(Duration::from_secs(30)), Some(&mut act), None).unwrap();
                }
            });
            assert_eq!(ran.load(StdOrdering::SeqCst), 20);
        });
    }

    #[test]
    fn failed_action_breaks() {
        watchdog(|| {
            let b = barrier(2);
            let b2 = Arc::clone(&b);
            let r = run(2, move |_| b2.wait_with(Some(Duration::from_secs(30)), Some(&mut || false), None));
            assert!(r.contains(&Err(BarrierError::ActionFailed)));
            assert!(r.contains(&Err(BarrierError::Broken)));
            assert!(b.broken());
            b.reset();
            assert!(!b.broken());
        });
    }

    #[test]
    fn timeout_breaks_for_everyone() {
        watchdog(|| {
            let b = barrier(3);
            let b2 = Arc::clone(&b);
            let r = run(2, move |i| b2.wait(Some(Duration::from_millis(if i == 0 { 50 } else { 30_000 }))));
            assert!(r.contains(&Err(BarrierError::TimedOut)));
            assert!(r.contains(&Err(BarrierError::Broken)));
            assert!(b.broken());
            assert_eq!(b.wait(None), Err(BarrierError::Broken));
        });
    }

    #[test]
    fn abort_and_reset() {
        watchdog(|| {
            let b = barrier(3);
            let b2 = Arc::clone(&b);
            let t = std::thread::spawn(move || b2.wait(None));
            while b.n_waiting() < 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            b.abort();
            assert_eq!(t.join().unwrap(), Err(BarrierError::Broken));
            assert_eq!(b.n_waiting(), 0);
            b.reset();
            // Reset while a party waits: it gets Broken, the barrier works.
            let b2 = Arc::clone(&b);
            let t = std::thread::spawn(move || b2.wait(None));
            while b.n_waiting() < 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            b.reset();
            assert_eq!(t.join().unwrap(), Err(BarrierError::Broken));
            assert!(!b.broken());
            let b2 = Arc::clone(&b);
            let mut r = run(3, move |_| b2.wait(Some(Duration::from_secs(30))).unwrap());
            r.sort_unstable();
            assert_eq!(r, vec![0, 1, 2]);
        });
    }

    #[test]
    fn single_party_passes_at_once() {
        let b = barrier(1);
        assert_eq!(b.wait(None), Ok(0));
        assert_eq!(b.wait(None), Ok(0));
    }

    #[test]
    fn interrupted_waiter_leaves() {
        let b = barrier(2);
        let mut n = 0;
        let r = b.wait_with(
            None,
            None,
            Some(&mut || {
                n += 1;
                n < 2
            }),
        );
        assert_eq!(r, Err(BarrierError::Interrupted));
        assert_eq!(b.n_waiting(), 0);
        assert!(!b.broken());
    }

    #[test]
    fn dead_action_runner_breaks_the_barrier() {
        watchdog(|| {
            let b = barrier(2);
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let ghost = Me { process: ProcessId::pid_only(child.id()), tid: 1 };
            child.wait().unwrap();
            // The ghost arrived, then (as last party) started the action and died.
            let s = b.s();
            b.lock_mu(&Me::current(), ProcessId::is_alive);
            s.count.store(2, Ordering::Relaxed);
            s.releaser.store(ghost.stamp(), Ordering::Relaxed);
            b.unlock_mu();
            assert_eq!(b.wait(Some(Duration::from_secs(10))), Err(BarrierError::Broken));
            assert!(b.broken());
        });
    }
}
