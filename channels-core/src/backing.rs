//! Where a channel's memory comes from.
//!
//! The core never names files: a [`Backing`] hands it the extension regions
//! the block allocator asks for. `transport-shm` implements it with named
//! shared-memory segments; [`HeapBacking`] keeps everything on this
//! process's heap (tests, channels between threads).

use shm_primitives::region::{HeapRegion, Region};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Why a backing could not provide a region.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackingError {
    /// Not enough memory (for shared memory: `/dev/shm` is full).
    NoSpace(String),
    /// The region does not exist (never created, or removed).
    NotFound(String),
    /// Anything else, with what happened.
    Other(String),
}

impl fmt::Display for BackingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackingError::NoSpace(m) | BackingError::NotFound(m) | BackingError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BackingError {}

/// Provides a channel's extension regions.
///
/// Extension `index` is identified by its number alone; the implementation
/// derives a name from the channel (e.g. the main segment name plus the
/// index). The allocator guarantees that at most one process at a time calls
/// `extension(index, _, true)` for a given index (it holds the segment's
/// `CREATING` claim), but a creator may have died half-way: creating must
/// replace whatever a previous, dead creator left.
pub trait Backing: Send + Sync + fmt::Debug {
    /// Map extension `index`, `len` bytes. With `create`, make it (replacing
    /// any leftover of that index) zero-filled; without, it must exist.
    fn extension(&self, index: u32, len: usize, create: bool) -> Result<Box<dyn Region>, BackingError>;

    /// Remove extension `index`'s name (mappings stay valid). Removing one
    /// that does not exist is not an error.
    fn remove_extension(&self, index: u32);

    /// Remove the main region's name.
    fn remove_main(&self);

    /// Name of the main region (what handles carry).
    fn name(&self) -> &str;

    /// Another handle on the same memory (for a second attachment).
    fn clone_backing(&self) -> Box<dyn Backing>;
}

/// A backing on this process's heap; clones share the same regions.
#[derive(Debug, Clone)]
pub struct HeapBacking {
    name: String,
    exts: Arc<Mutex<HashMap<u32, Arc<HeapRegion>>>>,
}

impl HeapBacking {
    /// A fresh heap backing; `name` is only reported.
    pub fn new(name: &str) -> HeapBacking {
        HeapBacking { name: name.to_owned(), exts: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Extension regions currently present (for tests).
    pub fn extension_count(&self) -> usize {
        self.exts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Backing for HeapBacking {
    fn extension(&self, index: u32, len: usize, create: bool) -> Result<Box<dyn Region>, BackingError> {
        let mut exts = self.exts.lock().unwrap_or_else(|e| e.into_inner());
        if create {
            if len > (1usize << 40) {
                return Err(BackingError::NoSpace(format!("heap extension of {len} bytes is too large")));
            }
            let r = Arc::new(HeapRegion::new(len));
            exts.insert(index, Arc::clone(&r));
            return Ok(Box::new(r));
        }
        match exts.get(&index) {
            Some(r) if r.len() >= len => Ok(Box::new(Arc::clone(r))),
            Some(_) => Err(BackingError::Other(format!("heap extension {index} is shorter than {len} bytes"))),
            None => Err(BackingError::NotFound(format!("heap extension {index} of {} does not exist", self.name))),
        }
    }

    fn remove_extension(&self, index: u32) {
        self.exts.lock().unwrap_or_else(|e| e.into_inner()).remove(&index);
    }

    fn remove_main(&self) {}

    fn name(&self) -> &str {
        &self.name
    }

    fn clone_backing(&self) -> Box<dyn Backing> {
        Box::new(self.clone())
    }
}
