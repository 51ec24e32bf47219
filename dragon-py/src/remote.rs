//! Channels of other nodes, through the off-node transport plugin
//! (`libdragon_transport_tcp.so`, loaded through the plugin ABI's real
//! loading path): [`RemoteChannel`] is what `Channel.attach` returns for a
//! handle that names another node. It carries the same messages as a
//! local [`crate::channel::Channel`] and answers the same calls that
//! `dragon.queues` and `dragon.connection` make; every operation is a
//! request to this node's service, which carries it to the channel's node.
//!
//! Waits are made in slices (the transport's waits are bounded), so a
//! Ctrl-C or a `check` callback ends them as a local wait's hook does.
use crate::blocking::{block_timeout, detached, timeout};
use crate::channel::{received, NOT_SENT, SENT};
use crate::errors::{plugin_err, plugin_load_err, plugin_recv_err};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use transport_abi::abi::{DRAGON_EAGAIN, DRAGON_ETIMEDOUT};
use transport_abi::loader::{PluginChannel, PluginError, PollEvents, Transport};

/// Longest single wait on another node, between checks for Ctrl-C.
pub(crate) const SLICE: Duration = Duration::from_millis(250);

/// This process's off-node transport: (pid that opened it, transport).
static TRANSPORT: Mutex<Option<(u32, &'static Transport)>> = Mutex::new(None);

/// The transport, opened on first use in this process (again after a fork:
/// the parent's connection to the service is the parent's).
fn transport(py: Python<'_>) -> PyResult<&'static Transport> {
    let me = std::process::id();
    let mut t = TRANSPORT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((pid, tr)) = *t {
        if pid == me {
            return Ok(tr);
        }
    }
    let config: String = py.import("dragon._transport")?.call_method0("tcp_config")?.extract()?;
    // Through the registry: one "tcp" per process, whichever code asks,
    // found as every program finds a transport (DRAGON_TRANSPORT_PATH, the
    // config file, then beside this module: the one the package ships).
    let plugin = transport_abi::registry::resolve("tcp").map_err(plugin_load_err)?;
    let tr = plugin.open(&config).map_err(|e| plugin_err(&e))?;
    // One per process, for the rest of its life (a forked child's copy of
    // its parent's is never used nor closed: it shares the parent's socket).
    let tr: &'static Transport = Box::leak(Box::new(tr));
    *t = Some((me, tr));
    Ok(tr)
}

/// Whether this process reaches other nodes' services straight
/// (`DRAGON_DIRECT`, on unless `0`; `_transport.py` tells the plugin the
/// same): then sends carry their bytes on this process's connection (there
/// is no service of this node to send a block on from).
pub(crate) fn direct() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var("DRAGON_DIRECT").map_or(true, |v| v != "0"))
}

/// An attachment of this process to a channel of another node.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct RemoteChannel {
    pub(crate) ch: PluginChannel,
    pub(crate) handle: Vec<u8>,
    node: u32,
    segment: String,
}

impl RemoteChannel {
    pub(crate) fn attach(py: Python<'_>, handle: &[u8], node: u32, segment: String) -> PyResult<RemoteChannel> {
        let tr = transport(py)?;
        let ch = py.detach(|| tr.attach_channel(handle)).map_err(|e| plugin_err(&e))?;
        Ok(RemoteChannel { ch, handle: handle.to_vec(), node, segment })
    }

    /// Poll for `events`, waiting at most `t` in slices (Ctrl-C and `check`
    /// end the wait: `Ok(false)`).
    fn wait_for(&self, py: Python<'_>, events: u32, t: Option<Duration>) -> PyResult<bool> {
        let deadline = t.map(|d| Instant::now() + d);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let (r, int) = detached(py, |hook| {
                let r = self.ch.poll(PollEvents(events), Some(slice));
                (r, hook())
            });
            let (r, go_on) = r;
            if !go_on {
                return Err(int.into_err());
            }
            match r {
                Ok(ev) if ev.0 & events != 0 => return Ok(true),
                Ok(_) => {}
                Err(e) if matches!(e.code(), DRAGON_ETIMEDOUT | DRAGON_EAGAIN) => {}
                Err(e) => return Err(plugin_err(&e)),
            }
            if left.is_some_and(|l| l.is_zero()) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }
}

