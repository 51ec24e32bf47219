//! The verbs transport behind the transport plugin ABI (what
//! `libdragon_transport_verbs.so`, crate `transport-verbs-plugin`,
//! exports): every channel operation is a request over an RDMA link to a
//! [`crate::server::Server`] on the channel's node, which performs it with
//! the same code that serves the TCP transport.
//!
//! Config string (`open`): `key=value` items separated by commas or spaces:
//!
//! - `peer=<host:port | unix:name>`: the server (required);
//! - `secret=<64 hex digits>` or `secret_file=<path>`: the run's secret
//!   (required);
//! - `fabric=<ibv | sim:name>`: rdma-core's devices (default) or a
//!   simulated network;
//! - `device=<name>`: which device (default: the first active port);
//! - `gid_index=<n>`: which GID table entry (default: chosen);
//! - `lib=<path>`: the verbs library file (default `libibverbs.so.1`);
//! - `blocks=1`: messages follow the block-message convention of
//!   `transport_shm::blocks` (what `dragon-py` sends): a received message
//!   naming a block of the channel's node arrives as a copy of the block.
//!   Without it (the default) every message arrives as the bytes sent.
//!
//! Without rdma-core, without a device, or without an active port, `open`
//! fails with `DRAGON_ENOTSUP` and a message starting "no RDMA device":
//! a clean error the caller falls back on (to TCP).

use crate::boot::{self, FabricSpec, Sock};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::server::{head, split};
use crate::verbs::VerbsError;
use bytes::Bytes;
use shm_primitives::handle::{Handle, Kind};
use shm_primitives::sync::local::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use transport_abi::abi::*;
use transport_abi::export::{ChannelImpl, Failure, Timeout, TransportImpl};
use transport_tcp::auth::Secret;
use transport_tcp::proto;

/// What `open` was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server.
    pub peer: String,
    /// The run's secret.
    pub secret: Secret,
    /// The fabric.
    pub fabric: FabricSpec,
    /// A device to use.
    pub device: Option<String>,
    /// Receives ask for block messages to be materialized.
    pub blocks: bool,
}

/// Parse a config string (see the module docs).
pub fn parse_config(config: &str) -> Result<Config, Failure> {
    let (mut peer, mut secret, mut fabric, mut device) = (None, None, FabricSpec::parse("ibv").expect("valid"), None);
    let (mut lib, mut gid_index, mut blocks) = (None, None, false);
    for item in config.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
        let bad = |why: String| Failure::new(DRAGON_EINVAL, format!("verbs transport config {item:?}: {why}"));
        let (k, v) = item.split_once('=').ok_or_else(|| bad("expected key=value".into()))?;
        match k {
            "peer" => peer = Some(v.to_owned()),
            "secret" => secret = Some(Secret::from_hex(v).ok_or_else(|| bad("expected 64 hex digits".into()))?),
            "secret_file" => {
                let text = std::fs::read_to_string(v).map_err(|e| bad(format!("cannot read it: {e}")))?;
                secret =
                    Some(Secret::from_hex(&text).ok_or_else(|| bad("the file does not hold 64 hex digits".into()))?);
            }
            "fabric" => fabric = FabricSpec::parse(v).map_err(bad)?,
            "device" => device = Some(v.to_owned()),
            "gid_index" => gid_index = Some(v.parse::<u8>().map_err(|_| bad("expected 0 to 255".into()))?),
            "lib" => lib = Some(v.to_owned()),
            "blocks" => {
                blocks = match v {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad("expected 0 or 1".into())),
                }
            }
            _ => {
                return Err(bad(
                    "unknown key (known: peer, secret, secret_file, fabric, device, gid_index, lib, blocks)".into(),
                ))
            }
        }
    }
    if let FabricSpec::Ibverbs { lib: l, gid_index: g } = &mut fabric {
        *l = lib;
        *g = gid_index;
    }
    let peer = peer.ok_or_else(|| Failure::new(DRAGON_EINVAL, "verbs transport config needs peer=<server address>"))?;
    let secret = secret.ok_or_else(|| {
        Failure::new(DRAGON_EINVAL, "verbs transport config needs secret=<hex> or secret_file=<path>")
    })?;
    Ok(Config { peer, secret, fabric, device, blocks })
}

