//! Fuzz target `requests`: a real agent on loopback answering mutated
//! request frames after a real handshake, on real shared-memory channels.
//!
//! Each input is a fresh authenticated connection that first attaches the
//! target's own channel (attachment 1, so requests naming it reach a real
//! channel), then sends the mutated stream of request frames, then a PING.
//! CREATE requests for more than 1 MiB of shared memory are clamped to
//! 1 MiB, and the channels fuzzed CREATEs make are destroyed after each
//! input: they are valid requests, and channels made through an agent
//! outlive their connection, so thousands of them would fill the machine's
//! `/dev/shm` (the target checks its run's usage stays under 256 MiB).
//!
//! What must hold: the agent answers every whole frame with OK or ERROR
//! (with that frame's id) or, for a wait, later; it answers the PING, so
//! it keeps serving; a frame with a length out of bounds gets the replies
//! owed before it, then an ERROR with id 0 saying why, then the close;
//! an honest client on its own channel is served throughout.

mod common;

use bytes::BytesMut;
use common::{authenticated, read_frame, watchdog};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;
use test_support::fuzz::{fuzz_mutants, Verdict};
use transport_shm::segment::{self, RunId};
use transport_tcp::{frame, proto, Agent, Client, Secret};

const LIMIT: Duration = Duration::from_secs(60);
const MARK: u64 = 0xF00D_F00D;
const ATTACH_ID: u64 = 0xF00D_0000;
/// Largest channel (capacity x slot size) a fuzzed CREATE may ask for.
const MAX_CHANNEL: u64 = 1 << 20;
/// Most of `/dev/shm` this process's run may use while fuzzing.
const MAX_SHM: u64 = 256 << 20;

/// Bytes of `/dev/shm` this process's run uses.
fn shm_used() -> u64 {
    let prefix = RunId::current().prefix();
    std::fs::read_dir(segment::SHM_DIR)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Removes this process's run's segments however the test ends (a
/// failed check unwinds through it).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        segment::cleanup_run(RunId::current());
    }
}

/// Destroy the channel a CREATE reply names.
fn destroy_created(reply: &[u8]) {
    let Some(bytes) = reply.get(8..) else { return };
    let Ok(mut h) = shm_primitives::Handle::from_bytes(bytes) else { return };
    h.address.clear(); // it names the agent; the channel is on this node
    if let Ok(ch) = transport_shm::channel::attach(&h) {
        ch.destroy();
    }
}

/// The whole frames at the front of `b` with their offsets, and whether
/// the rest is a bad length (`Err`) or an incomplete frame (`Ok(left)`).
fn frames_of(b: &[u8]) -> (Vec<(usize, frame::Frame)>, Result<usize, ()>) {
    let mut buf = BytesMut::from(b);
    let mut out = Vec::new();
    loop {
        let at = b.len() - buf.len();
        match frame::decode(&mut buf) {
            Ok(Some(f)) => out.push((at, f)),
            Ok(None) => return (out, Ok(buf.len())),
            Err(_) => return (out, Err(())),
        }
    }
}

/// Clamp the capacity of CREATE requests for more than [`MAX_CHANNEL`].
fn clamp_creates(b: &mut [u8]) {
    let (frames, _) = frames_of(b);
    for (at, f) in frames {
        if f.kind != proto::CREATE || f.payload.len() < 16 {
            continue;
        }
        let field = |i: usize| u64::from_le_bytes(f.payload[8 * i..8 * i + 8].try_into().unwrap());
        let (cap, slot) = (field(0), field(1));
        let (c, s) = (if cap == 0 { 256 } else { cap }, if slot == 0 { 128 } else { slot });
        if c.saturating_mul(s) > MAX_CHANNEL {
            let fit = (MAX_CHANNEL / s.max(1)).clamp(1, c);
            let p = at + 4 + frame::HEADER;
            b[p..p + 8].copy_from_slice(&fit.to_le_bytes());
        }
    }
}

fn request(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    frame::encode(&mut b, kind, id, payload);
    b.to_vec()
}

struct Harness {
    addr: SocketAddr,
    secret: Secret,
    /// Makes (and remakes, after a fuzzed DESTROY) the target's channel.
    maker: Client,
    handle: Vec<u8>,
    honest: Client,
    honest_ch: u64,
    runs: u64,
}

impl Harness {
    /// A fresh connection with the target's channel as attachment 1.
    fn connection(&mut self) -> (TcpStream, BytesMut) {
        for _ in 0..2 {
            let (mut s, mut buf) = authenticated(self.addr, &self.secret, LIMIT);
            s.write_all(&request(proto::ATTACH, ATTACH_ID, &self.handle)).unwrap();
            let r = loop {
                let f = read_frame(&mut s, &mut buf).unwrap().expect("the ATTACH reply");
                if f.kind != proto::HEARTBEAT {
                    break f;
                }
            };
            assert_eq!(r.id, ATTACH_ID);
            if r.kind == proto::OK {
                assert_eq!(r.payload[..], 1u64.to_le_bytes(), "the first attachment of a connection is 1");
                return (s, buf);
            }
            // Destroyed by an earlier input: a new one.
            self.handle = self.maker.create(8, 0, 0).expect("a new channel").1;
        }
        panic!("cannot attach the target's channel");
    }

    fn honest_work(&mut self) {
        let c = &mut self.honest;
        c.ping().expect("the honest client is served");
        c.send(self.honest_ch, b"honest", Some(LIMIT)).unwrap();
        assert_eq!(c.recv(self.honest_ch, Some(LIMIT)).unwrap(), b"honest");
    }
}

