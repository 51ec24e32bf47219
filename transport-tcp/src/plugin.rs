//! The TCP transport behind the transport plugin ABI (what
//! `libdragon_transport_tcp.so`, crate `transport-tcp-plugin`, exports):
//! every operation goes through this node's service, which carries it to
//! the channel's node over the one authenticated connection it keeps to
//! each peer node (see [`crate::local`]), or (`direct=1`) on a connection
//! of this process's own straight to the channel's node's service.
//!
//! Config string (`open`): `key=value` items separated by commas or spaces:
//!
//! - `service=<abstract socket name>`: this node's service (required);
//! - `node=<index>`: the node that channels created through this instance
//!   live on (default 0);
//! - `blocks=1`: messages follow the block-message convention of
//!   `transport_shm::blocks` (what `dragon-py` sends): a received message
//!   that names a block of the channel's node arrives as a copy of the
//!   block, and a message sent that names a block of this node's store
//!   goes as the block's bytes, sent on by this node's service from the
//!   block itself ([`proto::SEND_BLOCK`]). Without it (the default) every
//!   message is delivered as the bytes that were sent, whatever its first
//!   byte. On a direct connection a block message goes as the block's
//!   bytes, written from the block by this process (then freed).
//! - `direct=1`: channels of another node are reached on a connection to
//!   that node's service made on first use
//!   ([`ServiceClient::connect_direct`]); a node whose service cannot be
//!   reached that way is reached through this node's service.
//!
//! Attaching reads the node from the channel's handle. Dropping an
//! attachment tells the channel's node to let go of it.

use crate::client::TcpError;
use crate::local::{Routes, ServiceClient, Ticket};
use crate::proto;
use shm_primitives::handle::{Handle, Kind};
use std::collections::VecDeque;
use std::ffi::CStr;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use transport_abi::abi::*;
use transport_abi::export::{ChannelImpl, Failure, Timeout, TransportImpl};
use transport_shm::blocks::{BlockMessage, Stores, TAG_BLOCK};

/// The TCP transport instance.
#[derive(Debug)]
pub struct TcpTransport {
    node: u32,
    blocks: bool,
    /// Connect straight to other nodes' services (`direct=1`).
    direct: bool,
    /// This process's ways to this node's service (made on first use) and
    /// to other nodes (`direct=1`).
    routes: Routes,
    /// Block stores named by block messages sent on direct connections.
    stores: Arc<Mutex<Stores>>,
}

/// One attachment to a channel on some node.
#[derive(Debug)]
pub struct TcpChannel {
    client: ServiceClient,
    node: u32,
    att: u64,
    handle: Vec<u8>,
    /// Receives ask for block messages to be materialized.
    blocks: bool,
    /// On a direct connection to the channel's node: a block message is
    /// sent as its block's bytes, from the block (no service to send it on).
    direct: Option<Arc<Mutex<Stores>>>,
    /// Deferred sends in flight, oldest first.
    deferred: Mutex<Deferred>,
}

/// Most deferred sends one attachment has in flight.
const DEFERRED_MAX: usize = 256;
/// Most bytes of deferred sends one attachment has in flight.
const DEFERRED_MAX_BYTES: usize = 8 << 20;

/// An attachment's deferred sends: in flight, oldest first, and the first
/// failure among those done that is not yet reported.
#[derive(Debug, Default)]
struct Deferred {
    inflight: VecDeque<(Ticket, usize)>,
    bytes: usize,
    failed: Option<Failure>,
}

impl Deferred {
    /// Drop the oldest sends that are done, keeping the first failure.
    fn reap(&mut self) {
        while let Some((t, _)) = self.inflight.front() {
            match t.try_take() {
                None => return,
                Some(r) => self.done(r),
            }
        }
    }

