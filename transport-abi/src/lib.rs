//! Transport plugins: the versioned C ABI every transport implements, the
//! loader that finds and checks plugins, and helpers for writing one. The
//! only crate that loads shared libraries (`libloading`).
//!
//! - [`abi`]: the `#[repr(C)]` table, codes, capability bits and the
//!   contract of every function (the C header is generated from it).
//! - [`loader`]: discovery ([`Discovery`]), loading and checking
//!   ([`Plugin::load`]), and safe wrappers ([`Transport`], [`PluginChannel`],
//!   [`PluginMessage`]).
//! - [`registry`]: the transports of this program by name: linked in
//!   ([`registry::register`]) or loaded ([`registry::resolve`]).
//! - [`export`]: implement two traits, call [`export_transport!`](crate::export_transport)
//!   and a Rust `cdylib` is a plugin.
//! - `conformance` (feature `conformance`): the test suite every plugin
//!   must pass, run through the real loading path.
//!
//! `docs/plugin-guide.md` is the guide for plugin authors.

pub mod abi;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod export;
pub mod loader;
pub mod registry;

pub use loader::{
    check_table, library_file_name, ChannelAttrs, Discovery, ErrorKind, LoadError, Plugin, PluginChannel, PluginError,
    PluginMessage, PollEvents, TableInfo, Transport, CONFIG_ENV, PATH_ENV,
};
