//! The write-ahead log and snapshot of one shard (durable mode), how they
//! are read back, and how damaged ones are repaired.
//!
//! Files, for DDict `name` and shard `i` in directory `persist_path`:
//! `<name>.<i>.wal` (the log) and `<name>.<i>.snap` (a snapshot). Files are
//! created `0600` and directories `0700`, whatever the umask.
//!
//! Format 2 (written since records carry a magic and a sequence number):
//!
//! ```text
//!  file header, 20 bytes
//!   0  magic      "DDL\x89" (log) or "DDS\x89" (snapshot)
//!   4  u32        format version: 2
//!   8  u64        sequence number of the first record (random per file)
//!  16  u32        CRC-32 of bytes 0..16
//!  then records, back to back
//!   0  magic      c3 5a e1 7d
//!   4  u32        CRC-32 of bytes 8..24 (the rest of the record header)
//!   8  u32        body length
//!  12  u64        sequence number: the header's, then +1 per record
//!  20  u32        CRC-32 of the body
//!  24  body       u8 op (1 put, 2 delete, 3 clear, 4 end) | u32 key length | key | value
//! ```
//!
//! all integers little-endian. A snapshot ends with an end record (op 4,
//! no key, the value the u64 count of records before it), so a snapshot
//! cut at a record boundary (or to nothing: an empty snapshot) is seen to
//! be incomplete. Format 1 (no header; records `u32 length | u32 CRC-32 of
//! the body | body`) is still read; restoring rewrites such files in
//! format 2. An empty format-1 snapshot cannot be told from a cut one and
//! is refused like it; [`repair`] makes it an empty format-2 snapshot.
//!
//! Restoring reads the snapshot, then replays the log. Replaying the log
//! over a snapshot taken after some of its records gives the same state
//! (puts and deletes are replayed in order and the last one for a key
//! wins), so a crash between writing a snapshot and emptying the log loses
//! nothing.
//!
//! **Damage.** A record of the log that is cut short or fails its checks
//! with no valid record anywhere after it is a torn tail: a write the
//! process was killed in the middle of, never acknowledged. It is dropped
//! and the log truncated there. Anything else (a bad record followed by
//! valid ones, a gap in the sequence numbers, any damage in a snapshot)
//! is corruption: restoring refuses with [`Error::PersistCorrupt`], which
//! names the file, the byte offset and what follows, and leaves every file
//! as it is. [`repair`] keeps every valid record and rewrites the files.
//!
//! **Resynchronising** (to count what follows damage, or to salvage it)
//! looks for the next record whose magic, header CRC, length (within the
//! file), body CRC, op and key length all check out, and whose sequence
//! number is not below the one expected next (records copied from another
//! file carry numbers from another random start, so a value holding a copy
//! of a log is not mistaken for records). A false match needs a 32-bit
//! magic and two 32-bit CRCs to agree by chance. The header CRC is checked
//! before the length is trusted, so a body is read and summed only for a
//! real record header: resynchronising stays linear in the file size.
//! Format 1 has no magic: there a candidate must also be followed by a
//! second valid record (or end exactly at the end of the file).

use crate::Error;
use shm_primitives::filelock::{try_lock_exclusive, Lock};
use shm_primitives::process::hostname;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Record: store a value.
pub const REC_PUT: u8 = 1;
/// Record: remove a key.
pub const REC_DELETE: u8 = 2;
/// Record: remove every key.
pub const REC_CLEAR: u8 = 3;
/// Record: the end of a snapshot (value: u64 count of records before it).
pub const REC_END: u8 = 4;

/// The format written.
pub const VERSION: u32 = 2;
/// Bytes of a format-2 file header.
pub const FILE_HEADER: usize = 20;
/// Bytes of a format-2 record header (before the body).
pub const RECORD_HEADER: usize = 24;
/// Mode of every file created here.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory created here.
pub const DIR_MODE: u32 = 0o700;

const LOG_MAGIC: [u8; 4] = *b"DDL\x89";
const SNAP_MAGIC: [u8; 4] = *b"DDS\x89";
// Arbitrary; its last byte makes it a length over 2 GiB in format 1, so a
// format-2 file never reads as format-1 records.
const REC_MAGIC: [u8; 4] = [0xc3, 0x5a, 0xe1, 0x7d];
const V1_HEADER: usize = 8;
/// Body: op and key length.
const MIN_BODY: u32 = 5;
/// How far past the expected sequence number a resynchronised record may be.
const SEQ_WINDOW: u64 = 1 << 40;
/// Read-ahead of a file being read.
const WINDOW: usize = 1 << 20;

// ---- CRC-32 (IEEE, the same values as `shm_primitives::handle::crc32`) ----

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    !crc_update(!0, data)
}

// ---- records ---------------------------------------------------------------

/// Which file: what its records may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A write-ahead log: puts, deletes, clears.
    Log,
    /// A snapshot: puts, then an end record (format 2).
    Snapshot,
}

impl Kind {
    fn magic(self) -> [u8; 4] {
        match self {
            Kind::Log => LOG_MAGIC,
            Kind::Snapshot => SNAP_MAGIC,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Snapshot => "snapshot",
        }
    }

