//! The robust lock word: mutual exclusion, no lost wake-up, and exactly one
//! taker of a lock whose holder died.

use super::super::lock::RawLock;
use super::super::{Acquired, Waiter};
use super::{all_alive, bounded, me};
use loom::sync::Arc;
use shm_primitives::process::ProcessId;
use shm_primitives::sync::{AtomicU32, Ordering};

/// A non-atomic-style increment (load then store): lost updates would show
/// if two threads were ever inside together or the hand-over lacked
/// Acquire/Release.
fn bump(c: &AtomicU32) {
    let v = c.load(Ordering::Relaxed);
    c.store(v + 1, Ordering::Relaxed);
}

#[test]
fn loom_lock_excludes_and_wakes() {
    bounded(3).check(|| {
        let l = Arc::new((RawLock::new(), AtomicU32::new(0)));
        let ts: Vec<_> = (0..2)
            .map(|i| {
                let l = Arc::clone(&l);
                loom::thread::spawn(move || {
                    let m = me(i);
                    assert_eq!(l.0.lock(&m, all_alive, &mut Waiter::forever()), Ok(Acquired::Normal));
                    bump(&l.1);
                    l.0.unlock().unwrap();
                })
            })
            .collect();
        let m = me(9);
        l.0.lock(&m, all_alive, &mut Waiter::forever()).unwrap();
        bump(&l.1);
        l.0.unlock().unwrap();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(l.1.load(Ordering::Relaxed), 3);
        assert_eq!(l.0.holder(), None);
    });
}

#[test]
fn loom_lock_release_by_other_thread_and_double_release() {
    loom::model(|| {
        let l = Arc::new(RawLock::new());
        l.lock(&me(0), all_alive, &mut Waiter::forever()).unwrap();
        let l2 = Arc::clone(&l);
        let t = loom::thread::spawn(move || l2.unlock().is_ok());
        let mine = l.unlock().is_ok();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one release succeeds");
    });
}

#[test]
fn loom_lock_dead_holder_has_one_taker() {
    fn ghost_dead(p: &ProcessId) -> bool {
        p.pid != 66
    }
    loom::model(|| {
        let l = Arc::new(RawLock::new());
        let ghost = super::super::Me { process: ProcessId::pid_only(66), tid: 66 };
        assert_eq!(l.try_lock(&ghost, ghost_dead), Some(Acquired::Normal));
        let l2 = Arc::clone(&l);
        let t = loom::thread::spawn(move || l2.try_lock(&me(1), ghost_dead));
        let a = l.try_lock(&me(0), ghost_dead);
        let b = t.join().unwrap();
        let takers = [a, b].iter().filter(|x| **x == Some(Acquired::OwnerDied { pid: 66 })).count();
        assert_eq!(takers, 1);
        assert!(a.is_none() || b.is_none());
    });
}

#[test]
fn loom_lock_timed_acquire_gives_up_cleanly() {
    loom::model(|| {
        let l = Arc::new(RawLock::new());
        l.lock(&me(0), all_alive, &mut Waiter::forever()).unwrap();
        let l2 = Arc::clone(&l);
        let t = loom::thread::spawn(move || {
            let mut w = Waiter::new(Some(std::time::Duration::from_secs(1)), None);
            l2.lock(&me(1), all_alive, &mut w)
        });
        l.unlock().unwrap();
        match t.join().unwrap() {
            Ok(_) => l.unlock().unwrap(),
            Err(e) => {
                assert_eq!(e, super::super::WaitError::TimedOut);
                assert_eq!(l.holder(), None);
            }
        }
    });
}

#[test]
fn loom_rlock_threads_of_one_process() {
    use super::super::RLock;
    bounded(3).check(|| {
        let r = super::region();
        // SAFETY: a fresh region used only by this lock.
        let l = Arc::new((unsafe { RLock::init(r, 0, 1, 1) }.unwrap(), AtomicU32::new(0)));
        // Two threads of the same process (same pid, different tids).
        let t = {
            let l = Arc::clone(&l);
            loom::thread::spawn(move || {
                let m = super::super::Me { tid: 2, ..me(0) };
                l.0.acquire_as(&m, all_alive, &mut Waiter::forever()).unwrap();
                l.0.acquire_as(&m, all_alive, &mut Waiter::forever()).unwrap();
                bump(&l.1);
                l.0.release_as(&m).unwrap();
                bump(&l.1);
                l.0.release_as(&m).unwrap();
            })
        };
        let m = super::super::Me { tid: 1, ..me(0) };
        l.0.acquire_as(&m, all_alive, &mut Waiter::forever()).unwrap();
        bump(&l.1);
        assert_eq!(l.0.release_as(&super::super::Me { tid: 2, ..me(0) }), Err(super::super::ReleaseError::NotOwner));
        l.0.release_as(&m).unwrap();
        t.join().unwrap();
        assert_eq!(l.1.load(Ordering::Relaxed), 3);
        assert!(!l.0.is_locked());
    });
}
