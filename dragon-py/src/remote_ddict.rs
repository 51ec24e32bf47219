//! The shards of a DDict that live on other nodes: each operation on them
//! is a request to the shard's node, whose service performs it there
//! (`runtime::ddictserve`) with a client of its own and answers the result
//! or the kind of error a local client would have raised, so a DDict
//! behaves the same on one node and on many (a missing key is `KeyError`
//! everywhere, never a wait). [`crate::ddict::DDictClient`] decides where
//! each operation goes.
use crate::blocking::detached;
use crate::ddict::{
    DDictDestroyedError, DDictError, DDictFrozenError, DDictFullError, DDictManagerDied, DDictPersistError,
};
use crate::remote_sync::service;
use pyo3::exceptions::PyConnectionError;
use pyo3::prelude::*;
use runtime::ddictserve::{self as ops, ErrorKind};
use std::time::Duration;
use transport_abi::abi::DRAGON_EIO;
use transport_tcp::TcpError;

/// How often a request looks for Ctrl-C.
const CHECK_EVERY: Duration = Duration::from_millis(100);

fn failure(kind: ErrorKind, msg: String) -> PyErr {
    match kind {
        ErrorKind::Full => DDictFullError::new_err(msg),
        ErrorKind::Frozen => DDictFrozenError::new_err(msg),
        ErrorKind::ManagerDied => DDictManagerDied::new_err(msg),
        ErrorKind::Destroyed => DDictDestroyedError::new_err(msg),
        ErrorKind::Persist => DDictPersistError::new_err(msg),
        ErrorKind::Other => DDictError::new_err(msg),
    }
}

/// Operation `op` of the DDict `desc` on node `node` (keyed operations
/// routed to shard `pin` there, if given): the answer's fields.
pub(crate) fn call(
    py: Python<'_>,
    node: u32,
    pin: Option<usize>,
    desc: &str,
    op: u8,
    args: &[&[u8]],
) -> PyResult<Vec<Vec<u8>>> {
    let p = ops::encode(op, pin, desc, args);
    let c = service()?;
    let (r, int) =
        detached(py, |hook| c.call_with(node, runtime::proto::DDICT, &p, CHECK_EVERY, hook).map(|b| b.to_vec()));
    let answer = match r {
        Ok(b) => b,
        Err(TcpError::Interrupted) => return Err(int.into_err()),
        // The shard's node is lost (or the link to it): as for any object
        // of a lost node.
        Err(TcpError::Remote { code: DRAGON_EIO, message }) => return Err(PyConnectionError::new_err(message)),
        Err(TcpError::Remote { message, .. }) => return Err(DDictError::new_err(message)),
        Err(e) => return Err(PyConnectionError::new_err(format!("DDict shards on node {node}: {e}"))),
    };
    let bad = || DDictError::new_err("malformed answer from a DDict's node");
    let (&status, rest) = answer.split_first().ok_or_else(bad)?;
    let fields: Vec<Vec<u8>> = ops::fields(rest).ok_or_else(bad)?.into_iter().map(<[u8]>::to_vec).collect();
    if status != ops::OK {
        let msg = fields.first().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
        return Err(failure(ErrorKind::from_status(status), msg));
    }
    Ok(fields)
}
