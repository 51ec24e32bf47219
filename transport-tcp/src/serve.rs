//! Serving channel requests from another node on this node's channels.
//!
//! One [`Served`] per connection from another node holds that
//! connection's attachments (ids it chose, local to the connection) and
//! performs the requests of [`crate::proto`] on them with the shared-memory
//! transport. A request that can be answered at once is; one that must wait
//! (a receive on an empty channel, a send on a full one, a poll) runs on a
//! thread of its own and hands its reply to a [`Post`] when it is done.
//! That wait ends early when the connection goes (`gone`) or when the
//! request is cancelled.

use crate::proto::{self, take_u64, timeout_of};
use bytes::{BufMut, Bytes, BytesMut};
use shm_primitives::handle::{Handle, Kind};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport_abi::abi::{
    DragonChannelAttrs, DRAGON_EAGAIN, DRAGON_EBADMSG, DRAGON_EINVAL, DRAGON_EIO, DRAGON_EPROTO, DRAGON_ETIMEDOUT,
};
use transport_abi::export::{ChannelImpl, Failure, Timeout, TransportImpl};
use transport_shm::blocks::{Stores, TAG_BLOCK};
use transport_shm::plugin::{ShmChannel, ShmTransport};

/// A reply: frame kind (`proto::OK` or `proto::ERROR`), request id, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `proto::OK` or `proto::ERROR`.
    pub kind: u8,
    /// The request's id.
    pub id: u64,
    /// The payload, or its first part when `tail` is not empty.
    pub payload: Bytes,
    /// The rest of the payload: a large received message's bytes, in
    /// place in this node's block store (sent without a copy; an RDMA link
    /// lets the peer read them from there).
    pub tail: Bytes,
}

impl Reply {
    /// A success carrying `payload`.
    pub fn ok(id: u64, payload: impl Into<Bytes>) -> Reply {
        Reply { kind: proto::OK, id, payload: payload.into(), tail: Bytes::new() }
    }

    /// A success whose payload is `head` followed by `tail`.
    pub fn ok_parts(id: u64, head: impl Into<Bytes>, tail: Bytes) -> Reply {
        Reply { kind: proto::OK, id, payload: head.into(), tail }
    }

    /// A failure with an error code of the plugin ABI and a message.
    pub fn error(id: u64, code: i32, msg: &str) -> Reply {
        Reply { kind: proto::ERROR, id, payload: proto::error_payload(code, msg).into(), tail: Bytes::new() }
    }

    fn failure(id: u64, f: Failure) -> Reply {
        Reply::error(id, f.code, &f.message)
    }

    /// The error code, if this is an error reply.
    pub fn code(&self) -> Option<i32> {
        (self.kind == proto::ERROR && self.payload.len() >= 4)
            .then(|| i32::from_le_bytes(self.payload[..4].try_into().expect("4 bytes")))
    }
}

/// Where a waiting request's reply goes when it is ready.
pub type Post = Arc<dyn Fn(Reply) + Send + Sync>;

/// How long a waiting thread waits at a time before it checks that its
/// connection is still there and the request still wanted.
const SLICE: Duration = Duration::from_millis(200);

/// Run `op` with a timeout of `wait` in slices, ending early (EIO) when
/// `gone` says the requester went away.
pub fn sliced<T>(
    wait: Timeout,
    gone: &dyn Fn() -> bool,
    mut op: impl FnMut(Timeout) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match op(Some(left.map_or(SLICE, |l| l.min(SLICE)))) {
            Err(f) if f.code == DRAGON_ETIMEDOUT || f.code == DRAGON_EAGAIN => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Failure::new(DRAGON_ETIMEDOUT, f.message));
                }
                if gone() {
                    return Err(Failure::new(DRAGON_EIO, "the requester went away"));
                }
            }
            r => return r,
        }
    }
}

