//! DDict bindings (`dragon.data.ddict`): a client of the `ddict` crate and
//! the manager entry point.
//!
//! Values cross the boundary as `(tag, bytes)`: the Python layer stores
//! `bytes` values as they are (tag 1) and pickles everything else (tag 0),
//! so a `bytes` value is copied once into shared memory on a put and once
//! out of it into a new `bytes` object on a get.
use ddict::manager::{self, Config};
use ddict::{Client, Descriptor, Error, Put, ShardRef};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use shm_primitives::ProcessId;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use transport_shm::segment::{nonce32, RunId};

pyo3::import_exception!(dragon.data.ddict, DDictError);
pyo3::import_exception!(dragon.data.ddict, DDictFullError);
pyo3::import_exception!(dragon.data.ddict, DDictManagerDied);
pyo3::import_exception!(dragon.data.ddict, DDictFrozenError);
pyo3::import_exception!(dragon.data.ddict, DDictDestroyedError);
pyo3::import_exception!(dragon.data.ddict, DDictPersistError);
pyo3::import_exception!(dragon.data.ddict, DDictPersistCorruptError);

/// `DDictPersistCorruptError`, with the damage as attributes.
fn corrupt_err(c: &ddict::persist::Corruption, message: String) -> PyErr {
    let e = DDictPersistCorruptError::new_err(message);
    Python::attach(|py| {
        let v = e.value(py);
        let set = || -> PyResult<()> {
            v.setattr("path", c.path.as_os_str().to_owned())?;
            v.setattr("offset", c.offset)?;
            v.setattr("what", c.what.clone())?;
            v.setattr("records_after", c.records_after)?;
            v.setattr("bytes_after", c.bytes_after)?;
            v.setattr("spans", c.spans)
        };
        match set() {
            Ok(()) => e.clone_ref(py),
            Err(other) => other,
        }
    })
}

pub(crate) fn err(e: Error) -> PyErr {
    let m = e.to_string();
    match e {
        Error::PersistCorrupt(c) => corrupt_err(&c, m),
        Error::Full { .. } => DDictFullError::new_err(m),
        Error::ManagerDied { .. } => DDictManagerDied::new_err(m),
        Error::Frozen => DDictFrozenError::new_err(m),
        Error::Destroyed => DDictDestroyedError::new_err(m),
        Error::Persist(_) => DDictPersistError::new_err(m),
        _ => DDictError::new_err(m),
    }
}

type Value<'py> = Option<(u8, Bound<'py, PyBytes>)>;

fn split<'py>(py: Python<'py>, v: &[u8]) -> (u8, Bound<'py, PyBytes>) {
    match v.split_first() {
        Some((&tag, rest)) => (tag, PyBytes::new(py, rest)),
        None => (0, PyBytes::new(py, b"")),
    }
}

/// One process's attachment to a DDict.
#[pyclass(module = "dragon._native", name = "DDictClient")]
pub(crate) struct DDictClient {
    inner: Mutex<Option<Client>>,
    desc: String,
    /// This handle destroyed the DDict (later calls say so).
    destroyed: AtomicBool,
}

impl DDictClient {
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> PyResult<T> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(c) => f(c).map_err(err),
            None if self.destroyed.load(Ordering::Relaxed) => Err(err(Error::Destroyed)),
            None => Err(DDictError::new_err("this DDict handle was detached")),
        }
    }
}

