//! DDict bindings (`dragon.data.ddict`): a client of the `ddict` crate and
//! the manager entry point.
//!
//! Values cross the boundary as `(tag, bytes)`: the Python layer stores
//! `bytes` values as they are (tag 1) and pickles everything else (tag 0),
//! so a `bytes` value is copied once into shared memory on a put and once
//! out of it into a new `bytes` object on a get.
use crate::errors::{ddict_err, DDictError, NotLocalError};
use crate::remote_ddict;
use ddict::manager::{self, Config};
use ddict::{Client, Descriptor, Error, Put, ShardRef};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use runtime::ddictserve as ops;
use shm_primitives::ProcessId;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use transport_shm::segment::{nonce32, RunId};

type Value<'py> = Option<(u8, Bound<'py, PyBytes>)>;

fn split<'py>(py: Python<'py>, v: &[u8]) -> (u8, Bound<'py, PyBytes>) {
    match v.split_first() {
        Some((&tag, rest)) => (tag, PyBytes::new(py, rest)),
        None => (0, PyBytes::new(py, b"")),
    }
}

/// One process's attachment to a DDict: the shards of this node mapped
/// directly; in a multi-node run, the shards of other nodes reached through
/// their nodes' services ([`crate::remote_ddict`]). Keyed operations go to
/// the key's shard wherever it is; whole-DDict ones combine every node's.
#[pyclass(module = "dragon._native", name = "DDictClient")]
pub(crate) struct DDictClient {
    inner: Mutex<Option<Client>>,
    desc: String,
    /// This handle destroyed the DDict (later calls say so).
    destroyed: AtomicBool,
    /// The other nodes that hold shards (none on one node).
    others: Vec<u32>,
}

/// Where an operation on shard `i` goes.
enum Route {
    Here,
    Node(u32, Option<usize>),
}

impl DDictClient {
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> PyResult<T> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(c) => f(c).map_err(ddict_err),
            None if self.destroyed.load(Ordering::Relaxed) => Err(ddict_err(Error::Destroyed)),
            None => Err(DDictError::new_err("this DDict handle was detached")),
        }
    }

    /// Where shard `i` (`None`: `key`'s shard) is served.
    fn route(&self, key: &[u8], shard: Option<usize>) -> PyResult<Route> {
        self.with(|c| {
            let i = match shard {
                Some(i) if i >= c.shards() => return Err(Error::BadDescriptor(format!("no shard {i}"))),
                Some(i) => i,
                None => c.shard_of(key),
            };
            Ok(if c.is_here(i) { Route::Here } else { Route::Node(c.node_of(i), c.pin()) })
        })
    }

    fn remote(&self, py: Python<'_>, node: u32, pin: Option<usize>, op: u8, args: &[&[u8]]) -> PyResult<Vec<Vec<u8>>> {
        // A detached or destroyed handle says so, as for local shards.
        self.with(|_| Ok(()))?;
        remote_ddict::call(py, node, pin, &self.desc, op, args)
    }

    /// A keyed operation: here, or on the key's node.
    fn keyed<T>(
        &self,
        py: Python<'_>,
        key: &[u8],
        local: impl FnOnce(&mut Client) -> Result<T, Error>,
        op: u8,
        args: &[&[u8]],
        answer: impl FnOnce(Vec<Vec<u8>>) -> PyResult<T>,
    ) -> PyResult<T> {
        self.on_shard(py, key, None, local, op, args, answer)
    }

    /// An operation on shard `shard` (`None`: `key`'s shard).
    #[allow(clippy::too_many_arguments)]
    fn on_shard<T>(
        &self,
        py: Python<'_>,
        key: &[u8],
        shard: Option<usize>,
        local: impl FnOnce(&mut Client) -> Result<T, Error>,
        op: u8,
        args: &[&[u8]],
        answer: impl FnOnce(Vec<Vec<u8>>) -> PyResult<T>,
    ) -> PyResult<T> {
        match self.route(key, shard)? {
            Route::Here => self.with(local),
            Route::Node(node, pin) => answer(self.remote(py, node, pin, op, args)?),
        }
    }

    /// A whole-DDict operation that answers nothing: this node's shards,
    /// then every other node's.
    fn everywhere(
        &self,
        py: Python<'_>,
        local: impl FnOnce(&mut Client) -> Result<(), Error>,
        op: u8,
        args: &[&[u8]],
    ) -> PyResult<()> {
        self.with(local)?;
        for &node in &self.others {
            self.remote(py, node, None, op, args)?;
        }
        Ok(())
    }
}

