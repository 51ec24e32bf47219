//! The write-ahead log and snapshot of one shard (durable mode).
//!
//! Files, for DDict `name` and shard `i` in directory `persist_path`:
//! `<name>.<i>.wal` (the log) and `<name>.<i>.snap` (a snapshot). Both are
//! sequences of records:
//!
//! ```text
//!  u32 body length | u32 CRC-32 of the body | body
//!  body: u8 op (1 put, 2 delete, 3 clear) | u32 key length | key | value
//! ```
//!
//! all integers little-endian. Restoring reads the snapshot, then replays
//! the log; a record cut short or failing its CRC ends the log (a write the
//! process was killed in the middle of, which was never acknowledged), and
//! the log is truncated there. Replaying the log over a snapshot taken
//! after some of its records gives the same state (puts and deletes are
//! replayed in order and the last one for a key wins), so a crash between
//! writing a snapshot and truncating the log loses nothing.

use channels_core::handle::crc32;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Record: store a value.
pub const REC_PUT: u8 = 1;
/// Record: remove a key.
pub const REC_DELETE: u8 = 2;
/// Record: remove every key.
pub const REC_CLEAR: u8 = 3;

/// Longest record body accepted when reading (a corrupt length ends the log).
const MAX_BODY: u32 = 1 << 31;

/// One shard's log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    stem: String,
    file: File,
    buf: Vec<u8>,
    /// Bytes in the log file.
    pub bytes: u64,
}

fn io(path: &Path, what: &str, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Wal {
    /// Paths of the log and snapshot of shard `index` of DDict `name`.
    pub fn paths(dir: &Path, name: &str, index: usize) -> (PathBuf, PathBuf) {
        (dir.join(format!("{name}.{index}.wal")), dir.join(format!("{name}.{index}.snap")))
    }

    /// Open (creating if needed) the log of shard `index` of DDict `name`
    /// in `dir`. With `restore`, first call `apply` on every record of the
    /// snapshot and the log; without, start from empty files.
    pub fn open(
        dir: &Path,
        name: &str,
        index: usize,
        restore: bool,
        mut apply: impl FnMut(u8, &[u8], &[u8]) -> Result<(), String>,
    ) -> Result<Wal, String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating", e))?;
        let (wal, snap) = Self::paths(dir, name, index);
        let mut good_len = 0;
        if restore {
            if snap.exists() {
                read_records(&snap, &mut apply)?;
            }
            if wal.exists() {
                good_len = read_records(&wal, &mut apply)?;
            }
        } else {
            let _ = std::fs::remove_file(&snap);
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&wal)
            .map_err(|e| io(&wal, "opening", e))?;
        // Drop a torn tail (or, without restore, everything).
        file.set_len(good_len).map_err(|e| io(&wal, "truncating", e))?;
        file.sync_all().map_err(|e| io(&wal, "syncing", e))?;
        sync_dir(dir)?;
        let mut w =
            Wal { dir: dir.to_owned(), stem: format!("{name}.{index}"), file, buf: Vec::new(), bytes: good_len };
        use std::io::Seek;
        w.file.seek(io::SeekFrom::End(0)).map_err(|e| io(&wal, "seeking", e))?;
        Ok(w)
    }

    /// Queue a record (written by [`Wal::sync`]).
    pub fn append(&mut self, op: u8, key: &[u8], value: &[u8]) {
        encode(&mut self.buf, op, key, value);
    }

    /// Whether records are queued.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Write every queued record and make it durable (one `fdatasync`).
    pub fn sync(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format!("{}.wal", self.stem));
        self.file.write_all(&self.buf).map_err(|e| io(&path, "writing", e))?;
        self.file.sync_data().map_err(|e| io(&path, "syncing", e))?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Replace the snapshot with the records `fill` writes (every live
    /// entry), then empty the log.
    pub fn compact(&mut self, fill: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]))) -> Result<(), String> {
        self.sync()?;
        let snap = self.dir.join(format!("{}.snap", self.stem));
        let tmp = self.dir.join(format!("{}.snap.tmp", self.stem));
        let mut out = Vec::new();
        fill(&mut |k, v| encode(&mut out, REC_PUT, k, v));
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, "creating", e))?;
        f.write_all(&out).map_err(|e| io(&tmp, "writing", e))?;
        f.sync_all().map_err(|e| io(&tmp, "syncing", e))?;
        std::fs::rename(&tmp, &snap).map_err(|e| io(&snap, "renaming to", e))?;
        sync_dir(&self.dir)?;
        let wal = self.dir.join(format!("{}.wal", self.stem));
        self.file.set_len(0).map_err(|e| io(&wal, "truncating", e))?;
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(0)).map_err(|e| io(&wal, "seeking", e))?;
        self.file.sync_all().map_err(|e| io(&wal, "syncing", e))?;
        self.bytes = 0;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, "syncing directory", e))
}

