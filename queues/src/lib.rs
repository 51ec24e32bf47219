#![forbid(unsafe_code)]
//! Queue, JoinableQueue, SimpleQueue and Pipe semantics on channels
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
