//! Blocking calls made from Python.
//!
//! Every wait first tries without releasing the GIL (an uncontended lock or
//! a non-empty queue costs no GIL hand-over), then releases the GIL
//! (`Python::detach`) and waits in Rust: a short spin, then a futex sleep.
//! The Rust waits take an interrupt hook, called when a signal interrupts
//! the sleep and at least every liveness slice (100 ms); the hook here
//! re-attaches to the interpreter and runs `PyErr_CheckSignals`. If a
//! signal handler raised (Ctrl-C's `KeyboardInterrupt`, say), the hook
//! returns `false`, the wait gives up, and the exception propagates.
//!
//! Signal handlers run only in the main thread: in other threads the check
//! is a no-op, so their waits end only by their own outcome (or by a
//! timeout), as in CPython.
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use std::time::Duration;

/// Longest finite timeout honoured; longer ones mean "no limit" (a
/// `Duration` cannot hold everything a float can).
const MAX_TIMEOUT_S: f64 = 1e9;

/// A Python timeout in seconds (`None`: no limit) as a Rust one. Negative
/// means "do not wait" (as `multiprocessing`'s locks treat it); NaN is an
/// error.
pub(crate) fn timeout(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) if s.is_nan() => Err(PyValueError::new_err("timeout must be a number, not NaN")),
        Some(s) if s <= 0.0 => Ok(Some(Duration::ZERO)),
        Some(s) if s > MAX_TIMEOUT_S => Ok(None),
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
    }
}

/// The timeout of an `acquire(block, timeout)` / `get(block, timeout)`
/// call: a non-blocking call does not wait, whatever its timeout.
pub(crate) fn block_timeout(block: bool, t: Option<f64>) -> PyResult<Option<Duration>> {
    if block {
        timeout(t)
    } else {
        Ok(Some(Duration::ZERO))
    }
}

/// The interrupt state of one blocking call.
#[derive(Debug, Default)]
pub(crate) struct Interrupt {
    err: Option<PyErr>,
}

impl Interrupt {
    /// The hook: run pending signal handlers; `false` (stop waiting) if one
    /// raised.
    pub(crate) fn check(&mut self) -> bool {
        if self.err.is_some() {
            return false;
        }
        // `try_attach` declines while the interpreter shuts down: the wait
        // then simply goes on.
        match Python::try_attach(|py| py.check_signals()) {
            Some(Err(e)) => {
                self.err = Some(e);
                false
            }
            _ => true,
        }
    }

    /// Whether a signal handler raised.
    pub(crate) fn has_err(&self) -> bool {
        self.err.is_some()
    }

    /// The exception that stopped the wait.
    pub(crate) fn into_err(self) -> PyErr {
        self.err.unwrap_or_else(|| PyKeyboardInterrupt::new_err("wait interrupted"))
    }
}

/// Run `f` without the GIL, passing it the interrupt hook. Returns `f`'s
/// result and the interrupt state (which holds the exception if the hook
/// stopped the wait).
pub(crate) fn detached<T, F>(py: Python<'_>, f: F) -> (T, Interrupt)
where
    F: FnOnce(&mut dyn FnMut() -> bool) -> T + Send,
    T: Send,
{
    py.detach(|| {
        let mut int = Interrupt::default();
        let r = {
            let mut hook = || int.check();
            f(&mut hook)
        };
        (r, int)
    })
}
