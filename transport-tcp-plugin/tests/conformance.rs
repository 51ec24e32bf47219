//! The transport conformance suite against `libdragon_transport_tcp.so`,
//! loaded through the real loading path, talking to an agent this test
//! process runs on loopback (its child processes reach the parent's agent:
//! the config string travels to them).

use std::sync::OnceLock;
use transport_abi::conformance::{built_library, Target};
use transport_tcp::{Agent, Secret};

fn config() -> String {
    static AGENT: OnceLock<(Agent, Secret)> = OnceLock::new();
    let (agent, secret) = AGENT.get_or_init(|| {
        let secret = Secret::random();
        (Agent::start("127.0.0.1:0".parse().unwrap(), secret.clone()).expect("agent"), secret)
    });
    format!("agent={} secret={}", agent.local_addr(), secret.to_hex())
}

transport_abi::transport_conformance_tests!(Target { path: built_library("dragon_transport_tcp"), config: config() });
