//! The `dragon-agent` binary as a launcher starts it.

mod common;

use common::watchdog;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use transport_tcp::{Client, Secret};

fn agent(secret: Option<&Secret>, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dragon-agent"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    match secret {
        Some(s) => cmd.env("DRAGON_RUN_SECRET", s.to_hex()),
        None => cmd.env_remove("DRAGON_RUN_SECRET"),
    };
    cmd.spawn().expect("start dragon-agent")
}

#[test]
fn serves_until_its_launcher_goes() {
    // A hang (say, an agent that outlives its launcher) aborts the test.
    let _wd = watchdog("serves_until_its_launcher_goes", Duration::from_secs(300));
    let secret = Secret::random();
    let mut a = agent(Some(&secret), &["--listen", "127.0.0.1:0"]);
    let mut line = String::new();
    BufReader::new(a.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening ").expect("the listening line").to_owned();
    let ch = transport_shm::channel::create(&channels_core::ChannelOptions::new()).unwrap();
    let mut c = Client::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    let id = c.attach(&ch.handle().to_bytes()).unwrap();
    c.send(id, b"via the binary", Some(Duration::from_secs(5))).unwrap();
    assert_eq!(&*ch.recv_timeout(Duration::from_secs(5)).unwrap(), b"via the binary");
    // The launcher goes: stdin closes, the agent ends.
    drop(a.stdin.take());
    let status = a.wait().unwrap();
    assert!(status.success());
    assert!(c.ping().is_err(), "the connection went with the agent");
    ch.destroy();
}

#[test]
fn refuses_to_start_without_a_secret_or_an_address() {
    let _wd = watchdog("refuses_to_start", Duration::from_secs(300));
    for (secret, args, says) in [
        (None, vec!["--listen", "127.0.0.1:0"], "DRAGON_RUN_SECRET"),
        (Some(Secret::random()), vec!["--listen", "nowhere"], "--listen"),
        (Some(Secret::random()), vec![], "--listen"),
    ] {
        let out = agent(secret.as_ref(), &args).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}