#[pymethods]
impl DDictClient {
    /// Attach to the DDict a descriptor names.
    #[new]
    pub(crate) fn new(py: Python<'_>, descriptor: &str) -> PyResult<Self> {
        let d = Descriptor::from_text(descriptor).map_err(err)?;
        let c = py.detach(|| Client::attach(&d)).map_err(err)?;
        Ok(DDictClient { inner: Mutex::new(Some(c)), desc: descriptor.to_owned(), destroyed: AtomicBool::new(false) })
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

    /// Whether writes go through the managers' logs.
    fn durable(&self) -> PyResult<bool> {
        self.with(|c| Ok(c.durable()))
    }

    /// Store `key` = tag + data.
    fn put(&self, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        self.with(|c| c.put_parts(key, &[&[tag], data], false).map(drop))
    }

    /// Store unless present; whether it was stored.
    fn put_if_absent(&self, key: &[u8], tag: u8, data: &[u8]) -> PyResult<bool> {
        self.with(|c| c.put_parts(key, &[&[tag], data], true).map(|p| p != Put::Exists))
    }

    /// Store `key` in shard `shard` (checkpoint versions live with their
    /// unversioned key's shard).
    fn put_in(&self, shard: usize, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        self.with(|c| c.put_parts_in(shard, key, &[&[tag], data], false).map(drop))
    }

    /// Remove `key` from shard `shard`; whether it was present.
    fn delete_in(&self, shard: usize, key: &[u8]) -> PyResult<bool> {
        self.with(|c| c.delete_in(shard, key))
    }

    /// `(newest, oldest, working_set)` checkpoints of shard `shard`.
    fn checkpoint_state(&self, shard: usize) -> PyResult<(u64, u64, u64)> {
        self.with(|c| c.checkpoint_state(shard))
    }

    /// Checkpoint `ckpt` is being written in shard `shard`: the oldest
    /// checkpoint the shard keeps afterwards.
    fn checkpoint_advance(&self, shard: usize, ckpt: u64) -> PyResult<u64> {
        self.with(|c| c.checkpoint_advance(shard, ckpt))
    }

    /// Store in every shard.
    fn put_all(&self, key: &[u8], tag: u8, data: &[u8]) -> PyResult<()> {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(tag);
        v.extend_from_slice(data);
        self.with(|c| c.put_all(key, &v))
    }

    /// Store many `(key, tag, data)` triples.
    fn put_many(&self, items: Vec<(Vec<u8>, u8, Vec<u8>)>) -> PyResult<()> {
        self.with(|c| {
            if c.durable() {
                // One request (and one log sync) per shard.
                let values: Vec<Vec<u8>> = items.iter().map(|(_, t, d)| [&[*t][..], d].concat()).collect();
                let pairs: Vec<(&[u8], &[u8])> =
                    items.iter().zip(&values).map(|((k, _, _), v)| (k.as_slice(), v.as_slice())).collect();
                return c.put_batch(&pairs);
            }
            for (k, t, d) in &items {
                c.put_parts(k, &[&[*t], d], false)?;
            }
            Ok(())
        })
    }

    /// `(tag, data)` of `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Value<'py>> {
        self.with(|c| c.get_with(key, |v| split(py, v)))
    }

