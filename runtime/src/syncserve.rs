//! Synchronisation objects of this node used from other nodes.
//!
//! A `Lock`, `RLock`, `Semaphore`, `Event`, `Condition` or `Barrier` lives
//! in its node's shared memory; processes of that node use it directly, at
//! its own speed. A process of another node sends its operations here (a
//! SYNC request, carried by its node's service), and this node's service
//! performs them on the object on its behalf.
//!
//! Locks have owners, so each remote *owner* (its node, pid and thread)
//! that holds or waits for a lock here gets a thread of its own, the
//! owner's *proxy*: the proxy acquires and releases the lock, and waits on
//! conditions with it, so that to the lock it is one thread of this
//! process, exactly as the remote thread is one thread of its own: an
//! `RLock` counts that owner's recursion, another owner waits, a
//! `Condition` releases and re-acquires the lock in the proxy. When the
//! owner's process ends (its node's service says so) or its node is lost,
//! its proxies release everything they hold, as a dead local process's
//! locks are taken over. A plain `Lock` may be released by anyone while it
//! is held (it is a semaphore of one): a release from an owner that does
//! not hold it goes to the proxy that does, or straight to the lock if a
//! process of this node holds it; and a proxy lets go at its owner's end
//! only of a hold that is still its own ([`LockHolders`]).
//!
//! Semaphores, events and barriers have no owners: their waits run on
//! threads of their own (`transport_tcp::waiters`), cancellable.
//!
//! A `Value`'s or `Array`'s memory block is read and written here for
//! processes of other nodes (`MEM_READ`, `MEM_WRITE`), a byte range at a
//! time; the wrapper's lock, taken through a proxy like any lock, orders
//! those accesses with everyone else's.
//!
//! Request (after the node prefix, for a process's own service):
//!
//! ```text
//!   op u8, pid u32, tid u64, timeout_ns u64, arg i64,
//!   handle length u16, handle, [second handle length u16, second handle]
//! ```
//!
//! The second handle is the lock of a condition wait. Replies carry an
//! `i64` (acquired, notified, an arrival index, a count) or, for
//! `BARRIER_STATE` and `COND_STATE`, several.

use bytes::{BufMut, BytesMut};
use shm_primitives::handle::{Handle, Kind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync_objects::{BarrierError, CondError, ReleaseError, WaitError};
use transport_abi::abi::{DRAGON_EBADMSG, DRAGON_EINVAL, DRAGON_EIO, DRAGON_EPROTO};
use transport_shm::memblock::MemoryBlock;
use transport_shm::{ShmBarrier, ShmCondition, ShmEvent, ShmLock, ShmRLock, ShmSemaphore};
use transport_tcp::proto::timeout_of;
use transport_tcp::serve::{Post, Reply};

/// Acquire a lock (`arg` unused): `1` if acquired, `0` if timed out.
pub const LOCK_ACQUIRE: u8 = 1;
/// Release a lock held by this owner.
pub const LOCK_RELEASE: u8 = 2;
/// The owner's recursion depth of a lock (0: not its).
pub const LOCK_COUNT: u8 = 3;
/// Whether anyone holds a lock (`1`/`0`).
pub const LOCK_LOCKED: u8 = 4;
/// Take a unit of a semaphore: `1`/`0`.
pub const SEM_ACQUIRE: u8 = 5;
/// Give a unit back (an error if a bounded semaphore is full).
pub const SEM_RELEASE: u8 = 6;
/// A semaphore's value.
pub const SEM_VALUE: u8 = 7;
/// Set an event.
pub const EVENT_SET: u8 = 8;
/// Clear an event.
pub const EVENT_CLEAR: u8 = 9;
/// Whether an event is set.
pub const EVENT_IS_SET: u8 = 10;
/// Wait for an event: `1` set, `0` timed out.
pub const EVENT_WAIT: u8 = 11;
/// Wait on a condition (second handle: the lock this owner holds): `1`
/// notified, `0` timed out; the lock is held again either way.
pub const COND_WAIT: u8 = 12;
/// Notify `arg` waiters: how many were.
pub const COND_NOTIFY: u8 = 13;
/// A condition's waiters, then those notified and not yet returned.
pub const COND_STATE: u8 = 14;
/// Wait at a barrier: this party's arrival index.
pub const BARRIER_WAIT: u8 = 15;
/// Break a barrier.
pub const BARRIER_ABORT: u8 = 16;
/// Reset a barrier.
pub const BARRIER_RESET: u8 = 17;
/// A barrier's parties, waiters, and whether it is broken.
pub const BARRIER_STATE: u8 = 18;
/// The owner's process ended: release what it holds here.
pub const OWNER_GONE: u8 = 19;
/// Read a memory block: `arg` the offset, the second field the length
/// (`u64`); the reply is the bytes.
pub const MEM_READ: u8 = 20;
/// Write a memory block: `arg` the offset, the second field the bytes.
pub const MEM_WRITE: u8 = 21;
/// A memory block's data size.
pub const MEM_SIZE: u8 = 22;
/// The party that a [`BARRIER_WAIT`] with an action (`arg` 1) told to run
/// it reports how it went (`arg` 1: it ran, 0: it raised): the arrival
/// index, or a broken barrier if the action raised.
pub const BARRIER_ACTION: u8 = 23;
/// What a [`BARRIER_WAIT`] with an action (`arg` 1) answers the last party
/// to arrive: run the action on your node, then send [`BARRIER_ACTION`];
/// nobody is released before.
pub const ACTION_TURN: i64 = -2;
/// Most bytes one `MEM_WRITE` carries (the second field's length is a `u16`).
pub const MEM_WRITE_MAX: usize = u16::MAX as usize;

/// Who a request is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Its node.
    pub node: u32,
    /// Its pid there.
    pub pid: u32,
    /// Its thread.
    pub tid: u64,
}

