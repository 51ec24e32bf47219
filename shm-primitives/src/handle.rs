//! Handles: the small versioned byte string another process attaches by.
//!
//! ```text
//!  offset  size  field
//!  0       4     magic "DRGH"
//!  4       1     format version (HANDLE_VERSION)
//!  5       1     kind (Kind)
//!  6       2     flags (little endian; reserved, 0)
//!  8       8     object id        (matches the object's header)
//!  16      8     generation       (matches the object's header)
//!  24      8     offset of the object in its segment
//!  32      4     home node (0 on a single node)
//!  36      1     segment name length n (1..=200)
//!  37      n     segment name (ASCII: letters, digits, '-', '_', '.')
//!  37+n    1     transport address length m (0 = local)
//!  38+n    m     transport address (UTF-8)
//!  38+n+m  4     CRC-32 (IEEE) of every byte before it
//! ```
//!
//! All integers are little endian. The text form is the same bytes in
//! URL-safe base64 without padding. Parsing checks every field, so garbage,
//! a truncated handle or a handle of another kind is a clear [`HandleError`];
//! checking id and generation against the object itself is the attacher's
//! job (a destroyed-and-recreated object has a new generation).

use std::fmt;

/// First four bytes of every handle.
pub const HANDLE_MAGIC: [u8; 4] = *b"DRGH";
/// Format version written by this build; parsing accepts only this.
pub const HANDLE_VERSION: u8 = 1;
/// Longest segment name a handle may carry.
pub const MAX_SEGMENT_NAME: usize = 200;
/// Longest transport address a handle may carry.
pub const MAX_ADDRESS: usize = 255;

const FIXED: usize = 36;

/// What kind of object a handle refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// A message channel.
    Channel = 1,
    /// A lock.
    Lock = 2,
    /// A recursive lock.
    RLock = 3,
    /// A (possibly bounded) counting semaphore.
    Semaphore = 4,
    /// An event.
    Event = 5,
    /// A barrier.
    Barrier = 6,
    /// A condition variable.
    Condition = 7,
    /// A raw shared-memory block (shared values and arrays).
    Memory = 8,
    /// A distributed dictionary.
    DDict = 9,
}

impl Kind {
    /// The kind with this wire value, if any.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Channel,
            2 => Kind::Lock,
            3 => Kind::RLock,
            4 => Kind::Semaphore,
            5 => Kind::Event,
            6 => Kind::Barrier,
            7 => Kind::Condition,
            8 => Kind::Memory,
            9 => Kind::DDict,
            _ => return None,
        })
    }
}

/// A parsed handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle {
    /// Kind of object.
    pub kind: Kind,
    /// Object id, as written in the object's header.
    pub id: u64,
    /// Generation, as written in the object's header.
    pub generation: u64,
    /// Byte offset of the object within its segment.
    pub offset: u64,
    /// Home node (0 on a single node).
    pub node: u32,
    /// Name of the shared-memory segment holding the object.
    pub segment: String,
    /// Transport address of the home node (empty: local).
    pub address: String,
}

/// Why a handle could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleError {
    /// Fewer bytes than any handle has.
    TooShort(usize),
    /// The bytes do not start with the handle magic: not a handle.
    BadMagic,
    /// Written by a build with another handle format.
    UnsupportedVersion(u8),
    /// Unknown object kind.
    UnknownKind(u8),
    /// The handle ends before its declared fields do.
    Truncated,
    /// The checksum does not match: the handle was damaged or forged.
    BadChecksum,
    /// The segment name or address is not valid.
    BadField(&'static str),
    /// Extra bytes after the checksum.
    TrailingBytes(usize),
    /// The text form is not URL-safe base64.
    BadText,
    /// The handle is valid but for another kind of object.
    WrongKind { expected: Kind, found: Kind },
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::TooShort(n) => write!(f, "not a handle: {n} bytes is shorter than any handle"),
            HandleError::BadMagic => write!(f, "not a handle: wrong magic bytes"),
            HandleError::UnsupportedVersion(v) => {
                write!(f, "handle format version {v} is not supported by this build (expects {HANDLE_VERSION})")
            }
            HandleError::UnknownKind(k) => write!(f, "handle names an unknown object kind {k}"),
            HandleError::Truncated => write!(f, "handle is truncated"),
            HandleError::BadChecksum => write!(f, "handle checksum mismatch: damaged or forged handle"),
            HandleError::BadField(what) => write!(f, "handle has an invalid {what}"),
            HandleError::TrailingBytes(n) => write!(f, "handle has {n} unexpected trailing bytes"),
            HandleError::BadText => write!(f, "handle text is not URL-safe base64"),
            HandleError::WrongKind { expected, found } => write!(f, "handle is for a {found:?}, not a {expected:?}"),
        }
    }
}

impl std::error::Error for HandleError {}

