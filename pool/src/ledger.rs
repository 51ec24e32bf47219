//! The task ledger: which task each worker runs, so that the task of a
//! worker that dies is reported lost, exactly once, whatever instruction
//! it died at.
//!
//! The ledger is an array of 64-bit words in shared memory (Python reads
//! and writes the same words through a `memoryview`), `2 + 2 * slots` of
//! them:
//!
//! ```text
//!  word 0            NEXT        sequence number of the next task to be taken
//!  word 1            SENT        tasks sent (every task below it is in the ring or taken)
//!  word 2 + 2*slot   REC[slot]   the task the worker in that slot runs, or IDLE (-1)
//!  word 3 + 2*slot   STARTED[slot]  1 once the worker in that slot runs its loop
//! ```
//!
//! Tasks are numbered in the order they are sent and taken one at a time
//! under the pool's robust lock (a holder that dies releases it to the next
//! taker). A taker ([`take`]) reads SENT, then looks at the ring:
//!
//! - it gets a task: every task between NEXT and it was taken by a worker
//!   that died before recording it (a *gap*, reported lost); it records the
//!   task in its slot and moves NEXT past it;
//! - the ring is empty: every task below the SENT it read left the ring, so
//!   those from NEXT up were taken by a worker that died (a gap at the end).
//!
//! A worker that exits leaves its slot: a recorded task ([`Ledger::lost`])
//! had no result and is reported lost, through the result channel *behind*
//! whatever results the worker sent, so a result that made it is never
//! reported lost.
//!
//! Synchronising edges (`// SYNC POINT` names):
//!
//! - `pool-sent`: the sender's Release store of SENT after the task is in
//!   the ring, and a taker's Acquire load of it; a taker that read SENT = n
//!   sees tasks below n in the ring (or taken).
//!
//! Every other word is written and read under the pool lock (NEXT, REC by
//! takers), whose hand-over orders them (`lock-handoff` in `sync-objects`),
//! or read by the pool's owner only after the writer exited (REC, STARTED:
//! the kernel's exit and `waitpid` order them), or is a hint (STARTED read
//! for the broken-pool decision).
use shm_primitives::sync::{AtomicU64, Ordering};

/// Word of the next task to be taken.
pub const NEXT: usize = 0;
/// Word of the number of tasks sent.
pub const SENT: usize = 1;
/// Word of slot 0's recorded task; slot `s` is at `REC + 2 * s`.
pub const REC: usize = 2;
/// Word of slot 0's started flag; slot `s` is at `STARTED + 2 * s`.
pub const STARTED: usize = 3;
/// A slot's REC when its worker runs no task.
pub const IDLE: i64 = -1;

/// Words of a ledger for `slots` workers.
pub const fn words_for(slots: usize) -> usize {
    REC + 2 * slots
}

/// Where a ledger's words are: shared memory
/// ([`transport_shm::memblock::MemoryBlock`]) or, for models and tests, the
/// heap (`Vec<AtomicU64>`).
pub trait Words: Send + Sync {
    /// The words.
    fn words(&self) -> &[AtomicU64];
}

impl Words for Vec<AtomicU64> {
    fn words(&self) -> &[AtomicU64] {
        self
    }
}

impl<W: Words + ?Sized> Words for std::sync::Arc<W> {
    fn words(&self) -> &[AtomicU64] {
        (**self).words()
    }
}

#[cfg(not(dragon_loom))]
impl Words for transport_shm::memblock::MemoryBlock {
    fn words(&self) -> &[AtomicU64] {
        transport_shm::memblock::MemoryBlock::words(self)
    }
}

/// Tasks `first .. first + count - 1` were taken by a worker that died
/// before recording them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first.
    pub first: i64,
    /// How many.
    pub count: i64,
}

impl Gap {
    /// The lost-task notice that reports it.
    pub fn notice(&self) -> crate::message::Lost {
        crate::message::Lost { seq: self.first, count: self.count, pid: crate::message::GAP_PID, exit_code: 0 }
    }
}

/// A ledger too small for what was asked of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerError(pub String);

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LedgerError {}

/// The ledger over its words.
#[derive(Debug)]
pub struct Ledger<W> {
    w: W,
    slots: usize,
}

