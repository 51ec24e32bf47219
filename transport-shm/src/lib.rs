//! Same-node transport: channels and synchronisation objects placed in named
//! POSIX shared-memory segments.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod blocks;
pub mod channel;
pub mod memblock;
pub mod plugin;
pub mod segment;
pub mod syncobj;

pub use channel::{attach as attach_channel, create as create_channel, ShmBacking};
pub use segment::{keep_run, this_node, RunId, Segment, SegmentError};
pub use syncobj::{Shm, ShmBarrier, ShmCondition, ShmEvent, ShmLock, ShmRLock, ShmSemaphore, SyncShmError};
