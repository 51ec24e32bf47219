//! The bounded MPMC ring of slots.
//!
//! Algorithm: Dmitry Vyukov's bounded MPMC queue ("Bounded MPMC queue",
//! 1024cores.net, 2010), in the form crossbeam-queue's `ArrayQueue` uses:
//! every slot carries a 64-bit stamp that says which *lap* of the ring it is
//! ready for, and positions are `lap * one_lap + index` with `one_lap` the
//! next power of two above the capacity, so any capacity works and a
//! position's index and lap are a mask and a shift away.
//!
//! One change makes it crash safe. In Vyukov's queue a producer claims a
//! position by advancing `tail` and only later touches the slot, so a
//! process killed between the two leaves a position that nobody can
//! attribute. Here the claim happens *in the slot*: a producer CASes the
//! slot's stamp from `EMPTY(lap)` to `WRITING(lap, me)` and only then
//! advances `tail`; anyone who finds the slot at `tail` already claimed helps
//! `tail` forward. Consumers do the same with `FULL(lap)` ->
//! `READING(lap, me)` and `head`. So at every instant each slot names the
//! attachment working on it, and recovery can finish or undo the work of a
//! dead one:
//!
//! ```text
//!   EMPTY(L) --claim--> WRITING(L,a) --publish--> FULL(L) --claim--> READING(L,b)
//!      ^                     |                                           |
//!      |                 a died: TOMB(L) --skipped by a consumer--+      |
//!      +-------------------------------- release: EMPTY(L+1) <----+------+
//! ```
//!
//! Stamp word: `lap (50 bits) << 14 | attachment id (10 bits) << 4 | state`.
//! `tail` bit 63 is the closed mark: once set, `tail` never moves again, so
//! every position below it is delivered and nothing above it ever is.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `slot-full`: the writer's Release store of `FULL` publishes the
//!   payload, `len` and `aux` to the reader's Acquire load (or claim) of
//!   the stamp.
//! - `slot-free`: every store that makes a slot `EMPTY` for a lap (a
//!   reader's release, a skipped tombstone, recovery of a dead reader, an
//!   undone write claim) is a Release; the next writer claims with an
//!   Acquire, so the old contents are read before they are overwritten.
//! - `slot-tomb`: the Release store of `TOMB` (a write given up, or a dead
//!   writer's claim recovered) publishes what was done to the slot's block
//!   before readers skip the slot.
//! - `tail-claim`: every move of `tail` is a Release compare-and-swap made
//!   after the slot it passes was claimed; an Acquire load of `tail` sees
//!   that claim stamp (so a position below `tail` is claimed).
//! - `head-claim`: likewise for `head` and read claims.
//! - `closed-mark`: the AcqRel `fetch_or` of the mark; a reader that loads
//!   the mark (Acquire) sees the final `tail`.
//!
//! Loads of `head` or `tail` that only choose which slot to look at are
//! Relaxed: the stamp's own Acquire load carries the synchronisation. A
//! compare-and-swap whose failed value only decides a retry fails Relaxed.

use crate::layout::{SlotHeader, SLOT_HEADER};
use shm_primitives::sync::{spin_loop, AtomicU64, AtomicU8, Ordering};
use std::ptr::NonNull;

/// Slot states (low four bits of a stamp).
pub(crate) const EMPTY: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const READING: u64 = 3;
pub(crate) const TOMB: u64 = 4;

const STATE_MASK: u64 = 0xF;
const ATT_SHIFT: u32 = 4;
const ATT_MASK: u64 = 0x3FF;
const LAP_SHIFT: u32 = 14;
const LAP_MASK: u64 = (1 << 50) - 1;

/// `tail` bit that marks the channel closed.
pub(crate) const CLOSED_MARK: u64 = 1 << 63;

/// How many times a try-operation re-reads a slot another process is in the
/// middle of before reporting full / empty.
#[cfg(not(dragon_loom))]
const BUSY_SPINS: u32 = 64;
#[cfg(dragon_loom)]
const BUSY_SPINS: u32 = 1;

#[inline]
pub(crate) fn stamp(lap: u64, att: u32, state: u64) -> u64 {
    ((lap & LAP_MASK) << LAP_SHIFT) | ((u64::from(att) & ATT_MASK) << ATT_SHIFT) | state
}

