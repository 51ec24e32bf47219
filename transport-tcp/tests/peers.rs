//! Peers that connect and never authenticate, or authenticate one byte a
//! second, cannot hold the agent's descriptors: they are closed at the
//! handshake deadline or make way for newer connections beyond the caps,
//! while an honest client connects, authenticates and works as usual.
//! Every wait is for an event (a close, a reply) under a generous watchdog;
//! nothing is measured in time.

mod common;

use bytes::BytesMut;
use common::{connect_from, wait_closed, watchdog};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;
use transport_tcp::agent::{Limits, MAX_UNAUTHENTICATED_PER_ADDR};
use transport_tcp::{auth, frame, Agent, Client, Secret};

const WATCHDOG: Duration = Duration::from_secs(300);
/// The honest client's timeout: generous, so that only a lock-out fails it.
const HONEST: Duration = Duration::from_secs(60);
/// Bytes of the agent's HELLO frame.
const HELLO_LEN: usize = 4 + frame::HEADER + 2 + 32;

fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// The frames in `bytes`: the HELLO, then the REJECT's reason if any.
fn reject_reason(bytes: &[u8]) -> Option<String> {
    let mut b = BytesMut::from(bytes);
    let hello = frame::decode(&mut b).ok()??;
    assert_eq!(hello.kind, auth::HELLO);
    let f = frame::decode(&mut b).ok()??;
    (f.kind == auth::REJECT).then(|| String::from_utf8_lossy(&f.payload).into_owned())
}

/// Descriptors process `pid` holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd").count()
}

/// An honest client's usual work: ping, create a channel, a message there
/// and back.
fn honest_work(addr: &str, secret: &Secret) -> (Client, u64) {
    let mut c = Client::connect(addr, secret, HONEST).expect("the honest client connects and authenticates");
    c.ping().unwrap();
    let (id, _handle) = c.create(8, 0, 0).unwrap();
    c.send(id, b"honest work", Some(HONEST)).unwrap();
    assert_eq!(c.recv(id, Some(HONEST)).unwrap(), b"honest work");
    (c, id)
}

/// A peer that sends a PROOF frame one byte a second (a "slowloris"),
/// until the agent closes the connection; returns what the agent sent.
fn slow_peer(mut s: TcpStream) -> io::Result<Vec<u8>> {
    let mut proof = BytesMut::new();
    frame::encode(&mut proof, auth::PROOF, 0, &[7u8; 64]);
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    for byte in proof.iter().cycle() {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if s.write_all(&[*byte]).is_err() {
                    // Closed under us: what is left to read says how.
                    return common::wait_closed(&mut s, WATCHDOG).map(|rest| [got, rest].concat());
                }
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("cycle() does not end")
}

#[test]
fn idle_and_slow_peers_are_closed_and_bounded_while_an_honest_client_works() {
    let _wd = watchdog("idle_and_slow_peers", WATCHDOG);
    const IDLE: usize = 300;
    const SLOW: usize = 5;
    // The agent as a node runs it (default limits), in a process of its
    // own so that its descriptors can be counted.
    let secret = Secret::random();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_dragon-agent"))
        .args(["--listen", "127.0.0.1:0"])
        .env("DRAGON_RUN_SECRET", secret.to_hex())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dragon-agent");
    let mut line = String::new();
    BufReader::new(agent.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening ").expect("the listening line").to_owned();
    let sa: SocketAddr = addr.parse().unwrap();
    let pid = agent.id();
    let base = fds(pid);

    // Slow peers from 127.0.0.3, idle ones from 127.0.0.2 (more than the
    // per-address cap), the honest client from 127.0.0.1.
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let s = connect_from(lo(3), sa).expect("a slow peer connects");
            std::thread::spawn(move || slow_peer(s))
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| connect_from(lo(2), sa).expect("an idle peer connects")).collect();
    let mut most = fds(pid);
    let (mut c, id) = honest_work(&addr, &secret);
    most = most.max(fds(pid));

    // Every idle peer is closed: made way for newer ones, or reached the
    // deadline. Each was told why.
    let (mut evicted, mut expired) = (0, 0);
    for s in &mut idle {
        let got = wait_closed(s, WATCHDOG).expect("the agent closes an idle connection");
        let why = reject_reason(&got).unwrap_or_else(|| panic!("closed without a REJECT: {got:?}"));
        if why.contains("too many") {
            evicted += 1;
        } else {
            assert!(why.contains("in time"), "{why}");
            expired += 1;
        }
        most = most.max(fds(pid));
    }
    // The slow ones were below every cap: the deadline closed them, though
    // they were still sending. (Their REJECT may be lost: closing a socket
    // with a byte of theirs unread resets the connection.)
    for t in slow {
        let got = t.join().unwrap().expect("a slow peer");
        if let Some(why) = reject_reason(&got) {
            assert!(why.contains("in time"), "{why}");
        }
    }
    // The agent never held more than the cap from 127.0.0.2, the slow
    // ones, and the honest client (plus room for what its channel uses).
    let slack = 16;
    assert!(
        most <= base + MAX_UNAUTHENTICATED_PER_ADDR + SLOW + 1 + slack,
        "the agent held {most} descriptors (it started with {base})"
    );
    // The authenticated connection is not subject to the deadline.
    c.ping().expect("the authenticated connection stays");
    c.send(id, b"after", Some(HONEST)).unwrap();
    assert_eq!(c.recv(id, Some(HONEST)).unwrap(), b"after");
    c.destroy(id).unwrap();
    drop(c);
    let after = fds(pid);
    eprintln!(
        "agent descriptors: {base} at start, at most {most} with {IDLE} idle and {SLOW} slow peers, {after} after; \
         idle peers: {evicted} closed for newer ones, {expired} at the deadline"
    );
    assert!(after <= base + slack, "the agent still holds {after} descriptors (it started with {base})");
    drop(agent.stdin.take());
    assert!(agent.wait().unwrap().success());
}

/// Whether the peer has sent nothing more and not closed (the HELLO
/// already read).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = (&mut &*s).read(&mut [0u8; 64]);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// A peer that has read its HELLO and stays silent.
fn idle_peer(from: Ipv4Addr, sa: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, sa).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut hello = [0u8; HELLO_LEN];
    s.read_exact(&mut hello).expect("the agent's HELLO");
    s
}

