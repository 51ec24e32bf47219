#![forbid(unsafe_code)]
//! Task distribution: a pool of workers pulling tasks from a shared channel
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
