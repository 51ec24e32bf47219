//! The transport conformance suite against `libdragon_transport_shm.so`,
//! loaded from cargo's target folder through the real loading path
//! (`DRAGON_CONFORMANCE_PLUGIN=/path/lib.so` runs it against another plugin).

use transport_abi::conformance::{built_library, Target};

transport_abi::transport_conformance_tests!(Target::file(built_library("dragon_transport_shm"), ""));
