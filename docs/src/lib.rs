//! The project's guides, compiled: every Rust example in them is a doc test
//! (`cargo test -p docs`), so the guides cannot drift from the API.
//!
//! The guides themselves are the Markdown files in `docs/`; this crate only
//! includes them.

#[doc = include_str!("../rust-guide.md")]
pub mod rust_guide {}

#[doc = include_str!("../ddict.md")]
pub mod ddict_guide {}

#[doc = include_str!("../plugin-guide.md")]
pub mod plugin_guide {}
