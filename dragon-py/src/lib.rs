//! The private extension module `dragon._native`.
use pyo3::prelude::*;

mod blocking;
mod channel;
mod ddict;
mod errors;
mod lent;
mod memory;
mod node;
mod pipe;
mod pool;
mod queue;
mod remote;
mod remote_ddict;
mod remote_sync;
mod runtime;
mod sync;
mod transports;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    runtime::register(m)?;
    ddict::register(m)?;
    sync::register(m)?;
    channel::register(m)?;
    queue::register(m)?;
    pipe::register(m)?;
    memory::register(m)?;
    lent::register(m)?;
    node::register(m)?;
    pool::register(m)?;
    remote::register(m)?;
    remote_sync::register(m)?;
    transports::register(m)?;
    Ok(())
}
