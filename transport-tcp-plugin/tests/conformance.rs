//! The transport conformance suite against `libdragon_transport_tcp.so`,
//! loaded through the real loading path, through node services: this test
//! process runs the services of a two-node run on loopback, and the plugin
//! talks to node 0's service, which carries every operation to node 1, where
//! the channels live (child processes reach the same service: the config
//! string travels to them).

use runtime::testing::LocalCluster;
use std::sync::OnceLock;
use std::time::Duration;
use transport_abi::conformance::{built_library, Target};

fn config() -> String {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    let c = CLUSTER.get_or_init(|| LocalCluster::start(2, Duration::from_secs(10)).expect("two node services"));
    format!("service={} node=1", c.service(0))
}

transport_abi::transport_conformance_tests!(Target::file(built_library("dragon_transport_tcp"), &config()));
