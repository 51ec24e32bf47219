//! [`Queue`] and [`JoinableQueue`]: the semantics of Python's
//! `multiprocessing.Queue` on a channel.
//!
//! - `Queue::new(maxsize)` with `0 < maxsize <= EXACT_MAX` is a ring of
//!   exactly `maxsize` slots: `put` waits while it is full and fails with
//!   [`PutError::Full`] on timeout.
//! - `Queue::new(0)` is unbounded: `put` never waits. It writes straight
//!   into the ring; only while the ring is full (or shared memory for large
//!   messages is short) does a message wait in a local buffer that a
//!   feeder thread sends, in order. Bounds above `EXACT_MAX` use an
//!   unbounded ring plus a shared semaphore of `maxsize` permits.
//! - Messages put by one thread arrive in the order put.
//! - [`Queue::close`] says this object puts no more; the feeder sends what
//!   is buffered and ends. Dropping the queue waits for the feeder (as
//!   Python waits at exit), unless [`Queue::cancel_join_thread`] was
//!   called. A feeder whose queue is closed or dropped, and whose channel
//!   no other process is attached to, drops what it holds instead of
//!   waiting forever: nobody can ever receive it.
//! - A peer that dies (even by `SIGKILL`, even mid-put or mid-get) never
//!   blocks the others: the channel sweeps its half-done operations.

use crate::channel::{Fault, QueueChannel, ShmChannel};
use crate::error::{GetError, PutError, QueueError, TaskDoneError};
use crate::handle::{Mode, QueueHandle, QueueKind};
use crate::sync::{Condition as _, Lock as _, QueueSync, Semaphore as _, ShmSync};
use crate::wire::{self, Item, Tag};
use channels_core::{ChannelOptions, Roles};
use shm_primitives::sync::local::{AtomicBool, Ordering};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use transport_shm::{ShmCondition, ShmLock, ShmSemaphore};

/// Bytes per ring slot; messages up to `SLOT_SIZE - 24` bytes travel inline.
pub const SLOT_SIZE: usize = 256;
/// Ring slots of an unbounded queue (and of a [`crate::SimpleQueue`]).
pub const UNBOUNDED_CAPACITY: u64 = 512;
/// Largest `maxsize` served by a ring of exactly that many slots.
pub const EXACT_MAX: u64 = 8192;
/// Processes that may use one queue at a time.
pub const MAX_ATTACHMENTS: u32 = 1023;
/// Largest bound a queue accepts (a semaphore's largest value).
pub const MAX_BOUND: u64 = 2_147_483_647;

/// How long the feeder waits for room before it looks whether anybody can
/// still receive.
const FEEDER_SLICE: Duration = Duration::from_millis(100);

/// How long `join` sleeps on its condition before it looks at the count
/// again.
const JOIN_SLICE: Duration = Duration::from_millis(200);

/// What the feeder thread calls with a message it could not send (and
/// drops): the error and the message's payload (without its tag byte).
pub type FeederErrorHook = Box<dyn Fn(&PutError, &[u8]) + Send + Sync>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 30)))
}

