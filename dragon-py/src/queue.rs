//! `_native.Queue` and `_native.Feeder`: the rules of a
//! `dragon.queues.Queue` (and `JoinableQueue`) are the `queues` crate's,
//! over the channel object and synchronisation objects Python made.
//!
//! - A put goes through [`queues::Queue::put_with`] (a joinable queue's
//!   through [`queues::JoinableQueue::put_with`], which counts the item
//!   first and uncounts it if the put fails). An exact queue's send waits
//!   for room as `_wire.send_blocking` does. An unbounded put (and a put
//!   of a queue bounded by a semaphore, once it has its unit) is first
//!   tried by `Channel.send`'s own code (with the GIL held, lending large
//!   messages to the block store, forwarding a received block); when the
//!   ring is full the message waits in the crate's local buffer, and the
//!   crate's feeder thread (a Rust thread: it needs the GIL only to report
//!   an error) sends it, in order. The feeder drops what it holds once the
//!   queue is closed or gone and no other process is attached, as the
//!   standard feeder stops on a broken pipe.
//! - A get goes through [`queues::Queue::get_with`]: the channel object
//!   receives (zero-copy views of large messages included), the crate
//!   skips control messages and gives a semaphore's unit back.
//! - The semaphore, task count, lock and condition are `dragon._native`
//!   objects of this node or of another ([`PySync`]), so that a queue
//!   works across nodes; an exception one of them raises (a Ctrl-C in a
//!   wait, say) is the one the call raises.
//!
//! What stays in Python (`dragon/queues.py`): pickling (of the queue and
//! of its items), the snapshots `qsize`/`empty`/`full`, and the exit hooks
//! (`util.Finalize`) that end and wait for the feeder.
use crate::blocking::block_timeout;
use crate::channel::{send_obj, Att, Channel, NOT_SENT, NO_MEMORY, SENT};
use crate::errors::{fault_err, get_err, put_err, queue_err, task_done_err, too_large_for_shm};
use crate::lent;
use crate::remote::{message, Outgoing, RemoteChannel, SLICE};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use queues::{Fault, GetError, PutError, QueueChannel, QueueSync, ShmChannel};
use shm_primitives::{Handle, ProcessId};
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport_abi::abi::{DRAGON_EAGAIN, DRAGON_EIDRM, DRAGON_ENOENT, DRAGON_EPIPE, DRAGON_ETIMEDOUT};
use transport_abi::loader::PluginError;

/// The channel under a queue: one of this node (the attachment shared
/// with the Python `Channel` object) or of another node.
enum PyChan {
    Local(Arc<Att>),
    Remote(Py<RemoteChannel>),
}

impl PyChan {
    fn local(att: &Att) -> Result<channels_core::Channel, Fault> {
        att.get().map_err(|_| Fault::Other("a process-local channel cannot be used after fork".into()))
    }

    fn clone_ref(&self, py: Python<'_>) -> PyChan {
        match self {
            PyChan::Local(att) => PyChan::Local(Arc::clone(att)),
            PyChan::Remote(rc) => PyChan::Remote(rc.clone_ref(py)),
        }
    }
}

fn remote_fault(e: &PluginError) -> Fault {
    match e.code() {
        DRAGON_ETIMEDOUT | DRAGON_EAGAIN => Fault::WouldBlock,
        DRAGON_EPIPE => Fault::Closed,
        DRAGON_EIDRM | DRAGON_ENOENT => Fault::Destroyed,
        _ => Fault::Other(e.message().to_owned()),
    }
}

/// Send a whole message (tag byte included) on a channel of this node,
/// waiting at most `t`: large ones as a block of the run's store, as
/// `Channel.send` sends them.
fn send_local(ch: &channels_core::Channel, msg: &[u8], t: Option<Duration>) -> Result<(), Fault> {
    let (tag, skip) = queues::wire::split(msg);
    if let Some(p) = lent::block_kind(tag).and_then(|k| lent::prepare(&msg[skip..], None, k)) {
        // The block passes to the message only as the message is written.
        let write = |dst: &mut [u8]| {
            p.commit();
            dst.copy_from_slice(&p.desc);
        };
        let r = ch.send_with_timeout(p.desc.len(), t, write);
        let sent = r.is_ok();
        let r = r.map_err(|e| queues::channel::send_fault(e, msg.len()));
        p.done(sent);
        return r;
    }
    ShmChannel::send_parts_on(ch, &[msg], t)
}