impl<W: Words> Ledger<W> {
    /// The ledger in `w` (which must hold [`words_for`]`(slots)` words;
    /// more are ignored). Reads and writes nothing.
    pub fn new(w: W, slots: usize) -> Result<Ledger<W>, LedgerError> {
        let have = w.words().len();
        if slots == 0 || have < words_for(slots) {
            return Err(LedgerError(format!(
                "a pool ledger of {slots} slots needs {} words, the memory holds {have}",
                words_for(slots)
            )));
        }
        Ok(Ledger { w, slots })
    }

    /// The words of a ledger of `slots` slots on the heap (every REC IDLE).
    pub fn heap(slots: usize) -> Ledger<Vec<AtomicU64>> {
        let w: Vec<AtomicU64> = (0..words_for(slots.max(1))).map(|_| AtomicU64::new(0)).collect();
        let l = Ledger { w, slots: slots.max(1) };
        l.init(0);
        l
    }

    /// Set up fresh words: every slot idle and not started, the first task
    /// numbered `base`. Before any worker or sender uses the ledger.
    pub fn init(&self, base: i64) {
        for s in 0..self.slots {
            self.set(REC + 2 * s, IDLE);
            self.set(STARTED + 2 * s, 0);
        }
        self.set(NEXT, base);
        self.set(SENT, base);
    }

    /// Slots (workers at once).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The words.
    pub fn storage(&self) -> &W {
        &self.w
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        &self.w.words()[i]
    }

    fn get(&self, i: usize) -> i64 {
        // Relaxed: the module docs say what orders each word read this way.
        self.word(i).load(Ordering::Relaxed) as i64
    }

    fn set(&self, i: usize, v: i64) {
        // Relaxed: as in `get`.
        self.word(i).store(v as u64, Ordering::Relaxed);
    }

    fn rec_word(&self, slot: usize) -> usize {
        assert!(slot < self.slots, "pool ledger slot {slot} of {}", self.slots);
        REC + 2 * slot
    }

    // -- the sender ----------------------------------------------------------

    /// Tasks sent so far (the sender's count).
    pub fn sent(&self) -> i64 {
        // SYNC POINT pool-sent: Acquire; tasks below the count are in the
        // ring (or were taken) for whoever reads it.
        self.word(SENT).load(Ordering::Acquire) as i64
    }

    /// The sender put the task numbered `n - 1` in the ring: `n` are sent.
    /// Called after the send returned, never before.
    pub fn publish_sent(&self, n: i64) {
        // SYNC POINT pool-sent: Release; the task just put in the ring is
        // there for a taker that reads the new count.
        self.word(SENT).store(n as u64, Ordering::Release);
    }

    /// The next task to be taken (under the lock).
    pub fn next(&self) -> i64 {
        self.get(NEXT)
    }

    // -- takers (under the lock) ------------------------------------------------

    /// The ring was found empty after SENT read `sent`: tasks from NEXT up
    /// to `sent` left the ring unrecorded. Moves NEXT to `sent`; the gap is
    /// for the caller to report.
    pub fn gap_at_empty(&self, sent: i64) -> Option<Gap> {
        let next = self.get(NEXT);
        if sent > next {
            self.set(NEXT, sent);
            return Some(Gap { first: next, count: sent - next });
        }
        None
    }

    /// The taker in `slot` (`None`: a taker that runs nothing, as a broken
    /// pool's) took task `seq`: record it and move NEXT past it. Returns the
    /// tasks skipped since NEXT (taken by a worker that died), to report.
    pub fn record(&self, slot: Option<usize>, seq: i64) -> Option<Gap> {
        let next = self.get(NEXT);
        if let Some(s) = slot {
            self.set(self.rec_word(s), seq);
        }
        self.set(NEXT, seq + 1);
        (seq > next).then_some(Gap { first: next, count: seq - next })
    }

    // -- workers --------------------------------------------------------------------

    /// The worker in `slot` finished its task (its result is sent).
    pub fn finish(&self, slot: usize) {
        self.set(self.rec_word(slot), IDLE);
    }