fn flag(f: &[Vec<u8>]) -> bool {
    f.first().is_some_and(|v| v.first() == Some(&1))
}

fn number(f: &[Vec<u8>]) -> PyResult<u64> {
    f.first()
        .and_then(|v| v.as_slice().try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| DDictError::new_err("malformed answer from a DDict's node"))
}

fn tagged(tag: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + data.len());
    v.push(tag);
    v.extend_from_slice(data);
    v
}

fn shard_arg(i: usize) -> [u8; 8] {
    (i as u64).to_le_bytes()
}

#[pymethods]
impl DDictClient {
    /// Attach to the DDict a descriptor names.
    #[new]
    pub(crate) fn new(py: Python<'_>, descriptor: &str) -> PyResult<Self> {
        let d = Descriptor::from_text(descriptor).map_err(ddict_err)?;
        let here = transport_shm::this_node();
        let mut others: Vec<u32> = d.shards.iter().map(|s| s.node).filter(|n| *n != here).collect();
        others.sort_unstable();
        others.dedup();
        if !others.is_empty() && std::env::var_os("DRAGON_SERVICE").is_none() {
            return Err(NotLocalError::new_err(format!(
                "the DDict has shards on node(s) {others:?}, and this process is not part of a multi-node run"
            )));
        }
        let c = py.detach(|| Client::attach_on(&d, here)).map_err(ddict_err)?;
        Ok(DDictClient {
            inner: Mutex::new(Some(c)),
            desc: descriptor.to_owned(),
            destroyed: AtomicBool::new(false),
            others,
        })
    }

    /// The descriptor text.
    fn descriptor(&self) -> &str {
        &self.desc
    }

    /// Number of shards.
    fn shards(&self) -> PyResult<usize> {
        self.with(|c| Ok(c.shards()))
    }

    /// The shard `key` goes to.
    fn shard_of(&self, key: &[u8]) -> PyResult<usize> {
        self.with(|c| Ok(c.shard_of(key)))
    }

    /// The node of each shard, in shard order.
    fn shard_nodes(&self) -> PyResult<Vec<u32>> {
        self.with(|c| Ok((0..c.shards()).map(|i| c.node_of(i)).collect()))
    }

    /// Indexes of the shards that live on this node.
    fn local_shards(&self) -> PyResult<Vec<usize>> {
        self.with(|c| Ok(c.local_shards()))
    }

    /// Whether writes go through the managers' logs.
    fn durable(&self) -> PyResult<bool> {
        self.with(|c| Ok(c.durable()))
    }

    /// Store `key` = `(tag, data)`.
    fn put(&self, py: Python<'_>, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        let parts: [&[u8]; 2] = [&[tag], data];
        self.keyed(py, key, |c| c.put_parts(key, &parts, false).map(drop), ops::PUT, &[key, &[tag], data], |_| Ok(()))
    }

    /// Store unless present; whether it was stored.
    fn put_if_absent(&self, py: Python<'_>, key: &[u8], tag: u8, data: &[u8]) -> PyResult<bool> {
        self.keyed(
            py,
            key,
            |c| c.put_parts(key, &[&[tag], data], true).map(|p| p != Put::Exists),
            ops::PUT_IF_ABSENT,
            &[key, &[tag], data],
            |f| Ok(flag(&f)),
        )
    }

