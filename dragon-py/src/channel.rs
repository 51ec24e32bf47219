//! Channels (`transport-shm`) as a Python class, for `dragon.queues` and
//! `dragon.connection`.
//!
//! # Message format
//!
//! A channel carries byte messages; the first byte says what a message is:
//!
//! ```text
//!  0x80 ...   a pickle (every pickle of protocol >= 2 starts with PROTO, 0x80)
//!  0x02 ...   an exact `bytes` object sent as an object (`put(b"..")`,
//!             `send(b"..")`): the rest, unpickled
//!  0x03 ...   a message of at least 256 KiB (an exact `bytes` object, a
//!             pickle or raw bytes) left in a block of the run's block
//!             store: the tag to report and the block's name (`lent.rs`)
//!  0x01 ...   a control message (a connection end was closed: look for EOF)
//!  0x00 ...   raw bytes (`send_bytes`) that would otherwise start with one of
//!             these tags: the rest
//!  other      raw bytes, whole (also the empty message)
//! ```
//!
//! so raw payloads and `bytes` objects travel without pickling, and most
//! raw payloads without even a tag byte.
//!
//! # Attachments
//!
//! Each process attaches to a channel once per role set: attaching again by
//! the same handle (unpickling a queue many times) reuses the process's
//! attachment. A forked child must not use its parent's attachment (the
//! attachment table would blame the parent for what the child does), so an
//! object inherited across `fork` attaches anew on first use in the child,
//! and never releases the parent's attachment.
//!
//! # Lifetime
//!
//! When the last object of an attachment in a process goes, the attachment
//! is released; if no other process is attached then (dead attachments are
//! swept first), the channel is destroyed (its segments unlinked). A channel
//! whose handle is travelling is kept alive by the process that pickled it
//! (`dragon.queues` keeps a reference), so "no attachment" means nobody can
//! attach any more.
use crate::blocking::{block_timeout, detached, timeout, Interrupt};
use crate::errors::{
    channel_err, handle_err, recv_err, select_err, send_err, try_recv_err, DragonError, InvalidHandleError,
    NotLocalError, SendFail,
};
use crate::lent::{self, TAG_LENT};
use channels_core::{ChannelOptions, RecvTimeoutError, Roles, SelectError, SendTimeoutError, TryRecvError};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyTuple};
use shm_primitives::{Handle, ProcessId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The message format's tags, as the `queues` crate defines them.
pub(crate) use queues::wire::{TAG_BYTES, TAG_CONTROL, TAG_PICKLE, TAG_RAW};

/// What a send reports to Python.
pub(crate) const SENT: u8 = 1;
pub(crate) const NOT_SENT: u8 = 0;
/// Shared memory for large messages is exhausted for now: retry later.
pub(crate) const NO_MEMORY: u8 = 2;

/// One attachment of this process.
pub(crate) struct Att {
    pub(crate) handle: Option<Handle>,
    roles: Roles,
    /// Process that made `chan`.
    pid: u32,
    /// Never dropped outside `pid` (see the module docs); `None` only while
    /// being dropped.
    chan: Option<channels_core::Channel>,
    /// The attachment made in a forked child, if this one was inherited.
    forked: Mutex<Option<(u32, channels_core::Channel)>>,
}

impl Att {
    fn new(chan: channels_core::Channel, roles: Roles, heap: bool) -> Att {
        Att {
            // The handle names this node, so that a process on another node
            // reaches the channel through its node's service.
            handle: (!heap).then(|| Handle { node: transport_shm::this_node(), ..chan.handle() }),
            roles,
            pid: ProcessId::current().pid,
            chan: Some(chan),
            forked: Mutex::new(None),
        }
    }

    /// This process's channel.
    pub(crate) fn get(&self) -> PyResult<channels_core::Channel> {
        let me = ProcessId::current().pid;
        if me == self.pid {
            if let Some(ch) = &self.chan {
                return Ok(ch.clone());
            }
        }
        let mut f = self.forked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pid, ch)) = f.as_ref() {
            if *pid == me {
                return Ok(ch.clone());
            }
        }
        let handle = self
            .handle
            .as_ref()
            .ok_or_else(|| DragonError::new_err("a process-local channel cannot be used after fork"))?;
        let ch = transport_shm::channel::attach_with(handle, self.roles).map_err(channel_err)?;
        if let Some((pid, old)) = f.take() {
            if pid != me {
                std::mem::forget(old);
            }
        }
        *f = Some((me, ch.clone()));
        Ok(ch)
    }
}

