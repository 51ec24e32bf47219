//! Requests a client makes of an agent, and the agent's replies (the frame
//! kind says which; payload layouts below, integers little endian).
//!
//! ```text
//!   ATTACH  handle bytes                     -> OK: channel id u64
//!   SEND    channel u64, timeout_ns u64, data -> OK
//!   RECV    channel u64, timeout_ns u64 [, flags u8]
//!                                             -> OK: the message
//!           (flag RECV_BLOCKS: a block message of the channel's node is
//!           delivered as a copy of its block; without it, as sent)
//!   LEN     channel u64                       -> OK: count u64
//!   DETACH  channel u64                       -> OK
//!   PING                                      -> OK
//!   CREATE  capacity u64, slot_size u64, max_block_bytes u64 (0: defaults)
//!                                             -> OK: channel id u64, handle bytes
//!   DESTROY channel u64                       -> OK
//!   POLL    channel u64, timeout_ns u64, events u32
//!                                             -> OK: events that hold u32
//!   reply ERROR: code i32 (DRAGON_E* of the plugin ABI), message (UTF-8)
//!   ERROR with id 0 (agent -> client): the agent read a corrupt frame (a
//!   length out of bounds); the replies owed before it were sent, and the
//!   agent closes the connection after this frame.
//!   HEARTBEAT (agent -> client, id 0): the agent is alive; sent every
//!   HEARTBEAT_EVERY on every connection, so a client waiting for a slow
//!   reply can tell a long wait from a lost peer.
//! ```
//!
//! `timeout_ns` `u64::MAX` waits without limit.

use std::time::Duration;

/// Attach to a channel of the agent's node.
pub const ATTACH: u8 = 1;
/// Send a message.
pub const SEND: u8 = 2;
/// Receive a message.
pub const RECV: u8 = 3;
/// RECV flag: deliver a block message (`transport_shm::blocks`) as a copy
/// of the block it names.
pub const RECV_BLOCKS: u8 = 1;
/// Send a message that names a block of the sender's node's store (a
/// block message of `transport_shm::blocks`): that node's service sends
/// the block's bytes on (an ordinary SEND, made from the block without a
/// copy), so that the bytes never pass through the process's connection.
/// For a channel of the sender's own node it is a SEND of the block
/// message itself.
pub const SEND_BLOCK: u8 = 0x0A;
/// A SEND whose sender does not wait for its reply (a deferred send), on a
/// process's direct connection to the channel's node: a success may be
/// answered late, written just before the next frame the service sends on
/// that connection (at the latest after [`LAZY_REPLIES`] of them), so that
/// a sender that next waits for another reply is woken once, not twice.
/// A sender that waits for these replies sends a [`PING`] first: its
/// reply comes after them. A failure, or a send that had to wait, is
/// answered at once.
pub const SEND_DEFERRED: u8 = 0x0B;
/// Most successes of [`SEND_DEFERRED`] a service holds back on one connection.
pub const LAZY_REPLIES: usize = 32;
/// Largest message of a [`SEND_DEFERRED`] whose success may be answered
/// late (a large one is answered at once: its sender paces itself by them).
pub const LAZY_MAX_BYTES: usize = 64 << 10;
/// Messages waiting.
pub const LEN: u8 = 4;
/// Let go of an attachment.
pub const DETACH: u8 = 5;
/// Liveness check.
pub const PING: u8 = 6;
/// Create a channel on the agent's node.
pub const CREATE: u8 = 7;
/// Destroy a channel for everyone.
pub const DESTROY: u8 = 8;
/// Wait for readiness.
pub const POLL: u8 = 9;
/// To a process's own node's service: where node `n` (the request's
/// node) is reached directly -> OK: the node's host name, then its
/// service's addresses (`ip:port`), each on a line of its own.
pub const ROUTE: u8 = 0x15;
/// To a process's own node's service: agent nonce (32), client nonce (32)
/// -> OK: the PROOF_PROCESS payload for this process (its node, and the pid
/// the kernel gives for it), then the ACCEPT payload to expect
/// (`auth::Secret::vouch`).
pub const VOUCH: u8 = 0x16;
/// Cancel the waiting request whose id the frame carries (no reply).
pub const CANCEL: u8 = 0x13;
/// Success reply.
pub const OK: u8 = 0x80;
/// Failure reply.
pub const ERROR: u8 = 0x81;
/// The agent is alive.
pub const HEARTBEAT: u8 = 0x82;

/// How often an agent sends a heartbeat on each connection.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// A client that hears nothing for this long calls the peer lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(5);

/// `timeout_ns` for a wait of `t` (`None`: no limit).
pub fn timeout_ns(t: Option<Duration>) -> u64 {
    t.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1))
}

/// The wait a `timeout_ns` asks for.
pub fn timeout_of(ns: u64) -> Option<Duration> {
    (ns != u64::MAX).then(|| Duration::from_nanos(ns))
}

/// `channel u64` then `timeout_ns u64` then the rest.
pub fn op_payload(ch: u64, timeout_ns: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + data.len());
    p.extend_from_slice(&ch.to_le_bytes());
    p.extend_from_slice(&timeout_ns.to_le_bytes());
    p.extend_from_slice(data);
    p
}

/// Read the leading u64 of `p` and return it with the rest.
pub fn take_u64(p: &[u8]) -> Option<(u64, &[u8])> {
    let (a, rest) = p.split_at_checked(8)?;
    Some((u64::from_le_bytes(a.try_into().ok()?), rest))
}

/// An ERROR payload.
pub fn error_payload(code: i32, msg: &str) -> Vec<u8> {
    let mut p = code.to_le_bytes().to_vec();
    p.extend_from_slice(msg.as_bytes());
    p
}

/// Decode an ERROR payload.
pub fn parse_error(p: &[u8]) -> (i32, String) {
    match p.split_at_checked(4) {
        Some((c, m)) => (i32::from_le_bytes(c.try_into().expect("4 bytes")), String::from_utf8_lossy(m).into_owned()),
        None => (transport_abi::abi::DRAGON_EIO, "malformed error reply".to_owned()),
    }
}
