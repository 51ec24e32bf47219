//! The client side: a process's connection to another node's agent, and
//! the channel operations it asks for. Calls block the calling thread;
//! waits are bounded by the operation's timeout plus the agent's silence
//! limit, so a dead or cut-off agent is an error, never a hang.

use crate::auth::{self, Secret};
use crate::frame::{self, Frame};
use crate::proto::{self, take_u64, timeout_ns};
use bytes::BytesMut;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What went wrong talking to an agent.
#[derive(Debug)]
pub enum TcpError {
    /// The connection failed.
    Io(io::Error),
    /// The agent refused this client's secret, or proved no secret itself.
    Auth(String),
    /// The agent sent something this client does not understand.
    Protocol(String),
    /// The agent performed the operation and it failed (`code`: a
    /// `DRAGON_E*` of the plugin ABI).
    Remote {
        /// The error code.
        code: i32,
        /// What the agent said.
        message: String,
    },
    /// Nothing came from the agent for too long: it died, or its node is
    /// cut off.
    PeerLost {
        /// The agent's address.
        peer: String,
        /// How long it was silent.
        silent: Duration,
    },
    /// The caller stopped waiting (a signal): the request was cancelled.
    Interrupted,
}

impl fmt::Display for TcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpError::Io(e) => write!(f, "connection to the agent failed: {e}"),
            TcpError::Auth(m) => write!(f, "authentication with the agent failed: {m}"),
            TcpError::Protocol(m) => write!(f, "protocol error: {m}"),
            TcpError::Remote { code, message } => write!(f, "{message} (code {code})"),
            TcpError::Interrupted => write!(f, "the wait was interrupted"),
            TcpError::PeerLost { peer, silent } => write!(
                f,
                "the agent at {peer} has not answered for {:.1} s: its node died or is cut off",
                silent.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for TcpError {}

impl From<io::Error> for TcpError {
    fn from(e: io::Error) -> TcpError {
        TcpError::Io(e)
    }
}

/// How a client answers a HELLO: the frame kind and payload of its proof,
/// and the check of the ACCEPT payload it must get back.
type Prove<'a> = dyn FnMut(&[u8]) -> Result<(u8, Vec<u8>, Box<dyn Fn(&[u8]) -> bool + 'a>), TcpError> + 'a;

/// A process's own service's word for it: (agent nonce, client nonce) ->
/// (PROOF_PROCESS payload, ACCEPT payload to expect).
pub type Vouch<'a> = dyn FnMut(&[u8; 32], &[u8; 32]) -> Result<(Vec<u8>, Vec<u8>), TcpError> + 'a;

/// Reads are sliced so that silence is noticed.
const SLICE: Duration = Duration::from_millis(200);

/// An authenticated connection to one agent.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    next_id: u64,
    peer: String,
    silence_limit: Duration,
}

impl Client {
    /// Connect to the agent at `addr` and authenticate with `secret`,
    /// within `timeout`.
    pub fn connect(addr: &str, secret: &Secret, timeout: Duration) -> Result<Client, TcpError> {
        Client::handshake(addr, timeout, &mut |hello| {
            let (proof, an, cn) = secret
                .proof(hello)
                .ok_or_else(|| TcpError::Protocol("malformed HELLO or another protocol version".into()))?;
            Ok((auth::PROOF, proof, Box::new(move |accept: &[u8]| secret.verify_accept(&an, &cn, accept))))
        })
    }

    /// Connect to the service at `addr` as a process of the run that does
    /// not hold the secret: `vouch(agent nonce, client nonce)` gives the
    /// PROOF_PROCESS payload and the ACCEPT payload to expect (from the
    /// process's own node's service, `auth::Secret::vouch`).
    pub fn connect_vouched(addr: &str, timeout: Duration, vouch: &mut Vouch<'_>) -> Result<Client, TcpError> {
        Client::handshake(addr, timeout, &mut |hello| {
            let agent_nonce: [u8; 32] = match hello {
                [lo, hi, rest @ ..] if u16::from_le_bytes([*lo, *hi]) == auth::VERSION => {
                    rest.try_into().map_err(|_| TcpError::Protocol("malformed HELLO".into()))?
                }
                _ => return Err(TcpError::Protocol("malformed HELLO or another protocol version".into())),
            };
            let (proof, expect) = vouch(&agent_nonce, &auth::random32())?;
            Ok((auth::PROOF_PROCESS, proof, Box::new(move |accept: &[u8]| accept == expect.as_slice())))
        })
    }

