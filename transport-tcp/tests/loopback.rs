//! The agent and the client over loopback, on real shared-memory channels.
//! No test measures how long something took: each waits for the event it
//! checks, under a generous watchdog.

mod common;

use channels_core::ChannelOptions;
use common::{wait_closed, watchdog};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use transport_abi::abi::{DRAGON_EBADMSG, DRAGON_ETIMEDOUT};
use transport_tcp::agent::Limits;
use transport_tcp::auth::{self, random32};
use transport_tcp::{frame, proto, Agent, Client, Secret, TcpError};

/// Bound on any one test (a hang aborts the binary).
const WATCHDOG: Duration = Duration::from_secs(300);
/// Longer than any test: a connection closed by the agent was not closed
/// for taking too long to authenticate.
const NEVER: Duration = Duration::from_secs(3600);

fn agent() -> (Agent, Secret, String) {
    let secret = Secret::random();
    let a = Agent::start("127.0.0.1:0".parse().unwrap(), secret.clone()).expect("agent");
    let addr = a.local_addr().to_string();
    (a, secret, addr)
}

fn channel() -> channels_core::Channel {
    transport_shm::channel::create(&ChannelOptions::new().capacity(8)).expect("channel")
}

const T: Duration = Duration::from_secs(5);

#[test]
fn messages_cross_both_ways() {
    let _wd = watchdog("messages_cross_both_ways", WATCHDOG);
    let (_a, secret, addr) = agent();
    let ch = channel();
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    c.ping().unwrap();
    let id = c.attach(&ch.handle().to_bytes()).unwrap();
    c.send(id, b"from afar", Some(T)).unwrap();
    assert_eq!(&*ch.recv_timeout(T).unwrap(), b"from afar");
    ch.send(&b"from here"[..]).unwrap();
    assert_eq!(c.recv(id, Some(T)).unwrap(), b"from here");
    // Large messages too (they travel in the channel's blocks).
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    c.send(id, &big, Some(T)).unwrap();
    assert_eq!(c.len(id).unwrap(), 1);
    assert_eq!(c.recv(id, Some(T)).unwrap(), big);
    c.detach(id).unwrap();
    ch.destroy();
}

#[test]
fn a_waiting_receive_is_answered_when_a_message_comes() {
    let _wd = watchdog("a_waiting_receive", WATCHDOG);
    let (_a, secret, addr) = agent();
    let ch = channel();
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    let id = c.attach(&ch.handle().to_bytes()).unwrap();
    let sender = ch.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200)); // past a heartbeat or two
        sender.send(&b"late"[..]).unwrap();
    });
    assert_eq!(c.recv(id, None).unwrap(), b"late");
    t.join().unwrap();
    // A receive with a timeout ends with a clear error, not before the
    // timeout (a lower bound: a loaded machine only makes it later).
    let t0 = Instant::now();
    match c.recv(id, Some(Duration::from_millis(300))) {
        Err(TcpError::Remote { code, .. }) => assert_eq!(code, DRAGON_ETIMEDOUT),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(300), "the receive gave up early");
    ch.destroy();
}