/// The plugin failure for a link error.
pub fn failure(e: &EngineError) -> Failure {
    let code = match e {
        EngineError::TimedOut => DRAGON_ETIMEDOUT,
        EngineError::WouldBlock => DRAGON_EAGAIN,
        EngineError::TooLarge { .. } => DRAGON_E2BIG,
        EngineError::Protocol(_) => DRAGON_EPROTO,
        EngineError::Resources(VerbsError::NoDevice(_)) => DRAGON_ENOTSUP,
        EngineError::Resources(VerbsError::Exhausted(_)) => DRAGON_ENOMEM,
        _ => DRAGON_EIO,
    };
    Failure::new(code, e.to_string())
}

type Answer = Result<(u8, Bytes), Failure>;

#[derive(Default)]
struct Slot {
    answer: Mutex<Option<Answer>>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One link to a server, shared by a transport instance's channels.
struct Link {
    engine: Arc<Engine>,
    slots: Arc<Mutex<HashMap<u64, Arc<Slot>>>>,
    dead: Arc<Mutex<Option<Failure>>>,
    next_id: AtomicU64,
    sock: Sock,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.engine.close();
        self.sock.shutdown();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl Link {
    fn open(cfg: &Config) -> Result<Link, Failure> {
        let (_, port) = boot::open_port(&cfg.fabric, cfg.device.as_deref()).map_err(|e| match e {
            VerbsError::NoDevice(_) => Failure::new(DRAGON_ENOTSUP, e.to_string()),
            e => Failure::new(DRAGON_EIO, e.to_string()),
        })?;
        let mut sock = Sock::connect(&cfg.peer, boot::STEP)
            .map_err(|e| Failure::new(DRAGON_EIO, format!("cannot reach the verbs server {}: {e}", cfg.peer)))?;
        let engine = boot::client(&mut sock, &cfg.secret, port, EngineConfig::default()).map_err(|e| {
            let code = match e {
                boot::BootError::Auth(_) => DRAGON_EINVAL,
                boot::BootError::Refused(_) => DRAGON_ENOTSUP,
                _ => DRAGON_EIO,
            };
            Failure::new(code, format!("verbs server {}: {e}", cfg.peer))
        })?;
        let engine = Arc::new(engine);
        let slots: Arc<Mutex<HashMap<u64, Arc<Slot>>>> = Arc::default();
        let dead: Arc<Mutex<Option<Failure>>> = Arc::default();
        let tether = sock.try_clone().map_err(|e| Failure::new(DRAGON_EIO, e.to_string()))?;
        let e2 = engine.clone();
        let watcher = boot::watch_tether(tether, move || {
            e2.fail(EngineError::PeerLost("the verbs server's connection closed (its process ended?)".into()))
        })
        .map_err(|e| Failure::new(DRAGON_EIO, e.to_string()))?;
        let (e3, s3, d3) = (engine.clone(), Arc::downgrade(&slots), dead.clone());
        let reader = std::thread::Builder::new()
            .name("dragon-verbs-rx".into())
            .spawn(move || dispatch(&e3, &s3, &d3))
            .map_err(|e| Failure::new(DRAGON_EIO, e.to_string()))?;
        Ok(Link { engine, slots, dead, next_id: AtomicU64::new(1), sock, threads: Mutex::new(vec![watcher, reader]) })
    }

    /// Send request `kind` with `parts` as payload, wait for its reply.
    fn call(&self, kind: u8, parts: &[&[u8]]) -> Result<Bytes, Failure> {
        if let Some(f) = lock(&self.dead).clone() {
            return Err(f);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed); // unique ids only; nothing to order
        let slot = Arc::new(Slot::default());
        lock(&self.slots).insert(id, slot.clone());
        let h = head(kind, id);
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&h);
        all.extend_from_slice(parts);
        if let Err(e) = self.engine.send(&all, None) {
            lock(&self.slots).remove(&id);
            return Err(failure(&e));
        }
        // The reader may have failed every slot before ours was listed.
        if let Some(f) = lock(&self.dead).clone() {
            lock(&self.slots).remove(&id);
            return Err(f);
        }
        let mut a = lock(&slot.answer);
        while a.is_none() {
            a = slot.ready.wait(a).unwrap_or_else(|e| e.into_inner());
        }
        match a.take().expect("checked") {
            Ok((proto::OK, p)) => Ok(p),
            Ok((proto::ERROR, p)) => {
                let (code, message) = proto::parse_error(&p);
                Err(Failure::new(if code < 0 { code } else { DRAGON_EIO }, message))
            }
            Ok((k, _)) => Err(Failure::new(DRAGON_EPROTO, format!("unexpected reply kind {k}"))),
            Err(f) => Err(f),
        }
    }

