//! The channel: a bounded MPMC queue of byte messages in a memory region.
//!
//! A [`Channel`] is one attachment of one process to a channel; clones share
//! the attachment. Small messages are copied into ring slots; larger ones go
//! into blocks from the channel's allocator and are received without a second
//! copy ([`Message::into_bytes`]). See `docs/architecture.md`.
//!
//! # Waiting
//!
//! A blocking call first tries, then spins for a configurable time
//! ([`Channel::set_spin`]), then sleeps on the futex word of its direction.
//! The handshake that keeps wake-ups from being lost:
//!
//! ```text
//!   waiter                                  waker
//!   waiters += 1                            publish (Release store of the stamp)
//!   fence(SeqCst)                           fence(SeqCst)
//!   seq = word.seq                          if waiters > 0:
//!   re-check; if still blocked:                 word.seq += 1
//!       futex_wait(word.seq, seq)               futex_wake(word.seq)
//!   waiters -= 1
//! ```
//!
//! Either the waker's fence comes first, and the waiter's re-check sees the
//! publication, or the waiter's does, and the waker sees the waiter and
//! bumps `seq`, which makes `futex_wait` return at once if it has not slept
//! yet. Sleepers wake every [`SLEEP_SLICE`] to look for dead peers.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `channel-header`: the creator's Release store of the magic publishes
//!   the initialised header (whose fields are then read Relaxed) to an
//!   attacher's Acquire load of it.
//! - `channel-state`: `close` and `destroy` set their state bit with an
//!   AcqRel read-modify-write after marking the ring closed; whoever sees
//!   the bit with an Acquire load finds the ring's closed mark.

use crate::alloc::{class_size, put_in_ring, take_from_ring, AllocError, AllocStats, Allocator, BlockRef};
use crate::attach::{Roles, Table};
use crate::backing::{Backing, HeapBacking};
use crate::error::*;
use crate::layout::{
    flags, AttachRow, ChannelHeader, MainLayout, WaitWord, LAYOUT_VERSION, MAGIC, SELECT_WAITER_ONE, STATE_CLOSED,
    STATE_DESTROYED, STATE_OPEN, WAITER_ONE,
};
use crate::ring::{ClaimReadError, ClaimWriteError, Ring};
use crate::wake;
use bytes::Bytes;
use shm_primitives::fault;
use shm_primitives::futex::{self, Deadline, Wake};
use shm_primitives::handle::{Handle, Kind};
use shm_primitives::process::ProcessId;
use shm_primitives::region::{HeapRegion, Region};
use shm_primitives::sync::{spin_loop, AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::mem::size_of;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fork detection: a child made by `fork` inherits its parent's `Channel`
/// values, attachment ids included. A child must act under an id of its
/// own (ids are what recovery attributes claims and blocks to) and must
/// never give back its parent's row.
mod fork {
    use shm_primitives::sync::local::{AtomicU64, Ordering};

    static EPOCH: AtomicU64 = AtomicU64::new(0);

    extern "C" fn in_child() {
        // Relaxed: only this (now single-threaded) process reads it.
        EPOCH.fetch_add(1, Ordering::Relaxed);
    }

    /// Count forks from now on (idempotent), and return the current count.
    pub(super) fn register() -> u64 {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: registers a handler that only bumps an atomic, which is
            // async-signal-safe as fork child handlers must be.
            unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        });
        current()
    }

    /// Forks this process's lineage went through since start.
    #[inline]
    pub(super) fn current() -> u64 {
        // Relaxed: a process-local counter.
        EPOCH.load(Ordering::Relaxed)
    }
}

/// Longest a sleeper sleeps before looking for dead peers.
pub const SLEEP_SLICE: Duration = Duration::from_millis(100);
/// Default spin before sleeping.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// How often (per channel, across processes) liveness is scanned.
const SCAN_INTERVAL_MS: u64 = 100;

/// Parameters of a new channel.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    capacity: u64,
    slot_size: usize,
    max_attachments: u32,
    max_block_bytes: u64,
    flags: u32,
    roles: Roles,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            capacity: 256,
            slot_size: 128,
            max_attachments: 128,
            max_block_bytes: 0,
            flags: 0,
            roles: Roles::BOTH,
        }
    }
}

impl ChannelOptions {
    /// Defaults: 256 slots of 128 bytes, 128 attachments, no memory limit.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of messages the channel holds (1..=2^24).
    pub fn capacity(mut self, n: u64) -> Self {
        self.capacity = n;
        self
    }
    /// Bytes per slot, header included (multiple of 8, >= 64); messages up
    /// to `slot_size - 24` bytes travel inline.
    pub fn slot_size(mut self, n: usize) -> Self {
        self.slot_size = n;
        self
    }
    /// Most processes attached at once (1..=1023).
    pub fn max_attachments(mut self, n: u32) -> Self {
        self.max_attachments = n;
        self
    }
    /// Limit on memory for large messages in bytes (0: no limit).
    pub fn max_block_bytes(mut self, n: u64) -> Self {
        self.max_block_bytes = n;
        self
    }
    /// Pipe semantics: receivers see `Disconnected` once no sender is
    /// attached (after one was).
    pub fn disconnect_on_no_senders(mut self, on: bool) -> Self {
        self.set_flag(flags::DISCONNECT_ON_NO_SENDERS, on);
        self
    }
    /// Pipe semantics: senders see `Disconnected` once no receiver is
    /// attached (after one was).
    pub fn disconnect_on_no_receivers(mut self, on: bool) -> Self {
        self.set_flag(flags::DISCONNECT_ON_NO_RECEIVERS, on);
        self
    }
    /// Roles of the creating attachment (default: both).
    pub fn roles(mut self, roles: Roles) -> Self {
        self.roles = roles;
        self
    }
    fn set_flag(&mut self, f: u32, on: bool) {
        if on {
            self.flags |= f
        } else {
            self.flags &= !f
        }
    }
    /// The main region size these options need.
    pub fn region_len(&self) -> Result<usize, ChannelError> {
        Ok(self.layout()?.total_len)
    }
    fn layout(&self) -> Result<MainLayout, ChannelError> {
        MainLayout::new(self.capacity, self.slot_size, self.max_attachments)
            .map_err(|e| ChannelError::InvalidOptions(e.0))
    }
}

/// What a recovery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Attachments newly found dead.
    pub found_dead: u32,
    /// Dead attachments whose resources were returned.
    pub swept: u32,
    /// Half-written slots turned into tombstones.
    pub tombstoned: u64,
    /// Slots a dead reader held, released.
    pub released: u64,
    /// Blocks returned to the allocator.
    pub blocks_freed: u64,
}

/// Which readiness a select waits for on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// A send would not block (room, or an error to report).
    Send,
    /// A receive would not block (a message, or an error to report).
    Recv,
}

/// Internal outcome of one attempt.
#[derive(Debug)]
enum Fail {
    WouldBlock,
    Disconnected,
    Destroyed,
    Timeout,
    Interrupted,
    Alloc(AllocError),
}

