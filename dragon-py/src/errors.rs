//! Every Rust error that reaches Python is turned into an exception here,
//! one function per error type: the standard exception where Python has
//! one (`EOFError`, `BrokenPipeError`, `ValueError`, `ConnectionError`,
//! ...), `dragon.errors` or `dragon.data.ddict` for the rest, each with a
//! message that says what happened (mostly the error's own `Display`).
//!
//! Errors a call handles itself (a timeout that returns `None`, a full
//! channel that returns `SEND_FULL`) never come here; an interrupted wait
//! raises the exception the signal handler raised (see [`Interrupt`]).
use crate::blocking::Interrupt;
use channels_core::{
    AllocError, BackingError, ChannelError, RecvTimeoutError, SelectError, SendTimeoutError, TryRecvError,
};
use pyo3::exceptions::{
    PyAssertionError, PyBrokenPipeError, PyConnectionError, PyEOFError, PyOSError, PyOverflowError, PyValueError,
};
use pyo3::prelude::*;
use queues::{Fault, GetError, PipeError, PutError, QueueError, TaskDoneError};
use shm_primitives::handle::HandleError;
use std::fmt::Display;
use sync_objects::{BarrierError, CondError, ReleaseError, WaitError};
use transport_abi::abi::{DRAGON_EBADMSG, DRAGON_EIDRM, DRAGON_EINVAL, DRAGON_EIO, DRAGON_ENOENT, DRAGON_EPIPE};
use transport_abi::loader::{LoadError, PluginError};
use transport_shm::memblock::MemoryBlockError;
use transport_shm::segment::SegmentError;
use transport_shm::SyncShmError;
use transport_tcp::TcpError;

pyo3::import_exception!(dragon.errors, DragonError);
pyo3::import_exception!(dragon.errors, InvalidHandleError);
pyo3::import_exception!(dragon.errors, DestroyedError);
pyo3::import_exception!(dragon.errors, NotLocalError);
pyo3::import_exception!(dragon.errors, SharedMemoryError);
pyo3::import_exception!(dragon.errors, MessageTooLargeError);
pyo3::import_exception!(threading, BrokenBarrierError);
pyo3::import_exception!(dragon.data.ddict, DDictError);
pyo3::import_exception!(dragon.data.ddict, DDictFullError);
pyo3::import_exception!(dragon.data.ddict, DDictManagerDied);
pyo3::import_exception!(dragon.data.ddict, DDictFrozenError);
pyo3::import_exception!(dragon.data.ddict, DDictDestroyedError);
pyo3::import_exception!(dragon.data.ddict, DDictPersistError);
pyo3::import_exception!(dragon.data.ddict, DDictPersistCorruptError);

// ---- handles and shared-memory segments ---------------------------------------

/// A memory block (a Pool's ledger) that cannot be attached or used:
/// `InvalidHandleError` for a wrong or forged handle, `DestroyedError` for
/// a block that is gone, `ValueError` for an access out of its bounds.
pub(crate) fn memory_block_err(e: MemoryBlockError) -> PyErr {
    match &e {
        MemoryBlockError::Gone(_) => DestroyedError::new_err(e.to_string()),
        MemoryBlockError::OutOfBounds { .. } => PyValueError::new_err(e.to_string()),
        _ => InvalidHandleError::new_err(e.to_string()),
    }
}

