//! A framed connection driven by a mio event loop: the building block of
//! the node services' links (TCP between nodes, unix sockets to the
//! processes of a node).
//!
//! Reading decodes whole frames and puts chunked messages back together
//! ([`frame::PART`]); writing keeps a queue of byte buffers and hands the
//! kernel several at once (`writev`), so a payload given as [`Bytes`] is
//! never copied on its way out. A [`Writer`] lets another thread send on
//! the link: straight to the socket when nothing is queued ahead of it,
//! so that a reply made on a waiting thread does not first wake the event
//! loop.

use crate::frame::{self, Frame, FrameError};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What a link runs over.
pub trait Stream: Read + Write + mio::event::Source + AsRawFd + Send {}
impl<T: Read + Write + mio::event::Source + AsRawFd + Send> Stream for T {}

/// Largest message a link puts back together from parts: beyond it the
/// peer is broken or hostile and the link is dropped.
pub const MAX_MESSAGE: usize = 1 << 34;

/// Why a link is unusable.
#[derive(Debug)]
pub enum LinkError {
    /// The peer closed the connection.
    Closed,
    /// The connection failed.
    Io(io::Error),
    /// The peer sent something that is not a frame.
    Frame(FrameError),
    /// The peer's chunked message went over [`MAX_MESSAGE`].
    TooLong(usize),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Closed => write!(f, "the connection was closed"),
            LinkError::Io(e) => write!(f, "the connection failed: {e}"),
            LinkError::Frame(e) => write!(f, "protocol error: {e}"),
            LinkError::TooLong(n) => write!(f, "protocol error: a message of {n} bytes or more"),
        }
    }
}

impl std::error::Error for LinkError {}

/// What a link has to write, shared with its [`Writer`]s.
#[derive(Default)]
struct Out {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Set (under the lock) when the link is dropped, before its socket
    /// closes: a writer never writes to a descriptor that may be reused.
    closed: bool,
    /// Messages held back ([`Link::send_late`]), a frame each: they go out
    /// just before the next message queued.
    late: Vec<Bytes>,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.queue.push_back(b);
        }
    }

    /// Queue what was held back.
    fn release_late(&mut self) {
        for b in std::mem::take(&mut self.late) {
            self.push(b);
        }
    }

    /// Queue a message as frames: `head` then `body` as its payload.
    /// Messages over [`frame::CHUNK`] go out as several frames.
    fn frames(&mut self, kind: u8, id: u64, head: &[u8], body: Bytes) {
        self.release_late();
        let total = head.len() + body.len();
        if total <= frame::CHUNK {
            self.push(frame::header(kind, id, total));
            if !head.is_empty() {
                self.push(Bytes::copy_from_slice(head));
            }
            self.push(body);
            return;
        }
        // The head goes in the first frame, before the body's first bytes;
        // the body is never copied.
        let mut rest = body;
        if !head.is_empty() {
            let first = rest.split_to((frame::CHUNK - head.len().min(frame::CHUNK)).min(rest.len()));
            self.push(frame::header(frame::PART, id, head.len() + first.len()));
            self.push(Bytes::copy_from_slice(head));
            self.push(first);
        }
        while rest.len() > frame::CHUNK {
            let piece = rest.split_to(frame::CHUNK);
            self.push(frame::header(frame::PART, id, piece.len()));
            self.push(piece);
        }
        self.push(frame::header(kind, id, rest.len()));
        self.push(rest);
    }

    /// Write as much as the kernel takes. `Ok(true)`: everything is out.
    fn write_to(&mut self, w: &mut dyn Write) -> Result<bool, LinkError> {
        while !self.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = self.queue.iter().take(64).map(|b| IoSlice::new(b)).collect();
            match w.write_vectored(&slices) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(mut n) => {
                    self.bytes -= n;
                    while n > 0 {
                        let front = self.queue.front_mut().expect("written bytes were queued");
                        if front.len() <= n {
                            n -= front.len();
                            self.queue.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
        Ok(true)
    }
}

fn lock(out: &Mutex<Out>) -> MutexGuard<'_, Out> {
    out.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends messages on a [`Link`] from any thread (see [`Link::writer`]).
#[derive(Clone)]
pub struct Writer {
    out: Arc<Mutex<Out>>,
    fd: RawFd,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("fd", &self.fd).finish_non_exhaustive()
    }
}

impl Writer {
    /// Send a message as [`Link::send`] does. With nothing queued ahead it
    /// is written here and now, as far as the socket takes it; what is
    /// left (or all of it, behind earlier messages) is written by the
    /// link's event loop when the socket has room, which the kernel tells
    /// it because this write, or the earlier one, found the socket full.
    /// Dropped without a word once the link is gone (its peer is then
    /// gone too, or going). A failed write is left for the event loop,
    /// which meets the same failure on the socket.
    pub fn send(&self, kind: u8, id: u64, head: &[u8], body: Bytes) {
        let mut out = lock(&self.out);
        if out.closed {
            return;
        }
        let idle = out.queue.is_empty();
        out.frames(kind, id, head, body);
        if idle {
            // SAFETY: `fd` is the link's socket, open while `closed` is
            // false and the lock held (the link sets `closed` under the
            // lock before its stream is dropped); `ManuallyDrop` keeps
            // this borrowed descriptor from being closed here.
            let mut sock = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.fd) });
            let _ = out.write_to(&mut *sock);
        }
    }
}

