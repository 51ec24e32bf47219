//! Byte-mutation fuzzing on stable Rust, driven by proptest: start from a
//! committed corpus of valid inputs (`tests/corpus/<target>/`) and
//! generated ones, apply random mutations (bit flips, inserts, deletes,
//! truncation, splices, interesting values), run the decoder.
//!
//! `DRAGON_FUZZ_CASES` sets the number of executions (default 1000, the
//! short run of `make test`). A case that runs for more than 60 s aborts
//! the binary and prints its input (a hang); the peak virtual memory of
//! the process may not grow by more than [`VM_GROWTH_LIMIT`] over a run
//! (no length field makes a decoder allocate what the input does not hold).

use proptest::prelude::*;
use std::path::PathBuf;
use std::time::Duration;

/// How much the peak virtual memory may grow over a fuzz run.
pub const VM_GROWTH_LIMIT: u64 = 512 << 20;

/// Executions per target.
pub fn cases() -> u32 {
    std::env::var("DRAGON_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// The committed corpus of `target`.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "the corpus {} is empty", dir.display());
    out
}

/// One mutation; positions are taken modulo the input length.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// Copy `len` bytes from `from` over (or, with `insert`, before) `to`.
    Splice {
        from: usize,
        len: usize,
        to: usize,
        insert: bool,
    },
    /// Overwrite with an interesting value.
    Value {
        at: usize,
        value: Vec<u8>,
    },
}

fn interesting() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![0; 4]),
        Just(vec![0xff; 4]),
        Just(u32::MAX.to_le_bytes().to_vec()),
        Just(0x8000_0000u32.to_le_bytes().to_vec()),
        Just(0x7fff_ffffu32.to_le_bytes().to_vec()),
        Just(5u32.to_le_bytes().to_vec()),
        Just(4u32.to_le_bytes().to_vec()),
        Just(u64::MAX.to_le_bytes().to_vec()),
        Just(vec![0xc3, 0x5a, 0xe1, 0x7d]),
        Just(b"DDL\x89".to_vec()),
        Just(b"DDS\x89".to_vec()),
        Just(vec![1]),
        Just(vec![4]),
        Just(vec![0x80]),
        (0u32..64).prop_map(|n| n.to_le_bytes().to_vec()),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), 1usize..256, any::<usize>(), any::<bool>())
            .prop_map(|(from, len, to, insert)| Mutation::Splice { from, len, to, insert }),
        3 => (any::<usize>(), interesting()).prop_map(|(at, value)| Mutation::Value { at, value }),
    ]
}

pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..8)
}

/// `input` with `muts` applied in order.
pub fn apply(input: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = input.to_vec();
    for m in muts {
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << (bit % 8),
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } if n > 0 => {
                let at = at % n;
                b.drain(at..(at + len).min(n));
            }
            Mutation::Truncate { at } => b.truncate(at % (n + 1)),
            Mutation::Splice { from, len, to, insert } if n > 0 => {
                let from = from % n;
                let chunk: Vec<u8> = b[from..(from + len).min(n)].to_vec();
                let to = to % (n + 1);
                if *insert {
                    b.splice(to..to, chunk);
                } else {
                    let end = (to + chunk.len()).min(n);
                    b.splice(to..end, chunk);
                }
            }
            Mutation::Value { at, value } if n > 0 => {
                let at = at % n;
                let end = (at + value.len()).min(n);
                b[at..end].copy_from_slice(&value[..end - at]);
            }
            _ => {}
        }
    }
    b
}

/// Peak virtual memory of this process (bytes).
pub fn vm_peak() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmPeak:")).expect("VmPeak in /proc/self/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Runs `f` over `cases()` mutated inputs from `corpus` and `generated`,
/// then checks the memory bound. Returns the number of executions.
pub fn run(
    corpus: Vec<Vec<u8>>,
    generated: impl Strategy<Value = Vec<u8>>,
    f: impl Fn(&[u8]) -> Result<(), TestCaseError>,
) -> u64 {
    let before = vm_peak();
    let n = corpus.len();
    let base = prop_oneof![(0..n).prop_map(move |i| corpus[i].clone()), generated];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let watch = test_support::watchdog::steps(Duration::from_secs(60), |input| {
        format!("fuzz: a case has run for over 60 s (a hang); its input ({} bytes): {:02x?}", input.len(), input)
    });
    let count = std::cell::Cell::new(0u64);
    let r = runner.run(&(base, mutations()), |(input, muts)| {
        let b = apply(&input, &muts);
        watch.start(&b);
        let r = f(&b);
        watch.end();
        count.set(count.get() + 1);
        r?;
        let grew = vm_peak().saturating_sub(before);
        prop_assert!(grew < VM_GROWTH_LIMIT, "peak virtual memory grew by {} bytes (input of {} bytes)", grew, b.len());
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    let grew = vm_peak().saturating_sub(before);
    assert!(grew < VM_GROWTH_LIMIT, "peak virtual memory grew by {grew} bytes over the run");
    count.get()
}

// ---- DDict files --------------------------------------------------------------

use ddict::persist::{self, Kind, Scan, ScanError, REC_CLEAR, REC_DELETE, REC_END, REC_PUT};

/// Records as read: (op, key, value).
pub type Recs = Vec<(u8, Vec<u8>, Vec<u8>)>;

/// A format-2 file of `kind` holding `recs` (a snapshot gets its end record).
pub fn encode_file(kind: Kind, first: u64, recs: &Recs) -> Vec<u8> {
    let mut b = persist::encode_header(kind, first).to_vec();
    let mut seq = first;
    for (op, k, v) in recs {
        persist::encode_record(&mut b, seq, *op, k, v).unwrap();
        seq += 1;
    }
    if kind == Kind::Snapshot {
        persist::encode_record(&mut b, seq, REC_END, b"", &(seq - first).to_le_bytes()).unwrap();
    }
    b
}

/// A format-1 file holding `recs`.
pub fn encode_file_v1(recs: &Recs) -> Vec<u8> {
    let mut b = Vec::new();
    for (op, k, v) in recs {
        persist::encode_record_v1(&mut b, *op, k, v);
    }
    b
}

fn record(kind: Kind) -> impl Strategy<Value = (u8, Vec<u8>, Vec<u8>)> {
    let key = prop::collection::vec(any::<u8>(), 0..24);
    let value = prop::collection::vec(any::<u8>(), 0..200);
    let put = (key.clone(), value).prop_map(|(k, v)| (REC_PUT, k, v));
    match kind {
        Kind::Snapshot => put.boxed(),
        Kind::Log => prop_oneof![
            6 => put,
            2 => key.prop_map(|k| (REC_DELETE, k, Vec::new())),
            1 => Just((REC_CLEAR, Vec::new(), Vec::new())),
        ]
        .boxed(),
    }
}

/// Valid files of `kind`: format 2 (mostly) or 1.
pub fn valid_file(kind: Kind) -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), prop::collection::vec(record(kind), 0..12), 0u8..8).prop_map(move |(first, recs, v)| {
        if v == 0 {
            encode_file_v1(&recs)
        } else {
            encode_file(kind, first >> 2, &recs)
        }
    })
}

