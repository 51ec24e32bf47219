#![allow(unused_imports, dead_code)]
//! The one place that names atomics, `UnsafeCell` and spin hints.
//!
//! Under `--cfg dragon_loom` every type here comes from loom, so the same
//! ring, allocator and wake code is model-checked with threads standing in
//! for processes. Everything else in the crate imports from this module
//! (`scripts/check-sync-facade` enforces it).
#![allow(clippy::disallowed_types)]

#[cfg(not(dragon_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

#[cfg(dragon_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Hint to the CPU that we are spinning.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(dragon_loom))]
    std::hint::spin_loop();
    #[cfg(dragon_loom)]
    loom::thread::yield_now();
}

/// Give the rest of the time slice away.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(dragon_loom))]
    std::thread::yield_now();
    #[cfg(dragon_loom)]
    loom::thread::yield_now();
}
