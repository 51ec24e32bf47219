//! Synchronisation objects of other nodes: what `Lock.attach` (and the
//! other classes' `attach`) return for a handle that names another node.
//! [`RemoteSync`] answers the calls `dragon.synchronize` makes of the
//! local classes; each is a request to the object's node, whose service
//! performs it on the object on this process's behalf
//! (`runtime::syncserve`: locks through a proxy thread per owning thread,
//! released there if this process or its node goes away).
//!
//! A wait is one request with its whole timeout; a Ctrl-C (or another
//! signal handler that raises) cancels it on the object's node.
use crate::blocking::{block_timeout, detached, timeout};
use crate::errors::{handle_err, remote_sync_err, service_connect_err, DragonError, InvalidHandleError, NotLocalError};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use runtime::syncserve::{self as ops, SyncRequest};
use shm_primitives::handle::{Handle, Kind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use transport_tcp::local::{Routes, ServiceClient};

/// How often a wait looks for Ctrl-C.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// This process's ways to its node's service and to other nodes' (DDict
/// operations, synchronisation objects): (pid that made them, routes).
static ROUTES: Mutex<Option<(u32, Arc<Routes>)>> = Mutex::new(None);

fn routes() -> PyResult<Arc<Routes>> {
    let me = std::process::id();
    let mut r = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((pid, routes)) = &*r {
        if *pid == me {
            return Ok(routes.clone());
        }
        // A forked child's copies share its parent's sockets: never used.
        std::mem::forget(r.take());
    }
    let name = std::env::var("DRAGON_SERVICE")
        .map_err(|_| DragonError::new_err("this process is not part of a multi-node run (no DRAGON_SERVICE)"))?;
    let routes = Arc::new(Routes::new(&name));
    *r = Some((me, routes.clone()));
    Ok(routes)
}

/// The connection for requests to node `node` (DDict operations,
/// synchronisation objects): straight to its service, made on first use,
/// unless `DRAGON_DIRECT=0` or it cannot be made; else this node's
/// service. A node is reached one way for the life of the process.
pub(crate) fn service_for(node: u32, this_node: u32) -> PyResult<ServiceClient> {
    let routes = routes()?;
    let c = if node == this_node || !crate::remote::direct() { routes.local() } else { routes.client_for(node) };
    c.map_err(|e| service_connect_err(&std::env::var("DRAGON_SERVICE").unwrap_or_default(), e))
}

fn thread_id() -> u64 {
    u64::from(shm_primitives::process::current_tid())
}

/// A synchronisation object of another node.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct RemoteSync {
    handle: Vec<u8>,
    node: u32,
    kind: Kind,
    segment: String,
}

impl RemoteSync {
    pub(crate) fn attach(handle: &[u8], want: Kind) -> PyResult<RemoteSync> {
        let h = Handle::from_bytes(handle).map_err(|e| handle_err(&format!("{want:?}"), e))?;
        if h.kind != want {
            return Err(InvalidHandleError::new_err(format!("handle is for a {:?}, not a {want:?}", h.kind)));
        }
        Ok(RemoteSync { handle: handle.to_vec(), node: h.node, kind: h.kind, segment: h.segment })
    }

    /// One request; a wait (`timeout` not zero) can be interrupted by a
    /// signal handler that raises.
    fn call(
        &self,
        py: Python<'_>,
        op: u8,
        timeout: Option<Duration>,
        arg: i64,
        second: Option<&[u8]>,
    ) -> PyResult<Vec<u8>> {
        let c = service_for(self.node, transport_shm::this_node())?;
        let tns = transport_tcp::proto::timeout_ns(timeout);
        let p = SyncRequest::encode(op, 0, thread_id(), tns, arg, &self.handle, second);
        let node = self.node;
        let (r, int) =
            detached(py, |hook| c.call_with(node, runtime::proto::SYNC, &p, CHECK_EVERY, hook).map(|b| b.to_vec()));
        r.map_err(|e| remote_sync_err(e, int))
    }