    fn allows(self, op: u8, version: u32) -> bool {
        match self {
            Kind::Log => matches!(op, REC_PUT | REC_DELETE | REC_CLEAR),
            Kind::Snapshot => op == REC_PUT || (op == REC_END && version >= 2),
        }
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The bytes end before the record does.
    Short,
    /// The record magic is wrong.
    Magic,
    /// The length is impossible.
    Length(u32),
    /// The CRC of the record header does not match.
    HeaderCrc,
    /// The CRC of the body does not match.
    Crc,
    /// The body does not parse (key longer than the body, unknown op, or
    /// an op whose key or value has the wrong size).
    Body,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Short => f.write_str("a record cut short"),
            RecordError::Magic => f.write_str("no record magic"),
            RecordError::Length(n) => write!(f, "an impossible record length ({n})"),
            RecordError::HeaderCrc => f.write_str("a record header failing its CRC"),
            RecordError::Crc => f.write_str("a record failing its CRC"),
            RecordError::Body => f.write_str("a record whose body does not parse"),
        }
    }
}

/// A record decoded from bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Sequence number (format 2; 0 in format 1).
    pub seq: u64,
    /// Operation.
    pub op: u8,
    /// Key.
    pub key: &'a [u8],
    /// Value.
    pub value: &'a [u8],
    /// Bytes the record takes.
    pub len: usize,
}

/// Append a format-2 record. Fails if the body does not fit a u32 length.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, op: u8, key: &[u8], value: &[u8]) -> Result<(), String> {
    let body_len = 5 + key.len() as u64 + value.len() as u64;
    let Ok(body_len) = u32::try_from(body_len) else {
        return Err(format!("a record of {body_len} bytes does not fit the log format (at most 4 GiB)"));
    };
    let start = out.len();
    out.extend_from_slice(&REC_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(op);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let body_crc = crc32(&out[start + RECORD_HEADER..]);
    out[start + 20..start + 24].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32(&out[start + 8..start + 24]);
    out[start + 4..start + 8].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

/// Append a format-1 record (only to make old files in tests).
pub fn encode_record_v1(out: &mut Vec<u8>, op: u8, key: &[u8], value: &[u8]) {
    let body_len = 5 + key.len() + value.len();
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

/// A format-2 file header.
pub fn encode_header(kind: Kind, first_seq: u64) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..4].copy_from_slice(&kind.magic());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Op, key and value of a body.
fn parse_body(body: &[u8]) -> Result<(u8, &[u8], &[u8]), RecordError> {
    if body.len() < MIN_BODY as usize {
        return Err(RecordError::Body);
    }
    let klen = u32_at(body, 1) as usize;
    if klen > body.len() - 5 {
        return Err(RecordError::Body);
    }
    let (op, key, value) = (body[0], &body[5..5 + klen], &body[5 + klen..]);
    let ok = match op {
        REC_PUT => true,
        REC_DELETE => value.is_empty(),
        REC_CLEAR => key.is_empty() && value.is_empty(),
        REC_END => key.is_empty() && value.len() == 8,
        _ => false,
    };
    if !ok {
        return Err(RecordError::Body);
    }
    Ok((op, key, value))
}

/// Decode the format-2 record at the start of `b`.
pub fn decode_record(b: &[u8]) -> Result<Decoded<'_>, RecordError> {
    if b.len() < RECORD_HEADER {
        return Err(if REC_MAGIC.starts_with(&b[..b.len().min(4)]) { RecordError::Short } else { RecordError::Magic });
    }
    if b[..4] != REC_MAGIC {
        return Err(RecordError::Magic);
    }
    if crc32(&b[8..RECORD_HEADER]) != u32_at(b, 4) {
        return Err(RecordError::HeaderCrc);
    }
    let len = u32_at(b, 8);
    if len < MIN_BODY {
        return Err(RecordError::Length(len));
    }
    let total = RECORD_HEADER + len as usize;
    if b.len() < total {
        return Err(RecordError::Short);
    }
    if crc32(&b[RECORD_HEADER..total]) != u32_at(b, 20) {
        return Err(RecordError::Crc);
    }
    let (op, key, value) = parse_body(&b[RECORD_HEADER..total])?;
    Ok(Decoded { seq: u64_at(b, 12), op, key, value, len: total })
}

/// Decode the format-1 record at the start of `b`.
pub fn decode_record_v1(b: &[u8]) -> Result<Decoded<'_>, RecordError> {
    if b.len() < V1_HEADER {
        return Err(RecordError::Short);
    }
    let len = u32_at(b, 0);
    if len < MIN_BODY {
        return Err(RecordError::Length(len));
    }
    let total = V1_HEADER + len as usize;
    if b.len() < total {
        return Err(RecordError::Short);
    }
    if crc32(&b[V1_HEADER..total]) != u32_at(b, 4) {
        return Err(RecordError::Crc);
    }
    let (op, key, value) = parse_body(&b[V1_HEADER..total])?;
    Ok(Decoded { seq: 0, op, key, value, len: total })
}

// ---- reading files -----------------------------------------------------------

