//! The node service: one per node of a multi-node run.
//!
//! Started by the launcher (over ssh, srun, or as a plain child on the
//! launcher's own node) with its bootstrap on standard input
//! ([`crate::bootstrap`]), it
//!
//! - listens on TCP for the other nodes' services and on a unix socket
//!   (abstract name [`service_name`]) for the processes of its node;
//! - joins the primary (node 0), which answers every node with the node
//!   table once all have joined, or fails naming the hosts that did not
//!   join in time;
//! - carries its node's processes' requests for other nodes (channel
//!   operations, process starts, signals) over one authenticated,
//!   multiplexed connection per peer node, and serves the requests other
//!   nodes make of this node: channel operations on its shared-memory
//!   channels, and process starts through this node's template;
//! - forwards the output of the processes it started to the launcher;
//! - sends a heartbeat to every peer every 500 ms and calls a peer lost
//!   after `peer_timeout` of silence: every request waiting on it fails
//!   with an error naming the node, and its processes report
//!   [`proto::LOST_EXIT`];
//! - owns its node's cleanup: when its standard input ends (the launcher
//!   is gone or done), on SIGTERM or SIGHUP (a batch system ending the
//!   job), when the primary is lost, or on a fatal error, it
//!   stops its template (which kills the processes it started), kills any
//!   other process of the run on the node, removes the run's `/dev/shm`
//!   files, and exits.

use crate::bootstrap::{self, Bootstrap};
use crate::ddictserve::DDictServer;
use crate::fabric::{self, Fabric};
use crate::launch::{self, Template, TemplateSpec};
use crate::proto::{self, out};
use crate::syncserve::{self, SyncRequest, SyncServer};
use crate::table::{self, NodeInfo};
use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::{TcpListener, TcpStream, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport_abi::abi::{DRAGON_EBADMSG, DRAGON_EINVAL, DRAGON_EIO, DRAGON_EPROTO};
use transport_abi::export::TransportImpl;
use transport_shm::plugin::ShmTransport;
use transport_tcp::auth::{self, random32};
use transport_tcp::frame::Frame;
use transport_tcp::gate::{self, Gate};
use transport_tcp::link::{Link, LinkError};
use transport_tcp::proto as chp;
use transport_tcp::serve::{Post, Reply, Served};
use transport_tcp::{Client, Secret};

const TCP: Token = Token(0);
const UNIX: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// How often a service sends a heartbeat to each peer.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long connecting to a peer service may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the template may take to clean up at the end.
const TEMPLATE_STOP: Duration = Duration::from_secs(5);

/// The abstract unix socket name of node `node`'s service in run `run`.
pub fn service_name(run: &str, node: u32) -> String {
    format!("dragon-{run}-n{node}-service")
}

/// The abstract unix socket name of node `node`'s template (started by its service).
pub fn template_name(run: &str, node: u32) -> String {
    format!("dragon-{run}-n{node}-template")
}

/// How a service is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Python interpreter that runs templates on this node.
    pub python: PathBuf,
    /// Address to listen on for other nodes (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// RDMA or TCP to peers (`None`: as `fabric::ENV` says).
    pub fabric: Option<fabric::Setting>,
    /// Most processes of other nodes connected straight to this service at
    /// once (`None`: [`DIRECT_MAX_ENV`], or else half of the descriptors
    /// this process may open beyond [`FD_RESERVE`]). Beyond it a process is
    /// refused and reaches this node through its own node's service.
    pub direct_max: Option<usize>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            python: PathBuf::from("python3"),
            listen: "0.0.0.0:0".parse().expect("an address"),
            fabric: None,
            direct_max: None,
        }
    }
}

/// The environment variable that sets [`Options::direct_max`].
pub const DIRECT_MAX_ENV: &str = "DRAGON_DIRECT_MAX";
/// Descriptors a service keeps for everything but direct connections
/// (links to other nodes, its processes' connections, files).
pub const FD_RESERVE: u64 = 256;

/// The default of [`Options::direct_max`].
fn direct_max_default() -> usize {
    if let Some(n) = std::env::var(DIRECT_MAX_ENV).ok().and_then(|v| v.trim().parse().ok()) {
        return n;
    }
    let soft = crate::sys::open_files_limit().unwrap_or(1024);
    (soft.saturating_sub(FD_RESERVE) / 2) as usize
}

/// The service's standard output to the launcher.
#[derive(Clone)]
pub struct Out(Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out(..)")
    }
}

impl Out {
    /// Frames written to `w`.
    pub fn new(w: Box<dyn Write + Send>) -> Out {
        Out(Arc::new(Mutex::new(w)))
    }

    /// Write one record (a launcher that went away is not an error here:
    /// standard input ending says so).
    pub fn emit(&self, kind: u8, payload: &[u8]) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let _ = w.write_all(&head).and_then(|()| w.write_all(payload)).and_then(|()| w.flush());
    }
}

/// What threads tell the event loop.
enum Event {
    /// A line of standard input; `None` at its end.
    Input(Option<String>),
    /// A waiting channel request of connection `Token` finished.
    Reply(Token, Reply),
    /// An outgoing link to node `u32` is authenticated, its fabric
    /// settled (or it failed).
    Connected(u32, Result<(std::net::TcpStream, BytesMut), String>),
    /// From the RDMA link of a connection (`fabric`).
    Fabric(Token, fabric::Incoming),
    /// A start request finished.
    Started { from: Requester, id: u64, lifeline: Option<(u32, u64)>, result: Result<launch::Started, String> },
    /// A process started here exited.
    Exited { launch: u64, code: i64 },
    /// The process received a termination signal.
    Signal(i32),
}

/// Who asked for a process start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requester {
    Local(Token),
    Node(u32),
}

/// A request relayed to another node, waiting for its reply.
struct Pending {
    /// The local connection and the id it used (`None`: nobody waits).
    from: Option<(Token, u64)>,
    kind: u8,
    node: u32,
    /// For DETACH and RELEASE: the attachment or launch it ends.
    target: u64,
    /// For LAUNCH: the tethers made for it (closed if it fails).
    tethers: Vec<u64>,
}

struct PeerState {
    authed: bool,
    nonce: [u8; 32],
    node: Option<u32>,
    served: Served,
}

struct LocalState {
    served: Served,
    /// Descriptors the process sent (for its next start request).
    fds: crate::fdstream::Received,
    /// The process's pid (from the kernel: the owner of its locks elsewhere).
    pid: u32,
    /// Nodes whose synchronisation objects it used (told when it ends).
    sync_nodes: HashSet<u32>,
    /// Attachments on other nodes made through this connection.
    atts: HashSet<(u32, u64)>,
    /// Processes started through this connection, by (node, launch).
    launches: HashSet<(u32, u64)>,
    /// Relayed requests still waiting (our ids).
    waiting: HashSet<u64>,
    /// A WATCH or PARENT connection: what it watches.
    watching: Option<Watching>,
}

/// What a connection that only watches is for.
#[derive(Debug, Clone, Copy)]
enum Watching {
    /// WATCH: a process's exit, by (node, launch); it gets 8 raw bytes
    /// (the exit code), no frames.
    Exit((u32, u64)),
    /// PARENT: a lifeline, by tether; it gets nothing and is closed when
    /// the lifeline ends.
    Parent((u32, u64)),
}

/// A process of another node connected straight to this service (with
/// its own service's word for it, `auth::PROOF_PROCESS`): it uses this
/// node's channels and DDicts without either service relaying.
struct DirectState {
    /// The process's node.
    node: u32,
    /// Its pid there (vouched for by its node's service): the owner of the
    /// locks it takes here.
    pid: u32,
    served: Served,
    /// It used this node's synchronisation objects.
    synced: bool,
}

enum Role {
    Peer(PeerState),
    Local(LocalState),
    Direct(DirectState),
}

struct Conn {
    link: Link,
    role: Role,
    closing: bool,
}

/// A process started on this node.
struct Here {
    pid: i32,
    from: Requester,
    /// Keeps the pid from being reused until the requester lets go.
    _conn: OwnedFd,
}

struct Service {
    boot: Bootstrap,
    me: u32,
    opts: Options,
    /// See [`Options::direct_max`].
    direct_max: usize,
    out: Out,
    poll: Poll,
    tcp: TcpListener,
    unix: UnixListener,
    waker: Arc<Waker>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    shm: ShmTransport,
    port: u16,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// The link that reaches each node.
    links: HashMap<u32, Token>,
    /// Frames for nodes whose link is being made.
    queued: HashMap<u32, Vec<(u8, u64, Bytes)>>,
    /// Block stores of this node that local processes' SEND_BLOCK requests
    /// name (their blocks are sent on from there).
    stores: transport_shm::blocks::Stores,
    /// Nodes lost, and why.
    lost: HashMap<u32, String>,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    table: Option<Vec<NodeInfo>>,
    joined: HashMap<u32, NodeInfo>,
    started: Instant,
    /// Processes started here, by launch id.
    here: HashMap<u64, Here>,
    next_launch: u64,
    /// Exit codes known, by (node, launch).
    exits: HashMap<(u32, u64), i64>,
    /// Connections waiting for an exit code.
    watchers: HashMap<(u32, u64), Vec<Token>>,
    starter: Option<(Sender<StartJob>, std::thread::JoinHandle<()>)>,
    stop: Option<String>,
    got_primary: bool,
    uid: u32,
    /// Peers that have not authenticated yet (deadline, caps).
    gate: Gate,
    /// This node's synchronisation objects, as other nodes use them.
    sync: SyncServer,
    /// This node's DDicts, as other nodes use them.
    ddicts: DDictServer,
    tethers: HashMap<Token, Tether>,
    tether_tokens: HashMap<(u32, u64), Token>,
    next_tether: u64,
    /// Tethers whose other end closed before this end was made.
    closed_early: HashSet<(u32, u64)>,
    /// The lifelines of processes started here for other nodes, by tether.
    lifelines: HashMap<(u32, u64), Lifeline>,
    /// PARENT requests (connection, request id, pid) that came while some
    /// lifeline's process was still starting: the asker may be that
    /// process, its start not yet known here. Answered when it is.
    parent_asks: Vec<(Token, u64, u32)>,
    fabric: Fabric,
}

