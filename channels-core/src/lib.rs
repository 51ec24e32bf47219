//! Channels core: lock-free, crash-safe message channels in shared memory.
//!
//! See `docs/architecture.md` for the memory layout, the ring algorithm, the
//! wake protocol and the crash rules.

pub mod alloc;
pub mod attach;
pub mod backing;
pub mod channel;
pub mod error;
pub mod fault;
pub mod futex;
pub mod handle;
pub mod kv;
pub mod layout;
pub mod lend;
pub mod owner;
pub mod plugin;
pub mod region;
pub(crate) mod ring;
pub(crate) mod sync;
pub mod syncobj;
pub(crate) mod wake;

#[cfg(all(test, dragon_loom))]
mod tests;

pub use alloc::{AllocError, AllocStats};
pub use attach::Roles;
pub use backing::{Backing, BackingError, HeapBacking};
pub use channel::{
    select_any, select_recv, select_recv_interruptible, select_send, Block, Channel, ChannelOptions, Dir, Message,
    RecoveryReport,
};
pub use error::{
    ChannelError, RecvError, RecvTimeoutError, SelectError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use handle::{Handle, HandleError, Kind};
