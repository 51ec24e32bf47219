//! `Lock`, `RLock`, `Semaphore`, `Event`, `Condition` and `Barrier` of
//! `transport-shm`, as Python classes (`dragon._native`); `dragon.synchronize`
//! builds the `multiprocessing` API on them.
//!
//! # Lifetime of the shared object
//!
//! Each object lives in its own shared-memory segment of the run. The
//! segment's *name* (what attaching needs) is removed when the Python object
//! that created it is freed, unless its handle was ever taken (to pickle it):
//! then the name stays until the run ends, since a pickled handle may still
//! be travelling to a process that has not attached yet. Processes that
//! attached keep working after the name is gone; only new attaches fail
//! (with `DestroyedError`).
use crate::blocking::{block_timeout, detached, timeout, Interrupt};
use crate::errors::{barrier_err, cond_err, release_err, segment_err, sync_err, wait_err};
use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use shm_primitives::handle::Kind;
use shm_primitives::process::{current_tid, ProcessId};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use sync_objects::WaitError;
use transport_shm::{ShmBarrier, ShmCondition, ShmEvent, ShmLock, ShmRLock, ShmSemaphore};

/// Who may remove an object's segment name, and whether its handle left.
#[derive(Debug)]
struct Owner {
    /// Pid of the process that created the object here (0: attached).
    created_by: u32,
    /// The handle was taken (for pickling): keep the name until the run ends.
    exported: AtomicBool,
}

impl Owner {
    fn created() -> Owner {
        Owner { created_by: ProcessId::current().pid, exported: AtomicBool::new(false) }
    }

    fn attached() -> Owner {
        Owner { created_by: 0, exported: AtomicBool::new(true) }
    }

    fn export(&self) {
        // Relaxed: a process-local flag read at drop, ordered by the GIL.
        self.exported.store(true, Ordering::Relaxed);
    }

    /// Whether dropping this object should remove the segment name.
    fn should_destroy(&self) -> bool {
        // Relaxed: as in `export`.
        self.created_by != 0 && !self.exported.load(Ordering::Relaxed) && self.created_by == ProcessId::current().pid
    }
}

/// This thread's kernel id, cached per thread (and per process, so a forked
/// child's thread does not reuse its parent's).
fn thread_id() -> u32 {
    thread_local! {
        static TID: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
    }
    let pid = ProcessId::current().pid;
    TID.with(|c| {
        let (p, t) = c.get();
        if p == pid {
            return t;
        }
        let t = current_tid();
        c.set((pid, t));
        t
    })
}

/// The common methods: `handle`, `name`, `attach`, `_destroy`, and dropping;
/// with `lock_like`, also `__enter__`/`__exit__` over the class's own
/// `acquire`/`release`.
macro_rules! shared_object {
    ($py_ty:ident, $shm_ty:ty, $make:expr, lock_like, { $($methods:tt)* }) => {
        shared_object!($py_ty, $shm_ty, $make, {
            $($methods)*

            fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
                self.acquire(py, true, None)
            }

            #[pyo3(signature = (*_args))]
            fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
                self.release()
            }
        });
    };
    ($py_ty:ident, $shm_ty:ty, $make:expr, { $($methods:tt)* }) => {
        #[pymethods]
        impl $py_ty {
            $($methods)*

            /// The handle (bytes) another process attaches by. Taking it keeps
            /// the object's name until the run ends.
            #[getter]
            fn handle<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
                self.owner.export();
                PyBytes::new(py, &self.inner.handle().to_bytes())
            }

            /// Name of the object's shared-memory segment.
            #[getter]
            fn name(&self) -> &str {
                &self.inner.handle().segment
            }

            /// Attach to the object a handle names: this node's own, or (in a
            /// multi-node run) another node's, through its node's service.
            #[staticmethod]
            fn attach(py: Python<'_>, handle: &[u8]) -> PyResult<Py<PyAny>> {
                if let Some(remote) = crate::remote_sync::remote_or_none(py, handle, <$shm_ty>::KIND)? {
                    return Ok(remote);
                }
                let inner = <$shm_ty>::attach_bytes(handle).map_err(sync_err)?;
                #[allow(clippy::redundant_closure_call)]
                Ok(Py::new(py, ($make)(inner, Owner::attached()))?.into_any())
            }

            /// Remove the object's name now: later attaches fail, processes
            /// that attached keep working.
            fn _destroy(&self) -> PyResult<()> {
                self.inner.destroy().map_err(segment_err)
            }
        }

        impl Drop for $py_ty {
            fn drop(&mut self) {
                if self.owner.should_destroy() {
                    let _ = self.inner.destroy();
                }
            }
        }
    };
}