/// A Pool message or ledger that is not what it must be (`ValueError`).
pub(crate) fn pool_err(e: impl Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Handle bytes that do not parse (or name another kind of object):
/// `InvalidHandleError` (a `ValueError`), saying whose handle it was to be.
pub(crate) fn handle_err(what: &str, e: HandleError) -> PyErr {
    InvalidHandleError::new_err(format!("bad {what} handle: {e}"))
}

/// A segment operation failed.
pub(crate) fn segment_err(e: SegmentError) -> PyErr {
    match &e {
        SegmentError::NotFound(_) => DestroyedError::new_err(e.to_string()),
        SegmentError::BadName(_) => InvalidHandleError::new_err(e.to_string()),
        SegmentError::NoSpace { .. } => SharedMemoryError::new_err((libc::ENOSPC, e.to_string())),
        SegmentError::Io { source, .. } => match source.raw_os_error() {
            Some(errno) => SharedMemoryError::new_err((errno, e.to_string())),
            None => SharedMemoryError::new_err(e.to_string()),
        },
        _ => SharedMemoryError::new_err(e.to_string()),
    }
}

// ---- synchronisation objects ----------------------------------------------------

/// Creating or attaching a synchronisation object failed.
pub(crate) fn sync_err(e: SyncShmError) -> PyErr {
    match e {
        SyncShmError::Handle(h) => InvalidHandleError::new_err(h.to_string()),
        SyncShmError::NotLocal { .. } => NotLocalError::new_err(e.to_string()),
        SyncShmError::Destroyed { .. } => DestroyedError::new_err(e.to_string()),
        SyncShmError::Segment(s) => segment_err(s),
        SyncShmError::Object(sync_objects::ObjectError::InvalidParameter(what)) => PyValueError::new_err(what),
        SyncShmError::Object(o) => InvalidHandleError::new_err(o.to_string()),
        other => DragonError::new_err(other.to_string()),
    }
}

/// A release that is not allowed, in the standard library's words (the
/// CPython suite checks them): `ValueError` for a lock or semaphore
/// released too often, `AssertionError` for a recursive lock of another
/// thread, `OverflowError` past the largest semaphore value.
pub(crate) fn release_err(e: ReleaseError) -> PyErr {
    match e {
        ReleaseError::NotHeld => PyValueError::new_err("semaphore or lock released too many times"),
        ReleaseError::NotOwner => PyAssertionError::new_err("attempt to release recursive lock not owned by thread"),
        ReleaseError::Overflow { max } if max == sync_objects::SEM_VALUE_MAX => {
            PyOverflowError::new_err("semaphore value would exceed its maximum")
        }
        ReleaseError::Overflow { .. } => PyValueError::new_err("semaphore or lock released too many times"),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// A wait of a lock or semaphore failed (a timeout is no error: the
/// caller returns `False`); `int` holds what stopped an interrupted wait.
pub(crate) fn wait_err(e: WaitError, int: Interrupt) -> PyErr {
    match e {
        WaitError::Interrupted => int.into_err(),
        WaitError::RecursionLimit => PyOverflowError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// A condition wait failed: without holding the lock it is the standard
/// library's `AssertionError`.
pub(crate) fn cond_err(e: CondError, int: Interrupt) -> PyErr {
    match e {
        CondError::Interrupted { .. } => int.into_err(),
        CondError::NotHeld(_) => PyAssertionError::new_err("must acquire() condition before using wait()"),
        e => PyValueError::new_err(e.to_string()),
    }
}

/// A barrier wait failed: `threading.BrokenBarrierError` saying why, or
/// the exception the barrier's action raised (`action_err`).
pub(crate) fn barrier_err(e: BarrierError, int: Interrupt, action_err: Option<PyErr>) -> PyErr {
    match e {
        BarrierError::Interrupted => int.into_err(),
        BarrierError::ActionFailed => action_err.unwrap_or_else(|| BrokenBarrierError::new_err(e.to_string())),
        e => BrokenBarrierError::new_err(e.to_string()),
    }
}

// ---- channels -----------------------------------------------------------------

/// Creating or attaching a channel failed.
pub(crate) fn channel_err(e: ChannelError) -> PyErr {
    match e {
        ChannelError::Handle(h) => handle_err("channel", h),
        ChannelError::NotFound(_) | ChannelError::Destroyed | ChannelError::Stale { .. } => {
            DestroyedError::new_err(e.to_string())
        }
        ChannelError::NotAChannel(_) | ChannelError::LayoutVersion { .. } => InvalidHandleError::new_err(e.to_string()),
        ChannelError::InvalidOptions(m) => PyValueError::new_err(m),
        ChannelError::Backing(BackingError::NoSpace(m)) => SharedMemoryError::new_err((libc::ENOSPC, m)),
        ChannelError::Backing(b) => SharedMemoryError::new_err(b.to_string()),
        e => DragonError::new_err(e.to_string()),
    }
}

/// A large message found no memory: `None` when that passes (the memory of
/// messages not yet received: the send reports `SEND_NO_MEMORY`, the
/// caller retries), else the exception.
pub(crate) fn alloc_err(e: &AllocError) -> Option<PyErr> {
    match e {
        AllocError::TooLarge { .. } => Some(MessageTooLargeError::new_err(e.to_string())),
        AllocError::LimitReached { .. }
        | AllocError::OutOfSegments { .. }
        | AllocError::Backing(BackingError::NoSpace(_)) => None,
        AllocError::Backing(BackingError::NotFound(_)) => Some(DestroyedError::new_err(e.to_string())),
        _ => Some(SharedMemoryError::new_err(e.to_string())),
    }
}

/// How a send that did not happen ends.
pub(crate) enum SendFail {
    /// The channel stayed full (`SEND_FULL`).
    Full,
    /// No memory for a large message for now (`SEND_NO_MEMORY`).
    NoMemory,
    /// An exception.
    Err(PyErr),
}

/// A send failed: closed (nobody will receive) is `BrokenPipeError`, as a
/// pipe's. (A send that waited with the interrupt hook raises what stopped
/// it instead of `Interrupted`: only it holds the exception.)
pub(crate) fn send_err(e: SendTimeoutError<()>) -> SendFail {
    match e {
        SendTimeoutError::Timeout(()) => SendFail::Full,
        SendTimeoutError::Disconnected(()) => SendFail::Err(PyBrokenPipeError::new_err(e.to_string())),
        SendTimeoutError::Destroyed(()) => SendFail::Err(DestroyedError::new_err(e.to_string())),
        SendTimeoutError::Alloc((), a) => alloc_err(&a).map_or(SendFail::NoMemory, SendFail::Err),
        e => SendFail::Err(DragonError::new_err(e.to_string())),
    }
}

/// A receive without waiting failed (`Empty` is no error: the caller goes
/// on to wait or returns `None`): closed and drained is `EOFError`.
pub(crate) fn try_recv_err(e: TryRecvError) -> PyErr {
    match e {
        TryRecvError::Disconnected => PyEOFError::new_err(e.to_string()),
        TryRecvError::Destroyed => DestroyedError::new_err(e.to_string()),
        e => DragonError::new_err(e.to_string()),
    }
}

/// A receive that waited failed (a timeout is no error: the caller returns
/// `None`).
pub(crate) fn recv_err(e: RecvTimeoutError, int: Interrupt) -> PyErr {
    match e {
        RecvTimeoutError::Disconnected => PyEOFError::new_err(e.to_string()),
        RecvTimeoutError::Destroyed => DestroyedError::new_err(e.to_string()),
        RecvTimeoutError::Interrupted => int.into_err(),
        e => DragonError::new_err(e.to_string()),
    }
}

/// A wait on several channels failed (a timeout is no error).
pub(crate) fn select_err(e: SelectError) -> PyErr {
    match e {
        SelectError::NoChannels => PyValueError::new_err(e.to_string()),
        e => DragonError::new_err(e.to_string()),
    }
}

/// The block a received message names could not be mapped from the
/// process's block store `store`.
pub(crate) fn lent_block_err(store: &str, e: std::io::Error) -> PyErr {
    DragonError::new_err(format!("a message names a block of store {store:?} that cannot be mapped: {e}"))
}

// ---- other nodes: the off-node transport plugin and the node's service -------

/// The off-node transport plugin could not be loaded.
pub(crate) fn plugin_load_err(e: LoadError) -> PyErr {
    DragonError::new_err(format!("off-node transport: {e}"))
}

/// An operation of the off-node transport failed, by its `DRAGON_E*` code:
/// sending on a closed channel is `BrokenPipeError`, a lost node or link
/// `ConnectionError`.
pub(crate) fn plugin_err(e: &PluginError) -> PyErr {
    let msg = e.message().to_owned();
    match e.code() {
        DRAGON_EPIPE => PyBrokenPipeError::new_err(msg),
        DRAGON_EIDRM | DRAGON_ENOENT => DestroyedError::new_err(msg),
        DRAGON_EBADMSG => InvalidHandleError::new_err(msg),
        DRAGON_EINVAL => PyValueError::new_err(msg),
        DRAGON_EIO => PyConnectionError::new_err(msg),
        _ => DragonError::new_err(msg),
    }
}

/// A receive through the off-node transport failed: closed and drained is
/// `EOFError`, as for a channel of this node; the rest as [`plugin_err`].
pub(crate) fn plugin_recv_err(e: &PluginError) -> PyErr {
    match e.code() {
        DRAGON_EPIPE => PyEOFError::new_err(format!("receiving on a closed and empty channel: {}", e.message())),
        _ => plugin_err(e),
    }
}

/// This process could not reach its node's service.
pub(crate) fn service_connect_err(service: &str, e: impl Display) -> PyErr {
    PyConnectionError::new_err(format!("cannot reach this node's service {service:?}: {e}"))
}

/// A request to a synchronisation object of another node failed. The
/// answer's code (`runtime::syncserve::code`) says which exception a local
/// object would have raised.
pub(crate) fn remote_sync_err(e: TcpError, int: Interrupt) -> PyErr {
    use runtime::syncserve::code;
    match e {
        TcpError::Interrupted => int.into_err(),
        TcpError::Remote { code, message } => match code {
            code::NOT_HELD | code::OVERFLOW => PyValueError::new_err(message),
            code::NOT_OWNER | code::NOT_ACQUIRED => PyAssertionError::new_err(message),
            code::OVERFLOW_MAX => PyOverflowError::new_err(message),
            code::BROKEN_BARRIER => BrokenBarrierError::new_err(message),
            // The object's node is lost (or the link to it).
            DRAGON_EIO => PyConnectionError::new_err(message),
            _ => DragonError::new_err(message),
        },
        e => PyConnectionError::new_err(e.to_string()),
    }
}

/// A request to the DDict shards of node `node` failed on the way (the
/// shards' own failures come back as a [`ddict_remote_failure`]).
pub(crate) fn ddict_remote_err(e: TcpError, int: Interrupt, node: u32) -> PyErr {
    match e {
        TcpError::Interrupted => int.into_err(),
        // The shard's node is lost (or the link to it): as for any object
        // of a lost node.
        TcpError::Remote { code: DRAGON_EIO, message } => PyConnectionError::new_err(message),
        TcpError::Remote { message, .. } => DDictError::new_err(message),
        e => PyConnectionError::new_err(format!("DDict shards on node {node}: {e}")),
    }
}

// ---- DDict ----------------------------------------------------------------------

/// A DDict operation failed.
pub(crate) fn ddict_err(e: ddict::Error) -> PyErr {
    use ddict::Error;
    let m = e.to_string();
    match e {
        Error::PersistCorrupt(c) => corrupt_err(&c, m),
        Error::Full { .. } => DDictFullError::new_err(m),
        Error::ManagerDied { .. } => DDictManagerDied::new_err(m),
        Error::Frozen => DDictFrozenError::new_err(m),
        Error::Destroyed => DDictDestroyedError::new_err(m),
        Error::Persist(_) => DDictPersistError::new_err(m),
        _ => DDictError::new_err(m),
    }
}

/// A DDict operation that another node's service performed failed there
/// (its answer says the kind of error and the message).
pub(crate) fn ddict_remote_failure(kind: runtime::ddictserve::ErrorKind, msg: String) -> PyErr {
    use runtime::ddictserve::ErrorKind;
    match kind {
        ErrorKind::Full => DDictFullError::new_err(msg),
        ErrorKind::Frozen => DDictFrozenError::new_err(msg),
        ErrorKind::ManagerDied => DDictManagerDied::new_err(msg),
        ErrorKind::Destroyed => DDictDestroyedError::new_err(msg),
        ErrorKind::Persist => DDictPersistError::new_err(msg),
        ErrorKind::Other => DDictError::new_err(msg),
    }
}

/// `DDictPersistCorruptError`, with the damage as attributes.
fn corrupt_err(c: &ddict::persist::Corruption, message: String) -> PyErr {
    let e = DDictPersistCorruptError::new_err(message);
    Python::attach(|py| {
        let v = e.value(py);
        let set = || -> PyResult<()> {
            v.setattr("path", c.path.as_os_str().to_owned())?;
            v.setattr("offset", c.offset)?;
            v.setattr("what", c.what.clone())?;
            v.setattr("records_after", c.records_after)?;
            v.setattr("bytes_after", c.bytes_after)?;
            v.setattr("spans", c.spans)
        };
        match set() {
            Ok(()) => e.clone_ref(py),
            Err(other) => other,
        }
    })
}

// ---- the node runtime -------------------------------------------------------

/// A request to node `node`'s service (through this node's) failed: the
/// node is lost, or the service cannot be reached.
pub(crate) fn node_request_err(node: u32, e: TcpError) -> PyErr {
    PyConnectionError::new_err(format!("node {node}: {e}"))
}

/// A host list or host file that does not parse.
pub(crate) fn hosts_err(e: impl Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

// ---- queues -------------------------------------------------------------------

pyo3::import_exception!(queue, Full);
pyo3::import_exception!(queue, Empty);

/// A channel operation of a queue (`queues` crate) failed: as the same
/// failure of `Channel.send` is reported.
pub(crate) fn fault_err(e: &Fault) -> PyErr {
    match e {
        Fault::Closed => PyBrokenPipeError::new_err(e.to_string()),
        Fault::Destroyed => DestroyedError::new_err(e.to_string()),
        Fault::TooLarge(_) => MessageTooLargeError::new_err(e.to_string()),
        Fault::NoMemory(_) => SharedMemoryError::new_err(e.to_string()),
        _ => DragonError::new_err(e.to_string()),
    }
}

/// A put on a queue (`queues` crate) failed: `queue.Full`, `ValueError`
/// for a closed queue, else as [`fault_err`].
pub(crate) fn put_err(e: &PutError) -> PyErr {
    match e {
        PutError::Full => Full::new_err(()),
        PutError::Closed | PutError::Wire(_) => PyValueError::new_err(e.to_string()),
        PutError::Channel(f) => fault_err(f),
        _ => DragonError::new_err(e.to_string()),
    }
}

/// A get from a queue (`queues` crate) failed: `queue.Empty` if nothing
/// came in time, else as [`fault_err`].
pub(crate) fn get_err(e: &GetError) -> PyErr {
    match e {
        GetError::Empty => Empty::new_err(()),
        GetError::Closed => PyValueError::new_err(e.to_string()),
        GetError::Channel(f) => fault_err(f),
        _ => DragonError::new_err(e.to_string()),
    }
}

/// A joinable queue's `task_done` failed: `ValueError` if called more
/// often than items were put, as in the standard library.
pub(crate) fn task_done_err(e: &TaskDoneError) -> PyErr {
    match e {
        TaskDoneError::TooManyCalls => PyValueError::new_err(e.to_string()),
        _ => DragonError::new_err(e.to_string()),
    }
}

/// A pipe end's receive failed: `EOFError` at the end of file, else as
/// [`fault_err`].
pub(crate) fn pipe_err(e: &PipeError) -> PyErr {
    match e {
        PipeError::Eof => PyEOFError::new_err(()),
        PipeError::Closed => PyOSError::new_err("handle is closed"),
        PipeError::Channel(f) => fault_err(f),
        _ => DragonError::new_err(e.to_string()),
    }
}

/// A queue could not be made over a channel.
pub(crate) fn queue_err(e: &QueueError) -> PyErr {
    DragonError::new_err(e.to_string())
}

/// A message larger than all shared memory (`dir` holds `total` bytes):
/// the error `_wire.check_fits` raises.
pub(crate) fn too_large_for_shm(len: usize, dir: &str, total: u64) -> PyErr {
    MessageTooLargeError::new_err(format!(
        "message of {len} bytes is larger than all shared memory ({dir} holds {total} bytes); nothing was sent"
    ))
}
