//! What the two ends of a link exchange: the connection address (over the
//! existing authenticated stream, before any RDMA traffic) and the header
//! of every message (over RDMA). Integers are little endian.
//!
//! ```text
//! Address (offer from the initiator, answer from the responder):
//!   0  magic "DRVB"        4  version u16       6  role u8 (0 offer, 1 answer)
//!   7  link layer u8       8  queue pair number u32      12 first PSN u32
//!   16 LID u16             18 MTU code u8       19 RDMA reads outstanding u8
//!   20 GID (16 bytes)
//!   36 receive ring: address u64, rkey u32, slots u32, slot size u32
//!   56 control receives u32   60 receive buffer size u32
//!   64 fabric data length u16, then that many bytes (at most 512)
//!
//! Message header (24 bytes, at the start of every message):
//!   0  kind u8 (DATA, LARGE, CTRL)   1 flags u8 (HELLO, BYE)   2 zero u16
//!   4  payload length u32 (DATA; for LARGE the bytes inline after the
//!      descriptor, at most 64; 0 for CTRL)
//!   8  data slots freed u32    12 control messages seen u32
//!   16 large messages read u32 (all three cumulative, wrapping)
//!   20 sequence number u32 (data or control, by kind)
//!
//! LARGE descriptor (after the header): address u64, length u64, rkey u32,
//! zero u32: where the receiver RDMA-reads the message from. The message
//! is the inline bytes after the descriptor (the header's length field
//! says how many) followed by the bytes read.
//! ```

use crate::verbs::{Gid, LinkLayer, Mtu, QpAddress};
use std::fmt;

/// Address magic.
pub const MAGIC: [u8; 4] = *b"DRVB";
/// Address format version.
pub const VERSION: u16 = 2;
/// Fixed part of an address.
pub const ADDRESS_FIXED: usize = 66;
/// Most fabric data an address carries.
pub const MAX_FABRIC: usize = 512;
/// Bytes of a message header.
pub const HEADER: usize = 24;
/// Bytes of a LARGE descriptor.
pub const DESCRIPTOR: usize = 24;
/// Most bytes a LARGE message carries inline after its descriptor.
pub const MAX_PREFIX: usize = 64;

/// A data message: its payload follows the header.
pub const DATA: u8 = 1;
/// A large message: a descriptor follows the header.
pub const LARGE: u8 = 2;
/// A control message: the header only (credits, read completions, keepalive).
pub const CTRL: u8 = 3;
/// Flag of the initiator's first control message.
pub const HELLO: u8 = 1;
/// Flag of the last message of a side that closes.
pub const BYE: u8 = 2;

/// Bounds the decoder enforces on a peer's receive resources.
pub const MAX_SLOTS: u32 = 4096;
/// Largest receive ring slot.
pub const MAX_SLOT_SIZE: u32 = 16 << 20;
/// Fewest control receives (see `flow::ctrl_threshold`).
pub const MIN_CTRL: u32 = 3;
/// Most control receives.
pub const MAX_CTRL: u32 = 1024;

/// A peer's bytes that are not what they should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn bad(why: impl Into<String>) -> WireError {
    WireError(why.into())
}

/// One side's half of the connection exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Offer (initiator) or answer (responder).
    pub answer: bool,
    /// The queue pair to connect to.
    pub qp: QpAddress,
    /// RDMA reads the side allows outstanding.
    pub max_reads: u8,
    /// Its receive ring: where DATA messages are RDMA-written.
    pub ring_addr: u64,
    /// The ring's remote key.
    pub ring_rkey: u32,
    /// Slots of the ring: the data credits the peer starts with.
    pub slots: u32,
    /// Bytes per slot (header included).
    pub slot_size: u32,
    /// Control receives: the control credits the peer starts with.
    pub ctrl: u32,
    /// Bytes of each posted receive (the largest send it takes).
    pub recv_buf: u32,
}

