//! The agent and the client over loopback, on real shared-memory channels.

use channels_core::plugin::abi::{DRAGON_EBADMSG, DRAGON_ETIMEDOUT};
use channels_core::ChannelOptions;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use transport_tcp::auth::{self, random32};
use transport_tcp::{frame, Agent, Client, Secret, TcpError};

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
    // A receive with a timeout ends with a clear error.
    let t0 = Instant::now();
    match c.recv(id, Some(Duration::from_millis(300))) {
        Err(TcpError::Remote { code, .. }) => assert_eq!(code, DRAGON_ETIMEDOUT),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(300));
    ch.destroy();
}

#[test]
fn a_wrong_secret_or_handle_is_refused() {
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
    let (_a, secret, addr) = agent();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    let mut sink = Vec::new();
    // The agent sends its HELLO, then closes on the bad frame.
    let _ = raw.read_to_end(&mut sink);
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    c.ping().unwrap();
}

#[test]
fn an_unauthenticated_peer_cannot_send_a_large_frame() {
    let (_a, secret, addr) = agent();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    // 1 MiB announced before any proof: the connection is dropped at once.
    raw.write_all(&(1u32 << 20).to_le_bytes()).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    let mut sink = Vec::new();
    let t0 = Instant::now();
    let _ = raw.read_to_end(&mut sink);
    assert!(t0.elapsed() < Duration::from_secs(4), "the agent kept the connection");
    Client::connect(&addr, &secret, T).unwrap().ping().unwrap();
}

#[test]
fn a_stopped_agent_ends_a_waiting_call() {
    let (a, secret, addr) = agent();
    let ch = channel();
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    let id = c.attach(&ch.handle().to_bytes()).unwrap();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        a.stop();
    });
    let t0 = Instant::now();
    let r = c.recv(id, None);
    assert!(matches!(r, Err(TcpError::Io(_)) | Err(TcpError::PeerLost { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "took {:?}", t0.elapsed());
    stopper.join().unwrap();
    ch.destroy();
}

#[test]
fn a_silent_agent_is_reported_lost() {
    // A fake agent: it completes the handshake, then says nothing more
    // (as if its node had been cut off).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let secret = Secret::random();
    let s2 = secret.clone();
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
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let mut c = Client::connect(&addr, &secret, T).unwrap();
    c.set_silence_limit(Duration::from_secs(1));
    let t0 = Instant::now();
    match c.ping() {
        Err(TcpError::PeerLost { silent, .. }) => assert!(silent >= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_millis(2500));
    fake.join().unwrap();
}
