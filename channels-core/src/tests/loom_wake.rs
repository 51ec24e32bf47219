//! The sleep/wake handshake: a waiter that announces itself, re-checks and
//! sleeps is always woken. Sleeps here have no timeout, so a lost wake-up is
//! a deadlock loom reports.

use super::*;
use crate::layout::{WaitWord, SELECT_WAITER_ONE, WAITER_ONE};
use crate::wake;
use loom::thread;
use shm_primitives::futex;
use shm_primitives::sync::AtomicU32;
use std::sync::Arc;

struct Chan {
    t: TestRing,
    not_empty: WaitWord,
}

fn chan() -> Chan {
    Chan { t: ring(1), not_empty: WaitWord { seq: AtomicU32::new(0), waiters: AtomicU32::new(0) } }
}

fn blocking_pop(c: &Chan, att: u32) -> u64 {
    loop {
        if let Ok(v) = pop(&c.t.ring, att) {
            return v;
        }
        let seq = wake::announce(&c.not_empty, WAITER_ONE);
        if let Ok(v) = pop(&c.t.ring, att) {
            wake::retract(&c.not_empty, WAITER_ONE);
            return v;
        }
        futex::wait(&c.not_empty.seq, seq, None);
        wake::retract(&c.not_empty, WAITER_ONE);
    }
}

fn send(c: &Chan, v: u64) {
    push(&c.t.ring, 1, v).unwrap();
    wake::notify(&c.not_empty);
}

#[test]
fn loom_wake_no_lost_wakeup() {
    model(3, || {
        let c = Arc::new(chan());
        let c2 = Arc::clone(&c);
        let rx = thread::spawn(move || blocking_pop(&c2, 2));
        send(&c, 42);
        assert_eq!(rx.join().unwrap(), 42);
    });
}

#[test]
fn loom_wake_select_over_two_channels() {
    model(3, || {
        let cs = Arc::new([chan(), chan()]);
        let c2 = Arc::clone(&cs);
        let rx = thread::spawn(move || {
            let ready = |c: &[Chan; 2]| c.iter().position(|c| c.t.ring.readable(false));
            loop {
                if let Some(i) = ready(&c2) {
                    return i;
                }
                let seqs: Vec<u32> = c2.iter().map(|c| wake::announce(&c.not_empty, SELECT_WAITER_ONE)).collect();
                let r = ready(&c2);
                if r.is_none() {
                    let words: Vec<_> = c2.iter().zip(&seqs).map(|(c, &s)| (&c.not_empty.seq, s)).collect();
                    futex::wait_any(&words, None);
                }
                for c in c2.iter() {
                    wake::retract(&c.not_empty, SELECT_WAITER_ONE);
                }
                if let Some(i) = r {
                    return i;
                }
            }
        });
        send(&cs[1], 9);
        assert_eq!(rx.join().unwrap(), 1);
    });
}
