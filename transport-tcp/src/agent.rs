//! The agent: one per node, it serves the channel operations of processes
//! on other nodes on this node's channels (`transport-shm`).
//!
//! One thread runs a mio event loop over the listener and every
//! connection: it reads and decodes frames, authenticates each connection
//! first (`auth`), answers what can be answered at once, and writes
//! replies. An operation that must wait (a receive on an empty channel, a
//! send on a full one) runs on a thread of its own, which posts the reply
//! back to the loop through a mio `Waker`; that wait ends early if its
//! connection goes away. Every connection gets a heartbeat frame every
//! `proto::HEARTBEAT_EVERY`, so a client waiting for a slow reply can tell
//! it from a lost agent.
//!
//! # Peers that have not authenticated
//!
//! Anyone who can reach the port can connect, so what an unauthenticated
//! peer can hold is bounded ([`Limits`]): it may send only the small PROOF
//! frame (1 KiB at most), it must complete the handshake within
//! [`HANDSHAKE_DEADLINE`] of being accepted (then the connection is
//! closed, however slowly it is still sending), and at most
//! [`MAX_UNAUTHENTICATED`] such connections are open at once, at most
//! [`MAX_UNAUTHENTICATED_PER_ADDR`] from one source address. Beyond a cap
//! the *oldest* unauthenticated connection goes, not the new one: of the
//! same address for the per-address cap, of the address holding the most
//! for the overall cap. An honest client completes its handshake in one
//! round trip, so a stalled or hostile peer makes way for it, and a peer
//! flooding from one address mostly closes its own connections (a flood
//! from the very address of an honest client can still delay it: nothing
//! tells them apart before the proof). Authenticated connections are never
//! counted against the caps.

use crate::auth::{self, random32, Secret};
use crate::frame::{self, Frame};
use crate::gate::Gate;
use crate::proto;
use crate::serve::{Post, Reply, Served};
use bytes::BytesMut;
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use transport_abi::abi::DRAGON_EPROTO;
use transport_abi::export::TransportImpl;
use transport_shm::plugin::ShmTransport;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

pub use crate::gate::{
    Limits, HANDSHAKE_DEADLINE, MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_FRAME, MAX_UNAUTHENTICATED_PER_ADDR,
};

/// A running agent.
pub struct Agent {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("addr", &self.addr).finish()
    }
}

impl Agent {
    /// Listen on `bind` (port 0: any free port) and serve on a thread of
    /// its own until [`Agent::stop`] or drop, with the default [`Limits`].
    pub fn start(bind: SocketAddr, secret: Secret) -> io::Result<Agent> {
        Agent::start_with(bind, secret, Limits::default())
    }

    /// [`Agent::start`] with other bounds on unauthenticated peers (tests
    /// use a short or a long handshake deadline).
    pub fn start_with(bind: SocketAddr, secret: Secret, limits: Limits) -> io::Result<Agent> {
        let mut listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = unbounded();
        let shm = ShmTransport::open("").map_err(|f| io::Error::other(f.message))?;
        let mut lp = Loop {
            shm,
            addr: addr.to_string(),
            poll,
            listener,
            secret,
            conns: HashMap::new(),
            gate: Gate::new(limits),
            next_token: FIRST_CONN,
            done_tx: tx,
            done_rx: rx,
            waker: waker.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new().name("dragon-tcp-agent".into()).spawn(move || lp.run())?;
        Ok(Agent { addr, stop, waker, thread: Some(thread) })
    }

    /// The address the agent listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving: every connection is closed and every wait ended.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shut();
    }
}

struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    nonce: [u8; 32],
    authed: bool,
    /// Close once the write buffer is flushed (after a REJECT).
    closing: bool,
    /// Its attachments and waiting requests.
    served: Served,
}

/// A reply finished by a waiting thread: (connection, frame bytes).
type Done = (Token, BytesMut);

