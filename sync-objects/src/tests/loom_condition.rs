//! The condition: no lost wake-up with the usual predicate loop, and exact
//! notify accounting against timed-out waiters.

use super::super::{Condition, Lock, Waiter};
use super::{all_alive, me, region};
use loom::sync::Arc;
use shm_primitives::region::HeapRegion;
use shm_primitives::sync::{AtomicU32, Ordering};
use std::sync::Arc as StdArc;

type R = StdArc<HeapRegion>;

fn objects(waiters: u32) -> (Condition<R>, Lock<R>) {
    let r = region();
    // SAFETY: disjoint places in a fresh region.
    unsafe {
        let c = Condition::init(StdArc::clone(&r), 0, 1, 1, waiters).unwrap();
        let l = Lock::init(r, Condition::<R>::size_for(waiters), 2, 1).unwrap();
        (c, l)
    }
}

#[test]
fn loom_condition_predicate_wait_is_woken() {
    super::bounded(2).check(|| {
        let (c, l) = objects(2);
        let shared = Arc::new((c, l, AtomicU32::new(0)));
        let s2 = Arc::clone(&shared);
        let t = loom::thread::spawn(move || {
            let (c, l, flag) = &*s2;
            let m = me(1);
            l.raw().lock(&m, all_alive, &mut Waiter::forever()).unwrap();
            while flag.load(Ordering::Relaxed) == 0 {
                c.wait_as(&m, all_alive, l, &mut Waiter::forever()).unwrap();
            }
            l.raw().unlock().unwrap();
        });
        let (c, l, flag) = &*shared;
        let m = me(0);
        l.raw().lock(&m, all_alive, &mut Waiter::forever()).unwrap();
        flag.store(1, Ordering::Relaxed);
        c.notify_as(&m, all_alive, 1);
        l.raw().unlock().unwrap();
        t.join().unwrap();
        assert_eq!(c.waiting() + c.notified_pending(), 0);
    });
}

#[test]
fn loom_condition_notify_count_matches_timed_out_waiter() {
    super::bounded(2).check(|| {
        let (c, l) = objects(2);
        let shared = Arc::new((c, l));
        let s2 = Arc::clone(&shared);
        let t = loom::thread::spawn(move || {
            let (c, l) = &*s2;
            let m = me(1);
            l.raw().lock(&m, all_alive, &mut Waiter::forever()).unwrap();
            let mut w = Waiter::new(Some(std::time::Duration::from_secs(1)), None);
            let r = c.wait_as(&m, all_alive, l, &mut w).unwrap();
            l.raw().unlock().unwrap();
            r.notified
        });
        let (c, _) = &*shared;
        let woken = c.notify_as(&me(0), all_alive, 1);
        let notified = t.join().unwrap();
        assert_eq!(notified, woken == 1, "a notification is counted iff the waiter got it");
        assert_eq!(c.waiting() + c.notified_pending(), 0);
    });
}

#[test]
fn loom_condition_notify_one_wakes_exactly_one() {
    super::bounded(1).check(|| {
        let (c, l) = objects(2);
        let shared = Arc::new((c, l, AtomicU32::new(0)));
        let ts: Vec<_> = (1..=2)
            .map(|i| {
                let s2 = Arc::clone(&shared);
                loom::thread::spawn(move || {
                    let (c, l, registered) = &*s2;
                    let m = me(i);
                    l.raw().lock(&m, all_alive, &mut Waiter::forever()).unwrap();
                    registered.fetch_add(1, Ordering::Relaxed);
                    let r = c.wait_as(&m, all_alive, l, &mut Waiter::forever()).unwrap();
                    l.raw().unlock().unwrap();
                    assert!(r.notified);
                })
            })
            .collect();
        let (c, l, registered) = &*shared;
        let m = me(0);
        // Both waiters are registered once they have released the lock
        // after counting themselves.
        loop {
            l.raw().lock(&m, all_alive, &mut Waiter::forever()).unwrap();
            if registered.load(Ordering::Relaxed) == 2 {
                break;
            }
            l.raw().unlock().unwrap();
            loom::thread::yield_now();
        }
        assert_eq!(c.notify_as(&m, all_alive, 1), 1);
        assert_eq!(c.waiting(), 1, "exactly one waiter was chosen");
        assert_eq!(c.notify_as(&m, all_alive, 1), 1);
        assert_eq!(c.notify_as(&m, all_alive, 1), 0);
        l.raw().unlock().unwrap();
        for t in ts {
            t.join().unwrap();
        }
    });
}
