//! The shards of a DDict that live on other nodes: each operation on them
//! is a request to the shard's node, whose service performs it there
//! (`runtime::ddictserve`) with a client of its own and answers the result
//! or the kind of error a local client would have raised, so a DDict
//! behaves the same on one node and on many (a missing key is `KeyError`
//! everywhere, never a wait). [`crate::ddict::DDictClient`] decides where
//! each operation goes.
use crate::blocking::detached;
use crate::errors::{ddict_remote_err, ddict_remote_failure, DDictError};
use crate::remote_sync::service_for;
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
    let c = service_for(node, transport_shm::this_node())?;
    // A large last argument (a value) goes in a block of this node's store:
    // this node's service sends its bytes on from there (BLOCK_TAIL), so
    // they do not pass through this process's connection to it. Tag kind
    // 0x80: the block's bytes are the value, without a tag byte. (On a
    // direct connection to the shard's node there is no service to send
    // them on: they go on the connection, from where they are.)
    let block = match args.split_last() {
        Some((last, _)) if last.len() >= crate::lent::MIN_LEN && !c.is_direct() => {
            crate::lent::prepare(last, None, 0x80)
        }
        _ => None,
    };
    let (r, int) = match &block {
        Some(b) => {
            let (last, rest) = args.split_last().expect("checked");
            let mut p = vec![runtime::proto::DDICT];
            p.extend_from_slice(&(b.desc.len() as u32).to_le_bytes());
            p.extend_from_slice(&node.to_le_bytes());
            p.extend_from_slice(&ops::encode_but_last(op, pin, desc, rest, last.len()));
            p.extend_from_slice(&b.desc);
            b.commit();
            let kind = runtime::proto::BLOCK_TAIL;
            detached(py, |hook| c.call_raw_with(node, kind, &p, CHECK_EVERY, hook))
        }
        None => match args.split_last() {
            // Straight to the shard's node: a large value is written to the
            // connection from where it is.
            Some((last, rest)) if last.len() >= crate::lent::MIN_LEN => {
                let first = ops::encode_but_last(op, pin, desc, rest, last.len());
                detached(py, |hook| c.call_parts_with(node, runtime::proto::DDICT, &first, last, CHECK_EVERY, hook))
            }
            _ => {
                let p = ops::encode(op, pin, desc, args);
                detached(py, |hook| c.call_with(node, runtime::proto::DDICT, &p, CHECK_EVERY, hook))
            }
        },
    };
    if let Some(b) = block {
        // Not taken by the service (the request never reached it): back
        // to the store. Taken, it is the service's to free.
        b.recall();
    }
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
