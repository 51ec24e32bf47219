//! Links between two engines on a simulated fabric, for the tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;
use transport_verbs::engine::{self, Engine, EngineConfig};
use transport_verbs::sim::{SimFabric, SimPort};
use transport_verbs::verbs::Port;

/// Longest any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// Two linked engines and their ports.
pub struct Pair {
    pub a: Engine,
    pub b: Engine,
    pub pa: Arc<SimPort>,
    pub pb: Arc<SimPort>,
}

/// A fresh simulated network of its own.
pub fn fabric() -> SimFabric {
    SimFabric::new(&test_support::unique_name("net")).unwrap()
}

/// Two engines on one fabric, `a` the initiator.
pub fn pair_with(ca: EngineConfig, cb: EngineConfig) -> Pair {
    test_support::watchdog::start();
    let f = fabric();
    let pa = f.open_sim().unwrap();
    let pb = f.open_sim().unwrap();
    let (conn, offer) = engine::offer(pa.clone() as Arc<dyn Port>, ca).unwrap();
    let (b, answer) = engine::accept(pb.clone() as Arc<dyn Port>, cb, &offer).unwrap();
    let a = conn.finish(&answer).unwrap();
    Pair { a, b, pa, pb }
}

/// Two engines with `cfg` on both sides.
pub fn pair(cfg: EngineConfig) -> Pair {
    pair_with(cfg.clone(), cfg)
}

/// A configuration without keepalive (no control messages of its own).
pub fn quiet() -> EngineConfig {
    EngineConfig { keepalive: None, ..EngineConfig::default() }
}

/// Deterministic bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