/// `acquire(block, timeout)` of the lock-like classes: `try_now` tries
/// without waiting (and without releasing the GIL); then, unless the call
/// may not wait, `wait` waits with the GIL released. Whether it acquired.
fn acquire_blocking<W>(
    py: Python<'_>,
    block: bool,
    timeout: Option<f64>,
    try_now: impl FnOnce() -> Result<bool, WaitError>,
    wait: W,
) -> PyResult<bool>
where
    W: FnOnce(Option<Duration>, &mut dyn FnMut() -> bool) -> Result<(), WaitError> + Send,
{
    if try_now().map_err(|e| wait_err(e, Interrupt::default()))? {
        return Ok(true);
    }
    let t = block_timeout(block, timeout)?;
    if t == Some(Duration::ZERO) {
        return Ok(false);
    }
    let (r, int) = detached(py, |hook| wait(t, hook));
    match r {
        Ok(()) => Ok(true),
        Err(WaitError::TimedOut) => Ok(false),
        Err(e) => Err(wait_err(e, int)),
    }
}

// ---------------------------------------------------------------------------
// Lock
// ---------------------------------------------------------------------------

/// A process-shared, non-recursive lock (`multiprocessing.Lock`'s `_semlock`).
///
/// A lock whose holder died is taken over by the next acquirer (which then
/// sees `recovered` true).
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Lock {
    pub(crate) inner: ShmLock,
    owner: Owner,
    /// Kernel tid of the thread of this process that acquired the lock
    /// through this object (0: none); for `_is_mine`.
    holder_tid: AtomicU32,
}

impl Lock {
    fn took(&self) {
        // Relaxed: process-local bookkeeping, read by the same thread (or
        // under the GIL).
        self.holder_tid.store(thread_id(), Ordering::Relaxed);
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn mine(&self) -> bool {
        // Relaxed: as in `took`.
        self.inner.holder() == Some(ProcessId::current().pid) && self.holder_tid.load(Ordering::Relaxed) == thread_id()
    }
}

shared_object!(Lock, ShmLock, |inner, owner| Lock { inner, owner, holder_tid: AtomicU32::new(0) }, lock_like, {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Lock { inner: ShmLock::create().map_err(sync_err)?, owner: Owner::created(), holder_tid: AtomicU32::new(0) })
    }

    /// Acquire; `False` if `block` is false and the lock is taken, or if the
    /// timeout elapsed.
    #[pyo3(signature = (block=true, timeout=None))]
    pub(crate) fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let inner = &self.inner;
        let got = acquire_blocking(
            py,
            block,
            timeout,
            || Ok(inner.try_acquire().is_some()),
            |t, hook| inner.acquire_with(t, hook).map(drop),
        )?;
        if got {
            self.took();
        }
        Ok(got)
    }

    /// Release (any process may release a lock).
    pub(crate) fn release(&self) -> PyResult<()> {
        // Relaxed: as in `took`.
        self.holder_tid.store(0, Ordering::Relaxed);
        self.inner.release().map_err(release_err)
    }

    /// Whether the calling thread holds the lock.
    fn _is_mine(&self) -> bool {
        self.mine()
    }

    /// 1 if the calling thread holds the lock, else 0.
    fn _count(&self) -> u32 {
        u32::from(self.mine())
    }

    /// 1 if the lock is free, else 0 (a semaphore's value).
    fn _get_value(&self) -> u32 {
        u32::from(!self.inner.is_locked())
    }

    fn _is_zero(&self) -> bool {
        self.inner.is_locked()
    }

    /// Pid of the holding process, or `None`.
    #[getter]
    fn holder(&self) -> Option<u32> {
        self.inner.holder()
    }

    /// Whether the current holder took the lock over from a dead process.
    #[getter]
    fn recovered(&self) -> bool {
        self.inner.holder_recovered()
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "lock"
    }

    #[getter]
    fn maxvalue(&self) -> u32 {
        1
    }
});

// ---------------------------------------------------------------------------
// RLock
// ---------------------------------------------------------------------------

/// A process-shared recursive lock (`multiprocessing.RLock`'s `_semlock`).
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct RLock {
    pub(crate) inner: ShmRLock,
    owner: Owner,
}