fn closed_because(s: &mut TcpStream) -> String {
    let got = wait_closed(s, WATCHDOG).expect("the agent closes the connection");
    let mut framed = vec![0u8; HELLO_LEN]; // the HELLO was read already
    framed[..4].copy_from_slice(&((HELLO_LEN - 4) as u32).to_le_bytes());
    framed[4] = auth::HELLO;
    framed.extend_from_slice(&got);
    reject_reason(&framed).unwrap_or_else(|| panic!("closed without a REJECT: {got:?}"))
}

#[test]
fn beyond_the_caps_the_oldest_unauthenticated_connection_goes() {
    let _wd = watchdog("caps", WATCHDOG);
    // Small caps, and no deadline within the test: every close below is
    // the caps' doing.
    let limits = Limits {
        handshake_deadline: Duration::from_secs(3600),
        max_unauthenticated: 8,
        max_unauthenticated_per_addr: 4,
    };
    let secret = Secret::random();
    let agent = Agent::start_with("127.0.0.1:0".parse().unwrap(), secret.clone(), limits).unwrap();
    let sa = agent.local_addr();
    let addr = sa.to_string();

    // Per address: the fifth and sixth from 127.0.0.2 close its two oldest.
    let mut a: Vec<TcpStream> = (0..6).map(|_| idle_peer(lo(2), sa)).collect();
    for s in &mut a[..2] {
        assert!(closed_because(s).contains("from this address"));
    }
    assert!(a[2..].iter().all(still_open));

    // Overall: 4 from .2 and 4 from .3 fill the 8; one more from .4 closes
    // the oldest of a busiest address (.2 and .3 hold 4 each: .2's is older).
    let mut b: Vec<TcpStream> = (0..4).map(|_| idle_peer(lo(3), sa)).collect();
    let c = idle_peer(lo(4), sa);
    assert!(closed_because(&mut a[2]).contains("busiest"));
    assert!(a[3..].iter().chain(&b).all(still_open));
    assert!(still_open(&c));

    // An honest client gets in (closing the oldest of .3, now the busiest)
    // and works; then it no longer counts: nine more can follow it from the
    // same address, past the per-address cap, all staying connected.
    let (mut first, id) = honest_work(&addr, &secret);
    assert!(closed_because(&mut b[0]).contains("busiest"));
    let mut more: Vec<Client> = (0..9).map(|_| honest_work(&addr, &secret).0).collect();
    for m in &mut more {
        m.ping().unwrap();
    }
    first.destroy(id).unwrap();
    // Authenticated connections are not counted: after the first, none of
    // the ten needed room, and the seven other peers are all still there
    // (3 from .2, 3 from .3, 1 from .4).
    let left = a.iter().chain(&b).chain([&c]).filter(|s| still_open(s)).count();
    assert_eq!(left, 7, "unauthenticated peers left");
}
