//! Fuzzing the write-ahead log reader (see `common/fuzz.rs`): mutated logs
//! from `tests/corpus/wal/` and generated ones, read strictly and
//! salvaging (`persist::scan`) and, for one case in ten, restored from a
//! real file through `Wal::open`: no panic, no hang, no allocation beyond
//! the input, strict and salvaging reads agree, a refused restore changes
//! nothing, an accepted one applies exactly the records read.

mod common;

use common::files::TempDir;
use common::fuzz::{self, check_file, encode_file, encode_file_v1, Recs};
use ddict::persist::{Kind, Wal, REC_CLEAR, REC_DELETE, REC_PUT};
use ddict::Error;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn mixed() -> Recs {
    let mut r: Recs = (0..6u8).map(|i| (REC_PUT, vec![b'k', i], vec![i; usize::from(i) * 7])).collect();
    r.push((REC_DELETE, vec![b'k', 2], vec![]));
    r.push((REC_PUT, b"big".to_vec(), vec![0xab; 1024]));
    r.push((REC_CLEAR, vec![], vec![]));
    r.push((REC_PUT, b"after".to_vec(), b"clear".to_vec()));
    r
}

fn corpus_files() -> Vec<(&'static str, Vec<u8>)> {
    let m = mixed();
    let puts: Recs = m.iter().filter(|r| r.0 == REC_PUT).take(4).cloned().collect();
    let full = encode_file(Kind::Log, 1 << 40, &m);
    let mut torn = full.clone();
    torn.truncate(full.len() - 9);
    let mut middle = full.clone();
    middle[full.len() / 2] ^= 0x08;
    let v1 = encode_file_v1(&m);
    let mut v1_torn = v1.clone();
    v1_torn.truncate(v1.len() - 3);
    vec![
        ("empty.wal", Vec::new()),
        ("header_only.wal", encode_file(Kind::Log, 7, &Recs::new())),
        ("puts.wal", encode_file(Kind::Log, 1000, &puts)),
        ("mixed.wal", full),
        ("torn_tail.wal", torn),
        ("damaged_middle.wal", middle),
        ("v1.wal", v1),
        ("v1_torn.wal", v1_torn),
    ]
}

#[test]
fn committed_corpus_is_current() {
    fuzz::check_corpus("wal", &corpus_files());
}

/// Restore `b` from a real file: refused (and unchanged) exactly when the
/// reader finds damage; otherwise every record read is applied.
fn through_a_file(b: &[u8], strict: &ddict::persist::Scan, recs: &Recs) -> Result<(), TestCaseError> {
    let d = TempDir::new("fuzzwal");
    std::fs::create_dir_all(d.path()).unwrap();
    let path = d.path().join("f.0.wal");
    std::fs::write(&path, b).unwrap();
    let mut applied = Recs::new();
    let r = Wal::open(d.path(), "f", 0, true, |op, k, v| {
        applied.push((op, k.to_vec(), v.to_vec()));
        Ok(())
    });
    match r {
        Ok(w) => {
            prop_assert!(strict.damaged.is_empty(), "a damaged log was accepted");
            prop_assert_eq!(&applied, recs);
            prop_assert_eq!(w.bytes, std::fs::metadata(&path).unwrap().len());
        }
        Err(Error::PersistCorrupt(c)) => {
            prop_assert!(!strict.damaged.is_empty());
            prop_assert_eq!(c.offset, strict.damaged[0].offset);
            prop_assert_eq!(c.records_after, strict.records_after_damage);
            prop_assert_eq!(std::fs::read(&path).unwrap(), b.to_vec(), "a refused log was changed");
        }
        Err(e) => prop_assert!(strict.version == 0, "unexpected error: {}", e),
    }
    Ok(())
}

#[test]
fn fuzz_wal() {
    let corpus = fuzz::corpus("wal");
    let n = AtomicU64::new(0);
    let runs = fuzz::run(corpus, fuzz::valid_file(Kind::Log), |b| {
        let (strict, recs) = check_file(b, Kind::Log)?;
        if n.fetch_add(1, Ordering::Relaxed) % 10 == 0 {
            through_a_file(b, &strict, &recs)?;
        }
        Ok(())
    });
    eprintln!("fuzz_wal: {runs} executions");
}