    /// Store `key` in shard `shard` (checkpoint versions live with their
    /// unversioned key's shard).
    fn put_in(&self, py: Python<'_>, shard: usize, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        self.on_shard(
            py,
            key,
            Some(shard),
            |c| c.put_parts_in(shard, key, &[&[tag], data], false).map(drop),
            ops::PUT_IN,
            &[&shard_arg(shard), key, &[tag], data],
            |_| Ok(()),
        )
    }

    /// Remove `key` from shard `shard`; whether it was present.
    fn delete_in(&self, py: Python<'_>, shard: usize, key: &[u8]) -> PyResult<bool> {
        self.on_shard(
            py,
            key,
            Some(shard),
            |c| c.delete_in(shard, key),
            ops::DELETE_IN,
            &[&shard_arg(shard), key],
            |f| Ok(flag(&f)),
        )
    }

    /// `(newest, oldest, working_set)` checkpoints of shard `shard`.
    fn checkpoint_state(&self, py: Python<'_>, shard: usize) -> PyResult<(u64, u64, u64)> {
        self.on_shard(
            py,
            &[],
            Some(shard),
            |c| c.checkpoint_state(shard),
            ops::CKPT_STATE,
            &[&shard_arg(shard)],
            |f| {
                let at = |i: usize| number(f.get(i..).unwrap_or_default());
                Ok((at(0)?, at(1)?, at(2)?))
            },
        )
    }

    /// Checkpoint `ckpt` is being written in shard `shard`: the oldest
    /// checkpoint the shard keeps afterwards.
    fn checkpoint_advance(&self, py: Python<'_>, shard: usize, ckpt: u64) -> PyResult<u64> {
        self.on_shard(
            py,
            &[],
            Some(shard),
            |c| c.checkpoint_advance(shard, ckpt),
            ops::CKPT_ADVANCE,
            &[&shard_arg(shard), &ckpt.to_le_bytes()],
            |f| number(&f),
        )
    }

    /// Store in every shard.
    fn put_all(&self, py: Python<'_>, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        let v = tagged(tag, data);
        self.everywhere(py, |c| c.put_all(key, &v), ops::PUT_ALL, &[key, &v])
    }

    /// Store many `(key, tag, data)` triples.
    fn put_many(&self, py: Python<'_>, items: Vec<(Vec<u8>, u8, Vec<u8>)>) -> PyResult<()> {
        // By where each key's shard lives; other nodes get the triples as
        // they are (`ops::PUT_MANY`).
        let tags: Vec<[u8; 1]> = items.iter().map(|(_, t, _)| [*t]).collect();
        let mut here: Vec<(&[u8], &[u8; 1], &[u8])> = Vec::new();
        let mut by_node: std::collections::BTreeMap<(u32, Option<usize>), Vec<&[u8]>> = Default::default();
        for ((k, _, d), t) in items.iter().zip(&tags) {
            match self.route(k, None)? {
                Route::Here => here.push((k, t, d)),
                Route::Node(n, pin) => by_node.entry((n, pin)).or_default().extend([k.as_slice(), t, d.as_slice()]),
            }
        }
        self.with(|c| {
            if c.durable() {
                // One request (and one log sync) per shard: the values joined.
                let values: Vec<Vec<u8>> = here.iter().map(|(_, t, d)| [&t[..], d].concat()).collect();
                let pairs: Vec<(&[u8], &[u8])> = here.iter().zip(&values).map(|((k, _, _), v)| (*k, &v[..])).collect();
                return c.put_batch(&pairs);
            }
            for (k, t, d) in &here {
                c.put_parts(k, &[&t[..], d], false)?;
            }
            Ok(())
        })?;
        for ((node, pin), args) in by_node {
            self.remote(py, node, pin, ops::PUT_MANY, &args)?;
        }
        Ok(())
    }

    /// `(tag, data)` of `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Value<'py>> {
        self.keyed(
            py,
            key,
            |c| c.get_with(key, |v| split(py, v)),
            ops::GET,
            &[key],
            |f| Ok(f.first().map(|v| split(py, v))),
        )
    }

    /// `(tag, data)` of `key` in shard `shard`, or None.
    fn get_from<'py>(&self, py: Python<'py>, shard: usize, key: &[u8]) -> PyResult<Value<'py>> {
        self.on_shard(
            py,
            key,
            Some(shard),
            |c| c.get_from(shard, key, |v| split(py, v)),
            ops::GET_FROM,
            &[&shard_arg(shard), key],
            |f| Ok(f.first().map(|v| split(py, v))),
        )
    }

    /// Whether `key` is present.
    fn contains(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        self.keyed(py, key, |c| c.contains(key), ops::CONTAINS, &[key], |f| Ok(flag(&f)))
    }

    /// Remove `key`; whether it was present.
    fn delete(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        self.keyed(py, key, |c| c.delete(key), ops::DELETE, &[key], |f| Ok(flag(&f)))
    }

    /// Remove `key` and return its `(tag, data)`, or None.
    fn pop<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Value<'py>> {
        self.keyed(
            py,
            key,
            |c| c.take_with(key, |v| split(py, v)),
            ops::POP,
            &[key],
            |f| Ok(f.first().map(|v| split(py, v))),
        )
    }

    /// Add `delta` to the counter at `key` (stored as `tag` + 8 bytes;
    /// absent or another value: 0); the new value.
    fn fetch_add(&self, py: Python<'_>, key: &[u8], tag: u8, delta: i64) -> PyResult<i64> {
        self.keyed(
            py,
            key,
            |c| c.fetch_add_tagged(key, &[tag], delta),
            ops::FETCH_ADD,
            &[key, &[tag], &delta.to_le_bytes()],
            |f| number(&f).map(|v| v as i64),
        )
    }

    /// Route every keyed operation to shard `pin` (None: by hash).
    fn set_pin(&self, pin: Option<usize>) -> PyResult<()> {
        self.with(|c| c.set_pin(pin))
    }

    /// Number of entries (all shards, or shard `shard`).
    #[pyo3(signature = (shard=None))]
    fn len(&self, py: Python<'_>, shard: Option<usize>) -> PyResult<u64> {
        if let Some(i) = shard {
            return self.on_shard(py, &[], Some(i), |c| c.shard_len(i), ops::LEN, &[&shard_arg(i)], |f| number(&f));
        }
        let mut n = self.with(|c| c.len())?;
        for &node in &self.others {
            n += number(&self.remote(py, node, None, ops::LEN, &[])?)?;
        }
        Ok(n)
    }

    /// Keys (all shards, or shard `shard`).
    #[pyo3(signature = (shard=None))]
    fn keys<'py>(&self, py: Python<'py>, shard: Option<usize>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.walk(py, shard, false, &mut |k, _| out.push(PyBytes::new(py, k)))?;
        PyList::new(py, out)
    }

    /// Keys of the shards that live on this node.
    fn local_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.with(|c| c.for_each(|k, _| out.push(PyBytes::new(py, k))))?;
        PyList::new(py, out)
    }

    /// `(key, tag, data)` triples (all shards, or shard `shard`).
    #[pyo3(signature = (shard=None))]
    fn items<'py>(&self, py: Python<'py>, shard: Option<usize>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.walk(py, shard, true, &mut |k, v| {
            let (t, d) = split(py, v);
            out.push((PyBytes::new(py, k), t, d));
        })?;
        PyList::new(py, out)
    }

    /// Remove every entry.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.everywhere(py, |c| c.clear(), ops::CLEAR, &[])
    }

    /// Make the DDict read-only.
    fn freeze(&self, py: Python<'_>) -> PyResult<()> {
        self.everywhere(py, |c| c.freeze(), ops::FREEZE, &[])
    }

    /// Make the DDict writable.
    fn unfreeze(&self, py: Python<'_>) -> PyResult<()> {
        self.everywhere(py, |c| c.unfreeze(), ops::UNFREEZE, &[])
    }

    /// Whether the DDict is frozen.
    fn is_frozen(&self, py: Python<'_>) -> PyResult<bool> {
        let mut all = self.with(|c| Ok(c.is_frozen()))?;
        for &node in &self.others {
            all &= flag(&self.remote(py, node, None, ops::IS_FROZEN, &[])?);
        }
        Ok(all)
    }

    /// Raise if the DDict was destroyed or a manager died.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        self.everywhere(py, |c| c.check_now(), ops::CHECK, &[])
    }

    /// Per-shard counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut all = self.with(|c| Ok(c.stats_here()))?;
        for &node in &self.others {
            for f in self.remote(py, node, None, ops::STATS, &[])? {
                all.push(
                    ops::parse_stats_row(&f)
                        .ok_or_else(|| DDictError::new_err("malformed answer from a DDict's node"))?,
                );
            }
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter()
            .map(|(_, s)| {
                let d = PyDict::new(py);
                d.set_item("entries", s.entries)?;
                d.set_item("used_bytes", s.used_bytes)?;
                d.set_item("heap_bytes", s.heap_bytes)?;
                d.set_item("total_bytes", s.total_bytes)?;
                d.set_item("clients", s.clients)?;
                d.set_item("frozen", s.frozen)?;
                Ok(d)
            })
            .collect()
    }

    /// Ask the managers to stop and remove every shard.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        let mut first = None;
        // Every node is asked, even if one fails; a lost node's shards went
        // with it (the node cleans up what it held), and shards destroyed
        // already (by another process) are gone as asked: no error here.
        for &node in &self.others {
            match self.remote(py, node, None, ops::DESTROY, &[]) {
                Err(e)
                    if !e.is_instance_of::<pyo3::exceptions::PyConnectionError>(py)
                        && !e.is_instance_of::<crate::errors::DDictDestroyedError>(py) =>
                {
                    first.get_or_insert(e);
                }
                _ => {}
            }
        }
        self.with(|c| {
            c.destroy();
            Ok(())
        })?;
        self.destroyed.store(true, Ordering::Relaxed);
        first.map_or(Ok(()), Err)
    }

    /// Give this process's client slots back; the handle is unusable after.
    fn detach(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = g.take() {
            c.detach();
        }
    }
}