/// A decoded request.
#[derive(Debug)]
pub struct SyncRequest<'a> {
    /// The operation.
    pub op: u8,
    /// The requester's pid and thread (its node comes from the link).
    pub pid: u32,
    /// See `pid`.
    pub tid: u64,
    /// How long it may wait.
    pub timeout: Option<Duration>,
    /// Its argument.
    pub arg: i64,
    /// The object.
    pub handle: &'a [u8],
    /// A condition wait's lock.
    pub second: Option<&'a [u8]>,
}

impl<'a> SyncRequest<'a> {
    /// Decode a request.
    pub fn parse(p: &'a [u8]) -> Option<SyncRequest<'a>> {
        let op = *p.first()?;
        let pid = u32::from_le_bytes(p.get(1..5)?.try_into().ok()?);
        let tid = u64::from_le_bytes(p.get(5..13)?.try_into().ok()?);
        let tns = u64::from_le_bytes(p.get(13..21)?.try_into().ok()?);
        let arg = i64::from_le_bytes(p.get(21..29)?.try_into().ok()?);
        let n = usize::from(u16::from_le_bytes(p.get(29..31)?.try_into().ok()?));
        let handle = p.get(31..31 + n)?;
        let rest = &p[31 + n..];
        let second = if rest.is_empty() {
            None
        } else {
            let m = usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
            let h = rest.get(2..2 + m)?;
            if rest.len() != 2 + m {
                return None;
            }
            Some(h)
        };
        Some(SyncRequest { op, pid, tid, timeout: timeout_of(tns), arg, handle, second })
    }

    /// Encode a request (the requester's side).
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        op: u8,
        pid: u32,
        tid: u64,
        timeout_ns: u64,
        arg: i64,
        handle: &[u8],
        second: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut p = BytesMut::with_capacity(40 + handle.len());
        p.put_u8(op);
        p.put_u32_le(pid);
        p.put_u64_le(tid);
        p.put_u64_le(timeout_ns);
        p.put_i64_le(arg);
        p.put_u16_le(handle.len() as u16);
        p.put_slice(handle);
        if let Some(h) = second {
            p.put_u16_le(h.len() as u16);
            p.put_slice(h);
        }
        p.to_vec()
    }
}

/// The owner pid field of an encoded request (a service sets it to the
/// pid it knows its process by).
pub const PID_AT: std::ops::Range<usize> = 1..5;

#[derive(Clone)]
enum Obj {
    Lock(Arc<ShmLock>),
    RLock(Arc<ShmRLock>),
    Sem(Arc<ShmSemaphore>),
    Event(Arc<ShmEvent>),
    Cond(Arc<ShmCondition>),
    Barrier(Arc<ShmBarrier>),
    Mem(Arc<MemoryBlock>),
}

fn ok(id: u64, v: i64) -> Reply {
    Reply::ok(id, v.to_le_bytes().to_vec())
}

fn wait_failure(id: u64, e: WaitError) -> Reply {
    match e {
        WaitError::TimedOut => ok(id, 0),
        WaitError::Interrupted => Reply::error(id, DRAGON_EIO, "the wait was cancelled (its process or node is gone)"),
        e => Reply::error(id, DRAGON_EINVAL, &e.to_string()),
    }
}

/// Error codes of answers (beyond the plugin ABI's) for the failures a
/// local object reports with an exception of its own, so that the
/// requester raises the same one.
pub mod code {
    /// A release of a lock or semaphore that is not held (`ValueError`).
    pub const NOT_HELD: i32 = -1001;
    /// A release of a recursive lock another owner holds (`AssertionError`).
    pub const NOT_OWNER: i32 = -1002;
    /// A bounded semaphore released above its initial value (`ValueError`).
    pub const OVERFLOW: i32 = -1003;
    /// A semaphore released above the largest value (`OverflowError`).
    pub const OVERFLOW_MAX: i32 = -1004;
    /// A condition used without its lock (`AssertionError`).
    pub const NOT_ACQUIRED: i32 = -1005;
    /// A barrier broken, reset or timed out (`BrokenBarrierError`).
    pub const BROKEN_BARRIER: i32 = -1006;
}

