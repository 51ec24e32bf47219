//! The message format queues and pipes share with the Python package
//! (`dragon/_wire.py`, `dragon-py/src/channel.rs`), byte for byte, so that
//! Python and Rust processes can use one queue.
//!
//! A channel message is bytes whose first byte says what they are:
//!
//! ```text
//!  0x80 ...   a pickle (every pickle of protocol >= 2 starts with 0x80): the whole message
//!  0x02 ...   an exact Python `bytes` object: the rest
//!  0x03 ...   a large message left in a block of the run's block store (Python only)
//!  0x01 ...   a control message (a pipe end was closed): skipped by receivers
//!  0x00 ...   raw bytes that would otherwise start with one of these tags: the rest
//!  other      raw bytes, whole (also the empty message)
//! ```

use std::fmt;

/// First byte of a pickle (the PROTO opcode); the pickle is the message.
pub const TAG_PICKLE: u8 = 0x80;
/// An exact `bytes` object.
pub const TAG_BYTES: u8 = 0x02;
/// A message in a block of the run's block store (sent by Python for
/// messages of 256 KiB and more; the payload names the block).
pub const TAG_LENT: u8 = transport_shm::blocks::TAG_BLOCK;
/// A control message.
pub const TAG_CONTROL: u8 = 0x01;
/// Raw bytes that needed a tag.
pub const TAG_RAW: u8 = 0x00;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tag {
    /// A pickle (its payload starts with `0x80`). Python's `get` unpickles it.
    Pickle,
    /// Bytes that Python receives as a `bytes` object (what
    /// [`crate::Queue::put`] sends).
    Bytes,
    /// Raw bytes (what Python's `Connection.send_bytes` sends).
    Raw,
    /// A control message; queues and pipes skip these on receive.
    Control,
    /// A large message a Python process left in its run's block store; the
    /// payload is the block's descriptor, which only the Python package
    /// resolves.
    Lent,
}

impl Tag {
    /// The tag's byte.
    pub fn byte(self) -> u8 {
        match self {
            Tag::Pickle => TAG_PICKLE,
            Tag::Bytes => TAG_BYTES,
            Tag::Raw => TAG_RAW,
            Tag::Control => TAG_CONTROL,
            Tag::Lent => TAG_LENT,
        }
    }
}

/// A payload that cannot be sent under the tag asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A [`Tag::Pickle`] payload must start with the pickle opcode `0x80`.
    NotAPickle,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NotAPickle => f.write_str("a pickle payload must start with the PROTO opcode 0x80"),
        }
    }
}

impl std::error::Error for WireError {}

/// The byte to send before `payload` under `tag` (`None`: the payload goes
/// as it is).
pub fn prefix(tag: Tag, payload: &[u8]) -> Result<Option<u8>, WireError> {
    match tag {
        Tag::Pickle if payload.first() == Some(&TAG_PICKLE) => Ok(None),
        Tag::Pickle => Err(WireError::NotAPickle),
        Tag::Raw => Ok(match payload.first() {
            Some(&(TAG_RAW | TAG_CONTROL | TAG_BYTES | TAG_LENT | TAG_PICKLE)) => Some(TAG_RAW),
            _ => None,
        }),
        t => Ok(Some(t.byte())),
    }
}

/// The whole message for `payload` under `tag`.
pub fn encode(tag: Tag, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let p = prefix(tag, payload)?;
    let mut v = Vec::with_capacity(payload.len() + usize::from(p.is_some()));
    v.extend(p);
    v.extend_from_slice(payload);
    Ok(v)
}

/// A received message's tag and where its payload starts.
pub fn split(msg: &[u8]) -> (Tag, usize) {
    match msg.first() {
        Some(&TAG_PICKLE) => (Tag::Pickle, 0),
        Some(&TAG_BYTES) => (Tag::Bytes, 1),
        Some(&TAG_RAW) => (Tag::Raw, 1),
        Some(&TAG_CONTROL) => (Tag::Control, 1),
        Some(&TAG_LENT) => (Tag::Lent, 1),
        _ => (Tag::Raw, 0),
    }
}

/// A received message: its tag and payload (the channel's message,
/// without a copy).
pub struct Item<M = channels_core::Message> {
    tag: Tag,
    skip: usize,
    msg: M,
}

impl<M: AsRef<[u8]>> Item<M> {
    /// Decode a channel message.
    pub fn new(msg: M) -> Item<M> {
        let (tag, skip) = split(msg.as_ref());
        Item { tag, skip, msg }
    }

    /// What the message is.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// The payload (without its tag byte).
    pub fn payload(&self) -> &[u8] {
        &self.msg.as_ref()[self.skip..]
    }

    /// The payload as a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.payload().to_vec()
    }

    /// The whole message as received (tag byte included).
    pub fn message(&self) -> &M {
        &self.msg
    }
}

impl<M: AsRef<[u8]>> AsRef<[u8]> for Item<M> {
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

impl<M: AsRef<[u8]>> fmt::Debug for Item<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item").field("tag", &self.tag).field("len", &self.payload().len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_tag() {
        let cases: &[(Tag, &[u8])] = &[
            (Tag::Bytes, b"abc"),
            (Tag::Bytes, b""),
            (Tag::Pickle, b"\x80\x05K\x01."),
            (Tag::Raw, b"hello"),
            (Tag::Raw, b""),
            (Tag::Raw, b"\x80not a pickle"),
            (Tag::Raw, b"\x01\x02"),
            (Tag::Control, b""),
        ];
        for &(tag, payload) in cases {
            let m = encode(tag, payload).unwrap();
            let item = Item::new(m);
            assert_eq!((item.tag(), item.payload()), (tag, payload), "{tag:?} {payload:?}");
        }
    }

    #[test]
    fn formats_match_the_python_package() {
        assert_eq!(encode(Tag::Bytes, b"x").unwrap(), b"\x02x");
        assert_eq!(encode(Tag::Raw, b"x").unwrap(), b"x");
        assert_eq!(encode(Tag::Raw, b"\x02x").unwrap(), b"\x00\x02x");
        assert_eq!(encode(Tag::Control, b"").unwrap(), b"\x01");
        assert_eq!(encode(Tag::Pickle, b"\x80\x04N.").unwrap(), b"\x80\x04N.");
        assert_eq!(encode(Tag::Pickle, b"N."), Err(WireError::NotAPickle));
    }
}
