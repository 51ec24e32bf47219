//! Same-node transport: channels and synchronisation objects placed in named
//! POSIX shared-memory segments.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod segment;

pub use segment::{RunId, Segment, SegmentError};