struct StartJob {
    from: Requester,
    id: u64,
    /// The tether that is the process's parent's lifeline.
    lifeline: Option<(u32, u64)>,
    prep: Vec<u8>,
    flags: Vec<String>,
    data: Vec<u8>,
    /// Descriptors the process gets after its standard streams.
    extra: Vec<OwnedFd>,
}

/// One end of a *tether*: a socket whose end of file stands for another
/// socket's on another node. A process started on another node may refer
/// to the lifetime socket of a `Pipe` end (`dragon.connection`), whose end
/// of file tells the other end's holders that every copy is closed. The
/// requester's service keeps the socket the process was given (its
/// descriptor came with the start request); the target's service makes a
/// socket pair, gives the process one end and keeps the other. When either
/// kept socket reaches end of file, its service closes it and tells the
/// other, which closes its own: end of file crosses the nodes both ways.
/// A lost node closes its tethers too (its processes are gone). A tether
/// carries no bytes: bytes written to a kept socket (a process writing to a
/// `Pipe` end's `fileno()` itself) break it, and both services shut their
/// sockets down, so that no reader waits for bytes that cannot come.
struct Tether {
    fd: OwnedFd,
    /// The node at the other end.
    peer: u32,
    /// The node whose service gave the tether its id, and the id.
    key: (u32, u64),
}

/// The far end of a *lifeline*: the tether that a process started here for
/// a process of another node has as its parent's sentinel
/// (`parent_process()`). The requester's side is a tether like any other
/// (the parent keeps one end of a socket pair for its life, its service
/// the other); here it has no socket until the process asks for one: a
/// PARENT connection of the process, which this service closes when the
/// lifeline ends (the parent ended, or its node was lost). A process that
/// never looks at its parent holds no descriptor for it. The lifeline
/// ends here when the process exits: its parent's service is told, as
/// when the process's end of a tether closes.
struct Lifeline {
    /// The parent's node.
    peer: u32,
    /// The process, once started: its pid and launch id.
    started: Option<(u32, u64)>,
    /// The PARENT connections open on it.
    watchers: Vec<Token>,
}

/// Run a node service with bootstrap `boot` until its node is torn down;
/// `input` is what is left of its standard input (the `primary=` line of a
/// secondary, then the lifeline), `out` its standard output. Returns the
/// exit code for the process.
pub fn run(boot: Bootstrap, input: Box<dyn BufRead + Send>, out: Out, opts: Options) -> i32 {
    run_until(boot, input, out, opts, false)
}

/// [`run`]; with `signals`, SIGTERM and SIGHUP (blocked by the caller
/// before it started any thread) end the run on this node too.
fn run_until(boot: Bootstrap, input: Box<dyn BufRead + Send>, out: Out, opts: Options, signals: bool) -> i32 {
    let mut s = match Service::new(boot, out.clone(), opts) {
        Ok(s) => s,
        Err(e) => {
            out.emit(out::ERROR, format!("node service cannot start: {e}").as_bytes());
            return 1;
        }
    };
    let tx = s.tx.clone();
    let waker = s.waker.clone();
    let _ = std::thread::Builder::new().name("dragon-stdin".into()).spawn(move || {
        let mut input = input;
        loop {
            let line = bootstrap::read_line(&mut input).ok().flatten();
            let end = line.is_none();
            if tx.send(Event::Input(line)).is_err() {
                return;
            }
            let _ = waker.wake();
            if end {
                return;
            }
        }
    });
    if signals {
        let (tx, waker) = (s.tx.clone(), s.waker.clone());
        let _ = std::thread::Builder::new().name("dragon-signals".into()).spawn(move || {
            while let Ok(sig) = crate::sys::wait_termination_signal() {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        });
    }
    s.serve();
    s.teardown()
}

/// Read the bootstrap from standard input and run the service (the body of
/// `python -m dragon._node`).
pub fn main(opts: Options) -> i32 {
    // First, while this is the process's only thread: SIGTERM (what Slurm
    // sends every process of a job step it ends) and SIGHUP end the run on
    // this node in order instead of killing the service mid-way.
    let signals = crate::sys::block_termination_signals().is_ok();
    // Every process of other nodes that uses this node may connect here.
    crate::sys::raise_open_files_limit();
    let out = Out::new(Box::new(io::stdout()));
    let mut stdin = io::BufReader::new(io::stdin());
    let boot = match Bootstrap::read(&mut stdin) {
        Ok(b) => b,
        Err(e) => {
            out.emit(out::ERROR, e.to_string().as_bytes());
            return 2;
        }
    };
    // Processes started here, and this service's own shared-memory files,
    // belong to the run and to this node.
    std::env::set_var(transport_shm::segment::RUN_ENV, &boot.run);
    std::env::set_var(transport_shm::segment::NODE_ENV, boot.index.to_string());
    run_until(boot, Box::new(stdin), out, opts, signals)
}

fn bind_unix(name: &str) -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l))
}

fn u32_at(p: &[u8]) -> Option<(u32, &[u8])> {
    let (a, b) = p.split_at_checked(4)?;
    Some((u32::from_le_bytes(a.try_into().ok()?), b))
}

fn u64_at(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
}