/// The message `Channel.send` would send for `data` and `prefix`: the
/// tag, then the caller's bytes straight after it (one copy).
pub(crate) fn message(py: Python<'_>, data: &Bound<'_, PyAny>, prefix: i32) -> PyResult<Vec<u8>> {
    message_in(py, data, prefix, Vec::new())
}

/// [`message`], written into `msg` (its bytes replaced, its memory reused).
fn message_in(_py: Python<'_>, data: &Bound<'_, PyAny>, prefix: i32, mut msg: Vec<u8>) -> PyResult<Vec<u8>> {
    let buf = PyBuffer::<u8>::get(data)?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("data must be a contiguous buffer"));
    }
    let first = if buf.len_bytes() == 0 { None } else { data.get_item(0)?.extract::<u8>().ok() };
    let pre = match prefix {
        // Raw bytes get a tag only if their first byte would read as one.
        -2 => queues::wire::prefix(queues::Tag::Raw, first.as_slice()).ok().flatten(),
        p => u8::try_from(p).ok(),
    };
    let skip = usize::from(pre.is_some());
    let n = buf.len_bytes();
    msg.clear();
    msg.reserve_exact(n + skip);
    msg.extend(pre);
    // SAFETY: the buffer is C-contiguous, `n` bytes from `buf_ptr`, and
    // stays valid while `buf` is held (with the GIL: `_py`); `msg` has room
    // for `n` bytes after its `skip` (reserved above), which this copy
    // initialises before the length covers them.
    unsafe {
        std::ptr::copy_nonoverlapping(buf.buf_ptr().cast::<u8>(), msg.as_mut_ptr().add(skip), n);
        msg.set_len(skip + n);
    }
    Ok(msg)
}

thread_local! {
    /// The memory of this thread's last message copied for another node,
    /// for the next one: a stream of large messages does not take fresh
    /// memory (for the kernel to map and zero) for every message.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest message memory kept for the next (more is given back).
const SPARE_MAX: usize = 16 << 20;

/// What a send to another node carries: the message's bytes, or (for a
/// large one) a block of this node's store that a block message names, and
/// that this node's service sends on from the block (`SEND_BLOCK` of the
/// TCP plugin): the bytes do not pass through this process's connection
/// to its service.
pub(crate) enum Outgoing {
    Copy(Vec<u8>),
    /// Committed: the block is the message's until `finish`.
    Block(crate::lent::Prepared),
}

impl Outgoing {
    fn new(py: Python<'_>, data: &Bound<'_, PyAny>, prefix: i32) -> PyResult<Outgoing> {
        // A new block even for a view of a block this process owns: the
        // service sends the block on and frees it, which a view still in
        // use here must not see.
        if direct() {
            return Ok(Outgoing::Copy(message_in(py, data, prefix, SPARE.take())?));
        }
        if let Some(p) = crate::channel::lend(data, prefix, false)? {
            p.commit();
            return Ok(Outgoing::Block(p));
        }
        Ok(Outgoing::Copy(message(py, data, prefix)?))
    }

    /// The same for a whole message (tag byte included), as the feeder
    /// thread of a queue (`queue.rs`) holds it: without the GIL. `None`:
    /// the message goes as it is (sent from where it is, no copy).
    pub(crate) fn of_message(msg: &[u8]) -> Option<Outgoing> {
        let (tag, skip) = queues::wire::split(msg);
        let p = crate::lent::block_kind(tag)
            .filter(|_| !direct())
            .and_then(|k| crate::lent::prepare(&msg[skip..], None, k))?;
        p.commit();
        Some(Outgoing::Block(p))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Copy(v) => v,
            Outgoing::Block(p) => &p.desc,
        }
    }

    /// After the send: if it did not go out, the block comes back to the
    /// store, unless the service took it already (it frees it then).
    pub(crate) fn finish(self, sent: bool) {
        match self {
            Outgoing::Block(p) if sent => p.done(true),
            Outgoing::Block(p) => {
                p.recall();
            }
            Outgoing::Copy(v) if v.capacity() <= SPARE_MAX => SPARE.set(v),
            Outgoing::Copy(_) => {}
        }
    }
}

