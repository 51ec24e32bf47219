//! Memory blocks: the segments `Value`, `Array` (and a Pool's ledger) live
//! in, as `dragon-py`'s `dragon._block` lays them out:
//!
//! ```text
//!   offset 0   magic "DRGM" · u16 layout version · u8 kind (Memory) · 9 pad
//!              u64 id · u64 generation · u64 data size      (padded to 64)
//!   offset 64  the data
//! ```
//!
//! A process of the block's node maps the segment itself. [`MemoryBlock`]
//! is how a node's service reads and writes a block for a process of
//! another node: the handle is checked against the header (a forged or
//! stale handle is an error), and every access is bounds-checked. It is
//! also how Rust code of this node makes a block ([`MemoryBlock::create`])
//! and uses its data as shared 64-bit words ([`MemoryBlock::words`]: the
//! `pool` crate's task ledger).
use crate::segment::{nonce32, RunId, Segment};
use shm_primitives::handle::{Handle, Kind};
use shm_primitives::region::Region;
#[cfg(not(dragon_loom))]
use shm_primitives::sync::AtomicU64;
use std::fmt;

/// The header's magic.
pub const MAGIC: &[u8; 4] = b"DRGM";
/// The layout this build reads.
pub const LAYOUT_VERSION: u16 = 1;
/// Where the data starts.
pub const DATA_OFFSET: usize = 64;

/// Why a block cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBlockError {
    /// The handle is not a memory block's.
    WrongKind(Kind),
    /// The segment is gone (the block was destroyed).
    Gone(String),
    /// The segment does not hold the block the handle names.
    Mismatch(String),
    /// An access outside the block's data.
    OutOfBounds {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The block's data size.
        size: u64,
    },
}

impl fmt::Display for MemoryBlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryBlockError::WrongKind(k) => write!(f, "handle is for a {k:?}, not a memory block"),
            MemoryBlockError::Gone(why) => write!(f, "shared memory block was destroyed: {why}"),
            MemoryBlockError::Mismatch(why) => write!(f, "wrong, stale or forged memory block handle: {why}"),
            MemoryBlockError::OutOfBounds { offset, len, size } => {
                write!(f, "access of {len} bytes at offset {offset} is outside the block's {size} bytes")
            }
        }
    }
}

impl std::error::Error for MemoryBlockError {}

/// A memory block of this node, mapped.
#[derive(Debug)]
pub struct MemoryBlock {
    seg: Segment,
    size: usize,
    handle: Handle,
}

impl MemoryBlock {
    /// Make a zero-filled block of `size` bytes of data in a new segment of
    /// the current run (mode 0600, pages reserved), with a fresh random id.
    /// The segment's name stays until [`MemoryBlock::unlink`] (or the run's
    /// cleanup) removes it.
    pub fn create(size: usize) -> Result<MemoryBlock, crate::segment::SegmentError> {
        let name = RunId::current().segment_name("mem");
        let seg = Segment::create(&name, DATA_OFFSET + size)?;
        let id = (u64::from(nonce32()) << 32) | u64::from(nonce32());
        let mut head = [0u8; DATA_OFFSET];
        head[..4].copy_from_slice(MAGIC);
        head[4..6].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        head[6] = Kind::Memory as u8;
        head[16..24].copy_from_slice(&id.to_le_bytes());
        head[24..32].copy_from_slice(&1u64.to_le_bytes());
        head[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        // SAFETY: the segment is at least DATA_OFFSET bytes long and nobody
        // else knows its name yet.
        unsafe { std::ptr::copy_nonoverlapping(head.as_ptr(), seg.base().as_ptr(), DATA_OFFSET) };
        let handle = Handle {
            kind: Kind::Memory,
            id,
            generation: 1,
            offset: DATA_OFFSET as u64,
            node: crate::segment::this_node(),
            segment: name,
            address: String::new(),
        };
        Ok(MemoryBlock { seg, size, handle })
    }

    /// The handle other processes attach by.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Remove the block's name (mappings stay valid; later attaches fail).
    pub fn unlink(&self) -> Result<(), crate::segment::SegmentError> {
        self.seg.unlink()
    }

    /// The data as 64-bit words shared with every process that maps the
    /// block (the data starts 64-byte aligned; a trailing part of less than
    /// 8 bytes is not included). Other processes may read and write the
    /// same words, through atomics here or plain aligned 8-byte accesses
    /// (Python's `memoryview.cast("q")`), which x86-64 and AArch64 make
    /// single-copy atomic.
    #[cfg(not(dragon_loom))]
    pub fn words(&self) -> &[AtomicU64] {
        let n = self.size / 8;
        // SAFETY: `DATA_OFFSET..DATA_OFFSET + 8 * n` lies inside the mapping
        // (checked at create/attach), which lives as long as `self`; the
        // address is 8-byte aligned (page-aligned base plus 64); AtomicU64
        // has the size and alignment of u64 and any bit pattern is valid;
        // every access through the slice is atomic.
        unsafe {
            let base = self.seg.base().as_ptr().add(DATA_OFFSET).cast::<AtomicU64>();
            std::slice::from_raw_parts(base, n)
        }
    }
    /// Map the block `h` names and check it against its header.
    pub fn attach(h: &Handle) -> Result<MemoryBlock, MemoryBlockError> {
        if h.kind != Kind::Memory {
            return Err(MemoryBlockError::WrongKind(h.kind));
        }
        let seg = Segment::open(&h.segment).map_err(|e| MemoryBlockError::Gone(e.to_string()))?;
        let head = Self::bytes(&seg, 0, DATA_OFFSET.min(seg.len()));
        if head.len() < DATA_OFFSET || &head[..4] != MAGIC || head[6] != Kind::Memory as u8 {
            return Err(MemoryBlockError::Mismatch(format!("no memory block in segment {}", h.segment)));
        }
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let version = u16::from_le_bytes([head[4], head[5]]);
        if version != LAYOUT_VERSION {
            return Err(MemoryBlockError::Mismatch(format!(
                "layout version {version}, this build reads {LAYOUT_VERSION}"
            )));
        }
        if u64_at(16) != h.id {
            return Err(MemoryBlockError::Mismatch(format!("block id {:#x}, handle {:#x}", u64_at(16), h.id)));
        }
        if u64_at(24) != h.generation {
            return Err(MemoryBlockError::Gone(format!("generation {}, handle {}", u64_at(24), h.generation)));
        }
        let size = usize::try_from(u64_at(32)).unwrap_or(usize::MAX);
        if h.offset != DATA_OFFSET as u64 || size > seg.len() - DATA_OFFSET {
            return Err(MemoryBlockError::Mismatch("header is corrupt or the handle is forged".into()));
        }
        Ok(MemoryBlock { seg, size, handle: h.clone() })
    }

    /// Bytes of data.
    pub fn size(&self) -> usize {
        self.size
    }

    fn range(&self, offset: u64, len: u64) -> Result<usize, MemoryBlockError> {
        let bad = MemoryBlockError::OutOfBounds { offset, len, size: self.size as u64 };
        match offset.checked_add(len) {
            Some(end) if end <= self.size as u64 => Ok(DATA_OFFSET + offset as usize),
            _ => Err(bad),
        }
    }

    fn bytes(seg: &Segment, at: usize, len: usize) -> Vec<u8> {
        debug_assert!(at + len <= seg.len());
        let mut out = vec![0u8; len];
        // SAFETY: `at..at + len` lies inside the mapping (checked by every
        // caller); the bytes may change under us (other processes write
        // them under their own lock), which a byte copy tolerates.
        unsafe { std::ptr::copy_nonoverlapping(seg.base().as_ptr().add(at), out.as_mut_ptr(), len) };
        out
    }

    /// Copy out `len` bytes of data at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, MemoryBlockError> {
        let at = self.range(offset, len)?;
        Ok(Self::bytes(&self.seg, at, len as usize))
    }