impl Service {
    fn new(boot: Bootstrap, out: Out, opts: Options) -> io::Result<Service> {
        let poll = Poll::new()?;
        let mut tcp = TcpListener::bind(opts.listen)?;
        let port = tcp.local_addr()?.port();
        let mut unix = bind_unix(&service_name(&boot.run, boot.index))?;
        poll.registry().register(&mut tcp, TCP, Interest::READABLE)?;
        poll.registry().register(&mut unix, UNIX, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = unbounded();
        // Before anything of the run is made here: a bad setting leaves nothing.
        let setting = opts.fabric.clone().map_or_else(fabric::Setting::from_env, Ok).map_err(io::Error::other)?;
        let (ftx, fw) = (tx.clone(), waker.clone());
        let sink: fabric::Sink = Arc::new(move |t, i| {
            if ftx.send(Event::Fabric(t, i)).is_ok() {
                let _ = fw.wake();
            }
        });
        let fabric = Fabric::new(&setting, boot.index, boot.host(), out.clone(), sink).map_err(io::Error::other)?;
        let shm = ShmTransport::open("").map_err(|f| io::Error::other(f.message))?;
        if let Some(run) = transport_shm::RunId::parse(&boot.run) {
            // On a secondary node the run's owner is not a process here:
            // keep the run's files from being taken for a dead run's.
            transport_shm::keep_run(&run)?;
        }
        let me = boot.index;
        out.emit(out::LISTENING, format!("{}:{port}", boot.host()).as_bytes());
        Ok(Service {
            me,
            direct_max: opts.direct_max.unwrap_or_else(direct_max_default),
            opts,
            out,
            poll,
            tcp,
            unix,
            waker,
            tx,
            rx,
            shm,
            port,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            links: HashMap::new(),
            queued: HashMap::new(),
            stores: transport_shm::blocks::Stores::default(),
            lost: HashMap::new(),
            pending: HashMap::new(),
            next_req: 1,
            table: None,
            joined: HashMap::new(),
            started: Instant::now(),
            here: HashMap::new(),
            next_launch: 1,
            exits: HashMap::new(),
            watchers: HashMap::new(),
            starter: None,
            stop: None,
            got_primary: false,
            uid: crate::sys::uid(),
            gate: Gate::new(gate::Limits::default()),
            sync: SyncServer::default(),
            ddicts: DDictServer::new(me),
            tethers: HashMap::new(),
            tether_tokens: HashMap::new(),
            next_tether: 1,
            closed_early: HashSet::new(),
            lifelines: HashMap::new(),
            parent_asks: Vec::new(),
            fabric,
            boot,
        })
    }

    /// This node's record: the CPUs the launcher gave it (an allocation's)
    /// over the service's own affinity.
    fn local_info(&self) -> NodeInfo {
        let mut info = NodeInfo::local(self.me, self.boot.host(), self.port);
        if let Some(cpus) = self.boot.cpus {
            info.cpus = cpus;
        }
        info
    }

    fn host_of(&self, node: u32) -> String {
        self.boot.hosts.get(node as usize).cloned().unwrap_or_else(|| format!("node {node}"))
    }

    // ---- the loop -------------------------------------------------------------

    fn serve(&mut self) {
        if self.me == 0 {
            self.joined.insert(0, self.local_info());
            self.maybe_ready();
        }
        let mut events = Events::with_capacity(256);
        let mut next_beat = Instant::now() + HEARTBEAT_EVERY;
        while self.stop.is_none() {
            let wait = next_beat.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.stop = Some(format!("event loop failed: {e}"));
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    TCP => self.accept_tcp(),
                    UNIX => self.accept_unix(),
                    WAKER => {}
                    t if self.tethers.contains_key(&t) => self.tether_event(t),
                    t => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(t);
                        }
                        self.flush(t);
                    }
                }
            }
            while let Ok(e) = self.rx.try_recv() {
                self.event(e);
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + HEARTBEAT_EVERY;
                self.tick();
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        self.ddicts.sweep();
        let mut silent = Vec::new();
        let mut stale = Vec::new();
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for t in tokens {
            let Some(c) = self.conns.get_mut(&t) else { continue };
            let Role::Peer(p) = &c.role else { continue };
            if !p.authed {
                continue;
            }
            if now.duration_since(c.link.heard) > self.boot.peer_timeout {
                silent.push((t, now.duration_since(c.link.heard)));
                continue;
            }
            c.link.send(chp::HEARTBEAT, 0, &[], Bytes::new());
            self.flush(t);
        }
        stale.extend(self.gate.expired(now));
        for t in stale {
            self.refuse(t, gate::CLOSED_LATE);
        }
        for (t, d) in silent {
            self.drop_conn(t, &format!("no heartbeat for {:.1} s: the node died or is cut off", d.as_secs_f64()));
        }
        if self.table.is_none() && now.duration_since(self.started) > self.boot.join_timeout {
            let missing: Vec<String> = if self.me == 0 {
                (0..self.boot.hosts.len() as u32)
                    .filter(|i| !self.joined.contains_key(i))
                    .map(|i| self.host_of(i))
                    .collect()
            } else {
                vec![self.host_of(0)]
            };
            let why = format!(
                "nodes did not join the run within {:.0} s: {}",
                self.boot.join_timeout.as_secs_f64(),
                missing.join(", ")
            );
            self.out.emit(out::ERROR, why.as_bytes());
            self.stop = Some(why);
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Input(None) => self.stop = Some("the launcher closed the node's standard input".into()),
            Event::Input(Some(line)) => self.input(&line),
            Event::Reply(t, r) => self.reply_to(t, r),
            Event::Connected(node, r) => self.connected(node, r),
            Event::Fabric(t, fabric::Incoming::Frame(f)) => self.frame(t, f),
            Event::Fabric(t, i) => {
                if let Some(why) = self.fabric.event(t, i) {
                    self.drop_conn(t, &why);
                }
            }
            Event::Started { from, id, lifeline, result } => self.started(from, id, lifeline, result),
            Event::Exited { launch, code } => self.exited_here(launch, code),
            Event::Signal(sig) => {
                let name = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGHUP" };
                self.stop = Some(format!("the service received {name}"));
            }
        }
    }

    fn input(&mut self, line: &str) {
        if self.me == 0 || self.got_primary {
            return; // anything after the bootstrap is only a lifeline
        }
        match bootstrap::parse_primary(line) {
            Ok(addr) => {
                self.got_primary = true;
                self.connect(0, Some(addr));
            }
            Err(e) => {
                self.out.emit(out::ERROR, e.to_string().as_bytes());
                self.stop = Some(e.to_string());
            }
        }
    }

    // ---- connections --------------------------------------------------------

    fn add_conn(&mut self, mut link: Link, role: Role) -> Option<Token> {
        let t = Token(self.next_token);
        self.next_token += 1;
        if self.poll.registry().register(link.stream(), t, Interest::READABLE | Interest::WRITABLE).is_err() {
            return None;
        }
        self.conns.insert(t, Conn { link, role, closing: false });
        Some(t)
    }

    fn accept_tcp(&mut self) {
        loop {
            match self.tcp.accept() {
                Ok((stream, from)) => {
                    for (t, why) in self.gate.make_room(from.ip()) {
                        self.refuse(t, why);
                    }
                    let _ = stream.set_nodelay(true);
                    let nonce = random32();
                    let mut link = Link::new(Box::new(stream));
                    link.max_frame = gate::MAX_UNAUTHENTICATED_FRAME;
                    link.send(auth::HELLO, 0, &Secret::hello(&nonce), Bytes::new());
                    let role = Role::Peer(PeerState {
                        authed: false,
                        nonce,
                        node: None,
                        served: Served::new(self.me, self.boot.host()),
                    });
                    if let Some(t) = self.add_conn(link, role) {
                        self.gate.admit(t, from.ip());
                        self.flush(t);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn accept_unix(&mut self) {
        loop {
            match self.unix.accept() {
                Ok((stream, _)) => {
                    // Only processes of this user may use the service.
                    let pid = match crate::sys::peer_cred(stream.as_raw_fd()) {
                        Ok((uid, pid)) if uid == self.uid || uid == 0 => pid,
                        _ => continue,
                    };
                    let (stream, fds) = crate::fdstream::FdStream::new(stream);
                    let role = Role::Local(LocalState {
                        served: Served::new(self.me, self.boot.host()),
                        fds,
                        pid,
                        sync_nodes: HashSet::new(),
                        atts: HashSet::new(),
                        launches: HashSet::new(),
                        waiting: HashSet::new(),
                        watching: None,
                    });
                    self.add_conn(Link::new(Box::new(stream)), role);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Make the link to `node` (in a thread; requests for it queue meanwhile).
    fn connect(&mut self, node: u32, addr: Option<String>) {
        if self.queued.contains_key(&node) && node != 0 {
            return;
        }
        self.queued.entry(node).or_default();
        let addrs: Vec<String> = match addr {
            Some(a) => vec![a],
            None => match self.table.as_ref().and_then(|t| t.get(node as usize)) {
                Some(n) => {
                    let mut v = vec![n.service_address()];
                    v.extend(n.addresses.iter().map(|a| format!("{a}:{}", n.port)));
                    v
                }
                None => vec![],
            },
        };
        let (tx, waker, secret) = (self.tx.clone(), self.waker.clone(), self.boot.secret.clone());
        let fab = self.fabric.initiator();
        let _ = std::thread::Builder::new().name("dragon-connect".into()).spawn(move || {
            let mut last = format!("no address known for node {node}");
            let mut res = Err(String::new());
            for a in &addrs {
                match Client::connect(a, &secret, CONNECT_TIMEOUT) {
                    Ok(c) => {
                        res = fab.initiate(node, c);
                        if let Err(why) = &res {
                            last.clone_from(why);
                        }
                        break;
                    }
                    Err(e) => last = format!("cannot connect to {a}: {e}"),
                }
            }
            if res.is_err() {
                res = Err(last);
            }
            if tx.send(Event::Connected(node, res)).is_ok() {
                let _ = waker.wake();
            }
        });
    }

    fn connected(&mut self, node: u32, r: Result<(std::net::TcpStream, BytesMut), String>) {
        let queued = self.queued.remove(&node).unwrap_or_default();
        let client = match r {
            Ok(c) => c,
            Err(why) => {
                if node == 0 && self.table.is_none() {
                    let msg = format!("cannot join the primary node {}: {why}", self.host_of(0));
                    self.out.emit(out::ERROR, msg.as_bytes());
                    self.stop = Some(msg);
                    return;
                }
                self.node_lost(node, &why);
                return;
            }
        };
        let (stream, rbuf) = client;
        if stream.set_nonblocking(true).is_err() {
            return self.node_lost(node, "cannot use the connection");
        }
        let link = Link::with_buffer(Box::new(TcpStream::from_std(stream)), rbuf);
        let role = Role::Peer(PeerState {
            authed: true,
            nonce: [0; 32],
            node: Some(node),
            served: Served::new(self.me, self.boot.host()),
        });
        let Some(t) = self.add_conn(link, role) else { return self.node_lost(node, "cannot register the connection") };
        self.links.insert(node, t);
        self.fabric.adopt(node, t, &self.host_of(node));
        if node == 0 && self.table.is_none() {
            let mut info = Vec::new();
            self.local_info().encode(&mut info);
            self.send_on(t, proto::JOIN, 0, info.into());
        } else {
            self.send_on(t, proto::PEER, 0, Bytes::copy_from_slice(&self.me.to_le_bytes()));
        }
        for (k, id, p) in queued {
            self.send_on(t, k, id, p);
        }
        self.read(t); // frames that came with the handshake
        self.flush(t);
    }

    /// Close a connection that has not authenticated, telling it why.
    fn refuse(&mut self, t: Token, why: &str) {
        if let Some(c) = self.conns.get_mut(&t) {
            c.link.send(auth::REJECT, 0, why.as_bytes(), Bytes::new());
            let _ = c.link.flush();
        }
        self.drop_conn(t, why);
    }

    fn drop_conn(&mut self, t: Token, why: &str) {
        self.gate.gone(t);
        self.fabric.gone(t);
        let Some(mut c) = self.conns.remove(&t) else { return };
        let _ = self.poll.registry().deregister(c.link.stream());
        match c.role {
            Role::Peer(p) => {
                if let Some(node) = p.node {
                    if self.links.get(&node) == Some(&t) {
                        self.links.remove(&node);
                        self.node_lost(node, why);
                    }
                }
            }
            Role::Local(l) => self.local_gone(t, l),
            // Its attachments go with its `Served`; what it held here is
            // released (its connection ends when the process does).
            Role::Direct(d) => {
                if d.synced {
                    // Its waits end first, then what it held is released.
                    self.sync.conn_gone(d.node, direct_conn_id(t));
                    let gone = SyncRequest::encode(syncserve::OWNER_GONE, d.pid, 0, 0, 0, &[], None);
                    let noop: Post = Arc::new(|_| {});
                    self.sync.handle(d.node, 0, &gone, &noop);
                }
            }
        }
    }

    /// A process of this node closed its connection: let go of what it held.
    fn local_gone(&mut self, t: Token, l: LocalState) {
        // Locks it holds on any node are released there.
        let gone = Bytes::from(SyncRequest::encode(syncserve::OWNER_GONE, l.pid, 0, 0, 0, &[], None));
        for node in l.sync_nodes.iter().copied() {
            if node == self.me {
                let me = self.me;
                let noop: Post = Arc::new(|_| {});
                self.sync.handle(me, 0, &gone, &noop);
            } else {
                self.fire(node, proto::SYNC, 0, gone.clone());
            }
        }
        for rid in l.waiting {
            if let Some(p) = self.pending.get_mut(&rid) {
                p.from = None;
                let node = p.node;
                self.send_to_node(node, proto::CANCEL, rid, Bytes::new());
            }
        }
        for (node, att) in l.atts {
            self.fire(node, chp::DETACH, att, Bytes::copy_from_slice(&att.to_le_bytes()));
        }
        for (node, launch) in l.launches {
            if node == self.me {
                self.here.remove(&launch);
            } else {
                self.fire(node, proto::RELEASE, launch, Bytes::copy_from_slice(&launch.to_le_bytes()));
            }
            self.exits.remove(&(node, launch));
        }
        match l.watching {
            Some(Watching::Exit(key)) => {
                if let Some(v) = self.watchers.get_mut(&key) {
                    v.retain(|x| *x != t);
                }
            }
            Some(Watching::Parent(key)) => {
                if let Some(x) = self.lifelines.get_mut(&key) {
                    x.watchers.retain(|w| *w != t);
                }
            }
            None => {}
        }
    }

    /// Send a request nobody waits for.
    fn fire(&mut self, node: u32, kind: u8, target: u64, payload: Bytes) {
        let rid = self.next_req;
        self.next_req += 1;
        self.pending.insert(rid, Pending { from: None, kind, node, target, tethers: Vec::new() });
        self.send_to_node(node, kind, rid, payload);
    }

    fn node_lost(&mut self, node: u32, why: &str) {
        if self.lost.contains_key(&node) || self.stop.is_some() {
            return;
        }
        let msg = format!("node {node} ({}) is lost: {why}", self.host_of(node));
        self.lost.insert(node, msg.clone());
        self.queued.remove(&node);
        if self.table.is_some() {
            let mut p = node.to_le_bytes().to_vec();
            p.extend_from_slice(msg.as_bytes());
            self.out.emit(out::LOST, &p);
        }
        if node == 0 && self.me != 0 {
            self.stop = Some(msg);
            return;
        }
        // What its processes held here is released.
        self.sync.node_gone(node);
        for t in self.conns_where(|r| matches!(r, Role::Direct(d) if d.node == node)) {
            self.drop_conn(t, why);
        }
        // Its tethers end: its processes are gone.
        let ends: Vec<Token> = self.tethers.iter().filter(|(_, x)| x.peer == node).map(|(t, _)| *t).collect();
        for t in ends {
            self.close_tether(t, false, false);
        }
        let ends: Vec<(u32, u64)> = self.lifelines.iter().filter(|(_, x)| x.peer == node).map(|(k, _)| *k).collect();
        for key in ends {
            self.end_lifeline(key, false);
        }
        // Every request waiting on it fails.
        let failed: Vec<u64> = self.pending.iter().filter(|(_, p)| p.node == node).map(|(id, _)| *id).collect();
        for rid in failed {
            let p = self.pending.remove(&rid).expect("listed");
            if let Some((t, id)) = p.from {
                self.reply_local(t, Reply::error(id, DRAGON_EIO, &msg), rid);
            }
        }
        // Its processes are gone for those who watch them.
        let ended: Vec<(u32, u64)> = self
            .conns
            .values()
            .filter_map(|c| match &c.role {
                Role::Local(l) => Some(l.launches.iter().filter(|(n, _)| *n == node).copied().collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        for key in ended {
            self.exit_known(key, proto::LOST_EXIT);
        }
    }

    fn read(&mut self, t: Token) {
        let mut frames = Vec::new();
        let r = match self.conns.get_mut(&t) {
            Some(c) => c.link.read(&mut frames),
            None => return,
        };
        for f in frames {
            self.frame(t, f);
        }
        if let Err(e) = r {
            let why = match e {
                LinkError::Closed => "its service closed the connection".to_owned(),
                e => e.to_string(),
            };
            self.drop_conn(t, &why);
        }
    }

    fn flush(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        match c.link.flush() {
            Ok(true) if c.closing => self.drop_conn(t, "closed"),
            Ok(_) => {}
            Err(e) => self.drop_conn(t, &e.to_string()),
        }
    }

    /// Send a reply on connection `t` (a received block's bytes in place).
    fn send_reply(&mut self, t: Token, r: Reply) {
        self.send_parts(t, r.kind, r.id, r.payload, r.tail);
    }

    /// Send a frame whose payload is `head` then `tail` on connection `t`:
    /// `tail` (a block's bytes) is never copied here, and over RDMA the
    /// peer reads it from the block.
    fn send_parts(&mut self, t: Token, kind: u8, id: u64, head: Bytes, tail: Bytes) {
        if tail.is_empty() {
            return self.send_on(t, kind, id, head);
        }
        if let Some(sent) = self.fabric.send_parts(t, kind, id, &head, &tail) {
            return sent.unwrap_or_else(|why| self.drop_conn(t, &why));
        }
        if let Some(c) = self.conns.get_mut(&t) {
            c.link.send(kind, id, &head, tail);
            self.flush(t);
        }
    }

    /// [`Service::send_to_node`] of a payload made of `head` then `tail`.
    fn send_to_node_parts(&mut self, node: u32, kind: u8, id: u64, head: Bytes, tail: Bytes) {
        match self.links.get(&node) {
            Some(&t) if !tail.is_empty() && !self.lost.contains_key(&node) => self.send_parts(t, kind, id, head, tail),
            _ if tail.is_empty() => self.send_to_node(node, kind, id, head),
            // Not linked yet (queued until it is) or lost: as one payload.
            _ => self.send_to_node(node, kind, id, [head, tail].concat().into()),
        }
    }

    /// A BLOCK_TAIL request: the request it carries (kind, payload up to
    /// the block message) and the block's bytes.
    fn untail(&mut self, f: &Frame) -> Result<(u8, Bytes, Bytes), String> {
        let p = &f.payload;
        let (Some(&kind), Some(len)) = (p.first(), p.get(1..5)) else { return Err("short request".into()) };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if kind == proto::BLOCK_TAIL || p.len() < 5 + len {
            return Err("malformed request with a block".into());
        }
        let end = p.len() - len;
        match self.stores.view(&p[end..])? {
            Some((None, view)) => Ok((kind, p.slice(5..end), Bytes::from_owner(view))),
            Some((Some(_), _)) => Err("a request's block must be untagged (kind 0x80)".into()),
            None => Err("a request with a block that is not a block message".into()),
        }
    }

    /// A SEND_BLOCK request's payload (`attachment, timeout, block
    /// message`) as the SEND it stands for: its head, and the block's bytes
    /// (the tag byte first, in the head), which hold the block until sent.
    /// `None`: the message names no block (sent as it is).
    fn block_of(&mut self, payload: &Bytes) -> Result<Option<(Bytes, Bytes)>, String> {
        let Some(msg) = payload.get(16..) else { return Err("short request".into()) };
        let Some((tag, view)) = self.stores.view(msg)? else { return Ok(None) };
        let mut head = payload[..16].to_vec();
        head.extend(tag);
        Ok(Some((head.into(), Bytes::from_owner(view))))
    }

    fn send_on(&mut self, t: Token, kind: u8, id: u64, payload: Bytes) {
        if let Some(sent) = self.fabric.send(t, kind, id, &payload) {
            return sent.unwrap_or_else(|why| self.drop_conn(t, &why));
        }
        if let Some(c) = self.conns.get_mut(&t) {
            c.link.send(kind, id, &[], payload);
            self.flush(t);
        }
    }

    /// Send a request to `node` (on its link, or queued while it is made).
    fn send_to_node(&mut self, node: u32, kind: u8, id: u64, payload: Bytes) {
        if let Some(why) = self.lost.get(&node).cloned() {
            if let Some(p) = self.pending.remove(&id) {
                if let Some((t, cid)) = p.from {
                    self.reply_local(t, Reply::error(cid, DRAGON_EIO, &why), id);
                }
            }
            return;
        }
        if let Some(&t) = self.links.get(&node) {
            return self.send_on(t, kind, id, payload);
        }
        if node as usize >= self.boot.hosts.len() {
            if let Some(p) = self.pending.remove(&id) {
                if let Some((t, cid)) = p.from {
                    let msg = format!("there is no node {node} in this run ({} nodes)", self.boot.hosts.len());
                    self.reply_local(t, Reply::error(cid, DRAGON_EINVAL, &msg), id);
                }
            }
            return;
        }
        if !self.queued.contains_key(&node) {
            self.connect(node, None);
        }
        self.queued.entry(node).or_default().push((kind, id, payload));
    }

    // ---- frames ---------------------------------------------------------------

    /// Processes of other nodes connected straight here.
    fn directs(&self) -> usize {
        self.conns.values().filter(|c| matches!(c.role, Role::Direct(_))).count()
    }

    fn frame(&mut self, t: Token, f: Frame) {
        let full = f.kind == auth::PROOF_PROCESS && self.directs() >= self.direct_max;
        let Some(c) = self.conns.get_mut(&t) else { return };
        if c.closing {
            return;
        }
        match &mut c.role {
            Role::Peer(p) if !p.authed && f.kind == auth::PROOF_PROCESS => {
                let from = self.boot.secret.accept_process(&p.nonce, &f.payload);
                match from {
                    Some(_) if full => {
                        let why = format!(
                            "this node's service holds as many direct connections as it may ({}): reach it \
                             through your node's service",
                            self.direct_max
                        );
                        c.link.send(auth::REJECT, 0, why.as_bytes(), Bytes::new());
                        c.closing = true;
                    }
                    Some((node, pid, acc)) if node != self.me && (node as usize) < self.boot.hosts.len() => {
                        self.gate.gone(t);
                        c.link.max_frame = transport_tcp::frame::MAX_FRAME;
                        c.link.send(auth::ACCEPT, 0, &acc, Bytes::new());
                        let served = Served::new(self.me, self.boot.host());
                        c.role = Role::Direct(DirectState { node, pid, served, synced: false });
                    }
                    _ => {
                        let why = b"authentication failed: not vouched for by a node of this run";
                        c.link.send(auth::REJECT, 0, why, Bytes::new());
                        c.closing = true;
                    }
                }
            }
            Role::Peer(p) if !p.authed => {
                let secret = self.boot.secret.clone();
                match (f.kind == auth::PROOF).then(|| secret.accept(&p.nonce, &f.payload)).flatten() {
                    Some(acc) => {
                        p.authed = true;
                        self.gate.gone(t);
                        c.link.max_frame = transport_tcp::frame::MAX_FRAME;
                        c.link.send(auth::ACCEPT, 0, &acc, Bytes::new());
                    }
                    None => {
                        let why = b"authentication failed: not this run's secret";
                        c.link.send(auth::REJECT, 0, why, Bytes::new());
                        c.closing = true;
                    }
                }
            }
            Role::Peer(_) => self.peer_frame(t, f),
            Role::Local(_) => self.local_frame(t, f),
            Role::Direct(_) => self.direct_frame(t, f),
        }
    }

    fn peer_node(&self, t: Token) -> Option<u32> {
        match self.conns.get(&t).map(|c| &c.role) {
            Some(Role::Peer(p)) => p.node,
            _ => None,
        }
    }

    fn peer_frame(&mut self, t: Token, f: Frame) {
        match f.kind {
            chp::HEARTBEAT => {}
            proto::FABRIC => {
                if let (Some(r), Some(c)) = (self.fabric.on_frame(t, &f.payload), self.conns.get_mut(&t)) {
                    c.link.send(proto::FABRIC, 0, &[], r);
                    self.flush(t);
                }
            }
            proto::JOIN => self.join(t, &f.payload),
            proto::TABLE => self.got_table(&f.payload),
            proto::PEER => {
                let Some((n, _)) = u32_at(&f.payload) else { return self.drop_conn(t, "malformed PEER") };
                if let Some(Conn { role: Role::Peer(p), .. }) = self.conns.get_mut(&t) {
                    p.node = Some(n);
                }
                self.links.entry(n).or_insert(t);
            }
            chp::OK | chp::ERROR => self.relayed_reply(f),
            proto::EXITED => {
                let (Some(node), Some(launch), Some(code)) =
                    (self.peer_node(t), u64_at(&f.payload), f.payload.get(8..16).and_then(u64_at))
                else {
                    return;
                };
                if let Some((pid, _)) = f.payload.get(16..).and_then(u32_at) {
                    self.direct_waits_end(node, pid);
                }
                self.exit_known((node, launch), code as i64);
            }
            proto::TETHER => {
                let (Some((origin, rest)), Some(node)) = (u32_at(&f.payload), self.peer_node(t)) else { return };
                let Some(id) = u64_at(rest) else { return };
                let broken = rest.get(8) == Some(&1);
                if self.lifelines.get(&(origin, id)).is_some_and(|x| x.peer == node) {
                    return self.end_lifeline((origin, id), false);
                }
                match self.tether_tokens.get(&(origin, id)).copied() {
                    Some(tt) if self.tethers.get(&tt).is_some_and(|x| x.peer == node) => {
                        self.close_tether(tt, false, broken)
                    }
                    Some(_) => {}
                    // Closed before its start request got here: close it when made.
                    None if origin == node && self.closed_early.len() < 1 << 16 => {
                        self.closed_early.insert((origin, id));
                    }
                    None => {}
                }
            }
            proto::CANCEL => {
                if let Some(Conn { role: Role::Peer(p), .. }) = self.conns.get(&t) {
                    p.served.cancel(f.id);
                }
                if let Some(node) = self.peer_node(t) {
                    self.sync.cancel(node, f.id);
                }
            }
            proto::SYNC => {
                let Some(node) = self.peer_node(t) else { return };
                let post = self.poster(t);
                if let Some(r) = self.sync.handle(node, f.id, &f.payload, &post) {
                    self.send_reply(t, r);
                }
            }
            proto::PROCS => {
                if self.peer_node(t).is_none() {
                    return;
                }
                let status = crate::cleanup::status_json(&self.boot.run);
                self.send_on(t, chp::OK, f.id, status.into_bytes().into());
            }
            proto::DDICT => {
                if self.peer_node(t).is_none() {
                    return;
                }
                let post = self.poster(t);
                if let Some(r) = self.ddicts.handle(f.id, f.payload.clone(), &post) {
                    self.send_reply(t, r);
                }
            }
            proto::LAUNCH | proto::SIGNAL | proto::RELEASE => {
                let Some(node) = self.peer_node(t) else { return };
                // The tethers of a start from another node: one end of a
                // socket pair each for the child, the other kept here; the
                // lifeline is kept here alone, until the child asks for it.
                let mut extra = Vec::new();
                let mut lifeline = None;
                if f.kind == proto::LAUNCH {
                    let (tethers, first) =
                        proto::Launch::parse(&f.payload).map(|l| (l.tethers, l.lifeline)).unwrap_or_default();
                    for (i, id) in tethers.into_iter().enumerate() {
                        if i == 0 && first {
                            lifeline = Some((node, id));
                            // Closed before the start came (the parent has
                            // ended): there is nothing to watch, and
                            // PARENT finds nothing.
                            if !self.closed_early.remove(&(node, id)) {
                                let x = Lifeline { peer: node, started: None, watchers: Vec::new() };
                                self.lifelines.insert((node, id), x);
                            }
                            continue;
                        }
                        match crate::sys::socketpair() {
                            Ok((x, y)) => {
                                extra.push(x);
                                self.add_tether(y, node, (node, id));
                            }
                            Err(e) => {
                                if let Some(key) = lifeline {
                                    self.lifelines.remove(&key);
                                    self.answer_parent_asks();
                                }
                                let r = Reply::error(f.id, DRAGON_EIO, &format!("cannot make a socket pair: {e}"));
                                return self.send_reply(t, r);
                            }
                        }
                    }
                }
                let from = Requester::Node(node);
                if let Some(r) = self.process_request(from, f.kind, f.id, &f.payload, extra, lifeline) {
                    self.send_reply(t, r);
                }
            }
            k if Served::serves(k) => {
                let post = self.poster(t);
                let Some(Conn { role: Role::Peer(p), .. }) = self.conns.get_mut(&t) else { return };
                if let Some(r) = p.served.handle(&self.shm, k, f.id, f.payload, &post) {
                    self.send_reply(t, r);
                }
            }
            k => {
                let r = Reply::error(f.id, DRAGON_EPROTO, &format!("unknown request kind {k}"));
                self.send_reply(t, r);
            }
        }
    }

    fn poster(&self, t: Token) -> Post {
        if let Some(Conn { role: Role::Direct(_), link, .. }) = self.conns.get(&t) {
            // A process of another node: the waiting thread writes the
            // reply to its connection itself (no wake-up of this loop on
            // the way; nothing here keeps track of those replies).
            let w = link.writer();
            return Arc::new(move |r: Reply| {
                if r.tail.is_empty() {
                    w.send(r.kind, r.id, &[], r.payload);
                } else {
                    w.send(r.kind, r.id, &r.payload, r.tail);
                }
            });
        }
        let (tx, waker) = (self.tx.clone(), self.waker.clone());
        Arc::new(move |r: Reply| {
            if tx.send(Event::Reply(t, r)).is_ok() {
                let _ = waker.wake();
            }
        })
    }

    fn reply_to(&mut self, t: Token, r: Reply) {
        match self.conns.get(&t).map(|c| &c.role) {
            Some(Role::Local(_)) => self.reply_local(t, r, 0),
            Some(Role::Peer(_) | Role::Direct(_)) => self.send_reply(t, r),
            None => {}
        }
    }

    /// A reply to a local connection; `rid` is our relay id it answers (0: none).
    fn reply_local(&mut self, t: Token, r: Reply, rid: u64) {
        if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) {
            l.waiting.remove(&rid);
        }
        self.send_reply(t, r);
    }

    fn relayed_reply(&mut self, f: Frame) {
        let Some(p) = self.pending.remove(&f.id) else { return };
        let ok = f.kind == chp::OK;
        if !ok {
            for id in &p.tethers {
                if let Some(tt) = self.tether_tokens.get(&(self.me, *id)).copied() {
                    self.close_tether(tt, false, false);
                }
            }
        }
        let Some((t, cid)) = p.from else { return };
        if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) {
            if ok {
                match p.kind {
                    chp::ATTACH | chp::CREATE => {
                        if let Some(att) = u64_at(&f.payload) {
                            l.atts.insert((p.node, att));
                        }
                    }
                    chp::DETACH => {
                        l.atts.remove(&(p.node, p.target));
                    }
                    proto::LAUNCH => {
                        if let Some(launch) = f.payload.get(8..16).and_then(u64_at) {
                            l.launches.insert((p.node, launch));
                        }
                    }
                    proto::RELEASE => {
                        l.launches.remove(&(p.node, p.target));
                    }
                    _ => {}
                }
            }
        }
        self.reply_local(t, Reply { kind: f.kind, id: cid, payload: f.payload, tail: Bytes::new() }, f.id);
    }

    fn local_frame(&mut self, t: Token, f: Frame) {
        // A request with a block's bytes for its end: the request itself,
        // and the block's bytes to send after it (copied in only when the
        // request is handled here).
        let (f, mut tail) = match f.kind {
            proto::BLOCK_TAIL => match self.untail(&f) {
                Ok((kind, payload, tail)) => (Frame { kind, id: f.id, payload }, tail),
                Err(why) => return self.send_reply(t, Reply::error(f.id, DRAGON_EBADMSG, &why)),
            },
            _ => (f, Bytes::new()),
        };
        let relayed = f.kind == proto::DDICT && u32_at(&f.payload).is_some_and(|(n, _)| n != self.me);
        let f = if tail.is_empty() || relayed {
            f
        } else {
            let payload = [f.payload, std::mem::take(&mut tail)].concat().into();
            Frame { kind: f.kind, id: f.id, payload }
        };
        if f.kind == proto::TRANSPORTS {
            return self.send_on(t, chp::OK, f.id, self.fabric.report().into());
        }
        if f.kind == proto::NODES {
            let r = match &self.table {
                Some(nodes) => Reply::ok(f.id, table::table_json(nodes).into_bytes()),
                None => Reply::error(f.id, DRAGON_EIO, "the run's nodes have not all joined yet"),
            };
            return self.send_reply(t, r);
        }
        let Some((node, _)) = u32_at(&f.payload) else {
            let r = Reply::error(f.id, DRAGON_EPROTO, "short request");
            return self.send_reply(t, r);
        };
        let mut payload = f.payload.slice(4..);
        if f.kind == proto::PROCS && node == self.me {
            let status = crate::cleanup::status_json(&self.boot.run);
            return self.send_on(t, chp::OK, f.id, status.into_bytes().into());
        }
        if f.kind == proto::CANCEL {
            // The process stopped waiting for its request `f.id`.
            if node == self.me {
                let me = self.me;
                self.sync.cancel(me, f.id);
                if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get(&t) {
                    l.served.cancel(f.id);
                }
                return;
            }
            let found = match self.conns.get(&t) {
                Some(Conn { role: Role::Local(l), .. }) => l
                    .waiting
                    .iter()
                    .copied()
                    .find(|rid| self.pending.get(rid).is_some_and(|p| p.from == Some((t, f.id)))),
                _ => None,
            };
            if let Some(rid) = found {
                if let Some(p) = self.pending.get_mut(&rid) {
                    p.from = None;
                }
                self.send_to_node(node, proto::CANCEL, rid, Bytes::new());
            }
            return;
        }
        if f.kind == proto::WATCH {
            return self.watch(t, node, u64_at(&payload).unwrap_or(0));
        }
        if f.kind == proto::PARENT {
            return self.watch_parent(t, f.id, u32_at(&payload).map_or(0, |(pid, _)| pid));
        }
        if f.kind == chp::ROUTE || f.kind == chp::VOUCH {
            let r = self.direct_help(t, f.kind, f.id, node, &payload);
            return self.send_reply(t, r);
        }
        if f.kind == proto::SYNC {
            // The owner of what it takes elsewhere is the process the
            // kernel says is at the other end of this connection.
            let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) else { return };
            if payload.len() >= syncserve::PID_AT.end {
                let mut p = payload.to_vec();
                p[syncserve::PID_AT].copy_from_slice(&l.pid.to_le_bytes());
                payload = Bytes::from(p);
            }
            l.sync_nodes.insert(node);
            if node == self.me {
                let post = self.poster(t);
                let me = self.me;
                if let Some(r) = self.sync.handle(me, f.id, &payload, &post) {
                    self.send_reply(t, r);
                }
                return;
            }
        }
        if f.kind == proto::DDICT && node == self.me {
            let post = self.poster(t);
            if let Some(r) = self.ddicts.handle(f.id, payload.clone(), &post) {
                self.send_reply(t, r);
            }
            return;
        }
        if node == self.me {
            // A block of this node's store for a channel of this node: the
            // block message goes in the channel as it is.
            let kind = if f.kind == chp::SEND_BLOCK { chp::SEND } else { f.kind };
            return self.local_here(t, kind, f.id, payload);
        }
        if node as usize >= self.boot.hosts.len() {
            let msg = format!("there is no node {node} in this run ({} nodes)", self.boot.hosts.len());
            let r = Reply::error(f.id, DRAGON_EINVAL, &msg);
            return self.send_reply(t, r);
        }
        // For another node: relay it on the link to that node.
        let target = match f.kind {
            chp::DETACH | proto::RELEASE => u64_at(&payload).unwrap_or(0),
            _ => 0,
        };
        // Only what this connection holds may be used through it.
        if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get(&t) {
            let owned = match f.kind {
                chp::SEND | chp::SEND_BLOCK | chp::RECV | chp::POLL | chp::LEN | chp::DETACH | chp::DESTROY => {
                    u64_at(&payload).is_some_and(|a| l.atts.contains(&(node, a)))
                }
                proto::SIGNAL | proto::RELEASE => u64_at(&payload).is_some_and(|a| l.launches.contains(&(node, a))),
                _ => true,
            };
            if !owned {
                let r = Reply::error(f.id, DRAGON_EINVAL, "no such attachment or process on that node");
                return self.send_reply(t, r);
            }
        }
        let mut payload = payload;
        let mut tethers = Vec::new();
        if f.kind == proto::LAUNCH {
            match self.tether_launch(t, node, &payload) {
                Ok((p, ids)) => {
                    payload = p;
                    tethers = ids;
                }
                Err(r) => return self.send_on(t, r.kind, f.id, r.payload),
            }
        }
        // A block of this node's store goes on as its bytes, from the block.
        let mut kind = f.kind;
        if kind == chp::SEND_BLOCK {
            kind = chp::SEND;
            match self.block_of(&payload) {
                Ok(Some((head, body))) => (payload, tail) = (head, body),
                Ok(None) => {}
                Err(why) => return self.send_reply(t, Reply::error(f.id, DRAGON_EBADMSG, &why)),
            }
        }
        let rid = self.next_req;
        self.next_req += 1;
        self.pending.insert(rid, Pending { from: Some((t, f.id)), kind, node, target, tethers });
        if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) {
            l.waiting.insert(rid);
        }
        self.send_to_node_parts(node, kind, rid, payload, tail);
    }

    /// What a process of this node needs to connect straight to node
    /// `node`'s service: where it is (ROUTE), and this service's word for
    /// the process (VOUCH, with the pid the kernel gives for it).
    fn direct_help(&mut self, t: Token, kind: u8, id: u64, node: u32, payload: &[u8]) -> Reply {
        if node == self.me || node as usize >= self.boot.hosts.len() {
            return Reply::error(id, DRAGON_EINVAL, &format!("no other node {node} in this run"));
        }
        if let Some(why) = self.lost.get(&node) {
            return Reply::error(id, DRAGON_EIO, why);
        }
        if kind == chp::ROUTE {
            let Some(n) = self.table.as_ref().and_then(|tb| tb.get(node as usize)) else {
                return Reply::error(id, DRAGON_EIO, "the run's nodes have not all joined yet");
            };
            let mut text = format!("{}\n{}\n", n.host, n.service_address());
            for a in &n.addresses {
                text.push_str(&format!("{a}:{}\n", n.port));
            }
            return Reply::ok(id, text.into_bytes());
        }
        let (Some(agent), Some(client)) = (payload.get(..32), payload.get(32..64)) else {
            return Reply::error(id, DRAGON_EPROTO, "short VOUCH request");
        };
        let Some(Conn { role: Role::Local(l), .. }) = self.conns.get(&t) else {
            return Reply::error(id, DRAGON_EINVAL, "only a process of this node is vouched for");
        };
        let (agent, client) = (agent.try_into().expect("32 bytes"), client.try_into().expect("32 bytes"));
        let (proof, accept) = self.boot.secret.vouch(agent, client, self.me, l.pid);
        Reply::ok(id, [proof, accept].concat())
    }

    /// A request of a process of another node connected straight here:
    /// for this node's channels and DDicts only.
    fn direct_frame(&mut self, t: Token, f: Frame) {
        let payload = match u32_at(&f.payload) {
            Some((node, _)) if node == self.me => f.payload.slice(4..),
            Some(_) if f.kind == chp::CANCEL => f.payload.slice(4..),
            _ if f.kind == chp::HEARTBEAT => return,
            _ => {
                let r = Reply::error(f.id, DRAGON_EINVAL, "a direct connection serves its node's requests only");
                return self.send_reply(t, r);
            }
        };
        let conn = direct_conn_id(t);
        match f.kind {
            chp::CANCEL => {
                if let Some(Conn { role: Role::Direct(d), .. }) = self.conns.get(&t) {
                    d.served.cancel(f.id);
                    self.sync.cancel_on(d.node, conn, f.id);
                }
            }
            proto::SYNC => {
                // The owner of what it takes here is the process its node
                // vouched for.
                let Some(Conn { role: Role::Direct(d), .. }) = self.conns.get_mut(&t) else { return };
                let mut p = payload.to_vec();
                if let Some(at) = p.get_mut(syncserve::PID_AT) {
                    at.copy_from_slice(&d.pid.to_le_bytes());
                }
                d.synced = true;
                let node = d.node;
                let post = self.poster(t);
                if let Some(r) = self.sync.handle_on(node, conn, f.id, &p, &post) {
                    self.send_reply(t, r);
                }
            }
            proto::DDICT => {
                let post = self.poster(t);
                if let Some(r) = self.ddicts.handle(f.id, payload, &post) {
                    self.send_reply(t, r);
                }
            }
            chp::SEND_DEFERRED => {
                // Nobody waits for a success: a small one goes with the
                // next frame (chp::SEND_DEFERRED).
                let post = self.poster(t);
                let small = payload.len() <= 16 + chp::LAZY_MAX_BYTES;
                let Some(Conn { role: Role::Direct(d), link, .. }) = self.conns.get_mut(&t) else { return };
                match d.served.handle(&self.shm, chp::SEND, f.id, payload, &post) {
                    Some(r) if small && r.kind == chp::OK && r.tail.is_empty() => {
                        let queued = link.send_late(r.kind, r.id, &[], r.payload, chp::LAZY_REPLIES);
                        if queued {
                            self.flush(t);
                        }
                    }
                    Some(r) => self.send_reply(t, r),
                    None => {}
                }
            }
            k if Served::serves(k) && k != chp::SEND_BLOCK => {
                let post = self.poster(t);
                let Some(Conn { role: Role::Direct(d), .. }) = self.conns.get_mut(&t) else { return };
                if let Some(r) = d.served.handle(&self.shm, k, f.id, payload, &post) {
                    self.send_reply(t, r);
                }
            }
            k => {
                let r = Reply::error(
                    f.id,
                    DRAGON_EPROTO,
                    &format!("request kind {k} is not served on a direct connection"),
                );
                self.send_reply(t, r);
            }
        }
    }

    /// A local process's request for this node itself.
    fn local_here(&mut self, t: Token, kind: u8, id: u64, payload: Bytes) {
        if matches!(kind, proto::LAUNCH | proto::SIGNAL | proto::RELEASE) {
            if kind == proto::RELEASE {
                if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) {
                    l.launches.remove(&(self.me, u64_at(&payload).unwrap_or(0)));
                }
            }
            // A start on this very node: the descriptors the process sent
            // go to the child as they are.
            let extra = match kind {
                proto::LAUNCH => match self.take_fds(t, &payload) {
                    Ok(fds) => fds,
                    Err(r) => return self.send_on(t, r.kind, id, r.payload),
                },
                _ => Vec::new(),
            };
            if kind == proto::LAUNCH && proto::Launch::parse(&payload).is_some_and(|l| l.lifeline) {
                // A process started here for a process of this node has
                // its parent's pidfd from its template: no lifeline.
                let r = Reply::error(id, DRAGON_EINVAL, "a lifeline is for a start on another node");
                return self.send_reply(t, r);
            }
            if let Some(r) = self.process_request(Requester::Local(t), kind, id, &payload, extra, None) {
                self.send_reply(t, r);
            }
            return;
        }
        if !Served::serves(kind) {
            let r = Reply::error(id, DRAGON_EPROTO, &format!("unknown request kind {kind}"));
            return self.send_reply(t, r);
        }
        let post = self.poster(t);
        let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) else { return };
        if let Some(r) = l.served.handle(&self.shm, kind, id, payload, &post) {
            self.send_reply(t, r);
        }
    }

    // ---- tethers -------------------------------------------------------------

    /// The descriptors a start request of connection `t` says it carries.
    fn take_fds(&mut self, t: Token, payload: &[u8]) -> Result<Vec<OwnedFd>, Reply> {
        let Some(l) = proto::Launch::parse(payload) else {
            return Err(Reply::error(0, DRAGON_EBADMSG, "malformed start request"));
        };
        let Some(Conn { role: Role::Local(loc), .. }) = self.conns.get(&t) else { return Ok(Vec::new()) };
        let mut q = loc.fds.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < l.tethers.len() {
            let msg = format!("the start request names {} descriptors but {} came with it", l.tethers.len(), q.len());
            return Err(Reply::error(0, DRAGON_EBADMSG, &msg));
        }
        Ok(q.drain(..l.tethers.len()).collect())
    }

    /// A process's start request for node `node`: keep the descriptors it
    /// sent as tethers, and write their ids into the request.
    fn tether_launch(&mut self, t: Token, node: u32, payload: &Bytes) -> Result<(Bytes, Vec<u64>), Reply> {
        let fds = self.take_fds(t, payload)?;
        if fds.is_empty() {
            return Ok((payload.clone(), Vec::new()));
        }
        let mut l = proto::Launch::parse(payload).expect("parsed by take_fds");
        let mut ids = Vec::new();
        for fd in fds {
            let id = self.next_tether;
            self.next_tether += 1;
            self.add_tether(fd, node, (self.me, id));
            ids.push(id);
        }
        l.tethers = ids.clone();
        Ok((Bytes::from(l.encode()), ids))
    }

    fn add_tether(&mut self, fd: OwnedFd, peer: u32, key: (u32, u64)) {
        if self.closed_early.remove(&key) {
            return; // dropped: the child sees end of file at once
        }
        let t = Token(self.next_token);
        self.next_token += 1;
        let raw = fd.as_raw_fd();
        if self.poll.registry().register(&mut mio::unix::SourceFd(&raw), t, Interest::READABLE).is_err() {
            return; // dropped: its end of file is what the other side sees
        }
        self.tether_tokens.insert(key, t);
        self.tethers.insert(t, Tether { fd, peer, key });
        // It may have ended already (edge-triggered: no event for that).
        self.tether_event(t);
    }

    fn tether_event(&mut self, t: Token) {
        let Some(x) = self.tethers.get(&t) else { return };
        match crate::sys::drain_or_eof(x.fd.as_raw_fd()) {
            Some(true) => self.close_tether(t, true, false),
            // Bytes written to a lifetime socket: a process used a Pipe
            // end's fileno() itself (reduction.send_handle, os.write), and
            // its peer is on another node, where neither the bytes nor the
            // descriptors that came with them can go. The tether breaks on
            // both sides, so that the reader there, and here, sees end of
            // file instead of waiting forever for what was dropped.
            Some(false) => {
                let msg = format!(
                    "node {}: bytes or descriptors were written to the socket of a Pipe end (its fileno(), e.g. \
                     multiprocessing.reduction.send_handle) whose other end is on node {}: they cannot cross \
                     nodes; the connection is closed on both nodes",
                    self.me, x.peer
                );
                self.out.emit(out::LOG, msg.as_bytes());
                self.close_tether(t, true, true);
            }
            None => {}
        }
    }

    /// Close a tether's end here; with `tell`, tell the other node to close
    /// its own. A `broken` tether is shut down, not only closed: every
    /// holder of that socket (of the other end's too) sees end of file.
    fn close_tether(&mut self, t: Token, tell: bool, broken: bool) {
        let Some(x) = self.tethers.remove(&t) else { return };
        self.tether_tokens.remove(&x.key);
        let raw = x.fd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut mio::unix::SourceFd(&raw));
        if tell {
            let mut p = BytesMut::new();
            p.put_u32_le(x.key.0);
            p.put_u64_le(x.key.1);
            if broken {
                p.put_u8(1);
            }
            self.notice_node(x.peer, proto::TETHER, p.freeze());
        }
        if broken {
            let _ = std::os::unix::net::UnixStream::from(x.fd).shutdown(std::net::Shutdown::Both);
        }
    }

    // ---- lifelines ---------------------------------------------------------------

    /// The process of lifeline `key` started: it is process `pid`.
    fn lifeline_started(&mut self, key: (u32, u64), pid: u32, launch: u64) {
        // A lifeline still naming this pid is of a process that has ended
        // (its exit not yet read): the pid is another process's now.
        let stale: Vec<(u32, u64)> = self
            .lifelines
            .iter()
            .filter(|(k, x)| **k != key && x.started.is_some_and(|(p, _)| p == pid))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.end_lifeline(k, true);
        }
        if let Some(x) = self.lifelines.get_mut(&key) {
            x.started = Some((pid, launch));
        }
        self.answer_parent_asks();
    }

    /// The lifeline of the started process `pid`, if any.
    fn lifeline_of(&self, pid: u32) -> Option<(u32, u64)> {
        self.lifelines.iter().find(|(_, x)| x.started.is_some_and(|(p, _)| p == pid)).map(|(k, _)| *k)
    }

    /// A PARENT request of connection `t`: it stays open while the
    /// lifeline of process `pid`'s parent does. The asker may be a process
    /// whose start is not known here yet (it ran before its start's event
    /// came): then it is answered when it is.
    fn watch_parent(&mut self, t: Token, id: u64, pid: u32) {
        self.parent_asks.push((t, id, pid));
        self.answer_parent_asks();
    }

    /// Answer the PARENT requests waiting for starts: those whose process
    /// is known, and all of them once no start is under way.
    fn answer_parent_asks(&mut self) {
        if self.parent_asks.is_empty() {
            return;
        }
        let starting = self.lifelines.values().any(|x| x.started.is_none());
        for (t, id, pid) in std::mem::take(&mut self.parent_asks) {
            let key = self.lifeline_of(pid);
            if key.is_some() || !starting {
                self.answer_parent(t, id, key);
            } else if self.conns.contains_key(&t) {
                self.parent_asks.push((t, id, pid));
            }
        }
    }

    /// Answer PARENT request `id` of connection `t`: watch lifeline `key`,
    /// or (none) end of file at once.
    fn answer_parent(&mut self, t: Token, id: u64, key: Option<(u32, u64)>) {
        let Some(Conn { role: Role::Local(l), link, closing }) = self.conns.get_mut(&t) else { return };
        link.send(chp::OK, id, &[], Bytes::new());
        match key.and_then(|k| self.lifelines.get_mut(&k).map(|x| (k, x))) {
            Some((k, x)) => {
                l.watching = Some(Watching::Parent(k));
                x.watchers.push(t);
            }
            // No parent to watch (ended, or none): end of file at once.
            None => *closing = true,
        }
        self.flush(t);
    }

    /// Lifeline `key` ends here: its PARENT connections close; with `tell`
    /// (its process exited) the parent's node is told, as for a tether.
    fn end_lifeline(&mut self, key: (u32, u64), tell: bool) {
        let Some(x) = self.lifelines.remove(&key) else { return };
        for t in x.watchers {
            self.drop_conn(t, "the process's parent ended");
        }
        self.answer_parent_asks();
        if tell {
            let mut p = BytesMut::new();
            p.put_u32_le(key.0);
            p.put_u64_le(key.1);
            self.notice_node(x.peer, proto::TETHER, p.freeze());
        }
    }

    // ---- membership ---------------------------------------------------------

    fn join(&mut self, t: Token, payload: &[u8]) {
        if self.me != 0 {
            return self.drop_conn(t, "JOIN sent to a node that is not the primary");
        }
        let info = match NodeInfo::decode(payload) {
            Ok(i) => i,
            Err(e) => return self.drop_conn(t, &e.to_string()),
        };
        let i = info.index;
        if i == 0 || i as usize >= self.boot.hosts.len() || self.joined.contains_key(&i) || self.table.is_some() {
            return self.drop_conn(t, &format!("node {i} cannot join (unknown, joined twice, or too late)"));
        }
        if let Some(Conn { role: Role::Peer(p), .. }) = self.conns.get_mut(&t) {
            p.node = Some(i);
        }
        self.links.insert(i, t);
        self.joined.insert(i, info);
        self.maybe_ready();
    }

    fn maybe_ready(&mut self) {
        if self.joined.len() < self.boot.hosts.len() {
            return;
        }
        let mut nodes: Vec<NodeInfo> = self.joined.drain().map(|(_, n)| n).collect();
        nodes.sort_by_key(|n| n.index);
        let bytes = Bytes::from(table::encode_table(&nodes));
        let peers: Vec<Token> = self.links.values().copied().collect();
        for t in peers {
            self.send_on(t, proto::TABLE, 0, bytes.clone());
        }
        self.out.emit(out::READY, table::table_json(&nodes).as_bytes());
        self.table = Some(nodes);
    }

    fn got_table(&mut self, payload: &[u8]) {
        match table::decode_table(payload) {
            Ok(nodes) if nodes.len() == self.boot.hosts.len() => {
                self.out.emit(out::READY, table::table_json(&nodes).as_bytes());
                self.table = Some(nodes);
            }
            _ => {
                let msg = "the primary sent a node table that does not match this run".to_owned();
                self.out.emit(out::ERROR, msg.as_bytes());
                self.stop = Some(msg);
            }
        }
    }

    // ---- processes ----------------------------------------------------------

    /// LAUNCH, SIGNAL or RELEASE for a process on this node.
    fn process_request(
        &mut self,
        from: Requester,
        kind: u8,
        id: u64,
        p: &[u8],
        extra: Vec<OwnedFd>,
        lifeline: Option<(u32, u64)>,
    ) -> Option<Reply> {
        match kind {
            proto::LAUNCH => {
                let Some(l) = proto::Launch::parse(p) else {
                    return Some(Reply::error(id, DRAGON_EBADMSG, "malformed start request"));
                };
                let (prep, data) = (l.prep.to_vec(), l.data.to_vec());
                let job = StartJob { from, id, lifeline, prep, flags: l.flags, data, extra };
                if self.starter.is_none() {
                    self.starter = self.start_starter();
                }
                if let Some((jobs, _)) = &self.starter {
                    let _ = jobs.send(job);
                }
                None
            }
            proto::SIGNAL => {
                let (Some(launch), Some(sig)) = (u64_at(p), p.get(8..12)) else {
                    return Some(Reply::error(id, DRAGON_EBADMSG, "malformed signal request"));
                };
                let sig = i32::from_le_bytes(sig.try_into().expect("4 bytes"));
                Some(match self.here.get(&launch) {
                    Some(h) if h.from == from => match crate::sys::kill(h.pid, sig) {
                        Ok(()) => Reply::ok(id, Bytes::new()),
                        Err(e) => Reply::error(id, DRAGON_EINVAL, &format!("cannot signal process {}: {e}", h.pid)),
                    },
                    _ => Reply::error(id, DRAGON_EINVAL, "no such process"),
                })
            }
            _ => {
                let launch = u64_at(p).unwrap_or(0);
                if self.here.get(&launch).is_some_and(|h| h.from == from) {
                    self.here.remove(&launch);
                }
                Some(Reply::ok(id, Bytes::new()))
            }
        }
    }

    /// The thread that starts processes through the template (the template
    /// is started on the first request, with that request's preparation
    /// data, and stopped when the thread ends at teardown).
    fn start_starter(&mut self) -> Option<(Sender<StartJob>, std::thread::JoinHandle<()>)> {
        let (jtx, jrx) = unbounded::<StartJob>();
        let (tx, waker) = (self.tx.clone(), self.waker.clone());
        let name = template_name(&self.boot.run, self.me);
        let python = self.opts.python.clone();
        let env: Vec<(String, String)> = std::env::vars()
            .chain([
                (transport_shm::segment::RUN_ENV.to_owned(), self.boot.run.clone()),
                (transport_shm::segment::NODE_ENV.to_owned(), self.me.to_string()),
                ("DRAGON_TEMPLATE".to_owned(), name.clone()),
                ("DRAGON_SERVICE".to_owned(), service_name(&self.boot.run, self.me)),
            ])
            .collect();
        let h = std::thread::Builder::new().name("dragon-starter".into()).spawn(move || {
            let mut template: Option<Result<Template, String>> = None;
            for job in jrx {
                let t = template.get_or_insert_with(|| {
                    let spec = TemplateSpec {
                        python: python.clone(),
                        flags: job.flags.clone(),
                        prep: job.prep.clone(),
                        name: name.clone(),
                        env: env.clone(),
                    };
                    Template::start(&spec)
                        .map_err(|e| format!("cannot start the node's template ({}): {e}", python.display()))
                });
                let extra: Vec<i32> = job.extra.iter().map(|f| f.as_raw_fd()).collect();
                let result = match t {
                    Ok(_) => launch::start(&name, &job.data, &extra).map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                };
                let (from, id, lifeline) = (job.from, job.id, job.lifeline);
                if tx.send(Event::Started { from, id, lifeline, result }).is_ok() {
                    let _ = waker.wake();
                }
            }
            if let Some(Ok(mut t)) = template {
                t.stop(TEMPLATE_STOP);
            }
        });
        h.ok().map(|h| (jtx, h))
    }

    fn started(
        &mut self,
        from: Requester,
        id: u64,
        lifeline: Option<(u32, u64)>,
        result: Result<launch::Started, String>,
    ) {
        let reply = match result {
            Err(e) => {
                // Its parent's service closes its end on the error.
                if let Some(key) = lifeline {
                    self.lifelines.remove(&key);
                    self.answer_parent_asks();
                }
                Reply::error(id, DRAGON_EIO, &e)
            }
            Ok(s) => {
                let launch = self.next_launch;
                self.next_launch += 1;
                let pid = s.pid;
                if let Some(key) = lifeline {
                    self.lifeline_started(key, pid as u32, launch);
                }
                self.watch_process(launch, s.pid, s.exit, s.stdout, s.stderr);
                self.here.insert(launch, Here { pid, from, _conn: s.conn });
                if let Requester::Local(t) = from {
                    if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) {
                        l.launches.insert((self.me, launch));
                    }
                }
                let mut p = BytesMut::new();
                p.put_i64_le(i64::from(pid));
                p.put_u64_le(launch);
                Reply::ok(id, p.freeze())
            }
        };
        match from {
            Requester::Local(t) => self.send_on(t, reply.kind, reply.id, reply.payload),
            Requester::Node(n) => {
                if let Some(&t) = self.links.get(&n) {
                    self.send_on(t, reply.kind, reply.id, reply.payload);
                }
            }
        }
    }

    /// Forward a started process's output and report its exit.
    fn watch_process(&self, launch: u64, pid: i32, exit: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) {
        let (tx, waker, out) = (self.tx.clone(), self.waker.clone(), self.out.clone());
        let _ = std::thread::Builder::new().name("dragon-output".into()).spawn(move || {
            let mut open = [Some(std::fs::File::from(stdout)), Some(std::fs::File::from(stderr))];
            let mut exit = Some(std::fs::File::from(exit));
            let mut buf = vec![0u8; 64 << 10];
            while open.iter().any(Option::is_some) || exit.is_some() {
                let fds: Vec<i32> = open
                    .iter()
                    .map(|o| o.as_ref().map_or(-1, |f| f.as_raw_fd()))
                    .chain([exit.as_ref().map_or(-1, |f| f.as_raw_fd())])
                    .collect();
                let Ok(ready) = crate::sys::readable(&fds, -1) else { break };
                for (i, slot) in open.iter_mut().enumerate() {
                    if !ready[i] {
                        continue;
                    }
                    let Some(fd) = slot.as_ref() else { continue };
                    match read_some(fd, &mut buf) {
                        0 => *slot = None,
                        n => {
                            let mut p = Vec::with_capacity(5 + n);
                            p.push(i as u8 + 1);
                            p.extend_from_slice(&(pid as u32).to_le_bytes());
                            p.extend_from_slice(&buf[..n]);
                            out.emit(out::OUTPUT, &p);
                        }
                    }
                }
                if ready[2] {
                    let fd = exit.take().expect("polled");
                    let mut code = [0u8; 8];
                    let n = read_full(&fd, &mut code);
                    let code = if n == 8 { i64::from_le_bytes(code) } else { 255 };
                    if tx.send(Event::Exited { launch, code }).is_ok() {
                        let _ = waker.wake();
                    }
                }
            }
        });
    }

    fn exited_here(&mut self, launch: u64, code: i64) {
        // Its lifeline ends here (its parent may have let go of it already).
        let key = self.lifelines.iter().find(|(_, x)| x.started.is_some_and(|(_, l)| l == launch)).map(|(k, _)| *k);
        if let Some(key) = key {
            self.end_lifeline(key, true);
        }
        let Some(h) = self.here.get(&launch) else {
            // Let go already; nobody to tell.
            return;
        };
        let (from, pid) = (h.from, h.pid as u32);
        // What it waited for ends before anyone hears of its exit (a unit
        // or notification released then is not for it): its connections
        // to this service are read to their end and closed now (their
        // cancels and releases go out on the links before the exit does),
        // and the node that hears of the exit ends its waits there first.
        for t in self.conns_where(|r| matches!(r, Role::Local(l) if l.pid == pid)) {
            self.drain_and_drop(t, "its process ended");
        }
        match from {
            Requester::Local(_) => self.exit_known((self.me, launch), code),
            Requester::Node(n) => {
                let mut p = BytesMut::new();
                p.put_u64_le(launch);
                p.put_i64_le(code);
                p.put_u32_le(pid);
                self.notice_node(n, proto::EXITED, p.freeze());
            }
        }
    }

    /// Read what connection `t`, whose process ended, still holds (its
    /// end of file closes it), then close it if that did not.
    fn drain_and_drop(&mut self, t: Token, why: &str) {
        for _ in 0..64 {
            if !self.conns.contains_key(&t) {
                return;
            }
            self.read(t);
        }
        self.drop_conn(t, why);
    }

    /// A process of node `node` ended: its waits on its direct connections
    /// here end before its exit is told (the connections themselves end at
    /// their end of file: what the process sent before it ended may still
    /// be on its way, and is served).
    fn direct_waits_end(&mut self, node: u32, pid: u32) {
        for t in self.conns_where(|r| matches!(r, Role::Direct(d) if d.node == node && d.pid == pid)) {
            self.sync.conn_gone(node, direct_conn_id(t));
        }
    }

    /// The connections whose role passes `keep`.
    fn conns_where(&self, keep: impl Fn(&Role) -> bool) -> Vec<Token> {
        self.conns.iter().filter(|(_, c)| keep(&c.role)).map(|(t, _)| *t).collect()
    }

    fn notice_node(&mut self, node: u32, kind: u8, payload: Bytes) {
        if let Some(&t) = self.links.get(&node) {
            self.send_on(t, kind, 0, payload);
        }
    }

    fn exit_known(&mut self, key: (u32, u64), code: i64) {
        self.exits.insert(key, code);
        for t in self.watchers.remove(&key).unwrap_or_default() {
            self.write_exit(t, code);
        }
    }

    fn write_exit(&mut self, t: Token, code: i64) {
        if let Some(c) = self.conns.get_mut(&t) {
            c.link.send_raw(Bytes::copy_from_slice(&code.to_le_bytes()));
            c.closing = true;
            self.flush(t);
        }
    }

    fn watch(&mut self, t: Token, node: u32, launch: u64) {
        let key = (node, launch);
        if let Some(Conn { role: Role::Local(l), .. }) = self.conns.get_mut(&t) {
            l.watching = Some(Watching::Exit(key));
        }
        if let Some(&code) = self.exits.get(&key) {
            return self.write_exit(t, code);
        }
        if node != self.me && self.lost.contains_key(&node) {
            return self.write_exit(t, proto::LOST_EXIT);
        }
        self.watchers.entry(key).or_default().push(t);
    }

    // ---- the end ----------------------------------------------------------------

    /// Clean this node up and say so; the exit code for the process.
    fn teardown(mut self) -> i32 {
        let why = self.stop.take().unwrap_or_default();
        let failed = self.table.is_none() || (self.me != 0 && self.lost.contains_key(&0));
        // Connections first: every wait on a thread ends.
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for t in tokens {
            if let Some(mut c) = self.conns.remove(&t) {
                let _ = self.poll.registry().deregister(c.link.stream());
            }
        }
        self.here.clear();
        if let Some((jobs, h)) = self.starter.take() {
            drop(jobs); // the starter stops the template and ends
            let _ = h.join();
        }
        let killed = crate::cleanup::kill_run_processes(&self.boot.run);
        let removed =
            transport_shm::RunId::parse(&self.boot.run).map_or(0, |r| transport_shm::segment::cleanup_run(&r));
        let summary = format!(
            "node {} ({}) stopped ({why}): {killed} leftover processes killed, {removed} shared-memory files removed",
            self.me,
            self.boot.host()
        );
        self.out.emit(out::STOPPED, summary.as_bytes());
        i32::from(failed)
    }
}

fn read_some(f: &std::fs::File, buf: &mut [u8]) -> usize {
    use std::io::Read;
    let mut f = f;
    loop {
        match f.read(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

fn read_full(f: &std::fs::File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match read_some(f, &mut buf[got..]) {
            0 => break,
            n => got += n,
        }
    }
    got
}

/// How the synchronisation server names a direct connection's requests
/// (never 0: that is the relayed requests' connection).
fn direct_conn_id(t: Token) -> u64 {
    t.0 as u64 + 1
}
