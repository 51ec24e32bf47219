//! Blocks lent between processes: who owns one large block of a run-wide
//! block store, and which processes still map its pages.
//!
//! A zero-copy receive hands the receiving process a view of the block's
//! pages instead of a copy, and that process may pass the block on while
//! its own view is still alive (an echo server does exactly that). So a
//! block has one *owner*, the attachment that may send or free it, and a
//! set of *pinners*, the attachments that still map it. It is reused only
//! once it has neither.
//!
//! ```text
//!   state = generation (32) << 32 | kind (4) << 28 | attachment (10)
//!   FREE        may be taken
//!   OWNED(a)    attachment a may write, send or free it
//!   SENT        a message names it (with its generation); its receiver takes it over
//!   ZOMBIE(a)   a freed it while it was pinned; the last unpin frees it
//!   pins        one bit per attachment (ids 1..)
//!
//!   take      FREE(g)      -> OWNED(g+1, a)
//!   send      OWNED(g, a)  -> SENT(g+1)         the message carries g+1
//!   unsend    SENT(g)      -> OWNED(g, a)       the message could not be sent
//!   receive   SENT(g)      -> OWNED(g, b)       a stale or forged message names another g: refused
//!   pin       set bit b                         only by the owner, so nobody frees it meanwhile
//!   release   OWNED(g, a)  -> ZOMBIE(g, a), then, if no pins, ZOMBIE(g, a) -> FREE(g)
//!   unpin     clear bit b, then, if ZOMBIE and no pins, ZOMBIE(g, x) -> FREE(g)
//! ```
//!
//! `release` writes the state and then reads the pins; `unpin` writes a pin
//! word and then reads the state. Every one of these accesses is a
//! read-modify-write (the reads change nothing), so each reads the latest
//! value of its word, and of the owner freeing the block and the last
//! pinner letting go, at least one sees the other's write (as in Dekker's
//! mutual exclusion) and tries the reclaiming CAS; the CAS from the exact ZOMBIE
//! word lets exactly one of them succeed. A generation changes with every
//! take and every send, so a message can be received once only.
//!
//! Crash rules: a dead attachment's [`Lent::sweep`] clears its pin and
//! releases what it owned, and frees any ZOMBIE left without pins (which
//! covers a death between the two steps of a release). A block that is
//! `SENT` belongs to the message that names it; if a process dies between
//! taking a message off a channel and `receive`, or between `send` and
//! publishing the message, that block is stranded until the store is
//! removed with its run. Those windows are a few instructions wide.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `lent-sent`: `send` (AcqRel) publishes the payload the owner wrote;
//!   `receive` (AcqRel) takes it over with the block.
//! - `lent-free`: the compare-and-swap that frees a block (Release, as part
//!   of SeqCst) pairs with `take`'s Acquire: every earlier holder's reads
//!   and unpins happen before the new owner writes.
//! - `lent-pins`: pins and the reads of the other word in `release` /
//!   `unpin` are read-modify-writes (SeqCst), the handshake described
//!   above: of the releasing owner and the last unpinner, at least one
//!   sees the other and reclaims.
//! - `store-ready`, `store-row`, `store-seg`: the control area's magic, its
//!   attachment rows and its segment slots, each published with Release
//!   and read with Acquire (see [`StoreCtl`]).

use shm_primitives::process::ProcessId;
use shm_primitives::sync::{AtomicU64, Ordering};

/// Words of pin bits per block (64 attachments per word).
#[cfg(not(dragon_loom))]
pub const PIN_WORDS: usize = 16;
#[cfg(dragon_loom)]
pub const PIN_WORDS: usize = 2;

/// The largest attachment id a pin bit can name.
pub const MAX_ATTACHMENT: u32 = (PIN_WORDS * 64 - 1) as u32;

const KIND_SHIFT: u32 = 28;
const ATT_MASK: u64 = 0x3FF;

/// What a block is doing now (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LentState {
    /// Free to take.
    Free,
    /// Owned by an attachment.
    Owned(u32),
    /// Named by a message in flight.
    Sent,
    /// Released by its owner, still pinned.
    Zombie(u32),
}

const FREE: u64 = 0;
const OWNED: u64 = 1;
const SENT: u64 = 2;
const ZOMBIE: u64 = 3;