/// How long a put to a queue of another node waits for the transport to
/// take it (its deferred sends in flight at their limit) before the
/// message goes to the feeder thread: about a round trip under load, so
/// that a steady stream is paced by the acknowledgements rather than
/// handed to another thread one message at a time. A put meets this wait
/// once when the receiving side stalls; the puts after it are buffered at
/// once, behind it.
const REMOTE_ROOM_WAIT: Duration = Duration::from_millis(20);

/// Send a whole message to a channel of another node with `send`: from a
/// block of this node's store if it is lent to one (see `Outgoing`), else
/// as it is.
fn remote_send(msg: &[u8], send: impl Fn(&[u8]) -> Result<(), PluginError>) -> Result<(), Fault> {
    let r = match Outgoing::of_message(msg) {
        Some(out) => {
            let r = send(out.bytes());
            out.finish(r.is_ok());
            r
        }
        None => send(msg),
    };
    r.map_err(|e| remote_fault(&e))
}

/// A message of `len` bytes can never fit in shared memory: the error
/// `_wire.check_fits` raises.
fn check_fits(len: usize) -> PyResult<()> {
    let dir = transport_shm::segment::SHM_DIR;
    match transport_shm::segment::shm_total() {
        Some(total) if len as u64 > total => Err(too_large_for_shm(len, dir, total)),
        _ => Ok(()),
    }
}

impl QueueChannel for PyChan {
    type Msg = Vec<u8>;

    fn send_parts(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault> {
        let msg = parts.concat();
        match self {
            PyChan::Local(att) => send_local(&PyChan::local(att)?, &msg, timeout),
            PyChan::Remote(rc) => {
                // A large message goes through this node's block store, as
                // `RemoteChannel.send` sends it.
                let t = Some(timeout.unwrap_or(SLICE).min(SLICE));
                remote_send(&msg, |b| rc.get().ch.send(b, t))
            }
        }
    }

    fn defers_sends(&self) -> bool {
        matches!(self, PyChan::Remote(_))
    }

    fn send_deferred(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault> {
        match self {
            PyChan::Local(_) => self.send_parts(parts, timeout),
            PyChan::Remote(rc) => {
                let t = Some(timeout.unwrap_or(SLICE).min(SLICE));
                // The feeder's message is one part: sent from where it is.
                let joined;
                let msg = match parts {
                    [one] => *one,
                    _ => {
                        joined = parts.concat();
                        &joined
                    }
                };
                remote_send(msg, |b| rc.get().ch.send_deferred(b, t))
            }
        }
    }

    // `dragon.queues` waits for deferred sends itself (`_wire.flush_quietly`
    // at exit and in `join_thread`): the default `flush` does nothing.

    fn recv(&self, timeout: Option<Duration>) -> Result<Vec<u8>, Fault> {
        match self {
            PyChan::Local(att) => ShmChannel::recv_on(&PyChan::local(att)?, timeout).map(|m| m.to_vec()),
            // `dragon.queues` receives through the channel object.
            PyChan::Remote(_) => Err(Fault::Other("receive from a queue of another node through its channel".into())),
        }
    }

    fn poll(&self) -> bool {
        match self {
            PyChan::Local(att) => PyChan::local(att).is_ok_and(|c| c.is_readable()),
            PyChan::Remote(_) => false,
        }
    }

    fn peers(&self) -> u32 {
        match self {
            PyChan::Local(att) => PyChan::local(att).map_or(0, |c| {
                let _ = c.recover();
                c.attachment_count().saturating_sub(1)
            }),
            // Not known across nodes: at least one (the channel's node
            // keeps the channel while anyone may use it).
            PyChan::Remote(_) => 1,
        }
    }

    fn len(&self) -> usize {
        match self {
            PyChan::Local(att) => PyChan::local(att).map_or(0, |c| c.len()),
            PyChan::Remote(_) => 0,
        }
    }

    fn is_full(&self) -> bool {
        match self {
            PyChan::Local(att) => PyChan::local(att).is_ok_and(|c| c.is_full()),
            PyChan::Remote(_) => false,
        }
    }

    fn capacity(&self) -> usize {
        match self {
            PyChan::Local(att) => PyChan::local(att).map_or(0, |c| c.capacity()),
            PyChan::Remote(_) => 0,
        }
    }

    fn handle(&self) -> Handle {
        let known = match self {
            PyChan::Local(att) => att.handle.clone().or_else(|| PyChan::local(att).ok().map(|c| c.handle())),
            PyChan::Remote(rc) => Handle::from_bytes(&rc.get().handle).ok(),
        };
        // Only for descriptions (`dragon.queues` pickles the channel's own
        // handle): a channel that cannot say is named as nothing.
        known.unwrap_or(Handle {
            kind: shm_primitives::Kind::Channel,
            id: 0,
            generation: 0,
            offset: 0,
            node: 0,
            segment: String::new(),
            address: String::new(),
        })
    }
}

thread_local! {
    /// The exception a queue's synchronisation object raised during a
    /// crate operation on this thread (the crate sees a [`Fault`]).
    static RAISED: RefCell<Option<PyErr>> = const { RefCell::new(None) };
}

/// Call a method of a synchronisation object; an exception becomes a
/// [`Fault`], and is kept to be raised when the crate returns.
fn call_sync<'py>(
    obj: &Py<PyAny>,
    name: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
    py: Python<'py>,
) -> Result<Bound<'py, PyAny>, Fault> {
    obj.bind(py).call_method1(name, args).map_err(raise_later)
}