impl Drop for Att {
    fn drop(&mut self) {
        let me = ProcessId::current().pid;
        let f = self.forked.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((pid, ch)) = f.take() {
            if pid == me {
                release(ch, self.handle.is_some());
            } else {
                std::mem::forget(ch);
            }
        }
        if let Some(ch) = self.chan.take() {
            if self.pid == me {
                release(ch, self.handle.is_some());
            } else {
                // The parent's attachment: left alone.
                std::mem::forget(ch);
            }
        }
    }
}

/// Release an attachment; destroy the channel if nobody else is attached.
fn release(ch: channels_core::Channel, shared: bool) {
    if shared && !ch.is_destroyed() {
        let _ = ch.recover();
        if ch.attachment_count() <= 1 {
            ch.destroy();
        }
    }
    drop(ch);
}

type Key = (Vec<u8>, u8);
/// The pid the entries belong to, and the entries.
type Registry = Mutex<(u32, HashMap<Key, Weak<Att>>)>;

/// This process's attachments by handle and roles.
fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new((0, HashMap::new())))
}

fn roles(send: bool, recv: bool) -> Roles {
    match (send, recv) {
        (true, true) => Roles::BOTH,
        (true, false) => Roles::SEND,
        (false, true) => Roles::RECV,
        (false, false) => Roles::NONE,
    }
}

fn roles_bits(r: Roles) -> u8 {
    u8::from(r.sends()) | (u8::from(r.receives()) << 1)
}

/// A channel attachment of this process.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Channel {
    att: Arc<Att>,
}

impl Channel {
    pub(crate) fn ch(&self) -> PyResult<channels_core::Channel> {
        self.att.get()
    }

    /// The attachment (shared with a `_native.Queue` made over it).
    pub(crate) fn att(&self) -> Arc<Att> {
        Arc::clone(&self.att)
    }
}

/// Split a received message into its tag and payload.
fn split(msg: &[u8]) -> (u8, &[u8]) {
    match msg.first() {
        Some(&TAG_PICKLE) => (TAG_PICKLE, msg),
        Some(&t @ (TAG_RAW | TAG_CONTROL | TAG_BYTES | TAG_LENT)) => (t, &msg[1..]),
        _ => (TAG_RAW, msg),
    }
}

pub(crate) fn received<'py>(py: Python<'py>, msg: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    let (tag, payload) = split(msg);
    let (tag, obj) = match tag {
        TAG_LENT => lent::receive(py, payload)?,
        t => (t, PyBytes::new(py, payload).into_any()),
    };
    PyTuple::new(py, [tag.into_pyobject(py).unwrap().into_any(), obj])
}

/// Data to send, readable without the GIL.
enum Owned {
    Bytes(PyBackedBytes),
    Vec(Vec<u8>),
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        match self {
            Owned::Bytes(b) => b,
            Owned::Vec(v) => v,
        }
    }
}

/// Attach to a channel of this node (reusing this process's attachment
/// with the same roles, if any).
fn attach_local(py: Python<'_>, handle: &[u8], send: bool, recv: bool) -> PyResult<Channel> {
    let r = roles(send, recv);
    let key = (handle.to_vec(), roles_bits(r));
    {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        adopt_pid(&mut reg);
        if let Some(att) = reg.1.get(&key).and_then(Weak::upgrade) {
            if !att.chan.as_ref().is_some_and(|c| c.is_destroyed()) {
                return Ok(Channel { att });
            }
        }
    }
    let h = Handle::from_bytes(handle).map_err(|e| handle_err("channel", e))?;
    if h.kind != shm_primitives::Kind::Channel {
        return Err(InvalidHandleError::new_err(format!("handle is for a {:?}, not a channel", h.kind)));
    }
    if !h.address.is_empty() {
        return Err(NotLocalError::new_err(format!(
            "handle names a channel on another node ({}); it cannot be reached through shared memory",
            h.address
        )));
    }
    let ch = py.detach(|| transport_shm::channel::attach_with(&h, r)).map_err(channel_err)?;
    let att = Arc::new(Att::new(ch, r, false));
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    adopt_pid(&mut reg);
    // Another thread may have attached meanwhile: keep one of the two.
    if let Some(other) = reg.1.get(&key).and_then(Weak::upgrade) {
        return Ok(Channel { att: other });
    }
    reg.1.insert(key, Arc::downgrade(&att));
    Ok(Channel { att })
}

