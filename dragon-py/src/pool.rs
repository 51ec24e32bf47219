//! The Pool's task distribution, from the `pool` crate, for `dragon.pool`:
//! the ledger (`PoolLedger`, over the `SharedBlock` the pool made), the take
//! (`pool_take`: the robust lock, SENT read before the ring, gaps reported,
//! the task recorded, all in one call), lost-task detection for an exited
//! worker's slot (`PoolLedger.lost`), the owner's slots and start-failure
//! counting (`PoolSlots`), and the message headers
//! (`pool_task_header`, `pool_result_header`, `pool_lost`, and their
//! decoders). Python keeps what is Python's: the standard `Pool` subclass,
//! pickling, the handler threads, callbacks.
use crate::blocking::{block_timeout, detached};
use crate::channel::{checked_hook, interrupted, received, Channel};
use crate::errors::{handle_err, memory_block_err, pool_err, recv_err, try_recv_err};
use crate::sync::Lock;
use channels_core::{RecvTimeoutError, TryRecvError};
use pool::ledger::{self, Gap, Ledger, Taker};
use pool::message::{self, Kind, Lost, ResultHeader, TaskHeader};
use pool::Slots;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use shm_primitives::handle::{Handle, Kind as HandleKind};
use std::time::Duration;
use transport_shm::memblock::MemoryBlock;

/// A Pool's ledger, in a shared memory block (`dragon._block.SharedBlock`)
/// that every process of the pool maps.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct PoolLedger {
    led: Ledger<MemoryBlock>,
}

impl PoolLedger {
    fn slot(&self, slot: usize) -> PyResult<usize> {
        if slot < self.led.slots() {
            Ok(slot)
        } else {
            Err(PyValueError::new_err(format!("pool ledger slot {slot} of {}", self.led.slots())))
        }
    }
}

#[pymethods]
impl PoolLedger {
    /// The ledger of `slots` workers in the memory block `handle` names.
    #[new]
    fn new(handle: &[u8], slots: usize) -> PyResult<Self> {
        let h = Handle::from_bytes_of(handle, HandleKind::Memory).map_err(|e| handle_err("memory block", e))?;
        let block = MemoryBlock::attach(&h).map_err(memory_block_err)?;
        Ok(PoolLedger { led: Ledger::new(block, slots).map_err(pool_err)? })
    }

    /// Set fresh words up: every slot idle, the first task numbered `base`.
    #[pyo3(signature = (base=0))]
    fn init(&self, base: i64) {
        self.led.init(base);
    }

    /// Slots (workers at once).
    #[getter]
    fn slots(&self) -> usize {
        self.led.slots()
    }

    /// Tasks sent so far.
    fn sent(&self) -> i64 {
        self.led.sent()
    }

    /// The task numbered `n - 1` is in the ring: `n` are sent.
    fn publish_sent(&self, n: i64) {
        self.led.publish_sent(n);
    }

    /// The next task to be taken.
    fn next(&self) -> i64 {
        self.led.next()
    }

    /// The task recorded in `slot`, or `None`.
    fn recorded(&self, slot: usize) -> PyResult<Option<i64>> {
        Ok(self.led.recorded(self.slot(slot)?))
    }

    /// Whether the worker in `slot` got as far as its loop.
    fn started(&self, slot: usize) -> PyResult<bool> {
        Ok(self.led.started(self.slot(slot)?))
    }

    /// Workers that got as far as their loop (and have not been reaped).
    fn started_count(&self) -> usize {
        (0..self.led.slots()).filter(|&s| self.led.started(s)).count()
    }

    /// The worker in `slot` runs its loop.
    fn mark_started(&self, slot: usize) -> PyResult<()> {
        self.led.mark_started(self.slot(slot)?);
        Ok(())
    }

    /// The worker in `slot` sent its task's result.
    fn finish(&self, slot: usize) -> PyResult<()> {
        self.led.finish(self.slot(slot)?);
        Ok(())
    }