    /// Send a request whose reply nobody waits for.
    fn notify(&self, kind: u8, payload: &[u8]) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed); // unique ids only
        let _ = self.engine.send(&[&head(kind, id), payload], None);
    }
}

/// The reader: replies to their callers; when the link ends, every caller
/// gets the error.
fn dispatch(engine: &Engine, slots: &Weak<Mutex<HashMap<u64, Arc<Slot>>>>, dead: &Mutex<Option<Failure>>) {
    let why = loop {
        match engine.recv(None) {
            Ok(m) => {
                let Some((kind, id, payload)) = split(&m) else {
                    engine.fail(EngineError::Protocol("a reply shorter than its head".into()));
                    continue;
                };
                let Some(slots) = slots.upgrade() else { return };
                let slot = lock(&slots).remove(&id);
                if let Some(s) = slot {
                    *lock(&s.answer) = Some(Ok((kind, payload)));
                    s.ready.notify_all();
                }
            }
            Err(e) => break failure(&e),
        }
    };
    *lock(dead) = Some(why.clone());
    let Some(slots) = slots.upgrade() else { return };
    let all: Vec<Arc<Slot>> = lock(&slots).drain().map(|(_, s)| s).collect();
    for s in all {
        *lock(&s.answer) = Some(Err(why.clone()));
        s.ready.notify_all();
    }
}

/// The verbs transport instance: one RDMA link to its server.
pub struct VerbsTransport {
    link: Arc<Link>,
    blocks: bool,
}

impl std::fmt::Debug for VerbsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsTransport").field("peer", &self.link.engine.peer()).finish()
    }
}

/// One attachment to a channel on the server's node.
pub struct VerbsChannel {
    link: Arc<Link>,
    att: u64,
    handle: Vec<u8>,
    /// Receives ask for block messages to be materialized.
    blocks: bool,
}

impl std::fmt::Debug for VerbsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsChannel").field("attachment", &self.att).finish()
    }
}

impl TransportImpl for VerbsTransport {
    type Channel = VerbsChannel;
    const NAME: &'static CStr = c"verbs";
    const CAPABILITIES: u64 =
        DRAGON_CAP_REMOTE | DRAGON_CAP_ZERO_COPY_RECV | DRAGON_CAP_BLOCKING | DRAGON_CAP_POLL | DRAGON_CAP_CREATE;

    fn open(config: &str) -> Result<Self, Failure> {
        let cfg = parse_config(config)?;
        Ok(VerbsTransport { link: Arc::new(Link::open(&cfg)?), blocks: cfg.blocks })
    }

    fn create_channel(&self, a: &DragonChannelAttrs) -> Result<VerbsChannel, Failure> {
        let mut p = a.capacity.to_le_bytes().to_vec();
        p.extend_from_slice(&a.slot_size.to_le_bytes());
        p.extend_from_slice(&a.max_block_bytes.to_le_bytes());
        let r = self.link.call(proto::CREATE, &[&p])?;
        let (att, handle) = proto::take_u64(&r).ok_or_else(|| Failure::new(DRAGON_EPROTO, "short CREATE reply"))?;
        Ok(VerbsChannel { link: self.link.clone(), att, handle: handle.to_vec(), blocks: self.blocks })
    }