/// Bytes read by offset: a file (through a read-ahead window) or a slice.
pub trait Source {
    /// Bytes in all.
    fn size(&self) -> u64;
    /// Fill `buf` from byte `off` (`off + buf.len() <= size()`).
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let off = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self.get(off..off + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A file being read.
#[derive(Debug)]
struct FileSource {
    file: File,
    size: u64,
    win: Vec<u8>,
    win_off: u64,
}

impl FileSource {
    fn open(path: &Path) -> Result<FileSource, Error> {
        let file = File::open(path).map_err(|e| io_err(path, "opening", e))?;
        let size = file.metadata().map_err(|e| io_err(path, "reading", e))?.len();
        Ok(FileSource { file, size, win: Vec::new(), win_off: 0 })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > WINDOW / 2 {
            return self.file.read_exact_at(buf, off);
        }
        let end = off + buf.len() as u64;
        if off < self.win_off || end > self.win_off + self.win.len() as u64 {
            let n = (self.size.saturating_sub(off)).min(WINDOW as u64) as usize;
            self.win.resize(n.max(buf.len()), 0);
            self.file.read_exact_at(&mut self.win, off)?;
            self.win_off = off;
        }
        let at = (off - self.win_off) as usize;
        buf.copy_from_slice(&self.win[at..at + buf.len()]);
        Ok(())
    }
}

/// A damaged stretch of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Offset of its first byte.
    pub offset: u64,
    /// Its length (0: something is missing at `offset`, like a snapshot's
    /// end record).
    pub bytes: u64,
    /// Records lost in it, when the sequence numbers tell (format 2).
    pub lost: Option<u64>,
    /// What was found at `offset`.
    pub what: String,
}

/// What reading a file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Format version (1 or 2).
    pub version: u32,
    /// Bytes in the file.
    pub size: u64,
    /// Records delivered.
    pub records: u64,
    /// Damaged spans (corruption), in file order.
    pub damaged: Vec<Span>,
    /// Valid records found after the first damaged span.
    pub records_after_damage: u64,
    /// A log's torn tail (damage with no valid record after it).
    pub torn_tail: Option<Span>,
    /// Bytes up to the end of the last record read before any damage
    /// (the file header included; 0 if the header is damaged).
    pub clean_len: u64,
    /// Sequence number of the next record after the clean part (format 2,
    /// when the header or a record gave it).
    pub next_seq: Option<u64>,
}

/// Why a file could not be read.
#[derive(Debug)]
pub enum ScanError {
    /// Reading failed.
    Io(io::Error),
    /// The record callback refused a record.
    Apply(String),
    /// The file is of a format newer than this build reads.
    Newer(u32),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// A record found in a file: its bytes are in the reader's body buffer.
#[derive(Debug, Clone, Copy)]
struct Found {
    len: u64,
    seq: u64,
    op: u8,
    klen: usize,
}

struct Reader<'s, S: Source + ?Sized> {
    src: &'s mut S,
    size: u64,
    version: u32,
    kind: Kind,
    body: Vec<u8>,
}

impl<S: Source + ?Sized> Reader<'_, S> {
    fn key_value(&self, f: &Found) -> (&[u8], &[u8]) {
        (&self.body[5..5 + f.klen], &self.body[5 + f.klen..])
    }

    /// The record at `pos`, checked (the op too, for the file's kind).
    fn record_at(&mut self, pos: u64) -> io::Result<Result<Found, RecordError>> {
        let hlen = if self.version >= 2 { RECORD_HEADER } else { V1_HEADER };
        if self.size - pos < hlen as u64 {
            return Ok(Err(RecordError::Short));
        }
        let mut hdr = [0u8; RECORD_HEADER];
        self.src.read_at(pos, &mut hdr[..hlen])?;
        let (len, crc) = if self.version >= 2 {
            if hdr[..4] != REC_MAGIC {
                return Ok(Err(RecordError::Magic));
            }
            if crc32(&hdr[8..RECORD_HEADER]) != u32_at(&hdr, 4) {
                return Ok(Err(RecordError::HeaderCrc));
            }
            (u32_at(&hdr, 8), u32_at(&hdr, 20))
        } else {
            (u32_at(&hdr, 0), u32_at(&hdr, 4))
        };
        if len < MIN_BODY {
            return Ok(Err(RecordError::Length(len)));
        }
        // The length is checked against the file before anything is
        // allocated for the body.
        if self.size - pos - (hlen as u64) < u64::from(len) {
            return Ok(Err(RecordError::Short));
        }
        self.body.resize(len as usize, 0);
        self.src.read_at(pos + hlen as u64, &mut self.body)?;
        if crc32(&self.body) != crc {
            return Ok(Err(RecordError::Crc));
        }
        let (op, klen) = match parse_body(&self.body) {
            Ok((op, k, _)) => (op, k.len()),
            Err(e) => return Ok(Err(e)),
        };
        if !self.kind.allows(op, self.version) {
            return Ok(Err(RecordError::Body));
        }
        let seq = if self.version >= 2 { u64_at(&hdr, 12) } else { 0 };
        Ok(Ok(Found { len: hlen as u64 + u64::from(len), seq, op, klen }))
    }

    /// The first offset at or after `from` holding the record magic.
    fn find_magic(&mut self, mut from: u64) -> io::Result<Option<u64>> {
        const CHUNK: usize = 64 << 10;
        let mut buf = vec![0u8; CHUNK];
        while self.size.saturating_sub(from) >= 4 {
            let n = (self.size - from).min(CHUNK as u64) as usize;
            self.src.read_at(from, &mut buf[..n])?;
            if let Some(i) = buf[..n].windows(4).position(|w| w == REC_MAGIC) {
                return Ok(Some(from + i as u64));
            }
            // The magic may straddle chunks: the next chunk starts 3 bytes back.
            from += (n - 3) as u64;
        }
        Ok(None)
    }

    /// The next acceptable record at or after `from` (see the module doc).
    fn resync(&mut self, mut from: u64, expected: Option<u64>) -> io::Result<Option<(u64, Found)>> {
        if self.version >= 2 {
            while let Some(p) = self.find_magic(from)? {
                if let Ok(f) = self.record_at(p)? {
                    if expected.map_or(true, |e| f.seq >= e && f.seq - e < SEQ_WINDOW) {
                        return Ok(Some((p, f)));
                    }
                }
                from = p + 1;
            }
            return Ok(None);
        }
        while self.size.saturating_sub(from) >= (V1_HEADER as u64 + u64::from(MIN_BODY)) {
            if let Ok(f) = self.record_at(from)? {
                let end = from + f.len;
                if end == self.size || self.record_at(end)?.is_ok() {
                    return Ok(Some((from, f)));
                }
            }
            from += 1;
        }
        Ok(None)
    }
}