    /// `(tag, data)` of `key` in shard `shard`, or None.
    fn get_from<'py>(&self, py: Python<'py>, shard: usize, key: &[u8]) -> PyResult<Value<'py>> {
        self.with(|c| {
            if shard >= c.shards() {
                return Err(Error::BadDescriptor(format!("no shard {shard}")));
            }
            c.get_from(shard, key, |v| split(py, v))
        })
    }

    /// Whether `key` is present.
    fn contains(&self, key: &[u8]) -> PyResult<bool> {
        self.with(|c| c.contains(key))
    }

    /// Remove `key`; whether it was present.
    fn delete(&self, key: &[u8]) -> PyResult<bool> {
        self.with(|c| c.delete(key))
    }

    /// Remove `key` and return its `(tag, data)`, or None.
    fn pop<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Value<'py>> {
        self.with(|c| c.take_with(key, |v| split(py, v)))
    }

    /// Add `delta` to the counter at `key` (stored as `tag` + 8 bytes;
    /// absent or another value: 0); the new value.
    fn fetch_add(&self, key: &[u8], tag: u8, delta: i64) -> PyResult<i64> {
        self.with(|c| c.fetch_add_tagged(key, &[tag], delta))
    }

    /// Route every keyed operation to shard `pin` (None: by hash).
    fn set_pin(&self, pin: Option<usize>) -> PyResult<()> {
        self.with(|c| c.set_pin(pin))
    }

    /// Number of entries (all shards, or shard `shard`).
    #[pyo3(signature = (shard=None))]
    fn len(&self, shard: Option<usize>) -> PyResult<u64> {
        self.with(|c| match shard {
            None => c.len(),
            Some(i) => c.shard_len(i),
        })
    }

    /// Keys (all shards, or shard `shard`).
    #[pyo3(signature = (shard=None))]
    fn keys<'py>(&self, py: Python<'py>, shard: Option<usize>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.with(|c| match shard {
            None => c.for_each(|k, _| out.push(PyBytes::new(py, k))),
            Some(i) => c.for_each_in(i, |k, _| out.push(PyBytes::new(py, k))),
        })?;
        PyList::new(py, out)
    }

    /// `(key, tag, data)` triples (all shards, or shard `shard`).
    #[pyo3(signature = (shard=None))]
    fn items<'py>(&self, py: Python<'py>, shard: Option<usize>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        let mut f = |k: &[u8], v: &[u8]| {
            let (t, d) = split(py, v);
            out.push((PyBytes::new(py, k), t, d));
        };
        self.with(|c| match shard {
            None => c.for_each(&mut f),
            Some(i) => c.for_each_in(i, &mut f),
        })?;
        PyList::new(py, out)
    }

    /// Remove every entry.
    fn clear(&self) -> PyResult<()> {
        self.with(|c| c.clear())
    }

    /// Make the DDict read-only.
    fn freeze(&self) -> PyResult<()> {
        self.with(|c| c.freeze())
    }

    /// Make the DDict writable.
    fn unfreeze(&self) -> PyResult<()> {
        self.with(|c| c.unfreeze())
    }

    /// Whether the DDict is frozen.
    fn is_frozen(&self) -> PyResult<bool> {
        self.with(|c| Ok(c.is_frozen()))
    }

    /// Raise if the DDict was destroyed or a manager died.
    fn check(&self) -> PyResult<()> {
        self.with(|c| c.check_now())
    }

    /// Per-shard counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let st = self.with(|c| Ok(c.stats()))?;
        st.into_iter()
            .map(|s| {
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
    fn destroy(&self) -> PyResult<()> {
        self.with(|c| {
            c.destroy();
            Ok(())
        })?;
        self.destroyed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Give this process's client slots back; the handle is unusable after.
    fn detach(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = g.take() {
            c.detach();
        }
    }
}

/// A new descriptor for a DDict of `shards` shards in the current run,
/// with fresh segment names and ids.
#[pyfunction]
fn ddict_descriptor(name: &str, shards: usize, durable: bool) -> PyResult<String> {
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
        })
        .collect();
    let flags = if durable { ddict::FLAG_DURABLE } else { 0 };
    Ok(Descriptor { name: name.to_owned(), flags, shards, node: transport_shm::this_node() }.to_text())
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
    let d = Descriptor::from_text(descriptor).map_err(err)?;
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
    r.map_err(err)
}

/// Repair the persistence files of DDict `name` in `persist_path`
/// (shards `0..shards`, or every shard found on disk): keep every valid
/// record, rewrite damaged files clean. One dict per file: `path`,
/// `version`, `records` (kept), `skipped` (list of `(offset, bytes, lost
/// records or None, what)`), `torn_tail` (same, or None), `rewritten`,
/// `damaged_copy` (the original kept beside it, or None).
#[pyfunction]
#[pyo3(signature = (persist_path, name, shards=None))]
fn ddict_repair<'py>(
    py: Python<'py>,
    persist_path: PathBuf,
    name: &str,
    shards: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let reports = py.detach(|| {
        let indexes = match shards {
            Some(n) => (0..n).collect(),
            None => ddict::persist::shards_on_disk(&persist_path, name)?,
        };
        let mut all = Vec::new();
        for i in indexes {
            all.extend(ddict::persist::repair(&persist_path, name, i)?);
        }
        Ok::<_, Error>(all)
    });
    let span = |s: &ddict::persist::Span| (s.offset, s.bytes, s.lost, s.what.clone());
    reports
        .map_err(err)?
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
    m.add_function(wrap_pyfunction!(ddict_key_hash, m)?)?;
    m.add_function(wrap_pyfunction!(ddict_self_identity, m)?)?;
    Ok(())
}
