//! Fuzz target `replies`: the client reading mutated replies. A fake agent
//! on loopback completes a real handshake, reads the client's request and
//! answers with the input's bytes, then closes its side. The first input
//! byte says which request the client makes (with id 1).
//!
//! What must hold: the client returns a value only if the first frame
//! that is not a heartbeat is the OK reply to its request with a payload
//! of the request's shape, and then exactly the value in it; an ERROR reply
//! is `Remote` with its code and message; anything else (another id or
//! kind, a corrupt or cut frame) is an error. Never a panic, never a hang.

mod common;

use bytes::BytesMut;
use common::{read_frame, watchdog};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc;
use std::time::Duration;
use test_support::fuzz::{fuzz, Verdict};
use transport_tcp::auth::{self, random32};
use transport_tcp::{frame, proto, Client, Secret, TcpError};

const LIMIT: Duration = Duration::from_secs(60);

/// What the client must make of the reply bytes `b` to request `which`.
fn model(which: u8, b: &[u8]) -> Result<Vec<u8>, Option<(i32, String)>> {
    let mut buf = BytesMut::from(b);
    let f = loop {
        match frame::decode(&mut buf) {
            Ok(Some(f)) if f.kind == proto::HEARTBEAT => continue,
            Ok(Some(f)) => break f,
            _ => return Err(None),
        }
    };
    if f.kind == proto::ERROR && f.id == 1 {
        return Err(Some(proto::parse_error(&f.payload)));
    }
    if f.kind != proto::OK || f.id != 1 {
        return Err(None);
    }
    let need = match which {
        1 | 4 | 6 => 8, // attach, len, create: a u64 first
        8 => 4,         // poll: a u32
        _ => 0,
    };
    if f.payload.len() < need {
        return Err(None);
    }
    Ok(f.payload.to_vec())
}

#[test]
fn fuzz_replies() {
    let _wd = watchdog("fuzz_replies", Duration::from_secs(3600));
    let secret = Secret::random();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let s2 = secret.clone();
    let fake = std::thread::spawn(move || {
        for reply in rx {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            let nonce = random32();
            let mut out = BytesMut::new();
            frame::encode(&mut out, auth::HELLO, 0, &Secret::hello(&nonce));
            s.write_all(&out).unwrap();
            let mut rbuf = BytesMut::new();
            let proof = read_frame(&mut s, &mut rbuf).unwrap().expect("PROOF");
            let acc = s2.accept(&nonce, &proof.payload).expect("the client's proof");
            let mut out = BytesMut::new();
            frame::encode(&mut out, auth::ACCEPT, 0, &acc);
            s.write_all(&out).unwrap();
            let req = read_frame(&mut s, &mut rbuf).unwrap().expect("the request");
            assert_eq!(req.id, 1);
            let _ = s.write_all(&reply);
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let corpus = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/replies"));
    fuzz("replies", corpus, |b| {
        let Some((&which, reply)) = b.split_first() else { return Ok(Verdict::Rejected) };
        let which = which % 9;
        tx.send(reply.to_vec()).unwrap();
        let mut c = Client::connect(&addr, &secret, LIMIT).expect("the fake agent's handshake");
        c.set_silence_limit(LIMIT);
        let u64_at = |p: &[u8]| u64::from_le_bytes(p[..8].try_into().unwrap());
        let got: Result<Vec<u8>, TcpError> = match which {
            0 => c.ping().map(|()| Vec::new()),
            1 => c.attach(b"handle").map(|id| id.to_le_bytes().to_vec()),
            2 => c.send(1, b"data", Some(LIMIT)).map(|()| Vec::new()),
            3 => c.recv(1, Some(LIMIT)),
            4 => c.len(1).map(|n| n.to_le_bytes().to_vec()),
            5 => c.detach(1).map(|()| Vec::new()),
            6 => c.create(8, 0, 0).map(|(id, h)| [id.to_le_bytes().to_vec(), h].concat()),
            7 => c.destroy(1).map(|()| Vec::new()),
            _ => c.poll(1, 1, Some(LIMIT)).map(|e| e.to_le_bytes().to_vec()),
        };
        let want = model(which, reply);
        match (&got, &want) {
            (Ok(v), Ok(p)) => {
                // The value the reply holds (for LEN, ATTACH, POLL: its
                // leading integer; the rest is not read).
                let exact = match which {
                    1 | 4 => u64_at(p).to_le_bytes().to_vec(),
                    8 => p[..4].to_vec(),
                    0 | 2 | 5 | 7 => Vec::new(),
                    _ => p.clone(),
                };
                prop_assert_eq!(v, &exact);
                Ok(Verdict::Accepted)
            }
            (Err(TcpError::Remote { code, message }), Err(Some((c2, m2)))) => {
                prop_assert_eq!((code, message), (c2, m2));
                Ok(Verdict::Rejected)
            }
            (Err(e), Err(None)) => {
                prop_assert!(!matches!(e, TcpError::Remote { .. } | TcpError::PeerLost { .. }), "{}", e);
                Ok(Verdict::Rejected)
            }
            _ => Err(TestCaseError::fail(format!("the client returned {got:?}, the reply says {want:?}"))),
        }
    });
    drop(tx);
    fake.join().unwrap();
}