/// Run `op` (which waits at most the slice it is given) until it does not
/// time out, in slices so that Ctrl-C ends the wait.
fn in_slices(py: Python<'_>, op: impl Fn(Duration) -> Result<(), PluginError> + Sync) -> PyResult<()> {
    loop {
        let (r, int) = detached(py, |hook| {
            let r = op(SLICE);
            (r, hook())
        });
        let (r, go_on) = r;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.code(), DRAGON_ETIMEDOUT | DRAGON_EAGAIN) => {}
            Err(e) => return Err(plugin_err(&e)),
        }
        if !go_on {
            return Err(int.into_err());
        }
    }
}

const POLL_IN: u32 = transport_abi::abi::DRAGON_POLL_IN;
const POLL_OUT: u32 = transport_abi::abi::DRAGON_POLL_OUT;

#[pymethods]
impl RemoteChannel {
    /// The handle (bytes) other processes attach by.
    #[getter]
    fn handle<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.handle)
    }

    /// The node the channel lives on.
    #[getter]
    fn node(&self) -> u32 {
        self.node
    }

    /// Name of the channel's main segment (on its node).
    #[getter]
    fn name(&self) -> String {
        self.segment.clone()
    }

    /// Send `data`, as `Channel.send` does (a large message goes through a
    /// block of this node's store: see `Outgoing`). Returns 1 if sent, 0 if
    /// the channel stayed full.
    #[pyo3(signature = (data, prefix=-1, block=true, timeout=None))]
    pub(crate) fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        prefix: i32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<u8> {
        let t = block_timeout(block, timeout)?;
        let deadline = t.map(|d| Instant::now() + d);
        let mut out = Outgoing::new(py, data, prefix)?;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let (r, int) = detached(py, |hook| {
                let r = self.ch.send(out.bytes(), Some(slice));
                (r, hook())
            });
            let (r, go_on) = r;
            match r {
                Ok(()) => {
                    out.finish(true);
                    return Ok(SENT);
                }
                Err(e) if matches!(e.code(), DRAGON_ETIMEDOUT | DRAGON_EAGAIN) => {}
                Err(e) => {
                    out.finish(false);
                    return Err(plugin_err(&e));
                }
            }
            let over = left.is_some_and(|l| l.is_zero()) || deadline.is_some_and(|d| Instant::now() >= d);
            if !go_on || over {
                out.finish(false);
                return if go_on { Ok(NOT_SENT) } else { Err(int.into_err()) };
            }
            if let Outgoing::Block(_) = out {
                // The service took the block with the attempt (and freed
                // it when the channel stayed full): a new one for the next.
                out.finish(false);
                out = Outgoing::new(py, data, prefix)?;
            }
        }
    }

    /// Send `data` (tag as for `send`) after every earlier send of this
    /// attachment, without waiting for it to reach the channel's node: a
    /// put that does not wait a round trip. False (nothing sent) while this
    /// attachment has as much in flight as the transport allows, after
    /// waiting at most `timeout` seconds for room (Ctrl-C ends the wait).
    /// Raises the failure of an earlier deferred send, if one failed (this
    /// `data` is then not sent either); `flush` waits for them all.
    #[pyo3(signature = (data, prefix, timeout=0.0))]
    pub(crate) fn send_deferred(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        prefix: i32,
        timeout: f64,
    ) -> PyResult<bool> {
        let wait = self::timeout(Some(timeout))?.unwrap_or(Duration::ZERO).min(SLICE);
        let out = Outgoing::new(py, data, prefix)?;
        let (r, int) = detached(py, |hook| {
            let r = self.ch.send_deferred(out.bytes(), Some(wait));
            (r, hook())
        });
        let (r, go_on) = r;
        // On its way (a later failure is reported by a later call): the
        // block is the message's.
        out.finish(r.is_ok());
        match r {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.code(), DRAGON_ETIMEDOUT | DRAGON_EAGAIN) && go_on => Ok(false),
            Err(e) if matches!(e.code(), DRAGON_ETIMEDOUT | DRAGON_EAGAIN) => Err(int.into_err()),
            Err(e) => Err(plugin_err(&e)),
        }
    }

    /// Wait until every deferred send of this attachment is in the channel
    /// (Ctrl-C ends the wait); raises the first that failed and was not
    /// yet reported.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        in_slices(py, |slice| self.ch.flush(Some(slice)))
    }

    /// Receive one message: `(tag, payload)`, or `None` on timeout (or when
    /// `check`, called between slices, returns true). `EOFError` once the
    /// channel is closed and drained.
    #[pyo3(signature = (block=true, timeout=None, check=None))]
    pub(crate) fn recv<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
        check: Option<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let t = block_timeout(block, timeout)?;
        let deadline = t.map(|d| Instant::now() + d);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let (r, int) = detached(py, |hook| {
                let r = self.ch.recv_msg(Some(slice));
                (r, hook())
            });
            let (r, go_on) = r;
            match r {
                Ok(m) => return received(py, m.as_ref()).map(Some),
                Err(e) if matches!(e.code(), DRAGON_ETIMEDOUT | DRAGON_EAGAIN) => {}
                Err(e) => return Err(plugin_recv_err(&e)),
            }
            if !go_on {
                return Err(int.into_err());
            }
            if let Some(f) = &check {
                if f.bind(py).call0()?.is_truthy()? {
                    return Ok(None);
                }
            }
            if left.is_some_and(|l| l.is_zero()) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Whether a receive would not block.
    pub(crate) fn readable(&self, py: Python<'_>) -> PyResult<bool> {
        self.wait_for(py, POLL_IN, Some(Duration::ZERO))
    }

    /// Wait at most `timeout` seconds until a receive would not block.
    #[pyo3(signature = (timeout=None))]
    fn wait_readable(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.wait_for(py, POLL_IN, self::timeout(timeout)?)
    }

    /// Messages in the channel (a snapshot).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| self.ch.len()).map(|n| n as usize).map_err(|e| plugin_err(&e))
    }

    fn is_empty(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.__len__(py)? == 0)
    }

    fn is_full(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(!self.wait_for(py, POLL_OUT, Some(Duration::ZERO))?)
    }

    /// Destroy the channel now (every process's operations fail).
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.ch.destroy()).map_err(|e| plugin_err(&e))
    }

    /// Other processes attached: not known across nodes, so at least one
    /// (the channel's node keeps the channel while anyone may use it).
    fn peers(&self) -> u32 {
        1
    }

    fn set_spin(&self, _seconds: f64) {}

    fn __repr__(&self) -> String {
        format!("<dragon._native.RemoteChannel {} on node {}>", self.segment, self.node)
    }
}

