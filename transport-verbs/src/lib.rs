//! Off-node transport over RDMA (ibverbs), optional; falls back to TCP
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