#[pymethods]
impl Channel {
    /// Create a channel in shared memory (this process attached with both
    /// roles unless told otherwise).
    #[staticmethod]
    #[pyo3(signature = (capacity=256, slot_size=128, max_block_bytes=0, max_attachments=256, send=true, recv=true))]
    fn create(
        py: Python<'_>,
        capacity: u64,
        slot_size: usize,
        max_block_bytes: u64,
        max_attachments: u32,
        send: bool,
        recv: bool,
    ) -> PyResult<Channel> {
        let r = roles(send, recv);
        let opts = ChannelOptions::new()
            .capacity(capacity)
            .slot_size(slot_size)
            .max_block_bytes(max_block_bytes)
            .max_attachments(max_attachments)
            .roles(r);
        let ch = py.detach(|| transport_shm::channel::create(&opts)).map_err(channel_err)?;
        let att = Arc::new(Att::new(ch, r, false));
        let key = (att.handle.as_ref().expect("shared").to_bytes(), roles_bits(r));
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        adopt_pid(&mut reg);
        reg.1.insert(key, Arc::downgrade(&att));
        Ok(Channel { att })
    }

    /// Attach to the channel a handle names (reusing this process's
    /// attachment with the same roles, if any).
    #[staticmethod]
    #[pyo3(signature = (handle, send=true, recv=true))]
    fn attach(py: Python<'_>, handle: &[u8], send: bool, recv: bool) -> PyResult<Py<PyAny>> {
        let h = Handle::from_bytes(handle).map_err(|e| handle_err("channel", e))?;
        if h.kind == shm_primitives::Kind::Channel && h.address.is_empty() && h.node != transport_shm::this_node() {
            if std::env::var_os("DRAGON_SERVICE").is_none() {
                return Err(NotLocalError::new_err(format!(
                    "handle names a channel on node {}, and this process is not part of a multi-node run",
                    h.node
                )));
            }
            let r = crate::remote::RemoteChannel::attach(py, handle, h.node, h.segment.clone())?;
            return Ok(Py::new(py, r)?.into_any());
        }
        Ok(Py::new(py, attach_local(py, handle, send, recv)?)?.into_any())
    }
    /// A process-local channel with one slot: a doorbell another thread
    /// rings to wake a `select`.
    #[staticmethod]
    fn doorbell() -> PyResult<Channel> {
        let ch = channels_core::Channel::heap(&ChannelOptions::new().capacity(1).slot_size(64).max_attachments(4))
            .map_err(channel_err)?;
        Ok(Channel { att: Arc::new(Att::new(ch, Roles::BOTH, true)) })
    }

