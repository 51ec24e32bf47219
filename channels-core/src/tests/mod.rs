//! Loom models (`RUSTFLAGS="--cfg dragon_loom" cargo test --release --lib loom`):
//! the real ring, attachment table, wake handshake, lent blocks and
//! free-list code with threads standing in for processes and tiny
//! capacities.

mod loom_alloc;
mod loom_attach;
mod loom_lend;
mod loom_ring;
mod loom_wake;

use crate::layout::SlotHeader;
use crate::ring::{ClaimReadError, ClaimWriteError, Ring};
use shm_primitives::region::{HeapRegion, Region};
use shm_primitives::sync::{AtomicU64, Ordering};
use std::mem::{align_of, size_of};
use std::ptr::NonNull;

/// Explore interleavings with a preemption bound (keeps each model fast).
pub(crate) fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(f);
}

/// A ring of `cap` slots in heap memory, its atomics made in place.
pub(crate) struct TestRing {
    _mem: HeapRegion,
    pub ring: Ring,
}

pub(crate) fn ring(cap: u64) -> TestRing {
    let word = size_of::<AtomicU64>().next_multiple_of(64);
    let stride = (size_of::<SlotHeader>() + 8).next_multiple_of(align_of::<SlotHeader>());
    let mem = HeapRegion::new(2 * word + cap as usize * stride);
    let base = mem.base().as_ptr();
    // SAFETY: the region is large enough and aligned for two words and the
    // slots; nobody else uses it yet.
    let ring = unsafe {
        base.cast::<AtomicU64>().write(AtomicU64::new(0));
        base.add(word).cast::<AtomicU64>().write(AtomicU64::new(0));
        Ring::init_slots(base.add(2 * word), stride, cap);
        Ring::new(
            NonNull::new(base.cast()).unwrap(),
            NonNull::new(base.add(word).cast()).unwrap(),
            NonNull::new(base.add(2 * word)).unwrap(),
            stride,
            cap,
        )
    };
    TestRing { _mem: mem, ring }
}

/// Send value `v` as attachment `att` (the value travels in `len`, which is
/// published by the stamp like a payload would be).
pub(crate) fn push(r: &Ring, att: u32, v: u64) -> Result<(), ClaimWriteError> {
    let c = r.claim_write(att)?;
    r.slot(c.index).len.store(v, Ordering::Relaxed);
    r.publish(c);
    Ok(())
}

/// Receive a value as attachment `att`.
pub(crate) fn pop(r: &Ring, att: u32) -> Result<u64, ClaimReadError> {
    pop_with(r, att, false)
}

/// Receive a value as attachment `att`; `fast_empty` as the channel passes
/// it while open (an unclaimed or half-written slot never reads `tail`).
pub(crate) fn pop_with(r: &Ring, att: u32, fast_empty: bool) -> Result<u64, ClaimReadError> {
    let c = r.claim_read(att, fast_empty, &mut || {})?;
    let v = r.slot(c.index).len.load(Ordering::Relaxed);
    r.release(c);
    Ok(v)
}
