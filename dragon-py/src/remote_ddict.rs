//! The shards of a DDict that live on other nodes: each operation on them
//! is a request to the shard's node, whose service performs it there
//! (`runtime::ddictserve`) with a client of its own and answers the result
//! or the kind of error a local client would have raised, so a DDict
//! behaves the same on one node and on many (a missing key is `KeyError`
//! everywhere, never a wait). [`crate::ddict::DDictClient`] decides where
//! each operation goes.
use crate::blocking::detached;
use crate::errors::{ddict_remote_err, ddict_remote_failure, DDictError};
use crate::remote_sync::service;
use pyo3::prelude::*;
use runtime::ddictserve::{self as ops, ErrorKind};
use std::time::Duration;

/// How often a request looks for Ctrl-C.
const CHECK_EVERY: Duration = Duration::from_millis(100);

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
    let (r, int) = detached(py, |hook| c.call_with(node, runtime::proto::DDICT, &p, CHECK_EVERY, hook));
    let answer = r.map_err(|e| ddict_remote_err(e, int, node))?;
    let bad = || DDictError::new_err("malformed answer from a DDict's node");
    let (&status, rest) = answer.split_first().ok_or_else(bad)?;
    let fields: Vec<Vec<u8>> = ops::fields(rest).ok_or_else(bad)?.into_iter().map(<[u8]>::to_vec).collect();
    if status != ops::OK {
        let msg = fields.first().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
        return Err(ddict_remote_failure(ErrorKind::from_status(status), msg));
    }
    Ok(fields)
}
