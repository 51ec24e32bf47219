//! The one place that names atomics, `UnsafeCell` and spin hints.
//!
//! Under `--cfg dragon_loom` every type here comes from loom, so the ring,
//! allocator, attachment table, wake handshake, lent blocks, synchronisation
//! objects and shard table are model-checked with threads standing in for
//! processes. Every crate with shared-memory code names atomics only
//! through this module: `clippy.toml` disallows the standard library's
//! atomic types and `UnsafeCell` everywhere else (`make lint`).
//!
//! The types are aliases, not re-exports, so that clippy's
//! `disallowed-types` sees the facade's name at every use and the standard
//! library's name only here.
//!
//! [`local`] holds the standard atomics for process-local statics (caches,
//! counters, feature flags) that never live in shared memory and that
//! loom cannot model (loom atomics exist only inside a model run).
//!
//! Nothing in shared memory needs an `UnsafeCell` today (every shared word
//! is an atomic); `clippy.toml` forbids the standard one, so one that is
//! ever needed is added here, as loom's under `--cfg dragon_loom`.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[cfg(not(dragon_loom))]
mod imp {
    pub use std::sync::atomic::{fence as raw_fence, Ordering};
    pub type AtomicU8 = std::sync::atomic::AtomicU8;
    pub type AtomicU32 = std::sync::atomic::AtomicU32;
    pub type AtomicU64 = std::sync::atomic::AtomicU64;
}

#[cfg(dragon_loom)]
mod imp {
    pub use loom::sync::atomic::{fence as raw_fence, Ordering};
    pub type AtomicU8 = loom::sync::atomic::AtomicU8;
    pub type AtomicU32 = loom::sync::atomic::AtomicU32;
    pub type AtomicU64 = loom::sync::atomic::AtomicU64;
}

pub use imp::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// A memory fence (a function, not a re-export, so that clippy's
/// `disallowed-methods` sees the facade's name at every call).
#[inline(always)]
pub fn fence(order: Ordering) {
    imp::raw_fence(order);
}

/// Hint to the CPU that we are spinning.
#[inline]
pub fn spin_loop() {
    #[cfg(not(dragon_loom))]
    std::hint::spin_loop();
    #[cfg(dragon_loom)]
    loom::thread::yield_now();
}

/// Give the rest of the time slice away.
#[inline]
pub fn yield_now() {
    #[cfg(not(dragon_loom))]
    std::thread::yield_now();
    #[cfg(dragon_loom)]
    loom::thread::yield_now();
}

/// Standard atomics for process-local statics: never placed in shared
/// memory, never model-checked (they work the same under loom).
pub mod local {
    pub use std::sync::atomic::Ordering;
    /// A process-local `AtomicBool`.
    pub type AtomicBool = std::sync::atomic::AtomicBool;
    /// A process-local `AtomicU32`.
    pub type AtomicU32 = std::sync::atomic::AtomicU32;
    /// A process-local `AtomicU64`.
    pub type AtomicU64 = std::sync::atomic::AtomicU64;
    /// A process-local `AtomicUsize`.
    pub type AtomicUsize = std::sync::atomic::AtomicUsize;
}
