//! Which fabric carries a node service's traffic to each peer: RDMA
//! (verbs, `transport_verbs`) when both nodes have an active RDMA port on a
//! common network, otherwise the TCP link the services always have.
//!
//! Nothing is configured. At start a service opens its first active RDMA
//! port, if there is one ([`Fabric::new`]); a machine without rdma-core,
//! without RDMA in its kernel or without an active port simply has none
//! ("no RDMA device: ..."). When a service links to a peer (the connecting
//! side, right after the TCP link is authenticated, before any request
//! travels on it), the two agree over that TCP link, in frames of kind
//! [`proto::FABRIC`] (first payload byte below):
//!
//! ```text
//!   connecting -> accepting   OFFER   node u32, port text, engine address (transport_verbs::wire::Address)
//!                             NONE    node u32, why (text): no RDMA here, TCP
//!   accepting -> connecting   ANSWER  port text, engine address
//!                             REFUSE  why (text)
//!   then, over RDMA, each side sends UP once it hears the other; the
//!   connecting side, if the RDMA link does not come up:
//!   connecting -> accepting   TCP     why (text)
//! ```
//!
//! The accepting side answers an offer when it has an active port that
//! reaches the offered one (same link layer, on InfiniBand the same subnet
//! prefix: `PortInfo::reaches`); the connecting side then waits (at most
//! [`SETUP_WAIT`]) for the accepting side's UP over RDMA, which proves
//! that both directions work. From then on every frame to that peer,
//! requests and replies alike, travels over RDMA (in order, on one queue
//! pair); heartbeats stay on TCP, which stays open as the peers'
//! lifeline. A link that fails once up is a lost connection to that node,
//! as a TCP link that breaks: never a silent switch with messages lost in
//! between.
//!
//! The connecting side logs one line per peer saying which fabric it uses
//! and why (`out::LOG`: the launcher prints it), and every service answers
//! [`proto::TRANSPORTS`] with what it uses to each peer so far (JSON), which
//! `dragon.native.machine.Node(i).transport` shows.
//!
//! [`ENV`] (`DRAGON_FABRIC`) forces either: `tcp` never uses RDMA, `verbs`
//! makes a missing device or a peer that cannot be reached over RDMA an
//! error instead of a fallback; `auto` is the default. `sim:<name>` uses
//! the simulated fabric of `transport_verbs::sim` (network `<name>`,
//! processes of one machine) in place of rdma-core: for tests.

use crate::proto::{self, out};
use crate::service::Out;
use bytes::{BufMut, Bytes, BytesMut};
use mio::Token;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use transport_tcp::frame::{self, Frame};
use transport_tcp::proto as chp;
use transport_tcp::Client;
use transport_verbs::boot::{self, FabricSpec};
use transport_verbs::engine::{self, Engine, EngineConfig, EngineError};
use transport_verbs::server::{head, split};
use transport_verbs::verbs::{Port, PortInfo, PortState};
use transport_verbs::wire::Address;

/// The environment variable that forces a fabric.
pub const ENV: &str = "DRAGON_FABRIC";
/// How long setting an RDMA link up may take before TCP is used instead.
pub const SETUP_WAIT: Duration = Duration::from_secs(10);
/// How long a frame may wait for credits on an RDMA link before the link
/// is called broken.
const SEND_WAIT: Duration = Duration::from_secs(60);
/// How often the connecting side sends a heartbeat on TCP while it sets
/// the link up (the peer would call it silent otherwise).
const BEAT: Duration = Duration::from_millis(400);

const OFFER: u8 = 1;
const NONE: u8 = 2;
const ANSWER: u8 = 3;
const REFUSE: u8 = 4;
const TCP: u8 = 5;
/// The message each side sends first over a new RDMA link.
const UP: &[u8] = b"dragon-fabric-up";

/// Whether RDMA is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// RDMA where both ends can, TCP elsewhere.
    Auto,
    /// TCP only.
    Tcp,
    /// RDMA only: a peer it cannot be used with is an error.
    Verbs,
}

/// What a node service is told to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Whether RDMA is used.
    pub mode: Mode,
    /// Which RDMA fabric: rdma-core's devices, or a simulated network.
    pub spec: FabricSpec,
}

impl Default for Setting {
    fn default() -> Setting {
        Setting { mode: Mode::Auto, spec: FabricSpec::Ibverbs { lib: None, gid_index: None } }
    }
}