/// Read `b` as a file of `kind`: the scan and the records delivered.
pub fn read(b: &[u8], kind: Kind, salvage: bool) -> (Result<Scan, ScanError>, Recs) {
    let mut recs = Recs::new();
    let s = persist::scan(&mut &b[..], kind, salvage, |op, k, v| {
        recs.push((op, k.to_vec(), v.to_vec()));
        Ok(())
    });
    (s, recs)
}

/// The checks every fuzzed log or snapshot must pass: reading never fails
/// (but for a newer format), strict and salvaging reads agree, spans lie in
/// the file, and the salvaged records written as a clean file read back
/// clean and equal.
pub fn check_file(b: &[u8], kind: Kind) -> Result<(Scan, Recs), TestCaseError> {
    let (strict, srecs) = read(b, kind, false);
    let (salvaged, vrecs) = read(b, kind, true);
    let (strict, salvaged) = match (strict, salvaged) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(ScanError::Newer(_)), Err(ScanError::Newer(_))) => return Ok((Scan::default(), Recs::new())),
        (a, b) => return Err(TestCaseError::fail(format!("reading failed: {a:?} / {b:?}"))),
    };
    prop_assert_eq!(strict.records, srecs.len() as u64);
    prop_assert!(vrecs.starts_with(&srecs), "salvage disagrees with the strict read before the damage");
    prop_assert_eq!(strict.records_after_damage, salvaged.records_after_damage);
    if strict.damaged.is_empty() {
        prop_assert_eq!(&srecs, &vrecs);
        prop_assert_eq!(strict.records_after_damage, 0);
    } else {
        prop_assert_eq!(vrecs.len() as u64, strict.records + strict.records_after_damage);
    }
    prop_assert_eq!(&strict.damaged, &salvaged.damaged);
    prop_assert_eq!(&strict.torn_tail, &salvaged.torn_tail);
    let size = b.len() as u64;
    prop_assert!(strict.clean_len <= size);
    let mut last = 0;
    for s in strict.damaged.iter().chain(&strict.torn_tail) {
        prop_assert!(s.offset >= last && s.offset + s.bytes <= size, "span {:?} out of place", s);
        last = s.offset + s.bytes;
    }
    for (op, k, v) in &vrecs {
        let ok = match kind {
            Kind::Log => matches!(op, &REC_PUT | &REC_DELETE | &REC_CLEAR),
            Kind::Snapshot => *op == REC_PUT,
        };
        prop_assert!(ok, "record op {} delivered from a {:?}", op, kind);
        prop_assert!(*op != REC_DELETE || v.is_empty());
        prop_assert!(*op != REC_CLEAR || (k.is_empty() && v.is_empty()));
    }
    let clean = encode_file(kind, 12345, &vrecs);
    let (again, recs) = read(&clean, kind, false);
    let again = again.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert!(again.damaged.is_empty() && again.torn_tail.is_none(), "a rewritten file is not clean");
    prop_assert_eq!(recs, vrecs);
    Ok((strict, srecs))
}

/// Whether the committed corpus of `target` holds exactly `files`
/// (`DRAGON_FUZZ_WRITE_CORPUS=1` writes them).
pub fn check_corpus(target: &str, files: &[(&str, Vec<u8>)]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    if std::env::var("DRAGON_FUZZ_WRITE_CORPUS").is_ok_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, b) in files {
            std::fs::write(dir.join(name), b).unwrap();
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e} (DRAGON_FUZZ_WRITE_CORPUS=1 writes it)", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "the corpus {} is not what its generator writes", dir.display());
    for (name, b) in files {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), b, "corpus file {name} is stale");
    }
}
