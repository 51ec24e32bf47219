//! The multi-node runtime: one service per node of a run.
//!
//! - [`hostlist`]: host lists as Slurm writes them (`nid[001-004,007]`)
//!   and host files;
//! - [`bootstrap`]: what a node service reads from its launcher;
//! - [`table`]: the node table the primary sends every node;
//! - [`proto`]: the services' requests beyond channel operations;
//! - [`launch`]: starting processes through the node's template;
//! - [`service`]: the node service itself (membership, relaying requests
//!   between nodes, serving channel operations and process starts, output
//!   forwarding, heartbeats, cleanup);
//! - [`cleanup`]: finding the run's leftover processes on a node;
//! - [`syncserve`], [`ddictserve`]: this node's synchronisation objects,
//!   memory blocks and DDicts as processes of other nodes use them;
//! - [`fabric`]: RDMA (verbs) or TCP to each peer, chosen without
//!   configuration.
//!
//! The launcher (`dragon --hostlist ...`) is in the Python package; it
//! starts `python -m dragon._node` on every node, which runs
//! [`service::main`].
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod cleanup;
pub mod ddictserve;
pub mod fabric;
pub mod fdstream;
pub mod hostlist;
pub mod launch;
pub mod proto;
pub mod service;
pub mod syncserve;
mod sys;
pub mod table;
pub mod testing;

pub use bootstrap::Bootstrap;
pub use hostlist::{expand as expand_hostlist, parse_hostfile, HostlistError};