    /// Wait until the oldest send in flight is done (by `deadline`): false
    /// if it is not. Its reply may be held back by the channel's node
    /// (`proto::SEND_DEFERRED`): `ping` asks for a reply that comes after
    /// every reply held.
    fn wait_oldest(&mut self, deadline: Option<Instant>, ping: impl FnOnce()) -> bool {
        let Some((t, _)) = self.inflight.front() else { return true };
        let r = match t.try_take() {
            Some(r) => Some(r),
            None => {
                ping();
                t.wait(deadline)
            }
        };
        match r {
            None => false,
            Some(r) => {
                self.done(r);
                true
            }
        }
    }

    fn done(&mut self, r: Result<bytes::Bytes, TcpError>) {
        let (_, n) = self.inflight.pop_front().expect("a send in flight");
        self.bytes -= n;
        if let Err(e) = r {
            self.failed.get_or_insert(failure(e));
        }
    }

    fn report(&mut self) -> Result<(), Failure> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

fn out_of_time(timeout: Timeout) -> Failure {
    if timeout == Some(std::time::Duration::ZERO) {
        Failure::new(DRAGON_EAGAIN, "too many deferred sends in flight")
    } else {
        Failure::new(DRAGON_ETIMEDOUT, "timed out waiting for deferred sends to arrive")
    }
}

/// A failure of the plugin ABI for a TCP or service error.
pub fn failure(e: TcpError) -> Failure {
    match e {
        TcpError::Remote { code, message } => Failure::new(code, message),
        TcpError::Auth(_) => Failure::new(DRAGON_EINVAL, e.to_string()),
        TcpError::Protocol(_) => Failure::new(DRAGON_EPROTO, e.to_string()),
        TcpError::Io(_) | TcpError::PeerLost { .. } => Failure::new(DRAGON_EIO, e.to_string()),
        TcpError::Interrupted => Failure::new(DRAGON_EIO, e.to_string()),
    }
}

/// What a config string says.
#[derive(Debug, PartialEq, Eq)]
struct Config {
    service: String,
    node: u32,
    blocks: bool,
    direct: bool,
}

fn parse_config(config: &str) -> Result<Config, Failure> {
    let (mut service, mut node, mut blocks, mut direct) = (None, 0, false, false);
    let flag = |v: &str, bad: &dyn Fn(&str) -> Failure| match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(bad("expected 0 or 1")),
    };
    for item in config.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
        let bad = |why: &str| Failure::new(DRAGON_EINVAL, format!("tcp transport config {item:?}: {why}"));
        let (k, v) = item.split_once('=').ok_or_else(|| bad("expected key=value"))?;
        match k {
            "service" => service = Some(v.to_owned()),
            "node" => node = v.parse().map_err(|_| bad("expected a node index"))?,
            "blocks" => blocks = flag(v, &bad)?,
            "direct" => direct = flag(v, &bad)?,
            _ => return Err(bad("unknown key (known: service, node, blocks, direct)")),
        }
    }
    match service {
        Some(service) if !service.is_empty() => Ok(Config { service, node, blocks, direct }),
        _ => Err(Failure::new(DRAGON_EINVAL, "tcp transport config needs service=<this node's service socket>")),
    }
}

impl TransportImpl for TcpTransport {
    type Channel = TcpChannel;
    const NAME: &'static CStr = c"tcp";
    const CAPABILITIES: u64 =
        DRAGON_CAP_REMOTE | DRAGON_CAP_ZERO_COPY_RECV | DRAGON_CAP_BLOCKING | DRAGON_CAP_POLL | DRAGON_CAP_CREATE;

    fn open(config: &str) -> Result<Self, Failure> {
        let Config { service, node, blocks, direct } = parse_config(config)?;
        // No connection yet: a process that reaches every node straight
        // never holds one to this node's service (see `Routes`).
        Ok(TcpTransport { node, blocks, direct, routes: Routes::new(&service), stores: Arc::default() })
    }

