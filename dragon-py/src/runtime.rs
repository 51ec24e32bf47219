//! Run-level helpers for the Python runtime (`dragon.runtime`, the template).
//!
//! Thin wrappers over `transport-shm`'s run naming and cleanup, so that the
//! Python side and the Rust transports agree on one format, and over
//! `shm-primitives`' process identities, so that the Python side tells a
//! live process from a dead one (or a later one with the same pid) as the
//! Rust side does.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use shm_primitives::process::{read_stat, ProcessId};
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

/// The start time of process `pid` (clock ticks after boot), zombie or
/// not; `None` if there is no such process.
#[pyfunction]
fn process_start(pid: u32) -> Option<u64> {
    read_stat(pid).map(|s| s.start)
}

/// Whether process `pid`, started at `start` (clock ticks after boot; 0:
/// any start time), still runs: it exists, is not a zombie, and is not a
/// later process that reused the pid.
#[pyfunction]
fn process_alive(pid: u32, start: u64) -> bool {
    ProcessId { pid, start }.is_alive()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(new_run_id, m)?)?;
    m.add_function(wrap_pyfunction!(valid_run_id, m)?)?;
    m.add_function(wrap_pyfunction!(run_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup_run, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup_dead_runs, m)?)?;
    m.add_function(wrap_pyfunction!(process_start, m)?)?;
    m.add_function(wrap_pyfunction!(process_alive, m)?)?;
    Ok(())
}