/// A Python exception met inside a crate operation: kept, to be raised by
/// [`run`] when the operation returns; the crate sees a [`Fault`].
pub(crate) fn raise_later(e: PyErr) -> Fault {
    let f = Fault::Other(e.to_string());
    RAISED.with(|r| *r.borrow_mut() = Some(e));
    f
}

/// Run a crate operation; if it fails, the exception one of the queue's
/// synchronisation objects raised meanwhile (a Ctrl-C during a wait, an
/// object's node lost) is raised rather than the crate's error.
pub(crate) fn run<T, E>(f: impl FnOnce() -> Result<T, E>, err: impl FnOnce(E) -> PyErr) -> PyResult<T> {
    RAISED.with(|r| r.borrow_mut().take());
    let r = f();
    let raised = RAISED.with(|r| r.borrow_mut().take());
    r.map_err(|e| raised.unwrap_or_else(|| err(e)))
}

/// The tag of a received `(tag, payload)`.
pub(crate) fn tag_of(m: &Bound<'_, PyTuple>) -> PyResult<queues::Tag> {
    let tag: u8 = m.get_item(0)?.extract()?;
    Ok(queues::wire::split(&[tag]).0)
}

/// A Python timeout argument pair (`block`, `timeout`) for a Rust one.
pub(crate) fn block_args(t: Option<Duration>) -> (bool, Option<f64>) {
    match t {
        None => (true, None),
        Some(Duration::ZERO) => (false, None),
        Some(d) => (true, Some(d.as_secs_f64())),
    }
}

