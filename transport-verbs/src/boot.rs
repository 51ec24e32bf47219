//! Setting a link up over an existing stream: which fabric, mutual
//! authentication with the run's secret, and the exchange of addresses.
//!
//! ```text
//!   server -> client   auth HELLO           (transport_tcp::auth, frames of transport_tcp::frame)
//!   client -> server   auth PROOF
//!   server -> client   auth ACCEPT | REJECT
//!   client -> server   OFFER   the initiator's engine address (wire::Address)
//!   server -> client   ANSWER  the responder's address  | REFUSE  why (text)
//! ```
//!
//! The stream then stays open and idle: the *tether*. When it ends (the
//! peer's process died, or it closed), the link fails at once instead of
//! after a keepalive.

use crate::engine::{self, Engine, EngineConfig, EngineError};
use crate::ibv::IbvFabric;
use crate::sim::SimFabric;
use crate::verbs::{active_port, Fabric, Port, PortInfo, VerbsError};
use bytes::BytesMut;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;
use transport_tcp::auth::{self, random32, Secret};
use transport_tcp::frame::{self, Frame};

/// Frame kind: the initiator's address.
pub const OFFER: u8 = 0xB0;
/// Frame kind: the responder's address.
pub const ANSWER: u8 = 0xB1;
/// Frame kind: the responder will not link (why, as text).
pub const REFUSE: u8 = 0xB2;
/// Largest frame read before the link is up.
pub const MAX_BOOT_FRAME: usize = 4096;
/// How long each step of the set-up may take.
pub const STEP: Duration = Duration::from_secs(10);

/// Which fabric: rdma-core's devices or a simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FabricSpec {
    /// The machine's RDMA devices through `libibverbs.so.1` (or `lib`).
    Ibverbs {
        /// Another library file.
        lib: Option<String>,
        /// A GID table entry to use instead of choosing one.
        gid_index: Option<u8>,
    },
    /// The simulated network of this name.
    Sim(String),
}

impl FabricSpec {
    /// `ibv` (or `ibverbs`) or `sim:<name>`.
    pub fn parse(s: &str) -> Result<FabricSpec, String> {
        match s {
            "ibv" | "ibverbs" => Ok(FabricSpec::Ibverbs { lib: None, gid_index: None }),
            _ => match s.strip_prefix("sim:") {
                Some(name) if !name.is_empty() => Ok(FabricSpec::Sim(name.to_owned())),
                _ => Err(format!("fabric {s:?}: expected ibv or sim:<name>")),
            },
        }
    }

    /// Load it.
    pub fn open(&self) -> Result<Arc<dyn Fabric>, VerbsError> {
        Ok(match self {
            FabricSpec::Ibverbs { lib, gid_index } => {
                Arc::new(IbvFabric::load(lib.as_deref())?.with_gid_index(*gid_index))
            }
            FabricSpec::Sim(name) => Arc::new(SimFabric::new(name)?),
        })
    }
}

/// A fabric's active port, opened: what one end of a link needs.
pub fn open_port(spec: &FabricSpec, device: Option<&str>) -> Result<(PortInfo, Arc<dyn Port>), VerbsError> {
    let fabric = spec.open()?;
    let info = active_port(&*fabric, device)?;
    let port = fabric.open(&info)?;
    Ok((info, port))
}

/// A blocking stream the set-up runs over.
#[derive(Debug)]
pub enum Sock {
    /// TCP.
    Tcp(TcpStream),
    /// A unix socket.
    Unix(UnixStream),
}

impl Sock {
    /// Connect to `addr`: `unix:<abstract name>` or `host:port`.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Sock> {
        if let Some(name) = addr.strip_prefix("unix:") {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            return Ok(Sock::Unix(UnixStream::connect_addr(&a)?));
        }
        use std::net::ToSocketAddrs;
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(Sock::Tcp(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Another handle on the same stream.
    pub fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
        })
    }

    /// Bound blocking reads (None: no bound).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_read_timeout(t),
            Sock::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// End both directions (a reader blocked on it returns).
    pub fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.flush(),
            Sock::Unix(s) => s.flush(),
        }
    }
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::new();
    frame::encode(&mut b, kind, 0, payload);
    w.write_all(&b)?;
    w.flush()
}

/// Read one frame of at most `max` bytes (what `buf` holds already first).
pub fn read_frame(r: &mut impl Read, buf: &mut BytesMut, max: usize) -> io::Result<Frame> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if len > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes during set-up"),
                ));
            }
        }
        if let Some(f) = frame::decode(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))? {
            return Ok(f);
        }
        let mut tmp = [0u8; 4096];
        let n = r.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection during set-up"));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Why a set-up failed.
