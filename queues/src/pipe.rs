//! [`pipe`] and [`Connection`]: Python's `multiprocessing.Pipe` on
//! channels, one per direction.
//!
//! End of file comes from the channels' attachment table: each direction's
//! channel is in pipe mode (`disconnect_on_no_senders`), so once every
//! attachment of the sending end is gone (the end was closed or dropped,
//! or its process died, even by `SIGKILL`), the receiving end gets what is
//! left and then [`PipeError::Eof`]. A closing end also sends a control
//! message, so a receiver that sleeps notices at once (the Python
//! package's connections do the same; they track an end's lifetime with a
//! socket pair instead, for `fileno()`).
//!
//! As with queues, keep an end alive until the process its handle went to
//! has attached.

use crate::channel::{Fault, QueueChannel, ShmChannel};
use crate::error::{PipeError, QueueError};
use crate::handle::{Mode, QueueHandle, QueueKind};
use crate::queue::{deadline, left, lock, send_retrying, SLOT_SIZE};
use crate::wire::{self, Item, Tag};
use channels_core::{ChannelOptions, Roles};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Ring slots per direction.
pub const PIPE_CAPACITY: u64 = 256;
/// Attachments per direction's channel.
pub const PIPE_MAX_ATTACHMENTS: u32 = 64;

struct Ends {
    send: Option<ShmChannel>,
    recv: Option<ShmChannel>,
    /// A message taken by `poll`, kept for the next receive.
    inbox: Inbox<Item>,
}

/// The receiving rules of a pipe end, for this crate's [`Connection`] and
/// for a binding that receives its own objects and follows the other
/// end's lifetime its own way (the Python package's connections hold a
/// socket of a socket pair for it):
///
/// - a message kept ([`Inbox::keep`]: taken by a poll, or too long for
///   the caller's buffer) comes first;
/// - control messages (a closing end's wake-up) are skipped;
/// - the end of file ([`PipeError::Eof`]) comes once the other end is gone
///   and nothing is left to read: what it sent before it closed is
///   received first.
#[derive(Debug)]
pub struct Inbox<T> {
    kept: Option<(Tag, T)>,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox { kept: None }
    }
}

impl<T> Inbox<T> {
    /// Nothing kept.
    pub fn new() -> Inbox<T> {
        Inbox::default()
    }

    /// Receive the next message, waiting at most `timeout` in all
    /// ([`PipeError::Timeout`]). `recv(t)` receives one message waiting at
    /// most `t` (`None` if nothing came, or if it stopped early to have the
    /// other end looked at; [`Fault::Closed`] for the end of file);
    /// `gone()` says whether the other end is gone and nothing is left to
    /// read, and is asked whenever `recv` brought nothing or a control
    /// message.
    pub fn recv_with(
        &mut self,
        timeout: Option<Duration>,
        mut recv: impl FnMut(Option<Duration>) -> Result<Option<(Tag, T)>, Fault>,
        mut gone: impl FnMut() -> Result<bool, Fault>,
    ) -> Result<(Tag, T), PipeError> {
        if let Some(m) = self.kept.take() {
            return Ok(m);
        }
        let end = deadline(timeout);
        loop {
            let got = match recv(left(end)) {
                Ok(Some((tag, m))) if tag != Tag::Control => return Ok((tag, m)),
                Ok(Some(_)) => true,
                Ok(None) => false,
                Err(Fault::Closed) => return Err(PipeError::Eof),
                Err(e) => return Err(PipeError::Channel(e)),
            };
            if gone().map_err(PipeError::Channel)? {
                return Err(PipeError::Eof);
            }
            // After a control message, look again at once (more may follow).
            if !got && left(end) == Some(Duration::ZERO) {
                return Err(PipeError::Timeout);
            }
        }
    }