    fn create_channel(&self, a: &DragonChannelAttrs) -> Result<TcpChannel, Failure> {
        let mut p = a.capacity.to_le_bytes().to_vec();
        p.extend_from_slice(&a.slot_size.to_le_bytes());
        p.extend_from_slice(&a.max_block_bytes.to_le_bytes());
        let client = self.routes.local().map_err(failure)?;
        let r = client.call(self.node, proto::CREATE, &p).map_err(failure)?;
        let (att, handle) = proto::take_u64(&r).ok_or_else(|| Failure::new(DRAGON_EPROTO, "short CREATE reply"))?;
        Ok(TcpChannel {
            client,
            node: self.node,
            att,
            handle: handle.to_vec(),
            blocks: self.blocks,
            direct: None,
            deferred: Mutex::default(),
        })
    }

    fn attach_channel(&self, bytes: &[u8]) -> Result<TcpChannel, Failure> {
        let h = Handle::from_bytes_of(bytes, Kind::Channel)
            .map_err(|e| Failure::new(DRAGON_EBADMSG, format!("bad channel handle: {e}")))?;
        let client = self.client_for(h.node).map_err(failure)?;
        let r = client.call(h.node, proto::ATTACH, bytes).map_err(failure)?;
        let (att, _) = proto::take_u64(&r).ok_or_else(|| Failure::new(DRAGON_EPROTO, "short ATTACH reply"))?;
        let direct = client.is_direct().then(|| self.stores.clone());
        Ok(TcpChannel {
            client,
            node: h.node,
            att,
            handle: bytes.to_vec(),
            blocks: self.blocks,
            direct,
            deferred: Mutex::default(),
        })
    }
}

impl TcpTransport {
    /// The connection that carries requests for `node`: a direct one to
    /// its service (made on first use) when `direct=1` and it can be made,
    /// else the one to this node's service. A node is reached one way for
    /// the life of the process, so an attachment always goes the way it
    /// was made.
    fn client_for(&self, node: u32) -> Result<ServiceClient, TcpError> {
        if !self.direct || node == self.node {
            return self.routes.local();
        }
        self.routes.client_for(node)
    }
}

impl TcpChannel {
    fn call(&self, kind: u8, payload: &[u8]) -> Result<bytes::Bytes, Failure> {
        self.client.call(self.node, kind, payload).map_err(failure)
    }

    /// The node the channel lives on.
    pub fn node(&self) -> u32 {
        self.node
    }

    fn deferred(&self) -> MutexGuard<'_, Deferred> {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request kind for sending `data`, and the bytes it carries (a
    /// block message stands for the block's payload).
    fn send_kind(&self, data: &[u8]) -> (u8, usize) {
        if self.blocks && self.direct.is_none() && data.first() == Some(&TAG_BLOCK) {
            if let Some(m) = BlockMessage::parse(&data[1..]) {
                return (proto::SEND_BLOCK, m.len);
            }
        }
        (proto::SEND, data.len())
    }

    /// A SEND's head, and for a block message on a direct connection the
    /// block's bytes (the tag byte then goes at the end of the head): the
    /// bytes go on the connection from the block, which is freed after.
    fn direct_parts(&self, timeout: Timeout, data: &[u8]) -> Result<(Vec<u8>, Option<impl AsRef<[u8]>>), Failure> {
        let mut head = self.send_head(timeout);
        let Some(stores) = self.direct.as_ref().filter(|_| self.blocks && data.first() == Some(&TAG_BLOCK)) else {
            return Ok((head, None));
        };
        let view =
            stores.lock().unwrap_or_else(|e| e.into_inner()).view(data).map_err(|e| Failure::new(DRAGON_EBADMSG, e))?;
        let Some((tag, view)) = view else { return Ok((head, None)) };
        head.extend(tag);
        Ok((head, Some(view)))
    }

    /// Have the channel's node send the replies it holds back (a ping's
    /// reply comes after them; nobody waits for it).
    fn ping_late(&self) {
        if self.client.is_direct() {
            let _ = self.client.notify(self.node, proto::PING, &[]);
        }
    }

    fn send_head(&self, timeout: Timeout) -> Vec<u8> {
        [&self.node.to_le_bytes()[..], &proto::op_payload(self.att, proto::timeout_ns(timeout), &[])].concat()
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        let _ = self.client.notify(self.node, proto::DETACH, &self.att.to_le_bytes());
    }
}

