//! DDicts of other nodes: what `ddict_client` returns for a descriptor
//! whose shards live on another node of a multi-node run.
//! [`RemoteDDictClient`] answers the calls `dragon.data.ddict` makes of a
//! [`crate::ddict`] client; each is a request to the DDict's node, whose
//! service performs it there (`runtime::ddictserve`), so a key missing on
//! one node is missing on every node (`KeyError`, never a wait).
use crate::blocking::detached;
use crate::ddict::{
    DDictDestroyedError, DDictError, DDictFrozenError, DDictFullError, DDictManagerDied, DDictPersistError,
};
use crate::remote_sync::service;
use ddict::Descriptor;
use pyo3::exceptions::PyConnectionError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use runtime::ddictserve::{self as ops, ErrorKind};
use std::sync::Mutex;
use std::time::Duration;
use transport_tcp::TcpError;

/// How often a request looks for Ctrl-C.
const CHECK_EVERY: Duration = Duration::from_millis(100);

type Value<'py> = Option<(u8, Bound<'py, PyBytes>)>;

/// A DDict whose shards live on another node.
#[pyclass(module = "dragon._native", name = "RemoteDDictClient", frozen)]
pub(crate) struct RemoteDDictClient {
    desc: String,
    node: u32,
    shards: usize,
    durable: bool,
    pin: Mutex<Option<usize>>,
    /// This handle detached (later calls say so).
    detached: Mutex<bool>,
}

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

fn u64_le(f: &[u8]) -> PyResult<u64> {
    f.try_into().map(u64::from_le_bytes).map_err(|_| DDictError::new_err("malformed answer from the DDict's node"))
}

/// `(tag, data)` of a stored value.
fn split<'py>(py: Python<'py>, v: &[u8]) -> (u8, Bound<'py, PyBytes>) {
    match v.split_first() {
        Some((&tag, rest)) => (tag, PyBytes::new(py, rest)),
        None => (0, PyBytes::new(py, b"")),
    }
}

impl RemoteDDictClient {
    pub(crate) fn new(desc: &Descriptor, text: &str) -> RemoteDDictClient {
        RemoteDDictClient {
            desc: text.to_owned(),
            node: desc.node,
            shards: desc.shards.len(),
            durable: desc.flags & ddict::FLAG_DURABLE != 0,
            pin: Mutex::new(None),
            detached: Mutex::new(false),
        }
    }

    /// One request: the answer's fields.
    fn call(&self, py: Python<'_>, op: u8, args: &[&[u8]]) -> PyResult<Vec<Vec<u8>>> {
        if *self.detached.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(DDictError::new_err("this DDict handle was detached"));
        }
        let pin = *self.pin.lock().unwrap_or_else(|e| e.into_inner());
        let p = ops::encode(op, pin, &self.desc, args);
        let c = service()?;
        let node = self.node;
        let (r, int) =
            detached(py, |hook| c.call_with(node, runtime::proto::DDICT, &p, CHECK_EVERY, hook).map(|b| b.to_vec()));
        let answer = match r {
            Ok(b) => b,
            Err(TcpError::Interrupted) => return Err(int.into_err()),
            Err(TcpError::Remote { message, .. }) => return Err(DDictError::new_err(message)),
            Err(e) => return Err(PyConnectionError::new_err(format!("the DDict's node {node}: {e}"))),
        };
        let bad = || DDictError::new_err("malformed answer from the DDict's node");
        let (&status, rest) = answer.split_first().ok_or_else(bad)?;
        let fields: Vec<Vec<u8>> = ops::fields(rest).ok_or_else(bad)?.into_iter().map(<[u8]>::to_vec).collect();
        if status != ops::OK {
            let msg = fields.first().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
            return Err(failure(ErrorKind::from_status(status), msg));
        }
        Ok(fields)
    }

    fn flag(&self, py: Python<'_>, op: u8, args: &[&[u8]]) -> PyResult<bool> {
        Ok(self.call(py, op, args)?.first().is_some_and(|f| f.first() == Some(&1)))
    }

    fn number(&self, py: Python<'_>, op: u8, args: &[&[u8]]) -> PyResult<u64> {
        let f = self.call(py, op, args)?;
        u64_le(f.first().map(Vec::as_slice).unwrap_or_default())
    }

    fn value<'py>(&self, py: Python<'py>, op: u8, args: &[&[u8]]) -> PyResult<Value<'py>> {
        Ok(self.call(py, op, args)?.first().map(|v| split(py, v)))
    }

    fn shard_arg(shard: Option<usize>) -> Vec<u8> {
        shard.map(|s| (s as u64).to_le_bytes().to_vec()).unwrap_or_default()
    }
}