    /// Whether there is something to receive (a message, or the end of
    /// file), waiting at most `timeout`; a message taken to find out is
    /// kept for the next receive. As [`Inbox::recv_with`].
    pub fn poll_with(
        &mut self,
        timeout: Option<Duration>,
        recv: impl FnMut(Option<Duration>) -> Result<Option<(Tag, T)>, Fault>,
        gone: impl FnMut() -> Result<bool, Fault>,
    ) -> Result<bool, PipeError> {
        if self.kept.is_some() {
            return Ok(true);
        }
        match self.recv_with(timeout, recv, gone) {
            Ok(m) => {
                self.kept = Some(m);
                Ok(true)
            }
            Err(PipeError::Eof) => Ok(true),
            Err(PipeError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Keep a message for the next receive (in front of everything else).
    pub fn keep(&mut self, tag: Tag, m: T) {
        self.kept = Some((tag, m));
    }

    /// Whether a message is kept.
    pub fn has_kept(&self) -> bool {
        self.kept.is_some()
    }

    /// Drop what is kept.
    pub fn clear(&mut self) {
        self.kept = None;
    }
}

/// One end of a [`pipe`].
pub struct Connection {
    ends: Mutex<Option<Ends>>,
    readable: bool,
    writable: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.closed() {
            "closed".to_owned()
        } else {
            format!("{}{}", if self.readable { "r" } else { "" }, if self.writable { "w" } else { "" })
        };
        write!(f, "Connection({state})")
    }
}

fn pipe_channel(roles: Roles) -> Result<ShmChannel, QueueError> {
    let opts = ChannelOptions::new()
        .capacity(PIPE_CAPACITY)
        .slot_size(SLOT_SIZE)
        .max_attachments(PIPE_MAX_ATTACHMENTS)
        .disconnect_on_no_senders(true)
        .roles(roles);
    Ok(ShmChannel::create(&opts)?)
}

/// Two connected ends. Duplex: each end sends and receives. Not duplex:
/// `(reader, writer)`.
pub fn pipe(duplex: bool) -> Result<(Connection, Connection), QueueError> {
    let c1_send = pipe_channel(Roles::SEND)?;
    let c1_recv = c1_send.attach_again(Roles::RECV)?;
    if !duplex {
        return Ok((Connection::new(None, Some(c1_recv)), Connection::new(Some(c1_send), None)));
    }
    let c2_send = pipe_channel(Roles::SEND)?;
    let c2_recv = c2_send.attach_again(Roles::RECV)?;
    Ok((Connection::new(Some(c1_send), Some(c2_recv)), Connection::new(Some(c2_send), Some(c1_recv))))
}

impl Connection {
    fn new(send: Option<ShmChannel>, recv: Option<ShmChannel>) -> Connection {
        Connection {
            readable: recv.is_some(),
            writable: send.is_some(),
            ends: Mutex::new(Some(Ends { send, recv, inbox: Inbox::new() })),
        }
    }

    /// Attach to the end `handle` names (in another process).
    pub fn attach(handle: &QueueHandle) -> Result<Connection, QueueError> {
        handle.expect(QueueKind::Connection, "Connection")?;
        let send = handle.channel.as_ref().map(|h| ShmChannel::attach(h, Roles::SEND)).transpose()?;
        let recv = handle.recv.as_ref().map(|h| ShmChannel::attach(h, Roles::RECV)).transpose()?;
        Ok(Connection::new(send, recv))
    }

    /// The handle another process attaches this end by
    /// ([`Connection::attach`]); `None` once closed.
    pub fn handle(&self) -> Option<QueueHandle> {
        let g = lock(&self.ends);
        let e = g.as_ref()?;
        Some(QueueHandle {
            kind: QueueKind::Connection,
            mode: Mode::Unbounded,
            maxsize: 0,
            channel: e.send.as_ref().map(QueueChannel::handle),
            recv: e.recv.as_ref().map(QueueChannel::handle),
            sem: None,
            tasks: None,
        })
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether this end was closed.
    pub fn closed(&self) -> bool {
        lock(&self.ends).is_none()
    }

    /// Send `data` (received as [`Tag::Bytes`]: Python's `recv` returns a
    /// `bytes` object), waiting while the channel is full.
    pub fn send(&self, data: &[u8]) -> Result<(), PipeError> {
        self.send_tagged(Tag::Bytes, data)
    }

    /// Send raw bytes (Python's `send_bytes`/`recv_bytes`).
    pub fn send_bytes(&self, data: &[u8]) -> Result<(), PipeError> {
        self.send_tagged(Tag::Raw, data)
    }

    /// Send `payload` under `tag`.
    pub fn send_tagged(&self, tag: Tag, payload: &[u8]) -> Result<(), PipeError> {
        if !self.writable {
            return Err(PipeError::WrongDirection("connection is read-only"));
        }
        let pre = wire::prefix(tag, payload)?.map(|p| [p]);
        let parts: &[&[u8]] = match &pre {
            Some(p) => &[p, payload],
            None => &[payload],
        };
        // The channel is reached through the lock, but the (possibly long)
        // send runs without it: a receive on this end may go on meanwhile.
        let ch = {
            let g = lock(&self.ends);
            let e = g.as_ref().ok_or(PipeError::Closed)?;
            e.send.as_ref().expect("writable").channel().clone()
        };
        let ch = Borrowed(ch);
        send_retrying(&ch, parts, None, false).map_err(PipeError::Channel)
    }

    /// Receive the next message, waiting for one; [`PipeError::Eof`] once
    /// the other end is gone and nothing is left.
    pub fn recv(&self) -> Result<Item, PipeError> {
        self.recv_timeout(None)
    }

    /// Receive the next message, waiting at most `timeout`
    /// ([`PipeError::Timeout`]).
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Item, PipeError> {
        self.receive(|inbox, ch| inbox.recv_with(timeout, recv_on(ch), || Ok(false)).map(|(_, m)| m))
    }

    /// Whether there is something to receive (a message, or the end of
    /// file), waiting at most `timeout` (`None`: no limit). A message taken
    /// to find out is kept for the next receive.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, PipeError> {
        self.receive(|inbox, ch| inbox.poll_with(timeout, recv_on(ch), || Ok(false)))
    }

    /// Run `f` on this end's inbox and receiving channel. The inbox is
    /// taken out of the lock meanwhile (a receive may wait; a send on this
    /// end may go on), and put back after.
    fn receive<R>(&self, f: impl FnOnce(&mut Inbox<Item>, &Borrowed) -> Result<R, PipeError>) -> Result<R, PipeError> {
        if !self.readable {
            return Err(PipeError::WrongDirection("connection is write-only"));
        }
        let (mut inbox, ch) = {
            let mut g = lock(&self.ends);
            let e = g.as_mut().ok_or(PipeError::Closed)?;
            (std::mem::take(&mut e.inbox), Borrowed(e.recv.as_ref().expect("readable").channel().clone()))
        };
        let r = f(&mut inbox, &ch);
        if let Some(e) = lock(&self.ends).as_mut() {
            if inbox.has_kept() {
                e.inbox = inbox;
            }
        }
        r
    }

    /// Close this end in this process: a receiver at the other end gets
    /// what was sent, then end of file (once no other process holds this
    /// end). Closing twice does nothing.
    pub fn close(&self) {
        let ends = lock(&self.ends).take();
        if let Some(e) = ends {
            if let Some(s) = e.send {
                // Wake a sleeping receiver: it looks for the end of file
                // once this attachment is gone.
                let _ = s.send_parts(&[&[wire::TAG_CONTROL]], Some(Duration::ZERO));
                drop(s);
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// An [`Inbox`] receive on this node's channel: the end of file is the
/// channel's (every sender gone).
fn recv_on(ch: &Borrowed) -> impl FnMut(Option<Duration>) -> Result<Option<(Tag, Item)>, Fault> + '_ {
    move |t| match ch.recv(t) {
        Ok(m) => {
            let item = Item::new(m);
            Ok(Some((item.tag(), item)))
        }
        Err(Fault::WouldBlock) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A clone of an end's channel used for one operation outside the lock
/// (the same attachment: no release when it goes).
struct Borrowed(channels_core::Channel);

impl QueueChannel for Borrowed {
    type Msg = channels_core::Message;

    fn send_parts(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault> {
        ShmChannel::send_parts_on(&self.0, parts, timeout)
    }

    fn recv(&self, timeout: Option<Duration>) -> Result<Self::Msg, Fault> {
        ShmChannel::recv_on(&self.0, timeout)
    }

    fn poll(&self) -> bool {
        self.0.is_readable()
    }

    fn peers(&self) -> u32 {
        self.0.attachment_count().saturating_sub(1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_full(&self) -> bool {
        self.0.is_full()
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }

    fn handle(&self) -> shm_primitives::Handle {
        self.0.handle()
    }
}
