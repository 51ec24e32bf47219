//! Plain shared-memory blocks for `Value`/`Array` (`dragon.sharedctypes`).
//!
//! Rust creates the segment (in the run, mode 0600, pages reserved so that a
//! full `/dev/shm` is an error here rather than a `SIGBUS` later) and codes
//! the handles; Python maps the file and writes and checks the block's
//! header (so no raw memory access is needed on this side of the boundary).
use crate::errors::{handle_err, segment_err, InvalidHandleError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shm_primitives::handle::{Handle, Kind};
use transport_shm::segment::{self, nonce32, RunId, Segment};

/// Create a zero-filled segment of at least `size` bytes in the current run;
/// returns its name and a fresh random 64-bit id.
#[pyfunction]
fn memory_create(py: Python<'_>, size: usize) -> PyResult<(String, u64)> {
    let name = RunId::current().segment_name("mem");
    let seg = py.detach(|| Segment::create(&name, size)).map_err(segment_err)?;
    drop(seg); // Python maps the file itself.
    let id = (u64::from(nonce32()) << 32) | u64::from(nonce32());
    Ok((name, id))
}

/// Remove a segment's name (existing mappings stay valid). Removing a name
/// that is already gone is not an error.
#[pyfunction]
fn segment_unlink(name: &str) -> PyResult<()> {
    segment::unlink(name).map_err(segment_err)
}

/// The handle bytes of a memory block: `segment`, `id`, generation 1, and the
/// offset of its data.
#[pyfunction]
fn memory_handle<'py>(py: Python<'py>, segment: String, id: u64, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
    let valid = !segment.is_empty()
        && segment.len() <= shm_primitives::handle::MAX_SEGMENT_NAME
        && !segment.starts_with('.')
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid {
        return Err(InvalidHandleError::new_err(format!("invalid segment name {segment:?}")));
    }
    let node = transport_shm::this_node();
    let h = Handle { kind: Kind::Memory, id, generation: 1, offset, node, segment, address: String::new() };
    Ok(PyBytes::new(py, &h.to_bytes()))
}

/// Parse a memory block's handle: `(segment, id, generation, offset)`.
/// Raises `InvalidHandleError` for garbage or a handle of another kind,
/// `NotLocalError` for a block on another node.
#[pyfunction]
fn memory_parse(handle: &[u8]) -> PyResult<(String, u64, u64, u64)> {
    let h = Handle::from_bytes_of(handle, Kind::Memory).map_err(|e| handle_err("memory block", e))?;
    if !h.address.is_empty() || h.node != transport_shm::this_node() {
        return Err(crate::errors::NotLocalError::new_err(format!(
            "handle names a memory block on node {} ({}); shared values and arrays cannot be used from \
             another node yet",
            h.node, h.address
        )));
    }
    Ok((h.segment, h.id, h.generation, h.offset))
}

/// The directory holding shared-memory segments.
#[pyfunction]
fn shm_dir() -> &'static str {
    segment::SHM_DIR
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(memory_create, m)?)?;
    m.add_function(wrap_pyfunction!(segment_unlink, m)?)?;
    m.add_function(wrap_pyfunction!(memory_handle, m)?)?;
    m.add_function(wrap_pyfunction!(memory_parse, m)?)?;
    m.add_function(wrap_pyfunction!(shm_dir, m)?)?;
    Ok(())
}
