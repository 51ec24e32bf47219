#![forbid(unsafe_code)]
//! DDict: a sharded, memory-bounded, persistent distributed dictionary
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