    /// Make `slot` ready for a new worker.
    fn reset_slot(&self, slot: usize) -> PyResult<()> {
        self.led.reset_slot(self.slot(slot)?);
        Ok(())
    }

    /// The worker in `slot` exited (`pid`, exit code or minus its signal):
    /// the lost-task notice (bytes) for the task it recorded, or `None`.
    fn lost<'py>(
        &self,
        py: Python<'py>,
        slot: usize,
        pid: i64,
        exit_code: i64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self.led.lost(self.slot(slot)?, pid, exit_code).map(|n| PyBytes::new(py, &n.encode())))
    }
}

/// The owner's bookkeeping of a pool's worker slots (`pool::Slots`): free
/// slots, the lost-task notice of a worker that exited, workers that die
/// before they start breaking the pool. One per pool on one node, one per
/// part of a pool across nodes.
#[pyclass(module = "dragon._native")]
pub(crate) struct PoolSlots {
    s: Slots,
    n: usize,
}

impl PoolSlots {
    fn slot(&self, slot: usize) -> PyResult<usize> {
        if slot < self.n {
            Ok(slot)
        } else {
            Err(PyValueError::new_err(format!("pool slot {slot} of {}", self.n)))
        }
    }
}

#[pymethods]
impl PoolSlots {
    /// `n` slots, all free.
    #[new]
    fn new(n: usize) -> Self {
        PoolSlots { s: Slots::new(n), n }
    }

    /// A free slot for a new worker (oldest freed first), its words in
    /// `ledger` made ready (`None`: the ledger is on another node); `None`
    /// if every slot is taken.
    fn take(&mut self, ledger: Option<PyRef<'_, PoolLedger>>) -> Option<usize> {
        self.s.take(ledger.as_ref().map(|l| &l.led))
    }

    /// The worker for `slot` could not be started: free again, first.
    fn not_started(&mut self, slot: usize) -> PyResult<()> {
        self.s.not_started(self.slot(slot)?);
        Ok(())
    }

    /// The worker in `slot` of `ledger` exited (`pid`, exit code or minus
    /// its signal): the lost-task notice (bytes) of the task it recorded
    /// and never finished, or `None` (always when `report` is false); the
    /// slot is free again.
    #[pyo3(signature = (ledger, slot, pid, exit_code, report=true))]
    fn exited<'py>(
        &mut self,
        py: Python<'py>,
        ledger: PyRef<'_, PoolLedger>,
        slot: usize,
        pid: i64,
        exit_code: i64,
        report: bool,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let slot = ledger.slot(self.slot(slot)?)?;
        Ok(self.s.exited(&ledger.led, slot, pid, exit_code, report).map(|n| PyBytes::new(py, &n.encode())))
    }

    /// The worker in `slot` exited and the node that holds the ledger read
    /// its slot: whether it had started, how it ended. Free again.
    fn freed(&mut self, slot: usize, started: bool, exit_code: i64) -> PyResult<()> {
        self.s.freed(self.slot(slot)?, started, exit_code);
        Ok(())
    }

    /// Why the pool is broken (workers died before they started, enough
    /// in a row, and none alive has started), or `None`; `place` ("on
    /// node2") goes into the reason.
    #[pyo3(signature = (any_started_alive, place=None))]
    fn broken(&self, any_started_alive: bool, place: Option<&str>) -> Option<String> {
        self.s.broken(any_started_alive, place)
    }
}

/// Run `f` on the bytes of a buffer (`bytes` without a copy).
fn with_bytes<T>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> T) -> PyResult<T> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(data)?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("a pool message must be a contiguous buffer"));
    }
    // SAFETY: a contiguous buffer of `len_bytes` bytes, kept alive by `buf`
    // while the GIL is held (for the duration of `f`).
    let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr().cast::<u8>(), buf.len_bytes()) };
    Ok(f(bytes))
}

fn task_header(data: &Bound<'_, PyAny>) -> PyResult<TaskHeader> {
    with_bytes(data, TaskHeader::decode)?.map_err(pool_err)
}