fn word(gen: u32, kind: u64, att: u32) -> u64 {
    (u64::from(gen) << 32) | (kind << KIND_SHIFT) | (u64::from(att) & ATT_MASK)
}
fn gen_of(w: u64) -> u32 {
    (w >> 32) as u32
}
fn kind_of(w: u64) -> u64 {
    (w >> KIND_SHIFT) & 0xF
}
fn att_of(w: u64) -> u32 {
    (w & ATT_MASK) as u32
}

/// Ownership and pins of one block, in shared memory. All zero is a free
/// block, generation 0, with no pins.
#[repr(C)]
#[derive(Debug)]
pub struct Lent {
    state: AtomicU64,
    pins: [AtomicU64; PIN_WORDS],
}

impl Lent {
    /// A free block (for tests and heap-backed stores; shared memory starts
    /// zero-filled, which is the same).
    pub fn new() -> Lent {
        Lent { state: AtomicU64::new(0), pins: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    /// The current state and generation.
    pub fn state(&self) -> (LentState, u32) {
        // SeqCst: a snapshot for callers and tests, ordered with the pins
        // handshake (lent-pins).
        let w = self.state.load(Ordering::SeqCst);
        let s = match kind_of(w) {
            FREE => LentState::Free,
            OWNED => LentState::Owned(att_of(w)),
            SENT => LentState::Sent,
            _ => LentState::Zombie(att_of(w)),
        };
        (s, gen_of(w))
    }

    /// Whether attachment `a` pins the block.
    pub fn pinned_by(&self, a: u32) -> bool {
        let (i, bit) = pin_bit(a);
        // SeqCst: a snapshot, ordered with the pins handshake (lent-pins).
        self.pins[i].load(Ordering::SeqCst) & bit != 0
    }

    /// Take a free block for attachment `a`; returns its generation.
    pub fn take(&self, a: u32) -> Option<u32> {
        // Relaxed: a first look; the compare-and-swap decides and
        // synchronises.
        let w = self.state.load(Ordering::Relaxed);
        if kind_of(w) != FREE {
            return None;
        }
        let g = gen_of(w).wrapping_add(1);
        // SYNC POINT lent-free: the last reader's unpin and the reclaim
        // happen before this process writes the block.
        self.state.compare_exchange(w, word(g, OWNED, a), Ordering::AcqRel, Ordering::Relaxed).ok().map(|_| g)
    }

    /// Hand the block, owned by `a` at generation `g`, to a message; returns
    /// the generation the message must carry, or `None` if `a` does not own
    /// it at `g`.
    pub fn send(&self, a: u32, g: u32) -> Option<u32> {
        let m = g.wrapping_add(1);
        // SYNC POINT lent-sent: the payload written by the owner, to
        // whoever receives the message.
        self.state
            .compare_exchange(word(g, OWNED, a), word(m, SENT, 0), Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| m)
    }

    /// Take back a block whose message (generation `m`) was not sent.
    pub fn unsend(&self, a: u32, m: u32) -> bool {
        self.receive(a, m)
    }

    /// Become the owner of the block a message of generation `m` names.
    /// False for a message that is stale, forged or already received.
    pub fn receive(&self, b: u32, m: u32) -> bool {
        // SYNC POINT lent-sent: the payload.
        self.state.compare_exchange(word(m, SENT, 0), word(m, OWNED, b), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Record that attachment `b`, the owner, maps the block.
    pub fn pin(&self, b: u32) {
        let (i, bit) = pin_bit(b);
        // SYNC POINT lent-pins.
        self.pins[i].fetch_or(bit, Ordering::SeqCst);
    }

    /// Attachment `b` no longer maps the block. Returns true if this freed
    /// it (its owner had released it already).
    pub fn unpin(&self, b: u32) -> bool {
        let (i, bit) = pin_bit(b);
        // SYNC POINT lent-pins: our pin gone, then the state read (in
        // `reclaim_if_unpinned`).
        self.pins[i].fetch_and(!bit, Ordering::SeqCst);
        self.reclaim_if_unpinned()
    }

    /// The owner `a` (at generation `g`) lets the block go. Returns true if
    /// it is free now, false if pinners keep it (the last one frees it) or
    /// if `a` did not own it at `g`.
    pub fn release(&self, a: u32, g: u32) -> bool {
        // SYNC POINT lent-pins: the state written, then the pins read (in
        // `reclaim_if_unpinned`).
        if self
            .state
            .compare_exchange(word(g, OWNED, a), word(g, ZOMBIE, a), Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.reclaim_if_unpinned()
    }

    /// Undo what dead attachment `d` held: its pin, its ownership, and any
    /// zombie nobody pins any more. Returns true if the block became free.
    pub fn sweep(&self, d: u32) -> bool {
        let (i, bit) = pin_bit(d);
        // SYNC POINT lent-pins: the dead pinner's pin gone, then the state
        // read (a read-modify-write that changes nothing).
        self.pins[i].fetch_and(!bit, Ordering::SeqCst);
        let w = self.state.fetch_or(0, Ordering::SeqCst);
        if kind_of(w) == OWNED && att_of(w) == d {
            return self.release(d, gen_of(w));
        }
        self.reclaim_if_unpinned()
    }

    // The reads after a write (the pins after a release, the state after an
    // unpin) are read-modify-writes that change nothing: an RMW reads the
    // latest value of its word, so the argument in the module docs holds in
    // the acquire/release model alone (which is also what loom checks).
    fn unpinned(&self) -> bool {
        // SYNC POINT lent-pins: the pins' latest values.
        self.pins.iter().all(|p| p.fetch_or(0, Ordering::SeqCst) == 0)
    }

    fn reclaim_if_unpinned(&self) -> bool {
        // SYNC POINT lent-pins: the state's latest value.
        let w = self.state.fetch_or(0, Ordering::SeqCst);
        if kind_of(w) != ZOMBIE || !self.unpinned() {
            return false;
        }
        // SYNC POINT lent-free: every reader's unpin (read above) happens
        // before the next taker's writes.
        self.state.compare_exchange(w, word(gen_of(w), FREE, 0), Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }
}

impl Default for Lent {
    fn default() -> Lent {
        Lent::new()
    }
}

fn pin_bit(a: u32) -> (usize, u64) {
    assert!((1..=MAX_ATTACHMENT).contains(&a), "attachment id {a} out of range");
    ((a / 64) as usize, 1u64 << (a % 64))
}

// ---- the control area of a store --------------------------------------------

/// Segments a store can have.
pub const SEGMENTS: usize = 64;
/// Blocks a segment can hold.
pub const BLOCKS_PER_SEGMENT: usize = 16;
/// Attachment rows (ids 1..ROWS; row 0 is unused).
pub const ROWS: usize = MAX_ATTACHMENT as usize + 1;

const STORE_MAGIC: u64 = 0x6472_6167_6c65_6e64; // "draglend"

const ROW_CLAIMING: u64 = 1;
const ROW_ACTIVE: u64 = 2;
const ROW_SWEEPING: u64 = 3;

const SEG_CREATING: u64 = 1;
const SEG_READY: u64 = 2;

/// One process's row: `state (4) << 60 | sweeper (10) << 32 | pid`, and its
/// start time.
#[repr(C)]
#[derive(Debug)]
struct Row {
    word: AtomicU64,
    start: AtomicU64,
}

/// What a segment slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegState {
    /// Nothing yet.
    Empty,
    /// A process (this pid) is creating the segment file.
    Creating(u32),
    /// Ready: blocks of `2^class` bytes (plus a page), `blocks` of them.
    Ready {
        /// Size class (log2 of the payload capacity).
        class: u32,
        /// Number of blocks.
        blocks: u32,
    },
}

/// The control area of a run-wide block store: who is attached, which
/// segments exist, and a [`Lent`] word per block. It lives in its own
/// shared region; all zero (plus [`StoreCtl::init`]) is an empty store.
#[repr(C)]
#[derive(Debug)]
pub struct StoreCtl {
    magic: AtomicU64,
    cap: AtomicU64,
    used: AtomicU64,
    rows: [Row; ROWS],
    segs: [AtomicU64; SEGMENTS],
    lents: [Lent; SEGMENTS * BLOCKS_PER_SEGMENT],
}

impl StoreCtl {
    /// Bytes the control area needs.
    pub const SIZE: usize = std::mem::size_of::<StoreCtl>();

    /// View zero-filled or initialised shared memory as a control area.
    ///
    /// # Safety
    /// `p` must point to at least [`StoreCtl::SIZE`] bytes, 8-byte aligned,
    /// mapped for as long as the result is used, and hold either zeros or a
    /// control area (every field is an atomic, so all zero is valid).
    pub unsafe fn from_ptr<'a>(p: std::ptr::NonNull<u8>) -> &'a StoreCtl {
        // SAFETY: per the contract above.
        unsafe { &*p.as_ptr().cast::<StoreCtl>() }
    }

    /// Initialise a fresh (zero-filled) control area that may hand out
    /// `cap` bytes of segments; publishes it.
    pub fn init(&self, cap: u64) {
        // Relaxed: published by the magic (store-ready).
        self.cap.store(cap, Ordering::Relaxed);
        // SYNC POINT store-ready: the cap, before the store is seen ready.
        self.magic.store(STORE_MAGIC, Ordering::Release);
    }

    /// Whether [`StoreCtl::init`] has run.
    pub fn ready(&self) -> bool {
        // SYNC POINT store-ready: the cap.
        self.magic.load(Ordering::Acquire) == STORE_MAGIC
    }

    /// Bytes of segments created so far, and the cap.
    pub fn usage(&self) -> (u64, u64) {
        // Relaxed: a snapshot for reporting.
        (self.used.load(Ordering::Relaxed), self.cap.load(Ordering::Relaxed))
    }

    /// The ownership word of block `idx` of segment `seg`.
    pub fn lent(&self, seg: usize, idx: usize) -> &Lent {
        &self.lents[seg * BLOCKS_PER_SEGMENT + idx]
    }

    /// Claim an attachment row for process `me`; sweeps dead attachments
    /// when every row is taken. `None` if all are alive.
    pub fn attach(&self, me: ProcessId) -> Option<u32> {
        for round in 0..2 {
            for (i, row) in self.rows.iter().enumerate().skip(1) {
                let claiming = row_word(ROW_CLAIMING, 0, me.pid);
                // SYNC POINT store-row: a free row, after its last sweep.
                if row.word.compare_exchange(0, claiming, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    // Relaxed: published by the store of ACTIVE below.
                    row.start.store(me.start, Ordering::Relaxed);
                    // SYNC POINT store-row: the start time, before the row
                    // is active.
                    row.word.store(row_word(ROW_ACTIVE, 0, me.pid), Ordering::Release);
                    return Some(i as u32);
                }
            }
            if round == 0 && self.sweep_dead(me) == 0 {
                return None;
            }
        }
        None
    }

    /// Give up attachment `a` (its process is done with the store): what
    /// it still holds is swept and the row freed.
    pub fn detach(&self, a: u32, me: ProcessId) {
        let row = &self.rows[a as usize];
        // Relaxed: our own row; the compare-and-swap below decides.
        let w = row.word.load(Ordering::Relaxed);
        if row_pid(w) == me.pid && row_state(w) == ROW_ACTIVE {
            let sweeping = row_word(ROW_SWEEPING, a, me.pid);
            // SYNC POINT store-row: one sweeper at a time.
            if row.word.compare_exchange(w, sweeping, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.sweep_row(a, sweeping);
            }
        }
    }

    /// Sweep every attachment whose process is dead (and take over sweeps
    /// whose sweeper died). Returns how many rows became free.
    pub fn sweep_dead(&self, me: ProcessId) -> usize {
        let mut freed = 0;
        for (i, row) in self.rows.iter().enumerate().skip(1) {
            // SYNC POINT store-row: the start time of an active row.
            let w = row.word.load(Ordering::Acquire);
            let dead = match row_state(w) {
                ROW_CLAIMING => !ProcessId::pid_only(row_pid(w)).is_alive(),
                // Relaxed: ordered by the Acquire load above; a start time
                // of a later occupant makes the compare-and-swap below
                // fail (the row word changed).
                ROW_ACTIVE => !ProcessId { pid: row_pid(w), start: row.start.load(Ordering::Relaxed) }.is_alive(),
                ROW_SWEEPING => !ProcessId::pid_only(row_pid(w)).is_alive(),
                _ => false,
            };
            if !dead {
                continue;
            }
            let sweeping = row_word(ROW_SWEEPING, i as u32, me.pid);
            // SYNC POINT store-row: one sweeper at a time.
            if row.word.compare_exchange(w, sweeping, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.sweep_row(i as u32, sweeping);
                freed += 1;
            }
        }
        freed
    }

    fn sweep_row(&self, a: u32, sweeping: u64) {
        for l in &self.lents {
            l.sweep(a);
        }
        // SYNC POINT store-row: the sweep is done before the id can be
        // reused.
        let _ = self.rows[a as usize].word.compare_exchange(sweeping, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// What segment slot `i` holds.
    pub fn segment(&self, i: usize) -> SegState {
        // SYNC POINT store-seg: a ready segment's file exists.
        let w = self.segs[i].load(Ordering::Acquire);
        match w >> 62 {
            SEG_CREATING => SegState::Creating(w as u32),
            SEG_READY => SegState::Ready { class: ((w >> 32) & 0xFF) as u32, blocks: w as u32 },
            _ => SegState::Empty,
        }
    }

    /// Start creating segment slot `i` as process `pid`, reserving `bytes`
    /// of the cap. False if the slot is taken (by a live creator) or the cap
    /// would be exceeded. A slot whose creator died is taken over (the
    /// caller recreates the file).
    pub fn begin_segment(&self, i: usize, pid: u32, bytes: u64) -> bool {
        // Relaxed: a first look; the compare-and-swap below decides.
        let w = self.segs[i].load(Ordering::Relaxed);
        let takeover = match w >> 62 {
            0 if w == 0 => false,
            SEG_CREATING if !ProcessId::pid_only(w as u32).is_alive() => true,
            _ => return false,
        };
        // A taken-over slot counts again: what the dead creator reserved is
        // not known here, so the count errs on the safe side.
        // Relaxed: a budget counter; the slot's compare-and-swap decides
        // who creates.
        let used = self.used.fetch_add(bytes, Ordering::Relaxed);
        if !takeover && used + bytes > self.cap.load(Ordering::Relaxed) {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        let creating = (SEG_CREATING << 62) | u64::from(pid);
        // SYNC POINT store-seg: our claim to create the slot's file (after
        // a dead creator's, or a give-up).
        if self.segs[i].compare_exchange(w, creating, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return true;
        }
        // Relaxed: the budget counter (above).
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        false
    }

    /// Publish segment slot `i` (created by this process) as ready.
    pub fn finish_segment(&self, i: usize, class: u32, blocks: u32) {
        // SYNC POINT store-seg: the file exists before anyone looks for it.
        self.segs[i].store((SEG_READY << 62) | (u64::from(class) << 32) | u64::from(blocks), Ordering::Release);
    }

    /// Give slot `i` up after a failed creation of `bytes`.
    pub fn abandon_segment(&self, i: usize, bytes: u64) {
        // SYNC POINT store-seg: the slot is free again.
        self.segs[i].store(0, Ordering::Release);
        // Relaxed: the budget counter (see `begin_segment`).
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

fn row_word(state: u64, aux: u32, pid: u32) -> u64 {
    (state << 60) | (u64::from(aux & 0x3FF) << 32) | u64::from(pid)
}
fn row_state(w: u64) -> u64 {
    w >> 60
}
fn row_pid(w: u64) -> u32 {
    w as u32
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_with_forwarding() {
        let l = Lent::new();
        // The sender takes, fills and sends.
        let g = l.take(1).unwrap();
        assert_eq!(l.take(2), None, "an owned block cannot be taken");
        let m = l.send(1, g).unwrap();
        assert!(!l.receive(2, m.wrapping_add(5)), "a forged generation is refused");
        // The echo receives, maps, and forwards while its view lives.
        assert!(l.receive(2, m));
        assert!(!l.receive(3, m), "a message is received once");
        l.pin(2);
        let m2 = l.send(2, m).unwrap();
        assert_ne!(m2, m);
        // The sender receives it back and frees it while the echo still maps it.
        assert!(l.receive(1, m2));
        assert!(!l.release(1, m2), "the echo's pin keeps it");
        assert_eq!(l.state().0, LentState::Zombie(1));
        assert_eq!(l.take(3), None);
        assert!(l.unpin(2), "the last unpin frees it");
        assert_eq!(l.state().0, LentState::Free);
        assert!(l.take(3).is_some());
    }

    #[test]
    fn release_needs_the_current_owner_and_generation() {
        let l = Lent::new();
        let g = l.take(4).unwrap();
        assert!(!l.release(5, g));
        assert!(!l.release(4, g + 1));
        assert!(l.release(4, g));
        assert_eq!(l.state().0, LentState::Free);
    }

    #[test]
    fn unsend_gives_the_block_back() {
        let l = Lent::new();
        let g = l.take(1).unwrap();
        let m = l.send(1, g).unwrap();
        assert!(l.unsend(1, m));
        assert_eq!(l.state(), (LentState::Owned(1), m));
        assert!(l.release(1, m));
    }

    #[test]
    fn sweep_returns_what_the_dead_held() {
        // Dead owner.
        let l = Lent::new();
        let g = l.take(7).unwrap();
        assert!(l.sweep(7));
        assert_eq!(l.state().0, LentState::Free);
        // Dead pinner of a zombie.
        let g2 = l.take(1).unwrap();
        assert_ne!(g2, g, "every take is a new generation");
        let m = l.send(1, g2).unwrap();
        assert!(l.receive(900, m));
        l.pin(900);
        let m = l.send(900, m).unwrap();
        assert!(l.receive(1, m));
        assert!(!l.release(1, m));
        assert!(!l.sweep(3), "an unrelated attachment changes nothing");
        assert!(l.sweep(900));
        assert_eq!(l.state().0, LentState::Free);
        assert!(!l.pinned_by(900));
    }

    fn ctl_on_heap() -> (Vec<u64>, &'static StoreCtl) {
        let mut mem = vec![0u64; StoreCtl::SIZE.div_ceil(8)];
        let p = std::ptr::NonNull::new(mem.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: zeroed, 8-byte aligned, SIZE bytes, kept alive by the
        // returned Vec (the test drops the control area first).
        let ctl = unsafe { StoreCtl::from_ptr(p) };
        ctl.init(1000);
        (mem, ctl)
    }

    #[test]
    fn store_rows_and_segments() {
        let (_mem, ctl) = ctl_on_heap();
        assert!(ctl.ready());
        let me = ProcessId::current();
        let a = ctl.attach(me).unwrap();
        let b = ctl.attach(me).unwrap();
        assert_ne!(a, b);
        // A segment within the cap, then one that would exceed it.
        assert!(ctl.begin_segment(0, me.pid, 600));
        assert_eq!(ctl.segment(0), SegState::Creating(me.pid));
        assert!(!ctl.begin_segment(0, me.pid, 1), "a slot being created is taken");
        ctl.finish_segment(0, 20, 16);
        assert_eq!(ctl.segment(0), SegState::Ready { class: 20, blocks: 16 });
        assert!(!ctl.begin_segment(1, me.pid, 600), "over the cap");
        assert_eq!(ctl.usage(), (600, 1000));
        assert!(ctl.begin_segment(1, me.pid, 300));
        ctl.abandon_segment(1, 300);
        assert_eq!((ctl.segment(1), ctl.usage().0), (SegState::Empty, 600));
        // A slot whose creator died is taken over.
        let dead = u32::MAX - 7; // above any pid_max
        assert!(ctl.begin_segment(2, dead, 100));
        assert!(ctl.begin_segment(2, me.pid, 100), "the dead creator's slot");
        assert_eq!(ctl.segment(2), SegState::Creating(me.pid));
        // Detaching sweeps what the attachment held and frees its row.
        let g = ctl.lent(0, 3).take(a).unwrap();
        ctl.lent(0, 4).take(b).unwrap();
        ctl.detach(a, me);
        assert_eq!(ctl.lent(0, 3).state(), (LentState::Free, g));
        assert!(matches!(ctl.lent(0, 4).state().0, LentState::Owned(x) if x == b));
        assert_eq!(ctl.attach(me), Some(a), "the freed row is reused");
    }

    #[test]
    fn a_message_in_flight_survives_sweeps() {
        let l = Lent::new();
        let g = l.take(1).unwrap();
        let m = l.send(1, g).unwrap();
        assert!(!l.sweep(1), "the message owns it, not the dead sender");
        assert!(l.receive(2, m));
    }
}