fn encode(out: &mut Vec<u8>, op: u8, key: &[u8], value: &[u8]) {
    let body_len = 1 + 4 + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(op);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Call `apply` on every whole record of `path`; returns the length of the
/// whole-record prefix.
fn read_records(path: &Path, apply: &mut impl FnMut(u8, &[u8], &[u8]) -> Result<(), String>) -> Result<u64, String> {
    let f = File::open(path).map_err(|e| io(path, "opening", e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut good = 0u64;
    let mut body = Vec::new();
    loop {
        let mut hdr = [0u8; 8];
        if read_full(&mut r, &mut hdr).map_err(|e| io(path, "reading", e))? < 8 {
            return Ok(good);
        }
        let len = u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(hdr[4..].try_into().expect("4 bytes"));
        if !(5..=MAX_BODY).contains(&len) {
            return Ok(good);
        }
        body.resize(len as usize, 0);
        if read_full(&mut r, &mut body).map_err(|e| io(path, "reading", e))? < len as usize || crc32(&body) != crc {
            return Ok(good);
        }
        let klen = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        if 5 + klen > body.len() {
            return Ok(good);
        }
        apply(body[0], &body[5..5 + klen], &body[5 + klen..])?;
        good += 8 + u64::from(len);
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ddict-wal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn replay(dir: &Path) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut m = HashMap::new();
        Wal::open(dir, "t", 0, true, |op, k, v| {
            match op {
                REC_PUT => {
                    m.insert(k.to_vec(), v.to_vec());
                }
                REC_DELETE => {
                    m.remove(k);
                }
                _ => m.clear(),
            }
            Ok(())
        })
        .unwrap();
        m
    }

    #[test]
    fn log_snapshot_and_torn_tail() {
        let dir = tmpdir("a");
        let mut w = Wal::open(&dir, "t", 0, false, |_, _, _| Ok(())).unwrap();
        w.append(REC_PUT, b"a", b"1");
        w.append(REC_PUT, b"b", b"2");
        w.sync().unwrap();
        w.append(REC_DELETE, b"a", b"");
        w.append(REC_PUT, b"c", &[7; 1000]);
        w.sync().unwrap();
        drop(w);
        let m = replay(&dir);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&b"c".to_vec()], vec![7; 1000]);
        // A torn record at the end is dropped and the log truncated.
        let (wal, _) = Wal::paths(&dir, "t", 0);
        let len = std::fs::metadata(&wal).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 1, 1]).unwrap();
        drop(f);
        assert_eq!(replay(&dir).len(), 2);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), len);
        // Compaction keeps the state; replaying an old log over it too.
        let mut w = Wal::open(&dir, "t", 0, true, |_, _, _| Ok(())).unwrap();
        let snapshot = m.clone();
        w.compact(|put| snapshot.iter().for_each(|(k, v)| put(k, v))).unwrap();
        assert_eq!(w.bytes, 0);
        w.append(REC_CLEAR, b"", b"");
        w.append(REC_PUT, b"z", b"9");
        w.sync().unwrap();
        drop(w);
        let m2 = replay(&dir);
        assert_eq!(m2.len(), 1);
        // Without restore, everything starts empty.
        drop(Wal::open(&dir, "t", 0, false, |_, _, _| Ok(())).unwrap());
        assert!(replay(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
