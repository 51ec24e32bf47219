//! Off-node transport over RDMA (verbs).
//!
//! - [`verbs`]: the narrow interface over the verbs calls the protocol
//!   needs (devices, ports and GIDs, protection domain, memory
//!   registration, completion queues, RC queue pairs and their states,
//!   sends, RDMA writes with immediate data, RDMA reads), with two
//!   implementations: [`ibv`], over rdma-core's `libibverbs`, and [`sim`],
//!   a simulated fabric in shared memory with injectable failures;
//! - [`engine`]: the protocol between two endpoints over that interface:
//!   set-up from addresses exchanged over an existing authenticated stream,
//!   small messages inline or by RDMA write with immediate data into
//!   pre-posted receives, large ones by RDMA read from the sender's
//!   registered buffer, a registration cache ([`regcache`]), credit-based
//!   flow control ([`flow`]), a clear error for every failed work request
//!   or lost peer, teardown that deregisters everything; its wire formats
//!   are in [`wire`];
//! - [`boot`]: setting a link up over an existing stream (authentication
//!   with the run's secret, the address exchange), [`server`]: a node's
//!   channels served over RDMA links, and [`plugin`]: the transport plugin
//!   over such a link (`libdragon_transport_verbs.so`, crate
//!   `transport-verbs-plugin`).
//!
//! # Why rdma-core is loaded at run time
//!
//! The real implementation opens `libibverbs.so.1` with `libloading`
//! instead of linking it (as the `ibverbs` crate does, through
//! `ibverbs-sys`):
//!
//! - the transport must load, and say "no RDMA device" so that its caller
//!   falls back to TCP, on any machine: one without RDMA hardware, and one
//!   without rdma-core installed at all, where a library linked against
//!   `libibverbs.so.1` would not even load (the dynamic linker fails before
//!   any code runs);
//! - building needs nothing beyond Rust: no `libibverbs-dev`, no bindgen
//!   and libclang at build time, so every build (CI installs apt packages
//!   only; users build from source with cargo) is the same;
//! - the price is that the few structures passed to the library are
//!   declared here by hand, with the layout of rdma-core's `verbs.h`
//!   (a stable ABI: the library keeps it for its inline functions); their
//!   sizes are checked at compile time and their field offsets against the
//!   installed header by `tests/ibv_layout.rs`.
//!
//! This transport has not yet run on RDMA hardware: its protocol is tested
//! on [`sim`] (see `docs/rdma.md` for what the simulation models and the
//! command a site runs to check it on real devices).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod engine;
pub mod flow;
pub mod ibv;
pub mod plugin;
pub mod regcache;
pub mod server;
pub mod sim;
pub mod verbs;
pub mod wire;

pub use engine::{accept, connect, offer, Connector, Engine, EngineConfig, EngineError, EngineStats};
pub use verbs::{Fabric, Port, PortInfo, VerbsError};
