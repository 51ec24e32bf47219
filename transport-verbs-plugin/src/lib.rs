//! The RDMA transport as a plugin: `libdragon_transport_verbs.so` exports
//! `dragon_transport_v1` over `transport-verbs`' client, every operation
//! served by a verbs server on the channel's node (the implementation and
//! its config string are in `transport_verbs::plugin`).

pub use transport_verbs::plugin::{VerbsChannel, VerbsTransport};

transport_abi::export_transport!(VerbsTransport);