fn valid_segment(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT_NAME
        && s[0] != b'.'
        && s.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Handle {
    /// Encode to bytes.
    ///
    /// # Panics
    ///
    /// If the segment name or address is invalid (construct handles only
    /// from names the crate created).
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(valid_segment(self.segment.as_bytes()), "invalid segment name in handle");
        assert!(self.address.len() <= MAX_ADDRESS, "transport address too long");
        let mut out = Vec::with_capacity(FIXED + 6 + self.segment.len() + self.address.len());
        out.extend_from_slice(&HANDLE_MAGIC);
        out.push(HANDLE_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.node.to_le_bytes());
        out.push(self.segment.len() as u8);
        out.extend_from_slice(self.segment.as_bytes());
        out.push(self.address.len() as u8);
        out.extend_from_slice(self.address.as_bytes());
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse bytes produced by [`Handle::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Handle, HandleError> {
        if b.len() < 4 {
            return Err(HandleError::TooShort(b.len()));
        }
        if b[..4] != HANDLE_MAGIC {
            return Err(HandleError::BadMagic);
        }
        if b.len() < 5 {
            return Err(HandleError::Truncated);
        }
        if b[4] != HANDLE_VERSION {
            return Err(HandleError::UnsupportedVersion(b[4]));
        }
        if b.len() < FIXED + 1 {
            return Err(HandleError::Truncated);
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let n = b[FIXED] as usize;
        let addr_len_at = FIXED + 1 + n;
        if b.len() < addr_len_at + 1 {
            return Err(HandleError::Truncated);
        }
        let m = b[addr_len_at] as usize;
        let crc_at = addr_len_at + 1 + m;
        if b.len() < crc_at + 4 {
            return Err(HandleError::Truncated);
        }
        if b.len() > crc_at + 4 {
            return Err(HandleError::TrailingBytes(b.len() - crc_at - 4));
        }
        let crc = u32::from_le_bytes(b[crc_at..crc_at + 4].try_into().expect("4 bytes"));
        if crc != crc32(&b[..crc_at]) {
            return Err(HandleError::BadChecksum);
        }
        let kind = Kind::from_u8(b[5]).ok_or(HandleError::UnknownKind(b[5]))?;
        if u16::from_le_bytes([b[6], b[7]]) != 0 {
            return Err(HandleError::BadField("flags"));
        }
        let seg = &b[FIXED + 1..addr_len_at];
        if !valid_segment(seg) {
            return Err(HandleError::BadField("segment name"));
        }
        let address =
            std::str::from_utf8(&b[addr_len_at + 1..crc_at]).map_err(|_| HandleError::BadField("transport address"))?;
        Ok(Handle {
            kind,
            id: u64_at(8),
            generation: u64_at(16),
            offset: u64_at(24),
            node: u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")),
            segment: String::from_utf8(seg.to_vec()).map_err(|_| HandleError::BadField("segment name"))?,
            address: address.to_owned(),
        })
    }

    /// Parse and check the kind.
    pub fn from_bytes_of(b: &[u8], expected: Kind) -> Result<Handle, HandleError> {
        let h = Handle::from_bytes(b)?;
        if h.kind != expected {
            return Err(HandleError::WrongKind { expected, found: h.kind });
        }
        Ok(h)
    }

    /// URL-safe text form.
    pub fn to_text(&self) -> String {
        base64url_encode(&self.to_bytes())
    }

    /// Parse the text form.
    pub fn from_text(s: &str) -> Result<Handle, HandleError> {
        Handle::from_bytes(&base64url_decode(s).ok_or(HandleError::BadText)?)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// CRC-32 (IEEE 802.3, reflected), bitwise: handles are tiny.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| B64.iter().position(|&b| b == c).map(|p| p as u32);
    let bytes = s.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut v = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            v |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((v >> (16 - 8 * i)) as u8);
        }
    }
    // Reject non-canonical encodings (stray bits after the last byte).
    if base64url_encode(&out) != s {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handle {
        Handle {
            kind: Kind::Channel,
            id: 0x0102_0304_0506_0708,
            generation: 42,
            offset: 4096,
            node: 3,
            segment: "dragon-1-2-deadbeef-ch-1-abc".into(),
            address: "10.0.0.2:7000".into(),
        }
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(Handle::from_bytes(&h.to_bytes()).unwrap(), h);
        assert_eq!(Handle::from_text(&h.to_text()).unwrap(), h);
        assert!(h.to_text().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rejects_damage() {
        let b = sample().to_bytes();
        assert_eq!(Handle::from_bytes(&b[..3]), Err(HandleError::TooShort(3)));
        assert_eq!(Handle::from_bytes(b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"), Err(HandleError::BadMagic));
        assert_eq!(Handle::from_bytes(&b[..b.len() - 1]), Err(HandleError::Truncated));
        let mut v = b.clone();
        v[4] = 9;
        assert_eq!(Handle::from_bytes(&v), Err(HandleError::UnsupportedVersion(9)));
        let mut v = b.clone();
        v[12] ^= 1;
        assert_eq!(Handle::from_bytes(&v), Err(HandleError::BadChecksum));
        let mut v = b.clone();
        v.push(0);
        assert_eq!(Handle::from_bytes(&v), Err(HandleError::TrailingBytes(1)));
        assert_eq!(
            Handle::from_bytes_of(&b, Kind::Lock),
            Err(HandleError::WrongKind { expected: Kind::Lock, found: Kind::Channel })
        );
        assert_eq!(Handle::from_text("!!!!"), Err(HandleError::BadText));
    }

    #[test]
    fn base64_round_trips_all_lengths() {
        for n in 0..20u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64url_decode(&base64url_encode(&data)).unwrap(), data);
        }
    }
}
