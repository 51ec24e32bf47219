//! The attachment table: which processes use a channel, and what to do when
//! one of them dies.
//!
//! Each attachment owns one row: `(state, pid)` in one word, the process
//! start time, and its roles. Its id (row index + 1, 1..=1023) is what ring
//! stamps and block states name. A row moves
//!
//! ```text
//!   FREE (0) -> CLAIMING(pid) -> ACTIVE(pid) -> FREE                  (attach, detach)
//!                                 |
//!                         found dead: DEAD(pid) -> SWEEPING(pid, by) -> FREE
//! ```
//!
//! Only the process that moves a row to `DEAD` adjusts nothing else: sender
//! and receiver counts are derived from the table (rows `ACTIVE` with the
//! role), so they can never drift. A row becomes `FREE` again only after a
//! sweep returned everything the dead attachment held, so an id is never
//! reused while something still names it. One sweeper at a time owns a dead
//! row (`SWEEPING(by)`); if the sweeper dies too, its row is found dead and
//! the sweep is taken over.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `row-active`: a claimant's Release store of `ACTIVE` publishes its
//!   start time and roles to every Acquire load of the row word.
//! - `row-start`: the claimant's Release store of the start time comes
//!   after its claim of the row word, so a reader that sees a newer start
//!   time than its row word sees the row changed when it re-reads the word
//!   ([`Table::process`] never pairs one process's pid with another's
//!   start time).
//! - `row-free`: the Release that frees a row (detach, end of a sweep)
//!   pairs with the next claimant's Acquire compare-and-swap from free: the
//!   old occupant's last writes, and everything a sweep gave back, happen
//!   before the new occupant's.
//! - `row-sweep`: the compare-and-swaps that mark a row dead, claim its
//!   sweep and hand a sweep back (AcqRel) pass the row from finder to
//!   sweeper to the next sweeper.
//! - `table-version`: the Release bump after every row change pairs with
//!   the Acquire load of the version.

use crate::layout::{AttachCtl, AttachRow};
use shm_primitives::process::ProcessId;
use shm_primitives::sync::{AtomicU64, Ordering};
use std::ptr::NonNull;

const ROW_CLAIMING: u64 = 1;
const ROW_ACTIVE: u64 = 2;
const ROW_DEAD: u64 = 3;
const ROW_SWEEPING: u64 = 4;

fn row_word(state: u64, aux: u32, pid: u32) -> u64 {
    (state << 60) | (u64::from(aux & 0x3FF) << 32) | u64::from(pid)
}
fn row_state(w: u64) -> u64 {
    w >> 60
}
fn row_aux(w: u64) -> u32 {
    ((w >> 32) & 0x3FF) as u32
}
fn row_pid(w: u64) -> u32 {
    w as u32
}

/// What an attachment does with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Roles(u32);

impl Roles {
    /// Sends only.
    pub const SEND: Roles = Roles(1);
    /// Receives only.
    pub const RECV: Roles = Roles(2);
    /// Sends and receives.
    pub const BOTH: Roles = Roles(3);
    /// Neither (an observer: counts as no sender and no receiver).
    pub const NONE: Roles = Roles(0);

    /// Whether this attachment sends.
    pub fn sends(self) -> bool {
        self.0 & 1 != 0
    }
    /// Whether this attachment receives.
    pub fn receives(self) -> bool {
        self.0 & 2 != 0
    }
    pub(crate) fn bits(self) -> u32 {
        self.0
    }
}

/// A view of the attachment table.
#[derive(Debug)]
pub(crate) struct Table {
    ctl: NonNull<AttachCtl>,
    rows: NonNull<AttachRow>,
    max: u32,
    /// Whether a recorded process lives: [`ProcessId::is_alive`]; loom
    /// models pass made-up processes and a rule of their own.
    alive: fn(&ProcessId) -> bool,
}

// SAFETY: points into shared memory whose shared words are all atomics.
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

/// A dead attachment whose sweep this process now owns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SweepClaim {
    pub att: u32,
    word: u64,
}

impl Table {
    /// # Safety
    ///
    /// `ctl` and `rows[..max]` must be initialised and stay mapped for the
    /// life of the table.
    pub(crate) unsafe fn new(ctl: NonNull<AttachCtl>, rows: NonNull<AttachRow>, max: u32) -> Table {
        Table { ctl, rows, max, alive: ProcessId::is_alive }
    }

    /// The same table with another liveness rule (loom models).
    #[cfg(all(test, dragon_loom))]
    pub(crate) fn with_liveness(self, alive: fn(&ProcessId) -> bool) -> Table {
        Table { alive, ..self }
    }

    /// Write fresh rows.
    ///
    /// # Safety
    ///
    /// `rows` must point at `max` writable, aligned, unused rows.
    pub(crate) unsafe fn init_rows(rows: *mut AttachRow, max: u32) {
        for i in 0..max as usize {
            // SAFETY: in bounds per the caller's contract.
            unsafe {
                rows.add(i).write(AttachRow {
                    owner: AtomicU64::new(0),
                    start: AtomicU64::new(0),
                    roles: shm_primitives::sync::AtomicU32::new(0),
                    reserved: shm_primitives::sync::AtomicU32::new(0),
                })
            };
        }
    }