impl Setting {
    /// `auto`, `tcp`, `verbs`, `sim:<name>` (auto on a simulated network)
    /// or `verbs,sim:<name>`; empty is `auto`.
    pub fn parse(s: &str) -> Result<Setting, String> {
        let bad = || format!("{ENV}={s:?}: expected auto, tcp, verbs or sim:<name>");
        let mut set = Setting::default();
        for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            match item {
                "auto" => set.mode = Mode::Auto,
                "tcp" => set.mode = Mode::Tcp,
                "verbs" | "rdma" => set.mode = Mode::Verbs,
                x if x.starts_with("sim:") => set.spec = FabricSpec::parse(x).map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        Ok(set)
    }

    /// What [`ENV`] says (unset: auto).
    pub fn from_env() -> Result<Setting, String> {
        Setting::parse(&std::env::var(ENV).unwrap_or_default())
    }
}

/// What a link's reader tells the service's loop.
#[derive(Debug)]
pub enum Incoming {
    /// A frame from the peer, over RDMA.
    Frame(Frame),
    /// (accepting side) The link is up: send over it from now on.
    Up,
    /// (accepting side) The link did not come up: stay on TCP.
    SetupFailed(String),
    /// The link failed once up: the connection to the peer is lost.
    Failed(String),
}

/// How the service's loop is told (from other threads).
pub type Sink = Arc<dyn Fn(Token, Incoming) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This node's port, or why there is none.
struct Local {
    mode: Mode,
    port: Result<(PortInfo, Arc<dyn Port>), String>,
    me: u32,
    host: String,
    /// Links the connecting side made, until the loop adopts them.
    made: Mutex<HashMap<u32, Made>>,
}

/// What the connecting side settled on for one peer.
struct Made {
    engine: Option<Arc<Engine>>,
    said: String,
}

enum State {
    /// Answered; waiting for the peer's UP.
    Pending(Arc<Engine>),
    /// Frames to the peer go over it.
    Active(Arc<Engine>),
}

/// This node's fabric: its port, and the RDMA links to its peers.
pub struct Fabric {
    local: Arc<Local>,
    links: HashMap<Token, (u32, State)>,
    /// What is used to each peer, and why.
    peers: BTreeMap<u32, String>,
    out: Out,
    sink: Sink,
    /// Threads closing links (joined when the fabric goes).
    closing: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").field("peers", &self.peers).finish_non_exhaustive()
    }
}

fn describe(p: &PortInfo) -> String {
    format!("{} port {}", p.device, p.port)
}

fn put_text(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16_le(s.len() as u16);
    b.put_slice(s);
}

fn take_text(p: &[u8]) -> Option<(String, &[u8])> {
    let n = u16::from_le_bytes(p.get(..2)?.try_into().ok()?) as usize;
    let s = p.get(2..2 + n)?;
    Some((String::from_utf8_lossy(s).into_owned(), &p[2 + n..]))
}

impl Fabric {
    /// Open this node's first active RDMA port as `setting` says. Only
    /// [`Mode::Verbs`] without a usable port is an error.
    pub fn new(setting: &Setting, me: u32, host: &str, out: Out, sink: Sink) -> Result<Fabric, String> {
        let port = match setting.mode {
            Mode::Tcp => Err(format!("{ENV}=tcp")),
            _ => boot::open_port(&setting.spec, None).map_err(|e| e.to_string()),
        };
        if let (Mode::Verbs, Err(why)) = (setting.mode, &port) {
            return Err(format!("{ENV}=verbs, but {why}"));
        }
        let local = Local { mode: setting.mode, port, me, host: host.to_owned(), made: Mutex::default() };
        Ok(Fabric {
            local: Arc::new(local),
            links: HashMap::new(),
            peers: BTreeMap::new(),
            out,
            sink,
            closing: Vec::new(),
        })
    }

    /// Close a link off the service's loop (closing may wait for the peer
    /// to read what it was sent).
    fn close_later(&mut self, e: Arc<Engine>) {
        self.closing.retain(|h| !h.is_finished());
        match std::thread::Builder::new().name("dragon-fabric-close".into()).spawn({
            let e = e.clone();
            move || e.close()
        }) {
            Ok(h) => self.closing.push(h),
            Err(_) => e.close(),
        }
    }

