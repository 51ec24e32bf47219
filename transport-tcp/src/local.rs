//! A process's connection to its own node's service (the `runtime`
//! crate's node service), over the service's abstract unix socket.
//!
//! Every request to the service starts with the index of the node it is
//! for (`node u32`), then the payload of [`crate::proto`]; the service
//! serves it (its own node) or carries it to that node's service. One
//! connection per process carries any number of requests at once, from
//! any number of threads: each waits for the reply with its id. There is
//! no reader thread: a caller that waits while nobody reads reads the
//! connection itself, for everyone, until its own reply has come (so a
//! lone caller's reply wakes no other thread), then hands the reading over
//! to the next caller that waits. If the service goes away, every call
//! fails.

use crate::client::TcpError;
use crate::frame::{self, Frame};
use crate::proto;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Answer = Result<(u8, Bytes), TcpError>;

/// What a client talks over: the unix socket of this node's service, or a
/// direct TCP connection to another node's service.
#[derive(Debug)]
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => (&mut &*s).write_vectored(bufs),
            Sock::Tcp(s) => (&mut &*s).write_vectored(bufs),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Sock::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// The reading half of the connection, and what it has read so far.
struct Reader {
    /// The same socket as the writer's (one descriptor per process).
    stream: Arc<Sock>,
    rbuf: BytesMut,
    /// Replies that came in pieces, by id, until their last piece.
    parts: HashMap<u64, BytesMut>,
}

#[derive(Default)]
struct State {
    /// The reader, while nobody is reading (`None` while a caller reads).
    reader: Option<Reader>,
    /// Requests whose reply is still wanted.
    wanted: HashSet<u64>,
    /// Replies come and not yet taken, by id.
    answers: HashMap<u64, Answer>,
    /// Why the connection ended, once it has.
    dead: Option<String>,
}

struct Inner {
    writer: Mutex<Arc<Sock>>,
    state: Mutex<State>,
    /// Signalled when a reply comes, when the reader is put back, and when
    /// the connection ends.
    changed: Condvar,
    next_id: AtomicU64,
    name: String,
    /// What the messages call the other end ("this node's dragon service").
    what: String,
    /// Put before a message of the connection's end ("node 2 (n2) is lost: ").
    lost: String,
    /// A direct connection to another node's service (TCP), not this node's.
    direct: bool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A multiplexed connection to this node's service.
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient").field("service", &self.inner.name).finish_non_exhaustive()
    }
}

fn connect_abstract(name: &str) -> io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixStream::connect_addr(&addr)
}

fn gone(why: &str) -> TcpError {
    TcpError::Io(io::Error::new(io::ErrorKind::BrokenPipe, why.to_owned()))
}

/// A process's ways to its own node's service and to each other node.
///
/// Its connection to its own node's service is made on first use and
/// kept. Another node is reached (with [`Routes::client_for`]) on a
/// direct connection to that node's service, made on first use, or (when
/// it cannot be made) through its own node's service, for the rest of the
/// process's life, so that what was attached one way is always used that
/// way. A direct connection is asked for (ROUTE, VOUCH) on the kept
/// connection if there is one, else on a connection made for it and
/// closed after: a process that reaches every other node it uses straight
/// holds no connection to its own node's service.
#[derive(Debug)]
pub struct Routes {
    /// The abstract socket name of this node's service.
    service: String,
    local: Mutex<Option<ServiceClient>>,
    direct: Mutex<HashMap<u32, Option<ServiceClient>>>,
}

impl Routes {
    /// The ways of a process whose node's service listens on abstract
    /// socket `service`; no connection is made yet.
    pub fn new(service: &str) -> Routes {
        Routes { service: service.to_owned(), local: Mutex::default(), direct: Mutex::default() }
    }

    /// The connection to this node's service (made on first use).
    pub fn local(&self) -> Result<ServiceClient, TcpError> {
        let mut l = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &*l {
            return Ok(c.clone());
        }
        let c = ServiceClient::connect(&self.service)?;
        *l = Some(c.clone());
        Ok(c)
    }