fn release_failure(id: u64, e: ReleaseError) -> Reply {
    let c = match e {
        ReleaseError::NotHeld => code::NOT_HELD,
        ReleaseError::NotOwner => code::NOT_OWNER,
        ReleaseError::Overflow { max } if max == sync_objects::SEM_VALUE_MAX => code::OVERFLOW_MAX,
        ReleaseError::Overflow { .. } => code::OVERFLOW,
        _ => DRAGON_EINVAL,
    };
    Reply::error(id, c, &e.to_string())
}

/// A recursive lock released by a thread that does not own it.
fn not_owner(id: u64) -> Reply {
    Reply::error(id, code::NOT_OWNER, "attempt to release recursive lock not owned by thread")
}

/// What a lock proxy is asked to do.
enum Cmd {
    Acquire { id: u64, timeout: Option<Duration>, cancel: Arc<AtomicBool>, post: Post },
    Release { id: u64, post: Post },
    Count { id: u64, post: Post },
    CondWait { id: u64, cond: Arc<ShmCondition>, timeout: Option<Duration>, cancel: Arc<AtomicBool>, post: Post },
    Gone,
}

/// `Proxy::inflight` once the proxy has ended.
const CLOSED: usize = usize::MAX;

/// How long a proxy that holds nothing waits for its owner's next request
/// before it ends (the next request then makes another).
const PROXY_IDLE: Duration = Duration::from_secs(1);

/// A lock proxy as the server sees it.
struct Proxy {
    tx: crossbeam_channel::Sender<Cmd>,
    /// Commands sent and not yet handled, or [`CLOSED`]: the proxy ends
    /// only when it has held nothing for [`PROXY_IDLE`] and nothing is on
    /// its way to it, which it decides by swapping 0 for `CLOSED`; the
    /// server counts a command in before sending it, unless the count is
    /// `CLOSED`.
    inflight: Arc<AtomicUsize>,
}

/// Which remote owner's proxy holds each plain `Lock` (by handle), as far
/// as this service knows: set by a proxy when it takes the lock (and when a
/// condition wait takes it back), cleared when it releases it. A process
/// of the lock's node may release a proxy's hold behind the service's back
/// (a plain lock allows it): a hold is a proxy's only while the record
/// names its owner and the lock word names this process.
type LockHolders = Arc<std::sync::Mutex<HashMap<Vec<u8>, Owner>>>;

/// Whether the plain lock `handle` is held by `owner`'s proxy (see
/// [`LockHolders`]).
fn held_by(holders: &LockHolders, handle: &[u8], owner: Owner, lock: &ShmLock) -> bool {
    holders.lock().unwrap_or_else(|e| e.into_inner()).get(handle) == Some(&owner)
        && lock.holder() == Some(std::process::id())
}