/// The attachments and waiting requests of one connection.
pub struct Served {
    /// This node's address, written into the handles of channels created here.
    address: String,
    /// This node's index, written into the handles of channels created here.
    node: u32,
    chans: HashMap<u64, Arc<ShmChannel>>,
    next_ch: u64,
    /// Set when the connection goes: every wait started for it ends.
    gone: Arc<AtomicBool>,
    /// Requests waiting on a thread, by id: set the flag to cancel.
    waiting: Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>,
    /// Block stores opened to copy out the blocks that messages name.
    stores: Arc<Mutex<Stores>>,
    /// Sends that came while an earlier send of the same attachment was
    /// waiting, by attachment: they go after it, in order (a key is
    /// present while a waiting thread serves that attachment's sends).
    behind: Arc<Mutex<HashMap<u64, VecDeque<Queued>>>>,
}

/// A send waiting for its turn behind an earlier one of its attachment.
struct Queued {
    id: u64,
    data: Bytes,
    deadline: Option<Instant>,
    cancel: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `run` (an operation that answers `DRAGON_EAGAIN`/`ETIMEDOUT` while
/// it cannot complete) for at most `wait`, in slices, until it completes
/// or `gone` says nobody wants it any more.
fn wait_out(id: u64, wait: Timeout, gone: &dyn Fn() -> bool, mut run: impl FnMut(Timeout) -> Reply) -> Reply {
    let mut out = None;
    let r = sliced(wait, gone, |slice| {
        let rep = run(slice);
        let code = rep.code();
        out = Some(rep);
        match code {
            Some(code) => Err(Failure::new(code, "timed out waiting on the channel")),
            None => Ok(()),
        }
    });
    match r {
        Err(e) if e.code == DRAGON_ETIMEDOUT || e.code == DRAGON_EIO => Reply::failure(id, e),
        _ => out.expect("ran at least once"),
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("attachments", &self.chans.len()).finish_non_exhaustive()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::Release);
    }
}

impl Served {
    /// Nothing attached yet; channels created through it get handles naming
    /// node `node` at `address`.
    pub fn new(node: u32, address: &str) -> Served {
        Served {
            address: address.to_owned(),
            node,
            chans: HashMap::new(),
            next_ch: 1,
            gone: Arc::new(AtomicBool::new(false)),
            waiting: Arc::new(Mutex::new(HashMap::new())),
            stores: Arc::new(Mutex::new(Stores::default())),
            behind: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Attachments held.
    pub fn attachments(&self) -> usize {
        self.chans.len()
    }

    /// End a waiting request (its reply, an error, is still posted), if it is still waiting.
    pub fn cancel(&self, id: u64) {
        if let Some(flag) = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Whether `kind` is a channel request this serves.
    pub fn serves(kind: u8) -> bool {
        matches!(
            kind,
            proto::PING
                | proto::ATTACH
                | proto::CREATE
                | proto::LEN
                | proto::DETACH
                | proto::DESTROY
                | proto::SEND
                | proto::RECV
                | proto::POLL
        )
    }

    /// Perform request (`kind`, `id`, `payload`): the reply if it is ready
    /// now, `None` if it will be handed to `post` by a waiting thread.
    pub fn handle(&mut self, shm: &ShmTransport, kind: u8, id: u64, payload: Bytes, post: &Post) -> Option<Reply> {
        let first = |p: &[u8]| take_u64(p).map(|(ch, _)| ch);
        Some(match kind {
            proto::PING => Reply::ok(id, Bytes::new()),
            proto::ATTACH => self.attach(shm, id, &payload),
            proto::CREATE => self.create(shm, id, &payload),
            proto::LEN => match first(&payload).and_then(|ch| self.chans.get(&ch)) {
                Some(ch) => Reply::ok(id, ch.len().to_le_bytes().to_vec()),
                None => no_such(id),
            },
            proto::DETACH => match first(&payload).and_then(|ch| self.chans.remove(&ch)) {
                Some(_) => Reply::ok(id, Bytes::new()),
                None => no_such(id),
            },
            proto::DESTROY => match first(&payload).and_then(|ch| self.chans.get(&ch)) {
                Some(ch) => match ch.destroy() {
                    Ok(()) => Reply::ok(id, Bytes::new()),
                    Err(e) => Reply::failure(id, e),
                },
                None => no_such(id),
            },
            proto::SEND | proto::RECV | proto::POLL => return self.op(kind, id, payload, post),
            k => Reply::error(id, DRAGON_EPROTO, &format!("unknown request kind {k}")),
        })
    }

    /// A send, receive or poll: answered now if it need not wait, else
    /// handed to a waiting thread (`None`).
    fn op(&mut self, kind: u8, id: u64, payload: Bytes, post: &Post) -> Option<Reply> {
        let Some((chid, rest)) = take_u64(&payload) else {
            return Some(Reply::error(id, DRAGON_EPROTO, "short request"));
        };
        let Some((tns, data)) = take_u64(rest) else {
            return Some(Reply::error(id, DRAGON_EPROTO, "short request"));
        };
        let Some(ch) = self.chans.get(&chid).cloned() else {
            return Some(no_such(id));
        };
        let events = match data.get(..4) {
            Some(e) if kind == proto::POLL => u32::from_le_bytes(e.try_into().expect("4 bytes")),
            None if kind == proto::POLL => return Some(Reply::error(id, DRAGON_EPROTO, "short request")),
            _ => 0,
        };
        let data = payload.slice(16..);
        let blocks = kind == proto::RECV && data.first().is_some_and(|f| f & proto::RECV_BLOCKS != 0);
        let stores = self.stores.clone();
        let run = move |ch: &ShmChannel, wait: Timeout| -> Reply {
            match kind {
                proto::SEND => ch.send(&data, wait).map(|()| Reply::ok(id, Bytes::new())),
                // A message naming a block of this node's store travels as
                // the block's bytes (the receiver cannot map our pages),
                // sent from the block in place: it goes back to the store
                // once they are out.
                proto::RECV => ch.recv(wait).map(|m| {
                    if !blocks || m.as_ref().first() != Some(&TAG_BLOCK) {
                        return Reply::ok(id, Bytes::copy_from_slice(m.as_ref()));
                    }
                    match stores.lock().unwrap_or_else(|e| e.into_inner()).view(m.as_ref()) {
                        Ok(Some((tag, view))) => {
                            let head = tag.map_or_else(Bytes::new, |t| Bytes::copy_from_slice(&[t]));
                            Reply::ok_parts(id, head, Bytes::from_owner(view))
                        }
                        Ok(None) => Reply::ok(id, Bytes::copy_from_slice(m.as_ref())),
                        Err(e) => Reply::error(id, DRAGON_EBADMSG, &e),
                    }
                }),
                _ => ch.poll(events, wait).map(|r| Reply::ok(id, r.to_le_bytes().to_vec())),
            }
            .unwrap_or_else(|e| Reply::failure(id, e))
        };
        let wait = timeout_of(tns);
        if kind == proto::SEND {
            if let Some(q) = lock(&self.behind).get_mut(&chid) {
                // An earlier send of this attachment waits: this one goes after it.
                if wait == Some(Duration::ZERO) {
                    return Some(Reply::error(id, DRAGON_EAGAIN, "the channel is full"));
                }
                let cancel = Arc::new(AtomicBool::new(false));
                lock(&self.waiting).insert(id, cancel.clone());
                let deadline = wait.map(|w| Instant::now() + w);
                q.push_back(Queued { id, data: payload.slice(16..), deadline, cancel });
                return None;
            }
        }
        // First without waiting: most operations end here.
        let now = run(&ch, Some(Duration::ZERO));
        if now.code() != Some(DRAGON_EAGAIN) || wait == Some(Duration::ZERO) {
            return Some(now);
        }
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&self.waiting).insert(id, cancel.clone());
        if kind == proto::SEND {
            lock(&self.behind).insert(chid, VecDeque::new());
        }
        let (gone, waiting, post, behind) =
            (self.gone.clone(), self.waiting.clone(), post.clone(), self.behind.clone());
        let spawned = crate::waiters::spawn(move || {
            let is_gone = || gone.load(Ordering::Acquire) || cancel.load(Ordering::Acquire);
            let rep = wait_out(id, wait, &is_gone, |slice| run(&ch, slice));
            lock(&waiting).remove(&id);
            post(rep);
            if kind != proto::SEND {
                return;
            }
            // The sends that queued behind this one, in order.
            loop {
                let next = {
                    let mut b = lock(&behind);
                    match b.get_mut(&chid).and_then(VecDeque::pop_front) {
                        Some(q) => q,
                        None => {
                            b.remove(&chid);
                            return;
                        }
                    }
                };
                let is_gone = || gone.load(Ordering::Acquire) || next.cancel.load(Ordering::Acquire);
                let left = next.deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let rep = wait_out(next.id, left, &is_gone, |slice| {
                    ch.send(&next.data, slice)
                        .map(|()| Reply::ok(next.id, Bytes::new()))
                        .unwrap_or_else(|e| Reply::failure(next.id, e))
                });
                lock(&waiting).remove(&next.id);
                post(rep);
            }
        });
        match spawned {
            Ok(_) => None,
            Err(e) => {
                lock(&self.waiting).remove(&id);
                lock(&self.behind).remove(&chid);
                Some(Reply::error(id, DRAGON_EIO, &format!("cannot start a waiting thread: {e}")))
            }
        }
    }

    fn keep(&mut self, ch: ShmChannel) -> u64 {
        let n = self.next_ch;
        self.next_ch += 1;
        self.chans.insert(n, Arc::new(ch));
        n
    }

    fn attach(&mut self, shm: &ShmTransport, id: u64, payload: &[u8]) -> Reply {
        let mut h = match Handle::from_bytes_of(payload, Kind::Channel) {
            Ok(h) => h,
            Err(e) => return Reply::error(id, DRAGON_EBADMSG, &format!("bad channel handle: {e}")),
        };
        if h.node != self.node {
            return Reply::error(
                id,
                DRAGON_EINVAL,
                &format!("the channel lives on node {}, not on this node ({})", h.node, self.node),
            );
        }
        // The handle names this node; here the channel is local.
        h.address.clear();
        h.node = transport_shm::this_node();
        match shm.attach_channel(&h.to_bytes()) {
            Ok(ch) => Reply::ok(id, self.keep(ch).to_le_bytes().to_vec()),
            Err(e) => Reply::failure(id, e),
        }
    }

    fn create(&mut self, shm: &ShmTransport, id: u64, payload: &[u8]) -> Reply {
        let field =
            |i: usize| payload.get(8 * i..8 * i + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let (Some(capacity), Some(slot_size), Some(max_block_bytes)) = (field(0), field(1), field(2)) else {
            return Reply::error(id, DRAGON_EPROTO, "short request");
        };
        let attrs = DragonChannelAttrs {
            size: std::mem::size_of::<DragonChannelAttrs>() as u32,
            flags: 0,
            capacity,
            slot_size,
            max_block_bytes,
        };
        match shm.create_channel(&attrs) {
            Ok(ch) => {
                // Its handle names this node, so other nodes know where it lives.
                let mut h = Handle::from_bytes(&ch.handle()).expect("a handle just made");
                h.address = self.address.clone();
                h.node = self.node;
                let n = self.keep(ch);
                let mut p = BytesMut::new();
                p.put_u64_le(n);
                p.extend_from_slice(&h.to_bytes());
                Reply::ok(id, p.freeze())
            }
            Err(e) => Reply::failure(id, e),
        }
    }
}

fn no_such(id: u64) -> Reply {
    Reply::error(id, DRAGON_EINVAL, "no such attachment")
}