#[derive(Debug)]
pub enum BootError {
    /// The stream failed.
    Io(io::Error),
    /// Authentication failed (another run's secret, or none).
    Auth(String),
    /// The peer refused the link (it has no usable device, say).
    Refused(String),
    /// The engine could not be set up.
    Engine(EngineError),
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootError::Io(e) => write!(f, "RDMA link set-up: {e}"),
            BootError::Auth(why) => write!(f, "RDMA link set-up: authentication failed: {why}"),
            BootError::Refused(why) => write!(f, "the peer refused the RDMA link: {why}"),
            BootError::Engine(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BootError {}

impl From<io::Error> for BootError {
    fn from(e: io::Error) -> BootError {
        BootError::Io(e)
    }
}

/// The client's side: authenticate on `sock`, offer, finish. The socket
/// stays with the caller as the tether.
pub fn client(sock: &mut Sock, secret: &Secret, port: Arc<dyn Port>, cfg: EngineConfig) -> Result<Engine, BootError> {
    sock.set_read_timeout(Some(STEP))?;
    let mut buf = BytesMut::new();
    let hello = read_frame(sock, &mut buf, MAX_BOOT_FRAME)?;
    if hello.kind != auth::HELLO {
        return Err(BootError::Auth(format!("expected HELLO, got frame kind {:#x}", hello.kind)));
    }
    let (proof, an, cn) = secret.proof(&hello.payload).ok_or_else(|| BootError::Auth("a malformed HELLO".into()))?;
    write_frame(sock, auth::PROOF, &proof)?;
    let verdict = read_frame(sock, &mut buf, MAX_BOOT_FRAME)?;
    match verdict.kind {
        auth::ACCEPT if secret.verify_accept(&an, &cn, &verdict.payload) => {}
        auth::ACCEPT => return Err(BootError::Auth("the peer does not hold the run's secret".into())),
        auth::REJECT => return Err(BootError::Auth(String::from_utf8_lossy(&verdict.payload).into_owned())),
        k => return Err(BootError::Auth(format!("unexpected frame kind {k:#x}"))),
    }
    let (conn, offer) = engine::offer(port, cfg).map_err(BootError::Engine)?;
    write_frame(sock, OFFER, &offer)?;
    let answer = read_frame(sock, &mut buf, MAX_BOOT_FRAME)?;
    let e = match answer.kind {
        ANSWER => conn.finish(&answer.payload).map_err(BootError::Engine)?,
        REFUSE => return Err(BootError::Refused(String::from_utf8_lossy(&answer.payload).into_owned())),
        k => return Err(BootError::Io(io::Error::new(io::ErrorKind::InvalidData, format!("frame kind {k:#x}")))),
    };
    sock.set_read_timeout(None)?;
    Ok(e)
}

/// The server's side: authenticate the client on `sock`, take its offer,
/// answer with a link on a port from `port()` (or refuse, saying why).
pub fn server(
    sock: &mut Sock,
    secret: &Secret,
    port: impl FnOnce() -> Result<Arc<dyn Port>, VerbsError>,
    cfg: EngineConfig,
) -> Result<Engine, BootError> {
    sock.set_read_timeout(Some(STEP))?;
    let nonce = random32();
    write_frame(sock, auth::HELLO, &Secret::hello(&nonce))?;
    let mut buf = BytesMut::new();
    let proof = read_frame(sock, &mut buf, frame::HEADER + 128)?;
    let acc = (proof.kind == auth::PROOF).then(|| secret.accept(&nonce, &proof.payload)).flatten();
    let Some(acc) = acc else {
        let _ = write_frame(sock, auth::REJECT, b"authentication failed: not this run's secret");
        return Err(BootError::Auth("the client does not hold the run's secret".into()));
    };
    write_frame(sock, auth::ACCEPT, &acc)?;
    let offer = read_frame(sock, &mut buf, MAX_BOOT_FRAME)?;
    if offer.kind != OFFER {
        return Err(BootError::Io(io::Error::new(io::ErrorKind::InvalidData, format!("frame kind {:#x}", offer.kind))));
    }
    let linked = port().map_err(EngineError::Resources).and_then(|p| engine::accept(p, cfg, &offer.payload));
    match linked {
        Ok((e, answer)) => {
            write_frame(sock, ANSWER, &answer)?;
            sock.set_read_timeout(None)?;
            Ok(e)
        }
        Err(err) => {
            let _ = write_frame(sock, REFUSE, err.to_string().as_bytes());
            Err(BootError::Engine(err))
        }
    }
}

/// Watch the tether in a thread: when it ends, `on_end` runs (the link
/// fails). Returns the thread; shut the socket down to end it.
pub fn watch_tether(mut sock: Sock, on_end: impl FnOnce() + Send + 'static) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("dragon-verbs-tether".into()).spawn(move || {
        let mut b = [0u8; 64];
        loop {
            match sock.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        on_end();
    })
}
