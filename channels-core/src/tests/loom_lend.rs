//! The lent-block protocol: the owner's release races the last unpins (and
//! the sweep of a dead pinner); exactly one of them frees the block, and it
//! is never freed while pinned.

use super::model;
use crate::lend::{Lent, LentState};
use loom::sync::Arc;
use loom::thread;

/// A block owned by attachment 1 and pinned by 2 and 3 (which had it
/// before and forwarded it), as after an echo round trip.
fn pinned_block() -> (Arc<Lent>, u32) {
    let l = Arc::new(Lent::new());
    let g = l.take(2).unwrap();
    let m = l.send(2, g).unwrap();
    assert!(l.receive(3, m));
    l.pin(3);
    let m = l.send(3, m).unwrap();
    assert!(l.receive(1, m));
    l.pin(2); // attachment 2 mapped it in an earlier round and still does
    (l, m)
}

fn count(rs: Vec<thread::JoinHandle<bool>>) -> usize {
    rs.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
}

#[test]
fn loom_lend_release_races_unpins() {
    model(3, || {
        let (l, g) = pinned_block();
        let hs = vec![
            thread::spawn({
                let l = l.clone();
                move || l.release(1, g)
            }),
            thread::spawn({
                let l = l.clone();
                move || l.unpin(2)
            }),
            thread::spawn({
                let l = l.clone();
                move || l.unpin(3)
            }),
        ];
        assert_eq!(count(hs), 1, "exactly one party frees the block");
        assert_eq!(l.state().0, LentState::Free);
    });
}

#[test]
fn loom_lend_release_races_sweep_of_dead_pinner() {
    model(3, || {
        let (l, g) = pinned_block();
        assert!(!l.unpin(3));
        let hs = vec![
            thread::spawn({
                let l = l.clone();
                move || l.release(1, g)
            }),
            thread::spawn({
                let l = l.clone();
                move || l.sweep(2)
            }),
        ];
        assert_eq!(count(hs), 1);
        assert_eq!(l.state().0, LentState::Free);
    });
}

#[test]
fn loom_lend_never_free_while_pinned() {
    model(3, || {
        let (l, g) = pinned_block();
        let h = thread::spawn({
            let l = l.clone();
            move || l.release(1, g)
        });
        let freed = l.unpin(2);
        // 3 still pins it: nobody may free it.
        assert!(!freed);
        assert!(!h.join().unwrap());
        assert_eq!(l.state().0, LentState::Zombie(1));
        assert!(l.unpin(3));
        // A new taker gets a new generation.
        assert!(l.take(5).is_some_and(|g2| g2 != g));
    });
}
