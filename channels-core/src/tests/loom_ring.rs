//! The ring: MPMC delivery, full/empty, wrap-around, close, a dead writer.
//!
//! Threads make single attempts (no retry loops, which would make the
//! state space unbounded); what they did not get is drained afterwards and
//! the union is checked.

use super::*;
use loom::thread;
use std::sync::Arc;

fn drain(r: &Ring, att: u32) -> Vec<u64> {
    let mut out = vec![];
    loop {
        match pop(r, att) {
            Ok(v) => out.push(v),
            Err(ClaimReadError::Empty) | Err(ClaimReadError::Closed) => return out,
            Err(e) => panic!("nothing is in flight after join: {e:?}"),
        }
    }
}

#[test]
fn loom_ring_two_producers_one_consumer() {
    model(2, || {
        let t = Arc::new(ring(2));
        let ps: Vec<_> = (1..=2u64)
            .map(|p| {
                let t = Arc::clone(&t);
                thread::spawn(move || push(&t.ring, p as u32, p * 10).unwrap())
            })
            .collect();
        let t2 = Arc::clone(&t);
        let c = thread::spawn(move || pop(&t2.ring, 3).ok());
        for p in ps {
            p.join().unwrap();
        }
        let mut got: Vec<u64> = c.join().unwrap().into_iter().collect();
        got.extend(drain(&t.ring, 4));
        got.sort();
        assert_eq!(got, [10, 20], "every message exactly once");
    });
}

#[test]
fn loom_ring_open_channel_consumer_two_producers() {
    // The consumer as the channel runs it while open (`fast_empty`): it
    // never reads `tail`, and a slot still being written is waited on or
    // reported, never skipped.
    model(2, || {
        let t = Arc::new(ring(2));
        let ps: Vec<_> = (1..=2u64)
            .map(|p| {
                let t = Arc::clone(&t);
                thread::spawn(move || push(&t.ring, p as u32, p * 10).unwrap())
            })
            .collect();
        let t2 = Arc::clone(&t);
        let c = thread::spawn(move || {
            let mut got = vec![];
            for _ in 0..2 {
                match pop_with(&t2.ring, 3, true) {
                    Ok(v) => got.push(v),
                    Err(ClaimReadError::Empty) | Err(ClaimReadError::InProgress { .. }) => {}
                    Err(e) => panic!("open ring: {e:?}"),
                }
            }
            got
        });
        for p in ps {
            p.join().unwrap();
        }
        let mut got = c.join().unwrap();
        got.extend(drain(&t.ring, 4));
        got.sort();
        assert_eq!(got, [10, 20], "every message exactly once");
    });
}

#[test]
fn loom_ring_two_consumers_race_for_one_message() {
    model(3, || {
        let t = Arc::new(ring(2));
        push(&t.ring, 1, 7).unwrap();
        let cs: Vec<_> = (2..=3)
            .map(|att| {
                let t = Arc::clone(&t);
                thread::spawn(move || pop(&t.ring, att).ok())
            })
            .collect();
        let got: Vec<u64> = cs.into_iter().filter_map(|c| c.join().unwrap()).collect();
        assert_eq!(got, [7]);
        assert_eq!(pop(&t.ring, 4), Err(ClaimReadError::Empty));
    });
}

#[test]
fn loom_ring_wrap_around_keeps_fifo() {
    for cap in [2u64, 3] {
        model(3, move || {
            let t = Arc::new(ring(cap));
            // Start one slot before the end of the ring so the concurrent
            // phase wraps to the next lap.
            for v in 0..cap - 1 {
                push(&t.ring, 1, v).unwrap();
                assert_eq!(pop(&t.ring, 2), Ok(v));
            }
            let t2 = Arc::clone(&t);
            // The consumer polls as an open channel does (`fast_empty`):
            // last lap's slot not yet released counts as empty.
            let c =
                thread::spawn(move || (0..2).filter_map(|_| pop_with(&t2.ring, 2, true).ok()).collect::<Vec<u64>>());
            let sent: Vec<u64> = (100..103).filter(|&v| push(&t.ring, 1, v).is_ok()).collect();
            let mut got = c.join().unwrap();
            got.extend(drain(&t.ring, 2));
            assert_eq!(got, sent, "FIFO, nothing lost or duplicated");
            assert!(sent.len() as u64 >= cap.min(3), "a free slot was reported full");
        });
    }
}