/// A channel object of `dragon._native`: this node's (`Channel`) or
/// another node's (`RemoteChannel`), for the calls both answer.
pub(crate) enum AnyChannel<'py> {
    Local(Bound<'py, Channel>),
    Remote(Bound<'py, RemoteChannel>),
}

impl<'py> AnyChannel<'py> {
    pub(crate) fn of(ch: &Bound<'py, PyAny>) -> PyResult<AnyChannel<'py>> {
        if let Ok(c) = ch.cast::<Channel>() {
            return Ok(AnyChannel::Local(c.clone()));
        }
        match ch.cast::<RemoteChannel>() {
            Ok(r) => Ok(AnyChannel::Remote(r.clone())),
            Err(_) => Err(pyo3::exceptions::PyTypeError::new_err("a dragon channel is needed")),
        }
    }

    /// `Channel.send`.
    pub(crate) fn send(&self, data: &Bound<'py, PyAny>, prefix: i32, block: bool, secs: Option<f64>) -> PyResult<u8> {
        match self {
            AnyChannel::Local(c) => c.get().send(c.py(), data, prefix, block, secs),
            AnyChannel::Remote(r) => r.get().send(r.py(), data, prefix, block, secs),
        }
    }

    /// `Channel.recv`.
    pub(crate) fn recv(
        &self,
        block: bool,
        secs: Option<f64>,
        check: Option<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self {
            AnyChannel::Local(c) => c.get().recv(c.py(), block, secs, check),
            AnyChannel::Remote(r) => r.get().recv(r.py(), block, secs, check),
        }
    }

    /// `Channel.readable`.
    pub(crate) fn readable(&self) -> PyResult<bool> {
        match self {
            AnyChannel::Local(c) => c.get().readable(),
            AnyChannel::Remote(r) => r.get().readable(r.py()),
        }
    }
}

/// Send `data` on `channel` (a `Channel` or a `RemoteChannel`; `prefix`
/// as for `Channel.send`), waiting at most `t` for room, retried while
/// shared memory for a large message is short for now (the GIL released
/// between tries; `MessageTooLargeError` if it can never fit): whether it
/// was sent. What `_wire.send_blocking` is.
fn send_blocking(
    py: Python<'_>,
    channel: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    prefix: i32,
    t: Option<Duration>,
) -> PyResult<bool> {
    let ch = AnyChannel::of(channel)?;
    let end = t.map(|t| Instant::now() + t);
    let mut pause = Duration::from_micros(500);
    loop {
        let left = end.map(|e| e.saturating_duration_since(Instant::now()));
        let (block, secs) = block_args(left);
        match ch.send(data, prefix, block, secs)? {
            SENT => return Ok(true),
            NOT_SENT => return Ok(false),
            _ => check_fits(data.len().unwrap_or(0))?,
        }
        let left = end.map(|e| e.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Ok(false);
        }
        let nap = left.map_or(pause, |l| l.min(pause));
        py.detach(|| std::thread::sleep(nap));
        py.check_signals()?;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `_wire.send_blocking(ch, data, prefix, block=True, timeout=None)`: see
/// [`send_blocking`].
#[pyfunction(name = "send_blocking")]
#[pyo3(signature = (channel, data, prefix, block=true, timeout=None))]
fn send_blocking_py(
    py: Python<'_>,
    channel: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    prefix: i32,
    block: bool,
    timeout: Option<f64>,
) -> PyResult<bool> {
    send_blocking(py, channel, data, prefix, block_timeout(block, timeout)?)
}

/// A queue's synchronisation objects: `dragon._native` objects of this
/// node (`Semaphore`, `Lock`, `Condition`) or of another node
/// (`RemoteSync`, which asks that node's service), called through their
/// methods, so that each keeps its own rules (a lock's owner, waits that
/// release the GIL and let Ctrl-C through). Their lifetime is their
/// Python objects': the crate destroys none of them.
struct PySync;

/// A semaphore or lock of [`PySync`].
struct PyObj(Py<PyAny>);

impl QueueSync for PySync {
    type Semaphore = PyObj;
    type Lock = PyObj;
    type Condition = PyObj;
}

impl queues::sync::Semaphore for PyObj {
    fn acquire(&self, timeout: Option<Duration>) -> Result<bool, Fault> {
        Python::attach(|py| {
            let got = call_sync(&self.0, "acquire", block_args(timeout), py)?;
            Ok(got.is_truthy().unwrap_or(false))
        })
    }

    fn release(&self) -> Result<(), Fault> {
        Python::attach(|py| call_sync(&self.0, "release", (), py).map(|_| ()))
    }

    fn value(&self) -> Result<u32, Fault> {
        Python::attach(|py| {
            let v = call_sync(&self.0, "get_value", (), py)?;
            v.extract::<u32>().map_err(|e| Fault::Other(e.to_string()))
        })
    }
}

impl queues::sync::Lock for PyObj {
    fn acquire(&self) -> Result<(), Fault> {
        Python::attach(|py| call_sync(&self.0, "acquire", (true, None::<f64>), py).map(|_| ()))
    }

    fn release(&self) -> Result<(), Fault> {
        Python::attach(|py| call_sync(&self.0, "release", (), py).map(|_| ()))
    }
}

impl queues::sync::Condition<PyObj> for PyObj {
    fn wait(&self, lock: &PyObj, timeout: Option<Duration>) -> Result<(), Fault> {
        let secs = timeout.map(|t| t.as_secs_f64());
        Python::attach(|py| call_sync(&self.0, "wait", (lock.0.clone_ref(py), secs), py).map(|_| ()))
    }

    fn notify_all(&self) -> Result<(), Fault> {
        Python::attach(|py| call_sync(&self.0, "notify_all", (), py).map(|_| ()))
    }
}

/// What a queue is made of besides its channel (kept to make a forked
/// child's own crate queue).
struct Parts {
    /// The bound (0: unbounded).
    maxsize: u64,
    /// The semaphore of a bound above `EXACT_MAX`.
    sem: Option<Py<PyAny>>,
    /// A joinable queue's task count, lock and condition.
    tasks: Option<[Py<PyAny>; 3]>,
    /// A simple queue (no local buffer: a put waits for room).
    simple: bool,
}

/// The crate's queue: joinable or not, or a simple queue.
enum Inner {
    Plain(queues::Queue<PyChan, PySync>),
    Joinable(queues::JoinableQueue<PyChan, PySync>),
    Simple(queues::SimpleQueue<PyChan>),
}

impl Inner {
    /// The queue with a local buffer (not a simple queue).
    fn queue(&self) -> PyResult<&queues::Queue<PyChan, PySync>> {
        match self {
            Inner::Plain(q) => Ok(q),
            Inner::Joinable(j) => Ok(j.queue()),
            Inner::Simple(_) => Err(pyo3::exceptions::PyTypeError::new_err("a simple queue has no feeder")),
        }
    }

    /// Whether a put's send is the bounded one (it may wait for room; never
    /// deferred): an exact queue's, a simple queue's.
    fn waits_for_room(&self) -> bool {
        match self {
            Inner::Simple(_) => true,
            q => q.queue().is_ok_and(|q| q.mode() == queues::Mode::Exact),
        }
    }

    fn put_with(
        &self,
        timeout: Option<Duration>,
        send: impl FnOnce(&PyChan, Option<Duration>) -> Result<bool, Fault>,
        buffered: impl FnOnce() -> Result<Vec<u8>, Fault>,
    ) -> Result<bool, PutError> {
        match self {
            Inner::Plain(q) => q.put_with(timeout, send, buffered),
            Inner::Joinable(j) => j.put_with(timeout, send, buffered),
            Inner::Simple(s) => s
                .put_with(|chan| match send(chan, None)? {
                    true => Ok(()),
                    false => Err(Fault::WouldBlock),
                })
                .map(|()| false),
        }
    }

    fn get_with<T>(
        &self,
        timeout: Option<Duration>,
        recv: impl FnMut(&PyChan, Option<Duration>) -> Result<(queues::Tag, T), Fault>,
    ) -> Result<T, GetError> {
        match self {
            Inner::Simple(s) => s.get_with(timeout, recv),
            q => q.queue().map_err(|_| GetError::Closed)?.get_with(timeout, recv),
        }
    }

    /// Do not wait for the feeder when dropped.
    fn cancel_join_thread(&self) {
        if let Ok(q) = self.queue() {
            q.cancel_join_thread();
        }
    }
}

/// The put side of a `dragon.queues` queue in this process, with its
/// bounds, its task counting and the receiving rules.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Queue {
    /// Process that made `q`.
    pid: u32,
    /// Never dropped outside `pid` (its feeder is a thread of `pid`); `None`
    /// only while being dropped.
    q: Option<Inner>,
    /// The queue of a forked child, made on its first use there.
    forked: Mutex<Option<(u32, Arc<Inner>)>>,
    chan: PyChan,
    /// The channel object (`Channel` or `RemoteChannel`): it receives.
    channel: Py<PyAny>,
    parts: Parts,
    on_error: Py<PyAny>,
}

/// A crate queue over `chan` whose feeder reports to `on_error(exc, data)`.
fn make(py: Python<'_>, chan: PyChan, parts: &Parts, on_error: &Py<PyAny>) -> PyResult<Inner> {
    if parts.simple {
        return Ok(Inner::Simple(queues::SimpleQueue::from_channel(chan)));
    }
    let obj = |o: &Py<PyAny>| PyObj(o.clone_ref(py));
    let q = queues::Queue::<PyChan, PySync>::from_channel(chan, parts.maxsize, parts.sem.as_ref().map(obj))
        .map_err(|e| queue_err(&e))?;
    let hook = on_error.clone_ref(py);
    q.set_feeder_error_hook(Box::new(move |e: &PutError, data: &[u8]| {
        // Declined while the interpreter shuts down: the message is dropped
        // silently then.
        let _ = Python::try_attach(|py| {
            let exc = put_err(e).into_value(py);
            if let Err(err) = hook.call1(py, (exc, PyBytes::new(py, data))) {
                err.print(py);
            }
        });
    }));
    Ok(match &parts.tasks {
        None => Inner::Plain(q),
        Some([unfinished, lock, cond]) => {
            Inner::Joinable(queues::JoinableQueue::from_parts(q, obj(unfinished), obj(cond), obj(lock)))
        }
    })
}

impl Queue {
    /// This process's queue: a fresh one in a forked child (its parent's
    /// buffer and feeder are the parent's).
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&Inner) -> PyResult<T>) -> PyResult<T> {
        let me = ProcessId::current().pid;
        if me == self.pid {
            if let Some(q) = &self.q {
                return f(q);
            }
        }
        let q = {
            let mut g = self.forked.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                Some((pid, q)) if *pid == me => Arc::clone(q),
                _ => {
                    let q = Arc::new(make(py, self.chan.clone_ref(py), &self.parts, &self.on_error)?);
                    if let Some((pid, old)) = g.replace((me, Arc::clone(&q))) {
                        if pid != me {
                            std::mem::forget(old);
                        }
                    }
                    q
                }
            }
        };
        f(&q)
    }

    /// Receive one message (`(tag, payload)`), waiting at most `t`.
    fn recv<'py>(&self, py: Python<'py>, t: Option<Duration>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let (block, secs) = block_args(t);
        AnyChannel::of(self.channel.bind(py))?.recv(block, secs, None)
    }
}