struct Loop {
    shm: ShmTransport,
    /// This agent's address, written into the handles of channels it creates.
    addr: String,
    poll: Poll,
    listener: TcpListener,
    secret: Secret,
    conns: HashMap<Token, Conn>,
    /// Unauthenticated connections (deadline, caps).
    gate: Gate,
    next_token: usize,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

fn encode(r: &Reply) -> BytesMut {
    let mut b = BytesMut::new();
    if r.tail.is_empty() {
        frame::encode(&mut b, r.kind, r.id, &r.payload);
    } else {
        frame::encode_parts(&mut b, r.kind, r.id, &[&r.payload, &r.tail]);
    }
    b
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_beat = Instant::now() + proto::HEARTBEAT_EVERY;
        while !self.stop.load(Ordering::Acquire) {
            let until = self.gate.next_deadline().map_or(next_beat, |d| d.min(next_beat));
            let wait = until.min(next_beat).saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    t => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(t);
                        }
                        self.flush(t);
                    }
                }
            }
            self.expire();
            while let Ok((t, bytes)) = self.done_rx.try_recv() {
                if let Some(c) = self.conns.get_mut(&t) {
                    c.wbuf.extend_from_slice(&bytes);
                    self.flush(t);
                }
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + proto::HEARTBEAT_EVERY;
                let tokens: Vec<Token> = self.conns.iter().filter(|(_, c)| c.authed).map(|(t, _)| *t).collect();
                for t in tokens {
                    if let Some(c) = self.conns.get_mut(&t) {
                        frame::encode(&mut c.wbuf, proto::HEARTBEAT, 0, &[]);
                    }
                    self.flush(t);
                }
            }
        }
        self.conns.clear(); // ends every wait started for them
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, from)) => {
                    let peer = from.ip();
                    for (t, why) in self.gate.make_room(peer) {
                        self.refuse(t, why);
                    }
                    let t = Token(self.next_token);
                    self.next_token += 1;
                    let _ = stream.set_nodelay(true);
                    if self.poll.registry().register(&mut stream, t, Interest::READABLE | Interest::WRITABLE).is_err() {
                        continue;
                    }
                    let nonce = random32();
                    let mut wbuf = BytesMut::new();
                    frame::encode(&mut wbuf, auth::HELLO, 0, &Secret::hello(&nonce));
                    let conn = Conn {
                        stream,
                        rbuf: BytesMut::with_capacity(64 << 10),
                        wbuf,
                        nonce,
                        authed: false,
                        closing: false,
                        served: Served::new(0, &self.addr),
                    };
                    self.conns.insert(t, conn);
                    self.gate.admit(t, peer);
                    self.flush(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn drop_conn(&mut self, t: Token) {
        if let Some(mut c) = self.conns.remove(&t) {
            self.gate.gone(t);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Close an unauthenticated connection, telling the peer why if its
    /// socket takes the few bytes at once.
    fn refuse(&mut self, t: Token, why: &str) {
        if let Some(c) = self.conns.get_mut(&t) {
            let mut b = BytesMut::new();
            frame::encode(&mut b, auth::REJECT, 0, why.as_bytes());
            let _ = c.stream.write(&b);
        }
        self.drop_conn(t);
    }

    /// Close the connections whose handshake deadline has passed.
    fn expire(&mut self) {
        for t in self.gate.expired(Instant::now()) {
            self.refuse(t, crate::gate::CLOSED_LATE);
        }
    }

    fn read(&mut self, t: Token) {
        let mut buf = [0u8; 64 << 10];
        loop {
            let Some(c) = self.conns.get_mut(&t) else { return };
            match c.stream.read(&mut buf) {
                Ok(0) => return self.drop_conn(t),
                Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(t),
            }
        }
        loop {
            let Some(c) = self.conns.get_mut(&t) else { return };
            if c.closing {
                // Refused or corrupt: nothing more is read, what is owed is
                // being written, then the connection closes.
                c.rbuf.clear();
                return;
            }
            // Before authentication only the small PROOF frame is accepted:
            // an unknown peer cannot make the agent reserve a large buffer.
            if !c.authed
                && c.rbuf.len() >= 4
                && u32::from_le_bytes(c.rbuf[..4].try_into().expect("4 bytes")) as usize > MAX_UNAUTHENTICATED_FRAME
            {
                return self.drop_conn(t);
            }
            match frame::decode(&mut c.rbuf) {
                Ok(Some(f)) => self.handle(t, f),
                Ok(None) => return,
                // A corrupt or hostile stream: nothing after it can be
                // trusted. The replies to the requests before it still go
                // out (they were performed), then a last frame says why,
                // then the connection closes (`flush`).
                Err(e) => {
                    let why = format!("protocol error: {e}; closing the connection");
                    if c.authed {
                        frame::encode(&mut c.wbuf, proto::ERROR, 0, &proto::error_payload(DRAGON_EPROTO, &why));
                    } else {
                        frame::encode(&mut c.wbuf, auth::REJECT, 0, why.as_bytes());
                    }
                    c.closing = true;
                    c.rbuf.clear();
                    return;
                }
            }
        }
    }

    fn flush(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        while !c.wbuf.is_empty() {
            match c.stream.write(&c.wbuf) {
                Ok(0) => return self.drop_conn(t),
                Ok(n) => {
                    let _ = c.wbuf.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(t),
            }
        }
        if c.closing {
            self.drop_conn(t);
        }
    }

    fn handle(&mut self, t: Token, f: Frame) {
        let secret = self.secret.clone();
        let Some(c) = self.conns.get_mut(&t) else { return };
        if c.closing {
            return;
        }
        if !c.authed {
            match (f.kind == auth::PROOF).then(|| secret.accept(&c.nonce, &f.payload)).flatten() {
                Some(acc) => {
                    c.authed = true;
                    frame::encode(&mut c.wbuf, auth::ACCEPT, 0, &acc);
                    self.gate.gone(t);
                }
                None => {
                    frame::encode(&mut c.wbuf, auth::REJECT, 0, b"authentication failed: not this run's secret");
                    c.closing = true;
                }
            }
            return;
        }
        let (tx, waker) = (self.done_tx.clone(), self.waker.clone());
        let post: Post = Arc::new(move |r: Reply| {
            if tx.send((t, encode(&r))).is_ok() {
                let _ = waker.wake();
            }
        });
        if let Some(r) = c.served.handle(&self.shm, f.kind, f.id, f.payload, &post) {
            c.wbuf.extend_from_slice(&encode(&r));
        }
    }
}