pub(crate) struct Inner {
    region: Arc<dyn Region>,
    hdr: NonNull<ChannelHeader>,
    layout: MainLayout,
    ring: Ring,
    table: Table,
    alloc: Allocator,
    /// This process's attachment id (replaced in a forked child).
    att: AtomicU32,
    /// `fork::current()` when `att` was claimed.
    epoch: AtomicU64,
    fork_lock: std::sync::Mutex<()>,
    roles: Roles,
    channel_id: u64,
    generation: u64,
    flags: u32,
    /// Spin before sleeping, in nanoseconds (process-local setting).
    spin_ns: AtomicU64,
    /// Cached (table version << 32 | senders << 16 | receivers) + 1; 0: none.
    counts_cache: AtomicU64,
}

// SAFETY: all shared-memory access goes through atomics or the claim
// protocols; the region is kept mapped by `region`.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.alloc.backing().name())
            .field("id", &format_args!("{:016x}", self.channel_id))
            // Relaxed: a process-local fact.
            .field("attachment", &self.att.load(Ordering::Relaxed))
            .field("capacity", &self.layout.capacity)
            .field("slot_size", &self.layout.slot_size)
            .finish()
    }
}

/// One process's attachment to a channel. Cheap to clone (clones share the
/// attachment); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: Arc<Inner>,
}

/// A received message: derefs to its bytes.
///
/// Small messages are copied out of the ring; a large one stays in its
/// shared-memory block, which returns to the allocator when the message (or
/// the [`Bytes`] made from it) is dropped.
pub struct Message(Repr);

const SMALL: usize = 64;

/// The bytes of a small message, aligned so that moving a `Message` is a
/// few vector moves rather than a byte-wise shuffle.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct SmallBuf([u8; SMALL]);

enum Repr {
    Small { len: u8, buf: SmallBuf },
    Heap(Vec<u8>),
    Block(Block),
}

/// A received large message in its shared-memory block.
pub struct Block {
    inner: Arc<Inner>,
    /// Fork count when received: a forked child's copy must not free it.
    epoch: u64,
    r: BlockRef,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the block is owned by this attachment until dropped; the memory
// stays mapped while `inner` lives.
unsafe impl Send for Block {}
// SAFETY: only shared (read) access is given out.
unsafe impl Sync for Block {}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block").field("len", &self.len).finish_non_exhaustive()
    }
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies in a block we own (len <= block size,
        // checked on receipt) and stays mapped while `inner` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // A copy inherited through fork belongs to the parent, which frees it.
        if fork::current() != self.epoch {
            return;
        }
        // A failure here means damaged metadata; the block stays owned by
        // us and is reclaimed by a sweep if we die. Nothing else to do.
        let _ = self.inner.alloc.free(self.r, self.inner.att());
    }
}

impl std::ops::Deref for Message {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Small { len, buf } => &buf.0[..*len as usize],
            Repr::Heap(v) => v,
            Repr::Block(b) => b.as_ref(),
        }
    }
}

impl AsRef<[u8]> for Message {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message").field("len", &self.len()).field("zero_copy", &self.is_zero_copy()).finish()
    }
}

impl Message {
    fn copy_of(data: &[u8]) -> Message {
        if data.len() <= SMALL {
            // Built in place: copying a filled buffer into the message made
            // the compiler move it through unaligned stack slots, loads that
            // overlap stores just made (a store-forwarding stall, about 8 ns
            // a receive).
            let mut m = Message(Repr::Small { len: data.len() as u8, buf: SmallBuf([0u8; SMALL]) });
            if let Repr::Small { buf, .. } = &mut m.0 {
                buf.0[..data.len()].copy_from_slice(data);
            }
            m
        } else {
            Message(Repr::Heap(data.to_vec()))
        }
    }

    /// Whether the bytes are still in the channel's shared memory.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.0, Repr::Block(_))
    }

    /// The bytes as a [`Bytes`]; a large message is not copied (dropping the
    /// last clone returns its block).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Small { len, buf } => Bytes::copy_from_slice(&buf.0[..len as usize]),
            Repr::Heap(v) => Bytes::from(v),
            Repr::Block(b) => Bytes::from_owner(b),
        }
    }

    /// The bytes as a vector (copies a large message).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Heap(v) => v,
            _ => self.to_vec(),
        }
    }
}

/// If a user's writer panics while we hold a slot claim, the slot becomes a
/// tombstone instead of a claim nobody will ever finish.
struct TombstoneOnUnwind<'a> {
    ring: &'a Ring,
    claim: Option<crate::ring::Claim>,
}

impl Drop for TombstoneOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.claim.take() {
            self.ring.publish_tombstone(c);
        }
    }
}

/// If a user's reader panics while we hold a read claim, the slot is
/// released (the message counts as delivered).
struct ReleaseOnUnwind<'a> {
    ring: &'a Ring,
    claim: Option<crate::ring::Claim>,
}

impl Drop for ReleaseOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.claim.take() {
            self.ring.release(c);
        }
    }
}

/// A block allocated for a send that did not (yet) happen; returned to the
/// allocator when dropped, also on unwind.
struct PendingBlock<'a> {
    inner: &'a Inner,
    block: Option<(BlockRef, bool)>,
}

impl Drop for PendingBlock<'_> {
    fn drop(&mut self) {
        if let Some((b, _)) = self.block.take() {
            let _ = self.inner.alloc.free(b, self.inner.att());
        }
    }
}

/// The source of a message being sent.
enum Src<'a, F> {
    Parts(&'a [&'a [u8]]),
    With(Option<F>),
}

