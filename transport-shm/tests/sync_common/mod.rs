//! Helpers for the multi-process tests of the synchronisation objects.
//!
//! A test spawns children by re-running its own test binary
//! (`test_support::child`, entry test `child_entry`); [`watchdog`] arms the
//! binary's watchdog, which removes the run's segments before it aborts a
//! hung binary.
#![allow(dead_code, unused_imports)]

pub use test_support::child::{arg, entry as child_entry, Child};
pub use test_support::eventually;
use transport_shm::segment::{cleanup_own_run, RunId, Segment};

/// Arm the binary's watchdog (every test calls this first).
pub fn watchdog() {
    test_support::watchdog::start_with(cleanup_own_run);
}

/// A scratch shared-memory segment (counters, flags), unlinked on drop.
pub struct Scratch {
    pub seg: Segment,
    owner: bool,
}

impl Scratch {
    /// A new zeroed page in the current run.
    pub fn create() -> Scratch {
        let name = RunId::current().segment_name("t");
        Scratch { seg: Segment::create(&name, 4096).expect("scratch segment"), owner: true }
    }

    /// Map a scratch segment created by another process.
    pub fn open(name: &str) -> Scratch {
        Scratch { seg: Segment::open(name).expect("open scratch segment"), owner: false }
    }

    /// The segment's name.
    pub fn name(&self) -> String {
        self.seg.name().to_owned()
    }

    /// The `i`-th 64-bit word.
    fn word(&self, i: usize) -> *mut u64 {
        use shm_primitives::region::Region;
        assert!((i + 1) * 8 <= self.seg.len());
        // SAFETY: in bounds (checked above) and 8-byte aligned (the mapping
        // is page aligned).
        unsafe { self.seg.base().as_ptr().cast::<u64>().add(i) }
    }

    /// Read word `i` (volatile: other processes write it).
    pub fn get(&self, i: usize) -> u64 {
        // SAFETY: see `word`; callers order accesses with the objects under
        // test, which is what these tests check.
        unsafe { self.word(i).read_volatile() }
    }

    /// Write word `i`.
    pub fn set(&self, i: usize, v: u64) {
        // SAFETY: see `get`.
        unsafe { self.word(i).write_volatile(v) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.seg.unlink();
        }
    }
}

/// Whether a segment name still exists in /dev/shm.
pub fn exists(name: &str) -> bool {
    std::path::Path::new(transport_shm::segment::SHM_DIR).join(name).exists()
}

/// Unlinks the segments of the given handles on drop, so a failing test
/// leaves nothing in /dev/shm either.
pub struct Unlink(Vec<String>);

impl Unlink {
    /// Guard the segments of `handles`.
    pub fn of(handles: &[&shm_primitives::handle::Handle]) -> Unlink {
        Unlink(handles.iter().map(|h| h.segment.clone()).collect())
    }
}

impl Drop for Unlink {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = transport_shm::segment::unlink(name);
        }
    }
}
