//! The shared-memory layout of a channel, in one place.
//!
//! A channel is one *main* region plus zero or more *extension* regions
//! (created on demand by the block allocator). Everything in them is
//! `#[repr(C)]`, addressed by byte offsets from the region base, and every
//! word that more than one process touches is an atomic from the
//! [`shm_primitives::sync`] facade.
//!
//! ```text
//!  main region (offsets from the base; the base is page aligned)
//!  +--------------------------------------------------------------------+
//!  | ChannelHeader (fixed size, repr(C))                                |
//!  |   config      CachePadded<Config>   magic, layout version, id,      |
//!  |                                     generation, capacity, slot      |
//!  |                                     size, max attachments, options, |
//!  |                                     state (open / destroyed)        |
//!  |   attach      CachePadded<AttachCtl> table version, sender latch    |
//!  |   head        CachePadded<AtomicU64> next position to read          |
//!  |   tail        CachePadded<AtomicU64> next position to write         |
//!  |                                       (bit 63: closed mark)         |
//!  |   not_empty   CachePadded<WaitWord>  futex word + waiter count      |
//!  |   not_full    CachePadded<WaitWord>  futex word + waiter count      |
//!  |   classes     [ClassCtl; NUM_CLASSES] per size class: free-list     |
//!  |                                       head, extension segment table |
//!  +--------------------------------------------------------------------+
//!  | rows        [AttachRow; max_attach]   (pid, start time, roles)     |
//!  +--------------------------------------------------------------------+  <- 128-aligned
//!  | slots       [Slot; capacity], each `slot_size` bytes:                |
//!  |               SlotHeader { stamp, len, aux } then inline payload   |
//!  +--------------------------------------------------------------------+
//!
//!  extension region (class c, segment j; n = blocks_in_segment(c, j))
//!  +--------------------------------------------------------------------+
//!  | ExtHeader (magic, channel id, generation, class, segment, n)       |
//!  | BlockMeta[n]  { state, next }                                      |
//!  | ...padding to a page...                                            |
//!  | blocks[n], each 2^c bytes                                          |
//!  +--------------------------------------------------------------------+
//! ```
//!
//! Under `--cfg dragon_loom` the atomics are loom's (larger than eight
//! bytes), so offsets are always computed from `size_of`/`offset_of` of
//! these structs and atomics are initialised in place with `ptr::write`,
//! never assumed to be valid when zeroed. In normal builds a zeroed atomic
//! is a valid zero, and the layout is identical in every process of the same
//! build; [`LAYOUT_VERSION`] changes whenever it changes.

use shm_primitives::sync::{AtomicU32, AtomicU64};
use std::mem::{align_of, offset_of, size_of};

/// First word of a channel's main region ("DRGNCHAN", little endian).
pub const MAGIC: u64 = u64::from_le_bytes(*b"DRGNCHAN");
/// First word of an extension region ("DRGNEXTS").
pub const EXT_MAGIC: u64 = u64::from_le_bytes(*b"DRGNEXTS");
/// Version of this layout; attaching to another version is refused.
pub const LAYOUT_VERSION: u32 = 1;

/// Padding unit for contended words: two 64-byte lines, because x86 CPUs
/// prefetch cache lines in adjacent pairs.
pub const CACHE_LINE: usize = 128;

/// Smallest block size class: 2^MIN_CLASS_SHIFT bytes (1 KiB).
pub const MIN_CLASS_SHIFT: u32 = 10;
/// Largest block size class: 2^MAX_CLASS_SHIFT bytes (16 GiB).
pub const MAX_CLASS_SHIFT: u32 = 34;
/// Number of block size classes.
pub const NUM_CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Extension segments per size class.
pub const MAX_SEGS_PER_CLASS: usize = 64;
/// Most blocks one extension segment may hold (block ids keep 22 bits).
pub const MAX_BLOCKS_PER_SEG: u64 = (1 << 22) - 2;
/// Most attachments a channel can have at once (ids fit in 10 bits).
pub const MAX_ATTACH_LIMIT: u32 = 1023;
/// Largest capacity (slots) a channel may have.
pub const MAX_CAPACITY: u64 = 1 << 24;
/// Smallest and largest slot size in bytes.
pub const MIN_SLOT_SIZE: usize = 64;
/// Largest slot size in bytes.
pub const MAX_SLOT_SIZE: usize = 1 << 20;

