//! Run-level helpers for the Python runtime (`dragon.runtime`, the template).
//!
//! Thin wrappers over `transport-shm`'s run naming and cleanup, so that the
//! Python side and the Rust transports agree on one format.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use transport_shm::segment::{self, RunId};

fn parse(run_id: &str) -> PyResult<RunId> {
    RunId::parse(run_id)
        .ok_or_else(|| PyValueError::new_err(format!("invalid run id {run_id:?} (expected <pid>-<start>-<8 hex>)")))
}

/// A new run id owned by the calling process: `<pid>-<starttime>-<8 hex>`.
#[pyfunction]
fn new_run_id() -> String {
    RunId::new_owned_by_me().as_str().to_owned()
}

/// Whether `run_id` is a well-formed run id.
#[pyfunction]
fn valid_run_id(run_id: &str) -> bool {
    RunId::parse(run_id).is_some()
}

/// File-name prefix of every shared-memory segment of `run_id`.
#[pyfunction]
fn run_prefix(run_id: &str) -> PyResult<String> {
    Ok(parse(run_id)?.prefix())
}

/// Remove every shared-memory segment of `run_id`; returns how many.
#[pyfunction]
fn cleanup_run(py: Python<'_>, run_id: &str) -> PyResult<usize> {
    let run = parse(run_id)?;
    Ok(py.detach(|| segment::cleanup_run(&run)))
}

/// Remove the segments of every run whose owning process is dead.
#[pyfunction]
fn cleanup_dead_runs(py: Python<'_>) -> usize {
    py.detach(segment::cleanup_dead_runs)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(new_run_id, m)?)?;
    m.add_function(wrap_pyfunction!(valid_run_id, m)?)?;
    m.add_function(wrap_pyfunction!(run_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup_run, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup_dead_runs, m)?)?;
    Ok(())
}
