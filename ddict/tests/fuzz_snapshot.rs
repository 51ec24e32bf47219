//! Fuzzing the snapshot reader (see `common/fuzz.rs`): mutated snapshots
//! from `tests/corpus/snapshot/` and generated ones, read strictly and
//! salvaging, and for one case in ten restored from a real file: no panic,
//! no hang, no allocation beyond the input, any damage refused without a
//! change on disk, salvaged records round-trip through a clean file.

mod common;

use common::files::TempDir;
use common::fuzz::{self, check_file, encode_file, encode_file_v1, Recs};
use ddict::persist::{Kind, Wal, REC_PUT};
use ddict::Error;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn corpus_files() -> Vec<(&'static str, Vec<u8>)> {
    let recs: Recs = (0..8u8).map(|i| (REC_PUT, vec![b's', i], vec![i; usize::from(i) * 11])).collect();
    let full = encode_file(Kind::Snapshot, 99, &recs);
    let end_len = ddict::persist::RECORD_HEADER + 5 + 8;
    let mut missing_end = full.clone();
    missing_end.truncate(full.len() - end_len);
    vec![
        ("empty.snap", encode_file(Kind::Snapshot, 3, &Recs::new())),
        ("puts.snap", full),
        ("missing_end.snap", missing_end),
        ("v1.snap", encode_file_v1(&recs)),
        ("v1_empty.snap", Vec::new()),
    ]
}

#[test]
fn committed_corpus_is_current() {
    fuzz::check_corpus("snapshot", &corpus_files());
}

fn through_a_file(b: &[u8], strict: &ddict::persist::Scan, recs: &Recs) -> Result<(), TestCaseError> {
    let d = TempDir::new("fuzzsnap");
    std::fs::create_dir_all(d.path()).unwrap();
    let path = d.path().join("f.0.snap");
    std::fs::write(&path, b).unwrap();
    let mut applied = Recs::new();
    let r = Wal::open(d.path(), "f", 0, true, |op, k, v| {
        applied.push((op, k.to_vec(), v.to_vec()));
        Ok(())
    });
    match r {
        Ok(_) => {
            prop_assert!(strict.damaged.is_empty(), "a damaged snapshot was accepted");
            prop_assert_eq!(&applied, recs);
        }
        Err(Error::PersistCorrupt(c)) => {
            prop_assert!(!strict.damaged.is_empty());
            prop_assert_eq!(c.offset, strict.damaged[0].offset);
            prop_assert_eq!(std::fs::read(&path).unwrap(), b.to_vec(), "a refused snapshot was changed");
        }
        Err(e) => prop_assert!(strict.version == 0, "unexpected error: {}", e),
    }
    Ok(())
}

#[test]
fn fuzz_snapshot() {
    let corpus = fuzz::corpus("snapshot");
    let n = AtomicU64::new(0);
    let runs = fuzz::run(corpus, fuzz::valid_file(Kind::Snapshot), |b| {
        let (strict, recs) = check_file(b, Kind::Snapshot)?;
        prop_assert!(strict.torn_tail.is_none(), "a snapshot has no torn tail");
        if n.fetch_add(1, Ordering::Relaxed) % 10 == 0 {
            through_a_file(b, &strict, &recs)?;
        }
        Ok(())
    });
    eprintln!("fuzz_snapshot: {runs} executions");
}