    /// Write `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), MemoryBlockError> {
        let at = self.range(offset, data.len() as u64)?;
        // SAFETY: the range lies inside the mapping (checked above); the
        // segment is mapped writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.seg.base().as_ptr().add(at), data.len()) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::RunId;

    fn block(size: usize, id: u64) -> (Segment, Handle) {
        let name = RunId::current().segment_name("memtest");
        let seg = Segment::create(&name, DATA_OFFSET + size).unwrap();
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
        head.push(Kind::Memory as u8);
        head.extend_from_slice(&[0; 9]);
        head.extend_from_slice(&id.to_le_bytes());
        head.extend_from_slice(&1u64.to_le_bytes());
        head.extend_from_slice(&(size as u64).to_le_bytes());
        // SAFETY: the segment is at least DATA_OFFSET bytes and ours alone.
        unsafe { std::ptr::copy_nonoverlapping(head.as_ptr(), seg.base().as_ptr(), head.len()) };
        let h = Handle {
            kind: Kind::Memory,
            id,
            generation: 1,
            offset: DATA_OFFSET as u64,
            node: 0,
            segment: name,
            address: String::new(),
        };
        (seg, h)
    }

    #[test]
    fn reads_writes_and_refuses_what_it_must() {
        let (seg, h) = block(16, 0xfeed);
        let b = MemoryBlock::attach(&h).unwrap();
        assert_eq!(b.size(), 16);
        b.write(4, b"abcd").unwrap();
        assert_eq!(b.read(0, 8).unwrap(), b"\0\0\0\0abcd");
        assert!(matches!(b.read(10, 7), Err(MemoryBlockError::OutOfBounds { .. })));
        assert!(matches!(b.write(u64::MAX, b"x"), Err(MemoryBlockError::OutOfBounds { .. })));
        let forged = Handle { id: 1, ..h.clone() };
        assert!(matches!(MemoryBlock::attach(&forged), Err(MemoryBlockError::Mismatch(_))));
        let stale = Handle { generation: 2, ..h.clone() };
        assert!(matches!(MemoryBlock::attach(&stale), Err(MemoryBlockError::Gone(_))));
        let wrong = Handle { kind: Kind::Lock, ..h.clone() };
        assert!(matches!(MemoryBlock::attach(&wrong), Err(MemoryBlockError::WrongKind(Kind::Lock))));
        seg.unlink().unwrap();
        drop(b);
        assert!(matches!(MemoryBlock::attach(&h), Err(MemoryBlockError::Gone(_))));
    }

    #[test]
    fn created_block_shares_its_words_and_unlinks() {
        use shm_primitives::sync::Ordering;
        let b = MemoryBlock::create(24).unwrap();
        assert_eq!(b.words().len(), 3);
        let other = MemoryBlock::attach(b.handle()).unwrap();
        // Relaxed: one thread; the mapping is what is tested.
        b.words()[2].store(0x1122_3344_5566_7788, Ordering::Relaxed);
        assert_eq!(other.read(16, 8).unwrap(), 0x1122_3344_5566_7788u64.to_le_bytes());
        other.write(0, &7u64.to_le_bytes()).unwrap();
        // Relaxed: as above.
        assert_eq!(b.words()[0].load(Ordering::Relaxed), 7);
        b.unlink().unwrap();
        assert!(matches!(MemoryBlock::attach(b.handle()), Err(MemoryBlockError::Gone(_))));
    }
}
