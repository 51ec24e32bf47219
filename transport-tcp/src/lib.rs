//! Off-node transport over TCP: an agent per node serves the channel
//! operations of processes on other nodes on its node's channels.
//!
//! This is the first part of multi-node support, usable from Rust: the
//! frame format ([`frame`]), mutual authentication with the run's secret
//! ([`auth`]), the requests and replies ([`proto`]), the agent (a mio event
//! loop, [`agent`]), a blocking client ([`client`]) and the transport plugin
//! implementation ([`plugin`], exported by crate `transport-tcp-plugin`).
//! It is tested over loopback, between two network namespaces, and with the
//! transport conformance suite. Not done yet: the agent launched per node
//! by the runtime (SSH, Slurm), and its use from Python.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod agent;
pub mod auth;
pub mod client;
pub mod frame;
pub mod gate;
pub mod link;
pub mod local;
pub mod plugin;
pub mod proto;
pub mod serve;
pub mod waiters;

pub use agent::Agent;
pub use auth::Secret;
pub use client::{Client, TcpError};