impl Queue {
    fn over(py: Python<'_>, channel: &Bound<'_, PyAny>, parts: Parts, on_error: Py<PyAny>) -> PyResult<Queue> {
        let chan = match AnyChannel::of(channel)? {
            AnyChannel::Local(c) => PyChan::Local(c.get().att()),
            AnyChannel::Remote(r) => PyChan::Remote(r.unbind()),
        };
        let q = make(py, chan.clone_ref(py), &parts, &on_error)?;
        Ok(Queue {
            pid: ProcessId::current().pid,
            q: Some(q),
            forked: Mutex::new(None),
            chan,
            channel: channel.clone().unbind(),
            parts,
            on_error,
        })
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let me = ProcessId::current().pid;
        // Python objects may go away at any time: never wait for the
        // feeder here (the exit hooks do, through a Feeder).
        let f = self.forked.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((pid, q)) = f.take() {
            if pid == me {
                q.cancel_join_thread();
                drop(q);
            } else {
                std::mem::forget(q);
            }
        }
        if let Some(q) = self.q.take() {
            if self.pid == me {
                q.cancel_join_thread();
                drop(q);
            } else {
                std::mem::forget(q);
            }
        }
    }
}

#[pymethods]
impl Queue {
    /// A queue on `channel` (a `Channel` or a `RemoteChannel`) bounded by
    /// `maxsize` (0: unbounded; above `EXACT_MAX` with `sem`, a native
    /// semaphore of `maxsize` units); `tasks`, the native task count, lock
    /// and condition of a joinable queue. The feeder thread calls
    /// `on_error(exc, data)` with each message it cannot send (and drops).
    #[new]
    #[pyo3(signature = (channel, on_error, maxsize=0, sem=None, tasks=None))]
    fn new(
        py: Python<'_>,
        channel: &Bound<'_, PyAny>,
        on_error: Py<PyAny>,
        maxsize: u64,
        sem: Option<Py<PyAny>>,
        tasks: Option<(Py<PyAny>, Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<Queue> {
        let parts = Parts { maxsize, sem, tasks: tasks.map(|(u, l, c)| [u, l, c]), simple: false };
        Queue::over(py, channel, parts, on_error)
    }

    /// A simple queue on `channel`: no local buffer, a put waits for room.
    #[staticmethod]
    fn simple(py: Python<'_>, channel: &Bound<'_, PyAny>) -> PyResult<Queue> {
        let parts = Parts { maxsize: 0, sem: None, tasks: None, simple: true };
        Queue::over(py, channel, parts, py.None())
    }

    /// Put `data` (tag `prefix` as for `Channel.send`) by the queue's
    /// rules: a joinable queue counts it first; an exact queue sends it,
    /// waiting for room (`queue.Full` if none came); a queue bounded by a
    /// semaphore takes a unit, then puts as an unbounded one does: at once
    /// if the ring has room and nothing waits in the local buffer, else
    /// into the buffer for the feeder thread (never waiting for a ring's
    /// room; for a channel of another node, waiting at most
    /// [`REMOTE_ROOM_WAIT`] for room among the sends in flight, so that a
    /// producer faster than the network keeps its pace instead of filling
    /// its buffer). Returns whether this put started the feeder thread.
    #[pyo3(signature = (data, prefix, block=true, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        prefix: i32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let t = block_timeout(block, timeout)?;
        self.with(py, |q| {
            let exact = q.waits_for_room();
            // A Python exception of either step is kept (raise_later) and
            // raised by run(); the crate sees a Fault.
            let send = |chan: &PyChan, t| {
                if exact {
                    // An exact queue's put: the send itself is bounded
                    // (never deferred), and may wait.
                    return send_blocking(py, self.channel.bind(py), data, prefix, t);
                }
                match chan {
                    PyChan::Local(att) => match send_obj(py, &att.get()?, data, prefix, Some(Duration::ZERO))? {
                        SENT => Ok(true),
                        NO_MEMORY => {
                            // Larger than all shared memory: raise (as
                            // `_wire.check_fits`; no Python code runs here,
                            // under the buffer's lock).
                            check_fits(data.len().unwrap_or(0))?;
                            Ok(false)
                        }
                        _ => Ok(false),
                    },
                    PyChan::Remote(rc) => rc.get().send_deferred(py, data, prefix, REMOTE_ROOM_WAIT.as_secs_f64()),
                }
            };
            run(
                || {
                    q.put_with(
                        t,
                        |chan, t| send(chan, t).map_err(raise_later),
                        || message(py, data, prefix).map_err(raise_later),
                    )
                },
                |e| put_err(&e),
            )
        })
    }

    /// Take the next item: `(tag, payload)` as `Channel.recv` gives it
    /// (control messages skipped; a queue bounded by a semaphore gives its
    /// unit back); `queue.Empty` if none came in time.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get<'py>(&self, py: Python<'py>, block: bool, timeout: Option<f64>) -> PyResult<Bound<'py, PyTuple>> {
        let t = block_timeout(block, timeout)?;
        self.with(py, |q| {
            run(
                || {
                    q.get_with(t, |_, t| match self.recv(py, t).map_err(raise_later)? {
                        Some(m) => Ok((tag_of(&m).map_err(raise_later)?, m)),
                        None => Err(Fault::WouldBlock),
                    })
                },
                |e| get_err(&e),
            )
        })
    }