fn tagged(tag: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + data.len());
    v.push(tag);
    v.extend_from_slice(data);
    v
}

#[pymethods]
impl RemoteDDictClient {
    fn descriptor(&self) -> &str {
        &self.desc
    }

    fn shards(&self) -> usize {
        self.shards
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        self.pin.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| ddict::shard_of(key, self.shards))
    }

    fn durable(&self) -> bool {
        self.durable
    }

    /// The node the shards live on.
    #[getter]
    fn node(&self) -> u32 {
        self.node
    }

    fn put(&self, py: Python<'_>, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        self.call(py, ops::PUT, &[key, &tagged(tag, data)]).map(drop)
    }

    fn put_if_absent(&self, py: Python<'_>, key: &[u8], tag: u8, data: &[u8]) -> PyResult<bool> {
        self.flag(py, ops::PUT_IF_ABSENT, &[key, &tagged(tag, data)])
    }

    fn put_in(&self, py: Python<'_>, shard: usize, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        self.call(py, ops::PUT_IN, &[&Self::shard_arg(Some(shard)), key, &tagged(tag, data)]).map(drop)
    }

    fn delete_in(&self, py: Python<'_>, shard: usize, key: &[u8]) -> PyResult<bool> {
        self.flag(py, ops::DELETE_IN, &[&Self::shard_arg(Some(shard)), key])
    }

    fn checkpoint_state(&self, py: Python<'_>, shard: usize) -> PyResult<(u64, u64, u64)> {
        let f = self.call(py, ops::CKPT_STATE, &[&Self::shard_arg(Some(shard))])?;
        let at = |i: usize| u64_le(f.get(i).map(Vec::as_slice).unwrap_or_default());
        Ok((at(0)?, at(1)?, at(2)?))
    }

    fn checkpoint_advance(&self, py: Python<'_>, shard: usize, ckpt: u64) -> PyResult<u64> {
        self.number(py, ops::CKPT_ADVANCE, &[&Self::shard_arg(Some(shard)), &ckpt.to_le_bytes()])
    }

    fn put_all(&self, py: Python<'_>, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        self.call(py, ops::PUT_ALL, &[key, &tagged(tag, data)]).map(drop)
    }

    fn put_many(&self, py: Python<'_>, items: Vec<(Vec<u8>, u8, Vec<u8>)>) -> PyResult<()> {
        let values: Vec<Vec<u8>> = items.iter().map(|(_, t, d)| tagged(*t, d)).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(2 * items.len());
        for ((k, _, _), v) in items.iter().zip(&values) {
            args.push(k);
            args.push(v);
        }
        self.call(py, ops::PUT_MANY, &args).map(drop)
    }

    fn get<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Value<'py>> {
        self.value(py, ops::GET, &[key])
    }

    fn get_from<'py>(&self, py: Python<'py>, shard: usize, key: &[u8]) -> PyResult<Value<'py>> {
        self.value(py, ops::GET_FROM, &[&Self::shard_arg(Some(shard)), key])
    }

    fn contains(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        self.flag(py, ops::CONTAINS, &[key])
    }

    fn delete(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        self.flag(py, ops::DELETE, &[key])
    }

    fn pop<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Value<'py>> {
        self.value(py, ops::POP, &[key])
    }

    fn fetch_add(&self, py: Python<'_>, key: &[u8], tag: u8, delta: i64) -> PyResult<i64> {
        Ok(self.number(py, ops::FETCH_ADD, &[key, &[tag], &delta.to_le_bytes()])? as i64)
    }

    fn set_pin(&self, pin: Option<usize>) -> PyResult<()> {
        if let Some(p) = pin.filter(|p| *p >= self.shards) {
            return Err(DDictError::new_err(format!("not a DDict descriptor: no shard {p}")));
        }
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = pin;
        Ok(())
    }

    #[pyo3(signature = (shard=None))]
    fn len(&self, py: Python<'_>, shard: Option<usize>) -> PyResult<u64> {
        let s = Self::shard_arg(shard);
        let args: &[&[u8]] = if shard.is_some() { &[&s] } else { &[] };
        self.number(py, ops::LEN, args)
    }

    #[pyo3(signature = (shard=None))]
    fn keys<'py>(&self, py: Python<'py>, shard: Option<usize>) -> PyResult<Bound<'py, PyList>> {
        let s = Self::shard_arg(shard);
        let args: &[&[u8]] = if shard.is_some() { &[&s] } else { &[] };
        let f = self.call(py, ops::KEYS, args)?;
        PyList::new(py, f.iter().map(|k| PyBytes::new(py, k)))
    }

    #[pyo3(signature = (shard=None))]
    fn items<'py>(&self, py: Python<'py>, shard: Option<usize>) -> PyResult<Bound<'py, PyList>> {
        let s = Self::shard_arg(shard);
        let args: &[&[u8]] = if shard.is_some() { &[&s] } else { &[] };
        let f = self.call(py, ops::ITEMS, args)?;
        let out = f.chunks_exact(2).map(|kv| {
            let (t, d) = split(py, &kv[1]);
            (PyBytes::new(py, &kv[0]), t, d)
        });
        PyList::new(py, out)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, ops::CLEAR, &[]).map(drop)
    }

    fn freeze(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, ops::FREEZE, &[]).map(drop)
    }

    fn unfreeze(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, ops::UNFREEZE, &[]).map(drop)
    }

    fn is_frozen(&self, py: Python<'_>) -> PyResult<bool> {
        self.flag(py, ops::IS_FROZEN, &[])
    }

    fn check(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, ops::CHECK, &[]).map(drop)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let f = self.call(py, ops::STATS, &[])?;
        f.iter()
            .map(|s| {
                let v: Vec<u64> =
                    s.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                let d = PyDict::new(py);
                d.set_item("entries", at(0))?;
                d.set_item("used_bytes", at(1))?;
                d.set_item("heap_bytes", at(2))?;
                d.set_item("total_bytes", at(3))?;
                d.set_item("clients", at(4))?;
                d.set_item("frozen", at(5) != 0)?;
                Ok(d)
            })
            .collect()
    }

    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, ops::DESTROY, &[]).map(drop)
    }

    fn detach(&self) {
        *self.detached.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    fn __repr__(&self) -> String {
        format!("<dragon._native.RemoteDDictClient {} shards on node {}>", self.shards, self.node)
    }
}

/// A client of the DDict `descriptor` names: this node's shards mapped
/// directly, or (in a multi-node run) another node's through its service.
#[pyfunction]
pub(crate) fn ddict_client(py: Python<'_>, descriptor: &str) -> PyResult<Py<PyAny>> {
    let d = Descriptor::from_text(descriptor).map_err(crate::ddict::err)?;
    if d.node != transport_shm::this_node() {
        if std::env::var_os("DRAGON_SERVICE").is_none() {
            return Err(crate::errors::NotLocalError::new_err(format!(
                "the DDict's shards live on node {}, and this process is not part of a multi-node run",
                d.node
            )));
        }
        return Ok(Py::new(py, RemoteDDictClient::new(&d, descriptor))?.into_any());
    }
    Ok(Py::new(py, crate::ddict::DDictClient::new(py, descriptor)?)?.into_any())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RemoteDDictClient>()?;
    m.add_function(wrap_pyfunction!(ddict_client, m)?)?;
    Ok(())
}