/// Time left until `d` (`None`: no limit).
pub(crate) fn left(d: Option<Instant>) -> Option<Duration> {
    d.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Send `parts`, retrying while shared memory for a large message is
/// short (as Python's `_wire.send_blocking` does); `WouldBlock` if the
/// channel stayed full (or memory short) until the timeout.
pub(crate) fn send_retrying<C: QueueChannel>(
    chan: &C,
    parts: &[&[u8]],
    timeout: Option<Duration>,
    deferred: bool,
) -> Result<(), Fault> {
    let end = deadline(timeout);
    let mut pause = Duration::from_micros(500);
    loop {
        let t = left(end);
        let r = if deferred { chan.send_deferred(parts, t) } else { chan.send_parts(parts, t) };
        match r {
            Err(Fault::NoMemory(m)) => {
                let rest = left(end);
                if rest == Some(Duration::ZERO) {
                    return Err(Fault::NoMemory(m));
                }
                std::thread::sleep(rest.map_or(pause, |r| r.min(pause)));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Receive one message of `chan` as an item, with its tag (what
/// [`Queue::get`] gives [`Queue::get_with`]).
pub(crate) fn recv_tagged<C: QueueChannel>(chan: &C, t: Option<Duration>) -> Result<(Tag, Item<C::Msg>), Fault> {
    let item = Item::new(chan.recv(t)?);
    Ok((item.tag(), item))
}

/// Receive the next item with `recv` (see [`Queue::get_with`]), waiting at
/// most `timeout` in all: control messages are skipped.
pub(crate) fn recv_item<C, T>(
    chan: &C,
    timeout: Option<Duration>,
    mut recv: impl FnMut(&C, Option<Duration>) -> Result<(Tag, T), Fault>,
) -> Result<T, GetError> {
    let end = deadline(timeout);
    loop {
        match recv(chan, left(end)) {
            Ok((Tag::Control, _)) => continue,
            Ok((_, item)) => return Ok(item),
            Err(Fault::WouldBlock) => return Err(GetError::Empty),
            Err(e) => return Err(GetError::Channel(e)),
        }
    }
}

/// The local side of an unbounded queue: the buffer and its feeder.
#[derive(Default)]
struct Local {
    buffer: VecDeque<Vec<u8>>,
    /// Someone sends the head message (the feeder, with a message taken
    /// from the buffer, or a put making its first attempt): a put must not
    /// overtake it, and the feeder waits for it.
    in_flight: bool,
    /// The feeder sleeps on the condition variable (a put wakes it only
    /// then: a wake is a system call).
    waiting: bool,
    /// No more puts from this object: the feeder ends once it has sent
    /// everything (or once nobody can receive).
    closing: bool,
    /// The feeder thread was started.
    started: bool,
}

/// The feeder thread, once started; shared with [`Feeder`] handles.
type Slot = Arc<Mutex<Option<Thread>>>;

/// A thread of this process. A process forked from this one (which has
/// no such thread) must neither join nor detach it: there, dropping it
/// forgets it.
struct Thread {
    pid: u32,
    handle: Option<JoinHandle<()>>,
}

impl Thread {
    fn join(mut self) {
        if self.pid == std::process::id() {
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            std::mem::forget(self.handle.take());
        }
    }
}

struct Shared<C> {
    chan: C,
    local: Mutex<Local>,
    cv: Condvar,
    on_error: Mutex<Option<FeederErrorHook>>,
    feeder: Slot,
}

/// What a [`Feeder`] handle can do to its queue without keeping it alive.
trait Closing: Send + Sync {
    fn set_closing(&self);
}

impl<C: QueueChannel> Closing for Shared<C> {
    fn set_closing(&self) {
        lock(&self.local).closing = true;
        self.cv.notify_all();
    }
}

/// A handle on a queue's feeder thread that outlives the queue without
/// keeping it (or its channel) alive: to end and wait for the feeder at
/// the program's exit, as Python waits for a queue's feeder at exit.
#[derive(Clone)]
pub struct Feeder {
    slot: Slot,
    shared: std::sync::Weak<dyn Closing>,
    pid: u32,
}

impl fmt::Debug for Feeder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feeder").field("running", &lock(&self.slot).is_some()).finish()
    }
}

impl Feeder {
    /// The feeder sends what is buffered and ends (as [`Queue::close`]
    /// does for it); nothing if the queue is gone, or in a process forked
    /// from the feeder's.
    pub fn close(&self) {
        if self.pid != std::process::id() {
            return; // the parent's feeder: not this process's to end
        }
        if let Some(s) = self.shared.upgrade() {
            s.set_closing();
        }
    }

    /// Whether there is nothing to wait for: the feeder never started,
    /// has ended, was joined, or belongs to the parent of this forked
    /// process.
    pub fn finished(&self) -> bool {
        self.pid != std::process::id()
            || lock(&self.slot).as_ref().map_or(true, |t| t.handle.as_ref().map_or(true, JoinHandle::is_finished))
    }

    /// Wait until the feeder thread has ended (at once if it never
    /// started, was joined already, or belongs to the parent of this
    /// forked process).
    pub fn join(&self) {
        if self.pid != std::process::id() {
            return;
        }
        let t = lock(&self.slot).take();
        if let Some(t) = t {
            t.join();
        }
    }
}

impl<C: QueueChannel> Shared<C> {
    fn report(&self, e: &PutError, msg: &[u8]) {
        match &*lock(&self.on_error) {
            Some(hook) => hook(e, &msg[wire::split(msg).1..]),
            None => eprintln!("queues: the feeder thread dropped a message it could not send: {e}"),
        }
    }

    /// The feeder thread: send the buffer's messages in order.
    fn feed(self: Arc<Self>) {
        let deferred = self.chan.defers_sends();
        loop {
            let msg = {
                let mut l = lock(&self.local);
                loop {
                    if !l.in_flight {
                        if let Some(m) = l.buffer.pop_front() {
                            l.in_flight = true;
                            break m;
                        }
                        if l.closing {
                            return;
                        }
                    }
                    l.waiting = true;
                    l = self.cv.wait_timeout(l, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
                    l.waiting = false;
                }
            };
            loop {
                match send_retrying(&self.chan, &[&msg], Some(FEEDER_SLICE), deferred) {
                    Ok(()) => break,
                    Err(Fault::WouldBlock | Fault::NoMemory(_)) => {
                        // Still full. Once this object has let go of the
                        // queue and no other process is attached, nobody
                        // can ever receive: drop what is buffered.
                        if lock(&self.local).closing && self.chan.peers() == 0 {
                            let mut l = lock(&self.local);
                            l.buffer.clear();
                            l.in_flight = false;
                            return;
                        }
                    }
                    Err(e) => {
                        self.report(&PutError::Channel(e), &msg);
                        break;
                    }
                }
            }
            lock(&self.local).in_flight = false;
        }
    }
}

/// A multi-producer, multi-consumer FIFO queue of byte messages shared by
/// processes (the semantics of Python's `multiprocessing.Queue`; see the
/// module docs).
///
/// Share one `Queue` between threads by reference or `Arc`; give another
/// process its [`Queue::handle`] and have it call [`Queue::attach`]. Keep
/// this queue alive until the other process has attached: when the last
/// attached process drops it, the queue is destroyed.
pub struct Queue<C: QueueChannel = ShmChannel, Y: QueueSync = ShmSync> {
    shared: Arc<Shared<C>>,
    mode: Mode,
    maxsize: u64,
    sem: Option<Y::Semaphore>,
    closed: AtomicBool,
    join_cancelled: AtomicBool,
}

impl<C: QueueChannel, Y: QueueSync> fmt::Debug for Queue<C, Y> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("mode", &self.mode)
            .field("maxsize", &self.maxsize)
            .field("segment", &self.shared.chan.handle().segment)
            .finish()
    }
}

/// The mode and ring capacity for a bound (`0`: unbounded).
pub(crate) fn mode_for(maxsize: u64) -> Result<(Mode, u64), QueueError> {
    match maxsize {
        0 => Ok((Mode::Unbounded, UNBOUNDED_CAPACITY)),
        m if m <= EXACT_MAX => Ok((Mode::Exact, m)),
        m if m <= MAX_BOUND => Ok((Mode::Semaphore, UNBOUNDED_CAPACITY)),
        m => Err(QueueError::Invalid(format!("queue bound {m} is above the largest, {MAX_BOUND}"))),
    }
}

fn queue_channel(capacity: u64) -> Result<ShmChannel, QueueError> {
    let opts = ChannelOptions::new()
        .capacity(capacity)
        .slot_size(SLOT_SIZE)
        .max_attachments(MAX_ATTACHMENTS)
        .roles(Roles::BOTH);
    Ok(ShmChannel::create(&opts)?)
}

impl Queue<ShmChannel> {
    /// A new queue in this node's shared memory, bounded by `maxsize`
    /// items (`0`: unbounded).
    pub fn new(maxsize: u64) -> Result<Queue, QueueError> {
        let (mode, capacity) = mode_for(maxsize)?;
        let sem = match mode {
            Mode::Semaphore => {
                let m = u32::try_from(maxsize).expect("checked by mode_for");
                Some(ShmSemaphore::create(m, Some(m))?)
            }
            _ => None,
        };
        Queue::from_channel(queue_channel(capacity)?, maxsize, sem)
    }

    /// Attach to the queue `handle` names (from any process of this node).
    pub fn attach(handle: &QueueHandle) -> Result<Queue, QueueError> {
        handle.expect(QueueKind::Queue, "Queue")?;
        Queue::attach_parts(handle)
    }

    fn attach_parts(handle: &QueueHandle) -> Result<Queue, QueueError> {
        let ch = handle.channel.as_ref().ok_or_else(|| QueueError::Handle("no channel".into()))?;
        let chan = ShmChannel::attach(ch, Roles::BOTH)?;
        let sem = handle.sem.as_ref().map(ShmSemaphore::attach).transpose()?;
        let maxsize = if handle.mode == Mode::Unbounded { 0 } else { handle.maxsize };
        let q = Queue::from_channel(chan, maxsize, sem)?;
        if q.mode != handle.mode {
            return Err(QueueError::Handle(format!("mode {:?} does not fit bound {maxsize}", handle.mode)));
        }
        Ok(q)
    }

    /// The handle other processes attach by ([`Queue::attach`]).
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            kind: QueueKind::Queue,
            mode: self.mode,
            maxsize: self.maxsize,
            channel: Some(self.shared.chan.handle()),
            recv: None,
            sem: self.sem.as_ref().map(|s| s.handle().clone()),
            tasks: None,
        }
    }
}

impl<C: QueueChannel, Y: QueueSync> Queue<C, Y> {
    /// A queue on a channel made elsewhere (a channel of another node,
    /// say). `maxsize` chooses the mode as [`Queue::new`] does: an exact
    /// queue's channel must have `maxsize` slots, and a queue bounded above
    /// `EXACT_MAX` needs its semaphore of `maxsize` permits.
    pub fn from_channel(chan: C, maxsize: u64, sem: Option<Y::Semaphore>) -> Result<Queue<C, Y>, QueueError> {
        let (mode, capacity) = mode_for(maxsize)?;
        // A channel that cannot say (one of another node: 0) is taken at
        // its word.
        if mode == Mode::Exact && chan.capacity() != 0 && chan.capacity() as u64 != capacity {
            return Err(QueueError::Handle(format!(
                "a queue bounded by {maxsize} needs a channel of {maxsize} slots, not {}",
                chan.capacity()
            )));
        }
        if sem.is_some() != (mode == Mode::Semaphore) {
            return Err(QueueError::Handle(format!(
                "a semaphore goes with bounds above {EXACT_MAX} only (bound {maxsize})"
            )));
        }
        if let Some(max) = sem.as_ref().and_then(|s| s.max()) {
            if u64::from(max) != maxsize {
                return Err(QueueError::Handle(format!("the semaphore's bound {max} is not {maxsize}")));
            }
        }
        Ok(Queue {
            shared: Arc::new(Shared {
                chan,
                local: Mutex::new(Local::default()),
                cv: Condvar::new(),
                on_error: Mutex::new(None),
                feeder: Arc::new(Mutex::new(None)),
            }),
            mode,
            maxsize: if mode == Mode::Unbounded { 0 } else { maxsize },
            sem,
            closed: AtomicBool::new(false),
            join_cancelled: AtomicBool::new(false),
        })
    }

    /// Put `data`; another process receives it as [`Tag::Bytes`] (Python's
    /// `get` returns a `bytes` object). `timeout`: how long a bounded queue
    /// may wait for room (`None`: no limit; `Some(Duration::ZERO)`: not at
    /// all); an unbounded queue never waits.
    pub fn put(&self, data: &[u8], timeout: Option<Duration>) -> Result<(), PutError> {
        self.put_tagged(Tag::Bytes, data, timeout)
    }

    /// [`Queue::put`] with the message's tag (a [`Tag::Pickle`] for a
    /// Python reader to unpickle, [`Tag::Raw`] for raw bytes).
    pub fn put_tagged(&self, tag: Tag, payload: &[u8], timeout: Option<Duration>) -> Result<(), PutError> {
        let pre = wire::prefix(tag, payload)?.map(|p| [p]);
        let parts: &[&[u8]] = match &pre {
            Some(p) => &[p, payload],
            None => &[payload],
        };
        // An exact queue's send is the bound: never deferred.
        let exact = self.mode == Mode::Exact;
        let send = |chan: &C, t: Option<Duration>| {
            let r = if !exact && t == Some(Duration::ZERO) && chan.defers_sends() {
                chan.send_deferred(parts, t)
            } else {
                send_retrying(chan, parts, t, false)
            };
            match r {
                Ok(()) => Ok(true),
                Err(Fault::WouldBlock | Fault::NoMemory(_)) => Ok(false),
                Err(e) => Err(e),
            }
        };
        self.put_with(timeout, send, || Ok(parts.concat())).map(|_| ())
    }

    /// A put whose sending the caller does (a binding that sends its own
    /// objects, say), by the queue's rules: an exact queue calls
    /// `send(chan, timeout)` once, which sends the message waiting at most
    /// `timeout` for room and returns whether it did ([`PutError::Full`]
    /// if not); a queue bounded by a semaphore first takes a unit
    /// (waiting at most `timeout`), then puts as an unbounded one. An
    /// unbounded put calls `send(chan, Some(Duration::ZERO))` unless
    /// earlier messages still wait in the local buffer (not under the
    /// buffer's lock: it may take time; no other put overtakes it
    /// meanwhile); if that did not send the message (or could not be
    /// called), `buffered()` makes the whole message (tag byte included)
    /// for the feeder thread to send (it may be called under the buffer's
    /// lock: it must not wait).
    ///
    /// Returns whether this put started the feeder thread.
    pub fn put_with(
        &self,
        timeout: Option<Duration>,
        send: impl FnOnce(&C, Option<Duration>) -> Result<bool, Fault>,
        buffered: impl FnOnce() -> Result<Vec<u8>, Fault>,
    ) -> Result<bool, PutError> {
        // Relaxed: a flag of this object only; close() is not a fence.
        if self.closed.load(Ordering::Relaxed) {
            return Err(PutError::Closed);
        }
        match self.mode {
            Mode::Exact => {
                return match send(&self.shared.chan, timeout) {
                    Ok(true) => Ok(false),
                    Ok(false) => Err(PutError::Full),
                    Err(e) => Err(PutError::Channel(e)),
                }
            }
            Mode::Semaphore => {
                let sem = self.sem.as_ref().expect("semaphore mode");
                if !sem.acquire(timeout).map_err(PutError::Sync)? {
                    return Err(PutError::Full);
                }
            }
            Mode::Unbounded => {}
        }
        let r = self.put_or_buffer(|chan| send(chan, Some(Duration::ZERO)), buffered);
        if r.is_err() {
            if let Some(sem) = &self.sem {
                let _ = sem.release();
            }
        }
        r
    }

    /// See [`Queue::put_with`].
    fn put_or_buffer(
        &self,
        direct: impl FnOnce(&C) -> Result<bool, Fault>,
        buffered: impl FnOnce() -> Result<Vec<u8>, Fault>,
    ) -> Result<bool, PutError> {
        let s = &*self.shared;
        let mut l = lock(&s.local);
        if !l.buffer.is_empty() || l.in_flight {
            // Earlier messages wait: this one goes after them.
            l.buffer.push_back(buffered().map_err(PutError::Channel)?);
            return self.start_feeder(l);
        }
        // Hold the head position (as the feeder does while it sends) and
        // try without the lock: `direct` may wait (a binding may let other
        // threads run meanwhile, and they must not block on this lock).
        l.in_flight = true;
        drop(l);
        // The message to buffer if the attempt did not send it.
        let r = match direct(&s.chan) {
            Ok(true) => Ok(None),
            Ok(false) => buffered().map(Some),
            Err(e) => Err(e),
        };
        let mut l = lock(&s.local);
        l.in_flight = false;
        match r {
            Ok(Some(m)) => {
                // The ring is full: the feeder sends it, before what other
                // puts buffered meanwhile.
                l.buffer.push_front(m);
                self.start_feeder(l)
            }
            Ok(None) => {
                Self::wake(l, &s.cv);
                Ok(false)
            }
            Err(e) => {
                Self::wake(l, &s.cv);
                Err(PutError::Channel(e))
            }
        }
    }

    /// Wake the feeder if it sleeps and has work (puts buffered while a
    /// first attempt held the head position).
    fn wake(l: MutexGuard<'_, Local>, cv: &Condvar) {
        let wake = l.waiting && !l.buffer.is_empty();
        drop(l);
        if wake {
            cv.notify_one();
        }
    }

    /// Start the feeder thread unless it runs; whether this call started it.
    fn start_feeder(&self, mut l: MutexGuard<'_, Local>) -> Result<bool, PutError> {
        let s = &*self.shared;
        let start = !l.started;
        if start {
            let shared = Arc::clone(&self.shared);
            let t = std::thread::Builder::new()
                .name("QueueFeederThread".to_owned())
                .spawn(move || shared.feed())
                .map_err(|e| PutError::Channel(Fault::Other(format!("cannot start the feeder thread: {e}"))))?;
            l.started = true;
            *lock(&s.feeder) = Some(Thread { pid: std::process::id(), handle: Some(t) });
        }
        Self::wake(l, &s.cv);
        Ok(start)
    }

    /// Messages this object holds in its local buffer for the feeder
    /// (the one being sent included).
    pub fn buffered(&self) -> usize {
        let l = lock(&self.shared.local);
        l.buffer.len() + usize::from(l.in_flight)
    }

    /// A handle on the feeder thread (see [`Feeder`]).
    pub fn feeder(&self) -> Feeder {
        let shared: Arc<dyn Closing> = self.shared.clone();
        Feeder { slot: Arc::clone(&self.shared.feeder), shared: Arc::downgrade(&shared), pid: std::process::id() }
    }

    /// Take the next item, waiting at most `timeout` (`None`: no limit;
    /// `Some(Duration::ZERO)`: not at all); [`GetError::Empty`] if none
    /// came. Control messages are skipped.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Item<C::Msg>, GetError> {
        self.get_with(timeout, recv_tagged)
    }

    /// A get whose receiving the caller does, by the queue's rules:
    /// `recv(chan, t)` receives one message waiting at most `t`
    /// ([`Fault::WouldBlock`] if none came) and says its tag; control
    /// messages are skipped (`recv` is called again with the time left),
    /// and a queue bounded by a semaphore gives a unit back for the item
    /// taken (the item is returned even if the unit cannot be given back).
    pub fn get_with<T>(
        &self,
        timeout: Option<Duration>,
        recv: impl FnMut(&C, Option<Duration>) -> Result<(Tag, T), Fault>,
    ) -> Result<T, GetError> {
        // Relaxed: as in put_with.
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed);
        }
        let item = recv_item(&self.shared.chan, timeout, recv)?;
        if let Some(sem) = &self.sem {
            // The item is taken either way: a semaphore that cannot take
            // its unit back (its node is gone) makes later puts fail, and
            // must not lose the item too.
            let _ = sem.release();
        }
        Ok(item)
    }

    /// Approximate number of items in the queue (those this object has not
    /// yet sent from its local buffer included).
    pub fn qsize(&self) -> usize {
        match &self.sem {
            // An object that cannot say (its node is gone) counts as full.
            Some(sem) => (self.maxsize - u64::from(sem.value().unwrap_or(0))) as usize,
            None => {
                // A message the feeder is sending counts (once it is in the
                // ring, until the feeder notes it, it may count twice).
                let l = lock(&self.shared.local);
                self.shared.chan.len() + l.buffer.len() + usize::from(l.in_flight)
            }
        }
    }

    /// Whether the queue looks empty (a snapshot).
    pub fn empty(&self) -> bool {
        let l = lock(&self.shared.local);
        self.shared.chan.is_empty() && l.buffer.is_empty() && !l.in_flight
    }

    /// Whether a bounded queue looks full (a snapshot; never for an
    /// unbounded one).
    pub fn full(&self) -> bool {
        match self.mode {
            Mode::Exact => self.shared.chan.is_full(),
            Mode::Semaphore => self.sem.as_ref().is_some_and(|s| s.value().map_or(true, |v| v == 0)),
            Mode::Unbounded => false,
        }
    }

    /// The bound (`0`: unbounded).
    pub fn maxsize(&self) -> u64 {
        self.maxsize
    }

    /// How the queue is bounded.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The channel under the queue.
    pub fn channel(&self) -> &C {
        &self.shared.chan
    }

    /// Have the feeder thread call `hook` with each message it cannot send
    /// (and drops) instead of printing the error (Python's
    /// `_on_queue_feeder_error`).
    pub fn set_feeder_error_hook(&self, hook: FeederErrorHook) {
        *lock(&self.shared.on_error) = Some(hook);
    }

    /// This object will put (and get) no more: the feeder sends what is
    /// buffered and ends. Other objects and processes are not affected.
    pub fn close(&self) {
        // Relaxed: see put_tagged; the feeder learns it under its mutex.
        self.closed.store(true, Ordering::Relaxed);
        lock(&self.shared.local).closing = true;
        self.shared.cv.notify_all();
    }

    /// Whether [`Queue::close`] was called.
    pub fn is_closed(&self) -> bool {
        // Relaxed: as in put_tagged.
        self.closed.load(Ordering::Relaxed)
    }

    /// Wait until the feeder thread has sent everything buffered (and, on
    /// a channel that defers sends, until they are all in). Call after
    /// [`Queue::close`].
    pub fn join_thread(&self) -> Result<(), Fault> {
        if !self.is_closed() {
            return Err(Fault::Other("join_thread() before close(): call close() first".into()));
        }
        self.feeder().join();
        self.shared.chan.flush()
    }

    /// Do not wait for the feeder thread when this queue is dropped (what
    /// is still buffered may be lost).
    pub fn cancel_join_thread(&self) {
        // Relaxed: read by drop, on a thread that owns the queue.
        self.join_cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether no other process is attached (dead ones swept first).
    pub(crate) fn alone(&self) -> bool {
        self.shared.chan.peers() == 0
    }
}