/// A lock proxy: one thread, the owner's stand-in.
fn proxy(
    lock: Obj,
    (handle, owner, holders): (Vec<u8>, Owner, LockHolders),
    cmds: crossbeam_channel::Receiver<Cmd>,
    inflight: Arc<AtomicUsize>,
) {
    let mut depth: u32 = 0;
    let note = |held: bool| {
        if let Obj::Lock(_) = lock {
            let mut h = holders.lock().unwrap_or_else(|e| e.into_inner());
            if held {
                h.insert(handle.clone(), owner);
            } else if h.get(&handle) == Some(&owner) {
                h.remove(&handle);
            }
        }
    };
    let release = |lock: &Obj| -> Result<(), ReleaseError> {
        match lock {
            Obj::Lock(l) => l.release(),
            Obj::RLock(l) => l.release(),
            _ => Ok(()),
        }
    };
    loop {
        // A plain lock this proxy took may have been released by another
        // process meanwhile: then it holds nothing.
        if let Obj::Lock(l) = &lock {
            if depth > 0 && !held_by(&holders, &handle, owner, l) {
                depth = 0;
            }
        }
        let cmd = if depth == 0 {
            // Holding nothing, the proxy waits a while for its owner's next
            // request (a loop of acquire and release would otherwise start
            // a thread per acquire), then ends if nothing is on its way.
            match cmds.recv_timeout(PROXY_IDLE) {
                Ok(cmd) => cmd,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if inflight.compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return;
                    }
                    continue; // a command was counted in: it is on its way
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match cmds.recv_timeout(PROXY_IDLE) {
                Ok(cmd) => cmd,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue, // still its?
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        };
        match cmd {
            Cmd::Acquire { id, timeout, cancel, post } => {
                let mut hook = || !cancel.load(Ordering::Acquire);
                let r = match &lock {
                    Obj::Lock(l) => l.acquire_with(timeout, &mut hook).map(|_| ()),
                    Obj::RLock(l) => l.acquire_with(timeout, &mut hook).map(|_| ()),
                    _ => Ok(()),
                };
                match r {
                    Ok(()) => {
                        depth += 1;
                        note(true);
                        post(ok(id, 1));
                    }
                    Err(e) => post(wait_failure(id, e)),
                }
            }
            Cmd::Release { id, post } if depth == 0 => post(match &lock {
                // Taken back from it meanwhile: released as anyone may.
                Obj::Lock(l) => match l.release() {
                    Ok(()) => ok(id, 0),
                    Err(e) => release_failure(id, e),
                },
                _ => not_owner(id),
            }),
            Cmd::Release { id, post } => match release(&lock) {
                Ok(()) => {
                    depth -= 1;
                    if depth == 0 {
                        note(false);
                    }
                    post(ok(id, 0));
                }
                Err(e) => post(release_failure(id, e)),
            },
            Cmd::Count { id, post } => post(ok(id, i64::from(depth))),
            Cmd::CondWait { id, post, .. } if depth == 0 => {
                post(Reply::error(id, code::NOT_ACQUIRED, "must acquire() condition before using wait()"))
            }
            Cmd::CondWait { id, cond, timeout, cancel, post } => {
                let mut hook = || !cancel.load(Ordering::Acquire);
                let r = match &lock {
                    Obj::Lock(l) => cond.wait_with(&***l, timeout, &mut hook),
                    Obj::RLock(l) => cond.wait_with(&***l, timeout, &mut hook),
                    _ => unreachable!("proxies hold locks"),
                };
                // The wait took the lock back (another proxy may have held
                // it meanwhile).
                note(true);
                // A notification that came just as its waiter went is
                // handed on.
                if matches!(r, Ok(w) if w.notified) && cancel.load(Ordering::Acquire) {
                    cond.notify(1);
                }
                post(match r {
                    Ok(w) => ok(id, i64::from(w.notified)),
                    Err(CondError::Interrupted { .. }) => {
                        Reply::error(id, DRAGON_EIO, "the wait was cancelled (its process or node is gone)")
                    }
                    Err(e) => Reply::error(id, DRAGON_EINVAL, &e.to_string()),
                });
            }
            Cmd::Gone => {
                inflight.fetch_sub(1, Ordering::AcqRel);
                break;
            }
        }
        // The command is handled (its reply posted).
        inflight.fetch_sub(1, Ordering::AcqRel);
    }
    // The owner is gone: what it held is released, as a dead holder's (a
    // plain lock only if the hold is still this proxy's). The server no
    // longer lists this proxy (nothing more is sent to it); it is marked
    // ended once done.
    if let Obj::Lock(l) = &lock {
        let mine = depth > 0 && held_by(&holders, &handle, owner, l);
        note(false);
        if mine {
            let _ = l.release();
        }
    } else {
        while depth > 0 && release(&lock).is_ok() {
            depth -= 1;
        }
    }
    inflight.store(CLOSED, Ordering::Release);
}

/// Answer a command no proxy will handle.
fn fail(cmd: Cmd) {
    let msg = "cannot start a thread for the lock";
    match cmd {
        Cmd::Acquire { id, post, .. } | Cmd::Release { id, post } | Cmd::Count { id, post } => {
            post(Reply::error(id, DRAGON_EIO, msg))
        }
        Cmd::CondWait { id, post, .. } => post(Reply::error(id, DRAGON_EIO, msg)),
        Cmd::Gone => {}
    }
}

/// Cancel flags of waits under way, by (node, connection, request id):
/// connection 0 for requests a node's service relays (its ids are unique
/// among its node's), else the connection a process of that node made
/// straight to this service (each process numbers its own requests).
type CancelFlags = HashMap<(u32, u64, u64), Arc<AtomicBool>>;

/// This node's objects as other nodes use them.
#[derive(Default)]
pub struct SyncServer {
    objects: HashMap<Vec<u8>, Obj>,
    proxies: HashMap<(Vec<u8>, Owner), Proxy>,
    /// Which owner's proxy holds each plain lock.
    lock_holders: LockHolders,
    /// Cancel flags of waits under way, by (node, connection, request id).
    waits: Arc<std::sync::Mutex<CancelFlags>>,
    /// Barrier waits whose last party runs the action on its node: how
    /// the action went reaches the waiting thread here (dropped: the party
    /// is gone, the barrier breaks).
    actions: Arc<std::sync::Mutex<Actions>>,
}

/// How a barrier action went, and where the wait's answer goes then.
type ActionDone = (bool, u64, Post);
type Actions = HashMap<(Vec<u8>, Owner), crossbeam_channel::Sender<ActionDone>>;

impl std::fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncServer")
            .field("objects", &self.objects.len())
            .field("proxies", &self.proxies.len())
            .finish_non_exhaustive()
    }
}

