//! Exceptions: the standard types where Python has one, `dragon.errors` for
//! the rest, and conversions from the Rust error types.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use transport_shm::segment::SegmentError;
use transport_shm::SyncShmError;

pyo3::import_exception!(dragon.errors, DragonError);
pyo3::import_exception!(dragon.errors, InvalidHandleError);
pyo3::import_exception!(dragon.errors, DestroyedError);
pyo3::import_exception!(dragon.errors, NotLocalError);
pyo3::import_exception!(dragon.errors, SharedMemoryError);
pyo3::import_exception!(dragon.errors, MessageTooLargeError);
pyo3::import_exception!(threading, BrokenBarrierError);

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
