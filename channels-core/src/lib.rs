//! Channels core: lock-free, crash-safe message channels in shared memory.
//!
//! The ring (Vyukov's bounded queue, made crash-safe), the block allocator
//! ([`alloc`]), the attachment table ([`attach`]), the wake protocol,
//! blocks lent between processes ([`lend`]) and select, on any
//! [`Region`](shm_primitives::Region) and [`Backing`]. Futex waits, process
//! identity, regions and handles come from `shm-primitives`.
//!
//! See `docs/architecture.md` for the memory layout, the ring algorithm, the
//! wake protocol and the crash rules.

pub mod alloc;
pub mod attach;
pub mod backing;
pub mod channel;
pub mod error;
pub mod layout;
pub mod lend;
pub(crate) mod ring;
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