impl DDictClient {
    /// Call `f(key, value)` for every entry (of shard `shard`, if given);
    /// values of other nodes are fetched only when `values`.
    fn walk(
        &self,
        py: Python<'_>,
        shard: Option<usize>,
        values: bool,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> PyResult<()> {
        let op = if values { ops::ITEMS } else { ops::KEYS };
        let emit = |fields: Vec<Vec<u8>>, f: &mut dyn FnMut(&[u8], &[u8])| {
            if values {
                for kv in fields.chunks_exact(2) {
                    f(&kv[0], &kv[1]);
                }
            } else {
                for k in &fields {
                    f(k, &[]);
                }
            }
        };
        if let Some(i) = shard {
            return match self.route(&[], Some(i))? {
                Route::Here => self.with(|c| c.for_each_in(i, &mut *f)),
                Route::Node(node, _) => {
                    emit(self.remote(py, node, None, op, &[&shard_arg(i)])?, f);
                    Ok(())
                }
            };
        }
        self.with(|c| c.for_each(&mut *f))?;
        for &node in &self.others {
            emit(self.remote(py, node, None, op, &[])?, f);
        }
        Ok(())
    }
}

/// A new descriptor for a DDict of `shards` shards in the current run,
/// with fresh segment names and ids.
#[pyfunction]
#[pyo3(signature = (name, shards, durable, nodes=None))]
fn ddict_descriptor(name: &str, shards: usize, durable: bool, nodes: Option<Vec<u32>>) -> PyResult<String> {
    let nodes = nodes.unwrap_or_else(|| vec![transport_shm::this_node(); shards]);
    if nodes.len() != shards {
        return Err(PyValueError::new_err(format!("{} nodes for {shards} shards", nodes.len())));
    }
    if shards == 0
        || name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(PyValueError::new_err(format!(
            "invalid DDict name {name:?} or shard count {shards}: names are 1-64 letters, digits or '_'"
        )));
    }
    let run = RunId::current();
    let nonce = nonce32();
    let shards = (0..shards)
        .map(|i| ShardRef {
            segment: format!("{}dd-{name}-{nonce:08x}-{i}", run.prefix()),
            id: (u64::from(nonce32()) << 32) | u64::from(nonce32()),
            node: nodes[i],
        })
        .collect();
    let flags = if durable { ddict::FLAG_DURABLE } else { 0 };
    Ok(Descriptor { name: name.to_owned(), flags, shards }.to_text())
}