/// One framed connection.
pub struct Link {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    out: Arc<Mutex<Out>>,
    parts: HashMap<u64, BytesMut>,
    /// When a byte last arrived.
    pub heard: Instant,
    /// Largest frame accepted (lowered before authentication).
    pub max_frame: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("queued", &self.queued()).finish_non_exhaustive()
    }
}

impl Link {
    /// A link over `stream` (already non-blocking and registered, or about to be).
    pub fn new(stream: Box<dyn Stream>) -> Link {
        Link {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
            out: Arc::default(),
            parts: HashMap::new(),
            heard: Instant::now(),
            max_frame: frame::MAX_FRAME,
        }
    }

    /// A link over `stream` whose first bytes were already read into `rbuf`.
    pub fn with_buffer(stream: Box<dyn Stream>, rbuf: BytesMut) -> Link {
        let mut l = Link::new(stream);
        l.rbuf.extend_from_slice(&rbuf);
        l
    }

    /// The stream, to (re)register or deregister it.
    pub fn stream(&mut self) -> &mut dyn Stream {
        &mut *self.stream
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        lock(&self.out).bytes
    }

    /// A handle that sends on this link from another thread.
    pub fn writer(&self) -> Writer {
        Writer { out: self.out.clone(), fd: self.stream.as_raw_fd() }
    }