impl<C: QueueChannel, Y: QueueSync> Drop for Queue<C, Y> {
    fn drop(&mut self) {
        self.shared.set_closing();
        // Relaxed: we own the queue; cancel_join_thread happened before.
        let cancelled = self.join_cancelled.load(Ordering::Relaxed);
        if !cancelled {
            self.feeder().join();
        }
        if !cancelled {
            if let Err(e) = self.shared.chan.flush() {
                eprintln!("queues: sends still on their way failed: {e}");
            }
        }
        if let Some(sem) = &self.sem {
            if self.alone() {
                sem.destroy();
            }
        }
    }
}

/// A [`Queue`] whose items are counted until marked done: producers
/// [`put`](JoinableQueue::put), consumers [`task_done`](JoinableQueue::task_done)
/// each item they took, and [`join`](JoinableQueue::join) waits until every
/// item put is done (Python's `multiprocessing.JoinableQueue`).
///
/// An item is counted before it can be taken (so a consumer's `task_done`
/// always finds it counted) and uncounted if its put fails. The count,
/// its lock and condition live in shared memory; a process that dies
/// holding the lock does not block the others.
pub struct JoinableQueue<C: QueueChannel = ShmChannel, Y: QueueSync = ShmSync> {
    queue: Queue<C, Y>,
    unfinished: Y::Semaphore,
    cond: Y::Condition,
    lock: Y::Lock,
}