impl<F: FnOnce(&mut [u8])> Src<'_, F> {
    /// Whether filling can be repeated (a copy of borrowed bytes).
    fn reusable(&self) -> bool {
        matches!(self, Src::Parts(_))
    }

    fn fill(&mut self, dst: &mut [u8]) {
        match self {
            Src::Parts(parts) => {
                let mut at = 0;
                for p in parts.iter() {
                    dst[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
            }
            Src::With(f) => {
                if let Some(f) = f.take() {
                    f(dst)
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ (&b as *const _ as u64)
}

impl Inner {
    fn hdr(&self) -> &ChannelHeader {
        // SAFETY: the header is initialised and mapped while `region` lives.
        unsafe { self.hdr.as_ref() }
    }

    fn word(&self, dir: Dir) -> &WaitWord {
        match dir {
            Dir::Send => &self.hdr().not_full,
            Dir::Recv => &self.hdr().not_empty,
        }
    }

    #[inline]
    fn destroyed(&self) -> bool {
        // SYNC POINT channel-state: the ring's closed mark set before.
        self.hdr().config.state.load(Ordering::Acquire) & STATE_DESTROYED != 0
    }

    /// Whether `close` (or `destroy`) may have happened: then empty checks
    /// must read `tail` for its closed mark.
    fn maybe_closed(&self) -> bool {
        // SYNC POINT channel-state: the ring's closed mark set before.
        self.hdr().config.state.load(Ordering::Acquire) & STATE_CLOSED != 0
    }

    /// Wake waiters of `dir` if any announced themselves. Called after every
    /// state change that can unblock them.
    #[inline]
    fn notify(&self, dir: Dir) {
        wake::notify(self.word(dir));
    }

    /// Wake every waiter of `dir` (close, destroy, disconnect, recovery).
    fn notify_all(&self, dir: Dir) {
        wake::notify_all(self.word(dir));
    }

    fn counts(&self) -> (u32, u32) {
        let v = self.table.version();
        // Relaxed: a process-local cache keyed by the version.
        let c = self.counts_cache.load(Ordering::Relaxed);
        if c != 0 && (c - 1) >> 32 == v & 0xFFFF_FFFF {
            let c = c - 1;
            return (((c >> 16) & 0xFFFF) as u32, (c & 0xFFFF) as u32);
        }
        let (s, r) = self.table.counts();
        let packed = ((v & 0xFFFF_FFFF) << 32) | (u64::from(s.min(0xFFFF)) << 16) | u64::from(r.min(0xFFFF));
        self.counts_cache.store(packed + 1, Ordering::Relaxed);
        (s, r)
    }

    /// Pipe mode: has every sender (receiver) of a channel that had one gone?
    fn peer_gone(&self, dir: Dir) -> bool {
        let (flag, role) = match dir {
            Dir::Recv => (flags::DISCONNECT_ON_NO_SENDERS, Roles::SEND),
            Dir::Send => (flags::DISCONNECT_ON_NO_RECEIVERS, Roles::RECV),
        };
        if self.flags & flag == 0 || self.table.latch().bits() & role.bits() == 0 {
            return false;
        }
        let (s, r) = self.counts();
        match dir {
            Dir::Recv => s == 0,
            Dir::Send => r == 0,
        }
    }

    /// This process's attachment id; a forked child claims its own first.
    #[inline]
    fn att(&self) -> u32 {
        // Relaxed: both are process-local facts.
        if fork::current() != self.epoch.load(Ordering::Relaxed) {
            self.attach_after_fork();
        }
        self.att.load(Ordering::Relaxed)
    }

    #[cold]
    fn attach_after_fork(&self) {
        let _g = self.fork_lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = fork::current();
        // Relaxed: process-local facts, under `fork_lock`.
        if now == self.epoch.load(Ordering::Relaxed) {
            return;
        }
        match self.table.claim(ProcessId::current(), self.roles) {
            Some(a) => self.att.store(a, Ordering::Relaxed),
            None => eprintln!(
                "dragon channels: attachment table full in a forked child; it keeps its parent's id \
                 (attach by handle in the child instead)"
            ),
        }
        self.epoch.store(now, Ordering::Relaxed);
    }

    fn alive(&self, att: u32) -> bool {
        self.table.is_alive(att)
    }

    /// Whether a send may go ahead: not destroyed, and (pipe mode) some
    /// receiver is left.
    #[inline]
    fn send_allowed(&self) -> Result<(), Fail> {
        if self.destroyed() {
            return Err(Fail::Destroyed);
        }
        if self.flags & flags::DISCONNECT_ON_NO_RECEIVERS != 0 && self.peer_gone(Dir::Send) {
            return Err(Fail::Disconnected);
        }
        Ok(())
    }

    /// One non-blocking attempt to send a message that fits in a slot
    /// (`len <= inline_cap`): claim, copy, publish. No block is involved.
    #[inline]
    fn try_send_inline<F: FnOnce(&mut [u8])>(&self, len: usize, src: &mut Src<'_, F>) -> Result<(), Fail> {
        debug_assert!(len <= self.ring.inline_cap());
        self.send_allowed()?;
        let ring = &self.ring;
        let claim = self.claim_write()?;
        fault::point("send.inline_claimed");
        // SAFETY: we hold the slot's WRITING claim, so its payload area
        // (inline_cap >= len bytes) is ours alone until we publish.
        let dst = unsafe { std::slice::from_raw_parts_mut(ring.payload(claim.index), len) };
        let guard = TombstoneOnUnwind { ring, claim: Some(claim) };
        src.fill(dst);
        std::mem::forget(guard);
        // Relaxed: published by `publish` (slot-full).
        ring.slot(claim.index).len.store(len as u64, Ordering::Relaxed);
        fault::point("send.inline_written");
        ring.publish(claim);
        self.notify(Dir::Recv);
        Ok(())
    }

    /// One non-blocking attempt to send a message that needs a block
    /// (`len > inline_cap`). `block` carries a filled block between attempts
    /// of a blocking send.
    fn try_send_block<F: FnOnce(&mut [u8])>(
        &self,
        len: usize,
        src: &mut Src<'_, F>,
        block: &mut Option<(BlockRef, bool)>,
    ) -> Result<(), Fail> {
        self.send_allowed()?;
        let ring = &self.ring;
        // A block is allocated once per send. A copyable source is copied in
        // before a slot is claimed (the claim stays short); a one-shot
        // writer only after (so that a full channel gives it back unused).
        let (r, filled) = match *block {
            Some(b) => b,
            None => {
                let r = self.alloc.alloc(len, self.att(), &|a| self.alive(a)).map_err(Fail::Alloc)?;
                *block = Some((r, false));
                (r, false)
            }
        };
        debug_assert!(len as u64 <= class_size(r.class));
        let data = self.alloc.data(r).map_err(Fail::Alloc)?;
        // SAFETY: the block is owned by us and at least len bytes
        // (class_for(len) picked a class >= len); nobody else touches it.
        let dst = unsafe { std::slice::from_raw_parts_mut(data.as_ptr(), len) };
        if !filled && src.reusable() {
            src.fill(dst);
            *block = Some((r, true));
            fault::point("send.block_filled");
        }
        let meta = self.alloc.meta(r).map_err(Fail::Alloc)?;
        let claim = self.claim_write()?;
        fault::point("send.block_claimed");
        if !src.reusable() {
            let guard = TombstoneOnUnwind { ring, claim: Some(claim) };
            src.fill(dst);
            std::mem::forget(guard);
        }
        let slot = ring.slot(claim.index);
        // Relaxed: published by `publish` (slot-full); recovery reads them
        // only after this attachment died, as hints.
        slot.len.store(len as u64, Ordering::Relaxed);
        slot.aux.store(r.encode(), Ordering::Relaxed);
        if !put_in_ring(meta, claim.index, self.att()) {
            // Cannot happen unless the metadata was damaged; do not publish
            // a message whose block we do not own.
            ring.publish_tombstone(claim);
            *block = None;
            return Err(Fail::Alloc(AllocError::Corrupt("block not owned by its sender".into())));
        }
        *block = None;
        fault::point("send.in_ring");
        ring.publish(claim);
        self.notify(Dir::Recv);
        Ok(())
    }

    /// Claim a slot for writing. A full ring held up by a dead reader is
    /// recovered and the claim retried, so that even a sender that only
    /// polls gets going again.
    #[inline]
    fn claim_write(&self) -> Result<crate::ring::Claim, Fail> {
        match self.ring.claim_write(self.att()) {
            Ok(c) => Ok(c),
            Err(e) => self.claim_write_failed(e),
        }
    }

    #[cold]
    fn claim_write_failed(&self, e: ClaimWriteError) -> Result<crate::ring::Claim, Fail> {
        let fail = |e| match e {
            ClaimWriteError::Full => Fail::WouldBlock,
            ClaimWriteError::Closed => Fail::Disconnected,
        };
        if e == ClaimWriteError::Full && self.ring.reader_at_tail().is_some_and(|r| r != self.att() && !self.alive(r)) {
            self.maintain(true);
            return self.ring.claim_write(self.att()).map_err(fail);
        }
        Err(fail(e))
    }

    /// One non-blocking receive attempt; `f` is called with the message.
    fn try_recv_raw<T>(&self, f: &mut Option<impl FnOnce(Got<'_>) -> T>, inner: &Arc<Inner>) -> Result<T, Fail> {
        // SYNC POINT channel-state: after `close` or `destroy`, the ring's
        // closed mark.
        let state = self.hdr().config.state.load(Ordering::Acquire);
        if state & STATE_DESTROYED != 0 {
            return Err(Fail::Destroyed);
        }
        let fast_empty = state & STATE_CLOSED == 0;
        let att = self.att();
        loop {
            let claim = match self.ring.claim_read(att, fast_empty, &mut || self.notify(Dir::Send)) {
                Ok(c) => c,
                Err(e) => return Err(self.recv_failed(e)),
            };
            fault::point("recv.claimed");
            let slot = self.ring.slot(claim.index);
            // Relaxed: made visible by the claim (slot-full).
            let len = slot.len.load(Ordering::Relaxed) as usize;
            if len <= self.ring.inline_cap() {
                // SAFETY: we hold the READING claim; the payload area holds
                // `len <= inline_cap` bytes written before the publication.
                let data = unsafe { std::slice::from_raw_parts(self.ring.payload(claim.index), len) };
                let guard = ReleaseOnUnwind { ring: &self.ring, claim: Some(claim) };
                let out = (f.take().expect("called once"))(Got::Inline(data));
                std::mem::forget(guard);
                self.ring.release(claim);
                self.notify(Dir::Send);
                return Ok(out);
            }
            match self.take_block(claim, len) {
                Some((r, ptr)) => {
                    let block = Block { inner: Arc::clone(inner), epoch: fork::current(), r, ptr, len };
                    return Ok((f.take().expect("called once"))(Got::Block(block)));
                }
                // A damaged descriptor: the slot is skipped (nothing we could
                // deliver); try the next one.
                None => continue,
            }
        }
    }

    /// What an empty (or closed, or half-written) ring means for a receive.
    #[cold]
    fn recv_failed(&self, e: ClaimReadError) -> Fail {
        match e {
            ClaimReadError::Closed => Fail::Disconnected,
            ClaimReadError::Empty => {
                if self.peer_gone(Dir::Recv) && self.ring.len() == 0 {
                    Fail::Disconnected
                } else {
                    Fail::WouldBlock
                }
            }
            ClaimReadError::InProgress { writer } => {
                if !self.alive(writer) {
                    self.maintain(true);
                }
                Fail::WouldBlock
            }
        }
    }

    /// Take the block a claimed slot references and release the slot.
    /// `None`: the descriptor was damaged (the slot is skipped).
    #[inline(never)]
    fn take_block(&self, claim: crate::ring::Claim, len: usize) -> Option<(BlockRef, NonNull<u8>)> {
        let slot = self.ring.slot(claim.index);
        // Relaxed: made visible by the claim (slot-full).
        let taken = BlockRef::decode(slot.aux.load(Ordering::Relaxed))
            .filter(|r| len as u64 <= class_size(r.class))
            .and_then(|r| {
                let meta = self.alloc.meta(r).ok()?;
                let data = self.alloc.data(r).ok()?;
                take_from_ring(meta, claim.index, self.att()).then_some((r, data))
            });
        fault::point("recv.took_block");
        self.ring.release(claim);
        self.notify(Dir::Send);
        taken
    }

    /// Liveness scan and recovery, at most once per interval per channel
    /// (or now, if `force`).
    fn maintain(&self, force: bool) {
        if force || self.table.scan_due(now_ms(), SCAN_INTERVAL_MS) {
            let _ = self.recover();
        }
    }

    fn recover(&self) -> Result<RecoveryReport, AllocError> {
        let mut rep = RecoveryReport { found_dead: self.table.find_dead(), ..Default::default() };
        while let Some(claim) = self.table.claim_sweep(self.att()) {
            let dead = claim.att;
            fault::point("recover.sweeping");
            let mut freed = 0;
            let (t, r) = self.ring.recover_claims_of(dead, &mut |index, _stamp| {
                // A block the slot references and still names this slot
                // (never taken by the reader, or published but never
                // announced) is returned. `aux` may be stale; the block state
                // decides.
                let slot = self.ring.slot(index);
                // Relaxed: a hint (see above), ordered after the stamp load
                // in `recover_claims_of`; the block state decides.
                if let Some(b) = BlockRef::decode(slot.aux.load(Ordering::Relaxed)) {
                    if let Ok(meta) = self.alloc.meta(b) {
                        if take_from_ring(meta, index, self.att()) && self.alloc.free(b, self.att()).is_ok() {
                            freed += 1;
                        }
                    }
                }
            });
            fault::point("recover.ring_done");
            rep.tombstoned += t;
            rep.released += r;
            rep.blocks_freed += freed + self.alloc.sweep(dead, self.att())?;
            self.table.orphan_sweeps_of(dead);
            self.table.finish_sweep(claim);
            rep.swept += 1;
        }
        if rep.found_dead > 0 || rep.swept > 0 {
            self.notify_all(Dir::Recv);
            self.notify_all(Dir::Send);
        }
        Ok(rep)
    }

    fn ready(&self, dir: Dir) -> bool {
        self.destroyed()
            || match dir {
                Dir::Recv => self.ring.readable(!self.maybe_closed()) || self.peer_gone(Dir::Recv),
                Dir::Send => self.ring.writable() || self.peer_gone(Dir::Send),
            }
    }

    fn spin(&self) -> Duration {
        // Relaxed: a process-local tuning knob.
        Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed))
    }

    /// Pass a wake-up on if we leave without taking what woke us.
    fn pass_wake(&self, dir: Dir) {
        if self.ready(dir) {
            self.notify(dir);
        }
    }

    /// Try, spin, then sleep until `attempt` stops saying `WouldBlock`.
    fn block_on<T>(
        &self,
        dir: Dir,
        deadline: Deadline,
        mut hook: Option<&mut dyn FnMut() -> bool>,
        attempt: &mut dyn FnMut() -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        match attempt() {
            Err(Fail::WouldBlock) => {}
            other => return other,
        }
        let spin = self.spin();
        if !spin.is_zero() {
            let until = Instant::now() + deadline.remaining().map_or(spin, |r| r.min(spin));
            let mut i = 0u32;
            loop {
                if self.ready(dir) {
                    match attempt() {
                        Err(Fail::WouldBlock) => {}
                        other => return other,
                    }
                }
                spin_loop();
                i = i.wrapping_add(1);
                if i % 32 == 0 && Instant::now() >= until {
                    break;
                }
            }
        }
        let word = self.word(dir);
        loop {
            if deadline.expired() {
                return match attempt() {
                    Err(Fail::WouldBlock) => {
                        self.pass_wake(dir);
                        Err(Fail::Timeout)
                    }
                    other => other,
                };
            }
            // Announce, then re-check (see the module docs).
            let seq = wake::announce(word, WAITER_ONE);
            match attempt() {
                Err(Fail::WouldBlock) => {}
                other => {
                    wake::retract(word, WAITER_ONE);
                    return other;
                }
            }
            let how = futex::wait(&word.seq, seq, Some(deadline.slice(SLEEP_SLICE)));
            wake::retract(word, WAITER_ONE);
            match how {
                Wake::Interrupted | Wake::TimedOut => {
                    if how == Wake::TimedOut {
                        self.maintain(false);
                    }
                    if let Some(h) = hook.as_mut() {
                        if !h() {
                            self.pass_wake(dir);
                            return Err(Fail::Interrupted);
                        }
                    }
                }
                Wake::Woken | Wake::Changed => {}
            }
        }
    }
}

/// What a receive attempt hands its callback.
enum Got<'a> {
    Inline(&'a [u8]),
    Block(Block),
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A forked child that never used the channel holds its parent's id:
        // that row is not ours to give back.
        // Relaxed: process-local facts.
        if fork::current() == self.epoch.load(Ordering::Relaxed) {
            self.table.release(self.att.load(Ordering::Relaxed));
        }
        if self.roles.sends() && self.flags & flags::DISCONNECT_ON_NO_SENDERS != 0 {
            self.notify_all(Dir::Recv);
        }
        if self.roles.receives() && self.flags & flags::DISCONNECT_ON_NO_RECEIVERS != 0 {
            self.notify_all(Dir::Send);
        }
    }
}

fn map_send<M>(f: Fail, m: M) -> SendTimeoutError<M> {
    match f {
        Fail::Timeout | Fail::WouldBlock => SendTimeoutError::Timeout(m),
        Fail::Disconnected => SendTimeoutError::Disconnected(m),
        Fail::Destroyed => SendTimeoutError::Destroyed(m),
        Fail::Interrupted => SendTimeoutError::Interrupted(m),
        Fail::Alloc(e) => SendTimeoutError::Alloc(m, e),
    }
}

fn map_recv(f: Fail) -> RecvTimeoutError {
    match f {
        Fail::Timeout | Fail::WouldBlock => RecvTimeoutError::Timeout,
        Fail::Disconnected => RecvTimeoutError::Disconnected,
        Fail::Destroyed => RecvTimeoutError::Destroyed,
        Fail::Interrupted | Fail::Alloc(_) => RecvTimeoutError::Interrupted,
    }
}

impl Channel {
    /// Create a channel in `region` (zero-filled, at least
    /// [`ChannelOptions::region_len`] bytes) whose extensions come from
    /// `backing`, attached as the creator.
    pub fn create_in(
        region: Arc<dyn Region>,
        backing: Box<dyn Backing>,
        opts: &ChannelOptions,
    ) -> Result<Channel, ChannelError> {
        let layout = opts.layout()?;
        if region.len() < layout.total_len {
            return Err(ChannelError::InvalidOptions(format!(
                "region of {} bytes is smaller than the {} bytes the channel needs",
                region.len(),
                layout.total_len
            )));
        }
        let base = region.base().as_ptr();
        let channel_id = random_u64();
        let generation = random_u64() | 1;
        // SAFETY: the region is large enough (checked), page aligned, and
        // not yet visible to anyone else (its handle is not out yet).
        unsafe { init_header(base, &layout, channel_id, generation, opts) };
        let inner = Inner::open(region, backing, layout, opts.roles, channel_id, generation, opts.flags)?;
        Ok(Channel { inner: Arc::new(inner) })
    }

    /// Attach to an existing channel in `region`, named by `handle`.
    pub fn attach_in(
        region: Arc<dyn Region>,
        backing: Box<dyn Backing>,
        handle: &Handle,
        roles: Roles,
    ) -> Result<Channel, ChannelError> {
        if handle.kind != Kind::Channel {
            return Err(ChannelError::Handle(shm_primitives::handle::HandleError::WrongKind {
                expected: Kind::Channel,
                found: handle.kind,
            }));
        }
        if handle.offset != 0 {
            return Err(ChannelError::NotAChannel(format!("handle offset {} is not supported", handle.offset)));
        }
        let (layout, flags) = validate(&*region, handle)?;
        let inner = Inner::open(region, backing, layout, roles, handle.id, handle.generation, flags)?;
        Ok(Channel { inner: Arc::new(inner) })
    }

    /// A channel on this process's heap (for threads of one process, and
    /// tests). Other attachments come from [`Channel::attach_again`].
    pub fn heap(opts: &ChannelOptions) -> Result<Channel, ChannelError> {
        let len = opts.region_len()?;
        let name = format!("heap-{:016x}", random_u64());
        Channel::create_in(Arc::new(HeapRegion::new(len)), Box::new(HeapBacking::new(&name)), opts)
    }

    /// A second, independent attachment of this process to the same
    /// channel (its own id, roles and counts).
    pub fn attach_again(&self, roles: Roles) -> Result<Channel, ChannelError> {
        let i = &self.inner;
        Channel::attach_in(Arc::clone(&i.region), i.alloc.backing().clone_backing(), &self.handle(), roles)
    }

    /// The handle other processes attach by.
    pub fn handle(&self) -> Handle {
        Handle {
            kind: Kind::Channel,
            id: self.inner.channel_id,
            generation: self.inner.generation,
            offset: 0,
            node: 0,
            segment: self.inner.alloc.backing().name().to_owned(),
            address: String::new(),
        }
    }

    // ---- sending --------------------------------------------------------------

    fn send_core<'a, F: FnOnce(&mut [u8])>(
        &self,
        len: usize,
        mut src: Src<'a, F>,
        deadline: Option<Deadline>,
        hook: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<(), (Fail, Src<'a, F>)> {
        let i = &*self.inner;
        if len <= i.ring.inline_cap() {
            let r = match deadline {
                None => i.try_send_inline(len, &mut src),
                Some(d) => i.block_on(Dir::Send, d, hook, &mut || i.try_send_inline(len, &mut src)),
            };
            return r.map_err(|f| (f, src));
        }
        // Not sent (error or unwind): the guard gives the block back.
        let mut pending = PendingBlock { inner: i, block: None };
        let r = match deadline {
            None => i.try_send_block(len, &mut src, &mut pending.block),
            Some(d) => i.block_on(Dir::Send, d, hook, &mut || i.try_send_block(len, &mut src, &mut pending.block)),
        };
        drop(pending);
        r.map_err(|f| (f, src))
    }

    /// Send, waiting while the channel is full.
    pub fn send<M: AsRef<[u8]>>(&self, msg: M) -> Result<(), SendError<M>> {
        match self.send_deadline(msg, Deadline::NEVER, None) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(m)) => Err(SendError::Disconnected(m)),
            Err(SendTimeoutError::Alloc(m, e)) => Err(SendError::Alloc(m, e)),
            Err(e) => Err(SendError::Destroyed(e.into_inner())),
        }
    }

    /// Send if there is room now.
    pub fn try_send<M: AsRef<[u8]>>(&self, msg: M) -> Result<(), TrySendError<M>> {
        let parts = [msg.as_ref()];
        let r = self.send_core::<fn(&mut [u8])>(parts[0].len(), Src::Parts(&parts), None, None).map_err(|(f, _)| f);
        match r {
            Ok(()) => Ok(()),
            Err(Fail::WouldBlock) | Err(Fail::Timeout) | Err(Fail::Interrupted) => Err(TrySendError::Full(msg)),
            Err(Fail::Disconnected) => Err(TrySendError::Disconnected(msg)),
            Err(Fail::Destroyed) => Err(TrySendError::Destroyed(msg)),
            Err(Fail::Alloc(e)) => Err(TrySendError::Alloc(msg, e)),
        }
    }

    /// Send, waiting at most `timeout` while the channel is full.
    pub fn send_timeout<M: AsRef<[u8]>>(&self, msg: M, timeout: Duration) -> Result<(), SendTimeoutError<M>> {
        self.send_deadline(msg, Deadline::after(Some(timeout)), None)
    }

    /// Send, waiting at most `timeout` (`None`: forever); `interrupt` is
    /// called when a sleep is interrupted by a signal and at every sleep
    /// slice, and returning false stops the wait with `Interrupted`.
    pub fn send_interruptible<M: AsRef<[u8]>>(
        &self,
        msg: M,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<(), SendTimeoutError<M>> {
        self.send_deadline(msg, Deadline::after(timeout), Some(interrupt))
    }

    fn send_deadline<M: AsRef<[u8]>>(
        &self,
        msg: M,
        deadline: Deadline,
        hook: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<(), SendTimeoutError<M>> {
        let parts = [msg.as_ref()];
        let r = self.send_core::<fn(&mut [u8])>(parts[0].len(), Src::Parts(&parts), Some(deadline), hook);
        match r {
            Ok(()) => Ok(()),
            Err((f, _)) => Err(map_send(f, msg)),
        }
    }

    /// Send the concatenation of `parts` (e.g. a header and a payload)
    /// without concatenating them first. `timeout`: `Some(ZERO)` does not
    /// wait, `None` waits forever.
    pub fn send_parts(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), SendTimeoutError<()>> {
        self.send_parts_interruptible(parts, timeout, None)
    }

    /// [`Channel::send_parts`] with an interrupt hook (see
    /// [`Channel::send_interruptible`]).
    pub fn send_parts_interruptible(
        &self,
        parts: &[&[u8]],
        timeout: Option<Duration>,
        interrupt: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<(), SendTimeoutError<()>> {
        let len = parts.iter().map(|p| p.len()).sum();
        self.send_core::<fn(&mut [u8])>(len, Src::Parts(parts), Some(Deadline::after(timeout)), interrupt)
            .map_err(|(f, _)| map_send(f, ()))
    }

    /// Send a message of `len` bytes written in place by `write` (into the
    /// slot, or straight into a shared block), waiting while full.
    pub fn send_with<F: FnOnce(&mut [u8])>(&self, len: usize, write: F) -> Result<(), SendError<F>> {
        match self.send_with_timeout(len, None, write) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(f)) => Err(SendError::Disconnected(f)),
            Err(SendTimeoutError::Alloc(f, e)) => Err(SendError::Alloc(f, e)),
            Err(e) => Err(SendError::Destroyed(e.into_inner())),
        }
    }

    /// [`Channel::send_with`] waiting at most `timeout` (`None`: forever;
    /// `Some(ZERO)`: not at all). On error `write` was not called and is
    /// given back.
    pub fn send_with_timeout<F: FnOnce(&mut [u8])>(
        &self,
        len: usize,
        timeout: Option<Duration>,
        write: F,
    ) -> Result<(), SendTimeoutError<F>> {
        self.send_with_interruptible(len, timeout, None, write)
    }

    /// [`Channel::send_with_timeout`] with an optional interrupt hook (see
    /// [`Channel::send_interruptible`]). `write` runs only once the message
    /// has its place, just before it is published, so what it does (hand a
    /// block over to the message, say) happens if and only if the message
    /// is sent, but for a crash in between.
    pub fn send_with_interruptible<F: FnOnce(&mut [u8])>(
        &self,
        len: usize,
        timeout: Option<Duration>,
        interrupt: Option<&mut dyn FnMut() -> bool>,
        write: F,
    ) -> Result<(), SendTimeoutError<F>> {
        match self.send_core(len, Src::With(Some(write)), Some(Deadline::after(timeout)), interrupt) {
            Ok(()) => Ok(()),
            Err((f, Src::With(Some(w)))) => Err(map_send(f, w)),
            Err(_) => unreachable!("write is called only on success"),
        }
    }

    // ---- receiving ------------------------------------------------------------

    fn recv_core<T>(
        &self,
        deadline: Option<Deadline>,
        hook: Option<&mut dyn FnMut() -> bool>,
        f: impl FnOnce(Got<'_>) -> T,
    ) -> Result<T, Fail> {
        let i = &*self.inner;
        let mut f = Some(f);
        match deadline {
            None => i.try_recv_raw(&mut f, &self.inner),
            Some(d) => i.block_on(Dir::Recv, d, hook, &mut || i.try_recv_raw(&mut f, &self.inner)),
        }
    }

    fn to_message(g: Got<'_>) -> Message {
        match g {
            Got::Inline(d) => Message::copy_of(d),
            Got::Block(b) => Message(Repr::Block(b)),
        }
    }

    /// Receive, waiting while the channel is empty.
    pub fn recv(&self) -> Result<Message, RecvError> {
        self.recv_core(Some(Deadline::NEVER), None, Self::to_message).map_err(|f| match map_recv(f) {
            RecvTimeoutError::Destroyed => RecvError::Destroyed,
            _ => RecvError::Disconnected,
        })
    }

    /// Receive if a message is there now.
    pub fn try_recv(&self) -> Result<Message, TryRecvError> {
        self.recv_core(None, None, Self::to_message).map_err(|f| match f {
            Fail::Disconnected => TryRecvError::Disconnected,
            Fail::Destroyed => TryRecvError::Destroyed,
            _ => TryRecvError::Empty,
        })
    }

    /// Receive, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        self.recv_core(Some(Deadline::after(Some(timeout))), None, Self::to_message).map_err(map_recv)
    }

    /// Receive, waiting at most `timeout` (`None`: forever); `interrupt` is
    /// called when a sleep is interrupted by a signal and at every sleep
    /// slice, and returning false stops the wait with `Interrupted`.
    pub fn recv_interruptible(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Message, RecvTimeoutError> {
        self.recv_core(Some(Deadline::after(timeout)), Some(interrupt), Self::to_message).map_err(map_recv)
    }

    /// Receive and read the message in place (no copy, no allocation),
    /// waiting at most `timeout` (`None`: forever; `Some(ZERO)`: not at all).
    pub fn recv_with<T>(
        &self,
        timeout: Option<Duration>,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, RecvTimeoutError> {
        self.recv_with_interruptible(timeout, None, read)
    }

    /// [`Channel::recv_with`] with an optional interrupt hook.
    pub fn recv_with_interruptible<T>(
        &self,
        timeout: Option<Duration>,
        interrupt: Option<&mut dyn FnMut() -> bool>,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, RecvTimeoutError> {
        self.recv_core(Some(Deadline::after(timeout)), interrupt, |g| match g {
            Got::Inline(d) => read(d),
            Got::Block(b) => read(b.as_ref()),
        })
        .map_err(map_recv)
    }

    // ---- state ------------------------------------------------------------------

    /// Messages in the channel (a snapshot).
    pub fn len(&self) -> usize {
        self.inner.ring.len() as usize
    }
    /// Whether the channel holds no message (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether every slot is taken (a snapshot).
    pub fn is_full(&self) -> bool {
        self.len() as u64 >= self.inner.layout.capacity
    }
    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.inner.layout.capacity as usize
    }
    /// Largest message that travels inline in a slot.
    pub fn max_inline(&self) -> usize {
        self.inner.ring.inline_cap()
    }
    /// Largest message the channel accepts.
    pub fn max_message(&self) -> u64 {
        crate::alloc::MAX_MESSAGE
    }

    /// Close the channel: sends fail from now on; receivers drain what is
    /// there, then see `Disconnected`. Every attached process observes it.
    /// Returns false if it was already closed.
    pub fn close(&self) -> bool {
        let first = self.inner.ring.close();
        // SYNC POINT channel-state: after the tail mark, so a receiver that
        // sees the flag and then reads tail finds the mark.
        self.inner.hdr().config.state.fetch_or(STATE_CLOSED, Ordering::AcqRel);
        self.inner.notify_all(Dir::Recv);
        self.inner.notify_all(Dir::Send);
        first
    }

    /// Whether the channel was closed (or destroyed).
    pub fn is_closed(&self) -> bool {
        self.inner.ring.is_closed()
    }

    /// Destroy the channel: remove its names (main and extension segments)
    /// so nobody can attach any more, and make every operation of every
    /// attached process fail with `Destroyed`. Memory is freed when the last
    /// process unmaps it.
    pub fn destroy(&self) {
        let i = &*self.inner;
        i.ring.close();
        // SYNC POINT channel-state: after the tail mark (closed-mark).
        i.hdr().config.state.fetch_or(STATE_DESTROYED | STATE_CLOSED, Ordering::AcqRel);
        i.notify_all(Dir::Recv);
        i.notify_all(Dir::Send);
        i.alloc.remove_all();
        i.alloc.backing().remove_main();
    }

    /// Whether the channel was destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.inner.destroyed()
    }

    /// Attachments with the send role (live as far as known).
    pub fn sender_count(&self) -> u32 {
        self.inner.counts().0
    }
    /// Attachments with the receive role (live as far as known).
    pub fn receiver_count(&self) -> u32 {
        self.inner.counts().1
    }
    /// Attachments in the table (any state).
    pub fn attachment_count(&self) -> u32 {
        self.inner.table.in_use()
    }
    /// This attachment's id (1..=1023).
    pub fn attachment_id(&self) -> u32 {
        self.inner.att()
    }

    /// How long blocking calls of this process spin before sleeping.
    pub fn set_spin(&self, spin: Duration) {
        // Relaxed: a process-local tuning knob.
        self.inner.spin_ns.store(spin.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }
    /// Current spin setting.
    pub fn spin(&self) -> Duration {
        self.inner.spin()
    }

    /// Look for dead attachments now and return what they held. Runs
    /// automatically while waiting; idempotent; safe from any process.
    pub fn recover(&self) -> Result<RecoveryReport, AllocError> {
        self.inner.recover()
    }

    /// Scan the allocator's blocks (tests, diagnostics).
    pub fn alloc_stats(&self) -> Result<AllocStats, AllocError> {
        self.inner.alloc.stats()
    }

    /// Whether a receive would not block now (a message, or an error to
    /// report).
    pub fn is_readable(&self) -> bool {
        self.inner.ready(Dir::Recv)
    }
    /// Whether a send would not block now.
    pub fn is_writable(&self) -> bool {
        self.inner.ready(Dir::Send)
    }
}

/// Check a mapped region against a handle before trusting anything in it.
fn validate(region: &dyn Region, handle: &Handle) -> Result<(MainLayout, u32), ChannelError> {
    let seg = &handle.segment;
    if region.len() < size_of::<ChannelHeader>() {
        return Err(ChannelError::NotAChannel(format!("{seg} is only {} bytes", region.len())));
    }
    // SAFETY: the region holds at least a header's bytes; every field is an
    // atomic, valid for any bit pattern.
    let cfg = unsafe { &(*region.base().as_ptr().cast::<ChannelHeader>()).config };
    // SYNC POINT channel-header: everything the creator initialised; the
    // header fields below are Relaxed, ordered by this load.
    if cfg.magic.load(Ordering::Acquire) != MAGIC {
        return Err(ChannelError::NotAChannel(format!("{seg} has no channel header (wrong magic)")));
    }
    let version = cfg.layout_version.load(Ordering::Relaxed);
    if version != LAYOUT_VERSION {
        return Err(ChannelError::LayoutVersion { found: version, expected: LAYOUT_VERSION });
    }
    if cfg.channel_id.load(Ordering::Relaxed) != handle.id
        || cfg.generation.load(Ordering::Relaxed) != handle.generation
    {
        return Err(ChannelError::Stale { segment: seg.clone() });
    }
    // SYNC POINT channel-state.
    if cfg.state.load(Ordering::Acquire) & STATE_DESTROYED != 0 {
        return Err(ChannelError::Destroyed);
    }
    let layout = MainLayout::new(
        cfg.capacity.load(Ordering::Relaxed),
        cfg.slot_size.load(Ordering::Relaxed) as usize,
        cfg.max_attach.load(Ordering::Relaxed),
    )
    .map_err(|e| ChannelError::NotAChannel(format!("{seg} has a damaged header: {e}")))?;
    if layout.total_len as u64 != cfg.total_len.load(Ordering::Relaxed) || layout.total_len > region.len() {
        return Err(ChannelError::NotAChannel(format!(
            "{seg} has a damaged header: layout needs {} bytes, header says {}, region has {}",
            layout.total_len,
            cfg.total_len.load(Ordering::Relaxed),
            region.len()
        )));
    }
    Ok((layout, cfg.flags.load(Ordering::Relaxed)))
}

/// Write a fresh header, table and ring.
///
/// # Safety
///
/// `base` must point at `layout.total_len` writable bytes, aligned to a
/// page, that nobody else uses yet.
unsafe fn init_header(base: *mut u8, layout: &MainLayout, id: u64, generation: u64, opts: &ChannelOptions) {
    use crate::layout::{AttachCtl, CachePadded, ClassCtl, Config, NUM_CLASSES};
    use shm_primitives::sync::AtomicU32;
    let hdr = base.cast::<ChannelHeader>();
    // Each field is written in place: a ChannelHeader is too big to build
    // on the stack comfortably, and under loom atomics must be constructed.
    // SAFETY: every pointer below is in bounds of the header, which fits in
    // the region (the caller's contract), and suitably aligned (repr(C)
    // fields of a page-aligned struct).
    unsafe {
        std::ptr::addr_of_mut!((*hdr).config).write(CachePadded(Config {
            magic: AtomicU64::new(0),
            layout_version: AtomicU32::new(LAYOUT_VERSION),
            flags: AtomicU32::new(opts.flags),
            channel_id: AtomicU64::new(id),
            generation: AtomicU64::new(generation),
            capacity: AtomicU64::new(layout.capacity),
            slot_size: AtomicU64::new(layout.slot_size as u64),
            max_attach: AtomicU32::new(layout.max_attach),
            state: AtomicU32::new(STATE_OPEN),
            total_len: AtomicU64::new(layout.total_len as u64),
            max_block_bytes: AtomicU64::new(opts.max_block_bytes),
        }));
        std::ptr::addr_of_mut!((*hdr).attach).write(CachePadded(AttachCtl {
            version: AtomicU64::new(0),
            latch: AtomicU32::new(0),
            high_water: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
        }));
        std::ptr::addr_of_mut!((*hdr).head).write(CachePadded(AtomicU64::new(0)));
        std::ptr::addr_of_mut!((*hdr).tail).write(CachePadded(AtomicU64::new(0)));
        for w in [std::ptr::addr_of_mut!((*hdr).not_empty), std::ptr::addr_of_mut!((*hdr).not_full)] {
            w.write(CachePadded(WaitWord { seq: AtomicU32::new(0), waiters: AtomicU32::new(0) }));
        }
        let classes = std::ptr::addr_of_mut!((*hdr).classes).cast::<ClassCtl>();
        for c in 0..NUM_CLASSES {
            let cls = classes.add(c);
            std::ptr::addr_of_mut!((*cls).head).write(CachePadded(AtomicU64::new(0)));
            let segs = std::ptr::addr_of_mut!((*cls).segs).cast::<AtomicU64>();
            for s in 0..crate::layout::MAX_SEGS_PER_CLASS {
                segs.add(s).write(AtomicU64::new(0));
            }
        }
        Table::init_rows(base.add(layout.rows_off).cast::<AttachRow>(), layout.max_attach);
        Ring::init_slots(base.add(layout.slots_off), layout.slot_size, layout.capacity);
        // SYNC POINT channel-header: everything above is initialised.
        let config: &Config = &(*hdr).config;
        config.magic.store(MAGIC, Ordering::Release);
    }
}

impl Inner {
    fn open(
        region: Arc<dyn Region>,
        backing: Box<dyn Backing>,
        layout: MainLayout,
        roles: Roles,
        channel_id: u64,
        generation: u64,
        flags: u32,
    ) -> Result<Inner, ChannelError> {
        let base = region.base();
        let hdr = base.cast::<ChannelHeader>();
        // SAFETY: validated (or just written) header, mapped while `region`
        // lives, which `Inner` keeps.
        let h = unsafe { hdr.as_ref() };
        // Relaxed: ordered by the magic's Acquire load in `validate`, or
        // written by this thread (channel-header).
        let max_block_bytes = h.config.max_block_bytes.load(Ordering::Relaxed);
        // SAFETY: offsets come from the validated layout, inside the region.
        let (ring, table, alloc) = unsafe {
            let ring = Ring::new(
                NonNull::from(&*h.head),
                NonNull::from(&*h.tail),
                NonNull::new_unchecked(base.as_ptr().add(layout.slots_off)),
                layout.slot_size,
                layout.capacity,
            );
            let table = Table::new(
                NonNull::from(&*h.attach),
                NonNull::new_unchecked(base.as_ptr().add(layout.rows_off).cast()),
                layout.max_attach,
            );
            let alloc =
                Allocator::new(NonNull::from(&h.classes).cast(), backing, channel_id, generation, max_block_bytes);
            (ring, table, alloc)
        };
        let fork_epoch = fork::register();
        let me = ProcessId::current();
        let att = match table.claim(me, roles) {
            Some(a) => a,
            None => {
                // Rows of dead processes are freed by the sweeps that live
                // attachments run while they wait; mark them so those run.
                table.find_dead();
                return Err(ChannelError::TooManyAttachments { max: layout.max_attach });
            }
        };
        let inner = Inner {
            region,
            hdr,
            layout,
            ring,
            table,
            alloc,
            att: AtomicU32::new(att),
            epoch: AtomicU64::new(fork_epoch),
            fork_lock: std::sync::Mutex::new(()),
            roles,
            channel_id,
            generation,
            flags,
            spin_ns: AtomicU64::new(DEFAULT_SPIN.as_nanos() as u64),
            counts_cache: AtomicU64::new(0),
        };
        // A new attachment is a good moment to return what dead ones held.
        inner.maintain(false);
        Ok(inner)
    }
}

/// Wait until any of `channels` can be received from without blocking (a
/// message, or an error to report) and return its index. `timeout`: `None`
/// waits forever.
pub fn select_recv(channels: &[&Channel], timeout: Option<Duration>) -> Result<usize, SelectError> {
    select(&with_dir(channels, Dir::Recv), timeout, None)
}

/// Like [`select_recv`], for sending.
pub fn select_send(channels: &[&Channel], timeout: Option<Duration>) -> Result<usize, SelectError> {
    select(&with_dir(channels, Dir::Send), timeout, None)
}

/// Wait until any `(channel, direction)` of `items` is ready (the same
/// channel may appear with both directions) and return its index.
/// `timeout`: `None` waits forever.
pub fn select_any(items: &[(&Channel, Dir)], timeout: Option<Duration>) -> Result<usize, SelectError> {
    select(items, timeout, None)
}

fn with_dir<'a>(channels: &[&'a Channel], dir: Dir) -> Vec<(&'a Channel, Dir)> {
    channels.iter().map(|&c| (c, dir)).collect()
}

/// [`select_recv`] with an interrupt hook (see [`Channel::recv_interruptible`]).
pub fn select_recv_interruptible(
    channels: &[&Channel],
    timeout: Option<Duration>,
    interrupt: &mut dyn FnMut() -> bool,
) -> Result<usize, SelectError> {
    select(&with_dir(channels, Dir::Recv), timeout, Some(interrupt))
}

fn select(
    items: &[(&Channel, Dir)],
    timeout: Option<Duration>,
    mut hook: Option<&mut dyn FnMut() -> bool>,
) -> Result<usize, SelectError> {
    if items.is_empty() && timeout.is_none() {
        return Err(SelectError::NoChannels);
    }
    let deadline = Deadline::after(timeout);
    let ready = || items.iter().position(|(c, dir)| c.inner.ready(*dir));
    if let Some(i) = ready() {
        return Ok(i);
    }
    let spin = items.iter().map(|(c, _)| c.inner.spin()).max().unwrap_or_default();
    if !spin.is_zero() {
        let until = Instant::now() + deadline.remaining().map_or(spin, |r| r.min(spin));
        while Instant::now() < until {
            for _ in 0..32 {
                spin_loop();
            }
            if let Some(i) = ready() {
                return Ok(i);
            }
        }
    }
    let mut seqs = vec![0u32; items.len()];
    loop {
        if deadline.expired() {
            return ready().ok_or(SelectError::Timeout);
        }
        for (s, (c, dir)) in seqs.iter_mut().zip(items) {
            *s = wake::announce(c.inner.word(*dir), SELECT_WAITER_ONE);
        }
        let unannounce = || {
            for (c, dir) in items {
                wake::retract(c.inner.word(*dir), SELECT_WAITER_ONE);
            }
        };
        if let Some(i) = ready() {
            unannounce();
            return Ok(i);
        }
        let words: Vec<_> = items.iter().zip(&seqs).map(|((c, dir), &s)| (&c.inner.word(*dir).seq, s)).collect();
        let (how, _) = futex::wait_any(&words, Some(deadline.slice(SLEEP_SLICE)));
        unannounce();
        match how {
            Wake::TimedOut | Wake::Interrupted => {
                if how == Wake::TimedOut {
                    for (c, _) in items {
                        c.inner.maintain(false);
                    }
                }
                if let Some(h) = hook.as_mut() {
                    if !h() {
                        return Err(SelectError::Interrupted);
                    }
                }
            }
            Wake::Woken | Wake::Changed => {}
        }
        if let Some(i) = ready() {
            return Ok(i);
        }
    }
}

#[cfg(all(test, not(dragon_loom)))]
#[path = "channel_tests.rs"]
mod tests;