    /// For the thread that makes a link to a peer: see [`Initiator::initiate`].
    pub fn initiator(&self) -> Initiator {
        Initiator(self.local.clone())
    }

    /// This node's port (`mlx5_0 port 1`), or why it has none.
    pub fn local(&self) -> Result<String, String> {
        self.local.port.as_ref().map(|(p, _)| describe(p)).map_err(Clone::clone)
    }

    /// The link to `node` made by [`Initiator::initiate`] is connection `t`:
    /// use what was settled, and say so.
    pub fn adopt(&mut self, node: u32, t: Token, peer_host: &str) {
        let Some(made) = lock(&self.local.made).remove(&node) else { return };
        let line = format!("node {} ({}) to node {node} ({peer_host}): {}", self.local.me, self.local.host, made.said);
        self.out.emit(out::LOG, line.as_bytes());
        self.peers.insert(node, made.said);
        if let Some(e) = made.engine {
            spawn_reader(e.clone(), t, self.sink.clone(), false);
            self.links.insert(t, (node, State::Active(e)));
        }
    }

    /// A [`proto::FABRIC`] frame on connection `t`: the reply to send back
    /// on it, if any.
    pub fn on_frame(&mut self, t: Token, p: &[u8]) -> Option<Bytes> {
        let (&sub, rest) = p.split_first()?;
        let node_of = |r: &[u8]| -> Option<(u32, Vec<u8>)> {
            Some((u32::from_le_bytes(r.get(..4)?.try_into().ok()?), r[4..].to_vec()))
        };
        match sub {
            NONE => {
                let (node, why) = node_of(rest)?;
                self.peers.insert(node, format!("tcp ({})", String::from_utf8_lossy(&why)));
                None
            }
            OFFER => {
                let (node, r) = node_of(rest)?;
                let (their_port, offer) = take_text(&r)?;
                let mut b = BytesMut::new();
                let offered = if self.links.contains_key(&t) {
                    Err("this connection's RDMA link is set up already".to_owned())
                } else {
                    self.accept(offer)
                };
                match offered {
                    Ok((e, ours, answer)) => {
                        self.peers.insert(node, format!("verbs ({ours} to {their_port}), setting up"));
                        spawn_reader(e.clone(), t, self.sink.clone(), true);
                        self.links.insert(t, (node, State::Pending(e)));
                        b.put_u8(ANSWER);
                        put_text(&mut b, &ours);
                        b.put_slice(&answer);
                    }
                    Err(why) => {
                        self.peers.insert(node, format!("tcp ({why})"));
                        b.put_u8(REFUSE);
                        b.put_slice(why.as_bytes());
                    }
                }
                Some(b.freeze())
            }
            TCP => {
                if let Some((node, State::Pending(e) | State::Active(e))) = self.links.remove(&t) {
                    self.close_later(e);
                    self.peers.insert(node, format!("tcp ({})", String::from_utf8_lossy(rest)));
                }
                None
            }
            _ => None,
        }
    }

    fn accept(&self, offer: &[u8]) -> Result<(Arc<Engine>, String, Vec<u8>), String> {
        let me = format!("node {} ({})", self.local.me, self.local.host);
        let (info, port) = self.local.port.as_ref().map_err(|why| format!("{me}: {why}"))?;
        let a = Address::decode(offer).map_err(|e| format!("a malformed offer: {e}"))?;
        let theirs = PortInfo {
            device: String::new(),
            port: 1,
            state: PortState::Active,
            link_layer: a.qp.link_layer,
            lid: a.qp.lid,
            gid: a.qp.gid,
            gid_index: 0,
            mtu: a.qp.mtu,
        };
        if !info.reaches(&theirs) {
            return Err(format!(
                "not on a common RDMA network ({me}: {:?} {}, the peer: {:?} {})",
                info.link_layer, info.gid, theirs.link_layer, theirs.gid
            ));
        }
        let (e, answer) =
            engine::accept(port.clone(), EngineConfig::default(), offer).map_err(|e| format!("{me}: {e}"))?;
        Ok((Arc::new(e), describe(info), answer))
    }