/// The format of a file: 2 if it starts with its magic or holds a valid
/// format-2 record anywhere (a damaged header), else 1.
fn detect<S: Source + ?Sized>(src: &mut S, kind: Kind) -> io::Result<u32> {
    let size = src.size();
    if size == 0 {
        // Empty: a format-1 file (format 2 has at least a header).
        return Ok(1);
    }
    let n = size.min(4) as usize;
    let mut head = [0u8; 4];
    src.read_at(0, &mut head[..n])?;
    if head[..n] == kind.magic()[..n] {
        return Ok(2);
    }
    let mut r = Reader { src, size, version: 2, kind, body: Vec::new() };
    Ok(if r.resync(0, None)?.is_some() { 2 } else { 1 })
}

/// Read every record of a file of `kind` from `src`, calling `f(op, key,
/// value)` on each valid one in order. Without `salvage`, records after the
/// first damage are counted, not delivered; with it, every record that
/// resynchronising finds is delivered. Bounded: allocates at most the
/// longest record that fits in the bytes left, and looks at each byte a
/// bounded number of times for each damaged span.
pub fn scan<S: Source + ?Sized>(
    src: &mut S,
    kind: Kind,
    salvage: bool,
    mut f: impl FnMut(u8, &[u8], &[u8]) -> Result<(), String>,
) -> Result<Scan, ScanError> {
    let size = src.size();
    let version = detect(src, kind)?;
    let mut out = Scan { version, size, ..Scan::default() };
    if kind == Kind::Snapshot && size == 0 {
        // A snapshot is never written empty (format 2 has a header and an
        // end record), so an empty one was cut to nothing. Format 1 wrote
        // an empty snapshot for an empty DDict, which no byte tells apart
        // from that: it is refused too (repair rewrites it as an empty
        // format-2 snapshot, losing nothing).
        let what = "an empty snapshot (no file header, no end record)".into();
        out.damaged.push(Span { offset: 0, bytes: 0, lost: None, what });
        return Ok(out);
    }
    let mut r = Reader { src, size, version, kind, body: Vec::new() };
    // While out of step: where damage begins, what it is, and where to
    // look for the next record (the record at the start itself, when only
    // its sequence number was wrong: records were lost before it).
    let mut bad: Option<(u64, String, u64)> = None;
    let mut pos = 0u64;
    let mut expected = None;
    let mut first = None;
    let mut ended = false;
    if version >= 2 && size > 0 {
        let mut h = [0u8; FILE_HEADER];
        if size >= FILE_HEADER as u64 {
            r.src.read_at(0, &mut h)?;
        }
        let crc_ok = size >= FILE_HEADER as u64 && crc32(&h[..16]) == u32_at(&h, 16) && h[..4] == kind.magic();
        if crc_ok && u32_at(&h, 4) > VERSION {
            return Err(ScanError::Newer(u32_at(&h, 4)));
        }
        if crc_ok && u32_at(&h, 4) == VERSION {
            pos = FILE_HEADER as u64;
            expected = Some(u64_at(&h, 8));
            first = expected;
            out.clean_len = pos;
            out.next_seq = expected;
        } else {
            bad = Some((0, format!("a damaged {} header", kind.name()), 1));
        }
    }
    loop {
        let Some((start, what, from)) = bad.take() else {
            if ended && pos < size {
                bad = Some((pos, "data after the end record".into(), pos + 1));
                continue;
            }
            if pos == size {
                if kind == Kind::Snapshot && version >= 2 && !ended {
                    let s = Span { offset: size, bytes: 0, lost: None, what: "no end record".into() };
                    out.damaged.push(s);
                }
                break;
            }
            let found = r.record_at(pos)?;
            let mut from = pos + 1;
            let what = match found {
                Ok(fd) if expected.is_some_and(|e| fd.seq != e) => {
                    if expected.is_some_and(|e| fd.seq > e) {
                        from = pos;
                    }
                    format!("sequence number {} where {} was expected", fd.seq, expected.unwrap_or(0))
                }
                Ok(fd) if fd.op == REC_END => {
                    let count = u64_at(&r.body, 5);
                    match first {
                        Some(s) if s + count != fd.seq => format!("an end record counting {count} records"),
                        _ => {
                            ended = true;
                            pos += fd.len;
                            expected = Some(fd.seq + 1);
                            if out.damaged.is_empty() {
                                out.clean_len = pos;
                                out.next_seq = expected;
                            }
                            continue;
                        }
                    }
                }
                Ok(fd) => {
                    let damaged = !out.damaged.is_empty();
                    if !damaged || salvage {
                        let (k, v) = r.key_value(&fd);
                        f(fd.op, k, v).map_err(ScanError::Apply)?;
                        out.records += 1;
                    }
                    if damaged {
                        out.records_after_damage += 1;
                    }
                    pos += fd.len;
                    expected = (version >= 2).then_some(fd.seq + 1);
                    if !damaged {
                        out.clean_len = pos;
                        out.next_seq = expected;
                    }
                    continue;
                }
                Err(e) => e.to_string(),
            };
            bad = Some((pos, what, from));
            continue;
        };
        match r.resync(from, expected)? {
            Some((at, fd)) => {
                let lost = expected.map(|e| fd.seq - e);
                out.damaged.push(Span { offset: start, bytes: at - start, lost, what });
                pos = at;
                if version >= 2 {
                    expected = Some(fd.seq);
                }
            }
            None => {
                let s = Span { offset: start, bytes: size - start, lost: None, what };
                if kind == Kind::Log {
                    out.torn_tail = Some(s);
                } else {
                    out.damaged.push(s);
                }
                break;
            }
        }
    }
    Ok(out)
}