    /// Connect, answer the HELLO with what `prove` says (frame kind,
    /// payload, and the check of the ACCEPT that must come back).
    fn handshake<'a>(addr: &str, timeout: Duration, prove: &mut Prove<'a>) -> Result<Client, TcpError> {
        let sa: SocketAddr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| TcpError::Io(io::Error::new(io::ErrorKind::NotFound, format!("no address for {addr}"))))?;
        let stream = TcpStream::connect_timeout(&sa, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SLICE))?;
        let mut c = Client {
            stream,
            rbuf: BytesMut::new(),
            next_id: 1,
            peer: addr.to_owned(),
            silence_limit: proto::SILENCE_LIMIT,
        };
        let deadline = Instant::now() + timeout;
        // Until the agent has proved the secret, only small frames: a
        // stranger on the port cannot make this process reserve a large
        // buffer.
        let small = crate::agent::MAX_UNAUTHENTICATED_FRAME;
        let hello = c.next_frame(Some(deadline), small)?;
        if hello.kind != auth::HELLO {
            return Err(TcpError::Protocol(format!("expected HELLO, got frame kind {}", hello.kind)));
        }
        let (kind, proof, accepted) = prove(&hello.payload)?;
        c.write(kind, 0, &proof)?;
        let answer = c.next_frame(Some(deadline), small)?;
        match answer.kind {
            auth::ACCEPT if accepted(&answer.payload) => Ok(c),
            auth::ACCEPT => Err(TcpError::Auth("the agent does not hold this run's secret".into())),
            auth::REJECT => Err(TcpError::Auth(String::from_utf8_lossy(&answer.payload).into_owned())),
            k => Err(TcpError::Protocol(format!("expected ACCEPT, got frame kind {k}"))),
        }
    }

    /// The authenticated stream and whatever was read past the handshake
    /// (for a caller that goes on with a framed link of its own).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// How long the agent may stay silent before calls fail with
    /// [`TcpError::PeerLost`] (default `proto::SILENCE_LIMIT`).
    pub fn set_silence_limit(&mut self, d: Duration) {
        self.silence_limit = d;
    }

    fn write(&mut self, kind: u8, id: u64, payload: &[u8]) -> Result<(), TcpError> {
        let mut b = BytesMut::new();
        frame::encode(&mut b, kind, id, payload);
        self.stream.write_all(&b)?;
        Ok(())
    }

    /// The next frame, heartbeats included, of at most `max` bytes; fails
    /// after the silence limit, or at `deadline` (during the handshake).
    fn next_frame(&mut self, deadline: Option<Instant>, max: usize) -> Result<Frame, TcpError> {
        let mut heard = Instant::now();
        let mut buf = [0u8; 64 << 10];
        loop {
            if let Some(len) = self.rbuf.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) {
                if len > max {
                    return Err(TcpError::Protocol(format!(
                        "a frame of {len} bytes from {}, over the {max} allowed here",
                        self.peer
                    )));
                }
            }
            if let Some(f) = frame::decode(&mut self.rbuf).map_err(|e| TcpError::Protocol(e.to_string()))? {
                return Ok(f);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(TcpError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the agent at {} closed the connection", self.peer),
                    )))
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&buf[..n]);
                    heard = Instant::now();
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    let silent = heard.elapsed();
                    if silent >= self.silence_limit || deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(TcpError::PeerLost { peer: self.peer.clone(), silent });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Make a request and wait for its reply (heartbeats keep it alive).
    fn call(&mut self, kind: u8, payload: &[u8]) -> Result<Vec<u8>, TcpError> {
        let id = self.next_id;
        self.next_id += 1;
        self.write(kind, id, payload)?;
        loop {
            let f = self.next_frame(None, frame::MAX_FRAME)?;
            match f.kind {
                proto::HEARTBEAT => continue,
                // The agent is closing the connection (it read a corrupt
                // frame) and says why.
                proto::ERROR if f.id == 0 => {
                    let (_, message) = proto::parse_error(&f.payload);
                    return Err(TcpError::Protocol(format!("the agent closed the connection: {message}")));
                }
                _ if f.id != id => {
                    return Err(TcpError::Protocol(format!("reply to request {} while waiting for {id}", f.id)))
                }
                proto::OK => return Ok(f.payload.to_vec()),
                proto::ERROR => {
                    let (code, message) = proto::parse_error(&f.payload);
                    return Err(TcpError::Remote { code, message });
                }
                k => return Err(TcpError::Protocol(format!("unexpected frame kind {k}"))),
            }
        }
    }

    /// Check that the agent answers.
    pub fn ping(&mut self) -> Result<(), TcpError> {
        self.call(proto::PING, &[]).map(|_| ())
    }

    /// Attach to the channel `handle` names (on the agent's node); returns
    /// the attachment's id on this connection.
    pub fn attach(&mut self, handle: &[u8]) -> Result<u64, TcpError> {
        let p = self.call(proto::ATTACH, handle)?;
        take_u64(&p).map(|(id, _)| id).ok_or_else(|| TcpError::Protocol("short ATTACH reply".into()))
    }

    /// Send `data` on attachment `ch`, waiting at most `timeout` (`None`: no
    /// limit) while the channel is full.
    pub fn send(&mut self, ch: u64, data: &[u8], timeout: Option<Duration>) -> Result<(), TcpError> {
        self.call(proto::SEND, &proto::op_payload(ch, timeout_ns(timeout), data)).map(|_| ())
    }

    /// Receive from attachment `ch`, waiting at most `timeout`.
    pub fn recv(&mut self, ch: u64, timeout: Option<Duration>) -> Result<Vec<u8>, TcpError> {
        self.call(proto::RECV, &proto::op_payload(ch, timeout_ns(timeout), &[]))
    }

    /// Messages waiting in attachment `ch`'s channel.
    pub fn len(&mut self, ch: u64) -> Result<u64, TcpError> {
        let p = self.call(proto::LEN, &ch.to_le_bytes())?;
        take_u64(&p).map(|(n, _)| n).ok_or_else(|| TcpError::Protocol("short LEN reply".into()))
    }

    /// Let go of attachment `ch`.
    pub fn detach(&mut self, ch: u64) -> Result<(), TcpError> {
        self.call(proto::DETACH, &ch.to_le_bytes()).map(|_| ())
    }
}

