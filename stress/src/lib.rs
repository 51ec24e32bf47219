//! Soak and crash-injection runs: exactly-once delivery, no leaks
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
