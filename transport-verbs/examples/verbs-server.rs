//! A verbs server of this machine's channels, on its own: the other end of
//! a two-node conformance run of `libdragon_transport_verbs.so` on real
//! RDMA devices (`docs/rdma.md`, "Checking it on your fabric").
//!
//! ```text
//! verbs-server [--listen HOST:PORT] [--secret-file PATH] [--device NAME]
//!              [--fabric ibv|sim:NAME] [--node N]
//! ```
//!
//! Without `--secret-file` it makes a secret and writes it to
//! `verbs-secret` in the working folder (mode 0600). It prints the config
//! string a client passes to the plugin, then serves until its standard
//! input ends (Ctrl-D, or Enter), and removes its shared-memory files.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use transport_tcp::auth::Secret;
use transport_verbs::boot::FabricSpec;
use transport_verbs::engine::EngineConfig;
use transport_verbs::server::{Server, ServerConfig};

fn usage(why: &str) -> ! {
    eprintln!("verbs-server: {why}");
    eprintln!(
        "usage: verbs-server [--listen HOST:PORT] [--secret-file PATH] [--device NAME] [--fabric ibv|sim:NAME] [--node N]"
    );
    std::process::exit(2)
}

fn main() {
    let (mut listen, mut secret_file, mut device, mut fabric, mut node) =
        ("0.0.0.0:7470".to_owned(), None, None, "ibv".to_owned(), 1u32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--listen" => listen = value(),
            "--secret-file" => secret_file = Some(value()),
            "--device" => device = Some(value()),
            "--fabric" => fabric = value(),
            "--node" => node = value().parse().unwrap_or_else(|_| usage("--node needs a number")),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let fabric = FabricSpec::parse(&fabric).unwrap_or_else(|e| usage(&e));
    let (secret, secret_file, write) = match secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| usage(&format!("cannot read {path}: {e}")));
            let s = Secret::from_hex(&text).unwrap_or_else(|| usage(&format!("{path} does not hold 64 hex digits")));
            (s, path, false)
        }
        None => (Secret::random(), "verbs-secret".to_owned(), true),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let cfg = ServerConfig {
        fabric: fabric.clone(),
        device,
        secret: secret.clone(),
        node,
        address: host.clone(),
        engine: EngineConfig::default(),
    };
    let server = match Server::start(&listen, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("verbs-server: {e}");
            std::process::exit(1)
        }
    };
    if write {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&secret_file)
            .unwrap_or_else(|e| usage(&format!("cannot write {secret_file}: {e}")));
        std::io::Write::write_all(&mut f, secret.to_hex().as_bytes()).unwrap_or_else(|e| usage(&e.to_string()));
    }
    let port = server.address().rsplit(':').next().unwrap_or("0").to_owned();
    let fabric = match &fabric {
        FabricSpec::Sim(n) => format!(" fabric=sim:{n}"),
        FabricSpec::Ibverbs { .. } => String::new(),
    };
    println!("serving on {}; clients use:", server.address());
    println!("  peer={host}:{port} secret_file={secret_file}{fabric}");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(server);
    transport_shm::segment::cleanup_own_run();
}
