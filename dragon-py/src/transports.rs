//! The transports this module uses, through the plugin ABI's registry
//! (`transport_abi::registry`): the shm transport is linked in and
//! registered when the module loads, and every channel of this node is
//! one of its channels (the module calls its implementation directly, the
//! same code its table's functions run); the off-node transport is loaded
//! from its plugin file on first use (`remote.rs`). `transports()` says
//! what the registry holds.

use crate::errors::plugin_load_err;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use transport_abi::registry;

/// Register the linked-in shm transport and check that its name resolves
/// to it (not to a plugin file registered under the same name first).
fn register_local() -> PyResult<()> {
    let shm = transport_shm::plugin::registered().map_err(plugin_load_err)?;
    let resolved = registry::resolve(shm.name()).map_err(plugin_load_err)?;
    if !resolved.is_static() {
        return Err(PyRuntimeError::new_err(format!(
            "the transport {:?} resolves to the plugin file {}, not to this build's shm transport",
            shm.name(),
            resolved.path().display()
        )));
    }
    Ok(())
}

/// The transports resolved in this process: ``(name, linked in, plugin
/// file or '')``, sorted by name.
#[pyfunction]
fn transports() -> Vec<(String, bool, String)> {
    registry::transports()
        .into_iter()
        .map(|(name, linked)| {
            let path = if linked {
                String::new()
            } else {
                registry::resolve(&name).map(|p| p.path().display().to_string()).unwrap_or_default()
            };
            (name, linked, path)
        })
        .collect()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    register_local()?;
    m.add_function(wrap_pyfunction!(transports, m)?)?;
    Ok(())
}
