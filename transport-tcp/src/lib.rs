//! Off-node transport over TCP (mio): framing, flow control, authentication
//!
//! Not built yet: see the issue tracker. This crate is a placeholder so the
//! workspace shows the architecture from the start.