    /// What a reader said about connection `t` (but frames, which the
    /// service handles): whether the connection is lost, and why.
    pub fn event(&mut self, t: Token, i: Incoming) -> Option<String> {
        match i {
            Incoming::Up => {
                if let Some((node, s)) = self.links.remove(&t) {
                    let e = match s {
                        State::Pending(e) | State::Active(e) => e,
                    };
                    if let Some(said) = self.peers.get_mut(&node) {
                        *said = said.trim_end_matches(", setting up").to_owned();
                    }
                    self.links.insert(t, (node, State::Active(e)));
                }
                None
            }
            Incoming::SetupFailed(why) => {
                if let Some((node, State::Pending(e))) = self.links.remove(&t) {
                    self.close_later(e);
                    self.peers.insert(node, format!("tcp (the RDMA link did not come up: {why})"));
                }
                None
            }
            Incoming::Failed(why) => match self.links.get(&t) {
                Some((_, State::Active(_))) => Some(format!("its RDMA link failed: {why}")),
                _ => None,
            },
            Incoming::Frame(_) => None,
        }
    }

    /// Send a frame on connection `t` over RDMA if that is what it uses:
    /// `None` if it does not (send it on TCP), else whether it went.
    pub fn send(&mut self, t: Token, kind: u8, id: u64, payload: &[u8]) -> Option<Result<(), String>> {
        let Some((_, State::Active(e))) = self.links.get(&t) else { return None };
        Some(e.send(&[&head(kind, id), payload], Some(SEND_WAIT)).map_err(|e| format!("its RDMA link failed: {e}")))
    }

    /// [`Fabric::send`] of a payload made of `payload` then `tail`; over
    /// RDMA the peer reads `tail` in place when it is a block of this
    /// node's store.
    pub fn send_parts(
        &mut self,
        t: Token,
        kind: u8,
        id: u64,
        payload: &[u8],
        tail: &Bytes,
    ) -> Option<Result<(), String>> {
        let Some((_, State::Active(e))) = self.links.get(&t) else { return None };
        let h = head(kind, id);
        Some(e.send_in_place(&[&h, payload], tail, Some(SEND_WAIT)).map_err(|e| format!("its RDMA link failed: {e}")))
    }

    /// Connection `t` is gone: close its RDMA link.
    pub fn gone(&mut self, t: Token) {
        if let Some((_, State::Pending(e) | State::Active(e))) = self.links.remove(&t) {
            self.close_later(e);
        }
    }

    /// What this node uses to reach each peer so far, as JSON:
    /// `{"node": 0, "rdma": "mlx5_0 port 1" | null, "why_not": text | null,
    /// "peers": {"1": "verbs (...)" | "tcp (...)"}, "carried": {"1":
    /// [messages sent inline, written, read by the peer, received, read by
    /// the peer in place from this node's block store]}}`
    /// (`carried`: the RDMA links up now).
    pub fn report(&self) -> String {
        let q = |s: &str| {
            let mut o = String::from('"');
            for c in s.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        };
        let (rdma, why) = match self.local() {
            Ok(p) => (q(&p), "null".to_owned()),
            Err(w) => ("null".to_owned(), q(&w)),
        };
        let peers: Vec<String> = self.peers.iter().map(|(n, s)| format!("\"{n}\":{}", q(s))).collect();
        let mut up: Vec<(u32, String)> = self
            .links
            .values()
            .filter_map(|(n, s)| match s {
                State::Active(e) => {
                    let st = e.stats();
                    Some((
                        *n,
                        format!(
                            "\"{n}\":[{},{},{},{},{}]",
                            st.sent_inline, st.sent_written, st.sent_large, st.received, st.sent_in_place
                        ),
                    ))
                }
                State::Pending(_) => None,
            })
            .collect();
        up.sort();
        let up: Vec<String> = up.into_iter().map(|(_, s)| s).collect();
        format!(
            "{{\"node\":{},\"rdma\":{rdma},\"why_not\":{why},\"peers\":{{{}}},\"carried\":{{{}}}}}",
            self.local.me,
            peers.join(","),
            up.join(",")
        )
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // Each reader thread ends when its link is closed; the links
        // release their registrations and queue pairs as they go.
        for (_, (_, State::Pending(e) | State::Active(e))) in self.links.drain() {
            e.close();
        }
        for h in self.closing.drain(..) {
            let _ = h.join();
        }
    }
}

/// The part of a [`Fabric`] the connecting thread uses.
pub struct Initiator(Arc<Local>);

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator").field("node", &self.0.me).finish_non_exhaustive()
    }
}