    fn ctl(&self) -> &AttachCtl {
        // SAFETY: constructor contract.
        unsafe { self.ctl.as_ref() }
    }

    fn row(&self, att: u32) -> &AttachRow {
        assert!(att >= 1 && att <= self.max);
        // SAFETY: in bounds; constructor contract.
        unsafe { &*self.rows.as_ptr().add(att as usize - 1) }
    }

    fn high_water(&self) -> u32 {
        // Relaxed: only bounds scans; a row claimed beyond a stale value is
        // one its claimant just took, which the scan may miss either way.
        self.ctl().high_water.load(Ordering::Relaxed).min(self.max)
    }

    /// Table version (changes after every row change).
    pub(crate) fn version(&self) -> u64 {
        // SYNC POINT table-version: the row change before the bump.
        self.ctl().version.load(Ordering::Acquire)
    }

    fn bump(&self) {
        // SYNC POINT table-version: the row change just made.
        self.ctl().version.fetch_add(1, Ordering::Release);
    }

    /// Take a free row for `me` with `roles`. Returns the attachment id.
    pub(crate) fn claim(&self, me: ProcessId, roles: Roles) -> Option<u32> {
        for att in 1..=self.max {
            let row = self.row(att);
            // Relaxed: a hint; the compare-and-swap decides.
            if row.owner.load(Ordering::Relaxed) != 0 {
                continue;
            }
            // SYNC POINT row-free: the previous occupant's (or sweeper's)
            // last writes to the row.
            if row
                .owner
                .compare_exchange(0, row_word(ROW_CLAIMING, 0, me.pid), Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SYNC POINT row-start: our claim of the row word, to a reader
            // of this start time.
            row.start.store(me.start, Ordering::Release);
            // Relaxed: published by the store of ACTIVE (row-active).
            row.roles.store(roles.bits(), Ordering::Relaxed);
            // Relaxed: only bounds scans (see `high_water`).
            self.ctl().high_water.fetch_max(att, Ordering::Relaxed);
            // Relaxed: a monotonic flag, read only for disconnect decisions
            // that read the table (Acquire) afterwards.
            self.ctl().latch.fetch_or(roles.bits(), Ordering::Relaxed);
            // SYNC POINT row-active: our start time and roles.
            row.owner.store(row_word(ROW_ACTIVE, 0, me.pid), Ordering::Release);
            self.bump();
            return Some(att);
        }
        None
    }

    /// Give back our row (normal detach).
    pub(crate) fn release(&self, att: u32) {
        let row = self.row(att);
        // Relaxed: published by the store that frees the row (row-free); a
        // reader of the old row word that sees start 0 checks the pid only.
        row.roles.store(0, Ordering::Relaxed);
        row.start.store(0, Ordering::Relaxed);
        // SYNC POINT row-free: the cleared fields and everything this
        // attachment did.
        row.owner.store(0, Ordering::Release);
        self.bump();
    }

    /// Roles ever attached (latch bits).
    pub(crate) fn latch(&self) -> Roles {
        // Relaxed: a monotonic flag; a stale 0 only postpones a disconnect,
        // and the counts read next carry the synchronisation.
        Roles(self.ctl().latch.load(Ordering::Relaxed))
    }

    /// Live (ACTIVE) senders and receivers, as recorded (dead processes not
    /// yet found count until a liveness scan finds them).
    pub(crate) fn counts(&self) -> (u32, u32) {
        let (mut s, mut r) = (0, 0);
        for att in 1..=self.high_water() {
            let row = self.row(att);
            // SYNC POINT row-active: the claimant's roles.
            if row_state(row.owner.load(Ordering::Acquire)) == ROW_ACTIVE {
                // Relaxed: ordered by the Acquire load above (row-active).
                // Under a concurrent detach and re-attach these may be the
                // new occupant's roles: counts are a snapshot, and the
                // version bump after the change tells cachers to recount.
                let roles = Roles(row.roles.load(Ordering::Relaxed));
                s += u32::from(roles.sends());
                r += u32::from(roles.receives());
            }
        }
        (s, r)
    }

    /// Attachments in use (any state but FREE).
    pub(crate) fn in_use(&self) -> u32 {
        // Relaxed: a count for reporting; no row's contents are read.
        (1..=self.high_water()).filter(|&a| self.row(a).owner.load(Ordering::Relaxed) != 0).count() as u32
    }

    /// The process behind attachment `att`, if it is claiming or active:
    /// a pid and start time of one and the same occupant.
    pub(crate) fn process(&self, att: u32) -> Option<ProcessId> {
        let row = self.row(att);
        loop {
            // SYNC POINT row-active: the claimant's start time.
            let w = row.owner.load(Ordering::Acquire);
            match row_state(w) {
                // A claiming row may not have its start time yet: pid only.
                ROW_CLAIMING => return Some(ProcessId::pid_only(row_pid(w))),
                ROW_ACTIVE => {
                    // SYNC POINT row-start: a start time of a later
                    // occupant comes with its claim of the row word, which
                    // the re-read below then sees.
                    let start = row.start.load(Ordering::Acquire);
                    // Relaxed: ordered after the Acquire load above; the
                    // same word means the start time is this occupant's
                    // (or 0, cleared by its detach: then the pid alone).
                    if row.owner.load(Ordering::Relaxed) == w {
                        return Some(ProcessId { pid: row_pid(w), start });
                    }
                }
                _ => return None,
            }
        }
    }

    /// Whether attachment `att` belongs to a live process.
    pub(crate) fn is_alive(&self, att: u32) -> bool {
        if att == 0 || att > self.max {
            return false;
        }
        match self.process(att) {
            Some(p) => p.pid == ProcessId::current().pid || (self.alive)(&p),
            None => false,
        }
    }

    /// Whether a liveness scan is due (at most one per `interval_ms` across
    /// all processes); claims the scan if so.
    pub(crate) fn scan_due(&self, now_ms: u64, interval_ms: u64) -> bool {
        // Relaxed: a rate limiter (see below).
        let last = self.ctl().last_check_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= interval_ms
            // Relaxed: a rate limiter; losing the race only skips a scan.
            && self.ctl().last_check_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Mark every row of a dead process DEAD. Returns how many were found.
    pub(crate) fn find_dead(&self) -> u32 {
        let me = ProcessId::current().pid;
        let mut found = 0;
        for att in 1..=self.high_water() {
            let row = self.row(att);
            // Relaxed: the state and pid decide whether to look closer;
            // `process` and the compare-and-swap below synchronise.
            let w = row.owner.load(Ordering::Relaxed);
            let st = row_state(w);
            if (st != ROW_ACTIVE && st != ROW_CLAIMING) || row_pid(w) == me {
                continue;
            }
            if self.process(att).is_some_and(|p| !(self.alive)(&p))
                // SYNC POINT row-sweep: exactly one finder; the row as the
                // dead process left it passes to its sweeper.
                && row.owner.compare_exchange(w, row_word(ROW_DEAD, 0, row_pid(w)), Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                found += 1;
                self.bump();
            }
        }
        found
    }

    /// Claim the sweep of one dead attachment (as `me`), if any needs one.
    pub(crate) fn claim_sweep(&self, me: u32) -> Option<SweepClaim> {
        for att in 1..=self.high_water() {
            let row = self.row(att);
            // Relaxed: the compare-and-swap below synchronises.
            let w = row.owner.load(Ordering::Relaxed);
            let takeable = match row_state(w) {
                ROW_DEAD => true,
                ROW_SWEEPING => {
                    let by = row_aux(w);
                    by != me && by != att && !self.is_alive(by)
                }
                _ => false,
            };
            if !takeable {
                continue;
            }
            let claimed = row_word(ROW_SWEEPING, me, row_pid(w));
            // SYNC POINT row-sweep: one sweeper at a time; what the finder
            // or a dead sweeper did to the row happens before our sweep.
            if row.owner.compare_exchange(w, claimed, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return Some(SweepClaim { att, word: claimed });
            }
        }
        None
    }

    /// Sweeps that dead attachment `dead` owned go back to `DEAD`, so that
    /// someone else takes them over even after `dead`'s id is reused.
    pub(crate) fn orphan_sweeps_of(&self, dead: u32) {
        for att in 1..=self.high_water() {
            let row = self.row(att);
            // Relaxed: the compare-and-swap below synchronises.
            let w = row.owner.load(Ordering::Relaxed);
            if row_state(w) == ROW_SWEEPING && row_aux(w) == dead {
                // SYNC POINT row-sweep: hands the sweep back; one
                // compare-and-swap wins.
                let _ = row.owner.compare_exchange(
                    w,
                    row_word(ROW_DEAD, 0, row_pid(w)),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// The sweep is done: the row is free for reuse.
    pub(crate) fn finish_sweep(&self, claim: SweepClaim) {
        let row = self.row(claim.att);
        // Relaxed: published by the compare-and-swap below (row-free).
        row.roles.store(0, Ordering::Relaxed);
        row.start.store(0, Ordering::Relaxed);
        // SYNC POINT row-free: everything the sweep did, before the id is
        // reused.
        if row.owner.compare_exchange(claim.word, 0, Ordering::Release, Ordering::Relaxed).is_ok() {
            self.bump();
        }
    }
}

#[cfg(all(test, not(dragon_loom)))]
impl Table {
    /// Make attachment `att` look like it belongs to process `pid` (tests
    /// simulate a death by pointing a row at a process that has exited).
    pub(crate) fn forge_pid(&self, att: u32, pid: u32) {
        let row = self.row(att);
        // Relaxed: tests forge rows while no other thread uses them.
        let w = row.owner.load(Ordering::Relaxed);
        row.owner.store(row_word(row_state(w), row_aux(w), pid), Ordering::Relaxed);
        row.start.store(0, Ordering::Relaxed);
    }
}