    /// Read what the kernel has, then decode every whole frame into `into`.
    /// `Err` means the link is finished (frames decoded before the error
    /// are still in `into`).
    pub fn read(&mut self, into: &mut Vec<Frame>) -> Result<(), LinkError> {
        let mut closed = false;
        loop {
            // Room for the rest of a frame begun, all at once: growing the
            // buffer piece by piece would copy a large frame's first bytes
            // again at every step while an earlier frame still holds the
            // old buffer.
            let want = self.missing();
            if self.rbuf.capacity() - self.rbuf.len() < (16 << 10).max(want) {
                self.rbuf.reserve((64 << 10).max(want));
            }
            let spare = self.rbuf.spare_capacity_mut();
            // SAFETY: `read` only writes into the buffer it is given; the
            // bytes it reports written are then initialised, and only those
            // are added to the length below.
            let buf = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), spare.len()) };
            match self.stream.read(buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    // SAFETY: `read` initialised `n` bytes past the length.
                    unsafe { self.rbuf.set_len(self.rbuf.len() + n) };
                    self.heard = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
        loop {
            if self.rbuf.len() >= 4 {
                let len = u32::from_le_bytes(self.rbuf[..4].try_into().expect("4 bytes")) as usize;
                if len > self.max_frame {
                    return Err(LinkError::Frame(FrameError::TooLong(len)));
                }
            }
            match frame::decode(&mut self.rbuf) {
                Ok(Some(f)) => {
                    if let Some(f) = self.assemble(f)? {
                        into.push(f);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(LinkError::Frame(e)),
            }
        }
        if closed {
            return Err(LinkError::Closed);
        }
        Ok(())
    }

    /// Bytes still to come of the last frame begun in the buffer (0 if
    /// its header is not whole yet; at most a frame's limit).
    fn missing(&self) -> usize {
        let mut at = 0;
        while let Some(l) = self.rbuf.get(at..at + 4) {
            let end = at + 4 + (u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize).min(self.max_frame);
            if end > self.rbuf.len() {
                return end - self.rbuf.len();
            }
            at = end;
        }
        0
    }

    fn assemble(&mut self, f: Frame) -> Result<Option<Frame>, LinkError> {
        if f.kind == frame::PART {
            let acc = self.parts.entry(f.id).or_default();
            if acc.len() + f.payload.len() > MAX_MESSAGE {
                return Err(LinkError::TooLong(MAX_MESSAGE));
            }
            acc.extend_from_slice(&f.payload);
            return Ok(None);
        }
        match self.parts.remove(&f.id) {
            None => Ok(Some(f)),
            Some(mut acc) => {
                if acc.len() + f.payload.len() > MAX_MESSAGE {
                    return Err(LinkError::TooLong(MAX_MESSAGE));
                }
                acc.extend_from_slice(&f.payload);
                Ok(Some(Frame { kind: f.kind, id: f.id, payload: acc.freeze() }))
            }
        }
    }

    /// Queue a message: `head` then `body` as its payload (either may be
    /// empty). Messages over [`frame::CHUNK`] go out as several frames.
    pub fn send(&mut self, kind: u8, id: u64, head: &[u8], body: Bytes) {
        lock(&self.out).frames(kind, id, head, body);
    }

    /// Queue a small message (`head` then `body`, at most
    /// [`frame::CHUNK`] bytes) to go out just before the next message sent
    /// on this link, or at once once `most` messages are held: `true` when
    /// they were queued (then flush).
    pub fn send_late(&mut self, kind: u8, id: u64, head: &[u8], body: Bytes, most: usize) -> bool {
        assert!(head.len() + body.len() <= frame::CHUNK, "a message held back must fit one frame");
        let mut f = BytesMut::new();
        frame::encode_parts(&mut f, kind, id, &[head, &body]);
        let mut out = lock(&self.out);
        out.late.push(f.freeze());
        if out.late.len() < most {
            return false;
        }
        out.release_late();
        true
    }

    /// Messages held back by [`Link::send_late`].
    pub fn held(&self) -> usize {
        lock(&self.out).late.len()
    }

    /// Queue bytes that are not a frame (for a connection that ends with
    /// a raw answer).
    pub fn send_raw(&mut self, b: Bytes) {
        let mut out = lock(&self.out);
        out.release_late();
        out.push(b);
    }

    /// Write as much as the kernel takes. `Ok(true)`: everything is out.
    pub fn flush(&mut self) -> Result<bool, LinkError> {
        lock(&self.out).write_to(&mut *self.stream)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        lock(&self.out).closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::UnixStream;

    fn pair() -> (Link, Link) {
        let (a, b) = UnixStream::pair().unwrap();
        (Link::new(Box::new(a)), Link::new(Box::new(b)))
    }

    /// Pump `from` into `to` until `want` frames arrived.
    fn pump(from: &mut Link, to: &mut Link, want: usize) -> Vec<Frame> {
        let mut got = Vec::new();
        while got.len() < want {
            from.flush().unwrap();
            to.read(&mut got).unwrap();
        }
        got
    }

    #[test]
    fn small_and_chunked_messages_arrive_whole_and_in_order() {
        let (mut a, mut b) = pair();
        let big: Vec<u8> = (0..frame::CHUNK * 2 + 12345).map(|i| (i % 251) as u8).collect();
        a.send(7, 1, b"head", Bytes::from_static(b"body"));
        a.send(8, 2, &[], Bytes::from(big.clone()));
        a.send(9, 3, &[1, 2, 3], Bytes::from(big.clone()));
        a.send(10, 4, &[], Bytes::new());
        let got = pump(&mut a, &mut b, 4);
        assert_eq!((got[0].kind, got[0].id, &got[0].payload[..]), (7, 1, &b"headbody"[..]));
        assert_eq!((got[1].kind, got[1].id), (8, 2));
        assert_eq!(got[1].payload, big);
        let mut want = vec![1, 2, 3];
        want.extend_from_slice(&big);
        assert_eq!(got[2].payload, want);
        assert!(got[3].payload.is_empty());
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn a_writer_on_another_thread_writes_at_once_or_behind_what_is_queued() {
        let (mut a, mut b) = pair();
        let w = a.writer();
        // Nothing queued: written by the writer itself, no flush needed.
        std::thread::spawn({
            let w = w.clone();
            move || w.send(1, 1, b"now", Bytes::new())
        })
        .join()
        .unwrap();
        assert_eq!(a.queued(), 0);
        let mut got = Vec::new();
        while got.is_empty() {
            b.read(&mut got).unwrap();
        }
        assert_eq!((got[0].id, &got[0].payload[..]), (1, &b"now"[..]));
        // Something queued: the writer's message goes behind it, whole.
        a.send(2, 2, b"first", Bytes::new());
        w.send(3, 3, b"second", Bytes::new());
        assert!(a.queued() > 0);
        let got = pump(&mut a, &mut b, 2);
        assert_eq!((got[0].id, got[1].id), (2, 3));
        // More than the socket holds: the writer writes what fits, the
        // link's flush the rest.
        let big: Vec<u8> = (0..frame::CHUNK * 3 + 7).map(|i| (i % 253) as u8).collect();
        w.send(4, 4, b"h", Bytes::from(big.clone()));
        let got = pump(&mut a, &mut b, 1);
        assert_eq!(got[0].id, 4);
        assert_eq!(&got[0].payload[..1], b"h");
        assert_eq!(&got[0].payload[1..], &big[..]);
        // The link gone, its writer writes nothing (the descriptor may be
        // another's by then).
        drop(a);
        w.send(5, 5, b"late", Bytes::new());
        let mut got = Vec::new();
        assert!(matches!(b.read(&mut got), Err(LinkError::Closed)));
        assert!(got.is_empty());
    }

    #[test]
    fn a_message_held_back_goes_out_before_the_next_or_when_enough_are_held() {
        let (mut a, mut b) = pair();
        assert!(!a.send_late(1, 1, b"late", Bytes::new(), 3));
        assert!(!a.send_late(1, 2, &[], Bytes::from_static(b"later"), 3));
        assert_eq!((a.held(), a.queued()), (2, 0));
        assert!(a.flush().unwrap());
        let mut got = Vec::new();
        assert!(matches!(b.read(&mut got), Ok(())));
        assert!(got.is_empty(), "nothing held back goes out alone");
        // The next message takes them along, in front of it; so does a
        // writer's.
        a.writer().send(2, 3, b"now", Bytes::new());
        assert_eq!(a.held(), 0);
        let got = pump(&mut a, &mut b, 3);
        let ids: Vec<u64> = got.iter().map(|f| f.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!((&got[0].payload[..], &got[1].payload[..]), (&b"late"[..], &b"later"[..]));
        // Enough held: queued at once.
        assert!(!a.send_late(1, 4, b"x", Bytes::new(), 2));
        assert!(a.send_late(1, 5, b"y", Bytes::new(), 2));
        assert_eq!(a.held(), 0);
        let got = pump(&mut a, &mut b, 2);
        assert_eq!((got[0].id, got[1].id), (4, 5));
    }

    #[test]
    fn an_oversized_frame_and_a_closed_peer_are_errors() {
        let (mut a, mut b) = pair();
        b.max_frame = 1024;
        a.send(1, 1, &[], Bytes::from(vec![0u8; 2048]));
        a.flush().unwrap();
        let mut got = Vec::new();
        assert!(matches!(b.read(&mut got), Err(LinkError::Frame(FrameError::TooLong(_)))));
        let (a, mut b) = pair();
        drop(a);
        assert!(matches!(b.read(&mut got), Err(LinkError::Closed)));
    }
}