/// Serve shard `index` of the DDict `descriptor` names (the body of a
/// manager process): create the shard (`size` bytes), call `ready()`, and
/// run until the DDict is destroyed or the process `owner_pid`/`owner_start`
/// dies. Runs without the GIL.
#[pyfunction]
#[pyo3(signature = (descriptor, index, size, owner_pid, owner_start, ready, persist_path=None, restore=false, working_set=1))]
#[allow(clippy::too_many_arguments)]
fn ddict_serve(
    py: Python<'_>,
    descriptor: &str,
    index: usize,
    size: usize,
    owner_pid: u32,
    owner_start: u64,
    ready: Py<PyAny>,
    persist_path: Option<PathBuf>,
    restore: bool,
    working_set: u64,
) -> PyResult<()> {
    let d = Descriptor::from_text(descriptor).map_err(ddict_err)?;
    let shard = d.shards.get(index).ok_or_else(|| PyValueError::new_err(format!("no shard {index}")))?;
    let cfg = Config {
        segment: shard.segment.clone(),
        id: shard.id,
        len: size,
        index,
        name: d.name.clone(),
        owner: ProcessId { pid: owner_pid, start: owner_start },
        persist: persist_path,
        restore,
        compact_after: 64 << 20,
        working_set,
    };
    let mut ready_err = None;
    let r = py.detach(|| {
        manager::serve(&cfg, || {
            Python::attach(|py| {
                if let Err(e) = ready.call0(py) {
                    ready_err = Some(e);
                }
            })
        })
    });
    if let Some(e) = ready_err {
        return Err(e);
    }
    r.map_err(ddict_err)
}

