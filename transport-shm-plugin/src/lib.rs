//! The same-node transport as a plugin: `libdragon_transport_shm.so`
//! exports `dragon_transport_v1` over `transport-shm`'s channels in named
//! shared-memory segments (the implementation and its config string are in
//! `transport_shm::plugin`).

pub use transport_shm::plugin::{ShmChannel, ShmTransport};

transport_abi::export_transport!(ShmTransport);
