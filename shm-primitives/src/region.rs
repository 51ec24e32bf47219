//! Memory regions the ring, allocator and synchronisation objects live in.
//!
//! Everything placed in a region is `#[repr(C)]` and addressed by byte
//! offsets from the region's base, never by pointers, because every process
//! maps the region at a different address. The same code runs on a
//! [`HeapRegion`] (unit tests, loom models) and on shared memory
//! (`transport-shm`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment every region guarantees for its base address.
pub const REGION_ALIGN: usize = 4096;

/// A contiguous, zero-initialised-on-creation block of memory that may be
/// shared with other threads or processes.
///
/// # Safety
///
/// Implementors promise that `base()..base()+len()` stays mapped, readable
/// and writable for as long as the value lives, that `base()` is aligned to
/// [`REGION_ALIGN`], and that `base()` never changes.
pub unsafe trait Region: Send + Sync {
    /// First byte of the region.
    fn base(&self) -> NonNull<u8>;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A region on this process's heap: for tests and for channels between
/// threads of one process.
#[derive(Debug)]
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory; all shared access to it goes through
// atomics or through the ownership protocols of the structures placed in it.
unsafe impl Send for HeapRegion {}
// SAFETY: as above.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// A zeroed region of `len` bytes (at least one page).
    pub fn new(len: usize) -> HeapRegion {
        let layout = Layout::from_size_align(len.max(REGION_ALIGN), REGION_ALIGN).expect("region too large");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapRegion { ptr, layout }
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the allocation lives until drop, is aligned to REGION_ALIGN and
// never moves.
unsafe impl Region for HeapRegion {
    fn base(&self) -> NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

// SAFETY: forwards to the inner region, which upholds the contract.
unsafe impl<R: Region + ?Sized> Region for std::sync::Arc<R> {
    fn base(&self) -> NonNull<u8> {
        (**self).base()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}