/// Repair the persistence files of DDict `name` in `persist_path`
/// (shard `index`, or shards `0..shards`, or every shard found on disk;
/// a manager repairs its own shard on its node's disk): keep every valid
/// record, rewrite damaged files clean. One dict per file: `path`,
/// `version`, `records` (kept), `skipped` (list of `(offset, bytes, lost
/// records or None, what)`), `torn_tail` (same, or None), `rewritten`,
/// `damaged_copy` (the original kept beside it, or None).
#[pyfunction]
#[pyo3(signature = (persist_path, name, shards=None, index=None))]
fn ddict_repair<'py>(
    py: Python<'py>,
    persist_path: PathBuf,
    name: &str,
    shards: Option<usize>,
    index: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let reports = py.detach(|| {
        let indexes = match (index, shards) {
            (Some(i), _) => vec![i],
            (None, Some(n)) => (0..n).collect(),
            (None, None) => ddict::persist::shards_on_disk(&persist_path, name)?,
        };
        let mut all = Vec::new();
        for i in indexes {
            all.extend(ddict::persist::repair(&persist_path, name, i)?);
        }
        Ok::<_, Error>(all)
    });
    let span = |s: &ddict::persist::Span| (s.offset, s.bytes, s.lost, s.what.clone());
    reports
        .map_err(ddict_err)?
        .iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("path", r.path.as_os_str().to_owned())?;
            d.set_item("version", r.version)?;
            d.set_item("records", r.records)?;
            d.set_item("skipped", r.skipped.iter().map(span).collect::<Vec<_>>())?;
            d.set_item("torn_tail", r.torn_tail.as_ref().map(span))?;
            d.set_item("rewritten", r.rewritten)?;
            d.set_item("damaged_copy", r.damaged_copy.as_ref().map(|p| p.as_os_str().to_owned()))?;
            Ok(d)
        })
        .collect()
}

/// Shard indexes of DDict `name` that have a log or snapshot in
/// `persist_path` (none if the folder is not there).
#[pyfunction]
fn ddict_shards_on_disk(py: Python<'_>, persist_path: PathBuf, name: &str) -> PyResult<Vec<usize>> {
    if !persist_path.is_dir() {
        return Ok(Vec::new());
    }
    py.detach(|| ddict::persist::shards_on_disk(&persist_path, name)).map_err(ddict_err)
}

/// `(pid, start time)` of the calling process (what managers watch).
#[pyfunction]
fn ddict_self_identity() -> (u32, u64) {
    let me = ProcessId::current();
    (me.pid, me.start)
}

/// The stable hash of a key's bytes (FNV-1a 64), as used for routing.
#[pyfunction]
fn ddict_key_hash(key: &[u8]) -> u64 {
    ddict::key_hash(key)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DDictClient>()?;
    m.add("DDICT_CKPT_PREFIX", PyBytes::new(m.py(), manager::CKPT_PREFIX))?;
    m.add("DDICT_TOMBSTONE", manager::TOMBSTONE)?;
    m.add_function(wrap_pyfunction!(ddict_descriptor, m)?)?;
    m.add_function(wrap_pyfunction!(ddict_serve, m)?)?;
    m.add_function(wrap_pyfunction!(ddict_repair, m)?)?;
    m.add_function(wrap_pyfunction!(ddict_shards_on_disk, m)?)?;
    m.add_function(wrap_pyfunction!(ddict_key_hash, m)?)?;
    m.add_function(wrap_pyfunction!(ddict_self_identity, m)?)?;
    Ok(())
}