shared_object!(RLock, ShmRLock, |inner, owner| RLock { inner, owner }, lock_like, {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(RLock { inner: ShmRLock::create().map_err(sync_err)?, owner: Owner::created() })
    }

    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let inner = &self.inner;
        acquire_blocking(
            py,
            block,
            timeout,
            || inner.try_acquire().map(|a| a.is_some()),
            |t, hook| inner.acquire_with(t, hook).map(drop),
        )
    }

    /// Release one level; only the owning thread may.
    fn release(&self) -> PyResult<()> {
        self.inner.release().map_err(release_err)
    }

    fn _is_mine(&self) -> bool {
        self.inner.is_mine()
    }

    /// The calling thread's recursion depth.
    fn _count(&self) -> u32 {
        self.inner.count()
    }

    fn _get_value(&self) -> u32 {
        u32::from(!self.inner.is_locked())
    }

    fn _is_zero(&self) -> bool {
        self.inner.is_locked()
    }

    #[getter]
    fn holder(&self) -> Option<u32> {
        self.inner.holder()
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "rlock"
    }

    #[getter]
    fn maxvalue(&self) -> u32 {
        1
    }
});

// ---------------------------------------------------------------------------
// Semaphore
// ---------------------------------------------------------------------------

/// A process-shared counting semaphore, bounded if `maxvalue` is given.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Semaphore {
    inner: ShmSemaphore,
    owner: Owner,
}

shared_object!(Semaphore, ShmSemaphore, |inner, owner| Semaphore { inner, owner }, lock_like, {
    #[new]
    #[pyo3(signature = (value=1, maxvalue=None))]
    fn new(value: i64, maxvalue: Option<i64>) -> PyResult<Self> {
        let max = sync_objects::SEM_VALUE_MAX;
        let v = u32::try_from(value).ok().filter(|v| *v <= max).ok_or_else(|| {
            PyValueError::new_err(format!("semaphore initial value must be in 0..={max}, not {value}"))
        })?;
        let m =
            match maxvalue {
                None => None,
                Some(m) => Some(u32::try_from(m).ok().filter(|m| *m <= max && *m >= v).ok_or_else(|| {
                    PyValueError::new_err(format!("semaphore maximum must be in {v}..={max}, not {m}"))
                })?),
            };
        Ok(Semaphore { inner: ShmSemaphore::create(v, m).map_err(sync_err)?, owner: Owner::created() })
    }

    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let inner = &self.inner;
        acquire_blocking(py, block, timeout, || Ok(inner.try_acquire()), |t, hook| inner.acquire_with(t, hook))
    }

    fn release(&self) -> PyResult<()> {
        self.inner.release().map_err(release_err)
    }

    /// The current value (a snapshot).
    fn get_value(&self) -> u32 {
        self.inner.value()
    }

    fn _get_value(&self) -> u32 {
        self.inner.value()
    }

    fn _is_zero(&self) -> bool {
        self.inner.is_zero()
    }

    /// Always 0: a semaphore has no owner.
    fn _count(&self) -> u32 {
        0
    }

    fn _is_mine(&self) -> bool {
        false
    }

    /// The bound, or `None` for an unbounded semaphore.
    #[getter]
    fn maxvalue(&self) -> Option<u32> {
        self.inner.max()
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "semaphore"
    }
});

// ---------------------------------------------------------------------------
// Event
// ---------------------------------------------------------------------------

/// A process-shared event flag.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Event {
    inner: ShmEvent,
    owner: Owner,
}

shared_object!(Event, ShmEvent, |inner, owner| Event { inner, owner }, {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Event { inner: ShmEvent::create().map_err(sync_err)?, owner: Owner::created() })
    }

    fn set(&self) {
        self.inner.set();
    }

    fn clear(&self) {
        self.inner.clear();
    }

    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    /// Wait until the flag is set; returns it (`False`: timed out).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if self.inner.is_set() {
            return Ok(true);
        }
        let t = self::timeout(timeout)?;
        if t == Some(Duration::ZERO) {
            return Ok(false);
        }
        let inner = &self.inner;
        let (r, int) = detached(py, |hook| inner.wait_with(t, hook));
        r.map_err(|_| int.into_err())
    }
});

// ---------------------------------------------------------------------------
// Condition
// ---------------------------------------------------------------------------

/// A process-shared condition variable, used with a [`Lock`] or [`RLock`]
/// passed to each `wait`.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Condition {
    inner: ShmCondition,
    owner: Owner,
}