/// Channel state word bits (`Config::state`): created and usable.
pub const STATE_OPEN: u32 = 1;
/// The channel was destroyed: its names are (being) unlinked.
pub const STATE_DESTROYED: u32 = 2;
/// The channel was closed. The closed mark in `tail` is what decides; this
/// copy on a read-mostly line lets receivers polling an empty ring skip
/// reading `tail` (a line the producers write) until it is set.
pub const STATE_CLOSED: u32 = 4;

/// Option bits (`Config::flags`).
pub mod flags {
    /// Receivers see `Disconnected` once every sender attachment is gone
    /// (after at least one existed), like the read end of a pipe.
    pub const DISCONNECT_ON_NO_SENDERS: u32 = 1;
    /// Senders see `Disconnected` once every receiver attachment is gone
    /// (after at least one existed), like the write end of a pipe.
    pub const DISCONNECT_ON_NO_RECEIVERS: u32 = 2;
}

/// A value on its own pair of cache lines.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Read-mostly configuration, written once at creation (and `state` at
/// destruction).
#[repr(C)]
#[derive(Debug)]
pub struct Config {
    /// [`MAGIC`]; written last at creation (Release), so a reader that sees
    /// it (Acquire) sees every other initialised field.
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: AtomicU32,
    /// Option bits, see [`flags`].
    pub flags: AtomicU32,
    /// Random id chosen at creation; handles carry it.
    pub channel_id: AtomicU64,
    /// Random generation chosen at creation; handles carry it.
    pub generation: AtomicU64,
    /// Number of slots.
    pub capacity: AtomicU64,
    /// Bytes per slot (stride), header included.
    pub slot_size: AtomicU64,
    /// Rows in the attachment table.
    pub max_attach: AtomicU32,
    /// [`STATE_OPEN`] plus [`STATE_CLOSED`] and [`STATE_DESTROYED`] bits.
    pub state: AtomicU32,
    /// Total bytes of the main region the layout needs.
    pub total_len: AtomicU64,
    /// Limit on extension memory in bytes (0: none).
    pub max_block_bytes: AtomicU64,
}

/// Attachment bookkeeping that changes when processes come and go.
#[repr(C)]
#[derive(Debug)]
pub struct AttachCtl {
    /// Bumped after every row change (attach, detach, death found), so
    /// processes may cache counts derived from the table.
    pub version: AtomicU64,
    /// Bit 0: a sender was ever attached; bit 1: a receiver was.
    pub latch: AtomicU32,
    /// One past the highest row index ever used (scans stop there).
    pub high_water: AtomicU32,
    /// Coarse monotonic time (ms) of the last liveness scan, so that only one
    /// process scans per interval.
    pub last_check_ms: AtomicU64,
}

/// A futex word with the count of its sleepers.
#[repr(C)]
#[derive(Debug)]
pub struct WaitWord {
    /// Bumped by a waker before each wake; sleepers sleep on its value.
    pub seq: AtomicU32,
    /// Low 16 bits: plain waiters; high 16 bits: select waiters.
    pub waiters: AtomicU32,
}

/// One waiter in [`WaitWord::waiters`].
pub const WAITER_ONE: u32 = 1;
/// One select waiter in [`WaitWord::waiters`].
pub const SELECT_WAITER_ONE: u32 = 1 << 16;

/// Per-size-class allocator state.
#[repr(C)]
#[derive(Debug)]
pub struct ClassCtl {
    /// Free-list head; see `alloc.rs` for the encoding.
    pub head: CachePadded<AtomicU64>,
    /// Extension segment states; see `alloc.rs` for the encoding.
    pub segs: [AtomicU64; MAX_SEGS_PER_CLASS],
}

/// The fixed-size part at the start of the main region.
#[repr(C)]
#[derive(Debug)]
pub struct ChannelHeader {
    /// Configuration.
    pub config: CachePadded<Config>,
    /// Attachment bookkeeping.
    pub attach: CachePadded<AttachCtl>,
    /// Next position to read (Vyukov position encoding, see `ring.rs`).
    pub head: CachePadded<AtomicU64>,
    /// Next position to write; bit 63 marks the channel closed.
    pub tail: CachePadded<AtomicU64>,
    /// Receivers sleep here when the ring is empty.
    pub not_empty: CachePadded<WaitWord>,
    /// Senders sleep here when the ring is full.
    pub not_full: CachePadded<WaitWord>,
    /// Allocator state per size class.
    pub classes: [ClassCtl; NUM_CLASSES],
}