#[inline]
pub(crate) fn stamp_state(s: u64) -> u64 {
    s & STATE_MASK
}

#[inline]
pub(crate) fn stamp_att(s: u64) -> u32 {
    ((s >> ATT_SHIFT) & ATT_MASK) as u32
}

#[inline]
pub(crate) fn stamp_lap(s: u64) -> u64 {
    s >> LAP_SHIFT
}

/// Where a slot's lap stands relative to the lap of the position we hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rel {
    Same,
    Ahead,
    Behind,
}

#[inline]
fn rel(slot_lap: u64, lap: u64) -> Rel {
    let d = slot_lap.wrapping_sub(lap) & LAP_MASK;
    if d == 0 {
        Rel::Same
    } else if d < (LAP_MASK >> 1) {
        Rel::Ahead
    } else {
        Rel::Behind
    }
}

/// Why a slot could not be claimed for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimWriteError {
    /// Every slot holds a message (or one is still being read).
    Full,
    /// The channel is closed.
    Closed,
}

/// Why a slot could not be claimed for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimReadError {
    /// Nothing to read.
    Empty,
    /// The next message is still being written by attachment `writer`.
    InProgress { writer: u32 },
    /// Closed and drained.
    Closed,
}

/// A slot claimed by this attachment (for writing or reading).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    /// Slot index.
    pub index: u64,
    /// Lap of the claimed position.
    pub lap: u64,
}

/// A view of a ring in some region: the two positions and the slot array.
#[derive(Debug)]
pub(crate) struct Ring {
    head: NonNull<AtomicU64>,
    tail: NonNull<AtomicU64>,
    slots: NonNull<u8>,
    stride: usize,
    cap: u64,
    one_lap: u64,
    shift: u32,
    /// Process-local hint: the last write claim found its slot free at the
    /// first look, so the next one tries a CAS straight away (see
    /// [`Ring::claim_write`]).
    free_at_tail: AtomicU8,
}

