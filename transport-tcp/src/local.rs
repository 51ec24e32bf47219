//! A process's connection to its own node's service (the `runtime`
//! crate's node service), over the service's abstract unix socket.
//!
//! Every request to the service starts with the index of the node it is
//! for (`node u32`), then the payload of [`crate::proto`]; the service
//! serves it (its own node) or carries it to that node's service. One
//! connection per process carries any number of requests at once, from
//! any number of threads: each waits for the reply with its id, which a
//! reader thread hands over. If the service goes away, every call fails.

use crate::client::TcpError;
use crate::frame::{self, Frame};
use crate::proto;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

type Answer = Result<(u8, Bytes), TcpError>;

#[derive(Default)]
struct Slot {
    answer: Mutex<Option<Answer>>,
    ready: Condvar,
}

struct Inner {
    writer: Mutex<UnixStream>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    /// Why the connection ended, once it has.
    dead: Mutex<Option<String>>,
    name: String,
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

impl ServiceClient {
    /// Connect to the service listening on abstract socket `name`.
    pub fn connect(name: &str) -> Result<ServiceClient, TcpError> {
        let stream = connect_abstract(name).map_err(|e| {
            TcpError::Io(io::Error::new(e.kind(), format!("cannot reach this node's dragon service ({name}): {e}")))
        })?;
        let reader = stream.try_clone()?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dead: Mutex::new(None),
            name: name.to_owned(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new().name("dragon-service-rx".into()).spawn(move || read_loop(reader, weak))?;
        Ok(ServiceClient { inner })
    }

    fn fail_all(inner: &Inner, why: &str) {
        *inner.dead.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
        let slots: Vec<Arc<Slot>> =
            inner.slots.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, s)| s).collect();
        for s in slots {
            *s.answer.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Err(TcpError::Io(io::Error::new(io::ErrorKind::BrokenPipe, why.to_owned()))));
            s.ready.notify_all();
        }
    }

    fn dead(&self) -> Option<TcpError> {
        let d = self.inner.dead.lock().unwrap_or_else(|e| e.into_inner());
        d.as_ref().map(|why| TcpError::Io(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())))
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
        let mut a = t.slot.answer.lock().unwrap_or_else(|e| e.into_inner());
        while a.is_none() {
            match hook.as_mut() {
                None => a = t.slot.ready.wait(a).unwrap_or_else(|e| e.into_inner()),
                Some((node, every, keep_waiting)) => {
                    a = t.slot.ready.wait_timeout(a, *every).unwrap_or_else(|e| e.into_inner()).0;
                    if a.is_some() {
                        break;
                    }
                    drop(a);
                    let go_on = keep_waiting();
                    if !go_on {
                        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&t.id);
                        let _ = self.write(proto::CANCEL, t.id, &node.to_le_bytes(), &[]);
                        return Err(TcpError::Interrupted);
                    }
                    a = t.slot.answer.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        answer(a.take().expect("checked"))
    }

    /// Send a request (`head` then `payload`, as [`ServiceClient::call_raw`])
    /// without waiting for its reply: the [`Ticket`] gives the reply when
    /// it has come. Requests are carried in the order they are submitted.
    pub fn submit(&self, kind: u8, head: &[u8], payload: &[u8]) -> Result<Ticket, TcpError> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed); // unique ids only; nothing to order
        let slot = Arc::new(Slot::default());
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).insert(id, slot.clone());
        if let Err(e) = self.write(kind, id, head, payload) {
            self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        // The reader may have failed every slot before ours was listed.
        if let Some(e) = self.dead() {
            self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        Ok(Ticket { id, slot })
    }

    /// Send a request whose reply nobody waits for (its id is never reused).
    pub fn notify(&self, node: u32, kind: u8, payload: &[u8]) -> Result<(), TcpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed); // unique ids only
        self.write(kind, id, &node.to_le_bytes(), payload)
    }

    fn write(&self, kind: u8, id: u64, head: &[u8], payload: &[u8]) -> Result<(), TcpError> {
        let total = head.len() + payload.len();
        let mut w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let r = if total <= frame::CHUNK {
            let h = frame::header(kind, id, total);
            write_all_vectored(&mut w, &[&h, head, payload])
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
                r = write_all_vectored(&mut w, &[&frame::header(frame::PART, id, frame::CHUNK), h, p]);
                off += frame::CHUNK;
            }
            let [h, p] = piece(off, total - off);
            r.and_then(|()| write_all_vectored(&mut w, &[&frame::header(kind, id, total - off), h, p]))
        };
        r.map_err(|e| TcpError::Io(io::Error::new(e.kind(), format!("this node's dragon service went away: {e}"))))
    }
}

/// A request sent with [`ServiceClient::submit`] whose reply is awaited.
pub struct Ticket {
    id: u64,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Ticket {
    /// The reply, if it has come (then it is taken: ask once).
    pub fn try_take(&self) -> Option<Result<Bytes, TcpError>> {
        self.slot.answer.lock().unwrap_or_else(|e| e.into_inner()).take().map(answer)
    }

    /// Wait at most until `deadline` (`None`: no limit) for the reply;
    /// `None` if it has not come by then.
    pub fn wait(&self, deadline: Option<std::time::Instant>) -> Option<Result<Bytes, TcpError>> {
        let mut a = self.slot.answer.lock().unwrap_or_else(|e| e.into_inner());
        while a.is_none() {
            match deadline {
                None => a = self.slot.ready.wait(a).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    a = self.slot.ready.wait_timeout(a, left).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        a.take().map(answer)
    }
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

fn write_all_vectored(w: &mut UnixStream, parts: &[&[u8]]) -> io::Result<()> {
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
fn read_into_spare(stream: &mut UnixStream, buf: &mut BytesMut) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
    // capacity, which is valid for writes; the bytes it wrote are then
    // initialised, and only those are added to the length.
    let n = unsafe { libc::read(stream.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: `n` bytes past the length were just written (above).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

fn read_loop(mut stream: UnixStream, inner: std::sync::Weak<Inner>) {
    let mut rbuf = BytesMut::with_capacity(64 << 10);
    let mut parts: HashMap<u64, BytesMut> = HashMap::new();
    let why = 'outer: loop {
        loop {
            match frame::decode(&mut rbuf) {
                Ok(Some(Frame { kind, id, payload })) => {
                    let payload = if kind == frame::PART {
                        parts.entry(id).or_default().extend_from_slice(&payload);
                        continue;
                    } else if let Some(mut acc) = parts.remove(&id) {
                        acc.extend_from_slice(&payload);
                        acc.freeze()
                    } else {
                        payload
                    };
                    let Some(inner) = inner.upgrade() else { return };
                    let slot = inner.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if let Some(s) = slot {
                        *s.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ok((kind, payload)));
                        s.ready.notify_all();
                    }
                }
                Ok(None) => break,
                Err(e) => break 'outer format!("this node's dragon service sent a bad frame: {e}"),
            }
        }
        rbuf.reserve(64 << 10);
        match read_into_spare(&mut stream, &mut rbuf) {
            Ok(0) => break "this node's dragon service closed the connection (the run is ending?)".to_owned(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break format!("the connection to this node's dragon service failed: {e}"),
        }
        if inner.strong_count() == 0 {
            return;
        }
    };
    if let Some(inner) = inner.upgrade() {
        ServiceClient::fail_all(&inner, &why);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the reader thread's read.
        let w = self.writer.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}