    /// The handle (bytes) other processes attach by.
    #[getter]
    fn handle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        match &self.att.handle {
            Some(h) => Ok(PyBytes::new(py, &h.to_bytes())),
            None => Err(PyTypeError::new_err("a process-local channel has no handle")),
        }
    }

    /// Name of the channel's main segment.
    #[getter]
    fn name(&self) -> String {
        self.att.handle.as_ref().map_or_else(String::new, |h| h.segment.clone())
    }

    /// Send `data` (any contiguous buffer of bytes). `prefix`: a tag byte
    /// (0..=255) to put first, -1 for none, -2 for raw bytes (tagged only if
    /// their first byte would be read as a tag). Returns 1 if sent, 0 if the
    /// channel stayed full (not blocking, or timed out), 2 if shared memory
    /// for a large message is exhausted for now.
    #[pyo3(signature = (data, prefix=-1, block=true, timeout=None))]
    pub(crate) fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        prefix: i32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<u8> {
        let ch = self.ch()?;
        let t = block_timeout(block, timeout)?;
        send_obj(py, &ch, data, prefix, t)
    }

    /// Receive one message: `(tag, payload)` (see the module docs), or
    /// `None` if nothing came before the timeout (or if `check`, called at
    /// least every 100 ms while waiting, returned true). Raises `EOFError`
    /// once the channel is closed and drained.
    #[pyo3(signature = (block=true, timeout=None, check=None))]
    pub(crate) fn recv<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
        check: Option<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let ch = self.ch()?;
        match ch.try_recv() {
            Ok(m) => return received(py, &m).map(Some),
            Err(TryRecvError::Empty) => {}
            Err(e) => return Err(try_recv_err(e)),
        }
        let t = block_timeout(block, timeout)?;
        if t == Some(Duration::ZERO) {
            return Ok(None);
        }
        let (r, int) = detached(py, |hook| {
            let mut stop = checked_hook(hook, check.as_ref());
            ch.recv_interruptible(t, &mut stop)
        });
        match r {
            Ok(m) => received(py, &m).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Interrupted) => interrupted(py, int),
            Err(e) => Err(recv_err(e, int)),
        }
    }

    /// Whether a receive would not block (a message, or an error to report).
    pub(crate) fn readable(&self) -> PyResult<bool> {
        Ok(self.ch()?.is_readable())
    }

    /// Ring a doorbell: send an empty message unless one is pending.
    fn ring(&self) -> PyResult<()> {
        let _ = self.ch()?.try_send([]);
        Ok(())
    }

    /// Drop every pending message (doorbells).
    fn drain(&self) -> PyResult<usize> {
        let ch = self.ch()?;
        let mut n = 0;
        while let Ok(m) = ch.try_recv() {
            if let (TAG_LENT, payload) = split(&m) {
                lent::discard(payload);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Messages in the channel (a snapshot).
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.ch()?.len())
    }

    #[getter]
    fn capacity(&self) -> PyResult<usize> {
        Ok(self.ch()?.capacity())
    }

    #[getter]
    fn max_inline(&self) -> PyResult<usize> {
        Ok(self.ch()?.max_inline())
    }

    fn is_full(&self) -> PyResult<bool> {
        Ok(self.ch()?.is_full())
    }

    fn is_empty(&self) -> PyResult<bool> {
        Ok(self.ch()?.is_empty())
    }

    /// Close the channel for every process: sends fail, receivers drain
    /// what is there and then get `EOFError`.
    fn close(&self) -> PyResult<bool> {
        Ok(self.ch()?.close())
    }

    fn is_closed(&self) -> PyResult<bool> {
        Ok(self.ch()?.is_closed())
    }

    /// Destroy the channel now (every process's operations fail).
    fn destroy(&self) -> PyResult<()> {
        self.ch()?.destroy();
        Ok(())
    }

    fn is_destroyed(&self) -> PyResult<bool> {
        Ok(self.ch()?.is_destroyed())
    }

    /// Attachments of live (or not yet swept) processes.
    fn attachment_count(&self) -> PyResult<u32> {
        Ok(self.ch()?.attachment_count())
    }

    /// Attachments of other live processes (dead ones are swept first).
    fn peers(&self, py: Python<'_>) -> PyResult<u32> {
        let ch = self.ch()?;
        Ok(py.detach(|| {
            let _ = ch.recover();
            ch.attachment_count().saturating_sub(1)
        }))
    }

    /// How long blocking calls of this process spin before sleeping.
    fn set_spin(&self, seconds: f64) -> PyResult<()> {
        let d = timeout(Some(seconds))?.unwrap_or(Duration::from_millis(10)).min(Duration::from_millis(10));
        self.ch()?.set_spin(d);
        Ok(())
    }

    fn __repr__(&self) -> String {
        match &self.att.handle {
            Some(h) => format!("<dragon._native.Channel {}>", h.segment),
            None => "<dragon._native.Channel (process-local)>".to_owned(),
        }
    }
}

