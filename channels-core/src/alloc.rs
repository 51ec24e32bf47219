//! The block allocator for messages that do not fit a slot.
//!
//! Blocks come in power-of-two size classes (1 KiB .. 16 GiB). Each class
//! has up to [`MAX_SEGS_PER_CLASS`] extension segments, created on demand
//! (the first holds about 64 KiB of blocks, each next one twice as much, up
//! to about 64 MiB), and one lock-free free list.
//!
//! # Crash safety
//!
//! A process may die at any instruction, so a block's ownership must move in
//! single atomic steps. Every block has a versioned state word:
//!
//! ```text
//!   state = version (32) << 32 | kind (2) << 30 | value (30)
//!   kind FREE              on the free list
//!   kind OWNED, value a    held by attachment a (allocated, or a receiver's message)
//!   kind IN_RING, value s  referenced by ring slot s (published or being published)
//! ```
//!
//! A plain Treiber stack cannot keep that invariant: between the CAS that
//! unlinks a block and the store that marks it owned, the block is neither
//! free nor owned, and a process killed there leaks it. So each operation on
//! the list first *announces* itself in the head word, together with the
//! block and the attachment, in one CAS; anyone who finds an announcement
//! finishes it before doing anything else (helping), and the announcement
//! names the owner, so the result is the same whoever finishes it:
//!
//! ```text
//!   head = tag (24) << 40 | op (2) << 38 | attachment (10) << 28 | block id + 1 (28)
//!   pop  by a: (t, NONE, h) -> (t+1, POP a, h);  state(h) FREE -> OWNED(a);  head -> (t+2, NONE, next(h))
//!   push by a: next(b) = h;  (t, NONE, h) -> (t+1, PUSH a, b);  state(b) OWNED(a) -> FREE;  head -> (t+2, NONE, b)
//! ```
//!
//! A helper reads the block's state only after seeing the announcement and
//! checks that the head still holds it afterwards, and every state change is
//! a CAS from an exact versioned value, so a stale helper can never act on a
//! later incarnation of the block. The tag makes the head CAS immune to ABA.
//! Killed at any point, the block is either reachable from the head (with an
//! announcement anyone will finish) or owned by the dead attachment, and the
//! sweep of that attachment returns it to the list.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `list-head`: every change of a free list's head is an AcqRel
//!   compare-and-swap and every read of it an Acquire load: an announcement
//!   carries the block's `next` (written before a push is announced) and
//!   whatever the announcer did to the block; a finished operation carries
//!   the state change the helpers made.
//! - `block-state`: every change of a block's state word (taken off the
//!   list, freed, put in a ring slot, taken out of one, adopted) is a
//!   compare-and-swap from the exact value an Acquire load read, with
//!   Release: the block's contents as its previous holder left them pass
//!   to the next holder.
//! - `ext-ready`: the creator of an extension segment writes its header and
//!   block metadata, stores the header's magic (Release) and marks the
//!   segment `READY` (Release); whoever loads `READY` or the magic
//!   (Acquire) sees them initialised.
//! - `ext-claim`: the AcqRel compare-and-swap that claims a segment for
//!   creation, and the Release that hands a failed or dead creator's claim
//!   back (`ORPHAN`), pair with the Acquire loads of the segment word.
//!
//! A compare-and-swap whose failed value only decides a retry fails
//! Relaxed.

use crate::backing::{Backing, BackingError};
use crate::layout::{
    blocks_in_segment, BlockMeta, ClassCtl, ExtHeader, ExtLayout, EXT_MAGIC, MAX_CLASS_SHIFT, MAX_SEGS_PER_CLASS,
    MIN_CLASS_SHIFT, NUM_CLASSES,
};
use shm_primitives::region::Region;
use shm_primitives::sync::{AtomicU64, Ordering};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Mutex, RwLock};

// ---- encodings ------------------------------------------------------------

const ID_BITS: u32 = 28;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const HEAD_ATT_SHIFT: u32 = 28;
const HEAD_OP_SHIFT: u32 = 38;
const HEAD_TAG_SHIFT: u32 = 40;
const ATT_MASK: u64 = 0x3FF;
const TAG_MASK: u64 = (1 << 24) - 1;

pub(crate) const OP_NONE: u64 = 0;
pub(crate) const OP_POP: u64 = 1;
pub(crate) const OP_PUSH: u64 = 2;

/// Bits of a block id that index within a segment.
pub(crate) const LOCAL_BITS: u32 = 22;