#[test]
fn loom_ring_full_is_reported_not_overwritten() {
    model(3, || {
        let t = Arc::new(ring(2));
        let t2 = Arc::clone(&t);
        let p = thread::spawn(move || (0..3).filter(|&v| push(&t2.ring, 1, v).is_ok()).collect::<Vec<u64>>());
        let mut got: Vec<u64> = pop(&t.ring, 2).ok().into_iter().collect();
        let sent = p.join().unwrap();
        got.extend(drain(&t.ring, 2));
        assert_eq!(got, sent);
        assert!((2..=3).contains(&sent.len()), "{sent:?}");
    });
}

#[test]
fn loom_ring_close_delivers_exactly_the_counted_messages() {
    model(3, || {
        let t = Arc::new(ring(2));
        let (ta, tb) = (Arc::clone(&t), Arc::clone(&t));
        let a = thread::spawn(move || push(&ta.ring, 1, 7).is_ok());
        let b = thread::spawn(move || {
            tb.ring.close();
        });
        let early = pop(&t.ring, 3);
        let sent = a.join().unwrap();
        b.join().unwrap();
        let mut got: Vec<u64> = early.ok().into_iter().collect();
        got.extend(drain(&t.ring, 3));
        assert_eq!(pop(&t.ring, 3), Err(ClaimReadError::Closed));
        assert_eq!(got, if sent { vec![7] } else { vec![] });
        if let Err(e) = early {
            assert!(matches!(e, ClaimReadError::Empty | ClaimReadError::Closed | ClaimReadError::InProgress { .. }));
        }
    });
}

#[test]
fn loom_ring_dead_writer_is_skipped_after_recovery() {
    model(3, || {
        let t = Arc::new(ring(2));
        // Attachment 9 claims a slot and dies there.
        t.ring.claim_write(9).unwrap();
        let t2 = Arc::clone(&t);
        let p = thread::spawn(move || push(&t2.ring, 1, 5).unwrap());
        let t3 = Arc::clone(&t);
        let rec = thread::spawn(move || t3.ring.recover_claims_of(9, &mut |_, _| {}));
        let early = pop(&t.ring, 2).ok();
        p.join().unwrap();
        assert_eq!(rec.join().unwrap(), (1, 0));
        let mut got: Vec<u64> = early.into_iter().collect();
        got.extend(drain(&t.ring, 2));
        assert_eq!(got, [5]);
    });
}

#[test]
fn loom_ring_dead_writer_that_never_counted_its_claim() {
    model(3, || {
        let t = Arc::new(ring(2));
        // Attachment 9 claimed slot 0 in the slot itself and died before
        // moving tail past it.
        t.ring.slot(0).stamp.store(crate::ring::stamp(0, 9, crate::ring::WRITING), Ordering::Relaxed);
        let t2 = Arc::clone(&t);
        let p = thread::spawn(move || push(&t2.ring, 1, 5).is_ok());
        let t3 = Arc::clone(&t);
        let rec = thread::spawn(move || t3.ring.recover_claims_of(9, &mut |_, _| {}));
        let early = pop(&t.ring, 2).ok();
        let sent = p.join().unwrap();
        assert_eq!(rec.join().unwrap(), (1, 0));
        let mut got: Vec<u64> = early.into_iter().collect();
        got.extend(drain(&t.ring, 2));
        assert_eq!(got, if sent { vec![5] } else { vec![] });
        assert_eq!(t.ring.len(), 0);
        // Still a working ring afterwards.
        push(&t.ring, 1, 6).unwrap();
        assert_eq!(pop(&t.ring, 2), Ok(6));
    });
}