impl<C: QueueChannel, Y: QueueSync> fmt::Debug for JoinableQueue<C, Y> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue").field("queue", &self.queue).field("unfinished", &self.unfinished()).finish()
    }
}

/// Holds the task lock; releases it on drop.
struct Held<'a, L: crate::sync::Lock>(&'a L);

impl<'a, L: crate::sync::Lock> Held<'a, L> {
    fn new(l: &'a L) -> Result<Held<'a, L>, Fault> {
        l.acquire()?;
        Ok(Held(l))
    }
}

impl<L: crate::sync::Lock> Drop for Held<'_, L> {
    fn drop(&mut self) {
        let _ = self.0.release();
    }
}

impl JoinableQueue<ShmChannel> {
    /// A new joinable queue bounded by `maxsize` items (`0`: unbounded).
    pub fn new(maxsize: u64) -> Result<JoinableQueue, QueueError> {
        let queue = Queue::new(maxsize)?;
        let unfinished = ShmSemaphore::create(0, None)?;
        let cond = ShmCondition::create()?;
        let lock = ShmLock::create()?;
        Ok(JoinableQueue { queue, unfinished, cond, lock })
    }

    /// Attach to the joinable queue `handle` names.
    pub fn attach(handle: &QueueHandle) -> Result<JoinableQueue, QueueError> {
        handle.expect(QueueKind::Joinable, "JoinableQueue")?;
        let [u, c, l] = handle.tasks.as_ref().ok_or_else(|| QueueError::Handle("no task objects".into()))?;
        let queue = Queue::attach_parts(handle)?;
        Ok(JoinableQueue {
            queue,
            unfinished: ShmSemaphore::attach(u)?,
            cond: ShmCondition::attach(c)?,
            lock: ShmLock::attach(l)?,
        })
    }