// ---- errors ------------------------------------------------------------------

/// A log or snapshot that is damaged (not just a torn tail): restoring
/// refused it and changed nothing on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The file.
    pub path: PathBuf,
    /// Byte offset where the (first) damage begins.
    pub offset: u64,
    /// What was found there.
    pub what: String,
    /// Valid records found after it.
    pub records_after: u64,
    /// Bytes from the offset to the end of the file.
    pub bytes_after: u64,
    /// Damaged spans in the file.
    pub spans: usize,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is damaged at byte {} ({}); {} valid records ({} bytes) follow it{}. Nothing was changed on disk; \
             to keep every valid record and drop the damaged bytes, repair it (DDict(..., restore=True, \
             repair=True), `dragon ddict-repair <persist_path> <name>`, or ddict::persist::repair)",
            self.path.display(),
            self.offset,
            self.what,
            self.records_after,
            self.bytes_after,
            if self.spans > 1 { format!(", in {} damaged spans", self.spans) } else { String::new() },
        )
    }
}

fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::Persist(format!("{what} {}: {e}", path.display()))
}

fn scan_err(path: &Path, e: ScanError) -> Error {
    match e {
        ScanError::Io(e) => io_err(path, "reading", e),
        ScanError::Apply(m) => Error::Persist(format!("{}: {m}", path.display())),
        ScanError::Newer(v) => Error::Persist(format!(
            "{} is in format {v}, newer than this version of the DDict reads (up to {VERSION})",
            path.display()
        )),
    }
}

/// Read `path` for a restore: apply every record; a torn tail of a log is
/// dropped (reported in the scan), any other damage is an error.
fn read_strict(
    path: &Path,
    kind: Kind,
    apply: &mut impl FnMut(u8, &[u8], &[u8]) -> Result<(), String>,
) -> Result<Scan, Error> {
    let mut src = FileSource::open(path)?;
    let s = scan(&mut src, kind, false, &mut *apply).map_err(|e| scan_err(path, e))?;
    if let Some(d) = s.damaged.first() {
        return Err(Error::PersistCorrupt(Box::new(Corruption {
            path: path.to_owned(),
            offset: d.offset,
            what: d.what.clone(),
            records_after: s.records_after_damage,
            bytes_after: s.size - d.offset,
            spans: s.damaged.len(),
        })));
    }
    Ok(s)
}

// ---- files and directories -----------------------------------------------------

/// Create `dir` and its missing parents `0700` (whatever the umask).
/// Directories that exist are left as they are.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Open (creating `0600` if needed) `path` for reading and writing, and
/// make its mode `0600` (whatever the umask, or the mode it had).
fn open_private(path: &Path, truncate: bool) -> Result<File, Error> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(truncate)
        .read(true)
        .write(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| io_err(path, "opening", e))?;
    f.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(|e| io_err(path, "setting the mode of", e))?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, "syncing directory", e))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_if_there(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path, "removing", e)),
        _ => Ok(()),
    }
}

/// A random first sequence number for a new file (below 2^62, so adding
/// any count of records never overflows).
fn fresh_seq() -> u64 {
    use transport_shm::segment::nonce32;
    ((u64::from(nonce32()) << 32) | u64::from(nonce32())) >> 2
}

/// Writes a new format-2 file (a temporary, renamed into place by the caller).
struct FileWriter {
    path: PathBuf,
    out: BufWriter<File>,
    kind: Kind,
    first: u64,
    next: u64,
    rec: Vec<u8>,
}

impl FileWriter {
    fn create(path: &Path, kind: Kind) -> Result<FileWriter, Error> {
        let file = open_private(path, true)?;
        let first = fresh_seq();
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&encode_header(kind, first)).map_err(|e| io_err(path, "writing", e))?;
        Ok(FileWriter { path: path.to_owned(), out, kind, first, next: first, rec: Vec::new() })
    }

    fn push(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.rec.clear();
        encode_record(&mut self.rec, self.next, op, key, value).map_err(Error::Persist)?;
        self.out.write_all(&self.rec).map_err(|e| io_err(&self.path, "writing", e))?;
        self.next += 1;
        Ok(())
    }

    /// End (a snapshot's end record), flush and sync; the next sequence number.
    fn finish(mut self) -> Result<u64, Error> {
        if self.kind == Kind::Snapshot {
            let count = self.next - self.first;
            self.push(REC_END, b"", &count.to_le_bytes())?;
        }
        let path = self.path.clone();
        let f = self.out.into_inner().map_err(|e| io_err(&path, "writing", e.into_error()))?;
        f.sync_all().map_err(|e| io_err(&path, "syncing", e))?;
        Ok(self.next)
    }
}

