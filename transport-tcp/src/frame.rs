//! Frames: how requests and replies travel on a TCP stream.
//!
//! ```text
//!   length u32   bytes after this field (kind + id + payload), at most MAX_FRAME
//!   kind   u8    what the frame is (`proto::Op` for requests, `proto::REPLY_*` for replies)
//!   id     u64   request id, echoed by its reply
//!   payload      the rest
//! ```
//!
//! All integers are little endian. A length above [`MAX_FRAME`] is a
//! protocol error (the connection is dropped), so a corrupt or hostile peer
//! cannot make the other side allocate without bound.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Bytes of a frame's header after the length field.
pub const HEADER: usize = 1 + 8;
/// Largest frame (kind + id + payload): 256 MiB.
pub const MAX_FRAME: usize = 256 << 20;
/// Frame kind of a piece of a message sent in several frames: the pieces
/// (same id) come first, in order, and the message's last frame carries
/// its real kind and the rest of the payload. Messages larger than a
/// frame travel that way.
pub const PART: u8 = 0x7E;
/// Payload bytes per frame when a message is cut into pieces.
pub const CHUNK: usize = 4 << 20;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: u8,
    /// Request id.
    pub id: u64,
    /// The rest.
    pub payload: Bytes,
}

/// A frame that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Its length field is below the header size.
    TooShort(usize),
    /// Its length field is above [`MAX_FRAME`].
    TooLong(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(n) => write!(f, "frame of {n} bytes is shorter than its header"),
            FrameError::TooLong(n) => write!(f, "frame of {n} bytes is longer than the limit ({MAX_FRAME})"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Append frame (`kind`, `id`, `payload`) to `out`.
pub fn encode(out: &mut BytesMut, kind: u8, id: u64, payload: &[u8]) {
    let len = HEADER + payload.len();
    assert!(len <= MAX_FRAME, "frame of {len} bytes over the limit");
    out.reserve(4 + len);
    out.put_u32_le(len as u32);
    out.put_u8(kind);
    out.put_u64_le(id);
    out.put_slice(payload);
}

/// Append a frame whose payload is `parts` one after the other.
pub fn encode_parts(out: &mut BytesMut, kind: u8, id: u64, parts: &[&[u8]]) {
    let len = HEADER + parts.iter().map(|p| p.len()).sum::<usize>();
    assert!(len <= MAX_FRAME, "frame of {len} bytes over the limit");
    out.reserve(4 + len);
    out.put_u32_le(len as u32);
    out.put_u8(kind);
    out.put_u64_le(id);
    for p in parts {
        out.put_slice(p);
    }
}

/// The length, kind and id of a frame whose payload is `payload_len` bytes.
pub fn header(kind: u8, id: u64, payload_len: usize) -> Bytes {
    let len = HEADER + payload_len;
    assert!(len <= MAX_FRAME, "frame of {len} bytes over the limit");
    let mut b = BytesMut::with_capacity(4 + HEADER);
    b.put_u32_le(len as u32);
    b.put_u8(kind);
    b.put_u64_le(id);
    b.freeze()
}

/// Take the next whole frame off the front of `buf`, if it holds one.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len < HEADER {
        return Err(FrameError::TooShort(len));
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let kind = buf.get_u8();
    let id = buf.get_u64_le();
    let payload = buf.split_to(len - HEADER).freeze();
    Ok(Some(Frame { kind, id, payload }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of frames, cut into any pieces, decodes back to itself.
        #[test]
        fn frames_survive_any_split(
            frames in proptest::collection::vec((any::<u8>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..12),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = BytesMut::new();
            for (k, id, p) in &frames {
                encode(&mut wire, *k, *id, p);
            }
            let wire = wire.freeze();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                i += 1;
                while let Some(f) = decode(&mut buf).unwrap() {
                    got.push((f.kind, f.id, f.payload.to_vec()));
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut b = BytesMut::from(&[3u8, 0, 0, 0, 1, 2, 3][..]);
        assert_eq!(decode(&mut b), Err(FrameError::TooShort(3)));
        let mut b = BytesMut::from(&((MAX_FRAME + 1) as u32).to_le_bytes()[..]);
        assert_eq!(decode(&mut b), Err(FrameError::TooLong(MAX_FRAME + 1)));
    }
}
