//! The attachment table: concurrent attaches get distinct rows, a row is
//! never seen with one process's pid and another's start time or roles,
//! a detached row is reused whole, and a dead attacher's row (or a dead
//! sweeper's sweep) is taken over by exactly one sweeper and then freed.
//!
//! Threads play processes with made-up pids: pids below 100 are dead,
//! the others alive.

use super::model;
use crate::attach::{Roles, Table};
use crate::layout::{AttachCtl, AttachRow};
use loom::sync::Arc;
use loom::thread;
use shm_primitives::process::ProcessId;
use shm_primitives::sync::{AtomicU32, AtomicU64};
use std::ptr::NonNull;

/// A table of `max` rows in heap memory.
struct TestTable {
    table: Table,
    _ctl: Box<AttachCtl>,
    _rows: Box<[AttachRow]>,
}

impl std::ops::Deref for TestTable {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.table
    }
}

fn table(max: u32) -> Arc<TestTable> {
    let ctl = Box::new(AttachCtl {
        version: AtomicU64::new(0),
        latch: AtomicU32::new(0),
        high_water: AtomicU32::new(0),
        last_check_ms: AtomicU64::new(0),
    });
    let rows: Box<[AttachRow]> = (0..max)
        .map(|_| AttachRow {
            owner: AtomicU64::new(0),
            start: AtomicU64::new(0),
            roles: AtomicU32::new(0),
            reserved: AtomicU32::new(0),
        })
        .collect();
    // SAFETY: both live in the boxes kept next to the table, initialised,
    // for as long as the table.
    let table = unsafe { Table::new(NonNull::from(&*ctl), NonNull::from(&rows[..]).cast(), max) }.with_liveness(alive);
    Arc::new(TestTable { table, _ctl: ctl, _rows: rows })
}

fn alive(p: &ProcessId) -> bool {
    p.pid >= 100
}

/// Made-up process `pid`, with a start time derived from it, so a row
/// mixing two processes shows.
fn process(pid: u32) -> ProcessId {
    ProcessId { pid, start: u64::from(pid) * 1000 + 7 }
}

/// What an observer may see of row `att`: nothing, a claim in progress
/// (pid only), or a whole identity.
fn check_row(t: &Table, att: u32) {
    if let Some(p) = t.process(att) {
        assert!(p.start == 0 || p == process(p.pid), "row {att} mixes processes: {p:?}");
    }
}

#[test]
fn loom_attach_concurrent_claims_get_distinct_whole_rows() {
    model(2, || {
        let t = table(2);
        let hs: Vec<_> = [(101, Roles::SEND), (102, Roles::RECV)]
            .into_iter()
            .map(|(pid, roles)| {
                let t = Arc::clone(&t);
                thread::spawn(move || t.claim(process(pid), roles).expect("a free row"))
            })
            .collect();
        // An observer meanwhile: rows are never seen half-written.
        check_row(&t, 1);
        check_row(&t, 2);
        let counts = t.counts();
        assert!(counts.0 <= 1 && counts.1 <= 1, "{counts:?}");
        let ids: Vec<u32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(t.process(ids[0]), Some(process(101)));
        assert_eq!(t.process(ids[1]), Some(process(102)));
        assert_eq!(t.counts(), (1, 1));
        assert_eq!(t.latch(), Roles::BOTH);
    });
}

#[test]
fn loom_attach_detached_row_is_reused_whole() {
    model(2, || {
        let t = table(1);
        let a = t.claim(process(101), Roles::SEND).unwrap();
        let t2 = Arc::clone(&t);
        let h = thread::spawn(move || {
            // Attach once the only row is free again.
            loop {
                if let Some(att) = t2.claim(process(102), Roles::RECV) {
                    return att;
                }
                thread::yield_now();
            }
        });
        let t3 = Arc::clone(&t);
        let observer = thread::spawn(move || {
            check_row(&t3, 1);
            let (s, r) = t3.counts();
            assert!(s + r <= 1, "two attachments counted in one row");
        });
        t.release(a);
        assert_eq!(h.join().unwrap(), 1);
        observer.join().unwrap();
        assert_eq!(t.process(1), Some(process(102)));
        assert_eq!(t.counts(), (0, 1));
    });
}

#[test]
fn loom_attach_dead_attacher_is_swept_once() {
    model(2, || {
        let t = table(3);
        // Row 1: a process that died while attached.
        assert_eq!(t.claim(process(66), Roles::BOTH), Some(1));
        let a = t.claim(process(101), Roles::BOTH).unwrap();
        let b = t.claim(process(102), Roles::BOTH).unwrap();
        let hs: Vec<_> = [a, b]
            .into_iter()
            .map(|me| {
                let t = Arc::clone(&t);
                thread::spawn(move || {
                    t.find_dead();
                    let mut swept = 0;
                    while let Some(claim) = t.claim_sweep(me) {
                        assert_eq!(claim.att, 1, "only the dead row is swept");
                        t.finish_sweep(claim);
                        swept += 1;
                    }
                    swept
                })
            })
            .collect();
        let swept: u32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(swept, 1, "exactly one sweeper");
        assert_eq!(t.in_use(), 2);
        assert_eq!(t.process(1), None);
        // The row is free for a new attacher, whole.
        assert_eq!(t.claim(process(103), Roles::SEND), Some(1));
        assert_eq!(t.process(1), Some(process(103)));
    });
}

#[test]
fn loom_attach_dead_sweepers_sweep_is_taken_over() {
    model(2, || {
        let t = table(4);
        // Row 1 died; row 2 claimed its sweep and died too.
        assert_eq!(t.claim(process(66), Roles::BOTH), Some(1));
        assert_eq!(t.claim(process(67), Roles::BOTH), Some(2));
        assert_eq!(t.find_dead(), 2);
        let first = t.claim_sweep(2).expect("the dead sweeper's claim");
        assert_eq!(first.att, 1);
        let a = t.claim(process(101), Roles::BOTH).unwrap();
        let b = t.claim(process(102), Roles::BOTH).unwrap();
        let hs: Vec<_> = [a, b]
            .into_iter()
            .map(|me| {
                let t = Arc::clone(&t);
                thread::spawn(move || {
                    let mut swept = Vec::new();
                    while let Some(claim) = t.claim_sweep(me) {
                        if claim.att == 2 {
                            // The dead sweeper's own sweeps go back to DEAD.
                            t.orphan_sweeps_of(2);
                        }
                        t.finish_sweep(claim);
                        swept.push(claim.att);
                    }
                    swept
                })
            })
            .collect();
        let mut swept: Vec<u32> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        swept.sort_unstable();
        assert_eq!(swept, [1, 2], "each dead row swept exactly once");
        assert_eq!(t.in_use(), 2);
    });
}
