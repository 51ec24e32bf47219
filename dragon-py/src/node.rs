//! The multi-node runtime seen from Python: the node service's entry point
//! (`python -m dragon._node`), host lists, and the names of a node's
//! sockets (`runtime` crate).
use crate::errors::{hosts_err, node_request_err};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Run this node's service: read the bootstrap from standard input, serve
/// until the node is torn down. Returns the exit code for the process.
#[pyfunction]
fn node_service(py: Python<'_>, python: &str) -> i32 {
    let opts = runtime::service::Options { python: python.into(), ..Default::default() };
    py.detach(|| runtime::service::main(opts))
}

/// Expand a host list (`node1,node2`, `nid[001-004,007]`).
#[pyfunction]
fn expand_hostlist(expr: &str) -> PyResult<Vec<String>> {
    runtime::expand_hostlist(expr).map_err(hosts_err)
}

/// The hosts of a host file's text (one host list per line, `#` comments).
#[pyfunction]
fn parse_hostfile(text: &str) -> PyResult<Vec<String>> {
    runtime::parse_hostfile(text).map_err(hosts_err)
}

/// A fresh run secret (64 hex digits).
#[pyfunction]
fn new_secret() -> String {
    transport_tcp::Secret::random().to_hex()
}

/// The bootstrap text node `index` of a run reads on its standard input;
/// `cpus`, when given, is the number of CPUs the run may use on that node
/// (a Slurm allocation's), reported instead of the service's affinity.
#[pyfunction]
#[pyo3(signature = (run, secret, index, hosts, peer_timeout, join_timeout, cpus=None))]
fn bootstrap_text(
    run: &str,
    secret: &str,
    index: u32,
    hosts: Vec<String>,
    peer_timeout: f64,
    join_timeout: f64,
    cpus: Option<u32>,
) -> PyResult<String> {
    if cpus == Some(0) {
        return Err(PyValueError::new_err("cpus must be at least 1"));
    }
    let secret = transport_tcp::Secret::from_hex(secret).ok_or_else(|| PyValueError::new_err("bad secret"))?;
    let secs = |s: f64, what: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(std::time::Duration::from_secs_f64(s))
        } else {
            Err(PyValueError::new_err(format!("{what} must be a positive number of seconds")))
        }
    };
    let b = runtime::Bootstrap {
        run: run.to_owned(),
        secret,
        index,
        hosts,
        peer_timeout: secs(peer_timeout, "peer_timeout")?,
        join_timeout: secs(join_timeout, "join_timeout")?,
        cpus,
    };
    Ok(b.encode())
}

/// The abstract socket name of node `node`'s service in run `run`.
#[pyfunction]
fn service_name(run: &str, node: u32) -> String {
    runtime::service::service_name(run, node)
}

/// The abstract socket name of node `node`'s template (started by its service).
#[pyfunction]
fn template_name(run: &str, node: u32) -> String {
    runtime::service::template_name(run, node)
}

/// This process's node index (`DRAGON_NODE_INDEX`, read once).
#[pyfunction]
fn this_node() -> u32 {
    transport_shm::this_node()
}

/// What node `node` of run `run` says of the run's processes there (JSON,
/// see `runtime::cleanup::status_json`), asked through the service of node
/// `here` (this machine's node of the run). `ConnectionError` for a lost
/// node or a service that cannot be reached.
#[pyfunction]
fn node_status(py: Python<'_>, run: &str, here: u32, node: u32) -> PyResult<String> {
    let name = runtime::service::service_name(run, here);
    let answer = py.detach(|| {
        let c = transport_tcp::local::ServiceClient::connect(&name)?;
        c.call(node, runtime::proto::PROCS, &[])
    });
    let bytes = answer.map_err(|e| node_request_err(node, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(node_status, m)?)?;
    m.add_function(wrap_pyfunction!(node_service, m)?)?;
    m.add_function(wrap_pyfunction!(expand_hostlist, m)?)?;
    m.add_function(wrap_pyfunction!(parse_hostfile, m)?)?;
    m.add_function(wrap_pyfunction!(new_secret, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_text, m)?)?;
    m.add_function(wrap_pyfunction!(service_name, m)?)?;
    m.add_function(wrap_pyfunction!(template_name, m)?)?;
    m.add_function(wrap_pyfunction!(this_node, m)?)?;
    Ok(())
}
