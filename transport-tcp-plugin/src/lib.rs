//! The TCP transport as a plugin: `libdragon_transport_tcp.so` exports
//! `dragon_transport_v1` over `transport-tcp`'s client, every operation
//! served by the agent of the channel's node (the implementation and its
//! config string are in `transport_tcp::plugin`).

pub use transport_tcp::plugin::{TcpChannel, TcpTransport};

transport_abi::export_transport!(TcpTransport);