/// What [`repair`] did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRepair {
    /// The file.
    pub path: PathBuf,
    /// Its format before the repair.
    pub version: u32,
    /// Records kept.
    pub records: u64,
    /// Damaged spans skipped.
    pub skipped: Vec<Span>,
    /// A log's torn tail, dropped.
    pub torn_tail: Option<Span>,
    /// Whether the file was rewritten (a clean file in the current format
    /// is left as it is).
    pub rewritten: bool,
    /// Where the damaged original was kept (a hard link), if it was damaged.
    pub damaged_copy: Option<PathBuf>,
}

impl FileRepair {
    /// Bytes skipped (damaged spans and torn tail).
    pub fn bytes_skipped(&self) -> u64 {
        self.skipped.iter().chain(&self.torn_tail).map(|s| s.bytes).sum()
    }
}

/// Rewrite `path` in the current format with every valid record it holds
/// (a clean file, a torn tail dropped, or salvaged). With `keep`, a
/// damaged original stays beside it as `<file>.damaged` (then `.damaged.2`, ...).
fn rewrite(path: &Path, kind: Kind, keep: bool) -> Result<FileRepair, Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = with_suffix(path, ".tmp");
    let mut src = FileSource::open(path)?;
    let mut w = FileWriter::create(&tmp, kind)?;
    let mut werr = None;
    let scanned = scan(&mut src, kind, true, |op, k, v| {
        w.push(op, k, v).map_err(|e| {
            let m = e.to_string();
            werr = Some(e);
            m
        })
    });
    let s = match (scanned, werr) {
        (_, Some(e)) => return Err(e),
        (Err(e), None) => return Err(scan_err(path, e)),
        (Ok(s), None) => s,
    };
    w.finish()?;
    let mut damaged_copy = None;
    if keep && !s.damaged.is_empty() {
        let mut n = 1;
        let copy = loop {
            let c = with_suffix(path, &if n == 1 { ".damaged".to_owned() } else { format!(".damaged.{n}") });
            if !c.exists() {
                break c;
            }
            n += 1;
        };
        fs::hard_link(path, &copy).map_err(|e| io_err(&copy, "keeping the damaged file as", e))?;
        fs::set_permissions(&copy, Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_err(&copy, "setting the mode of", e))?;
        damaged_copy = Some(copy);
    }
    fs::rename(&tmp, path).map_err(|e| io_err(path, "renaming to", e))?;
    sync_dir(dir)?;
    Ok(FileRepair {
        path: path.to_owned(),
        version: s.version,
        records: s.records,
        skipped: s.damaged,
        torn_tail: s.torn_tail,
        rewritten: true,
        damaged_copy,
    })
}

/// Repair the files of shard `index` of DDict `name` in `dir`: keep every
/// valid record of its snapshot and log (resynchronising after damage),
/// report what was skipped, and rewrite each damaged (or old-format) file
/// clean. A damaged original is kept beside it (`<file>.damaged`). Run it
/// while no manager serves the DDict; then restore as usual.
pub fn repair(dir: &Path, name: &str, index: usize) -> Result<Vec<FileRepair>, Error> {
    let (wal, snap) = Wal::paths(dir, name, index);
    if !wal.exists() && !snap.exists() {
        return Ok(Vec::new());
    }
    // Not under a manager that serves the shard (nor another repair).
    let _lock = lock_shard(dir, name, index)?;
    let mut out = Vec::new();
    for (path, kind) in [(snap, Kind::Snapshot), (wal, Kind::Log)] {
        if !path.exists() {
            continue;
        }
        let mut src = FileSource::open(&path)?;
        let s = scan(&mut src, kind, false, |_, _, _| Ok(())).map_err(|e| scan_err(&path, e))?;
        drop(src);
        if s.damaged.is_empty() && s.torn_tail.is_none() && s.version == VERSION {
            out.push(FileRepair {
                path,
                version: s.version,
                records: s.records,
                skipped: Vec::new(),
                torn_tail: None,
                rewritten: false,
                damaged_copy: None,
            });
            continue;
        }
        out.push(rewrite(&path, kind, true)?);
    }
    Ok(out)
}