fn generated(handle: &[u8]) -> Vec<Vec<u8>> {
    let op = |ch: u64, t: u64, d: &[u8]| proto::op_payload(ch, t, d);
    vec![
        request(proto::ATTACH, 20, handle),
        [request(proto::SEND, 21, &op(1, 0, b"to the channel")), request(proto::RECV, 22, &op(1, 0, &[]))].concat(),
        request(proto::POLL, 23, &op(1, 5_000_000, &3u32.to_le_bytes())),
        [request(proto::ATTACH, 24, handle), request(proto::DETACH, 25, &2u64.to_le_bytes())].concat(),
        request(proto::CREATE, 26, &[4u64.to_le_bytes(), 64u64.to_le_bytes(), 0u64.to_le_bytes()].concat()),
        request(proto::LEN, 27, &1u64.to_le_bytes()),
    ]
}

#[test]
fn fuzz_requests() {
    let _wd = watchdog("fuzz_requests", Duration::from_secs(3600));
    let _cleanup = Cleanup;
    let secret = Secret::random();
    let agent = Agent::start("127.0.0.1:0".parse().unwrap(), secret.clone()).unwrap();
    let addr = agent.local_addr();
    let mut maker = Client::connect(&addr.to_string(), &secret, LIMIT).unwrap();
    let (_, handle) = maker.create(8, 0, 0).unwrap();
    let mut honest = Client::connect(&addr.to_string(), &secret, LIMIT).unwrap();
    let (honest_ch, _) = honest.create(8, 0, 0).unwrap();
    let mut pool = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/requests"));
    pool.extend(generated(&handle));
    let h = RefCell::new(Harness { addr, secret, maker, handle, honest, honest_ch, runs: 0 });
    fuzz_mutants("requests", pool, |m, _| {
        let mut h = h.borrow_mut();
        let mut b = m.bytes.clone();
        clamp_creates(&mut b);
        let (frames, end) = frames_of(&b);
        let ids: HashSet<u64> = frames.iter().map(|(_, f)| f.id).collect();
        let (mut s, mut rbuf) = h.connection();
        s.write_all(&b).unwrap();
        let mut replies: Vec<frame::Frame> = Vec::new();
        let mut reply = |f: frame::Frame| -> Result<(), TestCaseError> {
            prop_assert!(matches!(f.kind, proto::OK | proto::ERROR | proto::HEARTBEAT), "reply kind {}", f.kind);
            if f.kind != proto::HEARTBEAT {
                prop_assert!(
                    ids.contains(&f.id) || f.id == MARK || f.id == 0,
                    "a reply to request {} never made",
                    f.id
                );
                replies.push(f);
            }
            Ok(())
        };
        let whole = match end {
            Ok(0) => {
                // Whole frames: the agent must still answer a PING.
                s.write_all(&request(proto::PING, MARK, &[])).unwrap();
                loop {
                    let f = read_frame(&mut s, &mut rbuf).unwrap().expect("the agent answers the PING");
                    let (kind, id) = (f.kind, f.id);
                    reply(f)?;
                    if id == MARK {
                        prop_assert_eq!(kind, proto::OK);
                        break;
                    }
                }
                true
            }
            Ok(_) => {
                // An incomplete last frame: the agent waits for the rest;
                // our going away ends it.
                s.shutdown(Shutdown::Write).unwrap();
                while let Some(f) = read_frame(&mut s, &mut rbuf).unwrap() {
                    reply(f)?;
                }
                false
            }
            Err(()) => {
                // A length out of bounds: the replies owed, an ERROR with
                // id 0 saying why, then the close. (A request may have id
                // 0 too: its reply is another.)
                while let Some(f) = read_frame(&mut s, &mut rbuf).unwrap() {
                    reply(f)?;
                }
                let why = |f: &frame::Frame| {
                    f.id == 0 && f.kind == proto::ERROR && proto::parse_error(&f.payload).1.contains("protocol error")
                };
                prop_assert!(replies.iter().any(why), "closed without saying why");
                true
            }
        };
        // PINGs are answered at once, in order: each before the end, even
        // when a corrupt frame follows.
        if whole {
            for (_, f) in frames.iter().filter(|(_, f)| f.kind == proto::PING) {
                prop_assert!(
                    replies.iter().any(|r| r.id == f.id && r.kind == proto::OK),
                    "PING {} was not answered",
                    f.id
                );
            }
        }
        let answered_ok = replies.iter().any(|r| r.kind == proto::OK && r.id != MARK);
        drop(s);
        let creates: HashSet<u64> = frames.iter().filter(|(_, f)| f.kind == proto::CREATE).map(|(_, f)| f.id).collect();
        for r in replies.iter().filter(|r| r.kind == proto::OK && creates.contains(&r.id)) {
            destroy_created(&r.payload);
        }
        h.runs += 1;
        if h.runs % 32 == 0 {
            h.honest_work();
            let used = shm_used();
            prop_assert!(used <= MAX_SHM, "the run uses {} MiB of /dev/shm", used >> 20);
        }
        Ok(if answered_ok { Verdict::Accepted } else { Verdict::Rejected })
    });
    let mut h = h.into_inner();
    h.honest_work();
    h.honest.destroy(h.honest_ch).unwrap();
    drop(h);
    drop(agent);
    // Anything left (a CREATE whose reply a corrupt frame or our going
    // away cut off) is this process's run's: removed with it (`Cleanup`).
}
