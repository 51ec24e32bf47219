//! Loom model of the ledger: a sender, takers that take under a lock, one
//! of which dies somewhere in the middle, and the pool's owner, which reads
//! the dead taker's slot and finally takes what is left. Every task sent is
//! accounted for exactly once: a result, or a lost notice (a gap, or the
//! dead worker's slot); a gap never covers a task that has a result or is
//! in a slot, and no two notices cover one task.
//!
//! The robust lock is modelled by a word with a holder and a "dead" flag
//! per thread: a thread that dies sets its flag (Release: the kernel's exit
//! orders everything the process did before it) and never releases; a
//! taker takes a dead holder's lock over after reading the flag (Acquire:
//! the liveness check). The ring is one slot per task, published with a
//! Release store and read with an Acquire load, its read position moved
//! only under the lock, as takers receive only under the lock (the real
//! ring has models of its own in `channels-core`): so a taker that read
//! SENT without its Acquire could find a sent task's slot still empty and
//! report a gap that is none, which the checks below catch.

use crate::ledger::{take, Gap, Ledger, Taker};
use loom::sync::{Arc, Mutex};
use shm_primitives::sync::{AtomicU32, AtomicU64, Ordering};

const TASKS: i64 = 3;
const DYING: usize = 1;

struct Lock {
    word: AtomicU32,
    dead: [AtomicU32; 4],
}

impl Lock {
    fn new() -> Lock {
        Lock { word: AtomicU32::new(0), dead: std::array::from_fn(|_| AtomicU32::new(0)) }
    }

    fn acquire(&self, me: u32) {
        loop {
            match self.word.compare_exchange(0, me + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return,
                Err(h) => {
                    let holder = (h - 1) as usize;
                    if self.dead[holder].load(Ordering::Acquire) == 1
                        && self.word.compare_exchange(h, me + 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
                    {
                        return;
                    }
                }
            }
            loom::thread::yield_now();
        }
    }

    fn release(&self) {
        self.word.store(0, Ordering::Release);
    }

    fn die(&self, me: usize) {
        self.dead[me].store(1, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Result(i64),
    Gap(Gap),
    SlotLost(i64),
}

struct World {
    ledger: Ledger<Vec<AtomicU64>>,
    lock: Lock,
    /// Slot `seq`: 0 empty, `seq + 1` sent.
    ring: [AtomicU64; TASKS as usize],
    /// The ring's read position (moved under the lock).
    head: AtomicU64,
    results: Mutex<Vec<Event>>,
}

impl World {
    fn send(&self, seq: i64) {
        // SYNC POINT model-slot: Release; the task is in its slot.
        self.ring[seq as usize].store(seq as u64 + 1, Ordering::Release);
    }

    fn pop(&self) -> Option<i64> {
        // Relaxed: moved only under the lock, whose hand-over orders it.
        let h = self.head.load(Ordering::Relaxed);
        if h >= TASKS as u64 {
            return None;
        }
        // SYNC POINT model-slot: Acquire; the task in the slot.
        let v = self.ring[h as usize].load(Ordering::Acquire);
        if v == 0 {
            return None;
        }
        // Relaxed: as above.
        self.head.store(h + 1, Ordering::Relaxed);
        Some(v as i64 - 1)
    }
}

struct ModelTaker<'a>(&'a World);

impl Taker for ModelTaker<'_> {
    type Msg = i64;
    type Error = ();
    fn try_recv(&mut self) -> Result<Option<i64>, ()> {
        Ok(self.0.pop())
    }
    fn recv_wait(&mut self) -> Result<Option<i64>, ()> {
        // A wait that gives up at once (a timeout): the owner's last take
        // collects whatever is still to come.
        Ok(self.0.pop())
    }
    fn seq(&self, m: &i64) -> Result<i64, ()> {
        Ok(*m)
    }
    fn report(&mut self, gap: Gap) -> Result<(), ()> {
        self.0.results.lock().unwrap().push(Event::Gap(gap));
        Ok(())
    }
}

/// Where the dying taker dies.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// After taking the task from the ring, before recording it.
    BeforeRecord,
    /// After recording it, before sending a result.
    AfterRecord,
    /// After sending the result, before clearing its slot.
    AfterResult,
}

fn run_one(w: &World, me: usize) -> bool {
    w.lock.acquire(me as u32);
    let got = take(&w.ledger, Some(me), &mut ModelTaker(w)).unwrap();
    w.lock.release();
    match got {
        Some(seq) => {
            w.results.lock().unwrap().push(Event::Result(seq));
            w.ledger.finish(me);
            true
        }
        None => false,
    }
}

