//! Logs and snapshots written through the real `Wal`, damaged on purpose,
//! and read back into a model.

use ddict::persist::{self, Wal, REC_CLEAR, REC_DELETE, REC_PUT};
use ddict::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A path for a fresh directory of one test (nothing is created; removed
/// on drop).
#[allow(unused_imports)]
pub use test_support::TempDir;

pub type Model = HashMap<Vec<u8>, Vec<u8>>;

/// Restore shard 0 of DDict `name` into a map (as a manager would).
pub fn restore(dir: &Path, name: &str) -> Result<Model, Error> {
    let mut m = Model::new();
    Wal::open(dir, name, 0, true, |op, k, v| {
        match op {
            REC_PUT => {
                m.insert(k.to_vec(), v.to_vec());
            }
            REC_DELETE => {
                m.remove(k);
            }
            REC_CLEAR => m.clear(),
            _ => return Err(format!("unexpected op {op}")),
        }
        Ok(())
    })?;
    Ok(m)
}

/// Write one acknowledged put per pair into a new log of shard 0 of
/// `name`; returns each record's byte range in the log.
pub fn write_log(dir: &Path, name: &str, pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(u64, u64)> {
    let mut w = Wal::open(dir, name, 0, false, |_, _, _| Ok(())).unwrap();
    let mut spans = Vec::new();
    for (k, v) in pairs {
        let start = w.bytes;
        w.append(REC_PUT, k, v);
        w.sync().unwrap();
        spans.push((start, w.bytes));
    }
    spans
}

/// Write a snapshot of `pairs` (in order) for shard 0 of `name`, with an
/// empty log after it; returns each record's byte range in the snapshot.
pub fn write_snapshot(dir: &Path, name: &str, pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(u64, u64)> {
    let mut w = Wal::open(dir, name, 0, false, |_, _, _| Ok(())).unwrap();
    w.compact(|put| pairs.iter().for_each(|(k, v)| put(k, v))).unwrap();
    drop(w);
    let mut spans = Vec::new();
    let mut at = persist::FILE_HEADER as u64;
    for (k, v) in pairs {
        let len = (persist::RECORD_HEADER + 5 + k.len() + v.len()) as u64;
        spans.push((at, at + len));
        at += len;
    }
    spans
}

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    Wal::paths(dir, name, 0).0
}

pub fn snap_path(dir: &Path, name: &str) -> PathBuf {
    Wal::paths(dir, name, 0).1
}

/// `n` distinct keys with values of varied sizes.
pub fn pairs(n: usize, seed: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            (format!("key-{i}").into_bytes(), (0..len).map(|j| (x as usize + j * 31) as u8).collect())
        })
        .collect()
}

/// The corruption error of a result.
pub fn corruption<T: std::fmt::Debug>(r: Result<T, Error>) -> persist::Corruption {
    match r {
        Err(Error::PersistCorrupt(c)) => *c,
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

/// Bytes of a file, with each byte's original offset (None: changed or
/// inserted): damage applied to it keeps track of which records stay intact.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub bytes: Vec<u8>,
    pub origin: Vec<Option<u64>>,
}

/// One kind of damage.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Flip bit `bit` of the byte at `at` (modulo the length).
    Flip { at: usize, bit: u8 },
    /// Zero `len` bytes from `at`.
    Zero { at: usize, len: usize },
    /// Cut the file at `at`.
    Truncate { at: usize },
    /// Insert `bytes` before `at`.
    Insert { at: usize, bytes: Vec<u8> },
}

impl Tracked {
    pub fn new(bytes: Vec<u8>) -> Tracked {
        let origin = (0..bytes.len() as u64).map(Some).collect();
        Tracked { bytes, origin }
    }

    pub fn apply(&mut self, d: &Damage) {
        let n = self.bytes.len();
        match d {
            Damage::Flip { at, bit } if n > 0 => {
                let at = at % n;
                self.bytes[at] ^= 1 << (bit % 8);
                self.origin[at] = None;
            }
            Damage::Zero { at, len } if n > 0 => {
                let at = at % n;
                for i in at..(at + len).min(n) {
                    if self.bytes[i] != 0 {
                        self.bytes[i] = 0;
                        self.origin[i] = None;
                    }
                }
            }
            Damage::Truncate { at } => {
                let at = at % (n + 1);
                self.bytes.truncate(at);
                self.origin.truncate(at);
            }
            Damage::Insert { at, bytes } => {
                let at = at % (n + 1);
                self.bytes.splice(at..at, bytes.iter().copied());
                self.origin.splice(at..at, bytes.iter().map(|_| None));
            }
            _ => {}
        }
    }

    /// Whether the original bytes `start..end` are all still there, in
    /// order and next to each other.
    pub fn intact(&self, start: u64, end: u64) -> bool {
        let Some(p) = self.origin.iter().position(|o| *o == Some(start)) else {
            return false;
        };
        (start..end).enumerate().all(|(i, o)| self.origin.get(p + i) == Some(&Some(o)))
    }

    /// Whether the bytes differ from `original` (two flips of the same bit
    /// undo each other: the file is then undamaged).
    pub fn changed(&self, original: &[u8]) -> bool {
        self.bytes != original
    }
}