    /// The handle other processes attach by ([`JoinableQueue::attach`]).
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            kind: QueueKind::Joinable,
            tasks: Some([self.unfinished.handle().clone(), self.cond.handle().clone(), self.lock.handle().clone()]),
            ..self.queue.handle()
        }
    }
}

impl<C: QueueChannel, Y: QueueSync> JoinableQueue<C, Y> {
    /// A joinable queue over `queue` and shared task objects made
    /// elsewhere (`unfinished` starts at 0 and has no bound).
    pub fn from_parts(
        queue: Queue<C, Y>,
        unfinished: Y::Semaphore,
        cond: Y::Condition,
        lock: Y::Lock,
    ) -> JoinableQueue<C, Y> {
        JoinableQueue { queue, unfinished, cond, lock }
    }

    /// Count an item, then put it ([`Queue::put`]); a put that fails is
    /// uncounted.
    pub fn put(&self, data: &[u8], timeout: Option<Duration>) -> Result<(), PutError> {
        self.put_tagged(Tag::Bytes, data, timeout)
    }

    /// [`JoinableQueue::put`] with the message's tag.
    pub fn put_tagged(&self, tag: Tag, payload: &[u8], timeout: Option<Duration>) -> Result<(), PutError> {
        self.counted(|| self.queue.put_tagged(tag, payload, timeout))
    }