fn attach(handle: &[u8]) -> Result<Obj, String> {
    let h = Handle::from_bytes(handle).map_err(|e| format!("bad handle: {e}"))?;
    let e = |e: transport_shm::SyncShmError| e.to_string();
    Ok(match h.kind {
        Kind::Lock => Obj::Lock(Arc::new(ShmLock::attach(&h).map_err(e)?)),
        Kind::RLock => Obj::RLock(Arc::new(ShmRLock::attach(&h).map_err(e)?)),
        Kind::Semaphore => Obj::Sem(Arc::new(ShmSemaphore::attach(&h).map_err(e)?)),
        Kind::Event => Obj::Event(Arc::new(ShmEvent::attach(&h).map_err(e)?)),
        Kind::Condition => Obj::Cond(Arc::new(ShmCondition::attach(&h).map_err(e)?)),
        Kind::Barrier => Obj::Barrier(Arc::new(ShmBarrier::attach(&h).map_err(e)?)),
        Kind::Memory => Obj::Mem(Arc::new(MemoryBlock::attach(&h).map_err(|e| e.to_string())?)),
        k => return Err(format!("a {k:?} is not a synchronisation object nor a memory block")),
    })
}

impl SyncServer {
    fn object(&mut self, handle: &[u8]) -> Result<Obj, String> {
        if let Some(o) = self.objects.get(handle) {
            return Ok(o.clone());
        }
        let o = attach(handle)?;
        self.objects.insert(handle.to_vec(), o.clone());
        Ok(o)
    }

    /// Whether `owner` has a live proxy for the lock `handle` (it may hold it).
    fn holds(&self, handle: &[u8], owner: Owner) -> bool {
        self.proxies.get(&(handle.to_vec(), owner)).is_some_and(|p| p.inflight.load(Ordering::Acquire) != CLOSED)
    }

    fn cancel_flag(&self, key: (u32, u64, u64)) -> Arc<AtomicBool> {
        let f = Arc::new(AtomicBool::new(false));
        self.waits.lock().unwrap_or_else(|e| e.into_inner()).insert(key, f.clone());
        f
    }

    /// A post that also forgets the request's cancel flag.
    fn posting(&self, key: (u32, u64, u64), post: &Post) -> Post {
        let (waits, post) = (self.waits.clone(), post.clone());
        Arc::new(move |r: Reply| {
            waits.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            post(r)
        })
    }

    /// Send `cmd` to `owner`'s proxy for the lock `handle`, making the
    /// proxy if it has none (or its last one ended).
    fn send_to_proxy(&mut self, handle: &[u8], lock: Obj, owner: Owner, cmd: Cmd) {
        let key = (handle.to_vec(), owner);
        if let Some(p) = self.proxies.get(&key) {
            let counted =
                p.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n != CLOSED).then_some(n + 1));
            if counted.is_ok() {
                if let Err(e) = p.tx.send(cmd) {
                    fail(e.into_inner());
                }
                return;
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let inflight = Arc::new(AtomicUsize::new(1));
        let i2 = inflight.clone();
        let whose = (handle.to_vec(), owner, self.lock_holders.clone());
        match std::thread::Builder::new().name("dragon-lock-proxy".into()).spawn(move || proxy(lock, whose, rx, i2)) {
            Ok(_) => {
                let _ = tx.send(cmd);
                self.proxies.insert(key, Proxy { tx, inflight });
            }
            Err(e) => {
                let _ = e;
                fail(cmd);
            }
        }
    }

    /// Perform a SYNC request from node `node`: the reply if ready now,
    /// `None` if a thread will post it.
    pub fn handle(&mut self, node: u32, id: u64, payload: &[u8], post: &Post) -> Option<Reply> {
        self.handle_on(node, 0, id, payload, post)
    }

