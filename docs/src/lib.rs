//! User, Rust, plugin-author and architecture guides; their Rust examples run as doc tests
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