// SAFETY: a Ring only points into shared memory whose words are atomics;
// everything else is accessed under the slot-claim protocol.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// # Safety
    ///
    /// `head` and `tail` must point at initialised atomics and `slots` at
    /// `cap` initialised slots of `stride` bytes each (a [`SlotHeader`]
    /// followed by payload), aligned for `SlotHeader`; all of it must stay
    /// mapped for the life of the `Ring`. `stride >= size_of::<SlotHeader>()`.
    pub(crate) unsafe fn new(
        head: NonNull<AtomicU64>,
        tail: NonNull<AtomicU64>,
        slots: NonNull<u8>,
        stride: usize,
        cap: u64,
    ) -> Ring {
        assert!(cap >= 1 && stride >= SLOT_HEADER);
        let one_lap = (cap + 1).next_power_of_two();
        Ring {
            head,
            tail,
            slots,
            stride,
            cap,
            one_lap,
            shift: one_lap.trailing_zeros(),
            free_at_tail: AtomicU8::new(1),
        }
    }

    /// Write fresh slot headers (every slot `EMPTY` for lap 0).
    ///
    /// # Safety
    ///
    /// `slots` must point at `cap * stride` writable bytes aligned for
    /// `SlotHeader` that nobody else uses yet.
    pub(crate) unsafe fn init_slots(slots: *mut u8, stride: usize, cap: u64) {
        for i in 0..cap as usize {
            // SAFETY: in bounds of the caller's allocation and aligned
            // (stride is a multiple of the header's alignment).
            unsafe {
                slots.add(i * stride).cast::<SlotHeader>().write(SlotHeader {
                    stamp: AtomicU64::new(stamp(0, 0, EMPTY)),
                    len: AtomicU64::new(0),
                    aux: AtomicU64::new(0),
                })
            };
        }
    }

    #[inline]
    fn head(&self) -> &AtomicU64 {
        // SAFETY: valid for the life of the ring (constructor contract).
        unsafe { self.head.as_ref() }
    }

    #[inline]
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: valid for the life of the ring (constructor contract).
        unsafe { self.tail.as_ref() }
    }

    /// The slot header at `index`.
    #[inline]
    pub(crate) fn slot(&self, index: u64) -> &SlotHeader {
        debug_assert!(index < self.cap);
        // SAFETY: index < cap, so the header is inside the slot array, which
        // is initialised and mapped for the life of the ring.
        unsafe { &*self.slots.as_ptr().add(index as usize * self.stride).cast::<SlotHeader>() }
    }

    /// The payload area of slot `index` (`stride - SLOT_HEADER` bytes).
    #[inline]
    pub(crate) fn payload(&self, index: u64) -> *mut u8 {
        // SAFETY: in bounds: the payload follows the header inside the slot.
        unsafe { self.slots.as_ptr().add(index as usize * self.stride + SLOT_HEADER) }
    }

    /// Payload bytes per slot.
    pub(crate) fn inline_cap(&self) -> usize {
        self.stride - SLOT_HEADER
    }

    #[inline]
    fn index(&self, pos: u64) -> u64 {
        pos & (self.one_lap - 1)
    }

    #[inline]
    fn lap(&self, pos: u64) -> u64 {
        (pos & !CLOSED_MARK) >> self.shift
    }

    #[inline]
    fn next(&self, pos: u64) -> u64 {
        let pos = pos & !CLOSED_MARK;
        if self.index(pos) + 1 < self.cap {
            pos + 1
        } else {
            (self.lap(pos) + 1) << self.shift
        }
    }

    /// Number of positions from `head` to `tail` (messages in the ring,
    /// tombstones and in-flight claims included).
    fn distance(&self, head: u64, tail: u64) -> u64 {
        let (h, t) = (head & !CLOSED_MARK, tail & !CLOSED_MARK);
        let laps = self.lap(t).wrapping_sub(self.lap(h));
        let n = laps.wrapping_mul(self.cap).wrapping_add(self.index(t)).wrapping_sub(self.index(h));
        // The two loads are not one snapshot; clamp what a race can produce.
        if n > self.cap * 2 {
            0
        } else {
            n.min(self.cap)
        }
    }

    /// Messages in the ring (approximate under concurrency).
    pub(crate) fn len(&self) -> u64 {
        // Relaxed: a snapshot for reporting; no data is read through it.
        let head = self.head().load(Ordering::Relaxed);
        let tail = self.tail().load(Ordering::Relaxed);
        self.distance(head, tail)
    }

    /// Whether the closed mark is set.
    pub(crate) fn is_closed(&self) -> bool {
        // SYNC POINT closed-mark: the final tail.
        self.tail().load(Ordering::Acquire) & CLOSED_MARK != 0
    }

    /// Set the closed mark. Returns false if it was already set.
    pub(crate) fn close(&self) -> bool {
        // SYNC POINT closed-mark: the mark freezes tail; producers that read
        // it stop claiming, readers that see it see the final tail.
        self.tail().fetch_or(CLOSED_MARK, Ordering::AcqRel) & CLOSED_MARK == 0
    }

    /// Claim the slot at `tail` for writing as attachment `att`.
    ///
    /// When the slot at `tail` is usually free (a consumer keeps up), the
    /// claim is a CAS straight from the free stamp: one request for the
    /// line in exclusive state, where a load and then a CAS take two (the
    /// line arrives shared, then is upgraded), and the line is one the
    /// consumers poll. When the ring was found full, a failing CAS would
    /// take the line away from the consumer about to release it on every
    /// poll, so the claim looks first until a slot is found free at the
    /// first look again (`free_at_tail`, a process-local hint).
    #[inline]
    pub(crate) fn claim_write(&self, att: u32) -> Result<Claim, ClaimWriteError> {
        // Relaxed: a process-local hint; either answer is correct.
        if self.free_at_tail.load(Ordering::Relaxed) != 0 {
            // SYNC POINT tail-claim: the claim stamps of the slots below
            // tail (and closed-mark: the final tail).
            let tail = self.tail().load(Ordering::Acquire);
            if tail & CLOSED_MARK == 0 {
                let (index, lap) = (self.index(tail), self.lap(tail));
                let claimed = stamp(lap, att, WRITING);
                // SYNC POINT slot-free: the last reader's reads of the old
                // payload happen before we overwrite it.
                if self
                    .slot(index)
                    .stamp
                    .compare_exchange(stamp(lap, 0, EMPTY), claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.count_claim(tail, Claim { index, lap }, claimed);
                }
                // Relaxed: a process-local hint.
                self.free_at_tail.store(0, Ordering::Relaxed);
            }
        }
        self.claim_write_looking(att)
    }

    /// [`Ring::claim_write`] that reads each stamp before it CASes it.
    #[inline(never)]
    fn claim_write_looking(&self, att: u32) -> Result<Claim, ClaimWriteError> {
        let mut busy = 0;
        let mut first = true;
        loop {
            // SYNC POINT tail-claim: once we see a tail we see the claim
            // stamp of the slot it moved past (and closed-mark).
            let tail = self.tail().load(Ordering::Acquire);
            if tail & CLOSED_MARK != 0 {
                return Err(ClaimWriteError::Closed);
            }
            let (index, lap) = (self.index(tail), self.lap(tail));
            let slot = self.slot(index);
            // SYNC POINT slot-free: the last reader's reads of the old
            // payload happen before we overwrite it.
            let s = slot.stamp.load(Ordering::Acquire);
            match (rel(stamp_lap(s), lap), stamp_state(s)) {
                (Rel::Same, EMPTY) => {
                    if first {
                        // Relaxed: a process-local hint.
                        self.free_at_tail.store(1, Ordering::Relaxed);
                    }
                    let claimed = stamp(lap, att, WRITING);
                    // SYNC POINT slot-free: as the load above.
                    if slot.stamp.compare_exchange_weak(s, claimed, Ordering::Acquire, Ordering::Relaxed).is_err() {
                        continue;
                    }
                    return self.count_claim(tail, Claim { index, lap }, claimed);
                }
                (Rel::Same, _) | (Rel::Ahead, _) => {
                    // The slot at `tail` is already claimed: help tail on.
                    // SYNC POINT tail-claim: the claim we observed, to
                    // whoever loads the new tail.
                    let _ = self.tail().compare_exchange(tail, self.next(tail), Ordering::Release, Ordering::Relaxed);
                }
                (Rel::Behind, _) => {
                    first = false;
                    // The slot still holds last lap's message.
                    // Relaxed: only used to tell "full" from "being read"; a
                    // stale value just means one more retry.
                    let head = self.head().load(Ordering::Relaxed);
                    if head.wrapping_add(self.one_lap) == tail || busy >= BUSY_SPINS {
                        return Err(ClaimWriteError::Full);
                    }
                    busy += 1;
                    spin_loop();
                }
            }
        }
    }

    /// After claiming the slot at position `tail`, make sure `tail` has moved
    /// past it, unless the channel was closed first (then undo the claim).
    #[inline]
    fn count_claim(&self, mut tail: u64, claim: Claim, claimed: u64) -> Result<Claim, ClaimWriteError> {
        shm_primitives::fault::point("ring.claimed_not_counted");
        loop {
            // SYNC POINT tail-claim: our claim stamp, to whoever loads the
            // new tail. Failing, Acquire: the value read decides whether
            // the channel closed first (closed-mark).
            match self.tail().compare_exchange(tail, self.next(tail), Ordering::Release, Ordering::Acquire) {
                Ok(_) => return Ok(claim),
                Err(actual) if actual & !CLOSED_MARK != tail & !CLOSED_MARK => return Ok(claim),
                Err(actual) if actual & CLOSED_MARK != 0 => {
                    // Closed before our position was counted: it never will be.
                    // SYNC POINT slot-free: the slot is free again for this
                    // lap (nothing was written).
                    let slot = self.slot(claim.index);
                    let _ = slot.stamp.compare_exchange(
                        claimed,
                        stamp(claim.lap, 0, EMPTY),
                        Ordering::Release,
                        Ordering::Relaxed,
                    );
                    return Err(ClaimWriteError::Closed);
                }
                Err(actual) => tail = actual,
            }
        }
    }

    /// Publish a written slot: consumers may take it now.
    #[inline]
    pub(crate) fn publish(&self, claim: Claim) {
        // SYNC POINT slot-full: the payload, `len` and `aux` written under
        // the claim.
        self.slot(claim.index).stamp.store(stamp(claim.lap, 0, FULL), Ordering::Release);
    }

    /// Give up a write claim after it was counted: readers skip the slot.
    pub(crate) fn publish_tombstone(&self, claim: Claim) {
        // SYNC POINT slot-tomb: what the writer did to the slot's block
        // before giving the slot up.
        self.slot(claim.index).stamp.store(stamp(claim.lap, 0, TOMB), Ordering::Release);
    }

    /// Claim the slot at `head` for reading as attachment `att`. Tombstones
    /// met on the way are released; `on_release` is called for each so the
    /// caller can wake senders.
    ///
    /// With `fast_empty`, an unclaimed slot at `head` is reported `Empty`
    /// without reading `tail` (which would pull the producers' cache line on
    /// every poll); the caller must pass false once the channel may be
    /// closed, so that `Closed` is reported.
    #[inline]
    pub(crate) fn claim_read(
        &self,
        att: u32,
        fast_empty: bool,
        on_release: &mut dyn FnMut(),
    ) -> Result<Claim, ClaimReadError> {
        // The two common cases first, with one compare each: a message at
        // `head`, or (while open) nothing there. The loop below handles
        // every case; this only skips its decoding.
        // Relaxed: the stamp load below carries the synchronisation.
        let head = self.head().load(Ordering::Relaxed);
        let (index, lap) = (self.index(head), self.lap(head));
        let slot = self.slot(index);
        // SYNC POINT slot-full (and slot-tomb): a FULL stamp brings the
        // payload.
        let s = slot.stamp.load(Ordering::Acquire);
        if s == stamp(lap, 0, FULL) {
            // SYNC POINT slot-full: as the load above.
            if slot.stamp.compare_exchange(s, stamp(lap, att, READING), Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // A failed CAS means someone already helped head on.
                // SYNC POINT head-claim: our read claim, to whoever loads
                // the new head.
                let _ = self.head().compare_exchange(head, self.next(head), Ordering::Release, Ordering::Relaxed);
                return Ok(Claim { index, lap });
            }
        } else if fast_empty && (s == stamp(lap, 0, EMPTY) || rel(stamp_lap(s), lap) == Rel::Behind) {
            return Err(ClaimReadError::Empty);
        }
        self.claim_read_loop(att, fast_empty, on_release)
    }

    /// [`Ring::claim_read`], every case.
    #[inline(never)]
    fn claim_read_loop(
        &self,
        att: u32,
        fast_empty: bool,
        on_release: &mut dyn FnMut(),
    ) -> Result<Claim, ClaimReadError> {
        let mut busy = 0;
        loop {
            // Relaxed: the stamp load below carries the synchronisation.
            let head = self.head().load(Ordering::Relaxed);
            let (index, lap) = (self.index(head), self.lap(head));
            let slot = self.slot(index);
            // SYNC POINT slot-full (and slot-tomb): a FULL stamp brings the
            // payload.
            let s = slot.stamp.load(Ordering::Acquire);
            match (rel(stamp_lap(s), lap), stamp_state(s)) {
                (Rel::Same, FULL) => {
                    // SYNC POINT slot-full: as the load above.
                    if slot
                        .stamp
                        .compare_exchange_weak(s, stamp(lap, att, READING), Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        continue;
                    }
                    // A failed CAS means someone already helped head on.
                    // SYNC POINT head-claim: our read claim.
                    let _ = self.head().compare_exchange(head, self.next(head), Ordering::Release, Ordering::Relaxed);
                    return Ok(Claim { index, lap });
                }
                (Rel::Same, TOMB) => {
                    // A dead writer's slot. If it died before counting its
                    // position in `tail`, count it first: `head` must never
                    // pass `tail`.
                    // SYNC POINT tail-claim (and closed-mark).
                    let tail = self.tail().load(Ordering::Acquire);
                    if tail & !CLOSED_MARK == head {
                        if tail & CLOSED_MARK != 0 {
                            // Closed before it was counted: never delivered.
                            return Err(ClaimReadError::Closed);
                        }
                        // SYNC POINT tail-claim: the (tombstoned) claim.
                        let _ =
                            self.tail().compare_exchange(tail, self.next(tail), Ordering::Release, Ordering::Relaxed);
                        continue;
                    }
                    // Counted: release it for the next lap and move on.
                    // SYNC POINT slot-free: the slot, skipped, for the
                    // next lap's writer.
                    if slot
                        .stamp
                        .compare_exchange(s, stamp(lap + 1, 0, EMPTY), Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        on_release();
                    }
                    // SYNC POINT head-claim: the skipped slot.
                    let _ = self.head().compare_exchange(head, self.next(head), Ordering::Release, Ordering::Relaxed);
                }
                (Rel::Same, READING) | (Rel::Ahead, _) => {
                    // Already claimed (or released): help head on.
                    // SYNC POINT head-claim: the claim we observed.
                    let _ = self.head().compare_exchange(head, self.next(head), Ordering::Release, Ordering::Relaxed);
                }
                (Rel::Same, EMPTY) | (Rel::Behind, _) if fast_empty => return Err(ClaimReadError::Empty),
                (Rel::Same, WRITING) if fast_empty => {
                    // A writer claimed this position and is filling it: it
                    // will publish, be tombstoned, or (closed first) undo
                    // the claim. Wait on the stamp alone: reading `tail`
                    // here would pull the producers' line in the middle of
                    // their claim, just before they CAS it.
                    busy += 1;
                    if busy >= BUSY_SPINS {
                        return Err(ClaimReadError::InProgress { writer: stamp_att(s) });
                    }
                    spin_loop();
                }
                (Rel::Same, state) => {
                    // EMPTY or WRITING: is anything in flight at all?
                    // SYNC POINT tail-claim: a tail past `head` comes with
                    // the claim stamp of this slot (and closed-mark).
                    let tail = self.tail().load(Ordering::Acquire);
                    if tail & !CLOSED_MARK == head {
                        return Err(if tail & CLOSED_MARK != 0 {
                            ClaimReadError::Closed
                        } else {
                            ClaimReadError::Empty
                        });
                    }
                    // Tail is past us: the writer is mid-message (WRITING) or
                    // our stamp read was stale (EMPTY). Either way, bounded.
                    busy += 1;
                    if busy >= BUSY_SPINS {
                        return Err(if state == WRITING {
                            ClaimReadError::InProgress { writer: stamp_att(s) }
                        } else {
                            ClaimReadError::Empty
                        });
                    }
                    spin_loop();
                }
                (Rel::Behind, _) => {
                    // Last lap's reader has not released the slot yet, so
                    // this position has not been written either.
                    // SYNC POINT tail-claim (and closed-mark).
                    let tail = self.tail().load(Ordering::Acquire);
                    if tail & !CLOSED_MARK == head {
                        return Err(if tail & CLOSED_MARK != 0 {
                            ClaimReadError::Closed
                        } else {
                            ClaimReadError::Empty
                        });
                    }
                    busy += 1;
                    if busy >= BUSY_SPINS {
                        return Err(ClaimReadError::Empty);
                    }
                    spin_loop();
                }
            }
        }
    }

    /// Give a read slot back for the next lap.
    #[inline]
    pub(crate) fn release(&self, claim: Claim) {
        // SYNC POINT slot-free: our reads of the payload happen before the
        // next writer's writes.
        self.slot(claim.index).stamp.store(stamp(claim.lap + 1, 0, EMPTY), Ordering::Release);
    }

    /// Whether a `claim_read` would find something (a message, a tombstone,
    /// or the closed-and-drained state) without claiming it.
    /// `fast_empty` as for [`Ring::claim_read`].
    pub(crate) fn readable(&self, fast_empty: bool) -> bool {
        // SYNC POINT head-claim: the claims of the slots below head.
        let head = self.head().load(Ordering::Acquire);
        // SYNC POINT slot-full (and slot-tomb).
        let s = self.slot(self.index(head)).stamp.load(Ordering::Acquire);
        let lap = self.lap(head);
        match (rel(stamp_lap(s), lap), stamp_state(s)) {
            (Rel::Same, FULL) | (Rel::Same, TOMB) => true,
            (Rel::Same, READING) | (Rel::Ahead, _) => true, // stale head: worth a retry
            _ if fast_empty => false,
            _ => {
                // SYNC POINT closed-mark: the final tail.
                let tail = self.tail().load(Ordering::Acquire);
                tail & CLOSED_MARK != 0 && tail & !CLOSED_MARK == head
            }
        }
    }

    /// Whether a `claim_write` would find a free slot (or the closed mark).
    pub(crate) fn writable(&self) -> bool {
        // SYNC POINT tail-claim (and closed-mark).
        let tail = self.tail().load(Ordering::Acquire);
        if tail & CLOSED_MARK != 0 {
            return true;
        }
        // SYNC POINT slot-free.
        let s = self.slot(self.index(tail)).stamp.load(Ordering::Acquire);
        rel(stamp_lap(s), self.lap(tail)) != Rel::Behind
    }

    /// Recovery: finish or undo the slot claims of dead attachment `att`.
    /// `before` is called with each claimed slot (index, stamp) before the
    /// slot changes state, so the caller can reclaim a block the slot
    /// references. Returns (tombstoned, released). Idempotent and safe to run
    /// from several processes at once: every change is a CAS from the exact
    /// stamp observed.
    pub(crate) fn recover_claims_of(&self, att: u32, before: &mut dyn FnMut(u64, u64)) -> (u64, u64) {
        let (mut tombs, mut released) = (0, 0);
        for index in 0..self.cap {
            let slot = self.slot(index);
            // SYNC POINT slot-full, slot-free: `len` and `aux` as published
            // with the slot's last stamp. (A dead writer's stores after its
            // claim have no edge: `before` treats `aux` as a hint that the
            // block's own state confirms.)
            let s = slot.stamp.load(Ordering::Acquire);
            if stamp_att(s) != att {
                continue;
            }
            match stamp_state(s) {
                WRITING => {
                    before(index, s);
                    // SYNC POINT slot-tomb: what `before` did to the slot's
                    // block, before readers skip the slot.
                    if slot
                        .stamp
                        .compare_exchange(s, stamp(stamp_lap(s), 0, TOMB), Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        tombs += 1;
                    }
                }
                READING => {
                    before(index, s);
                    // SYNC POINT slot-free: the dead reader's slot, for the
                    // next lap's writer.
                    if slot
                        .stamp
                        .compare_exchange(s, stamp(stamp_lap(s) + 1, 0, EMPTY), Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        released += 1;
                    }
                }
                _ => {}
            }
        }
        (tombs, released)
    }

    /// The reader still holding the slot the next write needs, if any.
    pub(crate) fn reader_at_tail(&self) -> Option<u32> {
        // Relaxed: a hint (who holds the slot up) that at most starts a
        // recovery, which synchronises on its own; nothing is read through it.
        let tail = self.tail().load(Ordering::Relaxed) & !CLOSED_MARK;
        let s = self.slot(self.index(tail)).stamp.load(Ordering::Relaxed);
        (stamp_state(s) == READING && rel(stamp_lap(s), self.lap(tail)) == Rel::Behind).then(|| stamp_att(s))
    }

    /// The writer of the next unread slot if it is still being written.
    #[cfg(all(test, not(dragon_loom)))]
    pub(crate) fn writer_at_head(&self) -> Option<u32> {
        // Relaxed: a diagnostic snapshot for tests.
        let head = self.head().load(Ordering::Relaxed);
        let s = self.slot(self.index(head)).stamp.load(Ordering::Relaxed);
        (stamp_state(s) == WRITING && rel(stamp_lap(s), self.lap(head)) == Rel::Same).then(|| stamp_att(s))
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;
    use shm_primitives::region::{HeapRegion, Region};

    struct TestRing {
        _mem: HeapRegion,
        ring: Ring,
    }

    fn ring(cap: u64, stride: usize) -> TestRing {
        let mem = HeapRegion::new(256 + cap as usize * stride);
        let base = mem.base().as_ptr();
        // SAFETY: the heap region is zeroed, aligned and large enough for two
        // words at 0 and 128 and the slots at 256.
        let ring = unsafe {
            base.cast::<AtomicU64>().write(AtomicU64::new(0));
            base.add(128).cast::<AtomicU64>().write(AtomicU64::new(0));
            Ring::init_slots(base.add(256), stride, cap);
            Ring::new(
                NonNull::new(base.cast()).unwrap(),
                NonNull::new(base.add(128).cast()).unwrap(),
                NonNull::new(base.add(256)).unwrap(),
                stride,
                cap,
            )
        };
        TestRing { _mem: mem, ring }
    }

    fn push(r: &Ring, v: u64) -> Result<(), ClaimWriteError> {
        let c = r.claim_write(1)?;
        r.slot(c.index).len.store(v, Ordering::Relaxed);
        r.publish(c);
        Ok(())
    }

    fn pop(r: &Ring) -> Result<u64, ClaimReadError> {
        let c = r.claim_read(2, false, &mut || {})?;
        let v = r.slot(c.index).len.load(Ordering::Relaxed);
        r.release(c);
        Ok(v)
    }

    #[test]
    fn fifo_with_wrap_around_for_odd_capacities() {
        for cap in 1..=5u64 {
            let t = ring(cap, 64);
            let r = &t.ring;
            let mut next_in = 0;
            let mut next_out = 0;
            for round in 0..20 {
                let k = (round % (cap + 1)) + 1;
                for _ in 0..k {
                    match push(r, next_in) {
                        Ok(()) => next_in += 1,
                        Err(e) => {
                            assert_eq!(e, ClaimWriteError::Full);
                            assert_eq!(r.len(), cap);
                        }
                    }
                }
                assert!(r.len() <= cap);
                while let Ok(v) = pop(r) {
                    assert_eq!(v, next_out);
                    next_out += 1;
                }
                assert_eq!(pop(r), Err(ClaimReadError::Empty));
            }
            assert_eq!(next_in, next_out);
        }
    }

    #[test]
    fn close_drains_then_reports_closed() {
        let t = ring(4, 64);
        let r = &t.ring;
        push(r, 7).unwrap();
        assert!(r.close());
        assert!(!r.close());
        assert_eq!(push(r, 8), Err(ClaimWriteError::Closed));
        assert_eq!(pop(r), Ok(7));
        assert_eq!(pop(r), Err(ClaimReadError::Closed));
        assert!(r.readable(false));
        assert!(r.writable());
    }

    #[test]
    fn dead_writer_becomes_tombstone_and_dead_reader_is_released() {
        let t = ring(2, 64);
        let r = &t.ring;
        // Attachment 5 claims a slot and "dies" before publishing.
        let c = r.claim_write(5).unwrap();
        push(r, 11).unwrap();
        assert!(matches!(pop(r), Err(ClaimReadError::InProgress { writer: 5 })));
        assert_eq!(r.writer_at_head(), Some(5));
        let mut seen = vec![];
        assert_eq!(r.recover_claims_of(5, &mut |i, _| seen.push(i)), (1, 0));
        assert_eq!(seen, vec![c.index]);
        let mut released = 0;
        let c2 = r.claim_read(2, false, &mut || released += 1).unwrap();
        assert_eq!(released, 1);
        assert_eq!(r.slot(c2.index).len.load(Ordering::Relaxed), 11);
        // Attachment 2 "dies" while reading.
        assert_eq!(r.recover_claims_of(2, &mut |_, _| {}), (0, 1));
        // Recovery is idempotent.
        assert_eq!(r.recover_claims_of(2, &mut |_, _| {}), (0, 0));
        assert_eq!(pop(r), Err(ClaimReadError::Empty));
        for v in 0..6 {
            push(r, v).unwrap();
            assert_eq!(pop(r), Ok(v));
        }
    }

    #[test]
    fn tombstone_of_an_uncounted_claim_does_not_let_head_pass_tail() {
        let t = ring(4, 64);
        let r = &t.ring;
        push(r, 1).unwrap();
        // Attachment 6 claims slot 1 and dies before advancing tail.
        r.slot(1).stamp.store(stamp(0, 6, WRITING), Ordering::Relaxed);
        assert_eq!(r.recover_claims_of(6, &mut |_, _| {}), (1, 0));
        assert_eq!(pop(r), Ok(1));
        // The tombstone is counted and skipped; the ring stays consistent.
        assert_eq!(pop(r), Err(ClaimReadError::Empty));
        assert_eq!(r.len(), 0);
        for v in 10..20 {
            push(r, v).unwrap();
            assert_eq!(pop(r), Ok(v));
        }
        // Same, but closed before the claim was counted: not delivered.
        let t = ring(4, 64);
        let r = &t.ring;
        r.slot(0).stamp.store(stamp(0, 6, WRITING), Ordering::Relaxed);
        r.recover_claims_of(6, &mut |_, _| {});
        r.close();
        assert_eq!(pop(r), Err(ClaimReadError::Closed));
    }

    #[test]
    fn claim_undone_when_closed_before_counted() {
        let t = ring(2, 64);
        let r = &t.ring;
        // Simulate: claim the stamp, then close before tail moves.
        let s = r.slot(0);
        let claimed = stamp(0, 3, WRITING);
        s.stamp.store(claimed, Ordering::Relaxed);
        r.close();
        assert_eq!(r.count_claim(0, Claim { index: 0, lap: 0 }, claimed).unwrap_err(), ClaimWriteError::Closed);
        assert_eq!(s.stamp.load(Ordering::Relaxed), stamp(0, 0, EMPTY));
        assert_eq!(pop(r), Err(ClaimReadError::Closed));
    }
}
