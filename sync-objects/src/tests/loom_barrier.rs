//! The barrier: two parties pass together, indexes are distinct, and the
//! barrier is reusable.

use super::super::{Barrier, Waiter};
use super::{all_alive, me, region};
use loom::sync::Arc;

#[test]
fn loom_barrier_two_parties() {
    super::bounded(2).check(|| {
        // SAFETY: a fresh region used only by this barrier.
        let b = Arc::new(unsafe { Barrier::init(region(), 0, 1, 1, 2) }.unwrap());
        let b2 = Arc::clone(&b);
        let t = loom::thread::spawn(move || b2.wait_as(&me(1), all_alive, &mut Waiter::forever(), None).unwrap());
        let a = b.wait_as(&me(0), all_alive, &mut Waiter::forever(), None).unwrap();
        let c = t.join().unwrap();
        assert_eq!(a + c, 1, "indexes 0 and 1");
        assert_eq!(b.n_waiting(), 0);
        assert!(!b.broken());
    });
}

#[test]
fn loom_barrier_abort_releases_waiter() {
    loom::model(|| {
        // SAFETY: a fresh region used only by this barrier.
        let b = Arc::new(unsafe { Barrier::init(region(), 0, 1, 1, 2) }.unwrap());
        let b2 = Arc::clone(&b);
        let t = loom::thread::spawn(move || b2.wait_as(&me(1), all_alive, &mut Waiter::forever(), None));
        b.abort_as(&me(0), all_alive);
        assert!(t.join().unwrap().is_err());
        assert!(b.broken());
    });
}