/// Forget the attachments of the parent (after a fork) in the registry.
fn adopt_pid(reg: &mut (u32, HashMap<Key, Weak<Att>>)) {
    let me = ProcessId::current().pid;
    if reg.0 != me {
        reg.0 = me;
        reg.1.clear();
    }
    reg.1.retain(|_, w| w.strong_count() > 0);
}

/// A large message that can travel as a block of the run's block store
/// (`lent.rs`): an exact `bytes` object, a pickle, or raw bytes, of at
/// least `lent::MIN_LEN` bytes, in one contiguous buffer. `forward`: a
/// `bytes` object that is a view of a block this process owns passes that
/// block on (else its bytes are put in a new block).
pub(crate) fn lend(data: &Bound<'_, PyAny>, prefix: i32, forward: bool) -> PyResult<Option<lent::Prepared>> {
    let kind = match prefix {
        p if p == i32::from(TAG_BYTES) => TAG_BYTES,
        -1 => TAG_PICKLE,
        -2 => TAG_RAW,
        _ => return Ok(None),
    };
    if let Ok(b) = data.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        if kind == TAG_PICKLE && bytes.first() != Some(&TAG_PICKLE) {
            return Ok(None);
        }
        return Ok(lent::prepare(bytes, forward.then_some(b.as_ptr() as usize), kind));
    }
    // Other buffers (send_bytes of a bytearray or memoryview): only those
    // with at least MIN_LEN items, so that small ones skip the buffer
    // request (a memoryview of wider items may be large but is copied).
    if kind != TAG_RAW || data.len().unwrap_or(0) < lent::MIN_LEN {
        return Ok(None);
    }
    let Ok(buf) = PyBuffer::<u8>::get(data) else { return Ok(None) };
    if !buf.is_c_contiguous() || buf.len_bytes() < lent::MIN_LEN {
        return Ok(None);
    }
    // SAFETY: a contiguous buffer of `len_bytes` bytes, kept alive by `buf`
    // while the GIL is held (through `prepare`, which copies it).
    let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr().cast::<u8>(), buf.len_bytes()) };
    Ok(lent::prepare(bytes, None, kind))
}

/// Send the message naming a lent block: at once if there is room, else
/// waiting (GIL released) as a copying send would. The block passes to the
/// message only as the message is written, so a send that fails or times
/// out leaves it with this process.
fn send_lent(py: Python<'_>, ch: &channels_core::Channel, p: lent::Prepared, t: Option<Duration>) -> PyResult<u8> {
    // Copy: it only borrows `p`, so both attempts can use it.
    let write = |dst: &mut [u8]| {
        p.commit();
        dst.copy_from_slice(&p.desc);
    };
    let r = match ch.send_with_timeout(p.desc.len(), Some(Duration::ZERO), write) {
        Ok(()) => Ok(SENT),
        Err(e) => match send_err(e.map_into()) {
            SendFail::Full if t != Some(Duration::ZERO) => {
                let (r, int) = detached(py, |hook| ch.send_with_interruptible(p.desc.len(), t, Some(hook), write));
                match r.map_err(MapInto::map_into) {
                    Ok(()) => Ok(SENT),
                    Err(SendTimeoutError::Timeout(())) => Ok(NOT_SENT),
                    Err(SendTimeoutError::Interrupted(())) => Err(int.into_err()),
                    Err(e) => match send_err(e) {
                        SendFail::NoMemory => Ok(NO_MEMORY),
                        SendFail::Err(e) => Err(e),
                        SendFail::Full => Ok(NOT_SENT),
                    },
                }
            }
            SendFail::Full => Ok(NOT_SENT),
            SendFail::NoMemory => Ok(NO_MEMORY),
            SendFail::Err(e) => Err(e),
        },
    };
    p.done(matches!(r, Ok(SENT)));
    r
}