#[test]
fn a_wrong_secret_or_handle_is_refused() {
    let _wd = watchdog("a_wrong_secret_or_handle_is_refused", WATCHDOG);
    let (_a, _secret, addr) = agent();
    match Client::connect(&addr, &Secret::random(), T) {
        Err(TcpError::Auth(m)) => assert!(m.contains("secret"), "{m}"),
        other => panic!("{other:?}"),
    }
    let (_a2, secret, addr) = agent();
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    match c.attach(b"not a handle") {
        Err(TcpError::Remote { code, message }) => {
            assert_eq!(code, DRAGON_EBADMSG);
            assert!(message.contains("handle"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    c.ping().unwrap(); // the connection is still good
}

#[test]
fn an_oversized_frame_drops_only_its_connection() {
    let _wd = watchdog("an_oversized_frame", WATCHDOG);
    let (_a, secret, addr) = agent();
    // An authenticated connection that announces a frame over the limit.
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    let ch = channel();
    let id = c.attach(&ch.handle().to_bytes()).unwrap();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
    // The agent sends its HELLO, then closes on the bad frame.
    wait_closed(&mut raw, WATCHDOG).expect("the agent closes the connection");
    // Other connections are untouched.
    c.send(id, b"still here", Some(T)).unwrap();
    assert_eq!(c.recv(id, Some(T)).unwrap(), b"still here");
    Client::connect(&addr, &secret, T).unwrap().ping().unwrap();
    ch.destroy();
}

#[test]
fn an_unauthenticated_peer_cannot_send_a_large_frame() {
    let _wd = watchdog("an_unauthenticated_peer_large_frame", WATCHDOG);
    // No handshake deadline within the test: only the frame's size can
    // make the agent close this connection.
    let secret = Secret::random();
    let limits = Limits { handshake_deadline: NEVER, ..Limits::default() };
    let a = Agent::start_with("127.0.0.1:0".parse().unwrap(), secret.clone(), limits).unwrap();
    let addr = a.local_addr().to_string();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    // 1 MiB announced before any proof: the connection is dropped.
    raw.write_all(&(1u32 << 20).to_le_bytes()).unwrap();
    wait_closed(&mut raw, WATCHDOG).expect("the agent closes the connection");
    Client::connect(&addr, &secret, T).unwrap().ping().unwrap();
}

#[test]
fn a_stopped_agent_ends_a_waiting_call() {
    let _wd = watchdog("a_stopped_agent_ends_a_waiting_call", WATCHDOG);
    let (a, secret, addr) = agent();
    let ch = channel();
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    let id = c.attach(&ch.handle().to_bytes()).unwrap();
    // The client never calls the agent lost for silence here: only the
    // agent closing the connection can end the wait.
    c.set_silence_limit(NEVER);
    let stopper = std::thread::spawn(move || {
        // Whether the receive is already waiting or not, it must end.
        std::thread::sleep(Duration::from_millis(300));
        a.stop();
    });
    let r = c.recv(id, None);
    assert!(matches!(r, Err(TcpError::Io(_))), "expected the closed connection, got {r:?}");
    stopper.join().unwrap();
    ch.destroy();
}

#[test]
fn a_silent_agent_is_reported_lost() {
    // A fake agent: it completes the handshake, then says nothing more
    // (as if its node had been cut off).
    let _wd = watchdog("a_silent_agent_is_reported_lost", WATCHDOG);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let secret = Secret::random();
    let s2 = secret.clone();
    // The fake keeps the connection open (and silent) until the client is done.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let nonce = random32();
        let mut b = bytes::BytesMut::new();
        frame::encode(&mut b, auth::HELLO, 0, &Secret::hello(&nonce));
        s.write_all(&b).unwrap();
        let mut rbuf = bytes::BytesMut::new();
        let mut buf = [0u8; 4096];
        let proof = loop {
            let n = s.read(&mut buf).unwrap();
            rbuf.extend_from_slice(&buf[..n]);
            if let Some(f) = frame::decode(&mut rbuf).unwrap() {
                break f;
            }
        };
        let acc = s2.accept(&nonce, &proof.payload).unwrap();
        let mut b = bytes::BytesMut::new();
        frame::encode(&mut b, auth::ACCEPT, 0, &acc);
        s.write_all(&b).unwrap();
        let _ = done_rx.recv();
        drop(s);
    });
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    c.set_silence_limit(Duration::from_secs(1));
    // The connection stays open: only the silence can end the call.
    match c.ping() {
        Err(TcpError::PeerLost { silent, .. }) => assert!(silent >= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    done_tx.send(()).unwrap();
    fake.join().unwrap();
}

#[test]
fn a_stranger_on_the_port_cannot_make_the_client_reserve_a_large_buffer() {
    let _wd = watchdog("a_stranger_on_the_port", WATCHDOG);
    // Not an agent: it announces a 200 MiB frame and sends nothing more.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let stranger = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&(200u32 << 20).to_le_bytes()).unwrap();
        let _ = done_rx.recv();
    });
    // Refused on the header alone: a client that waited for the rest would
    // end at its deadline with PeerLost instead.
    match Client::connect(&addr, &Secret::random(), NEVER) {
        Err(TcpError::Protocol(m)) => assert!(m.contains("over the 1024 allowed"), "{m}"),
        other => panic!("{other:?}"),
    }
    done_tx.send(()).unwrap();
    stranger.join().unwrap();
}

/// Found by fuzzing the agent's requests: a corrupt frame used to close the
/// connection at once, dropping the replies to the requests before it
/// (performed, but never confirmed).
#[test]
fn a_corrupt_frame_gets_the_replies_owed_and_a_reason_before_the_close() {
    let _wd = watchdog("a_corrupt_frame", WATCHDOG);
    let (a, secret, _) = agent();
    let (mut s, mut buf) = common::authenticated(a.local_addr(), &secret, WATCHDOG);
    let mut out = bytes::BytesMut::new();
    frame::encode(&mut out, proto::PING, 7, &[]);
    out.extend_from_slice(&3u32.to_le_bytes()); // a length below the header
    s.write_all(&out).unwrap();
    let mut got = Vec::new();
    while let Some(f) = common::read_frame(&mut s, &mut buf).unwrap() {
        if f.kind != proto::HEARTBEAT {
            got.push(f);
        }
    }
    assert_eq!((got[0].kind, got[0].id), (proto::OK, 7), "{got:?}");
    assert_eq!((got[1].kind, got[1].id), (proto::ERROR, 0), "{got:?}");
    let (code, msg) = proto::parse_error(&got[1].payload);
    assert_eq!(code, transport_abi::abi::DRAGON_EPROTO);
    assert!(msg.contains("shorter than its header"), "{msg}");
    assert_eq!(got.len(), 2);
}