    /// The worker in `slot` runs its loop (a worker that dies before this
    /// counts as one that failed to start).
    pub fn mark_started(&self, slot: usize) {
        self.set(self.rec_word(slot) + 1, 1);
    }

    // -- the owner -----------------------------------------------------------------------

    /// The task recorded in `slot`, if any.
    pub fn recorded(&self, slot: usize) -> Option<i64> {
        let v = self.get(self.rec_word(slot));
        (v != IDLE).then_some(v)
    }

    /// Whether the worker in `slot` got as far as its loop.
    pub fn started(&self, slot: usize) -> bool {
        self.get(self.rec_word(slot) + 1) != 0
    }

    /// Make `slot` ready for a new worker (idle, not started).
    pub fn reset_slot(&self, slot: usize) {
        let w = self.rec_word(slot);
        self.set(w, IDLE);
        self.set(w + 1, 0);
    }

    /// The worker in `slot` exited (`pid`, exit code or minus its signal):
    /// the lost-task notice for the task it recorded and never finished,
    /// if any. Only after the worker is known to have exited.
    pub fn lost(&self, slot: usize, pid: i64, exit_code: i64) -> Option<crate::message::Lost> {
        self.recorded(slot).map(|seq| crate::message::Lost { seq, count: 1, pid, exit_code })
    }
}

/// What a taker needs besides the ledger: the ring and a way to report
/// gaps. The caller holds the pool lock around [`take`].
pub trait Taker {
    /// A received message.
    type Msg;
    /// Why receiving or reporting failed.
    type Error;
    /// A message, if one is in the ring now.
    fn try_recv(&mut self) -> Result<Option<Self::Msg>, Self::Error>;
    /// Wait for a message; `None` when the wait gave up (a timeout, or the
    /// caller's stop condition).
    fn recv_wait(&mut self) -> Result<Option<Self::Msg>, Self::Error>;
    /// The task's sequence number.
    fn seq(&self, msg: &Self::Msg) -> Result<i64, Self::Error>;
    /// Report tasks taken by a worker that died before recording them
    /// (`_pool_part.py` sends [`Gap::notice`] on the result channel).
    fn report(&mut self, gap: Gap) -> Result<(), Self::Error>;
}

/// Take the next task, under the pool lock (the caller holds it): read
/// SENT before looking at the ring, report a gap at an empty ring, wait,
/// report a gap before the task received, record it in `slot` and move NEXT
/// past it. `None` when the wait gave up.
pub fn take<W: Words, T: Taker>(
    ledger: &Ledger<W>,
    slot: Option<usize>,
    t: &mut T,
) -> Result<Option<T::Msg>, T::Error> {
    let sent = ledger.sent(); // before looking at the ring
    let msg = match t.try_recv()? {
        Some(m) => m,
        None => {
            if let Some(gap) = ledger.gap_at_empty(sent) {
                t.report(gap)?;
            }
            match t.recv_wait()? {
                Some(m) => m,
                None => return Ok(None),
            }
        }
    };
    let seq = t.seq(&msg)?;
    if let Some(gap) = ledger.record(slot, seq) {
        t.report(gap)?;
    }
    Ok(Some(msg))
}

/// Workers in a row, none started, that died before running their loop and
/// break the pool: every task fails instead of workers being restarted
/// forever.
pub const MAX_START_FAILURES: u32 = 3;

/// Whether a worker that ended before running its loop failed by itself (an
/// error, a crash) rather than being killed from outside (SIGKILL, SIGTERM,
/// SIGINT: an operator, the OOM killer), which says nothing about the next
/// worker. `exit_code`: the exit code, or minus the signal.
pub fn failed_to_start(exit_code: i64) -> bool {
    const SIGINT: i64 = 2;
    const SIGKILL: i64 = 9;
    const SIGTERM: i64 = 15;
    exit_code > 0 || (exit_code < 0 && ![SIGKILL, SIGTERM, SIGINT].contains(&-exit_code))
}

/// Counts workers that die before they start, to decide when a pool is
/// broken.
#[derive(Debug, Default, Clone)]
pub struct StartFailures {
    in_a_row: u32,
    last: Option<i64>,
}

impl StartFailures {
    /// No failures yet.
    pub fn new() -> StartFailures {
        StartFailures::default()
    }

