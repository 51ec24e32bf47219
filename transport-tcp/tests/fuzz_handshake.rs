//! Fuzz target `handshake`: a real agent on loopback answering mutated
//! PROOF frames. Each input is a fresh connection: the proof is made for
//! the agent's fresh nonce, then the mutant's changes are applied to the
//! frame (the corpus gives the mutations, and bytes to splice).
//!
//! What must hold: the agent accepts exactly when the first frame is a
//! PROOF carrying the valid proof (a mutated id does not matter), and then
//! serves the connection; anything else is refused and closed (a REJECT
//! first, unless the frame was too large to read or a reset lost it), or,
//! for a frame that never completes, closed when the peer goes. Never an
//! ACCEPT for a mutant; an honest client is served throughout.

mod common;

use bytes::BytesMut;
use common::{read_frame, watchdog};
use proptest::prelude::*;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use test_support::fuzz::{fuzz_mutants, Verdict};
use transport_tcp::agent::{Limits, MAX_UNAUTHENTICATED_FRAME};
use transport_tcp::{auth, frame, proto, Agent, Client, Secret};

const LIMIT: Duration = Duration::from_secs(60);
const MARK: u64 = 0xF00D_F00D;

/// The whole frames at the front of `b`, and whether the rest is a bad
/// length (`Err`) or an incomplete frame (`Ok(bytes left)`).
fn frames_of(b: &[u8]) -> (Vec<frame::Frame>, Result<usize, ()>) {
    let mut buf = BytesMut::from(b);
    let mut out = Vec::new();
    loop {
        match frame::decode(&mut buf) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return (out, Ok(buf.len())),
            Err(_) => return (out, Err(())),
        }
    }
}

#[test]
fn fuzz_handshake() {
    let _wd = watchdog("fuzz_handshake", Duration::from_secs(3600));
    let secret = Secret::random();
    // No deadline within the test: a frame that never completes is ended
    // by the test closing its side.
    let limits = Limits { handshake_deadline: Duration::from_secs(3600), ..Limits::default() };
    let agent = Agent::start_with("127.0.0.1:0".parse().unwrap(), secret.clone(), limits).unwrap();
    let addr = agent.local_addr();
    let honest = std::cell::RefCell::new(Client::connect(&addr.to_string(), &secret, LIMIT).unwrap());
    let corpus = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/handshake"));
    let runs = std::cell::Cell::new(0u64);
    fuzz_mutants("handshake", corpus, |m, pool| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut rbuf = BytesMut::new();
        let hello = read_frame(&mut s, &mut rbuf).unwrap().expect("HELLO");
        let (proof, agent_nonce, client_nonce) = secret.proof(&hello.payload).expect("a valid HELLO");
        let mut b = BytesMut::new();
        frame::encode(&mut b, auth::PROOF, 0, &proof);
        let mut b = b.to_vec();
        for step in &m.steps {
            step.apply(&mut b, pool);
        }
        let (frames, end) = frames_of(&b);
        let too_large =
            b.len() >= 4 && u32::from_le_bytes(b[..4].try_into().unwrap()) as usize > MAX_UNAUTHENTICATED_FRAME;
        let valid = !too_large && frames.first().is_some_and(|f| f.kind == auth::PROOF && f.payload == proof);
        s.write_all(&b).unwrap();
        if frames.is_empty() && end.is_ok() {
            // Nothing whole was sent: only our going away ends it.
            s.shutdown(Shutdown::Write).unwrap();
        }
        let verdict = if valid {
            let acc = read_frame(&mut s, &mut rbuf).unwrap().expect("ACCEPT for the valid proof");
            prop_assert_eq!(acc.kind, auth::ACCEPT);
            prop_assert!(secret.verify_accept(&agent_nonce, &client_nonce, &acc.payload));
            if end == Ok(0) {
                // Whole frames only: the connection is served (replies to
                // what followed the proof come first).
                let mut ping = BytesMut::new();
                frame::encode(&mut ping, proto::PING, MARK, &[]);
                s.write_all(&ping).unwrap();
                loop {
                    let f = read_frame(&mut s, &mut rbuf).unwrap().expect("the reply to PING");
                    prop_assert!(
                        matches!(f.kind, proto::OK | proto::ERROR | proto::HEARTBEAT),
                        "frame kind {}",
                        f.kind
                    );
                    if f.id == MARK {
                        prop_assert_eq!(f.kind, proto::OK);
                        break;
                    }
                }
            }
            Verdict::Accepted
        } else {
            // Refused: at most a REJECT, then the end.
            while let Some(f) = read_frame(&mut s, &mut rbuf).unwrap() {
                prop_assert_eq!(f.kind, auth::REJECT, "a refused peer got frame kind {}", f.kind);
            }
            Verdict::Rejected
        };
        drop(s);
        runs.set(runs.get() + 1);
        if runs.get() % 64 == 0 {
            honest.borrow_mut().ping().expect("the honest client is still served");
        }
        Ok(verdict)
    });
    let mut honest = honest.into_inner();
    honest.ping().unwrap();
    let (id, _) = honest.create(4, 0, 0).unwrap();
    honest.send(id, b"still served", Some(LIMIT)).unwrap();
    assert_eq!(honest.recv(id, Some(LIMIT)).unwrap(), b"still served");
    honest.destroy(id).unwrap();
}