/// Shard indexes of DDict `name` that have a log or snapshot in `dir`.
pub fn shards_on_disk(dir: &Path, name: &str) -> Result<Vec<usize>, Error> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| io_err(dir, "listing", e))? {
        let e = e.map_err(|e| io_err(dir, "listing", e))?;
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(name)).and_then(|f| f.strip_prefix('.')) else {
            continue;
        };
        let Some(digits) = rest.strip_suffix(".wal").or_else(|| rest.strip_suffix(".snap")) else {
            continue;
        };
        if let Ok(i) = digits.parse::<usize>() {
            if i.to_string() == digits && !out.contains(&i) {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

// ---- one writer per shard ----------------------------------------------------------

/// The lock file of shard `index` of DDict `name` in `dir`.
fn lock_path(dir: &Path, name: &str, index: usize) -> PathBuf {
    dir.join(format!("{name}.{index}.lock"))
}

/// Take the lock of shard `index` of DDict `name` in `dir` (an exclusive
/// `flock` on its lock file, held while the returned file is open), or fail
/// with [`Error::Persist`] naming who holds it: a manager serving the shard
/// (another DDict of the same name and `persist_path`, in this program or
/// another) or a repair under way. The holder writes its pid and host into
/// the file, for that message.
pub fn lock_shard(dir: &Path, name: &str, index: usize) -> Result<File, Error> {
    create_private_dir_all(dir).map_err(|e| io_err(dir, "creating", e))?;
    let path = lock_path(dir, name, index);
    let mut f = open_private(&path, false)?;
    // A file system without locks (Lustre mounted without `flock`, say)
    // serves without one: as before there were locks.
    if try_lock_exclusive(&f).map_err(|e| io_err(&path, "locking", e))? == Lock::Held {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        return Err(Error::Persist(format!(
            "the files of shard {index} of DDict {name:?} in {} are in use{}: another DDict of that name \
             and persist_path is open (in this program or another), or a repair of it runs; \
             destroy it (or wait for the repair) first",
            dir.display(),
            if holder.is_empty() { String::new() } else { format!(" by {holder}") }
        )));
    }
    let me = format!("pid {} on {}\n", std::process::id(), hostname());
    f.set_len(0).and_then(|()| f.write_all_at(me.as_bytes(), 0)).map_err(|e| io_err(&path, "writing", e))?;
    f.seek(io::SeekFrom::Start(0)).map_err(|e| io_err(&path, "seeking", e))?;
    Ok(f)
}

// ---- the log of a live shard ------------------------------------------------------

/// One shard's log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    stem: String,
    file: File,
    /// The shard's lock ([`lock_shard`]), held while this log is open.
    _lock: File,
    buf: Vec<u8>,
    /// A record that could not be encoded: the next sync fails.
    failed: Option<String>,
    /// Sequence number of the next record written.
    next_seq: u64,
    /// Sequence number of the first record in `buf`.
    pending_seq: u64,
    /// Bytes in the log file.
    pub bytes: u64,
}

impl Wal {
    /// Paths of the log and snapshot of shard `index` of DDict `name`.
    pub fn paths(dir: &Path, name: &str, index: usize) -> (PathBuf, PathBuf) {
        (dir.join(format!("{name}.{index}.wal")), dir.join(format!("{name}.{index}.snap")))
    }

    /// Open (creating if needed) the log of shard `index` of DDict `name`
    /// in `dir`. With `restore`, first call `apply` on every record of the
    /// snapshot and the log: a torn tail of the log is dropped, any other
    /// damage fails with [`Error::PersistCorrupt`] and changes nothing on
    /// disk. Without `restore`, start from empty files.
    pub fn open(
        dir: &Path,
        name: &str,
        index: usize,
        restore: bool,
        apply: impl FnMut(u8, &[u8], &[u8]) -> Result<(), String>,
    ) -> Result<Wal, Error> {
        // One manager per shard's files: before anything is read or changed.
        let lock = lock_shard(dir, name, index)?;
        Self::open_locked(lock, dir, name, index, restore, apply)
    }

    /// [`Wal::open`] with the shard's lock already taken ([`lock_shard`]):
    /// a manager takes it before it creates the shard's memory, so that one
    /// refused the files has made nothing to clean up.
    pub fn open_locked(
        lock: File,
        dir: &Path,
        name: &str,
        index: usize,
        restore: bool,
        mut apply: impl FnMut(u8, &[u8], &[u8]) -> Result<(), String>,
    ) -> Result<Wal, Error> {
        let (wal, snap) = Self::paths(dir, name, index);
        // (length to keep, next sequence number) of an existing log.
        let mut keep = None;
        if restore {
            let s = if snap.exists() { Some(read_strict(&snap, Kind::Snapshot, &mut apply)?) } else { None };
            let w = if wal.exists() { Some(read_strict(&wal, Kind::Log, &mut apply)?) } else { None };
            // Everything read back: now files may change.
            if s.is_some_and(|s| s.version < VERSION) {
                rewrite(&snap, Kind::Snapshot, false)?;
            }
            if let Some(w) = w {
                if w.version < VERSION {
                    rewrite(&wal, Kind::Log, false)?;
                    let mut src = FileSource::open(&wal)?;
                    let s = scan(&mut src, Kind::Log, false, |_, _, _| Ok(())).map_err(|e| scan_err(&wal, e))?;
                    keep = s.next_seq.map(|n| (s.clean_len, n));
                } else {
                    // A log whose header is damaged with nothing valid
                    // after it starts afresh.
                    keep = w.next_seq.filter(|_| w.clean_len >= FILE_HEADER as u64).map(|n| (w.clean_len, n));
                }
            }
        } else {
            remove_if_there(&snap)?;
        }
        remove_if_there(&with_suffix(&snap, ".tmp"))?;
        remove_if_there(&with_suffix(&wal, ".tmp"))?;
        let mut file = open_private(&wal, false)?;
        let (bytes, next_seq) = match keep {
            // Drop a torn tail.
            Some((len, next)) => {
                file.set_len(len).map_err(|e| io_err(&wal, "truncating", e))?;
                (len, next)
            }
            None => reset_log(&mut file, &wal)?,
        };
        file.sync_all().map_err(|e| io_err(&wal, "syncing", e))?;
        sync_dir(dir)?;
        file.seek(io::SeekFrom::Start(bytes)).map_err(|e| io_err(&wal, "seeking", e))?;
        Ok(Wal {
            dir: dir.to_owned(),
            stem: format!("{name}.{index}"),
            file,
            _lock: lock,
            buf: Vec::new(),
            failed: None,
            next_seq,
            pending_seq: next_seq,
            bytes,
        })
    }

    /// Queue a record (written by [`Wal::sync`]).
    pub fn append(&mut self, op: u8, key: &[u8], value: &[u8]) {
        match encode_record(&mut self.buf, self.next_seq, op, key, value) {
            Ok(()) => self.next_seq += 1,
            Err(e) => self.failed = Some(e),
        }
    }

    /// Whether records are queued.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty() || self.failed.is_some()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.wal", self.stem))
    }

    /// Write every queued record and make it durable (one `fdatasync`).
    /// On failure none of them is kept: the log is cut back to what it
    /// held before, so a half-written batch never sits before later records.
    pub fn sync(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() && self.failed.is_none() {
            return Ok(());
        }
        let path = self.log_path();
        let r = match self.failed.take() {
            Some(m) => Err(Error::Persist(m)),
            None => self
                .file
                .write_all(&self.buf)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| io_err(&path, "writing", e)),
        };
        match r {
            Ok(()) => {
                self.bytes += self.buf.len() as u64;
                self.pending_seq = self.next_seq;
            }
            Err(_) => {
                self.next_seq = self.pending_seq;
                let cut = self.file.set_len(self.bytes).and_then(|()| self.file.seek(io::SeekFrom::Start(self.bytes)));
                if let Err(e) = cut {
                    // The log may end in part of a batch: refuse every
                    // later write rather than log after it.
                    self.failed =
                        Some(format!("the log {} could not be cut back after a failed write: {e}", path.display()));
                }
            }
        }
        self.buf.clear();
        r
    }

    /// Replace the snapshot with the records `fill` writes (every live
    /// entry), then empty the log.
    pub fn compact(&mut self, fill: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]))) -> Result<(), Error> {
        self.sync()?;
        let snap = self.dir.join(format!("{}.snap", self.stem));
        let tmp = with_suffix(&snap, ".tmp");
        let mut w = FileWriter::create(&tmp, Kind::Snapshot)?;
        let mut err = None;
        fill(&mut |k, v| {
            if err.is_none() {
                err = w.push(REC_PUT, k, v).err();
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        w.finish()?;
        fs::rename(&tmp, &snap).map_err(|e| io_err(&snap, "renaming to", e))?;
        sync_dir(&self.dir)?;
        let wal = self.log_path();
        let (bytes, next) = reset_log(&mut self.file, &wal)?;
        self.file.sync_all().map_err(|e| io_err(&wal, "syncing", e))?;
        self.bytes = bytes;
        self.next_seq = next;
        self.pending_seq = next;
        Ok(())
    }
}

/// Empty `file` and write a fresh header: (bytes, next sequence number).
fn reset_log(file: &mut File, path: &Path) -> Result<(u64, u64), Error> {
    let first = fresh_seq();
    file.set_len(0).map_err(|e| io_err(path, "truncating", e))?;
    file.write_all_at(&encode_header(Kind::Log, first), 0).map_err(|e| io_err(path, "writing", e))?;
    file.seek(io::SeekFrom::Start(FILE_HEADER as u64)).map_err(|e| io_err(path, "seeking", e))?;
    Ok((FILE_HEADER as u64, first))
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
    fn crc_matches_the_handle_crc() {
        for data in [&b""[..], b"a", b"123456789", &[0xff; 1000]] {
            assert_eq!(crc32(data), shm_primitives::handle::crc32(data));
        }
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
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
        let mut torn = Vec::new();
        encode_record(&mut torn, 1, REC_PUT, b"d", &[1; 50]).unwrap();
        f.write_all(&torn[..40]).unwrap();
        drop(f);
        assert_eq!(replay(&dir).len(), 2);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), len);
        // Compaction keeps the state; replaying an old log over it too.
        let mut w = Wal::open(&dir, "t", 0, true, |_, _, _| Ok(())).unwrap();
        let snapshot = m.clone();
        w.compact(|put| snapshot.iter().for_each(|(k, v)| put(k, v))).unwrap();
        assert_eq!(w.bytes, FILE_HEADER as u64);
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

    #[test]
    fn records_round_trip_and_reject_damage() {
        let mut b = Vec::new();
        encode_record(&mut b, 77, REC_PUT, b"key", b"value").unwrap();
        let d = decode_record(&b).unwrap();
        assert_eq!((d.seq, d.op, d.key, d.value, d.len), (77, REC_PUT, &b"key"[..], &b"value"[..], b.len()));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode_record(&c).is_err(), "a flip at byte {i} was accepted");
        }
        assert_eq!(decode_record(&b[..b.len() - 1]), Err(RecordError::Short));
        let mut v1 = Vec::new();
        encode_record_v1(&mut v1, REC_DELETE, b"k", b"");
        assert_eq!(decode_record_v1(&v1).unwrap().key, b"k");
        assert!(decode_record(&v1).is_err());
    }

    #[test]
    fn one_manager_per_shard_and_no_repair_under_it() {
        let dir = tmpdir("lock");
        let mut w = Wal::open(&dir, "t", 0, false, |_, _, _| Ok(())).unwrap();
        w.append(REC_PUT, b"k", b"v");
        w.sync().unwrap();
        let again = Wal::open(&dir, "t", 0, true, |_, _, _| Ok(())).unwrap_err().to_string();
        let me = format!("pid {} on ", std::process::id());
        assert!(
            again.contains("shard 0 of DDict \"t\"") && again.contains("are in use by") && again.contains(&me),
            "{again}"
        );
        let fixing = repair(&dir, "t", 0).unwrap_err().to_string();
        assert!(fixing.contains("are in use"), "{fixing}");
        // Another shard of the same DDict, and the same shard of another, are free.
        drop(Wal::open(&dir, "t", 1, false, |_, _, _| Ok(())).unwrap());
        drop(Wal::open(&dir, "u", 0, false, |_, _, _| Ok(())).unwrap());
        drop(w);
        // Free once the holder closed it: the record is there.
        assert_eq!(replay(&dir).get(&b"k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
        assert!(repair(&dir, "t", 0).unwrap().iter().all(|r| !r.rewritten));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