    /// [`SyncServer::handle`] of a request that came on connection `conn`
    /// (not 0) that a process of node `node` made straight to this service.
    pub fn handle_on(&mut self, node: u32, conn: u64, id: u64, payload: &[u8], post: &Post) -> Option<Reply> {
        let key = (node, conn, id);
        let Some(r) = SyncRequest::parse(payload) else {
            return Some(Reply::error(id, DRAGON_EPROTO, "malformed synchronisation request"));
        };
        let owner = Owner { node, pid: r.pid, tid: r.tid };
        if r.op == OWNER_GONE {
            self.owner_gone(|o| o.node == node && o.pid == r.pid);
            return Some(ok(id, 0));
        }
        if r.op == BARRIER_ACTION {
            let waiting = self.actions.lock().unwrap_or_else(|e| e.into_inner()).remove(&(r.handle.to_vec(), owner));
            return match waiting {
                Some(tx) if tx.send((r.arg == 1, id, post.clone())).is_ok() => None,
                _ => Some(Reply::error(id, DRAGON_EINVAL, "no barrier wait of this thread is waiting for its action")),
            };
        }
        let obj = match self.object(r.handle) {
            Ok(o) => o,
            Err(e) => return Some(Reply::error(id, DRAGON_EBADMSG, &e)),
        };
        let wrong = || Reply::error(id, DRAGON_EINVAL, &format!("operation {} does not apply to this object", r.op));
        match (r.op, &obj) {
            (LOCK_ACQUIRE, Obj::Lock(_) | Obj::RLock(_)) => {
                let (cancel, post) = (self.cancel_flag(key), self.posting(key, post));
                self.send_to_proxy(r.handle, obj.clone(), owner, Cmd::Acquire { id, timeout: r.timeout, cancel, post });
                None
            }
            (LOCK_RELEASE, Obj::Lock(l)) => {
                // Anyone may release a held plain lock: its holder's proxy
                // does (this owner's own, or another's), or, if a process of
                // this node holds it, the release is made here.
                let holder = self.lock_holders.lock().unwrap_or_else(|e| e.into_inner()).get(r.handle).copied();
                let by = match holder {
                    Some(h) if held_by(&self.lock_holders, r.handle, h, l) && self.holds(r.handle, h) => h,
                    _ if self.holds(r.handle, owner) => owner,
                    _ => {
                        return Some(match l.release() {
                            Ok(()) => ok(id, 0),
                            Err(e) => release_failure(id, e),
                        })
                    }
                };
                self.send_to_proxy(r.handle, obj.clone(), by, Cmd::Release { id, post: post.clone() });
                None
            }
            (LOCK_RELEASE, Obj::RLock(_)) => {
                if !self.holds(r.handle, owner) {
                    return Some(not_owner(id));
                }
                self.send_to_proxy(r.handle, obj.clone(), owner, Cmd::Release { id, post: post.clone() });
                None
            }
            (LOCK_COUNT, Obj::Lock(_) | Obj::RLock(_)) => {
                if !self.holds(r.handle, owner) {
                    return Some(ok(id, 0));
                }
                self.send_to_proxy(r.handle, obj.clone(), owner, Cmd::Count { id, post: post.clone() });
                None
            }
            (LOCK_LOCKED, Obj::Lock(l)) => Some(ok(id, i64::from(l.is_locked()))),
            (LOCK_LOCKED, Obj::RLock(l)) => Some(ok(id, i64::from(l.is_locked()))),
            (COND_WAIT, Obj::Cond(c)) => {
                let Some(lh) = r.second else { return Some(wrong()) };
                let lock = match self.object(lh) {
                    Ok(l @ (Obj::Lock(_) | Obj::RLock(_))) => l,
                    Ok(_) => return Some(Reply::error(id, DRAGON_EINVAL, "a condition waits with a Lock or RLock")),
                    Err(e) => return Some(Reply::error(id, DRAGON_EBADMSG, &e)),
                };
                if !self.holds(lh, owner) {
                    return Some(Reply::error(id, code::NOT_ACQUIRED, "must acquire() condition before using wait()"));
                }
                let (cancel, post) = (self.cancel_flag(key), self.posting(key, post));
                let cmd = Cmd::CondWait { id, cond: c.clone(), timeout: r.timeout, cancel, post };
                self.send_to_proxy(lh, lock, owner, cmd);
                None
            }
            (COND_NOTIFY, Obj::Cond(c)) => {
                let n = u32::try_from(r.arg.max(0)).unwrap_or(u32::MAX);
                Some(ok(id, i64::from(if n == 0 { 0 } else { c.notify(n) })))
            }
            (COND_STATE, Obj::Cond(c)) => {
                let mut p = BytesMut::new();
                p.put_i64_le(i64::from(c.waiting()));
                p.put_i64_le(i64::from(c.notified_pending()));
                Some(Reply::ok(id, p.freeze()))
            }
            (SEM_RELEASE, Obj::Sem(s)) => Some(match s.release() {
                Ok(()) => ok(id, 0),
                Err(e) => release_failure(id, e),
            }),
            (SEM_VALUE, Obj::Sem(s)) => Some(ok(id, i64::from(s.value()))),
            (EVENT_SET, Obj::Event(e)) => {
                e.set();
                Some(ok(id, 0))
            }
            (EVENT_CLEAR, Obj::Event(e)) => {
                e.clear();
                Some(ok(id, 0))
            }
            (EVENT_IS_SET, Obj::Event(e)) => Some(ok(id, i64::from(e.is_set()))),
            (BARRIER_ABORT, Obj::Barrier(b)) => {
                b.abort();
                Some(ok(id, 0))
            }
            (BARRIER_RESET, Obj::Barrier(b)) => {
                b.reset();
                Some(ok(id, 0))
            }
            (BARRIER_STATE, Obj::Barrier(b)) => {
                let mut p = BytesMut::new();
                p.put_i64_le(i64::from(b.parties()));
                p.put_i64_le(i64::from(b.n_waiting()));
                p.put_i64_le(i64::from(b.broken()));
                Some(Reply::ok(id, p.freeze()))
            }
            (MEM_READ, Obj::Mem(m)) => {
                let len = r.second.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                let (Some(len), Ok(offset)) = (len, u64::try_from(r.arg)) else {
                    return Some(Reply::error(id, DRAGON_EPROTO, "malformed memory read"));
                };
                Some(match m.read(offset, len) {
                    Ok(b) => Reply::ok(id, b),
                    Err(e) => Reply::error(id, DRAGON_EINVAL, &e.to_string()),
                })
            }
            (MEM_WRITE, Obj::Mem(m)) => {
                let Ok(offset) = u64::try_from(r.arg) else {
                    return Some(Reply::error(id, DRAGON_EPROTO, "malformed memory write"));
                };
                Some(match m.write(offset, r.second.unwrap_or_default()) {
                    Ok(()) => ok(id, 0),
                    Err(e) => Reply::error(id, DRAGON_EINVAL, &e.to_string()),
                })
            }
            (MEM_SIZE, Obj::Mem(m)) => Some(ok(id, m.size() as i64)),
            (SEM_ACQUIRE | EVENT_WAIT | BARRIER_WAIT, _) => {
                let (cancel, post) = (self.cancel_flag(key), self.posting(key, post));
                let (op, timeout) = (r.op, r.timeout);
                let with_action = (op == BARRIER_WAIT && r.arg == 1).then(|| (self.actions.clone(), r.handle.to_vec()));
                let work = move || {
                    let mut hook = || !cancel.load(Ordering::Acquire);
                    let reply = match (op, &obj) {
                        (SEM_ACQUIRE, Obj::Sem(s)) => match s.acquire_with(timeout, &mut hook) {
                            // Taken just as its waiter went: given back.
                            Ok(()) if cancel.load(Ordering::Acquire) => {
                                let _ = s.release();
                                wait_failure(id, WaitError::Interrupted)
                            }
                            Ok(()) => ok(id, 1),
                            Err(e) => wait_failure(id, e),
                        },
                        (EVENT_WAIT, Obj::Event(e)) => match e.wait_with(timeout, &mut hook) {
                            Ok(set) => ok(id, i64::from(set)),
                            Err(_) => wait_failure(id, WaitError::Interrupted),
                        },
                        (BARRIER_WAIT, Obj::Barrier(b)) => {
                            // With an action, the last party runs it on its own
                            // node: told so in this wait's answer, it reports
                            // back with BARRIER_ACTION, whose answer is then
                            // the wait's outcome.
                            let mut after: Option<(u64, Post)> = None;
                            let mut run = || {
                                let Some((actions, handle)) = &with_action else { return true };
                                let (tx, rx) = crossbeam_channel::bounded(1);
                                actions.lock().unwrap_or_else(|e| e.into_inner()).insert((handle.clone(), owner), tx);
                                post(ok(id, ACTION_TURN));
                                match rx.recv() {
                                    Ok((ran, aid, apost)) => {
                                        after = Some((aid, apost));
                                        ran
                                    }
                                    Err(_) => false, // the party is gone
                                }
                            };
                            let r = b.wait_with(timeout, Some(&mut run), Some(&mut hook));
                            let (rid, rpost) = after.take().unwrap_or_else(|| (id, post.clone()));
                            let reply = match r {
                                Ok(i) => ok(rid, i64::from(i)),
                                Err(BarrierError::Interrupted) => wait_failure(rid, WaitError::Interrupted),
                                Err(e) => Reply::error(rid, code::BROKEN_BARRIER, &format!("broken barrier: {e}")),
                            };
                            if rid != id {
                                return rpost(reply);
                            }
                            reply
                        }
                        _ => Reply::error(id, DRAGON_EINVAL, &format!("operation {op} does not apply to this object")),
                    };
                    post(reply);
                };
                match transport_tcp::waiters::spawn(work) {
                    Ok(()) => None,
                    Err(e) => Some(Reply::error(id, DRAGON_EIO, &format!("cannot start a waiting thread: {e}"))),
                }
            }
            _ => Some(wrong()),
        }
    }