#[inline]
pub(crate) fn head_word(tag: u64, op: u64, att: u32, id1: u64) -> u64 {
    ((tag & TAG_MASK) << HEAD_TAG_SHIFT) | (op << HEAD_OP_SHIFT) | ((u64::from(att) & ATT_MASK) << HEAD_ATT_SHIFT) | id1
}
#[inline]
fn head_tag(h: u64) -> u64 {
    h >> HEAD_TAG_SHIFT
}
#[inline]
fn head_op(h: u64) -> u64 {
    (h >> HEAD_OP_SHIFT) & 3
}
#[inline]
fn head_att(h: u64) -> u32 {
    ((h >> HEAD_ATT_SHIFT) & ATT_MASK) as u32
}
#[inline]
fn head_id1(h: u64) -> u64 {
    h & ID_MASK
}

pub(crate) const KIND_FREE: u64 = 0;
pub(crate) const KIND_OWNED: u64 = 1;
pub(crate) const KIND_IN_RING: u64 = 2;

#[inline]
pub(crate) fn block_state(version: u64, kind: u64, value: u64) -> u64 {
    ((version & 0xFFFF_FFFF) << 32) | (kind << 30) | (value & 0x3FFF_FFFF)
}
#[inline]
pub(crate) fn state_version(s: u64) -> u64 {
    s >> 32
}
#[inline]
pub(crate) fn state_kind(s: u64) -> u64 {
    (s >> 30) & 3
}
#[inline]
pub(crate) fn state_value(s: u64) -> u64 {
    s & 0x3FFF_FFFF
}
#[inline]
fn owned_by(s: u64, att: u32) -> bool {
    state_kind(s) == KIND_OWNED && state_value(s) == u64::from(att)
}

/// Segment table word: `attachment << 2 | state`.
const SEG_ABSENT: u64 = 0;
const SEG_CREATING: u64 = 1;
const SEG_READY: u64 = 2;
const SEG_ORPHAN: u64 = 3;

fn seg_word(state: u64, att: u32) -> u64 {
    (u64::from(att) << 2) | state
}
fn seg_state(w: u64) -> u64 {
    w & 3
}
fn seg_att(w: u64) -> u32 {
    ((w >> 2) & ATT_MASK) as u32
}

/// A block reference as stored in a slot's `aux` word: class index and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRef {
    pub class: usize,
    pub id: u32,
}

impl BlockRef {
    pub(crate) fn encode(self) -> u64 {
        ((self.class as u64) << 32) | u64::from(self.id)
    }
    pub(crate) fn decode(w: u64) -> Option<BlockRef> {
        let class = (w >> 32) as usize;
        let id = (w & 0xFFFF_FFFF) as u32;
        (class < NUM_CLASSES && u64::from(id) < ID_MASK).then_some(BlockRef { class, id })
    }
    fn seg(self) -> u32 {
        self.id >> LOCAL_BITS
    }
    fn local(self) -> u64 {
        u64::from(self.id & ((1 << LOCAL_BITS) - 1))
    }
}

/// The size class index for a message of `len` bytes, if any is large enough.
pub(crate) fn class_for(len: usize) -> Option<usize> {
    let shift = (len.max(1).next_power_of_two().trailing_zeros()).max(MIN_CLASS_SHIFT);
    (shift <= MAX_CLASS_SHIFT).then(|| (shift - MIN_CLASS_SHIFT) as usize)
}

/// Block size of class `class`.
pub(crate) fn class_size(class: usize) -> u64 {
    1u64 << (class as u32 + MIN_CLASS_SHIFT)
}

/// Largest message the allocator can hold.
pub const MAX_MESSAGE: u64 = 1 << MAX_CLASS_SHIFT;

// ---- the free list ----------------------------------------------------------

/// Resolves block ids of one class to their metadata.
pub(crate) trait Metas {
    /// The metadata of block `id`, mapping its segment if needed.
    fn meta(&self, id: u32) -> Result<&BlockMeta, AllocError>;
}

/// One class's free list (see the module docs for the protocol).
#[derive(Debug)]
pub(crate) struct FreeList<'a> {
    head: &'a AtomicU64,
}