    fn attach_channel(&self, bytes: &[u8]) -> Result<VerbsChannel, Failure> {
        Handle::from_bytes_of(bytes, Kind::Channel)
            .map_err(|e| Failure::new(DRAGON_EBADMSG, format!("bad channel handle: {e}")))?;
        let r = self.link.call(proto::ATTACH, &[bytes])?;
        let (att, _) = proto::take_u64(&r).ok_or_else(|| Failure::new(DRAGON_EPROTO, "short ATTACH reply"))?;
        Ok(VerbsChannel { link: self.link.clone(), att, handle: bytes.to_vec(), blocks: self.blocks })
    }
}

impl Drop for VerbsChannel {
    fn drop(&mut self) {
        self.link.notify(proto::DETACH, &self.att.to_le_bytes());
    }
}

impl ChannelImpl for VerbsChannel {
    type Message = Bytes;
    const WAITS_IN_RECV: bool = true;

    fn handle(&self) -> Vec<u8> {
        self.handle.clone()
    }

    fn send(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure> {
        let head = proto::op_payload(self.att, proto::timeout_ns(timeout), &[]);
        self.link.call(proto::SEND, &[&head, data]).map(|_| ())
    }

    fn recv(&self, timeout: Timeout) -> Result<Bytes, Failure> {
        let flags: &[u8] = if self.blocks { &[proto::RECV_BLOCKS] } else { &[] };
        self.link.call(proto::RECV, &[&proto::op_payload(self.att, proto::timeout_ns(timeout), flags)])
    }

    fn poll(&self, events: u32, timeout: Timeout) -> Result<u32, Failure> {
        let p = proto::op_payload(self.att, proto::timeout_ns(timeout), &events.to_le_bytes());
        let r = self.link.call(proto::POLL, &[&p])?;
        r.get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| Failure::new(DRAGON_EPROTO, "short POLL reply"))
    }

    fn len(&self) -> u64 {
        self.link
            .call(proto::LEN, &[&self.att.to_le_bytes()])
            .ok()
            .and_then(|r| proto::take_u64(&r).map(|(n, _)| n))
            .unwrap_or(0)
    }

    fn destroy(&self) -> Result<(), Failure> {
        self.link.call(proto::DESTROY, &[&self.att.to_le_bytes()]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects() {
        let hex = "ab".repeat(32);
        let c = parse_config(&format!("peer=unix:x secret={hex} fabric=sim:net device=sim0")).unwrap();
        assert_eq!(c.peer, "unix:x");
        assert_eq!(c.fabric, FabricSpec::Sim("net".into()));
        assert_eq!(c.device.as_deref(), Some("sim0"));
        assert!(!c.blocks);
        assert!(parse_config(&format!("peer=unix:x secret={hex} blocks=1")).unwrap().blocks);
        assert!(parse_config(&format!("peer=unix:x secret={hex} blocks=yes")).unwrap_err().message.contains("0 or 1"));
        let c = parse_config(&format!("peer=h:1,secret={hex},lib=/x/libibverbs.so.1,gid_index=3")).unwrap();
        assert_eq!(c.fabric, FabricSpec::Ibverbs { lib: Some("/x/libibverbs.so.1".into()), gid_index: Some(3) });
        let e = |s: &str| parse_config(s).unwrap_err().message;
        assert!(e(&format!("secret={hex}")).contains("peer="));
        assert!(e("peer=a").contains("secret="));
        assert!(e("peer=a secret=zz").contains("64 hex"));
        assert!(e(&format!("peer=a secret={hex} fabric=ofi")).contains("ibv or sim"));
        assert!(e("colour=blue").contains("unknown key"));
        assert!(e("secret_file=/nonexistent/x").contains("cannot read"));
    }
}