fn try_send_parts(ch: &channels_core::Channel, pre: Option<u8>, data: &[u8]) -> Result<(), SendFail> {
    let p = [pre.unwrap_or(0)];
    let parts: &[&[u8]] = if pre.is_some() { &[&p, data] } else { &[data] };
    ch.send_parts(parts, Some(Duration::ZERO)).map_err(send_err)
}

trait MapInto {
    fn map_into(self) -> SendTimeoutError<()>;
}

impl<F> MapInto for SendTimeoutError<F> {
    fn map_into(self) -> SendTimeoutError<()> {
        match self {
            SendTimeoutError::Timeout(_) => SendTimeoutError::Timeout(()),
            SendTimeoutError::Disconnected(_) => SendTimeoutError::Disconnected(()),
            SendTimeoutError::Destroyed(_) => SendTimeoutError::Destroyed(()),
            SendTimeoutError::Interrupted(_) => SendTimeoutError::Interrupted(()),
            SendTimeoutError::Alloc(_, a) => SendTimeoutError::Alloc((), a),
            _ => SendTimeoutError::Interrupted(()),
        }
    }
}

/// The interrupt hook plus an optional Python `check()` that may end the
/// wait (returns true) without an exception.
pub(crate) fn checked_hook<'a>(
    hook: &'a mut dyn FnMut() -> bool,
    check: Option<&'a Py<PyAny>>,
) -> impl FnMut() -> bool + 'a {
    move || {
        if !hook() {
            return false;
        }
        match check {
            None => true,
            // An exception in `check` (a signal handler's KeyboardInterrupt
            // raised while it runs, say) ends the wait: it is left as the
            // thread's pending error and raised by `interrupted`. Swallowing
            // it would lose the Ctrl-C that raised it.
            Some(f) => Python::try_attach(|py| match f.bind(py).call0().and_then(|r| r.is_truthy()) {
                Ok(stop) => !stop,
                Err(e) => {
                    e.restore(py);
                    false
                }
            })
            .unwrap_or(true),
        }
    }
}

/// A wait ended by the hook: the pending exception (a signal handler's, or
/// one `check` raised), or `None` if `check` ended it.
pub(crate) fn interrupted<T>(py: Python<'_>, int: Interrupt) -> PyResult<Option<T>> {
    if int.has_err() {
        Err(int.into_err())
    } else if let Some(e) = PyErr::take(py) {
        Err(e) // raised by `check`
    } else {
        Ok(None)
    }
}