impl<'a> FreeList<'a> {
    pub(crate) fn new(head: &'a AtomicU64) -> FreeList<'a> {
        FreeList { head }
    }

    /// Finish the announced operation in head word `h`, if any.
    pub(crate) fn help(&self, h: u64, metas: &dyn Metas) -> Result<(), AllocError> {
        let op = head_op(h);
        if op == OP_NONE {
            return Ok(());
        }
        let id = (head_id1(h) - 1) as u32;
        let att = head_att(h);
        let m = metas.meta(id)?;
        // SYNC POINT block-state: the state the announcer (or an earlier
        // helper) left; read after the announcement (list-head), so current.
        let s = m.state.load(Ordering::Acquire);
        // The state must be read while the announcement is in place: if the
        // head moved on, the operation is finished and `s` may be newer.
        // SYNC POINT list-head: the announcement still in place.
        if self.head.load(Ordering::Acquire) != h {
            return Ok(());
        }
        match op {
            OP_POP if state_kind(s) == KIND_FREE => {
                // SYNC POINT block-state: claims the block for `att`; a stale
                // helper fails on the version.
                let _ = m.state.compare_exchange(
                    s,
                    block_state(state_version(s) + 1, KIND_OWNED, u64::from(att)),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            OP_PUSH if owned_by(s, att) => {
                // SYNC POINT block-state: the block becomes free; its last
                // owner's writes pass to the next popper.
                let _ = m.state.compare_exchange(
                    s,
                    block_state(state_version(s) + 1, KIND_FREE, 0),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
        let new_head = if op == OP_POP {
            // `next` cannot change while the announcement is in place (only a
            // push of this block writes it, and that needs the head to move).
            // Relaxed: ordered by the Acquire head loads above (list-head).
            m.next.load(Ordering::Relaxed)
        } else {
            u64::from(id) + 1
        };
        // SYNC POINT list-head: the finished operation (the state change
        // above) and the new head's `next`.
        let _ = self.head.compare_exchange(
            h,
            head_word(head_tag(h) + 1, OP_NONE, 0, new_head),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Take a free block for attachment `att`. `None` if the list is empty.
    pub(crate) fn pop(&self, att: u32, metas: &dyn Metas) -> Result<Option<u32>, AllocError> {
        loop {
            // SYNC POINT list-head: the block metadata of whatever the head
            // names.
            let h = self.head.load(Ordering::Acquire);
            if head_op(h) != OP_NONE {
                self.help(h, metas)?;
                continue;
            }
            let id1 = head_id1(h);
            if id1 == 0 {
                return Ok(None);
            }
            let announced = head_word(head_tag(h) + 1, OP_POP, att, id1);
            // SYNC POINT list-head: announces the pop to the helpers.
            if self.head.compare_exchange(h, announced, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            shm_primitives::fault::point("alloc.pop_announced");
            self.help(announced, metas)?;
            let id = (id1 - 1) as u32;
            // SYNC POINT block-state: as set by us or a helper, with the
            // block's last owner's writes.
            let s = metas.meta(id)?.state.load(Ordering::Acquire);
            if owned_by(s, att) {
                return Ok(Some(id));
            }
            // A block on the list that was not free: the list was damaged.
            // Leave the block alone rather than share it.
        }
    }

    /// Return block `id`, owned by attachment `att`, to the list.
    pub(crate) fn push(&self, att: u32, id: u32, metas: &dyn Metas) -> Result<(), AllocError> {
        let m = metas.meta(id)?;
        loop {
            // SYNC POINT list-head.
            let h = self.head.load(Ordering::Acquire);
            if head_op(h) != OP_NONE {
                self.help(h, metas)?;
                continue;
            }
            // Relaxed: published by the head compare-and-swap below
            // (list-head).
            m.next.store(head_id1(h), Ordering::Relaxed);
            let announced = head_word(head_tag(h) + 1, OP_PUSH, att, u64::from(id) + 1);
            // SYNC POINT list-head: announces the push, with `next`.
            if self.head.compare_exchange(h, announced, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                shm_primitives::fault::point("alloc.push_announced");
                return self.help(announced, metas);
            }
        }
    }

    /// Finish any announced operation (recovery).
    pub(crate) fn settle(&self, metas: &dyn Metas) -> Result<(), AllocError> {
        loop {
            // SYNC POINT list-head.
            let h = self.head.load(Ordering::Acquire);
            if head_op(h) == OP_NONE {
                return Ok(());
            }
            self.help(h, metas)?;
        }
    }

    /// Walk the list (tests and integrity checks), at most `limit` steps.
    pub(crate) fn walk(&self, metas: &dyn Metas, limit: u64, f: &mut dyn FnMut(u32)) -> Result<u64, AllocError> {
        self.settle(metas)?;
        // SYNC POINT list-head: the `next` links of the pushes before.
        let mut id1 = head_id1(self.head.load(Ordering::Acquire));
        let mut n = 0;
        while id1 != 0 && n < limit {
            let id = (id1 - 1) as u32;
            f(id);
            n += 1;
            // Relaxed: published with the head (list-head); under concurrent
            // use a walk is a snapshot, bounded by `limit`.
            id1 = metas.meta(id)?.next.load(Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Move block `m` from `IN_RING(slot)` to `OWNED(att)`. False if it was not
/// in that slot.
pub(crate) fn take_from_ring(m: &BlockMeta, slot: u64, att: u32) -> bool {
    // SYNC POINT block-state: the sender's message in the block.
    let s = m.state.load(Ordering::Acquire);
    if state_kind(s) != KIND_IN_RING || state_value(s) != slot {
        return false;
    }
    // SYNC POINT block-state: the block is ours now.
    m.state
        .compare_exchange(
            s,
            block_state(state_version(s) + 1, KIND_OWNED, u64::from(att)),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Move block `m`, owned by `att`, to `IN_RING(slot)`.
pub(crate) fn put_in_ring(m: &BlockMeta, slot: u64, att: u32) -> bool {
    // SYNC POINT block-state.
    let s = m.state.load(Ordering::Acquire);
    if !owned_by(s, att) {
        return false;
    }
    // SYNC POINT block-state: the block's contents are complete before it
    // is in the ring.
    m.state
        .compare_exchange(
            s,
            block_state(state_version(s) + 1, KIND_IN_RING, slot),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Move block `m` from `OWNED(dead)` to `OWNED(me)` (recovery).
pub(crate) fn adopt(m: &BlockMeta, dead: u32, me: u32) -> bool {
    // SYNC POINT block-state.
    let s = m.state.load(Ordering::Acquire);
    if !owned_by(s, dead) {
        return false;
    }
    // SYNC POINT block-state: the dead owner's block is ours now.
    m.state
        .compare_exchange(
            s,
            block_state(state_version(s) + 1, KIND_OWNED, u64::from(me)),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

// ---- errors -----------------------------------------------------------------

/// Why a block could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// The message is larger than the largest block.
    TooLarge { len: u64, max: u64 },
    /// The channel's memory limit would be exceeded.
    LimitReached { limit: u64 },
    /// Every extension segment of the class is in use.
    OutOfSegments { block_size: u64 },
    /// The backing could not provide memory.
    Backing(BackingError),
    /// Allocator metadata in shared memory is inconsistent.
    Corrupt(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes is larger than the largest channel message ({max} bytes)")
            }
            AllocError::LimitReached { limit } => {
                write!(f, "channel memory limit of {limit} bytes reached (receive or drop held messages)")
            }
            AllocError::OutOfSegments { block_size } => write!(
                f,
                "all {MAX_SEGS_PER_CLASS} memory segments for {block_size}-byte blocks are full (held messages are not being dropped?)"
            ),
            AllocError::Backing(e) => write!(f, "could not get memory for a large message: {e}"),
            AllocError::Corrupt(m) => write!(f, "channel allocator metadata is damaged: {m}"),
        }
    }
}

impl std::error::Error for AllocError {}

impl From<BackingError> for AllocError {
    fn from(e: BackingError) -> Self {
        AllocError::Backing(e)
    }
}

// ---- the allocator over extension segments ------------------------------------

/// A mapped extension segment.
#[derive(Debug, Clone, Copy)]
struct ExtMap {
    base: NonNull<u8>,
    layout: ExtLayout,
}

/// Counts from a scan of every block (tests and diagnostics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Extension segments that exist.
    pub segments: u64,
    /// Blocks in them.
    pub blocks: u64,
    /// Blocks marked free.
    pub free: u64,
    /// Blocks reachable from the free lists (equals `free` when consistent).
    pub listed: u64,
    /// Blocks held by attachments (allocated, or received and not dropped).
    pub owned: u64,
    /// Blocks referenced by ring slots.
    pub in_ring: u64,
    /// Bytes of extension memory.
    pub bytes: u64,
}

/// The allocator of one channel, as seen by one attachment.
pub(crate) struct Allocator {
    classes: NonNull<ClassCtl>,
    backing: Box<dyn Backing>,
    channel_id: u64,
    generation: u64,
    max_bytes: u64,
    /// Mapped extensions, indexed `class * MAX_SEGS_PER_CLASS + seg`; entries
    /// are never removed, so pointers derived from them live as long as the
    /// allocator.
    maps: RwLock<Vec<Option<ExtMap>>>,
    regions: Mutex<Vec<Box<dyn Region>>>,
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator").field("backing", &self.backing).finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers point into shared memory kept mapped by `regions`
// (extensions) and by the owning channel (classes); all shared words are
// atomics.
unsafe impl Send for Allocator {}
// SAFETY: as above; the local caches are behind locks.
unsafe impl Sync for Allocator {}

/// Segment index used with the backing for class `class`, segment `seg`.
pub(crate) fn ext_index(class: usize, seg: u32) -> u32 {
    (class * MAX_SEGS_PER_CLASS) as u32 + seg
}

struct ClassMetas<'a> {
    alloc: &'a Allocator,
    class: usize,
}

impl Metas for ClassMetas<'_> {
    fn meta(&self, id: u32) -> Result<&BlockMeta, AllocError> {
        let r = BlockRef { class: self.class, id };
        let (ext, local) = self.alloc.locate(r)?;
        // SAFETY: `locate` checked local < nblocks; the metadata array is
        // inside the mapping, which lives as long as the allocator.
        Ok(unsafe { &*ext.base.as_ptr().add(ext.layout.meta_off).cast::<BlockMeta>().add(local as usize) })
    }
}

impl Allocator {
    /// # Safety
    ///
    /// `classes` must point at `NUM_CLASSES` initialised `ClassCtl`s that
    /// stay mapped for the life of the allocator.
    pub(crate) unsafe fn new(
        classes: NonNull<ClassCtl>,
        backing: Box<dyn Backing>,
        channel_id: u64,
        generation: u64,
        max_bytes: u64,
    ) -> Allocator {
        Allocator {
            classes,
            backing,
            channel_id,
            generation,
            max_bytes,
            maps: RwLock::new(Vec::new()),
            regions: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn backing(&self) -> &dyn Backing {
        &*self.backing
    }

    fn class(&self, class: usize) -> &ClassCtl {
        assert!(class < NUM_CLASSES);
        // SAFETY: in bounds; initialised and mapped (constructor contract).
        unsafe { &*self.classes.as_ptr().add(class) }
    }

    fn free_list(&self, class: usize) -> FreeList<'_> {
        FreeList::new(&self.class(class).head)
    }

    fn metas(&self, class: usize) -> ClassMetas<'_> {
        ClassMetas { alloc: self, class }
    }

    /// The mapping of segment `seg` of `class`, mapping it if it is ready.
    fn ext(&self, class: usize, seg: u32) -> Result<ExtMap, AllocError> {
        let slot = class * MAX_SEGS_PER_CLASS + seg as usize;
        if let Some(Some(m)) = self.maps.read().unwrap_or_else(|e| e.into_inner()).get(slot) {
            return Ok(*m);
        }
        if seg as usize >= MAX_SEGS_PER_CLASS {
            return Err(AllocError::Corrupt(format!("segment {seg} out of range")));
        }
        // SYNC POINT ext-ready: the extension's header and metadata are
        // initialised.
        let w = self.class(class).segs[seg as usize].load(Ordering::Acquire);
        if seg_state(w) != SEG_READY {
            return Err(AllocError::Corrupt(format!("block in segment {seg} of class {class}, which is not ready")));
        }
        let layout = ExtLayout::new(class as u32 + MIN_CLASS_SHIFT, seg);
        let region = self.backing.extension(ext_index(class, seg), layout.total_len, false)?;
        self.install(class, seg, layout, region)
    }

    fn install(
        &self,
        class: usize,
        seg: u32,
        layout: ExtLayout,
        region: Box<dyn Region>,
    ) -> Result<ExtMap, AllocError> {
        if region.len() < layout.total_len {
            return Err(AllocError::Corrupt(format!(
                "extension segment {seg} of class {class} is {} bytes, expected {}",
                region.len(),
                layout.total_len
            )));
        }
        let base = region.base();
        // SAFETY: the region is at least total_len bytes and page aligned.
        let hdr = unsafe { &*base.as_ptr().cast::<ExtHeader>() };
        // SYNC POINT ext-ready: the header fields and metadata written
        // before the magic; the fields below are Relaxed, ordered by it.
        let ok = hdr.magic.load(Ordering::Acquire) == EXT_MAGIC
            && hdr.channel_id.load(Ordering::Relaxed) == self.channel_id
            && hdr.generation.load(Ordering::Relaxed) == self.generation
            && hdr.class_shift.load(Ordering::Relaxed) == layout.shift
            && hdr.seg.load(Ordering::Relaxed) == seg
            && hdr.nblocks.load(Ordering::Relaxed) == layout.nblocks;
        if !ok {
            return Err(AllocError::Corrupt(format!("extension segment {seg} of class {class} has a bad header")));
        }
        let map = ExtMap { base, layout };
        let slot = class * MAX_SEGS_PER_CLASS + seg as usize;
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        if maps.len() <= slot {
            maps.resize(NUM_CLASSES * MAX_SEGS_PER_CLASS, None);
        }
        if let Some(existing) = maps[slot] {
            return Ok(existing); // another thread mapped it first; drop ours
        }
        maps[slot] = Some(map);
        self.regions.lock().unwrap_or_else(|e| e.into_inner()).push(region);
        Ok(map)
    }

    fn locate(&self, r: BlockRef) -> Result<(ExtMap, u64), AllocError> {
        let ext = self.ext(r.class, r.seg())?;
        if r.local() >= ext.layout.nblocks {
            return Err(AllocError::Corrupt(format!("block {} out of range", r.id)));
        }
        Ok((ext, r.local()))
    }

    /// Metadata of block `r`.
    pub(crate) fn meta(&self, r: BlockRef) -> Result<&BlockMeta, AllocError> {
        self.metas(r.class).meta(r.id).map(|m| {
            // SAFETY: extension mappings live as long as `self`.
            unsafe { &*(m as *const BlockMeta) }
        })
    }

    /// Start of block `r`'s bytes (`class_size(r.class)` of them).
    pub(crate) fn data(&self, r: BlockRef) -> Result<NonNull<u8>, AllocError> {
        let (ext, local) = self.locate(r)?;
        // SAFETY: local < nblocks, so the block is inside the mapping.
        let p = unsafe { ext.base.as_ptr().add(ext.layout.data_off + ((local as usize) << ext.layout.shift)) };
        NonNull::new(p).ok_or_else(|| AllocError::Corrupt("null block".into()))
    }

    /// Allocate a block of at least `len` bytes, owned by `att`. `alive`
    /// tells whether another attachment is alive (a segment creator).
    pub(crate) fn alloc(&self, len: usize, att: u32, alive: &dyn Fn(u32) -> bool) -> Result<BlockRef, AllocError> {
        let class = class_for(len).ok_or(AllocError::TooLarge { len: len as u64, max: MAX_MESSAGE })?;
        let mut waited = 0u32;
        loop {
            if let Some(id) = self.free_list(class).pop(att, &self.metas(class))? {
                return Ok(BlockRef { class, id });
            }
            match self.grow(class, att, alive)? {
                Some(r) => return Ok(r),
                None => {
                    // Another attachment is creating a segment of this class.
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_micros(if waited < 20 { 50 } else { 1000 }));
                }
            }
        }
    }

    /// Return block `r` (owned by `att`) to its free list.
    pub(crate) fn free(&self, r: BlockRef, att: u32) -> Result<(), AllocError> {
        self.free_list(r.class).push(att, r.id, &self.metas(r.class))
    }

    fn bytes_in_use(&self) -> u64 {
        let mut total = 0;
        for class in 0..NUM_CLASSES {
            for seg in 0..MAX_SEGS_PER_CLASS as u32 {
                // Relaxed: an estimate for the memory limit.
                if seg_state(self.class(class).segs[seg as usize].load(Ordering::Relaxed)) != SEG_ABSENT {
                    total += ExtLayout::new(class as u32 + MIN_CLASS_SHIFT, seg).total_len as u64;
                }
            }
        }
        total
    }

    /// Create the next segment of `class` and return one of its blocks, or
    /// `None` if someone else is creating one (retry the free list).
    fn grow(&self, class: usize, att: u32, alive: &dyn Fn(u32) -> bool) -> Result<Option<BlockRef>, AllocError> {
        let ctl = self.class(class);
        for seg in 0..MAX_SEGS_PER_CLASS as u32 {
            let word = &ctl.segs[seg as usize];
            // SYNC POINT ext-ready, ext-claim.
            let w = word.load(Ordering::Acquire);
            match seg_state(w) {
                SEG_READY => continue,
                SEG_CREATING if seg_att(w) == att || alive(seg_att(w)) => return Ok(None),
                _ => {
                    let layout = ExtLayout::new(class as u32 + MIN_CLASS_SHIFT, seg);
                    if self.max_bytes != 0 && self.bytes_in_use() + layout.total_len as u64 > self.max_bytes {
                        return Err(AllocError::LimitReached { limit: self.max_bytes });
                    }
                    // SYNC POINT ext-claim: our claim to create this segment
                    // (after a failed or dead creator's hand-back).
                    if word
                        .compare_exchange(w, seg_word(SEG_CREATING, att), Ordering::AcqRel, Ordering::Relaxed)
                        .is_err()
                    {
                        return Ok(None);
                    }
                    return self.create_segment(class, seg, layout, att).map(Some);
                }
            }
        }
        Err(AllocError::OutOfSegments { block_size: class_size(class) })
    }

    fn create_segment(&self, class: usize, seg: u32, layout: ExtLayout, att: u32) -> Result<BlockRef, AllocError> {
        let word = &self.class(class).segs[seg as usize];
        shm_primitives::fault::point("alloc.creating");
        let region = match self.backing.extension(ext_index(class, seg), layout.total_len, true) {
            Ok(r) => r,
            Err(e) => {
                // Give the claim back; a half-made file is replaced next time.
                // SYNC POINT ext-claim: the claim handed back.
                let _ = word.compare_exchange(
                    seg_word(SEG_CREATING, att),
                    seg_word(SEG_ORPHAN, 0),
                    Ordering::Release,
                    Ordering::Relaxed,
                );
                return Err(e.into());
            }
        };
        let base = region.base().as_ptr();
        // SAFETY: the fresh region is at least total_len bytes, page aligned,
        // and nobody else maps it until we mark the segment READY.
        unsafe {
            base.cast::<ExtHeader>().write(ExtHeader {
                magic: AtomicU64::new(0),
                channel_id: AtomicU64::new(self.channel_id),
                generation: AtomicU64::new(self.generation),
                class_shift: shm_primitives::sync::AtomicU32::new(layout.shift),
                seg: shm_primitives::sync::AtomicU32::new(seg),
                nblocks: AtomicU64::new(layout.nblocks),
            });
            let metas = base.add(layout.meta_off).cast::<BlockMeta>();
            for i in 0..layout.nblocks as usize {
                // Every block starts owned by us: if we die before freeing
                // them, the sweep of our attachment frees them.
                metas.add(i).write(BlockMeta {
                    state: AtomicU64::new(block_state(0, KIND_OWNED, u64::from(att))),
                    next: AtomicU64::new(0),
                });
            }
            // SYNC POINT ext-ready: the header and metadata above are
            // complete.
            (*base.cast::<ExtHeader>()).magic.store(EXT_MAGIC, Ordering::Release);
        }
        shm_primitives::fault::point("alloc.created");
        // SYNC POINT ext-ready: the segment is initialised.
        if word
            .compare_exchange(seg_word(SEG_CREATING, att), seg_word(SEG_READY, 0), Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            return Err(AllocError::Corrupt(format!(
                "segment {seg} of class {class} was taken over while we created it"
            )));
        }
        self.install(class, seg, layout, region)?;
        shm_primitives::fault::point("alloc.ready");
        let first = seg << LOCAL_BITS;
        for local in 1..layout.nblocks as u32 {
            self.free(BlockRef { class, id: first | local }, att)?;
        }
        Ok(BlockRef { class, id: first })
    }

    /// Return everything dead attachment `dead` held: finish announced
    /// operations, free its blocks (adopting them as `me` first), and hand
    /// its half-created segments to whoever needs them next. Returns the
    /// number of blocks freed. Idempotent.
    pub(crate) fn sweep(&self, dead: u32, me: u32) -> Result<u64, AllocError> {
        let mut freed = 0;
        for class in 0..NUM_CLASSES {
            let ctl = self.class(class);
            let metas = self.metas(class);
            FreeList::new(&ctl.head).settle(&metas)?;
            for seg in 0..MAX_SEGS_PER_CLASS as u32 {
                let word = &ctl.segs[seg as usize];
                // SYNC POINT ext-ready, ext-claim.
                let w = word.load(Ordering::Acquire);
                match seg_state(w) {
                    SEG_CREATING if seg_att(w) == dead => {
                        // SYNC POINT ext-claim: the dead creator's claim
                        // handed back.
                        let _ = word.compare_exchange(w, seg_word(SEG_ORPHAN, 0), Ordering::Release, Ordering::Relaxed);
                    }
                    SEG_READY => {
                        let ext = self.ext(class, seg)?;
                        for local in 0..ext.layout.nblocks as u32 {
                            let id = (seg << LOCAL_BITS) | local;
                            let m = metas.meta(id)?;
                            if adopt(m, dead, me) {
                                FreeList::new(&ctl.head).push(me, id, &metas)?;
                                freed += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(freed)
    }

    /// Scan every block (tests, diagnostics).
    pub(crate) fn stats(&self) -> Result<AllocStats, AllocError> {
        let mut st = AllocStats::default();
        for class in 0..NUM_CLASSES {
            let ctl = self.class(class);
            let metas = self.metas(class);
            for seg in 0..MAX_SEGS_PER_CLASS as u32 {
                // SYNC POINT ext-ready.
                let w = ctl.segs[seg as usize].load(Ordering::Acquire);
                if seg_state(w) != SEG_READY {
                    continue;
                }
                let ext = self.ext(class, seg)?;
                st.segments += 1;
                st.blocks += ext.layout.nblocks;
                st.bytes += ext.layout.total_len as u64;
                for local in 0..ext.layout.nblocks as u32 {
                    // Relaxed: a count for tests and diagnostics; nothing is
                    // read through it.
                    let s = metas.meta((seg << LOCAL_BITS) | local)?.state.load(Ordering::Relaxed);
                    match state_kind(s) {
                        KIND_FREE => st.free += 1,
                        KIND_OWNED => st.owned += 1,
                        KIND_IN_RING => st.in_ring += 1,
                        _ => {}
                    }
                }
            }
            st.listed += FreeList::new(&ctl.head).walk(&metas, st.blocks + 1, &mut |_| {})?;
        }
        Ok(st)
    }

    /// Remove every extension segment's name (destroy).
    pub(crate) fn remove_all(&self) {
        for class in 0..NUM_CLASSES {
            for seg in 0..MAX_SEGS_PER_CLASS as u32 {
                // Relaxed: only decides which names to remove (destroy).
                if seg_state(self.class(class).segs[seg as usize].load(Ordering::Relaxed)) != SEG_ABSENT {
                    self.backing.remove_extension(ext_index(class, seg));
                }
            }
        }
    }
}

/// Blocks per segment, re-exported for tests.
pub fn segment_blocks(class_shift: u32, seg: u32) -> u64 {
    blocks_in_segment(class_shift, seg)
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;

    struct VecMetas(Vec<BlockMeta>);

    impl Metas for VecMetas {
        fn meta(&self, id: u32) -> Result<&BlockMeta, AllocError> {
            self.0.get(id as usize).ok_or_else(|| AllocError::Corrupt("id".into()))
        }
    }

    fn metas(n: usize, owner: u32) -> VecMetas {
        VecMetas(
            (0..n)
                .map(|_| BlockMeta {
                    state: AtomicU64::new(block_state(0, KIND_OWNED, u64::from(owner))),
                    next: AtomicU64::new(0),
                })
                .collect(),
        )
    }

    #[test]
    fn encodings_round_trip() {
        let h = head_word(5, OP_POP, 1023, 12345);
        assert_eq!((head_tag(h), head_op(h), head_att(h), head_id1(h)), (5, OP_POP, 1023, 12345));
        let s = block_state(7, KIND_IN_RING, 99);
        assert_eq!((state_version(s), state_kind(s), state_value(s)), (7, KIND_IN_RING, 99));
        let r = BlockRef { class: 3, id: (5 << LOCAL_BITS) | 17 };
        assert_eq!(BlockRef::decode(r.encode()), Some(r));
        assert_eq!(BlockRef::decode(u64::MAX), None);
        assert_eq!(class_for(0), Some(0));
        assert_eq!(class_for(1024), Some(0));
        assert_eq!(class_for(1025), Some(1));
        assert_eq!(class_for(256 << 20), Some(18));
        assert_eq!(class_for((1 << 34) + 1), None);
    }

    #[test]
    fn push_pop_lifo_and_states() {
        let m = metas(4, 1);
        let head = AtomicU64::new(0);
        let fl = FreeList::new(&head);
        for id in 0..4 {
            fl.push(1, id, &m).unwrap();
            assert_eq!(state_kind(m.0[id as usize].state.load(Ordering::Relaxed)), KIND_FREE);
        }
        assert_eq!(fl.walk(&m, 10, &mut |_| {}).unwrap(), 4);
        for id in (0..4).rev() {
            assert_eq!(fl.pop(2, &m).unwrap(), Some(id));
            assert!(owned_by(m.0[id as usize].state.load(Ordering::Relaxed), 2));
        }
        assert_eq!(fl.pop(2, &m).unwrap(), None);
    }

    #[test]
    fn half_done_operations_are_finished_by_others() {
        let m = metas(3, 1);
        let head = AtomicU64::new(0);
        let fl = FreeList::new(&head);
        fl.push(1, 0, &m).unwrap();
        fl.push(1, 1, &m).unwrap();
        // Attachment 7 announces a pop of block 1 and dies.
        let h = head.load(Ordering::Relaxed);
        head.store(head_word(head_tag(h) + 1, OP_POP, 7, head_id1(h)), Ordering::Relaxed);
        // Attachment 1 announces a push... no: first someone pops; the pop
        // finishes 7's operation, so block 1 ends up owned by 7.
        assert_eq!(fl.pop(2, &m).unwrap(), Some(0));
        assert!(owned_by(m.0[1].state.load(Ordering::Relaxed), 7));
        // Block 2 pushed by 1, which dies right after announcing.
        let h = head.load(Ordering::Relaxed);
        m.0[2].next.store(head_id1(h), Ordering::Relaxed);
        head.store(head_word(head_tag(h) + 1, OP_PUSH, 1, 3), Ordering::Relaxed);
        fl.settle(&m).unwrap();
        assert_eq!(state_kind(m.0[2].state.load(Ordering::Relaxed)), KIND_FREE);
        assert_eq!(fl.walk(&m, 10, &mut |_| {}).unwrap(), 1);
        // Ring hand-over and adoption.
        assert!(put_in_ring(&m.0[1], 4, 7));
        assert!(!take_from_ring(&m.0[1], 5, 3));
        assert!(take_from_ring(&m.0[1], 4, 3));
        assert!(adopt(&m.0[1], 3, 9));
        assert!(!adopt(&m.0[1], 3, 9));
    }
}
