//! The private extension module `dragon._native`.
use pyo3::prelude::*;

mod runtime;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    runtime::register(m)?;
    Ok(())
}