impl Address {
    /// The bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ADDRESS_FIXED + self.qp.fabric.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(u8::from(self.answer));
        b.push(self.qp.link_layer.code());
        b.extend_from_slice(&self.qp.qpn.to_le_bytes());
        b.extend_from_slice(&self.qp.psn.to_le_bytes());
        b.extend_from_slice(&self.qp.lid.to_le_bytes());
        b.push(self.qp.mtu.0);
        b.push(self.max_reads);
        b.extend_from_slice(&self.qp.gid.0);
        b.extend_from_slice(&self.ring_addr.to_le_bytes());
        b.extend_from_slice(&self.ring_rkey.to_le_bytes());
        b.extend_from_slice(&self.slots.to_le_bytes());
        b.extend_from_slice(&self.slot_size.to_le_bytes());
        b.extend_from_slice(&self.ctrl.to_le_bytes());
        b.extend_from_slice(&self.recv_buf.to_le_bytes());
        let n = self.qp.fabric.len().min(MAX_FABRIC);
        b.extend_from_slice(&(n as u16).to_le_bytes());
        b.extend_from_slice(&self.qp.fabric[..n]);
        b
    }

    /// Parse and check a peer's address.
    pub fn decode(b: &[u8]) -> Result<Address, WireError> {
        if b.len() < ADDRESS_FIXED {
            return Err(bad(format!("an RDMA address of {} bytes (at least {ADDRESS_FIXED})", b.len())));
        }
        if b[..4] != MAGIC {
            return Err(bad("not an RDMA address (bad magic)"));
        }
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let version = u16_at(4);
        if version != VERSION {
            return Err(bad(format!("RDMA address version {version}; this build speaks {VERSION}")));
        }
        if b[6] > 1 {
            return Err(bad(format!("RDMA address role {}", b[6])));
        }
        let n = usize::from(u16_at(64));
        if n > MAX_FABRIC || b.len() != ADDRESS_FIXED + n {
            return Err(bad(format!("RDMA address of {} bytes with {n} bytes of fabric data", b.len())));
        }
        let a = Address {
            answer: b[6] == 1,
            qp: QpAddress {
                gid: Gid(b[20..36].try_into().expect("16 bytes")),
                lid: u16_at(16),
                qpn: u32_at(8),
                psn: u32_at(12),
                mtu: Mtu(b[18]),
                link_layer: LinkLayer::from_code(b[7]),
                fabric: b[ADDRESS_FIXED..].to_vec(),
            },
            max_reads: b[19],
            ring_addr: u64_at(36),
            ring_rkey: u32_at(44),
            slots: u32_at(48),
            slot_size: u32_at(52),
            ctrl: u32_at(56),
            recv_buf: u32_at(60),
        };
        if a.qp.qpn == 0 || a.qp.qpn > 0x00ff_ffff || a.qp.psn > 0x00ff_ffff {
            return Err(bad(format!("queue pair number {} / PSN {} out of range", a.qp.qpn, a.qp.psn)));
        }
        if a.qp.mtu.bytes() == 0 {
            return Err(bad(format!("MTU code {}", a.qp.mtu.0)));
        }
        if !(1..=MAX_SLOTS).contains(&a.slots) {
            return Err(bad(format!("{} receive slots (1 to {MAX_SLOTS})", a.slots)));
        }
        if !(HEADER as u32 + DESCRIPTOR as u32..=MAX_SLOT_SIZE).contains(&a.slot_size) {
            return Err(bad(format!("receive slots of {} bytes", a.slot_size)));
        }
        if !(MIN_CTRL..=MAX_CTRL).contains(&a.ctrl) {
            return Err(bad(format!("{} control receives ({MIN_CTRL} to {MAX_CTRL})", a.ctrl)));
        }
        if a.recv_buf < HEADER as u32 || a.recv_buf > a.slot_size {
            return Err(bad(format!("receive buffers of {} bytes", a.recv_buf)));
        }
        if a.max_reads == 0 {
            return Err(bad("no RDMA read allowed"));
        }
        if a.ring_addr.checked_add(u64::from(a.slots) * u64::from(a.slot_size)).is_none() {
            return Err(bad("the receive ring wraps the address space"));
        }
        Ok(a)
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// DATA, LARGE or CTRL.
    pub kind: u8,
    /// HELLO, BYE.
    pub flags: u8,
    /// Payload bytes after the header (DATA).
    pub len: u32,
    /// Data slots the sender has freed, cumulative.
    pub data_freed: u32,
    /// Control messages the sender has seen, cumulative.
    pub ctrl_seen: u32,
    /// Large messages the sender has finished reading, cumulative.
    pub reads_done: u32,
    /// Sequence number (data for DATA/LARGE, control for CTRL).
    pub seq: u32,
}

impl Header {
    /// The 24 bytes.
    pub fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0] = self.kind;
        b[1] = self.flags;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..12].copy_from_slice(&self.data_freed.to_le_bytes());
        b[12..16].copy_from_slice(&self.ctrl_seen.to_le_bytes());
        b[16..20].copy_from_slice(&self.reads_done.to_le_bytes());
        b[20..24].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// Parse the header at the start of `b` (a received message of
    /// `b.len()` bytes) and check it against that length.
    pub fn decode(b: &[u8]) -> Result<Header, WireError> {
        Header::parse(b, b.len())
    }

    /// Parse the header at the start of `b`, the first bytes of a message
    /// of `total` bytes, and check it against that length.
    pub fn parse(b: &[u8], total: usize) -> Result<Header, WireError> {
        if total < HEADER || b.len() < HEADER || b.len() > total {
            return Err(bad(format!("a message of {total} bytes, shorter than its header")));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let h = Header {
            kind: b[0],
            flags: b[1],
            len: u32_at(4),
            data_freed: u32_at(8),
            ctrl_seen: u32_at(12),
            reads_done: u32_at(16),
            seq: u32_at(20),
        };
        if b[2] != 0 || b[3] != 0 || h.flags & !(HELLO | BYE) != 0 {
            return Err(bad(format!("message header with reserved bits set ({:02x?})", &b[..4])));
        }
        let body = total - HEADER;
        match h.kind {
            DATA if h.len as usize == body => {}
            DATA => return Err(bad(format!("DATA of {} bytes in a message of {body}", h.len))),
            LARGE if h.len as usize <= MAX_PREFIX && body == DESCRIPTOR + h.len as usize => {}
            LARGE => return Err(bad(format!("LARGE with {body} bytes after its header"))),
            CTRL if h.len == 0 && body == 0 => {}
            CTRL => return Err(bad(format!("CTRL with {body} bytes after its header"))),
            k => return Err(bad(format!("unknown message kind {k}"))),
        }
        if h.kind != CTRL && h.flags != 0 {
            return Err(bad("flags on a data message"));
        }
        Ok(h)
    }
}