    /// [`Queue::put_with`], the item counted first.
    pub fn put_with(
        &self,
        timeout: Option<Duration>,
        send: impl FnOnce(&C, Option<Duration>) -> Result<bool, Fault>,
        buffered: impl FnOnce() -> Result<Vec<u8>, Fault>,
    ) -> Result<bool, PutError> {
        self.counted(|| self.queue.put_with(timeout, send, buffered))
    }

    /// Count an item, then `put` it; uncount it if the put fails. The
    /// item is counted before it can be taken, so that a consumer's
    /// `task_done` finds it counted.
    fn counted<T>(&self, put: impl FnOnce() -> Result<T, PutError>) -> Result<T, PutError> {
        if self.queue.is_closed() {
            return Err(PutError::Closed);
        }
        {
            let _held = Held::new(&self.lock).map_err(PutError::Sync)?;
            if let Err(e) = self.unfinished.release() {
                return Err(PutError::Sync(Fault::Other(format!("too many unfinished tasks: {e}"))));
            }
        }
        // The shared lock is not held while a bounded put waits for room.
        let r = put();
        if r.is_err() {
            if let Ok(_held) = Held::new(&self.lock) {
                let _ = self.unfinished.acquire(Some(Duration::ZERO));
                if self.unfinished.value().is_ok_and(|v| v == 0) {
                    let _ = self.cond.notify_all();
                }
            }
        }
        r
    }

