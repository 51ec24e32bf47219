//! The protocol engine between two processes on the simulated fabric: the
//! test binary re-runs itself as the peer; the two exchange addresses over
//! the child's standard input and output (standing in for the
//! authenticated stream).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use test_support::child::{self, Child};
use transport_verbs::engine::{self, EngineConfig, EngineError};
use transport_verbs::sim::{self, SimFabric};
use transport_verbs::verbs::Port;

const ENTRY: &str = "child_entry";
const NET_ENV: &str = "DRAGON_TEST_SIM_NET";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn cfg() -> EngineConfig {
    EngineConfig { keepalive: Some(Duration::from_millis(50)), ..EngineConfig::default() }
}

#[test]
#[ignore = "entry point of child processes"]
fn child_entry() {
    child::entry(|role| {
        let net = child::arg(NET_ENV);
        let port = SimFabric::new(&net).unwrap().open_sim().unwrap() as Arc<dyn Port>;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).unwrap();
        let (e, answer) = engine::accept(port, cfg(), &unhex(line.trim())).unwrap();
        println!("answer {}", hex(&answer));
        std::io::stdout().flush().unwrap();
        match role {
            // Echo every message reversed until the peer closes.
            "echo" => loop {
                match e.recv(None) {
                    Ok(m) => {
                        let mut v = m.to_vec();
                        v.reverse();
                        e.send(&[&v], None).unwrap();
                    }
                    Err(EngineError::PeerClosed) => return 0,
                    Err(err) => panic!("{err}"),
                }
            },
            // Say one thing, then wait to be killed.
            "hang" => {
                e.send(&[b"ready"], None).unwrap();
                loop {
                    std::thread::park();
                }
            }
            _ => 3,
        }
    });
}

/// Start a child playing `role` on network `net` and link to it.
fn linked(role: &str, net: &str) -> (Child, engine::Engine) {
    test_support::watchdog::start_with(transport_shm::segment::cleanup_own_run);
    // The child's segments belong to this process's run (it inherits it).
    transport_shm::segment::RunId::current();
    let mut c =
        Child::start(child::command(ENTRY, role).env(NET_ENV, net).stdin(Stdio::piped()).stdout(Stdio::piped()));
    let port = SimFabric::new(net).unwrap().open_sim().unwrap() as Arc<dyn Port>;
    let (mut stdin, stdout) = (c.stdin().unwrap(), c.stdout().unwrap());
    let e = engine::connect(port, cfg(), |offer| {
        writeln!(stdin, "{}", hex(offer))?;
        // The test harness may print lines of its own first.
        for line in BufReader::new(stdout).lines() {
            if let Some(a) = line?.strip_prefix("answer ") {
                return Ok(unhex(a.trim()));
            }
        }
        Err(std::io::Error::other("the child ended without answering"))
    })
    .unwrap();
    (c, e)
}

#[test]
fn two_processes_exchange_messages_of_every_size() {
    let net = test_support::unique_name("mp");
    let (mut c, e) = linked("echo", &net);
    let sizes = [0usize, 1, 100, 5000, 8192, 100_000, 1 << 20, 3 << 20];
    for round in 0..3u64 {
        for (i, &n) in sizes.iter().enumerate() {
            e.send(&[&pattern(n, round * 100 + i as u64)], Some(WAIT)).unwrap();
        }
        for (i, &n) in sizes.iter().enumerate() {
            let mut back = e.recv(Some(WAIT)).unwrap().to_vec();
            back.reverse();
            assert!(back == pattern(n, round * 100 + i as u64), "message {i} of round {round} damaged");
        }
    }
    // Many small ones, more than the window, in flight at once.
    let e = Arc::new(e);
    let tx = e.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..2000u32 {
            tx.send(&[&i.to_be_bytes()], Some(WAIT)).unwrap();
        }
    });
    for i in 0..2000u32 {
        let m = e.recv(Some(WAIT)).unwrap();
        assert_eq!(m[..], i.to_le_bytes(), "reversed big-endian is little-endian");
    }
    sender.join().unwrap();
    let e = Arc::into_inner(e).unwrap();
    e.close();
    c.expect_success();
}

#[test]
fn a_killed_peer_process_is_a_lost_peer() {
    let net = test_support::unique_name("mp");
    let (mut c, e) = linked("hang", &net);
    assert_eq!(&e.recv(Some(WAIT)).unwrap()[..], b"ready");
    let pid = c.pid();
    c.kill();
    // Only the keepalive can notice: nothing else is sent.
    let err = e.recv(Some(WAIT)).unwrap_err();
    assert!(matches!(&err, EngineError::PeerLost(m) if m.contains("retry counter exceeded")), "{err:?}");
    assert!(e.send(&[b"x"], Some(WAIT)).is_err());
    drop(e);
    // The dead process's simulated resources are left; they are removed.
    let left = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().contains("-v"))
        .filter(|f| f.file_name().to_string_lossy().contains(&format!("-{pid:x}-")))
        .count();
    assert!(left > 0, "the killed peer held simulated resources");
    assert!(sim::cleanup_dead() >= left);
}