impl ChannelImpl for TcpChannel {
    type Message = bytes::Bytes;
    const WAITS_IN_RECV: bool = true;

    fn handle(&self) -> Vec<u8> {
        self.handle.clone()
    }

    const DEFERRED_SENDS: bool = true;

    fn send(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure> {
        // The channel's node serves one attachment's sends in the order they
        // come, so this one goes after every deferred one.
        let (kind, _) = self.send_kind(data);
        let (head, body) = self.direct_parts(timeout, data)?;
        self.client.call_raw(kind, &head, body.as_ref().map_or(data, |b| b.as_ref())).map(|_| ()).map_err(failure)
    }

    fn send_deferred(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // A block counts for its bytes: they are held until sent on.
        let (kind, len) = self.send_kind(data);
        let mut d = self.deferred();
        d.reap();
        d.report()?;
        while d.inflight.len() >= DEFERRED_MAX || (d.bytes > 0 && d.bytes + len > DEFERRED_MAX_BYTES) {
            if !d.wait_oldest(deadline, || self.ping_late()) {
                return Err(out_of_time(timeout));
            }
            d.report()?;
        }
        // Straight to the channel's node, a small message's success may
        // come late (its sender waits for it only when it pings).
        let kind = if kind == proto::SEND && self.client.is_direct() && len <= proto::LAZY_MAX_BYTES {
            proto::SEND_DEFERRED
        } else {
            kind
        };
        let (head, body) = self.direct_parts(None, data)?;
        let t = self.client.submit(kind, &head, body.as_ref().map_or(data, |b| b.as_ref())).map_err(failure)?;
        d.inflight.push_back((t, len));
        d.bytes += len;
        Ok(())
    }

    fn flush(&self, timeout: Timeout) -> Result<(), Failure> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut d = self.deferred();
        while !d.inflight.is_empty() {
            if !d.wait_oldest(deadline, || self.ping_late()) {
                return Err(out_of_time(timeout));
            }
        }
        d.report()
    }

    fn recv(&self, timeout: Timeout) -> Result<bytes::Bytes, Failure> {
        let flags: &[u8] = if self.blocks { &[proto::RECV_BLOCKS] } else { &[] };
        self.call(proto::RECV, &proto::op_payload(self.att, proto::timeout_ns(timeout), flags))
    }

    fn poll(&self, events: u32, timeout: Timeout) -> Result<u32, Failure> {
        let r =
            self.call(proto::POLL, &proto::op_payload(self.att, proto::timeout_ns(timeout), &events.to_le_bytes()))?;
        r.get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| Failure::new(DRAGON_EPROTO, "short POLL reply"))
    }

    fn len(&self) -> u64 {
        self.call(proto::LEN, &self.att.to_le_bytes())
            .ok()
            .and_then(|r| proto::take_u64(&r).map(|(n, _)| n))
            .unwrap_or(0)
    }

    fn destroy(&self) -> Result<(), Failure> {
        self.call(proto::DESTROY, &self.att.to_le_bytes()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects() {
        assert_eq!(
            parse_config("service=dragon-x node=2").unwrap(),
            Config { service: "dragon-x".to_owned(), node: 2, blocks: false, direct: false }
        );
        assert_eq!(
            parse_config("service=s,blocks=1").unwrap(),
            Config { service: "s".to_owned(), node: 0, blocks: true, direct: false }
        );
        assert!(parse_config("service=s blocks=yes").unwrap_err().message.contains("0 or 1"));
        assert!(parse_config("service=s direct=1").unwrap().direct);
        assert!(parse_config("service=s direct=2").unwrap_err().message.contains("0 or 1"));
        assert!(parse_config("node=1").unwrap_err().message.contains("service="));
        assert!(parse_config("service=s node=x").unwrap_err().message.contains("node index"));
        assert!(parse_config("colour=blue").unwrap_err().message.contains("unknown key"));
    }
}