    /// The connection for requests to `node`, another node than this one.
    pub fn client_for(&self, node: u32) -> Result<ServiceClient, TcpError> {
        let mut d = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        let c = match d.get(&node) {
            Some(c) => c.clone(),
            None => {
                let kept = self.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let asker = match kept {
                    Some(c) => c,
                    None => ServiceClient::connect(&self.service)?,
                };
                let c = asker.connect_direct(node, DIRECT_CONNECT_TIMEOUT).ok();
                d.insert(node, c.clone());
                c
            }
        };
        drop(d);
        c.map_or_else(|| self.local(), Ok)
    }
}

/// How long a direct connection to another node's service may take to make.
pub const DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ServiceClient {
    /// Connect to the service listening on abstract socket `name`.
    pub fn connect(name: &str) -> Result<ServiceClient, TcpError> {
        let stream = connect_abstract(name).map_err(|e| {
            TcpError::Io(io::Error::new(e.kind(), format!("cannot reach this node's dragon service ({name}): {e}")))
        })?;
        Ok(ServiceClient::over(Sock::Unix(stream), BytesMut::new(), name, "this node's dragon service", String::new()))
    }

    fn over(sock: Sock, mut rbuf: BytesMut, name: &str, what: &str, lost: String) -> ServiceClient {
        let direct = matches!(sock, Sock::Tcp(_));
        let stream = Arc::new(sock);
        rbuf.reserve(64 << 10);
        let reader = Reader { stream: stream.clone(), rbuf, parts: HashMap::new() };
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            state: Mutex::new(State { reader: Some(reader), ..State::default() }),
            changed: Condvar::new(),
            next_id: AtomicU64::new(1),
            name: name.to_owned(),
            what: what.to_owned(),
            lost,
            direct,
        });
        ServiceClient { inner }
    }

    /// A connection of this process straight to the service of node
    /// `node`, made with this service's word for the process (requests
    /// [`proto::ROUTE`] and [`proto::VOUCH`]); requests on it are for
    /// `node` only, and skip both services' relaying. It fails if no
    /// address of the node's service can be reached and authenticated to
    /// within `timeout` each.
    pub fn connect_direct(&self, node: u32, timeout: Duration) -> Result<ServiceClient, TcpError> {
        let route = self.call(node, proto::ROUTE, &[])?;
        let text = String::from_utf8_lossy(&route);
        let mut lines = text.lines();
        let host = lines.next().unwrap_or_default().to_owned();
        let mut last = TcpError::Protocol(format!("no address known for node {node}"));
        for addr in lines {
            let mut vouch = |agent: &[u8; 32], client: &[u8; 32]| {
                let v = self.call(node, proto::VOUCH, &[&agent[..], &client[..]].concat())?;
                match v.len().checked_sub(32) {
                    Some(at) if at > 0 => Ok((v[..at].to_vec(), v[at..].to_vec())),
                    _ => Err(TcpError::Protocol("short VOUCH reply".into())),
                }
            };
            match crate::client::Client::connect_vouched(addr, timeout, &mut vouch) {
                Ok(c) => {
                    let (stream, rbuf) = c.into_parts();
                    stream.set_read_timeout(None)?;
                    set_keepalive(&stream);
                    let name = format!("node {node} ({host}) at {addr}");
                    let lost = format!("node {node} ({host}) is lost: ");
                    return Ok(ServiceClient::over(Sock::Tcp(stream), rbuf, &name, "its dragon service", lost));
                }
                // The service answered and refused: its other addresses
                // reach the same service.
                Err(e @ TcpError::Auth(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether this is a direct connection to another node's service.
    pub fn is_direct(&self) -> bool {
        self.inner.direct
    }

    /// Send request `kind` for node `node` with `payload`, wait for its
    /// reply: the OK payload, or the error the service or the node reports.
    pub fn call(&self, node: u32, kind: u8, payload: &[u8]) -> Result<Bytes, TcpError> {
        let mut head = Vec::with_capacity(4 + payload.len().min(64));
        head.extend_from_slice(&node.to_le_bytes());
        self.call_raw(kind, &head, payload)
    }

    /// [`ServiceClient::call`] that calls `keep_waiting` at least every
    /// `every` while it waits for the reply; when it returns `false`, the
    /// request is cancelled on the node that serves it (its reply, which
    /// still comes, is dropped) and the call fails with
    /// [`TcpError::Interrupted`].
    pub fn call_with(
        &self,
        node: u32,
        kind: u8,
        payload: &[u8],
        every: std::time::Duration,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Bytes, TcpError> {
        let head = node.to_le_bytes();
        self.call_inner(kind, &head, payload, Some((node, every, keep_waiting)))
    }

    /// [`ServiceClient::call_with`] of a payload in two parts, `first` then
    /// `rest`, written one after the other (a large `rest` goes from where
    /// it is, not copied after `first`).
    pub fn call_parts_with(
        &self,
        node: u32,
        kind: u8,
        first: &[u8],
        rest: &[u8],
        every: std::time::Duration,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Bytes, TcpError> {
        let head = [&node.to_le_bytes()[..], first].concat();
        self.call_inner(kind, &head, rest, Some((node, every, keep_waiting)))
    }

    /// [`ServiceClient::call_with`] of a request whose payload carries the
    /// node itself (not as its first bytes: `runtime`'s BLOCK_TAIL);
    /// `node` is where a cancellation goes.
    pub fn call_raw_with(
        &self,
        node: u32,
        kind: u8,
        payload: &[u8],
        every: std::time::Duration,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Bytes, TcpError> {
        self.call_inner(kind, &[], payload, Some((node, every, keep_waiting)))
    }

    /// A request without the node prefix (the service's own requests).
    pub fn call_raw(&self, kind: u8, head: &[u8], payload: &[u8]) -> Result<Bytes, TcpError> {
        self.call_inner(kind, head, payload, None)
    }

    fn call_inner(
        &self,
        kind: u8,
        head: &[u8],
        payload: &[u8],
        mut hook: Option<(u32, std::time::Duration, &mut dyn FnMut() -> bool)>,
    ) -> Result<Bytes, TcpError> {
        let t = self.submit(kind, head, payload)?;
        loop {
            let deadline = hook.as_ref().map(|(_, every, _)| Instant::now() + *every);
            if let Some(a) = wait(&self.inner, t.id, deadline) {
                return answer(a);
            }
            let Some((node, _, keep_waiting)) = hook.as_mut() else { continue };
            if !keep_waiting() {
                {
                    let mut st = self.inner.state();
                    st.wanted.remove(&t.id);
                    st.answers.remove(&t.id);
                }
                let _ = self.write(proto::CANCEL, t.id, &node.to_le_bytes(), &[]);
                return Err(TcpError::Interrupted);
            }
        }
    }

    /// Send a request (`head` then `payload`, as [`ServiceClient::call_raw`])
    /// without waiting for its reply: the [`Ticket`] gives the reply when
    /// it has come. Requests are carried in the order they are submitted.
    pub fn submit(&self, kind: u8, head: &[u8], payload: &[u8]) -> Result<Ticket, TcpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed); // unique ids only; nothing to order
        {
            let mut st = self.inner.state();
            if let Some(why) = &st.dead {
                return Err(gone(why));
            }
            st.wanted.insert(id);
        }
        if let Err(e) = self.write(kind, id, head, payload) {
            self.inner.state().wanted.remove(&id);
            return Err(e);
        }
        Ok(Ticket { id, inner: self.inner.clone() })
    }

    /// Send a request whose reply nobody waits for (its id is never reused).
    pub fn notify(&self, node: u32, kind: u8, payload: &[u8]) -> Result<(), TcpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed); // unique ids only
        self.write(kind, id, &node.to_le_bytes(), payload)
    }

    fn write(&self, kind: u8, id: u64, head: &[u8], payload: &[u8]) -> Result<(), TcpError> {
        let total = head.len() + payload.len();
        let w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let r = if total <= frame::CHUNK {
            let h = frame::header(kind, id, total);
            write_all_vectored(&w, &[&h, head, payload])
        } else {
            // Pieces of the head and payload together, neither joined first.
            let piece = |off: usize, n: usize| -> [&[u8]; 2] {
                let h = &head[off.min(head.len())..(off + n).min(head.len())];
                let p = &payload[off.saturating_sub(head.len())..(off + n).saturating_sub(head.len())];
                [h, p]
            };
            let mut off = 0;
            let mut r = Ok(());
            while total - off > frame::CHUNK && r.is_ok() {
                let [h, p] = piece(off, frame::CHUNK);
                r = write_all_vectored(&w, &[&frame::header(frame::PART, id, frame::CHUNK), h, p]);
                off += frame::CHUNK;
            }
            let [h, p] = piece(off, total - off);
            r.and_then(|()| write_all_vectored(&w, &[&frame::header(kind, id, total - off), h, p]))
        };
        r.map_err(|e| {
            TcpError::Io(io::Error::new(e.kind(), format!("{}{} went away: {e}", self.inner.lost, self.inner.what)))
        })
    }
}

/// A request sent with [`ServiceClient::submit`] whose reply is awaited.
pub struct Ticket {
    id: u64,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Ticket {
    /// The reply, if it has come (then it is taken: ask once). Reads what
    /// the connection has, without waiting, if nobody else is reading.
    pub fn try_take(&self) -> Option<Result<Bytes, TcpError>> {
        wait(&self.inner, self.id, Some(Instant::now())).map(answer)
    }

    /// Wait at most until `deadline` (`None`: no limit) for the reply;
    /// `None` if it has not come by then.
    pub fn wait(&self, deadline: Option<Instant>) -> Option<Result<Bytes, TcpError>> {
        wait(&self.inner, self.id, deadline).map(answer)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A reply nobody will take is dropped when it comes.
        let mut st = self.inner.state();
        st.wanted.remove(&self.id);
        st.answers.remove(&self.id);
    }
}

/// Wait until `deadline` (`None`: no limit) for the reply to request `id`,
/// reading the connection for everyone while nobody else does.
fn wait(inner: &Inner, id: u64, deadline: Option<Instant>) -> Option<Answer> {
    let mut st = inner.state();
    loop {
        if let Some(a) = st.answers.remove(&id) {
            st.wanted.remove(&id);
            return Some(a);
        }
        if let Some(e) = st.dead.as_deref().map(gone) {
            st.wanted.remove(&id);
            return Some(Err(e));
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if let Some(mut r) = st.reader.take() {
            drop(st);
            let ended = r.pump(inner, id, deadline);
            st = inner.state();
            match ended {
                Ok(()) => st.reader = Some(r),
                Err(why) => {
                    // Every request still waiting fails.
                    let ids: Vec<u64> = st.wanted.drain().collect();
                    for w in ids {
                        st.answers.insert(w, Err(gone(&why)));
                    }
                    st.dead = Some(why);
                }
            }
            // The next waiter, if any, reads on.
            inner.changed.notify_all();
            if left.is_some_and(|l| l.is_zero()) && !st.answers.contains_key(&id) {
                return None;
            }
            continue;
        }
        match left {
            Some(l) if l.is_zero() => return None,
            Some(l) => st = inner.changed.wait_timeout(st, l).unwrap_or_else(|e| e.into_inner()).0,
            None => st = inner.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Reader {
    /// Read and hand out replies until the reply to `id` has come or
    /// `deadline` passes: `Err` with the reason if the connection ended.
    fn pump(&mut self, inner: &Inner, id: u64, deadline: Option<Instant>) -> Result<(), String> {
        loop {
            let mine = self.hand_out(inner, id)?;
            if mine {
                return Ok(());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ms = match left {
                None => -1,
                // Rounded up: a wait never ends before its deadline.
                Some(l) => i32::try_from(l.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
            };
            let mut pfd = libc::pollfd { fd: self.stream.fd(), events: libc::POLLIN, revents: 0 };
            let mut n = 0;
            if ms != 0 {
                // Look for the reply without sleeping for a while first: a
                // short request's reply often comes sooner than an idle
                // core wakes up.
                let spin = reply_spin();
                let start = Instant::now();
                while n == 0 && start.elapsed() < spin {
                    n = poll_in(&mut pfd, 0);
                    std::hint::spin_loop();
                }
            }
            if n == 0 {
                n = poll_in(&mut pfd, ms);
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("{}the connection to {} failed: {e}", inner.lost, inner.what));
            }
            if n == 0 {
                if left.is_some_and(|l| l.is_zero()) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(());
                }
                continue;
            }
            self.rbuf.reserve(64 << 10);
            match read_into_spare(&self.stream, &mut self.rbuf) {
                Ok(0) => {
                    return Err(format!("{}{} closed the connection (the run is ending?)", inner.lost, inner.what))
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(e) => return Err(format!("{}the connection to {} failed: {e}", inner.lost, inner.what)),
            }
        }
    }

    /// Hand out every whole reply read so far; whether the one to `id` was among them.
    fn hand_out(&mut self, inner: &Inner, id: u64) -> Result<bool, String> {
        let mut mine = false;
        loop {
            match frame::decode(&mut self.rbuf) {
                Ok(Some(Frame { kind, id: rid, payload })) => {
                    let payload = if kind == frame::PART {
                        self.parts.entry(rid).or_default().extend_from_slice(&payload);
                        continue;
                    } else if let Some(mut acc) = self.parts.remove(&rid) {
                        acc.extend_from_slice(&payload);
                        acc.freeze()
                    } else {
                        payload
                    };
                    let mut st = inner.state();
                    if st.wanted.remove(&rid) {
                        st.answers.insert(rid, Ok((kind, payload)));
                        mine |= rid == id;
                        drop(st);
                        inner.changed.notify_all();
                    }
                }
                Ok(None) => return Ok(mine),
                Err(e) => return Err(format!("{}{} sent a bad frame: {e}", inner.lost, inner.what)),
            }
        }
    }
}

/// `poll` of one descriptor for at most `ms` milliseconds (-1: no limit).
fn poll_in(pfd: &mut libc::pollfd, ms: i32) -> i32 {
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(pfd, 1, ms) }
}

/// The environment variable that sets [`reply_spin`], in microseconds.
pub const REPLY_SPIN_ENV: &str = "DRAGON_REPLY_SPIN_US";
/// How long a caller waiting for its reply polls for it before sleeping,
/// unless [`REPLY_SPIN_ENV`] says otherwise (as a channel's receive spins
/// before it sleeps, `channels_core::channel::DEFAULT_SPIN`, but longer: a
/// reply from another node takes a network round trip).
pub const DEFAULT_REPLY_SPIN: Duration = Duration::from_micros(60);

/// How long a caller waiting for its reply polls for it before sleeping
/// (read once per process).
pub fn reply_spin() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        std::env::var(REPLY_SPIN_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(DEFAULT_REPLY_SPIN, Duration::from_micros)
    })
}

/// A reply frame as the result of a call.
fn answer(a: Answer) -> Result<Bytes, TcpError> {
    match a {
        Ok((proto::OK, p)) => Ok(p),
        Ok((proto::ERROR, p)) => {
            let (code, message) = proto::parse_error(&p);
            Err(TcpError::Remote { code, message })
        }
        Ok((k, _)) => Err(TcpError::Protocol(format!("unexpected reply kind {k}"))),
        Err(e) => Err(e),
    }
}

fn write_all_vectored(w: &Sock, parts: &[&[u8]]) -> io::Result<()> {
    let mut bufs: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    while !bufs.is_empty() {
        let slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            if bufs[0].len() <= n {
                n -= bufs[0].len();
                bufs.remove(0);
            } else {
                bufs[0] = &bufs[0][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

/// Read what is there into `buf`'s spare capacity (no zero-filled
/// temporary, no copy).
fn read_into_spare(stream: &Sock, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
    // capacity, which is valid for writes; the bytes it wrote are then
    // initialised, and only those are added to the length.
    let n = unsafe { libc::read(stream.fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: `n` bytes past the length were just written (above).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The service sees the connection end at once.
        self.writer.get_mut().unwrap_or_else(|e| e.into_inner()).shutdown();
    }
}

/// A direct connection notices a peer gone silent (its node cut off) as the
/// services' heartbeats do, within about `proto::SILENCE_LIMIT`: keepalive
/// probes every second after a second of silence, and unacknowledged data
/// given up on after the limit.
fn set_keepalive(s: &TcpStream) {
    let fd = s.as_raw_fd();
    let limit = proto::SILENCE_LIMIT.as_secs().max(2) as libc::c_int;
    let set = |level: libc::c_int, name: libc::c_int, v: libc::c_int| {
        // SAFETY: a valid socket and a c_int option value, for the duration of the call.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, limit - 1);
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, limit * 1000);
}