/// The worker's side of a take: the task channel, the gap reports (a
/// Python callable, `report(first, count)`), the wait.
struct PyTaker<'a, 'py> {
    py: Python<'py>,
    ch: &'a channels_core::Channel,
    report: &'a Bound<'py, PyAny>,
    check: Option<&'a Py<PyAny>>,
    wait: Option<Duration>,
}

/// A message taken: the payload object (as `Channel.recv` returns it) and
/// its header.
type Taken<'py> = (Bound<'py, PyAny>, TaskHeader);

impl<'py> PyTaker<'_, 'py> {
    fn taken(&self, m: &[u8]) -> PyResult<Taken<'py>> {
        let data = received(self.py, m)?.get_item(1)?;
        let h = task_header(&data)?;
        Ok((data, h))
    }
}

impl<'py> Taker for PyTaker<'_, 'py> {
    type Msg = Taken<'py>;
    type Error = PyErr;

    fn try_recv(&mut self) -> PyResult<Option<Taken<'py>>> {
        match self.ch.try_recv() {
            Ok(m) => self.taken(&m).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(e) => Err(try_recv_err(e)),
        }
    }

    fn recv_wait(&mut self) -> PyResult<Option<Taken<'py>>> {
        // As `Channel.recv(True, timeout, check)`.
        if self.wait == Some(Duration::ZERO) {
            return Ok(None);
        }
        let (ch, t, check) = (self.ch, self.wait, self.check);
        let (r, int) = detached(self.py, |hook| {
            let mut stop = checked_hook(hook, check);
            ch.recv_interruptible(t, &mut stop)
        });
        match r {
            Ok(m) => self.taken(&m).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Interrupted) => interrupted(self.py, int),
            Err(e) => Err(recv_err(e, int)),
        }
    }

    fn seq(&self, m: &Taken<'py>) -> PyResult<i64> {
        Ok(m.1.seq)
    }

    fn report(&mut self, gap: Gap) -> PyResult<()> {
        self.report.call1((gap.first, gap.count)).map(drop)
    }
}

/// Take the next task of the pool's task channel `ch` under `lock` and
/// record it in `slot` of `ledger` (`None`: a taker that runs nothing):
/// SENT is read before the ring, tasks taken by a worker that died before
/// recording them are reported with `report(first, count)`. Waits as
/// `ch.recv(True, timeout, check)` does. Returns `(data, seq, job, index,
/// kind, function length)`, or `None` when `check()` said to stop or the
/// timeout elapsed.
#[pyfunction]
#[pyo3(signature = (ledger, ch, lock, report, slot, check=None, timeout=None))]
#[allow(clippy::too_many_arguments)]
fn pool_take<'py>(
    py: Python<'py>,
    ledger: &PoolLedger,
    ch: &Channel,
    lock: &Lock,
    report: &Bound<'py, PyAny>,
    slot: Option<usize>,
    check: Option<Py<PyAny>>,
    timeout: Option<f64>,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    if let Some(s) = slot {
        ledger.slot(s)?;
    }
    let wait = block_timeout(true, timeout)?;
    let chan = ch.ch()?;
    lock.acquire(py, true, None)?;
    let mut t = PyTaker { py, ch: &chan, report, check: check.as_ref(), wait };
    let got = ledger::take(&ledger.led, slot, &mut t);
    let released = lock.release();
    let got = got?;
    released?;
    let Some((data, h)) = got else { return Ok(None) };
    let fields = (data, h.seq, h.job, h.index, h.kind.to_u8(), h.function_len);
    Ok(Some(fields.into_pyobject(py)?))
}

/// A task header: `struct.pack("<cqqqBI", b"T", seq, job, index, kind,
/// function_length)`.
#[pyfunction]
fn pool_task_header(
    py: Python<'_>,
    seq: i64,
    job: i64,
    index: i64,
    kind: u8,
    function_length: u32,
) -> PyResult<Bound<'_, PyBytes>> {
    let kind = Kind::from_u8(kind).ok_or_else(|| pool_err(message::DecodeError::BadKind(kind)))?;
    Ok(PyBytes::new(py, &TaskHeader { seq, job, index, kind, function_len: function_length }.encode()))
}

