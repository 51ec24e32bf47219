//! Fuzz target `proto`: the payload decoders of `proto` on their own
//! (`parse_error`, `take_u64` as requests use it, `timeout_of`). The first
//! input byte says which; the rest is the payload. The agent's request
//! parsing and the client's reply parsing over real sockets are targets
//! `requests` and `replies`.
//!
//! What must hold: each decoder answers for any bytes (an ERROR payload
//! too short for its code is a clear "malformed" error, never a panic),
//! and what it reads encodes back to the same bytes.

use proptest::prelude::*;
use test_support::fuzz::{fuzz, largest_allocation, Verdict};
use transport_abi::abi::DRAGON_EIO;
use transport_tcp::proto::{error_payload, op_payload, parse_error, take_u64, timeout_ns, timeout_of};

#[global_allocator]
static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;

#[test]
fn fuzz_proto() {
    let mut pool = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/proto"));
    pool.push([&[0u8][..], &error_payload(-22, "no such attachment")].concat());
    pool.push([&[1u8][..], &op_payload(u64::MAX, 0, &[0xff; 40])].concat());
    fuzz("proto", pool, |b| {
        let Some((&which, p)) = b.split_first() else { return Ok(Verdict::Rejected) };
        let (verdict, big) = largest_allocation(|| -> Result<Verdict, TestCaseError> {
            match which % 3 {
                0 => {
                    let (code, msg) = parse_error(p);
                    if p.len() < 4 {
                        prop_assert_eq!(code, DRAGON_EIO);
                        prop_assert!(msg.contains("malformed"));
                        return Ok(Verdict::Rejected);
                    }
                    prop_assert_eq!(code, i32::from_le_bytes(p[..4].try_into().unwrap()));
                    if std::str::from_utf8(&p[4..]).is_ok() {
                        prop_assert_eq!(&error_payload(code, &msg), p);
                    }
                    Ok(Verdict::Accepted)
                }
                1 => {
                    // A request's `channel u64, timeout_ns u64, data`.
                    let Some((ch, rest)) = take_u64(p) else {
                        prop_assert!(p.len() < 8);
                        return Ok(Verdict::Rejected);
                    };
                    let Some((t, data)) = take_u64(rest) else {
                        prop_assert!(p.len() < 16);
                        return Ok(Verdict::Rejected);
                    };
                    prop_assert_eq!(&op_payload(ch, t, data), p);
                    Ok(Verdict::Accepted)
                }
                _ => {
                    let Some((ns, _)) = take_u64(p) else { return Ok(Verdict::Rejected) };
                    let t = timeout_of(ns);
                    prop_assert_eq!(t.is_none(), ns == u64::MAX);
                    prop_assert_eq!(timeout_ns(t), ns);
                    Ok(Verdict::Accepted)
                }
            }
        });
        prop_assert!(big <= 64 + 4 * b.len(), "decoding allocated {big} bytes at once");
        verdict
    });
}
