//! `_native.Queue` and `_native.Feeder`: the put side of
//! `dragon.queues.Queue` on the `queues` crate.
//!
//! An unbounded put (and a put of a queue bounded by a semaphore, once
//! Python has its permit) goes through [`queues::Queue::put_with`]: the
//! first attempt is `Channel.send`'s own (with the GIL held, lending large
//! messages to the block store, forwarding a received block); when the
//! ring is full the message waits in the crate's local buffer, and the
//! crate's feeder thread (a Rust thread: it needs the GIL only to report
//! an error) sends it, in order. The feeder drops what it holds once the
//! queue is closed or gone and no other process is attached, as the
//! standard feeder stops on a broken pipe.
//!
//! What stays in Python (`dragon/queues.py`): pickling, the bounds of
//! exact queues (a blocking send on the channel) and of semaphore queues
//! (a `dragon.synchronize` semaphore, which works across nodes), receiving
//! (through the channel object), task counting of `JoinableQueue` (shared
//! `dragon.synchronize` objects, for the same reason), and the exit hooks
//! (`util.Finalize`) that end and wait for the feeder.
use crate::channel::{send_obj, Att, Channel, NO_MEMORY, SENT};
use crate::errors::{put_err, queue_err, too_large_for_shm};
use crate::lent;
use crate::remote::{message, Outgoing, RemoteChannel, SLICE};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use queues::{Fault, PutError, QueueChannel, ShmChannel};
use shm_primitives::{Handle, ProcessId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

type Inner = queues::Queue<PyChan>;

/// The buffering put side of a `dragon.queues.Queue` in this process.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Queue {
    /// Process that made `q`.
    pid: u32,
    /// Never dropped outside `pid` (its feeder is a thread of `pid`); `None`
    /// only while being dropped.
    q: Option<Inner>,
    /// The queue of a forked child, made on its first put there.
    forked: Mutex<Option<(u32, Arc<Inner>)>>,
    chan: PyChan,
    on_error: Py<PyAny>,
}

/// A crate queue over `chan` whose feeder reports to `on_error(exc, data)`.
fn make(py: Python<'_>, chan: PyChan, on_error: &Py<PyAny>) -> PyResult<Inner> {
    let q = Inner::from_channel(chan, 0, None).map_err(|e| queue_err(&e))?;
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
    Ok(q)
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
                    let q = Arc::new(make(py, self.chan.clone_ref(py), &self.on_error)?);
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
    /// The put side of a queue on `channel` (a `Channel` or a
    /// `RemoteChannel`); the feeder thread calls `on_error(exc, data)` with
    /// each message it cannot send (and drops).
    #[new]
    fn new(py: Python<'_>, channel: &Bound<'_, PyAny>, on_error: Py<PyAny>) -> PyResult<Queue> {
        let chan = if let Ok(c) = channel.cast::<Channel>() {
            PyChan::Local(c.get().att())
        } else if let Ok(r) = channel.cast::<RemoteChannel>() {
            PyChan::Remote(r.clone().unbind())
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err("Queue takes a dragon channel"));
        };
        let q = make(py, chan.clone_ref(py), &on_error)?;
        Ok(Queue { pid: ProcessId::current().pid, q: Some(q), forked: Mutex::new(None), chan, on_error })
    }

    /// Put `data` (tag `prefix` as for `Channel.send`): at once if the ring
    /// has room and nothing waits in the local buffer, else into the buffer
    /// for the feeder thread. Never waits for a ring's room; for a channel
    /// of another node, waits at most [`REMOTE_ROOM_WAIT`] for room among
    /// the sends in flight (a producer faster than the network then keeps
    /// its pace instead of filling its buffer). Returns whether this put
    /// started the feeder thread.
    fn put(&self, py: Python<'_>, data: &Bound<'_, PyAny>, prefix: i32) -> PyResult<bool> {
        self.with(py, |q| {
            // The Python exception of either step (the crate sees a Fault).
            let (mut err, mut err2) = (None, None);
            let r = q.put_with(
                |chan| {
                    let r = match chan {
                        PyChan::Local(att) => match att.get() {
                            Ok(ch) => send_obj(py, &ch, data, prefix, Some(Duration::ZERO)).and_then(|r| match r {
                                SENT => Ok(true),
                                NO_MEMORY => {
                                    // Larger than all shared memory: raise
                                    // (as `_wire.check_fits`; no Python code
                                    // runs here, under the buffer's lock).
                                    check_fits(data.len().unwrap_or(0))?;
                                    Ok(false)
                                }
                                _ => Ok(false),
                            }),
                            Err(e) => Err(e),
                        },
                        PyChan::Remote(rc) => rc.get().send_deferred(py, data, prefix, REMOTE_ROOM_WAIT.as_secs_f64()),
                    };
                    r.map_err(|e| {
                        err = Some(e);
                        Fault::Other(String::new())
                    })
                },
                || {
                    message(py, data, prefix).map_err(|e| {
                        err2 = Some(e);
                        Fault::Other(String::new())
                    })
                },
            );
            match (r, err.or(err2)) {
                (_, Some(e)) => Err(e),
                (Ok(started), None) => Ok(started),
                (Err(e), None) => Err(put_err(&e)),
            }
        })
    }

    /// Messages waiting in this process's local buffer (the one the feeder
    /// is sending included).
    fn buffered(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |q| Ok(q.buffered()))
    }

    /// A handle on the feeder thread, for the exit hooks.
    fn feeder(&self, py: Python<'_>) -> PyResult<Feeder> {
        self.with(py, |q| Ok(Feeder { f: q.feeder() }))
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
    Ok(())
}