impl Client {
    /// Create a channel on the agent's node (0: the transport's default
    /// for that attribute); returns the attachment's id and the channel's
    /// handle, which names the agent.
    pub fn create(&mut self, capacity: u64, slot_size: u64, max_block_bytes: u64) -> Result<(u64, Vec<u8>), TcpError> {
        let mut p = capacity.to_le_bytes().to_vec();
        p.extend_from_slice(&slot_size.to_le_bytes());
        p.extend_from_slice(&max_block_bytes.to_le_bytes());
        let r = self.call(proto::CREATE, &p)?;
        take_u64(&r).map(|(id, h)| (id, h.to_vec())).ok_or_else(|| TcpError::Protocol("short CREATE reply".into()))
    }

    /// Destroy attachment `ch`'s channel for everyone.
    pub fn destroy(&mut self, ch: u64) -> Result<(), TcpError> {
        self.call(proto::DESTROY, &ch.to_le_bytes()).map(|_| ())
    }

    /// Wait at most `timeout` until one of `events` (`DRAGON_POLL_IN`,
    /// `DRAGON_POLL_OUT`) holds on attachment `ch`; the events that hold.
    pub fn poll(&mut self, ch: u64, events: u32, timeout: Option<Duration>) -> Result<u32, TcpError> {
        let r = self.call(proto::POLL, &proto::op_payload(ch, timeout_ns(timeout), &events.to_le_bytes()))?;
        r.get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| TcpError::Protocol("short POLL reply".into()))
    }
}
