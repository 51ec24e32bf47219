//! Fuzzing the record decoders (`persist::decode_record`, format 2, and
//! `decode_record_v1`; see `common/fuzz.rs`): whatever they accept
//! re-encodes to exactly the bytes it was decoded from.

mod common;

use common::fuzz;
use ddict::persist::{self, REC_CLEAR, REC_DELETE, REC_END, REC_PUT};
use proptest::prelude::*;

fn v2(seq: u64, op: u8, k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    persist::encode_record(&mut b, seq, op, k, v).unwrap();
    b
}

fn v1(op: u8, k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    persist::encode_record_v1(&mut b, op, k, v);
    b
}

fn corpus_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("put.rec", v2(1, REC_PUT, b"key", b"value")),
        ("empty_key.rec", v2(2, REC_PUT, b"", b"v")),
        ("delete.rec", v2(3, REC_DELETE, b"gone", b"")),
        ("clear.rec", v2(u64::MAX >> 2, REC_CLEAR, b"", b"")),
        ("end.rec", v2(9, REC_END, b"", &9u64.to_le_bytes())),
        ("big.rec", v2(5, REC_PUT, b"big", &[0x5a; 4096])),
        ("v1_put.rec", v1(REC_PUT, b"key", b"value")),
        ("v1_delete.rec", v1(REC_DELETE, b"k", b"")),
    ]
}

#[test]
fn committed_corpus_is_current() {
    fuzz::check_corpus("record", &corpus_files());
}

fn generated() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u64>(),
        1u8..5,
        prop::collection::vec(any::<u8>(), 0..20),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(seq, op, k, v, old)| if old { v1(op, &k, &v) } else { v2(seq, op, &k, &v) })
}

#[test]
fn fuzz_record() {
    let runs = fuzz::run(fuzz::corpus("record"), generated(), |b| {
        if let Ok(d) = persist::decode_record(b) {
            prop_assert_eq!(v2(d.seq, d.op, d.key, d.value), b[..d.len].to_vec());
        }
        if let Ok(d) = persist::decode_record_v1(b) {
            prop_assert_eq!(v1(d.op, d.key, d.value), b[..d.len].to_vec());
        }
        Ok(())
    });
    eprintln!("fuzz_record: {runs} executions");
}