    /// A worker exited: whether it had `started`, and how it ended.
    pub fn worker_exited(&mut self, started: bool, exit_code: i64) {
        if started {
            self.in_a_row = 0;
        } else if failed_to_start(exit_code) {
            self.in_a_row += 1;
            self.last = Some(exit_code);
        }
    }

    /// Failures in a row.
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }

    /// The exit code of the last failure.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Whether the pool is broken: enough failures in a row and no live
    /// worker that started.
    pub fn broken(&self, any_started: bool) -> bool {
        self.in_a_row >= MAX_START_FAILURES && !any_started
    }
}

/// How a process ended, in words: "exited with code 3", "was killed by
/// SIGKILL" (`exit_code`: the code, or minus the signal).
pub fn ended_how(exit_code: i64) -> String {
    if exit_code >= 0 {
        return format!("exited with code {exit_code}");
    }
    // Linux's numbering (as Python's `signal.Signals` names them).
    let name = match -exit_code {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        n => return format!("was killed by signal {n}"),
    };
    format!("was killed by {name}")
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A ring of sequence numbers, gaps collected.
    struct Ring {
        q: VecDeque<i64>,
        gaps: Vec<Gap>,
    }

    impl Taker for Ring {
        type Msg = i64;
        type Error = ();
        fn try_recv(&mut self) -> Result<Option<i64>, ()> {
            Ok(self.q.pop_front())
        }
        fn recv_wait(&mut self) -> Result<Option<i64>, ()> {
            Ok(self.q.pop_front())
        }
        fn seq(&self, m: &i64) -> Result<i64, ()> {
            Ok(*m)
        }
        fn report(&mut self, gap: Gap) -> Result<(), ()> {
            self.gaps.push(gap);
            Ok(())
        }
    }

    #[test]
    fn take_records_and_reports_gaps() {
        let l = Ledger::<Vec<AtomicU64>>::heap(2);
        let mut r = Ring { q: (0..4).collect(), gaps: vec![] };
        l.publish_sent(4);
        assert_eq!(take(&l, Some(0), &mut r), Ok(Some(0)));
        assert_eq!(l.recorded(0), Some(0));
        // A taker pops task 1 and dies before recording it.
        r.q.pop_front();
        assert_eq!(take(&l, Some(1), &mut r), Ok(Some(2)));
        assert_eq!(r.gaps, vec![Gap { first: 1, count: 1 }]);
        // Task 3 is taken by a taker that dies: the ring is empty, SENT is 4.
        r.q.pop_front();
        assert_eq!(take(&l, None, &mut r), Ok(None));
        assert_eq!(r.gaps[1], Gap { first: 3, count: 1 });
        assert_eq!(l.next(), 4);
        // Nothing more to report.
        assert_eq!(take(&l, None, &mut r), Ok(None));
        assert_eq!(r.gaps.len(), 2);
        l.finish(0);
        assert_eq!(l.lost(0, 5, -9), None);
        assert_eq!(l.lost(1, 5, -9).map(|n| n.seq), Some(2));
    }

    #[test]
    fn start_failures_break_only_without_started_workers() {
        let mut f = StartFailures::new();
        for _ in 0..MAX_START_FAILURES {
            assert!(!f.broken(false));
            f.worker_exited(false, 1);
        }
        assert!(f.broken(false));
        assert!(!f.broken(true));
        f.worker_exited(false, -9); // killed from outside: not counted
        assert_eq!(f.in_a_row(), MAX_START_FAILURES);
        f.worker_exited(true, -9);
        assert_eq!(f.in_a_row(), 0);
        assert!(failed_to_start(-11) && failed_to_start(3) && !failed_to_start(0) && !failed_to_start(-15));
        assert_eq!(ended_how(-9), "was killed by SIGKILL");
        assert_eq!(ended_how(-10), "was killed by SIGUSR1");
        assert_eq!(ended_how(-40), "was killed by signal 40");
        assert_eq!(ended_how(3), "exited with code 3");
    }

    #[test]
    fn a_ledger_too_small_is_an_error() {
        let w: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        assert!(Ledger::new(w, 1).is_err());
    }
}