    fn value(&self, py: Python<'_>, op: u8, timeout: Option<Duration>, arg: i64) -> PyResult<i64> {
        let b = self.call(py, op, timeout, arg, None)?;
        b.get(..8)
            .map(|v| i64::from_le_bytes(v.try_into().expect("8 bytes")))
            .ok_or_else(|| DragonError::new_err("short reply from the object's node"))
    }

    fn values(&self, py: Python<'_>, op: u8) -> PyResult<Vec<i64>> {
        let b = self.call(py, op, Some(Duration::ZERO), 0, None)?;
        Ok(b.chunks_exact(8).map(|v| i64::from_le_bytes(v.try_into().expect("8 bytes"))).collect())
    }

    fn is_lock(&self) -> bool {
        matches!(self.kind, Kind::Lock | Kind::RLock)
    }

    fn only(&self, ok: bool, what: &str) -> PyResult<()> {
        if ok {
            Ok(())
        } else {
            Err(PyTypeError::new_err(format!("a {:?} has no {what}", self.kind)))
        }
    }
}

#[pymethods]
impl RemoteSync {
    /// The handle (bytes) another process attaches by.
    #[getter]
    fn handle<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.handle)
    }

    /// Name of the object's segment (on its node).
    #[getter]
    fn name(&self) -> &str {
        &self.segment
    }

    /// The node the object lives on.
    #[getter]
    fn node(&self) -> u32 {
        self.node
    }

    #[getter]
    fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Lock => "lock",
            Kind::RLock => "rlock",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Condition => "condition",
            Kind::Memory => "memory",
            _ => "barrier",
        }
    }

    // -- locks and semaphores ------------------------------------------------

    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let t = block_timeout(block, timeout)?;
        let op = match self.kind {
            Kind::Lock | Kind::RLock => ops::LOCK_ACQUIRE,
            Kind::Semaphore => ops::SEM_ACQUIRE,
            _ => return self.only(false, "acquire").map(|_| false),
        };
        Ok(self.value(py, op, t, 0)? == 1)
    }

    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let op = match self.kind {
            Kind::Lock | Kind::RLock => ops::LOCK_RELEASE,
            Kind::Semaphore => ops::SEM_RELEASE,
            _ => return self.only(false, "release"),
        };
        self.value(py, op, Some(Duration::ZERO), 0).map(|_| ())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release(py)
    }

    /// Whether the calling thread holds the lock.
    fn _is_mine(&self, py: Python<'_>) -> PyResult<bool> {
        self.only(self.is_lock(), "owner")?;
        Ok(self.value(py, ops::LOCK_COUNT, Some(Duration::ZERO), 0)? > 0)
    }

    /// The calling thread's recursion depth (0: it does not hold the lock).
    fn _count(&self, py: Python<'_>) -> PyResult<u32> {
        if self.kind == Kind::Semaphore {
            return Ok(0);
        }
        self.only(self.is_lock(), "count")?;
        Ok(self.value(py, ops::LOCK_COUNT, Some(Duration::ZERO), 0)? as u32)
    }

    fn get_value(&self, py: Python<'_>) -> PyResult<u32> {
        self._get_value(py)
    }

    /// A semaphore's value; a lock's 1 if free, 0 if held.
    fn _get_value(&self, py: Python<'_>) -> PyResult<u32> {
        match self.kind {
            Kind::Semaphore => Ok(self.value(py, ops::SEM_VALUE, Some(Duration::ZERO), 0)? as u32),
            Kind::Lock | Kind::RLock => Ok(u32::from(self.value(py, ops::LOCK_LOCKED, Some(Duration::ZERO), 0)? == 0)),
            _ => self.only(false, "value").map(|_| 0),
        }
    }

    fn _is_zero(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self._get_value(py)? == 0)
    }

    /// The holder's pid: not known across nodes.
    #[getter]
    fn holder(&self) -> Option<u32> {
        None
    }

    // -- events ------------------------------------------------------------------

    fn set(&self, py: Python<'_>) -> PyResult<()> {
        self.only(self.kind == Kind::Event, "set")?;
        self.value(py, ops::EVENT_SET, Some(Duration::ZERO), 0).map(|_| ())
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.only(self.kind == Kind::Event, "clear")?;
        self.value(py, ops::EVENT_CLEAR, Some(Duration::ZERO), 0).map(|_| ())
    }

    fn is_set(&self, py: Python<'_>) -> PyResult<bool> {
        self.only(self.kind == Kind::Event, "is_set")?;
        Ok(self.value(py, ops::EVENT_IS_SET, Some(Duration::ZERO), 0)? == 1)
    }

    /// Event: wait until set. Condition: `wait(lock, timeout)`. Barrier:
    /// `wait(timeout, action)`.
    #[pyo3(signature = (*args))]
    fn wait(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let arg = |i: usize| args.get_item(i).ok().filter(|a| !a.is_none());
        let secs = |a: Option<Bound<'_, PyAny>>| -> PyResult<Option<f64>> { a.map(|a| a.extract()).transpose() };
        match self.kind {
            Kind::Event => {
                let t = timeout(secs(arg(0))?)?;
                let set = self.value(py, ops::EVENT_WAIT, t, 0)? == 1;
                Ok(set.into_pyobject(py)?.to_owned().into_any().unbind())
            }
            Kind::Condition => {
                let lock = arg(0).ok_or_else(|| PyTypeError::new_err("wait() needs the condition's lock"))?;
                let lock = lock
                    .cast::<RemoteSync>()
                    .map_err(|_| PyTypeError::new_err("a condition of another node waits with a lock of that node"))?;
                let lock = lock.get();
                if lock.node != self.node || !lock.is_lock() {
                    return Err(PyTypeError::new_err("a condition waits with a Lock or RLock of its own node"));
                }
                let t = timeout(secs(arg(1))?)?;
                let b = self.call(py, ops::COND_WAIT, t, 0, Some(&lock.handle))?;
                let notified = b.get(..8).is_some_and(|v| v.iter().any(|x| *x != 0));
                Ok(notified.into_pyobject(py)?.to_owned().into_any().unbind())
            }
            Kind::Barrier => {
                let t = timeout(secs(arg(0))?)?;
                let action = arg(1);
                let i = self.value(py, ops::BARRIER_WAIT, t, i64::from(action.is_some()))?;
                let i = match action {
                    // The last party: the action runs here, in this process,
                    // before anyone is released; if it raises, the barrier
                    // breaks and its exception is this party's.
                    Some(f) if i == ops::ACTION_TURN => {
                        let ran = f.call0();
                        let r = self.value(py, ops::BARRIER_ACTION, None, i64::from(ran.is_ok()));
                        ran?;
                        r?
                    }
                    _ => i,
                };
                Ok(i.into_pyobject(py)?.into_any().unbind())
            }
            _ => Err(PyTypeError::new_err(format!("a {:?} has no wait", self.kind))),
        }
    }

    // -- conditions ----------------------------------------------------------------

    #[pyo3(signature = (n=1))]
    fn notify(&self, py: Python<'_>, n: i64) -> PyResult<u32> {
        self.only(self.kind == Kind::Condition, "notify")?;
        Ok(self.value(py, ops::COND_NOTIFY, Some(Duration::ZERO), n)? as u32)
    }

    fn notify_all(&self, py: Python<'_>) -> PyResult<u32> {
        self.notify(py, i64::from(u32::MAX))
    }

    #[getter]
    fn waiting(&self, py: Python<'_>) -> PyResult<u32> {
        self.only(self.kind == Kind::Condition, "waiters")?;
        Ok(self.values(py, ops::COND_STATE)?.first().copied().unwrap_or(0) as u32)
    }

    #[getter]
    fn notified_pending(&self, py: Python<'_>) -> PyResult<u32> {
        self.only(self.kind == Kind::Condition, "waiters")?;
        Ok(self.values(py, ops::COND_STATE)?.get(1).copied().unwrap_or(0) as u32)
    }

    // -- barriers ------------------------------------------------------------------

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.only(self.kind == Kind::Barrier, "abort")?;
        self.value(py, ops::BARRIER_ABORT, Some(Duration::ZERO), 0).map(|_| ())
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.only(self.kind == Kind::Barrier, "reset")?;
        self.value(py, ops::BARRIER_RESET, Some(Duration::ZERO), 0).map(|_| ())
    }

    #[getter]
    fn parties(&self, py: Python<'_>) -> PyResult<u32> {
        self.only(self.kind == Kind::Barrier, "parties")?;
        Ok(self.values(py, ops::BARRIER_STATE)?.first().copied().unwrap_or(0) as u32)
    }

    #[getter]
    fn n_waiting(&self, py: Python<'_>) -> PyResult<u32> {
        self.only(self.kind == Kind::Barrier, "waiters")?;
        Ok(self.values(py, ops::BARRIER_STATE)?.get(1).copied().unwrap_or(0) as u32)
    }

    #[getter]
    fn broken(&self, py: Python<'_>) -> PyResult<bool> {
        self.only(self.kind == Kind::Barrier, "broken")?;
        Ok(self.values(py, ops::BARRIER_STATE)?.get(2).copied().unwrap_or(0) != 0)
    }

    // -- memory blocks (Value, Array) -------------------------------------------------

    /// `n` bytes of a memory block's data at `offset`.
    fn read<'py>(&self, py: Python<'py>, offset: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        self.only(self.kind == Kind::Memory, "read")?;
        let offset = i64::try_from(offset).map_err(|_| PyValueError::new_err("offset out of range"))?;
        let b = self.call(py, ops::MEM_READ, Some(Duration::ZERO), offset, Some(&n.to_le_bytes()))?;
        if b.len() as u64 != n {
            return Err(DragonError::new_err("short reply from the memory block's node"));
        }
        Ok(PyBytes::new(py, &b))
    }

    /// Write `data` into a memory block's data at `offset` (in pieces of
    /// at most 64 KiB: whole under the block's lock, as `Value` and `Array`
    /// hold it).
    fn write(&self, py: Python<'_>, offset: u64, data: &[u8]) -> PyResult<()> {
        self.only(self.kind == Kind::Memory, "write")?;
        for (i, piece) in data.chunks(ops::MEM_WRITE_MAX).enumerate() {
            let at = offset + (i * ops::MEM_WRITE_MAX) as u64;
            let at = i64::try_from(at).map_err(|_| PyValueError::new_err("offset out of range"))?;
            self.call(py, ops::MEM_WRITE, Some(Duration::ZERO), at, Some(piece))?;
        }
        Ok(())
    }

    /// A memory block's data size.
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        self.only(self.kind == Kind::Memory, "size")?;
        Ok(self.value(py, ops::MEM_SIZE, Some(Duration::ZERO), 0)? as u64)
    }

    fn __repr__(&self) -> String {
        format!("<dragon._native.RemoteSync {:?} {} on node {}>", self.kind, self.segment, self.node)
    }
}

/// The object a handle names: this node's own, or a [`RemoteSync`] for
/// another node's (in a multi-node run).
pub(crate) fn remote_or_none(py: Python<'_>, handle: &[u8], want: Kind) -> PyResult<Option<Py<PyAny>>> {
    let Ok(h) = Handle::from_bytes(handle) else { return Ok(None) };
    if h.node == transport_shm::this_node() || !h.address.is_empty() {
        return Ok(None);
    }
    if std::env::var_os("DRAGON_SERVICE").is_none() {
        return Err(NotLocalError::new_err(format!(
            "handle names a {want:?} on node {}, and this process is not part of a multi-node run",
            h.node
        )));
    }
    Ok(Some(Py::new(py, RemoteSync::attach(handle, want)?)?.into_any()))
}

/// The memory block (of a `Value` or `Array`) a handle of another node
/// names, read and written through that node's service; `None` for a
/// block of this node. `NotLocalError` outside a multi-node run.
#[pyfunction]
fn remote_memory(py: Python<'_>, handle: &[u8]) -> PyResult<Option<Py<PyAny>>> {
    remote_or_none(py, handle, Kind::Memory)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RemoteSync>()?;
    m.add_function(wrap_pyfunction!(remote_memory, m)?)?;
    Ok(())
}
