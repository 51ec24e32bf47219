//! `libdragon_transport_verbs.so` through the real loading path when
//! things go wrong: no RDMA device (the clean fallback), a wrong secret, no
//! server, a server that dies while calls wait on it, a bad config.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use test_support::child::{self, Child};
use transport_abi::conformance::built_library;
use transport_abi::loader::{ChannelAttrs, ErrorKind, Plugin, PluginError};
use transport_shm::segment::RunId;
use transport_tcp::auth::Secret;
use transport_verbs::boot::FabricSpec;
use transport_verbs::engine::EngineConfig;
use transport_verbs::server::{Server, ServerConfig};
use transport_verbs::verbs::{Fabric, VerbsError};

const WAIT: Duration = Duration::from_secs(30);

fn plugin() -> Plugin {
    test_support::watchdog::start();
    Plugin::load(built_library("dragon_transport_verbs")).unwrap()
}

fn open_err(config: &str) -> PluginError {
    match plugin().open(config) {
        Ok(_) => panic!("opened with {config}"),
        Err(e) => e,
    }
}

fn server(net: &str, secret: &Secret) -> Server {
    let cfg = ServerConfig {
        fabric: FabricSpec::Sim(net.into()),
        device: None,
        secret: secret.clone(),
        node: 1,
        address: "verbs-node-1".into(),
        engine: EngineConfig::default(),
    };
    Server::start(&format!("unix:dragon-test-{}", test_support::unique_name("verbs")), cfg).unwrap()
}

#[test]
#[ignore = "entry point of child processes"]
fn child_entry() {
    child::entry(|role| {
        assert_eq!(role, "server");
        let s = server(&child::arg("NET"), &Secret::from_hex(&child::arg("SECRET")).unwrap());
        println!("listening {}", s.address());
        loop {
            std::thread::park();
        }
    });
}

#[test]
fn without_rdma_core_open_says_no_rdma_device() {
    let hex = Secret::random().to_hex();
    let e = open_err(&format!("fabric=ibv lib=/nonexistent/libibverbs.so.1 peer=unix:x secret={hex}"));
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.message().starts_with("no RDMA device: "), "{e}");
}

#[test]
fn without_a_device_the_default_fabric_is_a_clean_fallback() {
    let none = match transport_verbs::ibv::IbvFabric::load(None) {
        Err(_) => true,
        Ok(f) => matches!(f.ports(), Err(VerbsError::NoDevice(_))),
    };
    if !none {
        eprintln!("this machine has RDMA devices: nothing to check here");
        return;
    }
    let e = open_err(&format!("peer=unix:x secret={}", Secret::random().to_hex()));
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.message().starts_with("no RDMA device: "), "{e}");
}

#[test]
fn a_wrong_secret_or_no_server_is_a_clear_error() {
    let net = test_support::unique_name("net");
    let s = server(&net, &Secret::random());
    let e = open_err(&format!("fabric=sim:{net} peer={} secret={}", s.address(), Secret::random().to_hex()));
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.message().contains("authentication failed"), "{e}");
    let e = open_err(&format!("fabric=sim:{net} peer=unix:dragon-no-such-server secret={}", Secret::random().to_hex()));
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(e.message().contains("cannot reach the verbs server"), "{e}");
    // A server on another simulated network: it cannot link.
    let other = test_support::unique_name("net");
    let secret = Secret::random();
    let s = server(&other, &secret);
    let e = open_err(&format!("fabric=sim:{net} peer={} secret={}", s.address(), secret.to_hex()));
    assert!(e.message().contains("not on this simulated network"), "{e}");
}

#[test]
fn a_bad_config_is_invalid() {
    for c in ["colour=blue", "peer=unix:x", "peer=unix:x secret=12", "peer=unix:x fabric=ofi secret=00"] {
        assert_eq!(open_err(c).kind(), ErrorKind::Invalid, "{c}");
    }
}

#[test]
fn a_server_that_dies_fails_the_calls_waiting_on_it() {
    let p = plugin();
    let net = test_support::unique_name("net");
    let secret = Secret::random();
    // The server's files belong to a run of their own, removed at the end.
    let run = RunId::new_owned_by_me();
    let mut c = Child::start(
        child::command("child_entry", "server")
            .env("NET", &net)
            .env("SECRET", secret.to_hex())
            .env(transport_shm::segment::RUN_ENV, run.as_str())
            .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(c.stdout().unwrap()).lines();
    let address = loop {
        let l = lines.next().expect("the server started").unwrap();
        if let Some(a) = l.strip_prefix("listening ") {
            break a.to_owned();
        }
    };
    let tr = p.open(&format!("fabric=sim:{net} peer={address} secret={}", secret.to_hex())).unwrap();
    let ch = tr.create_channel(&ChannelAttrs { capacity: 4, ..ChannelAttrs::default() }).unwrap();
    ch.send(b"before", Some(WAIT)).unwrap();
    assert_eq!(ch.recv(Some(WAIT)).unwrap(), b"before");
    let waiter = std::thread::spawn(move || {
        let e = ch.recv(Some(WAIT)).unwrap_err();
        (e, ch)
    });
    // Kill the server while the receive waits there (or is on its way:
    // either way it must fail, not hang).
    c.kill();
    let (e, ch) = waiter.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(e.message().contains("lost"), "{e}");
    // Later calls fail at once, the same way.
    let e = ch.send(b"after", Some(WAIT)).unwrap_err();
    assert!(e.message().contains("lost"), "{e}");
    drop((ch, tr));
    transport_shm::segment::cleanup_run(&run);
}