enum HeldLock<'py> {
    Plain(Bound<'py, Lock>),
    Recursive(Bound<'py, RLock>),
}

shared_object!(Condition, ShmCondition, |inner, owner| Condition { inner, owner }, {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Condition { inner: ShmCondition::create().map_err(sync_err)?, owner: Owner::created() })
    }

    /// Release `lock` (which the calling thread must hold), wait for a
    /// notification or the timeout, and acquire `lock` again (also when
    /// interrupted). Returns whether it was notified.
    #[pyo3(signature = (lock, timeout=None))]
    fn wait(&self, py: Python<'_>, lock: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<bool> {
        let held = if let Ok(l) = lock.cast::<Lock>() {
            HeldLock::Plain(l.clone())
        } else if let Ok(l) = lock.cast::<RLock>() {
            HeldLock::Recursive(l.clone())
        } else {
            return Err(PyTypeError::new_err(format!(
                "a dragon Condition needs a dragon Lock or RLock, not {}",
                lock.get_type().name()?
            )));
        };
        let mine = match &held {
            HeldLock::Plain(l) => l.get().mine(),
            HeldLock::Recursive(l) => l.get().inner.is_mine(),
        };
        if !mine {
            return Err(PyAssertionError::new_err("must acquire() condition before using wait()"));
        }
        let t = self::timeout(timeout)?;
        let inner = &self.inner;
        let (r, int) = match &held {
            HeldLock::Plain(l) => {
                let l = l.get();
                // The lock leaves this thread during the wait.
                l.holder_tid.store(0, Ordering::Relaxed);
                let out = detached(py, |hook| inner.wait_with(&*l.inner, t, hook));
                l.took();
                out
            }
            HeldLock::Recursive(l) => {
                let l = l.get();
                detached(py, |hook| inner.wait_with(&*l.inner, t, hook))
            }
        };
        r.map(|w| w.notified).map_err(|e| cond_err(e, int))
    }

    /// Wake up to `n` waiters; returns how many were woken.
    #[pyo3(signature = (n=1))]
    fn notify(&self, n: i64) -> u32 {
        if n <= 0 {
            return 0;
        }
        self.inner.notify(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn notify_all(&self) -> u32 {
        self.inner.notify_all()
    }

    /// Waiters not yet notified (a snapshot).
    #[getter]
    fn waiting(&self) -> u32 {
        self.inner.waiting()
    }

    /// Waiters notified but not yet returned (a snapshot).
    #[getter]
    fn notified_pending(&self) -> u32 {
        self.inner.notified_pending()
    }
});

// ---------------------------------------------------------------------------
// Barrier
// ---------------------------------------------------------------------------

/// A process-shared barrier (`threading.Barrier` semantics).
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct Barrier {
    inner: ShmBarrier,
    owner: Owner,
}

shared_object!(Barrier, ShmBarrier, |inner, owner| Barrier { inner, owner }, {
    #[new]
    fn new(parties: i64) -> PyResult<Self> {
        let p = u32::try_from(parties)
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| PyValueError::new_err("parties must be > 0"))?;
        Ok(Barrier { inner: ShmBarrier::create(p).map_err(sync_err)?, owner: Owner::created() })
    }

    /// Wait for every party; returns this caller's arrival index. The last
    /// party to arrive calls `action` (if given) before anyone is released;
    /// if it raises, the barrier breaks and the exception propagates to that
    /// party. Timeouts and breaks raise `threading.BrokenBarrierError`.
    #[pyo3(signature = (timeout=None, action=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>, action: Option<Py<PyAny>>) -> PyResult<u32> {
        let t = self::timeout(timeout)?;
        let inner = &self.inner;
        let mut action_err: Option<PyErr> = None;
        let (r, int) = detached(py, |hook| {
            let mut run = || match &action {
                None => true,
                Some(f) => Python::attach(|py| match f.call0(py) {
                    Ok(_) => true,
                    Err(e) => {
                        action_err = Some(e);
                        false
                    }
                }),
            };
            inner.wait_with(t, Some(&mut run), Some(hook))
        });
        r.map_err(|e| barrier_err(e, int, action_err))
    }

    /// Break the barrier: current and future waiters raise
    /// `BrokenBarrierError` until `reset`.
    fn abort(&self) {
        self.inner.abort();
    }

    /// Return the barrier to its initial state (current waiters get
    /// `BrokenBarrierError`).
    fn reset(&self) {
        self.inner.reset();
    }

    #[getter]
    fn broken(&self) -> bool {
        self.inner.broken()
    }

    #[getter]
    fn n_waiting(&self) -> u32 {
        self.inner.n_waiting()
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.inner.parties()
    }
});

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Lock>()?;
    m.add_class::<RLock>()?;
    m.add_class::<Semaphore>()?;
    m.add_class::<Event>()?;
    m.add_class::<Condition>()?;
    m.add_class::<Barrier>()?;
    m.add("KIND_MEMORY", Kind::Memory as u8)?;
    Ok(())
}
