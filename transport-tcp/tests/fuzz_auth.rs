//! Fuzz target `auth`: the handshake messages as each side checks them
//! (`Secret::proof` reading a HELLO, `Secret::accept` checking a PROOF,
//! `Secret::verify_accept` checking an ACCEPT), with a fixed secret and
//! nonces. The first input byte says which message the rest is.
//!
//! What must hold: a HELLO is taken only if it is the version and a nonce,
//! and the proof made for it is one the agent accepts; a PROOF or an
//! ACCEPT is taken only if it is exactly the valid one (a mutant never
//! authenticates); never a panic, never more than a small allocation. The
//! agent's side of the handshake over a real socket is target `handshake`.

use proptest::prelude::*;
use test_support::fuzz::{fuzz, largest_allocation, Verdict};
use transport_tcp::auth::{random32, VERSION};
use transport_tcp::Secret;

#[global_allocator]
static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;

/// The corpus's secret and nonces (`tests/corpus/auth`).
fn secret() -> Secret {
    Secret::from_hex(&(0u8..32).map(|b| format!("{b:02x}")).collect::<String>()).unwrap()
}
const AGENT_NONCE: [u8; 32] = {
    let mut n = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        n[i] = 100 + i as u8;
        i += 1;
    }
    n
};
const CLIENT_NONCE: [u8; 32] = {
    let mut n = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        n[i] = 200 + i as u8;
        i += 1;
    }
    n
};

#[test]
fn fuzz_auth() {
    let s = secret();
    let corpus = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/auth"));
    let valid_proof = corpus[1][1..].to_vec();
    let valid_accept = corpus[2][1..].to_vec();
    assert_eq!(corpus[0][0], 0, "corpus: 00 is a HELLO");
    assert!(s.proof(&corpus[0][1..]).is_some(), "corpus HELLO is not valid");
    assert_eq!(s.accept(&AGENT_NONCE, &valid_proof).as_deref(), Some(&valid_accept[..]), "corpus PROOF is not valid");
    assert!(s.verify_accept(&AGENT_NONCE, &CLIENT_NONCE, &valid_accept), "corpus ACCEPT is not valid");
    // Generated: HELLOs with fresh nonces.
    let mut pool = corpus;
    for _ in 0..4 {
        let mut h = vec![0u8];
        h.extend_from_slice(&Secret::hello(&random32()));
        pool.push(h);
    }
    fuzz("auth", pool, |b| {
        let Some((&which, msg)) = b.split_first() else { return Ok(Verdict::Rejected) };
        let (accepted, big) = largest_allocation(|| match which % 3 {
            0 => match s.proof(msg) {
                Some((proof, agent_nonce, _)) => {
                    prop_assert!(msg.len() == 34 && msg[..2] == VERSION.to_le_bytes() && msg[2..] == agent_nonce);
                    prop_assert!(s.accept(&agent_nonce, &proof).is_some(), "a proof for this HELLO is refused");
                    Ok(true)
                }
                None => {
                    prop_assert!(msg.len() != 34 || msg[..2] != VERSION.to_le_bytes());
                    Ok(false)
                }
            },
            1 => match s.accept(&AGENT_NONCE, msg) {
                Some(acc) => {
                    prop_assert_eq!(msg, &valid_proof[..], "a mutated PROOF was accepted");
                    prop_assert_eq!(&acc, &valid_accept);
                    Ok(true)
                }
                None => {
                    prop_assert_ne!(msg, &valid_proof[..]);
                    Ok(false)
                }
            },
            _ => {
                let ok = s.verify_accept(&AGENT_NONCE, &CLIENT_NONCE, msg);
                prop_assert_eq!(ok, msg == &valid_accept[..], "ACCEPT verdict wrong");
                Ok(ok)
            }
        });
        prop_assert!(big <= 4096, "checking a handshake message allocated {big} bytes at once");
        Ok(if accepted? { Verdict::Accepted } else { Verdict::Rejected })
    });
}
