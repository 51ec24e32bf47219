//! Per-node runtime: process launch, naming, membership, cleanup
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