    /// End a wait under way (its requester is gone).
    pub fn cancel(&self, node: u32, id: u64) {
        self.cancel_on(node, 0, id);
    }

    /// [`SyncServer::cancel`] of a request of a direct connection (see
    /// [`SyncServer::handle_on`]).
    pub fn cancel_on(&self, node: u32, conn: u64, id: u64) {
        if let Some(f) = self.waits.lock().unwrap_or_else(|e| e.into_inner()).get(&(node, conn, id)) {
            f.store(true, Ordering::Release);
        }
    }

    /// Connection `conn` that a process of node `node` made straight to
    /// this service is gone: its waits under way end (a semaphore unit, a
    /// notification or a barrier slot is then not taken for a process that
    /// no longer waits), as the waits its node's service relays end when
    /// their process goes.
    pub fn conn_gone(&self, node: u32, conn: u64) {
        for ((n, c, _), f) in self.waits.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if *n == node && *c == conn {
                f.store(true, Ordering::Release);
            }
        }
    }

    /// Release what the matching owners hold (their lock proxies end their
    /// waits as they go).
    fn owner_gone(&mut self, matches: impl Fn(&Owner) -> bool) {
        // An action it was to run: the barrier breaks.
        self.actions.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, o), _| !matches(o));
        let gone: Vec<(Vec<u8>, Owner)> = self.proxies.keys().filter(|(_, o)| matches(o)).cloned().collect();
        for key in gone {
            if let Some(p) = self.proxies.remove(&key) {
                let counted =
                    p.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n != CLOSED).then_some(n + 1));
                if counted.is_ok() {
                    let _ = p.tx.send(Cmd::Gone);
                }
            }
        }
    }

    /// Node `node` is lost: release what its processes hold, end their waits.
    pub fn node_gone(&mut self, node: u32) {
        for ((n, _, _), f) in self.waits.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if *n == node {
                f.store(true, Ordering::Release);
            }
        }
        self.owner_gone(|o| o.node == node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: u8, pid: u32, handle: &[u8]) -> Vec<u8> {
        SyncRequest::encode(op, pid, 1, u64::MAX, 0, handle, None)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The children's entry (see `test_support::child`).
    #[test]
    #[ignore]
    fn child_entry() {
        test_support::child::entry(|role| {
            assert_eq!(role, "relock");
            let hex = test_support::child::arg("LOCK_HANDLE");
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            let lock = ShmLock::attach(&Handle::from_bytes(&bytes).unwrap()).unwrap();
            lock.release().unwrap();
            i32::from(lock.acquire(None).is_err())
        });
    }

    #[test]
    fn a_proxy_lets_go_at_its_owners_end_only_of_a_hold_still_its_own() {
        test_support::watchdog::start();
        let lock = ShmLock::create().unwrap();
        let handle = lock.handle().to_bytes();
        let mut s = SyncServer::default();
        let (tx, rx) = crossbeam_channel::unbounded();
        let post: Post = Arc::new(move |r: Reply| {
            let _ = tx.send(r);
        });
        // Owner 42 of node 1 takes the lock through its proxy.
        assert!(s.handle_on(1, 7, 1, &request(LOCK_ACQUIRE, 42, &handle), &post).is_none());
        rx.recv_timeout(Duration::from_secs(120)).expect("the acquire's reply");
        assert_eq!(lock.holder(), Some(std::process::id()));
        // A process of this node releases it (anyone may) and takes it.
        let hex: String = handle.iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = test_support::child::command("syncserve::tests::child_entry", "relock");
        let mut child = test_support::child::Child::start(cmd.env("LOCK_HANDLE", hex));
        let child_pid = child.pid();
        assert!(child.wait().success());
        assert_eq!(lock.holder(), Some(child_pid));
        // Owner 42 ends: its proxy must not release the child's hold.
        let inflight = s.proxies[&(handle.clone(), Owner { node: 1, pid: 42, tid: 1 })].inflight.clone();
        assert_eq!(
            s.handle_on(1, 7, 2, &request(OWNER_GONE, 42, &[]), &post).map(|r| r.kind),
            Some(transport_tcp::proto::OK)
        );
        wait_for("the proxy ends", || inflight.load(Ordering::Acquire) == CLOSED);
        assert_eq!(lock.holder(), Some(child_pid), "the proxy released a hold that was not its own");
        // A release from another node of a lock held here goes to the lock.
        assert_eq!(
            s.handle_on(2, 9, 3, &request(LOCK_RELEASE, 77, &handle), &post).map(|r| r.kind),
            Some(transport_tcp::proto::OK)
        );
        assert_eq!(lock.holder(), None);
    }

    #[test]
    fn requests_round_trip_and_short_ones_fail() {
        let p = SyncRequest::encode(COND_WAIT, 42, 7, 1000, -3, b"handle", Some(b"lock"));
        let r = SyncRequest::parse(&p).unwrap();
        assert_eq!((r.op, r.pid, r.tid, r.arg), (COND_WAIT, 42, 7, -3));
        assert_eq!(r.timeout, Some(Duration::from_nanos(1000)));
        assert_eq!((r.handle, r.second), (&b"handle"[..], Some(&b"lock"[..])));
        for cut in 0..p.len() {
            if cut == 31 + 6 {
                continue; // no second handle: a valid request
            }
            assert!(SyncRequest::parse(&p[..cut]).is_none(), "{cut}");
        }
        assert_eq!(&p[PID_AT], &42u32.to_le_bytes());
    }
}