/// The dying taker; returns the task it took, if any.
fn dying(w: &World, death: Death) -> Option<i64> {
    w.lock.acquire(DYING as u32);
    let got = match death {
        Death::BeforeRecord => {
            let _ = w.ledger.sent();
            w.pop()
        }
        Death::AfterRecord => take(&w.ledger, Some(DYING), &mut ModelTaker(w)).unwrap(),
        Death::AfterResult => {
            let got = take(&w.ledger, Some(DYING), &mut ModelTaker(w)).unwrap();
            w.lock.release();
            if let Some(seq) = got {
                w.results.lock().unwrap().push(Event::Result(seq));
            }
            got
        }
    };
    w.lock.die(DYING);
    got
}

fn model(death: Death, live_takes: usize) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(move || {
        let w = Arc::new(World {
            ledger: Ledger::<Vec<AtomicU64>>::heap(3),
            lock: Lock::new(),
            ring: std::array::from_fn(|_| AtomicU64::new(0)),
            head: AtomicU64::new(0),
            results: Mutex::new(Vec::new()),
        });
        let sender = {
            let w = Arc::clone(&w);
            loom::thread::spawn(move || {
                for seq in 0..TASKS {
                    w.send(seq);
                    w.ledger.publish_sent(seq + 1);
                }
            })
        };
        let live = {
            let w = Arc::clone(&w);
            loom::thread::spawn(move || {
                for _ in 0..live_takes {
                    run_one(&w, 0);
                }
            })
        };
        let dead = {
            let w = Arc::clone(&w);
            loom::thread::spawn(move || dying(&w, death))
        };
        sender.join().unwrap();
        live.join().unwrap();
        let took = dead.join().unwrap();
        // The owner: the dead worker's slot (after its exit), then the
        // rest, as a taker of its own (slot 2).
        if let Some(n) = w.ledger.lost(DYING, 66, -9) {
            w.results.lock().unwrap().push(Event::SlotLost(n.seq));
        }
        while run_one(&w, 2) {}

        let events = w.results.lock().unwrap().clone();
        let mut results = [0; TASKS as usize];
        let mut gaps = [0; TASKS as usize];
        let mut slot_lost = [0; TASKS as usize];
        for e in &events {
            match *e {
                Event::Result(s) => results[s as usize] += 1,
                Event::SlotLost(s) => slot_lost[s as usize] += 1,
                Event::Gap(g) => {
                    assert!(g.count > 0 && g.first >= 0 && g.first + g.count <= TASKS, "gap {g:?}");
                    for s in g.first..g.first + g.count {
                        gaps[s as usize] += 1;
                    }
                }
            }
        }
        for s in 0..TASKS as usize {
            assert!(results[s] <= 1 && gaps[s] <= 1 && slot_lost[s] <= 1, "task {s} twice: {events:?}");
            assert!(gaps[s] == 0 || results[s] + slot_lost[s] == 0, "task {s} both ran and is a gap: {events:?}");
            assert!(results[s] + gaps[s] + slot_lost[s] >= 1, "task {s} neither ran nor is lost: {events:?}");
            if slot_lost[s] == 1 && results[s] == 1 {
                // Only the worker that died after sending its result; its
                // result is ahead of the notice, so the notice finds the
                // task done.
                assert!(matches!(death, Death::AfterResult), "task {s}: {events:?}");
                let r = events.iter().position(|e| *e == Event::Result(s as i64));
                let l = events.iter().position(|e| *e == Event::SlotLost(s as i64));
                assert!(r < l, "the lost notice overtook the result: {events:?}");
            }
        }
        let expected_slot_lost = match (death, took) {
            (Death::BeforeRecord, _) | (_, None) => None,
            (_, Some(s)) => Some(s),
        };
        for s in 0..TASKS {
            assert_eq!(slot_lost[s as usize] == 1, expected_slot_lost == Some(s), "task {s}: {events:?}");
        }
        if let (Death::BeforeRecord, Some(s)) = (death, took) {
            assert_eq!(gaps[s as usize], 1, "the task taken unrecorded is a gap: {events:?}");
        }
    });
}

#[test]
fn loom_ledger_taker_dies_before_recording() {
    model(Death::BeforeRecord, 2);
}

#[test]
fn loom_ledger_taker_dies_after_recording() {
    model(Death::AfterRecord, 2);
}

#[test]
fn loom_ledger_taker_dies_after_its_result() {
    model(Death::AfterResult, 1);
}