/// `(seq, job, index, kind, function length)` of a task message.
#[pyfunction]
fn pool_decode_task(data: &Bound<'_, PyAny>) -> PyResult<(i64, i64, i64, u8, u32)> {
    let h = task_header(data)?;
    Ok((h.seq, h.job, h.index, h.kind.to_u8(), h.function_len))
}

/// A result header: `struct.pack("<cqqq", b"R", seq, job, index)`.
#[pyfunction]
fn pool_result_header(py: Python<'_>, seq: i64, job: i64, index: i64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &ResultHeader { seq, job, index }.encode())
}

/// `(seq, job, index)` of a result message (the result follows the header,
/// at `POOL_RESULT_HEADER`).
#[pyfunction]
fn pool_decode_result(data: &Bound<'_, PyAny>) -> PyResult<(i64, i64, i64)> {
    let h = with_bytes(data, ResultHeader::decode)?.map_err(pool_err)?;
    Ok((h.seq, h.job, h.index))
}

/// A lost-task notice: tasks `seq .. seq + count - 1` died with worker
/// `pid` (-1: a taker that died before recording; -2: not run, the pool is
/// broken), which ended with `exit_code`.
#[pyfunction]
fn pool_lost(py: Python<'_>, seq: i64, count: i64, pid: i64, exit_code: i64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &Lost { seq, count, pid, exit_code }.encode())
}

/// `(seq, count, pid, exit code)` of a lost-task notice.
#[pyfunction]
fn pool_decode_lost(data: &Bound<'_, PyAny>) -> PyResult<(i64, i64, i64, i64)> {
    let n = with_bytes(data, Lost::decode)?.map_err(pool_err)?;
    Ok((n.seq, n.count, n.pid, n.exit_code))
}

/// How a process ended, in words ("exited with code 3", "was killed by
/// SIGKILL"; `None`: "ended").
#[pyfunction]
#[pyo3(signature = (exit_code))]
fn pool_ended_how(exit_code: Option<i64>) -> String {
    exit_code.map_or_else(|| "ended".to_owned(), ledger::ended_how)
}

/// Bytes of the ledger of `slots` workers.
#[pyfunction]
fn pool_ledger_size(slots: usize) -> usize {
    8 * ledger::words_for(slots)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pool_ended_how, m)?)?;
    m.add_function(wrap_pyfunction!(pool_ledger_size, m)?)?;
    m.add("POOL_END", PyBytes::new(m.py(), &[message::END]))?;
    let kinds = [
        ("POOL_CALL", Kind::Call),
        ("POOL_CALL_KW", Kind::CallKw),
        ("POOL_MAP", Kind::Map),
        ("POOL_STARMAP", Kind::Starmap),
        ("POOL_STOP", Kind::Stop),
    ];
    for (name, kind) in kinds {
        m.add(name, kind.to_u8())?;
    }
    m.add_class::<PoolLedger>()?;
    m.add_class::<PoolSlots>()?;
    m.add_function(wrap_pyfunction!(pool_take, m)?)?;
    m.add_function(wrap_pyfunction!(pool_task_header, m)?)?;
    m.add_function(wrap_pyfunction!(pool_decode_task, m)?)?;
    m.add_function(wrap_pyfunction!(pool_result_header, m)?)?;
    m.add_function(wrap_pyfunction!(pool_decode_result, m)?)?;
    m.add_function(wrap_pyfunction!(pool_lost, m)?)?;
    m.add_function(wrap_pyfunction!(pool_decode_lost, m)?)?;
    m.add("POOL_IDLE", ledger::IDLE)?;
    m.add("POOL_RESULT_HEADER", message::RESULT_HEADER)?;
    m.add("POOL_TASK_HEADER", message::TASK_HEADER)?;
    m.add("POOL_GAP_PID", message::GAP_PID)?;
    m.add("POOL_NOT_RUN_PID", message::NOT_RUN_PID)?;
    Ok(())
}
