//! Serving this node's channels over RDMA links: what the verbs plugin
//! (`libdragon_transport_verbs.so`) talks to.
//!
//! A [`Server`] listens on a TCP address or an abstract unix socket. Each
//! client authenticates with the run's secret and sets up a link
//! ([`crate::boot`]); its requests then travel over the link, each one
//! message (`kind u8, id u64, payload`, the requests and payloads of
//! `transport_tcp::proto`), and are performed on this node's shared-memory
//! channels by a `transport_tcp::serve::Served` of its own, exactly as the
//! node services serve the TCP transport's requests. Replies travel back
//! the same way (`OK` or `ERROR`, the request's id, payload). A client
//! that goes (closes, dies, or its link fails) lets go of every
//! attachment it held.
//!
//! Every link has a protection domain of its own: a client's registrations
//! go with it.

use crate::boot::{self, FabricSpec, Sock};
use crate::engine::{Engine, EngineConfig, EngineError};
use bytes::Bytes;
use shm_primitives::sync::local::{AtomicBool, Ordering};
use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use transport_abi::abi::DRAGON_EPROTO;
use transport_abi::export::TransportImpl;
use transport_shm::plugin::ShmTransport;
use transport_tcp::auth::Secret;
use transport_tcp::serve::{Post, Reply, Served};

/// Bytes before a request's or reply's payload: kind u8, id u64.
pub const HEAD: usize = 9;

/// The head of a request or reply.
pub fn head(kind: u8, id: u64) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[0] = kind;
    h[1..].copy_from_slice(&id.to_le_bytes());
    h
}

/// Split a request or reply: kind, id, payload (`None`: too short).
pub fn split(m: &Bytes) -> Option<(u8, u64, Bytes)> {
    if m.len() < HEAD {
        return None;
    }
    Some((m[0], u64::from_le_bytes(m[1..HEAD].try_into().expect("8 bytes")), m.slice(HEAD..)))
}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The fabric its links use.
    pub fabric: FabricSpec,
    /// A device to use (None: the first active port).
    pub device: Option<String>,
    /// The run's secret.
    pub secret: Secret,
    /// This node's index, written into the handles of channels created here.
    pub node: u32,
    /// This node's address, written into those handles.
    pub address: String,
    /// The links' sizes.
    pub engine: EngineConfig,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Sock> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Sock::Tcp(s)
            }
            Listener::Unix(l) => Sock::Unix(l.accept()?.0),
        })
    }
}

/// A server of this node's channels over RDMA links. Dropping it stops
/// accepting new clients (links already made run until their client goes).
pub struct Server {
    address: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Server {
    /// Listen on `listen` (`unix:<abstract name>` or `host:port`, port 0
    /// for any) and serve clients in threads of their own.
    pub fn start(listen: &str, cfg: ServerConfig) -> io::Result<Server> {
        // Fail now, not at the first client, if there is no usable device.
        boot::open_port(&cfg.fabric, cfg.device.as_deref()).map_err(|e| io::Error::other(e.to_string()))?;
        let (listener, address) = match listen.strip_prefix("unix:") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                (Listener::Unix(UnixListener::bind_addr(&a)?), listen.to_owned())
            }
            None => {
                let l = TcpListener::bind(listen)?;
                let a = l.local_addr()?.to_string();
                (Listener::Tcp(l), a)
            }
        };
        let shm = Arc::new(ShmTransport::open("").map_err(|f| io::Error::other(f.message))?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new().name("dragon-verbs-listen".into()).spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                let Ok(sock) = listener.accept() else {
                    // Out of descriptors, say: give the others a moment.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let (cfg, shm) = (cfg.clone(), shm.clone());
                let _ = std::thread::Builder::new()
                    .name("dragon-verbs-client".into())
                    .spawn(move || client(sock, &cfg, shm));
            }
        })?;
        Ok(Server { address, stop, thread: Some(thread) })
    }

    /// Where it listens (`unix:<name>` or `host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept with a connection of our own.
        let _ = Sock::connect(&self.address, boot::STEP);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client: set-up, then its requests until it goes.
fn client(mut sock: Sock, cfg: &ServerConfig, shm: Arc<ShmTransport>) {
    let port = || boot::open_port(&cfg.fabric, cfg.device.as_deref()).map(|(_, p)| p);
    let Ok(engine) = boot::server(&mut sock, &cfg.secret, port, cfg.engine.clone()) else { return };
    let engine = Arc::new(engine);
    let Ok(tether) = sock.try_clone() else { return };
    let e2 = engine.clone();
    let watcher = boot::watch_tether(tether, move || {
        e2.fail(EngineError::PeerLost("the client's set-up connection closed (its process ended?)".into()))
    });
    serve(&engine, cfg, &shm);
    sock.shutdown();
    if let Ok(w) = watcher {
        let _ = w.join();
    }
}

/// Perform the link's requests until it ends.
fn serve(engine: &Arc<Engine>, cfg: &ServerConfig, shm: &ShmTransport) {
    let mut served = Served::new(cfg.node, &cfg.address);
    let e = engine.clone();
    let post: Post = Arc::new(move |r: Reply| {
        // A link that failed has nobody to answer. A received block's
        // bytes (the tail) are read by the client in place.
        let h = head(r.kind, r.id);
        let _ = if r.tail.is_empty() {
            e.send(&[&h, &r.payload], None)
        } else {
            e.send_in_place(&[&h, &r.payload], &r.tail, None)
        };
    });
    loop {
        let m = match engine.recv(None) {
            Ok(m) => m,
            Err(_) => break,
        };
        let Some((kind, id, payload)) = split(&m) else {
            engine.fail(EngineError::Protocol("a request shorter than its head".into()));
            break;
        };
        if !Served::serves(kind) {
            post(Reply::error(id, DRAGON_EPROTO, &format!("unknown request kind {kind}")));
            continue;
        }
        if let Some(r) = served.handle(shm, kind, id, payload, &post) {
            post(r);
        }
    }
}