/// Frames over the blocking, authenticated TCP stream during set-up.
struct Stream<'a> {
    s: &'a mut TcpStream,
    rbuf: &'a mut BytesMut,
    beat: Instant,
}

impl Stream<'_> {
    fn write(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let mut b = BytesMut::new();
        frame::encode(&mut b, kind, 0, payload);
        self.s.write_all(&b)
    }

    fn heartbeat(&mut self) -> io::Result<()> {
        if self.beat.elapsed() >= BEAT {
            self.beat = Instant::now();
            self.write(chp::HEARTBEAT, &[])?;
        }
        Ok(())
    }

    /// The next FABRIC frame (heartbeats skipped), by `deadline`.
    fn next(&mut self, deadline: Instant) -> io::Result<Bytes> {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(f) = frame::decode(self.rbuf).map_err(|e| io::Error::other(e.to_string()))? {
                match f.kind {
                    proto::FABRIC => return Ok(f.payload),
                    chp::HEARTBEAT => {}
                    k => return Err(io::Error::other(format!("frame kind {k:#x} during the fabric set-up"))),
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
            self.heartbeat()?;
            match self.s.read(&mut buf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection")),
                Ok(n) => self.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Initiator {
    /// Settle the fabric to `node` over its freshly authenticated TCP
    /// connection (whose reads time out in slices), before anything else
    /// travels on it; the connection's stream and what was read past the
    /// set-up. The outcome waits for [`Fabric::adopt`]. An error only when
    /// RDMA is forced and cannot be used, or the stream broke.
    pub fn initiate(&self, node: u32, c: Client) -> Result<(TcpStream, BytesMut), String> {
        let (mut s, mut rbuf) = c.into_parts();
        self.settle(node, &mut s, &mut rbuf)?;
        Ok((s, rbuf))
    }

    fn settle(&self, node: u32, s: &mut TcpStream, rbuf: &mut BytesMut) -> Result<(), String> {
        let l = &*self.0;
        let mut st = Stream { s, rbuf, beat: Instant::now() };
        let made = match &l.port {
            Err(why) => {
                let mut b = BytesMut::new();
                b.put_u8(NONE);
                b.put_u32_le(l.me);
                b.put_slice(format!("node {} ({}): {why}", l.me, l.host).as_bytes());
                st.write(proto::FABRIC, &b).map_err(|e| e.to_string())?;
                Made { engine: None, said: format!("tcp ({why})") }
            }
            Ok((info, port)) => match self.offer(&mut st, info, port) {
                Ok(m) => m,
                Err(Broken(why)) => return Err(why),
            },
        };
        if l.mode == Mode::Verbs && made.engine.is_none() {
            return Err(format!("{ENV}=verbs, but {}", made.said));
        }
        lock(&l.made).insert(node, made);
        Ok(())
    }

    fn offer(&self, st: &mut Stream<'_>, info: &PortInfo, port: &Arc<dyn Port>) -> Result<Made, Broken> {
        let l = &*self.0;
        let ours = describe(info);
        let tcp = |why: String| Made { engine: None, said: format!("tcp ({why})") };
        let (conn, offer) = match engine::offer(port.clone(), EngineConfig::default()) {
            Ok(x) => x,
            Err(e) => {
                // Nothing offered: the peer hears why, as from a node without RDMA.
                let mut b = BytesMut::new();
                b.put_u8(NONE);
                b.put_u32_le(l.me);
                b.put_slice(format!("node {} ({}): {e}", l.me, l.host).as_bytes());
                st.write(proto::FABRIC, &b).map_err(Broken::io)?;
                return Ok(tcp(e.to_string()));
            }
        };
        let mut b = BytesMut::new();
        b.put_u8(OFFER);
        b.put_u32_le(l.me);
        put_text(&mut b, &ours);
        b.put_slice(&offer);
        st.write(proto::FABRIC, &b).map_err(Broken::io)?;
        let reply = st.next(Instant::now() + SETUP_WAIT).map_err(Broken::io)?;
        let (theirs, answer) = match reply.split_first() {
            Some((&ANSWER, r)) => take_text(r).ok_or_else(|| Broken("a malformed fabric answer".into()))?,
            Some((&REFUSE, why)) => return Ok(tcp(String::from_utf8_lossy(why).into_owned())),
            _ => return Err(Broken("a malformed fabric answer".into())),
        };
        // From here the peer holds a link: it is told if it is not used.
        let fall_back = |st: &mut Stream<'_>, why: String| -> Result<Made, Broken> {
            let mut b = BytesMut::new();
            b.put_u8(TCP);
            b.put_slice(why.as_bytes());
            st.write(proto::FABRIC, &b).map_err(Broken::io)?;
            Ok(tcp(format!("the RDMA link did not come up: {why}")))
        };
        let e = match conn.finish(answer) {
            Ok(e) => Arc::new(e),
            Err(e) => return fall_back(st, e.to_string()),
        };
        let deadline = Instant::now() + SETUP_WAIT;
        loop {
            match e.recv(Some(BEAT)) {
                Ok(m) if &m[..] == UP => break,
                Ok(_) => return fall_back(st, "an unexpected first message".into()),
                Err(EngineError::TimedOut) if Instant::now() < deadline => st.heartbeat().map_err(Broken::io)?,
                Err(EngineError::TimedOut) => return fall_back(st, format!("no answer in {} s", SETUP_WAIT.as_secs())),
                Err(err) => return fall_back(st, err.to_string()),
            }
        }
        if let Err(err) = e.send(&[UP], Some(SETUP_WAIT)) {
            return fall_back(st, err.to_string());
        }
        Ok(Made { engine: Some(e), said: format!("verbs ({ours} to {theirs})") })
    }
}

/// The TCP stream itself broke during set-up.
struct Broken(String);

impl Broken {
    fn io(e: io::Error) -> Broken {
        Broken(format!("during the fabric set-up: {e}"))
    }
}

/// The thread that reads a link: frames (and, on the accepting side, the
/// set-up's end) to the service's loop.
fn spawn_reader(e: Arc<Engine>, t: Token, sink: Sink, accepting: bool) {
    let failed = e.clone();
    let run = move || {
        if accepting {
            let up = e.send(&[UP], Some(SETUP_WAIT)).and_then(|()| e.recv(Some(SETUP_WAIT)));
            match up {
                Ok(m) if &m[..] == UP => sink(t, Incoming::Up),
                Ok(_) => return sink(t, Incoming::SetupFailed("an unexpected first message".into())),
                Err(err) => return sink(t, Incoming::SetupFailed(err.to_string())),
            }
        }
        loop {
            match e.recv(None) {
                Ok(m) => match split(&m) {
                    Some((kind, id, payload)) => sink(t, Incoming::Frame(Frame { kind, id, payload })),
                    None => {
                        e.fail(EngineError::Protocol("a frame shorter than its head".into()));
                    }
                },
                Err(EngineError::Closed) => return,
                Err(err) => return sink(t, Incoming::Failed(err.to_string())),
            }
        }
    };
    let spawned = std::thread::Builder::new().name("dragon-fabric-rx".into()).spawn(run);
    if let Err(err) = spawned {
        // Nothing will read the link: fail it, so that the next frame sent
        // on it says why (and the peer's set-up or keepalive notices).
        failed.fail(EngineError::Setup(format!("cannot start its reader: {err}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(Setting::parse("").unwrap(), Setting::default());
        assert_eq!(Setting::parse("tcp").unwrap().mode, Mode::Tcp);
        assert_eq!(Setting::parse(" verbs ").unwrap().mode, Mode::Verbs);
        let s = Setting::parse("sim:net1").unwrap();
        assert_eq!((s.mode, s.spec), (Mode::Auto, FabricSpec::Sim("net1".into())));
        let s = Setting::parse("verbs,sim:x").unwrap();
        assert_eq!((s.mode, s.spec), (Mode::Verbs, FabricSpec::Sim("x".into())));
        for bad in ["ofi", "sim:", "tcp,ethernet"] {
            assert!(Setting::parse(bad).unwrap_err().contains("expected auto, tcp, verbs"), "{bad}");
        }
    }

    #[test]
    fn texts_round_trip_and_short_ones_are_refused() {
        let mut b = BytesMut::new();
        put_text(&mut b, "mlx5_0 port 1");
        b.put_slice(b"rest");
        let (s, rest) = take_text(&b).unwrap();
        assert_eq!((s.as_str(), rest), ("mlx5_0 port 1", &b"rest"[..]));
        assert!(take_text(&b[..5]).is_none());
        assert!(take_text(&[1]).is_none());
    }
}