/// Whether this process has an off-node transport open (for tests).
#[pyfunction]
fn remote_transport_open() -> bool {
    TRANSPORT.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|(pid, _)| pid == std::process::id())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RemoteChannel>()?;
    m.add_function(wrap_pyfunction!(remote_transport_open, m)?)?;
    Ok(())
}

/// `select` over channels some of which live on other nodes: `local` are
/// (index, channel) of this node, `remote` (index, channel) of others.
/// One remote channel alone is waited on by the channel's node; a mix is
/// looked at in turns (a local wait of 10 ms, then a poll of each remote
/// channel) until one is readable or the time is up.
pub(crate) fn select_mixed(
    py: Python<'_>,
    local: &[(usize, channels_core::Channel)],
    remote: &[(usize, Py<RemoteChannel>)],
    t: Option<Duration>,
    check: Option<&Py<PyAny>>,
) -> PyResult<Option<usize>> {
    let deadline = t.map(|d| Instant::now() + d);
    let turn = Duration::from_millis(10);
    loop {
        if let Some((i, _)) = local.iter().find(|(_, c)| c.is_readable()) {
            return Ok(Some(*i));
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        for (i, r) in remote {
            let wait = if local.is_empty() && remote.len() == 1 {
                left.map_or(SLICE, |l| l.min(SLICE))
            } else {
                Duration::ZERO
            };
            if r.get().wait_for(py, POLL_IN, Some(wait))? {
                return Ok(Some(*i));
            }
        }
        if let Some(f) = check {
            if f.bind(py).call0()?.is_truthy()? {
                return Ok(None);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        if !local.is_empty() {
            let wait = left.map_or(turn, |l| l.min(turn));
            let (r, int) = detached(py, |hook| {
                let refs: Vec<&channels_core::Channel> = local.iter().map(|(_, c)| c).collect();
                channels_core::select_recv_interruptible(&refs, Some(wait), hook)
            });
            match r {
                Ok(k) => return Ok(Some(local[k].0)),
                Err(channels_core::SelectError::Interrupted) => return Err(int.into_err()),
                Err(_) => {}
            }
        } else if remote.len() > 1 {
            let (_, int) = detached(py, |hook| {
                std::thread::sleep(turn);
                hook()
            });
            if int.has_err() {
                return Err(int.into_err());
            }
        }
    }
}
