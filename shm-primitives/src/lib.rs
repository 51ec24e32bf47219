//! Shared-memory primitives: what every object placed in shared memory
//! (channels, synchronisation objects, DDict shards) is built from.
//!
//! - [`sync`]: the one place that names atomics and `UnsafeCell`; under
//!   `--cfg dragon_loom` they come from loom, so the code above is
//!   model-checked with threads standing in for processes.
//! - [`futex`]: sleeping and waking on a 32-bit word in shared memory, and
//!   [`Deadline`](futex::Deadline)s.
//! - [`region`]: the memory an object lives in ([`Region`], [`HeapRegion`]).
//! - [`process`]: who holds what ([`ProcessId`]), whether it still lives, and
//!   the host it runs on.
//! - [`fault`]: crash points for multi-process tests.
//! - [`handle`]: the byte string another process attaches to any object by.
//! - [`filelock`]: exclusive advisory locks on files (one writer per file).
//!
//! See `docs/architecture.md` for how the crates fit together.

pub mod fault;
pub mod filelock;
pub mod futex;
pub mod handle;
pub mod process;
pub mod region;
pub mod sync;

pub use handle::{Handle, HandleError, Kind};
pub use process::ProcessId;
pub use region::{HeapRegion, Region};