/// Where a LARGE message's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Address in the sender.
    pub addr: u64,
    /// Bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

impl Descriptor {
    /// The 24 bytes.
    pub fn encode(&self) -> [u8; DESCRIPTOR] {
        let mut b = [0u8; DESCRIPTOR];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.rkey.to_le_bytes());
        b
    }

    /// Parse and check against the largest message accepted.
    pub fn decode(b: &[u8], max: u64) -> Result<Descriptor, WireError> {
        if b.len() != DESCRIPTOR || b[20..] != [0; 4] {
            return Err(bad("malformed LARGE descriptor"));
        }
        let d = Descriptor {
            addr: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            len: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            rkey: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
        };
        if d.len == 0 || d.len > max {
            return Err(bad(format!("a large message of {} bytes (1 to {max})", d.len)));
        }
        if d.addr.checked_add(d.len).is_none() {
            return Err(bad("a large message that wraps the address space"));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Address {
        Address {
            answer: false,
            qp: QpAddress {
                gid: Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
                lid: 7,
                qpn: 0x1234,
                psn: 0x00ab_cdef,
                mtu: Mtu(5),
                link_layer: LinkLayer::InfiniBand,
                fabric: b"dragon-1-2-3-vqp".to_vec(),
            },
            max_reads: 8,
            ring_addr: 0x7f00_0000_0000,
            ring_rkey: 0x500,
            slots: 32,
            slot_size: 8192,
            ctrl: 8,
            recv_buf: 256,
        }
    }

    #[test]
    fn addresses_round_trip_and_bad_ones_are_refused() {
        let a = sample();
        let b = a.encode();
        assert_eq!(Address::decode(&b).unwrap(), a);
        assert!(Address::decode(&b[..b.len() - 1]).unwrap_err().0.contains("fabric data"));
        let mut m = b.clone();
        m[0] = b'X';
        assert!(Address::decode(&m).unwrap_err().0.contains("magic"));
        let mut m = b.clone();
        m[4] = 9;
        assert!(Address::decode(&m).unwrap_err().0.contains("version 9"));
        for (what, f) in [
            ("slots", &(|a: &mut Address| a.slots = 0) as &dyn Fn(&mut Address)),
            ("ctrl", &|a: &mut Address| a.ctrl = 2),
            ("recv_buf", &|a: &mut Address| a.recv_buf = 8),
            ("qpn", &|a: &mut Address| a.qp.qpn = 0),
            ("mtu", &|a: &mut Address| a.qp.mtu = Mtu(9)),
            ("reads", &|a: &mut Address| a.max_reads = 0),
            ("wrap", &|a: &mut Address| a.ring_addr = u64::MAX - 10),
        ] {
            let mut x = sample();
            f(&mut x);
            assert!(Address::decode(&x.encode()).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn headers_round_trip_and_must_match_their_message() {
        let h = Header { kind: DATA, flags: 0, len: 5, data_freed: 1, ctrl_seen: 2, reads_done: 3, seq: u32::MAX };
        let mut msg = h.encode().to_vec();
        msg.extend_from_slice(b"hello");
        assert_eq!(Header::decode(&msg).unwrap(), h);
        assert!(Header::decode(&msg[..HEADER + 4]).is_err());
        let c = Header { kind: CTRL, flags: HELLO | BYE, ..Header::default() };
        assert_eq!(Header::decode(&c.encode()).unwrap(), c);
        let l = Header { kind: LARGE, ..Header::default() };
        let d = Descriptor { addr: 4096, len: 1 << 20, rkey: 9 };
        let mut m = l.encode().to_vec();
        m.extend_from_slice(&d.encode());
        assert_eq!(Header::decode(&m).unwrap(), l);
        assert_eq!(Descriptor::decode(&m[HEADER..], 1 << 30).unwrap(), d);
        assert!(Descriptor::decode(&m[HEADER..], 1000).unwrap_err().0.contains("1 to 1000"));
        let mut x = c.encode();
        x[0] = 9;
        assert!(Header::decode(&x).unwrap_err().0.contains("kind 9"));
        let mut x = c.encode();
        x[1] = 0x80;
        assert!(Header::decode(&x).is_err());
    }
}
