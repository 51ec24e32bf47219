//! Shards ([`Shard`]) in named shared-memory
//! segments: the memory of one DDict manager.
//!
//! A shard's segment is exactly as long as its budget (rounded up to a
//! page) and is reserved with `fallocate` when created, so a shard that
//! does not fit in `/dev/shm` fails at creation with a clear error instead
//! of a `SIGBUS` later. Names are chosen by the caller (the DDict names its
//! shards `<run prefix>dd-<name>-<index>`), so a process that knows the
//! DDict's descriptor can open every shard.

use crate::{KvError, Shard};
use std::fmt;
use std::ops::Deref;
use transport_shm::segment::{self, Segment, SegmentError};

/// Why a shard segment could not be created or opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum KvShmError {
    /// The segment could not be created or mapped.
    Segment(SegmentError),
    /// The segment does not hold the expected shard (or is too small).
    Kv(KvError),
}

impl fmt::Display for KvShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvShmError::Segment(e) => write!(f, "{e}"),
            KvShmError::Kv(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for KvShmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KvShmError::Segment(e) => Some(e),
            KvShmError::Kv(e) => Some(e),
        }
    }
}

impl From<SegmentError> for KvShmError {
    fn from(e: SegmentError) -> Self {
        KvShmError::Segment(e)
    }
}

impl From<KvError> for KvShmError {
    fn from(e: KvError) -> Self {
        KvShmError::Kv(e)
    }
}

/// A shard in its own shared-memory segment.
pub struct ShmShard {
    shard: Shard<Segment>,
}

impl fmt::Debug for ShmShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmShard").field("segment", &self.name()).field("id", &self.shard.id()).finish()
    }
}

impl ShmShard {
    /// Create segment `name` of `len` bytes (rounded up to a page) and
    /// build an empty shard with id `id` in it. Nothing is left behind on
    /// failure.
    pub fn create(name: &str, len: usize, id: u64) -> Result<ShmShard, KvShmError> {
        crate::Geometry::for_len(len)?;
        let seg = Segment::create(name, len)?;
        // SAFETY: the segment was just created (O_EXCL), so it is
        // zero-filled and nobody else has opened it through this name yet;
        // attachers check the magic, which `init` publishes last.
        match unsafe { Shard::init(seg, id) } {
            Ok(shard) => Ok(ShmShard { shard }),
            Err(e) => {
                let _ = segment::unlink(name);
                Err(e.into())
            }
        }
    }

    /// Open the shard with id `id` in segment `name`.
    pub fn open(name: &str, id: u64) -> Result<ShmShard, KvShmError> {
        let seg = Segment::open(name)?;
        Ok(ShmShard { shard: Shard::attach(seg, id)? })
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.shard.region().name()
    }

    /// Remove the segment's name (mappings stay valid until dropped).
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.shard.region().unlink()
    }
}

impl Deref for ShmShard {
    type Target = Shard<Segment>;
    fn deref(&self) -> &Shard<Segment> {
        &self.shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport_shm::segment::RunId;

    #[test]
    fn create_share_and_unlink() {
        let name = RunId::current().segment_name("kvt");
        let a = ShmShard::create(&name, 1 << 20, 9).unwrap();
        let sa = a.claim_slot().unwrap();
        a.put(&sa, b"k", b"v").unwrap();
        let b = ShmShard::open(&name, 9).unwrap();
        let sb = b.claim_slot().unwrap();
        assert_eq!(b.get(&sb, b"k").as_deref(), Some(&b"v"[..]));
        assert!(matches!(ShmShard::open(&name, 10), Err(KvShmError::Kv(KvError::NotAShard(_)))));
        a.unlink().unwrap();
        assert!(matches!(ShmShard::open(&name, 9), Err(KvShmError::Segment(SegmentError::NotFound(_)))));
        // Mappings outlive the name.
        assert_eq!(a.get(&sa, b"k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn too_small_or_too_big_leaves_nothing() {
        let name = RunId::current().segment_name("kvt");
        assert!(matches!(ShmShard::create(&name, 1000, 1), Err(KvShmError::Kv(KvError::TooSmall(_)))));
        assert!(ShmShard::create(&name, 1 << 50, 1).is_err());
        assert!(Segment::open(&name).is_err());
    }
}