    /// Take the next item ([`Queue::get`]); call
    /// [`JoinableQueue::task_done`] once it is processed.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Item<C::Msg>, GetError> {
        self.queue.get(timeout)
    }

    /// One item taken from the queue has been processed.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let _held = Held::new(&self.lock).map_err(TaskDoneError::Sync)?;
        if !self.unfinished.acquire(Some(Duration::ZERO)).map_err(TaskDoneError::Sync)? {
            return Err(TaskDoneError::TooManyCalls);
        }
        if self.unfinished.value().map_err(TaskDoneError::Sync)? == 0 {
            self.cond.notify_all().map_err(TaskDoneError::Sync)?;
        }
        Ok(())
    }

    /// Wait until every item put has been marked done.
    pub fn join(&self) -> Result<(), Fault> {
        self.join_timeout(None).map(|_| ())
    }

    /// [`JoinableQueue::join`] for at most `timeout`; whether every item is
    /// done.
    pub fn join_timeout(&self, timeout: Option<Duration>) -> Result<bool, Fault> {
        let end = deadline(timeout);
        let _held = Held::new(&self.lock)?;
        while self.unfinished.value()? != 0 {
            let rest = left(end);
            if rest == Some(Duration::ZERO) {
                return Ok(false);
            }
            // Slices: a notifier that died between its count and its
            // notify must not leave this wait asleep for ever.
            let slice = rest.map_or(JOIN_SLICE, |r| r.min(JOIN_SLICE));
            self.cond.wait(&self.lock, Some(slice))?;
        }
        Ok(true)
    }

    /// Items put and not yet marked done (a snapshot; 0 if the count
    /// cannot be read).
    pub fn unfinished(&self) -> u32 {
        self.unfinished.value().unwrap_or(0)
    }

    /// The queue under the counting.
    pub fn queue(&self) -> &Queue<C, Y> {
        &self.queue
    }

    /// See [`Queue::qsize`].
    pub fn qsize(&self) -> usize {
        self.queue.qsize()
    }

    /// See [`Queue::empty`].
    pub fn empty(&self) -> bool {
        self.queue.empty()
    }

    /// See [`Queue::full`].
    pub fn full(&self) -> bool {
        self.queue.full()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.queue.close();
    }

    /// See [`Queue::join_thread`].
    pub fn join_thread(&self) -> Result<(), Fault> {
        self.queue.join_thread()
    }

    /// See [`Queue::cancel_join_thread`].
    pub fn cancel_join_thread(&self) {
        self.queue.cancel_join_thread();
    }
}

impl<C: QueueChannel, Y: QueueSync> Drop for JoinableQueue<C, Y> {
    fn drop(&mut self) {
        if self.queue.alone() {
            self.unfinished.destroy();
            self.cond.destroy();
            self.lock.destroy();
        }
    }
}