/// Wait until any of `channels` can be received from; returns its index,
/// or `None` on timeout (or when `check`, called at least every 100 ms,
/// returns true).
#[pyfunction]
#[pyo3(signature = (channels, timeout=None, check=None))]
fn select(
    py: Python<'_>,
    channels: &Bound<'_, PyList>,
    timeout: Option<f64>,
    check: Option<Py<PyAny>>,
) -> PyResult<Option<usize>> {
    let mut chans = Vec::with_capacity(channels.len());
    let mut remote = Vec::new();
    for (i, c) in channels.iter().enumerate() {
        if let Ok(r) = c.cast::<crate::remote::RemoteChannel>() {
            remote.push((i, r.clone().unbind()));
            continue;
        }
        let c = c.cast::<Channel>().map_err(|_| PyTypeError::new_err("select takes dragon channels"))?;
        chans.push((i, c.get().ch()?));
    }
    let t = self::timeout(timeout)?;
    if !remote.is_empty() {
        return crate::remote::select_mixed(py, &chans, &remote, t, check.as_ref());
    }
    let chans: Vec<channels_core::Channel> = chans.into_iter().map(|(_, c)| c).collect();
    if let Some(i) = chans.iter().position(|c| c.is_readable()) {
        return Ok(Some(i));
    }
    if t == Some(Duration::ZERO) {
        return Ok(None);
    }
    let (r, int) = detached(py, |hook| {
        let refs: Vec<&channels_core::Channel> = chans.iter().collect();
        let mut stop = checked_hook(hook, check.as_ref());
        channels_core::select_recv_interruptible(&refs, t, &mut stop)
    });
    match r {
        Ok(i) => Ok(Some(i)),
        Err(SelectError::Timeout) => Ok(None),
        Err(SelectError::Interrupted) => interrupted(py, int),
        Err(e) => Err(select_err(e)),
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Channel>()?;
    m.add_function(wrap_pyfunction!(select, m)?)?;
    m.add("TAG_PICKLE", TAG_PICKLE)?;
    m.add("TAG_BYTES", TAG_BYTES)?;
    m.add("TAG_CONTROL", TAG_CONTROL)?;
    m.add("TAG_RAW", TAG_RAW)?;
    m.add("SEND_OK", SENT)?;
    m.add("SEND_FULL", NOT_SENT)?;
    m.add("SEND_NO_MEMORY", NO_MEMORY)?;
    Ok(())
}

/// Send `data` (a Python buffer) on `ch` as `Channel.send` does (see
/// there for `prefix`), waiting at most `t` (GIL released while waiting).
pub(crate) fn send_obj(
    py: Python<'_>,
    ch: &channels_core::Channel,
    data: &Bound<'_, PyAny>,
    prefix: i32,
    t: Option<Duration>,
) -> PyResult<u8> {
    let raw_tag = |first: Option<u8>| match first {
        Some(TAG_RAW | TAG_CONTROL | TAG_BYTES | TAG_LENT | TAG_PICKLE) => Some(TAG_RAW),
        _ => None,
    };
    if let Some(p) = lend(data, prefix, true)? {
        return send_lent(py, ch, p, t);
    }
    // First attempt with the GIL held, copying straight from the
    // caller's buffer into the slot or block.
    let (first, pre) = if let Ok(b) = data.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        let pre = match prefix {
            -2 => raw_tag(bytes.first().copied()),
            p => u8::try_from(p).ok(),
        };
        (try_send_parts(ch, pre, bytes), pre)
    } else {
        let buf = PyBuffer::<u8>::get(data)?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("data must be a contiguous buffer"));
        }
        let pre = match prefix {
            -2 if buf.len_bytes() == 0 => None,
            -2 => raw_tag(data.get_item(0)?.extract::<u8>().ok()),
            p => u8::try_from(p).ok(),
        };
        let len = buf.len_bytes() + usize::from(pre.is_some());
        let mut copy_err = None;
        let r = ch.send_with_timeout(len, Some(Duration::ZERO), |dst| {
            let dst = match pre {
                Some(p) => {
                    dst[0] = p;
                    &mut dst[1..]
                }
                None => dst,
            };
            if let Err(e) = buf.copy_to_slice(py, dst) {
                copy_err = Some(e);
            }
        });
        let r = r.map_err(|e| send_err(e.map_into()));
        if let Some(e) = copy_err {
            return Err(e);
        }
        (r, pre)
    };
    match first {
        Ok(()) => return Ok(SENT),
        Err(SendFail::Full) => {}
        Err(SendFail::NoMemory) if t == Some(Duration::ZERO) => return Ok(NO_MEMORY),
        Err(SendFail::NoMemory) => {}
        Err(SendFail::Err(e)) => return Err(e),
    }
    if t == Some(Duration::ZERO) {
        return Ok(NOT_SENT);
    }
    // Wait for room with the GIL released.
    let owned = match data.extract::<PyBackedBytes>() {
        Ok(b) => Owned::Bytes(b),
        Err(_) => {
            let buf = PyBuffer::<u8>::get(data)?;
            Owned::Vec(buf.to_vec(py)?)
        }
    };
    let (r, int) = detached(py, |hook| {
        let p = [pre.unwrap_or(0)];
        let parts: &[&[u8]] = if pre.is_some() { &[&p, owned.as_ref()] } else { &[owned.as_ref()] };
        ch.send_parts_interruptible(parts, t, Some(hook))
    });
    match r {
        Ok(()) => Ok(SENT),
        Err(SendTimeoutError::Timeout(())) => Ok(NOT_SENT),
        Err(SendTimeoutError::Interrupted(())) => Err(int.into_err()),
        Err(e) => match send_err(e) {
            SendFail::NoMemory => Ok(NO_MEMORY),
            SendFail::Err(e) => Err(e),
            SendFail::Full => Ok(NOT_SENT),
        },
    }
}