/// One row of the attachment table.
#[repr(C)]
#[derive(Debug)]
pub struct AttachRow {
    /// State and pid; see `attach.rs`.
    pub owner: AtomicU64,
    /// Process start time (clock ticks since boot).
    pub start: AtomicU64,
    /// Role bits of the attachment.
    pub roles: AtomicU32,
    /// Reserved.
    pub reserved: AtomicU32,
}

/// The fixed words at the start of every slot; the payload follows.
#[repr(C)]
#[derive(Debug)]
pub struct SlotHeader {
    /// Slot state, lap and claimer; see `ring.rs`.
    pub stamp: AtomicU64,
    /// Message length in bytes.
    pub len: AtomicU64,
    /// For a message in a block: the block reference; unused otherwise.
    pub aux: AtomicU64,
}

/// Header of an extension region.
#[repr(C)]
#[derive(Debug)]
pub struct ExtHeader {
    /// [`EXT_MAGIC`]; written last (Release) by the creator.
    pub magic: AtomicU64,
    /// Owning channel's id.
    pub channel_id: AtomicU64,
    /// Owning channel's generation.
    pub generation: AtomicU64,
    /// Size class (shift).
    pub class_shift: AtomicU32,
    /// Segment index within the class.
    pub seg: AtomicU32,
    /// Blocks in this segment.
    pub nblocks: AtomicU64,
}

/// Per-block allocator metadata in an extension region.
#[repr(C)]
#[derive(Debug)]
pub struct BlockMeta {
    /// Versioned ownership state; see `alloc.rs`.
    pub state: AtomicU64,
    /// Next block id + 1 in the free list (0: end).
    pub next: AtomicU64,
}

/// Named offsets of the fixed header (bytes from the region base).
pub mod offsets {
    use super::*;
    /// `Config::magic`.
    pub const MAGIC: usize = offset_of!(ChannelHeader, config);
    /// Attachment bookkeeping.
    pub const ATTACH: usize = offset_of!(ChannelHeader, attach);
    /// Read position.
    pub const HEAD: usize = offset_of!(ChannelHeader, head);
    /// Write position.
    pub const TAIL: usize = offset_of!(ChannelHeader, tail);
    /// Receivers' futex word.
    pub const NOT_EMPTY: usize = offset_of!(ChannelHeader, not_empty);
    /// Senders' futex word.
    pub const NOT_FULL: usize = offset_of!(ChannelHeader, not_full);
    /// Allocator classes.
    pub const CLASSES: usize = offset_of!(ChannelHeader, classes);
    /// Attachment rows.
    pub const ROWS: usize = size_of::<ChannelHeader>();
}

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Size of the slot header; payload starts here within a slot.
pub const SLOT_HEADER: usize = size_of::<SlotHeader>();

/// Offsets and sizes of one channel's main region, computed from its
/// parameters (the same in every process of the same build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MainLayout {
    /// Slots in the ring.
    pub capacity: u64,
    /// Bytes per slot.
    pub slot_size: usize,
    /// Attachment rows.
    pub max_attach: u32,
    /// Offset of the attachment rows.
    pub rows_off: usize,
    /// Offset of slot 0.
    pub slots_off: usize,
    /// Total bytes.
    pub total_len: usize,
}

/// Why a set of layout parameters is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError(pub String);

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl MainLayout {
    /// Compute the layout, checking every parameter.
    pub fn new(capacity: u64, slot_size: usize, max_attach: u32) -> Result<MainLayout, LayoutError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(LayoutError(format!("capacity {capacity} is not in 1..={MAX_CAPACITY}")));
        }
        let min_slot = round_up(SLOT_HEADER + 8, align_of::<SlotHeader>()).max(MIN_SLOT_SIZE);
        if !(min_slot..=MAX_SLOT_SIZE).contains(&slot_size) || slot_size % align_of::<SlotHeader>() != 0 {
            return Err(LayoutError(format!(
                "slot size {slot_size} is not a multiple of {} in {min_slot}..={MAX_SLOT_SIZE}",
                align_of::<SlotHeader>()
            )));
        }
        if max_attach == 0 || max_attach > MAX_ATTACH_LIMIT {
            return Err(LayoutError(format!("max attachments {max_attach} is not in 1..={MAX_ATTACH_LIMIT}")));
        }
        let rows_off = offsets::ROWS;
        let slots_off = round_up(rows_off + max_attach as usize * size_of::<AttachRow>(), CACHE_LINE);
        let total_len = (capacity as usize)
            .checked_mul(slot_size)
            .and_then(|s| s.checked_add(slots_off))
            .ok_or_else(|| LayoutError("channel too large".into()))?;
        Ok(MainLayout { capacity, slot_size, max_attach, rows_off, slots_off, total_len })
    }

    /// Payload bytes a slot holds inline.
    pub fn inline_cap(&self) -> usize {
        self.slot_size - SLOT_HEADER
    }
}

