//! Fuzzing the DDict's text and value decoders (see `common/fuzz.rs`):
//! `Descriptor::from_text` (the form a DDict travels in between processes),
//! the `StrCodec` and `I64Codec` value codecs, versioned checkpoint keys
//! and counters. Whatever they accept round-trips.

mod common;

use common::fuzz;
use ddict::manager::{split_versioned, versioned_key};
use ddict::{counter_value, Codec, Descriptor, I64Codec, StrCodec};
use proptest::prelude::*;

fn corpus_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("one_shard.txt", b"ddict1;name;0;dragon-1a2b-dd-name-0c0ffee0-0:1f".to_vec()),
        ("durable.txt", b"ddict1;store;1;seg-a:ffffffffffffffff,seg-b:0,seg:c:12".to_vec()),
        ("str.bin", "caf\u{e9} \u{1f409}".as_bytes().to_vec()),
        ("i64.bin", (-42i64).to_le_bytes().to_vec()),
        ("versioned_key.bin", versioned_key(7, b"\x80\x05key")),
    ]
}

#[test]
fn committed_corpus_is_current() {
    fuzz::check_corpus("codec", &corpus_files());
}

fn generated() -> impl Strategy<Value = Vec<u8>> {
    let shard = ("[a-z0-9:_-]{0,12}", any::<u64>()).prop_map(|(s, id)| format!("{s}:{id:x}"));
    ("[a-zA-Z0-9_]{1,10}", any::<u64>(), prop::collection::vec(shard, 1..4))
        .prop_map(|(name, flags, shards)| format!("ddict1;{name};{flags};{}", shards.join(",")).into_bytes())
}

#[test]
fn fuzz_codec() {
    let runs = fuzz::run(fuzz::corpus("codec"), generated(), |b| {
        let text = String::from_utf8_lossy(b);
        if let Ok(d) = Descriptor::from_text(&text) {
            prop_assert_eq!(Descriptor::from_text(&d.to_text()), Ok(d.clone()));
            prop_assert!(!d.shards.is_empty());
        }
        if let Ok(s) = StrCodec.decode(b) {
            prop_assert_eq!(StrCodec.encode(&s), b.to_vec());
        }
        match I64Codec.decode(b) {
            Ok(v) => prop_assert_eq!(I64Codec.encode(&v), b.to_vec()),
            Err(_) => prop_assert!(b.len() != 8),
        }
        if let Some((c, key)) = split_versioned(b) {
            prop_assert_eq!(versioned_key(c, key), b.to_vec());
        }
        let n = counter_value(Some(b), b"\x02");
        prop_assert!(n == 0 || (b.len() == 9 && b[0] == 2));
        Ok(())
    });
    eprintln!("fuzz_codec: {runs} executions");
}
