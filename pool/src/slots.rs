//! [`Slots`]: what a pool's owner keeps about its workers' slots, the one
//! bookkeeping of every pool (the Rust [`crate::Pool`], and the Python
//! package's pools on one node and across nodes).
//!
//! A worker runs in a slot of the [`Ledger`]. The owner takes a free slot
//! for each worker it starts ([`Slots::take`]); when the worker exits, the
//! owner hands the slot back with how the worker ended ([`Slots::exited`]):
//! the task it recorded and never finished becomes a lost-task notice, and
//! a worker that died before it started counts towards a broken pool
//! ([`Slots::broken`]). Where the ledger is on another node (a pool's part
//! there), the node that holds it reads the slot and the owner records
//! what it answered ([`Slots::freed`]).
//!
//! Slots are taken oldest-freed first, so that a slot's words rest between
//! workers.

use crate::ledger::{ended_how, StartFailures, Words};
use crate::message::Lost;
use crate::Ledger;
use std::collections::VecDeque;

/// The free slots of a pool's workers and the count of workers that died
/// before they started. Not shared: the owner keeps it under its own lock.
#[derive(Debug, Clone)]
pub struct Slots {
    free: VecDeque<usize>,
    failures: StartFailures,
}

impl Slots {
    /// `n` slots, all free.
    pub fn new(n: usize) -> Slots {
        Slots { free: (0..n).collect(), failures: StartFailures::new() }
    }

    /// A free slot for a new worker, its words in `ledger` (if the ledger
    /// is here) made ready; `None` if every slot is taken.
    pub fn take<W: Words>(&mut self, ledger: Option<&Ledger<W>>) -> Option<usize> {
        let slot = self.free.pop_front()?;
        if let Some(l) = ledger {
            l.reset_slot(slot);
        }
        Some(slot)
    }

    /// The worker for `slot` could not be started: the slot is free again,
    /// first in line.
    pub fn not_started(&mut self, slot: usize) {
        self.free.push_front(slot);
    }

    /// The worker in `slot` exited (`pid`; `exit_code`, or minus its
    /// signal), its slot in `ledger`: the notice of the task it recorded
    /// and never finished, if any (`None` as well when `report` is false: a
    /// pool being terminated reports nothing). The slot is free again.
    /// Only once the worker is known to have exited.
    pub fn exited<W: Words>(
        &mut self,
        ledger: &Ledger<W>,
        slot: usize,
        pid: i64,
        exit_code: i64,
        report: bool,
    ) -> Option<Lost> {
        let notice = if report { ledger.lost(slot, pid, exit_code) } else { None };
        self.failures.worker_exited(ledger.started(slot), exit_code);
        ledger.reset_slot(slot);
        self.free.push_back(slot);
        notice
    }

    /// The worker in `slot` exited and the node that holds the ledger has
    /// read its slot: whether it had `started`, and how it ended. The slot
    /// is free again.
    pub fn freed(&mut self, slot: usize, started: bool, exit_code: i64) {
        self.failures.worker_exited(started, exit_code);
        self.free.push_back(slot);
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Workers that died before they started, in a row, and how the last
    /// of them ended.
    pub fn failures(&self) -> &StartFailures {
        &self.failures
    }

    /// Why the pool is broken, if it is: workers died before they started
    /// often enough in a row, and no worker alive has started
    /// (`any_started_alive`). `place`, where they run ("on node2"), goes
    /// into the reason.
    pub fn broken(&self, any_started_alive: bool, place: Option<&str>) -> Option<String> {
        if !self.failures.broken(any_started_alive) {
            return None;
        }
        let place = place.map_or_else(String::new, |p| format!(" {p}"));
        Some(format!(
            "the pool's worker processes{place} die before they start ({} in a row, the last {}; \
             their stderr says why): the task was not run",
            self.failures.in_a_row(),
            ended_how(self.failures.last().unwrap_or(0))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Gap;
    use shm_primitives::sync::AtomicU64;

    type Heap = Ledger<Vec<AtomicU64>>;

    #[test]
    fn slots_go_round_oldest_freed_first() {
        let led = Heap::heap(3);
        let mut s = Slots::new(3);
        assert_eq!([s.take(Some(&led)), s.take(Some(&led)), s.take(Some(&led))], [Some(0), Some(1), Some(2)]);
        assert_eq!(s.take(Some(&led)), None);
        s.exited(&led, 1, 10, 0, true);
        s.exited(&led, 0, 11, 0, true);
        assert_eq!(s.take(Some(&led)), Some(1));
        s.not_started(1);
        assert_eq!(s.free(), 2);
        assert_eq!(s.take(None::<&Heap>), Some(1), "a slot that could not start is first again");
    }

    #[test]
    fn an_exited_worker_leaves_the_notice_of_its_unfinished_task_once() {
        let led = Heap::heap(2);
        led.init(0);
        let mut s = Slots::new(2);
        let slot = s.take(Some(&led)).unwrap();
        led.mark_started(slot);
        assert_eq!(led.record(Some(slot), 0), None::<Gap>);
        let n = s.exited(&led, slot, 42, -9, true).expect("the task it took is lost");
        assert_eq!((n.seq, n.count, n.pid, n.exit_code), (0, 1, 42, -9));
        // The slot is ready for the next worker: nothing recorded, not started.
        assert_eq!(led.recorded(slot), None);
        assert!(!led.started(slot));
        // A finished task is not lost; a terminating pool reports nothing.
        let slot = s.take(Some(&led)).unwrap();
        assert_eq!(led.record(Some(slot), 1), None);
        led.finish(slot);
        assert!(s.exited(&led, slot, 43, 0, true).is_none());
        let slot = s.take(Some(&led)).unwrap();
        assert_eq!(led.record(Some(slot), 2), None);
        assert!(s.exited(&led, slot, 44, -15, false).is_none());
    }

    #[test]
    fn workers_that_die_before_starting_break_the_pool_unless_one_lives() {
        let led = Heap::heap(1);
        let mut s = Slots::new(1);
        for _ in 0..crate::MAX_START_FAILURES {
            let slot = s.take(Some(&led)).unwrap();
            assert!(s.broken(false, None).is_none());
            s.exited(&led, slot, 1, 1, true);
        }
        let why = s.broken(false, Some("on node2")).expect("broken");
        assert!(why.starts_with("the pool's worker processes on node2 die before they start (3 in a row"), "{why}");
        assert!(s.broken(true, None).is_none(), "a started worker is alive");
        // Killed from outside says nothing about the next worker; one that
        // started resets the count.
        let mut s = Slots::new(1);
        s.freed(0, false, -9);
        s.freed(0, false, 1);
        assert_eq!(s.failures().in_a_row(), 1);
        s.freed(0, true, 1);
        assert_eq!(s.failures().in_a_row(), 0);
    }
}
