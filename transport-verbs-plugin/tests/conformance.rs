//! The transport conformance suite against `libdragon_transport_verbs.so`,
//! loaded through the real loading path, on the simulated fabric: this test
//! process runs a verbs server (node 1 of the run) on a simulated network of
//! its own, and every transport the suite opens (in this process and in its
//! child process) is an RDMA link to it.
//!
//! On real devices, a site runs the same suite against a server on another
//! node (`docs/rdma.md`): with `DRAGON_CONFORMANCE_CONFIG` set, no local
//! server is started and the config names the remote one.

use std::sync::OnceLock;
use transport_abi::conformance::{built_library, Target, CONFIG_ENV};
use transport_tcp::auth::Secret;
use transport_verbs::boot::FabricSpec;
use transport_verbs::engine::EngineConfig;
use transport_verbs::server::{Server, ServerConfig};

fn config() -> String {
    if let Ok(c) = std::env::var(CONFIG_ENV) {
        return c;
    }
    static CONFIG: OnceLock<(Server, String)> = OnceLock::new();
    let (_, config) = CONFIG.get_or_init(|| {
        let net = test_support::unique_name("conformance");
        let secret = Secret::random();
        let cfg = ServerConfig {
            fabric: FabricSpec::Sim(net.clone()),
            device: None,
            secret: secret.clone(),
            node: 1,
            address: "verbs-node-1".into(),
            engine: EngineConfig::default(),
        };
        let server = Server::start(&format!("unix:dragon-test-{net}"), cfg).expect("a verbs server");
        let config = format!("fabric=sim:{net} peer={} secret={}", server.address(), secret.to_hex());
        (server, config)
    });
    config.clone()
}

transport_abi::transport_conformance_tests!(Target::file(built_library("dragon_transport_verbs"), &config()));
