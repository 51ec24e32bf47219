//! Channels core: lock-free, crash-safe message channels in shared memory.
//!
//! See `docs/architecture.md` for the memory layout, the ring algorithm, the
//! wake protocol and the crash rules.

pub mod futex;
pub mod handle;
pub mod owner;
pub mod region;
pub(crate) mod sync;
pub mod syncobj;