    /// One item taken from a joinable queue has been processed.
    fn task_done(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |q| match q {
            Inner::Joinable(j) => run(|| j.task_done(), |e| task_done_err(&e)),
            _ => Err(pyo3::exceptions::PyTypeError::new_err("not a joinable queue")),
        })
    }

    /// Wait until every item put on a joinable queue has been marked done,
    /// at most `timeout` seconds (`None`: no limit); whether they are.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let t = crate::blocking::timeout(timeout)?;
        self.with(py, |q| match q {
            Inner::Joinable(j) => run(|| j.join_timeout(t), |e| fault_err(&e)),
            _ => Err(pyo3::exceptions::PyTypeError::new_err("not a joinable queue")),
        })
    }

    /// Messages waiting in this process's local buffer (the one the feeder
    /// is sending included).
    fn buffered(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |q| Ok(q.queue().map_or(0, |q| q.buffered())))
    }

    /// A handle on the feeder thread, for the exit hooks.
    fn feeder(&self, py: Python<'_>) -> PyResult<Feeder> {
        self.with(py, |q| Ok(Feeder { f: q.queue()?.feeder() }))
    }
}

/// A queue's feeder thread: `close` lets it end once the buffer is sent
/// (or nobody can receive), `join` waits for it. Keeps neither the queue
/// nor its channel alive.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Feeder {
    f: queues::Feeder,
}

#[pymethods]
impl Feeder {
    /// End the feeder once it has sent what is buffered.
    fn close(&self) {
        self.f.close();
    }

    /// Whether there is nothing to wait for (the feeder ended, or was
    /// joined, or is the parent's of this forked process).
    fn finished(&self) -> bool {
        self.f.finished()
    }

    /// Wait (GIL released) until the feeder has ended.
    fn join(&self, py: Python<'_>) {
        py.detach(|| self.f.join());
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Queue>()?;
    m.add_class::<Feeder>()?;
    m.add_function(wrap_pyfunction!(send_blocking_py, m)?)?;
    Ok(())
}