/// Blocks in segment `seg` of the class with block size `2^shift`: the
/// first segment holds about 64 KiB, each next one twice as much, up to
/// about 64 MiB (always at least one block).
pub fn blocks_in_segment(shift: u32, seg: u32) -> u64 {
    let n0 = ((64u64 << 10) >> shift).max(1);
    let nmax = ((64u64 << 20) >> shift).clamp(1, MAX_BLOCKS_PER_SEG);
    n0.checked_shl(seg.min(40)).unwrap_or(u64::MAX).min(nmax)
}

/// Offsets inside an extension region of `nblocks` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtLayout {
    /// Block size class (shift).
    pub shift: u32,
    /// Blocks in the segment.
    pub nblocks: u64,
    /// Offset of `BlockMeta[0]`.
    pub meta_off: usize,
    /// Offset of block 0 (page aligned).
    pub data_off: usize,
    /// Total bytes.
    pub total_len: usize,
}

impl ExtLayout {
    /// Layout of segment `seg` of class `shift`.
    pub fn new(shift: u32, seg: u32) -> ExtLayout {
        let nblocks = blocks_in_segment(shift, seg);
        let meta_off = round_up(size_of::<ExtHeader>(), align_of::<BlockMeta>());
        let data_off = round_up(meta_off + nblocks as usize * size_of::<BlockMeta>(), 4096);
        let total_len = data_off + ((nblocks as usize) << shift);
        ExtLayout { shift, nblocks, meta_off, data_off, total_len }
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;

    #[test]
    fn fixed_offsets_are_cache_line_separated() {
        for (a, b) in [
            (offsets::ATTACH, offsets::HEAD),
            (offsets::HEAD, offsets::TAIL),
            (offsets::TAIL, offsets::NOT_EMPTY),
            (offsets::NOT_EMPTY, offsets::NOT_FULL),
        ] {
            assert!(b - a >= CACHE_LINE, "{a} {b}");
            assert_eq!(a % CACHE_LINE, 0);
        }
        assert_eq!(offsets::MAGIC, 0);
        assert_eq!(size_of::<SlotHeader>(), 24);
        assert_eq!(size_of::<AttachRow>(), 24);
        assert_eq!(size_of::<BlockMeta>(), 16);
    }

    #[test]
    fn layout_checks_parameters() {
        assert!(MainLayout::new(0, 64, 8).is_err());
        assert!(MainLayout::new(4, 63, 8).is_err());
        assert!(MainLayout::new(4, 72, 8).is_ok());
        assert!(MainLayout::new(4, 64, 0).is_err());
        assert!(MainLayout::new(4, 64, MAX_ATTACH_LIMIT + 1).is_err());
        let l = MainLayout::new(3, 128, 5).unwrap();
        assert_eq!(l.slots_off % CACHE_LINE, 0);
        assert_eq!(l.total_len, l.slots_off + 3 * 128);
        assert_eq!(l.inline_cap(), 128 - 24);
    }

    #[test]
    fn segments_grow_geometrically_within_bounds() {
        assert_eq!(blocks_in_segment(10, 0), 64);
        assert_eq!(blocks_in_segment(10, 1), 128);
        assert_eq!(blocks_in_segment(10, 63), 65536);
        assert_eq!(blocks_in_segment(28, 0), 1);
        assert_eq!(blocks_in_segment(34, 5), 1);
        let e = ExtLayout::new(12, 0);
        assert_eq!(e.data_off % 4096, 0);
        assert_eq!(e.total_len, e.data_off + 16 * 4096);
    }
}
