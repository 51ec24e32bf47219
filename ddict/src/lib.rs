#![forbid(unsafe_code)]
//! DDict: a sharded, memory-bounded, persistent distributed dictionary.
//!
//! A DDict is a set of shards, one per manager. Each shard is a
//! [`ddict_shard::Shard`] in its own shared-memory segment of exactly
//! `total_mem / managers` bytes, created and owned by its manager process
//! ([`manager::serve`]). Clients on the node map every shard and operate on
//! it directly (a lock, a copy, an unlock: no round trip); a key goes to
//! shard `key_hash(key) % shards`, where [`key_hash`] is FNV-1a 64 of the
//! key's bytes (stable across processes, runs and machines).
//!
//! A DDict is named by its [`Descriptor`] (a short text: pass it to any
//! process of the node and [`Client::attach`] there). Values are bytes;
//! [`Typed`] wraps a client with a [`Codec`] per key and value type.
//!
//! See `docs/ddict.md`.

pub mod codec;
pub mod manager;
pub mod persist;

pub use codec::{BytesCodec, Codec, DecodeError, I64Codec, StrCodec, Typed};
pub use ddict_shard::{key_hash, Put, ShardStats, Update};

use ddict_shard::KvError;
use ddict_shard::{KvShmError, ShmShard};
use shm_primitives::ProcessId;
use std::fmt;
use std::time::{Duration, Instant};

/// How often a client checks that the managers live and the DDict was not
/// destroyed (it reads `/proc`, so never per operation).
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(200);

/// Flag bit of [`Descriptor::flags`]: writes go through the managers'
/// write-ahead logs.
pub const FLAG_DURABLE: u64 = 1;

/// Why a DDict operation failed. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The key's shard has no room for the entry.
    Full {
        /// The shard.
        shard: usize,
        /// What the shard said.
        detail: String,
    },
    /// The DDict is frozen (read-only).
    Frozen,
    /// A manager process died: its shard's memory may still be mapped, but
    /// nobody reaps, persists or serves it any more.
    ManagerDied {
        /// The shard whose manager died.
        shard: usize,
    },
    /// The DDict was destroyed.
    Destroyed,
    /// Too many processes use one shard at once.
    TooManyClients(String),
    /// The descriptor does not parse.
    BadDescriptor(String),
    /// A shard could not be opened.
    Attach(String),
    /// A shard could not be created (not enough shared memory, say).
    Create(String),
    /// The shard's memory is corrupt.
    Corrupt(String),
    /// A durable write could not be logged (disk error), or a log could not
    /// be read back.
    Persist(String),
    /// A log or snapshot is damaged (not just a torn tail): restoring
    /// refused it and changed nothing on disk; [`persist::repair`] keeps
    /// every valid record.
    PersistCorrupt(Box<persist::Corruption>),
    /// The operation is not available in this mode.
    Unsupported(&'static str),
    /// The shard lives on another node of a multi-node run: this client
    /// does not map it (its node's service does).
    Elsewhere {
        /// The shard.
        shard: usize,
        /// Its node.
        node: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Full { shard, detail } => write!(f, "DDict shard {shard} is full: {detail}"),
            Error::Frozen => f.write_str("the DDict is frozen (read-only); call unfreeze() to write"),
            Error::ManagerDied { shard } => write!(
                f,
                "the manager process of DDict shard {shard} died; the DDict cannot be used any more \
                 (destroy it, or restore it from its persist_path)"
            ),
            Error::Destroyed => f.write_str("the DDict was destroyed"),
            Error::TooManyClients(m) => write!(f, "too many processes use the DDict: {m}"),
            Error::BadDescriptor(m) => write!(f, "not a DDict descriptor: {m}"),
            Error::Attach(m) => write!(f, "cannot attach to the DDict: {m}"),
            Error::Create(m) => write!(f, "cannot create a DDict shard: {m}"),
            Error::Corrupt(m) => write!(f, "DDict memory is corrupt: {m}"),
            Error::Persist(m) => write!(f, "DDict persistence failed: {m}"),
            Error::PersistCorrupt(c) => write!(f, "cannot restore the DDict: {c}"),
            Error::Unsupported(m) => f.write_str(m),
            Error::Elsewhere { shard, node } => write!(f, "DDict shard {shard} lives on node {node}, not this one"),
        }
    }
}

impl std::error::Error for Error {}

fn kv_err(shard: usize, e: KvError) -> Error {
    match e {
        KvError::Full { .. } => Error::Full { shard, detail: e.to_string() },
        KvError::Frozen => Error::Frozen,
        KvError::TooManyClients(_) => Error::TooManyClients(e.to_string()),
        KvError::Corrupt(m) => Error::Corrupt(m),
        other => Error::Attach(other.to_string()),
    }
}

fn shm_err(e: KvShmError) -> Error {
    match e {
        KvShmError::Kv(k) => kv_err(0, k),
        other => Error::Attach(other.to_string()),
    }
}

/// The counter in `cur` if it is `prefix` + 8 bytes, else 0.
pub fn counter_value(cur: Option<&[u8]>, prefix: &[u8]) -> i64 {
    match cur {
        Some(b) if b.len() == prefix.len() + 8 && b.starts_with(prefix) => {
            i64::from_le_bytes(b[prefix.len()..].try_into().expect("8 bytes"))
        }
        _ => 0,
    }
}

/// One shard of a DDict: its segment, id and node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRef {
    /// Segment name.
    pub segment: String,
    /// Shard id (checked on attach).
    pub id: u64,
    /// The node of a multi-node run whose shared memory holds the shard
    /// (0 on one node).
    pub node: u32,
}

/// Everything a process needs to attach to a DDict. Text form:
/// `ddict1;<name>;<flags>;<segment>:<id hex>[@<node>],...` (no node: 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The DDict's name.
    pub name: String,
    /// Flag bits ([`FLAG_DURABLE`]).
    pub flags: u64,
    /// The shards, in routing order.
    pub shards: Vec<ShardRef>,
}

impl Descriptor {
    /// The text form.
    pub fn to_text(&self) -> String {
        let shards: Vec<String> = self
            .shards
            .iter()
            .map(|s| match s.node {
                0 => format!("{}:{:x}", s.segment, s.id),
                n => format!("{}:{:x}@{n}", s.segment, s.id),
            })
            .collect();
        format!("ddict1;{};{};{}", self.name, self.flags, shards.join(","))
    }

    /// Parse the text form.
    pub fn from_text(s: &str) -> Result<Descriptor, Error> {
        let bad = || Error::BadDescriptor(format!("{s:?}"));
        let mut it = s.split(';');
        if it.next() != Some("ddict1") {
            return Err(bad());
        }
        let name = it.next().ok_or_else(bad)?.to_owned();
        let flags = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let shards = it
            .next()
            .ok_or_else(bad)?
            .split(',')
            .map(|p| {
                let (p, node) = match p.rsplit_once('@') {
                    Some((p, n)) => (p, n.parse().map_err(|_| bad())?),
                    None => (p, 0),
                };
                let (seg, id) = p.rsplit_once(':').ok_or_else(bad)?;
                Ok(ShardRef { segment: seg.to_owned(), id: u64::from_str_radix(id, 16).map_err(|_| bad())?, node })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if it.next().is_some() || shards.is_empty() || name.contains(';') {
            return Err(bad());
        }
        Ok(Descriptor { name, flags, shards })
    }
}

/// One process's attachment to a DDict: every shard of its node mapped, a
/// client slot claimed in each on first use. On one node that is every
/// shard; in a multi-node run the shards of other nodes are not mapped
/// (operations on them fail with [`Error::Elsewhere`], and the whole-DDict
/// operations — `len`, `for_each`, `clear`, `freeze`, `stats`, ... — cover
/// this node's shards: a caller combines the nodes' answers).
pub struct Client {
    desc: Descriptor,
    shards: Vec<Option<ShmShard>>,
    slots: Vec<Option<ddict_shard::Slot>>,
    pid: u32,
    next_check: Instant,
    pin: Option<usize>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("name", &self.desc.name).field("shards", &self.shards.len()).finish()
    }
}

/// The shard a key goes to among `n`.
pub fn shard_of(key: &[u8], n: usize) -> usize {
    (key_hash(key) % n as u64) as usize
}

impl Client {
    /// Attach to the DDict `desc` names (its managers must have created
    /// their shards): the shards of this node ([`transport_shm::this_node`]).
    pub fn attach(desc: &Descriptor) -> Result<Client, Error> {
        Self::attach_on(desc, transport_shm::this_node())
    }

    /// Attach to the shards of `desc` that live on node `node` (this
    /// process's node: their memory is mapped).
    pub fn attach_on(desc: &Descriptor, node: u32) -> Result<Client, Error> {
        let shards = desc
            .shards
            .iter()
            .map(|s| (s.node == node).then(|| ShmShard::open(&s.segment, s.id)).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                KvShmError::Segment(transport_shm::SegmentError::NotFound(_)) => Error::Destroyed,
                e => shm_err(e),
            })?;
        let n = shards.len();
        let mut c = Client {
            desc: desc.clone(),
            shards,
            slots: (0..n).map(|_| None).collect(),
            pid: ProcessId::current().pid,
            next_check: Instant::now(),
            pin: None,
        };
        c.health()?;
        Ok(c)
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    /// Number of shards (on every node).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Whether shard `i` is mapped here (lives on this client's node).
    pub fn is_here(&self, i: usize) -> bool {
        self.shards.get(i).is_some_and(Option::is_some)
    }

    /// The node shard `i` lives on.
    pub fn node_of(&self, i: usize) -> u32 {
        self.desc.shards.get(i).map_or(0, |s| s.node)
    }

    /// The shards mapped here, with their indexes.
    fn here(&self) -> impl Iterator<Item = (usize, &ShmShard)> {
        self.shards.iter().enumerate().filter_map(|(i, s)| Some((i, s.as_ref()?)))
    }

    /// Shard `i`, if it is here.
    fn shard(&self, i: usize) -> Result<&ShmShard, Error> {
        self.check_index(i)?;
        self.shards[i].as_ref().ok_or(Error::Elsewhere { shard: i, node: self.node_of(i) })
    }

    /// Whether writes go through the managers' logs.
    pub fn durable(&self) -> bool {
        self.desc.flags & FLAG_DURABLE != 0
    }

    /// Check that the DDict was not destroyed (every time: a load of each
    /// of this node's shards' state word) and (at most every
    /// [`HEALTH_INTERVAL`]) that its managers live.
    fn health(&mut self) -> Result<(), Error> {
        if self.destroyed() {
            return Err(Error::Destroyed);
        }
        let now = Instant::now();
        if now < self.next_check {
            return Ok(());
        }
        self.next_check = now + HEALTH_INTERVAL;
        self.check_now()
    }

    /// Whether the DDict was destroyed (a load of each of this node's
    /// shards' state word).
    pub fn destroyed(&self) -> bool {
        self.here().any(|(_, sh)| sh.state() != ddict_shard::state::OPEN)
    }

    /// Check now that the DDict was not destroyed and every manager lives.
    pub fn check_now(&self) -> Result<(), Error> {
        if self.destroyed() {
            return Err(Error::Destroyed);
        }
        for (i, sh) in self.here() {
            if !sh.manager_alive() {
                return Err(Error::ManagerDied { shard: i });
            }
        }
        Ok(())
    }

    /// The slot of shard `i`, claimed on first use (and again in a forked
    /// child, whose inherited slots are its parent's).
    fn slot(&mut self, i: usize) -> Result<&ddict_shard::Slot, Error> {
        let pid = ProcessId::current().pid;
        if pid != self.pid {
            // Forked: the slots are the parent's; leave them to it.
            for s in &mut self.slots {
                s.take();
            }
            self.pid = pid;
            self.next_check = Instant::now();
        }
        self.health()?;
        if self.slots[i].is_none() {
            let claimed = self.shard(i)?.claim_slot().map_err(|e| kv_err(i, e))?;
            self.slots[i] = Some(claimed);
        }
        Ok(self.slots[i].as_ref().expect("claimed above"))
    }

    /// The shard `key` goes to (the pinned one, if any).
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.pin.unwrap_or_else(|| shard_of(key, self.shards.len()))
    }

    /// The shard every keyed operation goes to, if pinned.
    pub fn pin(&self) -> Option<usize> {
        self.pin
    }

    /// Send every keyed operation to shard `pin` (a per-manager view), or
    /// route by hash again (`None`).
    pub fn set_pin(&mut self, pin: Option<usize>) -> Result<(), Error> {
        if pin.is_some_and(|p| p >= self.shards.len()) {
            return Err(Error::BadDescriptor(format!("no shard {}", pin.unwrap_or(0))));
        }
        self.pin = pin;
        Ok(())
    }

    fn op<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&ShmShard, &ddict_shard::Slot) -> Result<T, KvError>,
    ) -> Result<T, Error> {
        self.slot(i)?;
        let slot = self.slots[i].as_ref().expect("claimed");
        f(self.shard(i)?, slot).map_err(|e| kv_err(i, e))
    }

    /// Store `key` = the concatenation of `parts`. With `if_absent`, an
    /// existing key is left as it is.
    pub fn put_parts(&mut self, key: &[u8], parts: &[&[u8]], if_absent: bool) -> Result<Put, Error> {
        let i = self.shard_of(key);
        if self.durable() {
            return self.durable_put(i, key, parts, if_absent);
        }
        self.op(i, |sh, s| sh.put_parts(s, key, parts, if_absent))
    }

    /// [`Client::put_parts`] into shard `i` (whatever the key's hash).
    pub fn put_parts_in(&mut self, i: usize, key: &[u8], parts: &[&[u8]], if_absent: bool) -> Result<Put, Error> {
        self.check_index(i)?;
        if self.durable() {
            return self.durable_put(i, key, parts, if_absent);
        }
        self.op(i, |sh, s| sh.put_parts(s, key, parts, if_absent))
    }

    /// Remove `key` from shard `i`; whether it was present.
    pub fn delete_in(&mut self, i: usize, key: &[u8]) -> Result<bool, Error> {
        self.check_index(i)?;
        if self.durable() {
            return self.durable_delete(i, key);
        }
        self.op(i, |sh, s| sh.delete(s, key))
    }

    fn check_index(&self, i: usize) -> Result<(), Error> {
        if i >= self.shards.len() {
            return Err(Error::BadDescriptor(format!("no shard {i} (the DDict has {})", self.shards.len())));
        }
        Ok(())
    }

    /// Checkpoint state of shard `i`: (newest checkpoint written, oldest
    /// kept, working set size).
    pub fn checkpoint_state(&mut self, i: usize) -> Result<(u64, u64, u64), Error> {
        self.health()?;
        let sh = self.shard(i)?;
        Ok((sh.user_word(manager::UW_NEWEST), sh.user_word(manager::UW_OLDEST), sh.user_word(manager::UW_WORKING_SET)))
    }

    /// Tell shard `i`'s manager that checkpoint `c` is being written;
    /// returns the oldest checkpoint it keeps afterwards.
    pub fn checkpoint_advance(&mut self, i: usize, c: u64) -> Result<u64, Error> {
        self.check_index(i)?;
        Ok(self.request(i, manager::OP_CKPT_ADVANCE, &[], &c.to_le_bytes())?.1)
    }

    /// Store `key` = `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Put, Error> {
        self.put_parts(key, &[value], false)
    }

    /// Store every pair (one call; in durable mode one logged batch per
    /// shard, made durable with one sync).
    ///
    /// In durable mode each shard's pairs travel as one request, are
    /// logged with one sync and applied in order; a shard's batch that
    /// does not fit fails whole (other shards' batches may have been
    /// stored).
    pub fn put_batch(&mut self, pairs: &[(&[u8], &[u8])]) -> Result<(), Error> {
        if !self.durable() {
            for (k, v) in pairs {
                self.put(k, v)?;
            }
            return Ok(());
        }
        let mut by_shard: Vec<Vec<(&[u8], &[u8])>> = vec![Vec::new(); self.shards.len()];
        for &(k, v) in pairs {
            by_shard[self.shard_of(k)].push((k, v));
        }
        for (i, batch) in by_shard.iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            self.slot(i)?;
            let slot = self.slots[i].as_ref().expect("claimed");
            manager::request_batch(self.shard(i)?, slot, batch).map_err(|e| match e {
                Error::Full { detail, .. } => Error::Full { shard: i, detail },
                Error::ManagerDied { .. } => Error::ManagerDied { shard: i },
                e => e,
            })?;
        }
        Ok(())
    }

    /// Run `f` on `key`'s value, if present.
    pub fn get_with<T>(&mut self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, Error> {
        let i = self.shard_of(key);
        self.op(i, |sh, s| Ok(sh.get_with(s, key, f)))
    }

    /// A copy of `key`'s value.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.get_with(key, |v| v.to_vec())
    }

    /// Run `f` on `key`'s value in shard `i` (for values stored in every
    /// shard by [`Client::put_all`]).
    pub fn get_from<T>(&mut self, i: usize, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, Error> {
        self.check_index(i)?;
        self.op(i, |sh, s| Ok(sh.get_with(s, key, f)))
    }

    /// Store `key` = `value` in every shard (read back with
    /// [`Client::get_from`] on a shard near the reader).
    pub fn put_all(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        for i in self.local_shards() {
            if self.durable() {
                self.durable_put(i, key, &[value], false)?;
            } else {
                self.op(i, |sh, s| sh.put(s, key, value))?;
            }
        }
        Ok(())
    }

    /// Whether `key` is present.
    pub fn contains(&mut self, key: &[u8]) -> Result<bool, Error> {
        Ok(self.get_with(key, |_| ())?.is_some())
    }

    /// Remove `key`, running `f` on its value first.
    pub fn take_with<T>(&mut self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, Error> {
        let i = self.shard_of(key);
        if self.durable() {
            let v = self.get_with(key, |v| v.to_vec())?;
            return match v {
                None => Ok(None),
                Some(v) => {
                    if self.durable_delete(i, key)? {
                        Ok(Some(f(&v)))
                    } else {
                        Ok(None)
                    }
                }
            };
        }
        self.op(i, |sh, s| sh.take_with(s, key, f))
    }

    /// Remove `key`; whether it was present.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, Error> {
        let i = self.shard_of(key);
        if self.durable() {
            return self.durable_delete(i, key);
        }
        self.op(i, |sh, s| sh.delete(s, key))
    }

    /// Read-modify-write `key` atomically (see [`ddict_shard::Shard::update`]).
    pub fn update<T>(&mut self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> (Update, T)) -> Result<T, Error> {
        let i = self.shard_of(key);
        if self.durable() {
            return Err(Error::Unsupported(
                "general read-modify-write is not available in durable mode (fetch_add and put-if-absent are)",
            ));
        }
        self.op(i, |sh, s| sh.update(s, key, f))
    }

    /// Add `delta` to the little-endian `i64` at `key` (absent, or not
    /// such a value: 0) and return the new value.
    pub fn fetch_add(&mut self, key: &[u8], delta: i64) -> Result<i64, Error> {
        self.fetch_add_tagged(key, &[], delta)
    }

    /// [`Client::fetch_add`] on values laid out as `prefix` followed by the
    /// little-endian `i64` (a value of another layout counts as 0).
    pub fn fetch_add_tagged(&mut self, key: &[u8], prefix: &[u8], delta: i64) -> Result<i64, Error> {
        let mut req = prefix.to_vec();
        req.extend_from_slice(&delta.to_le_bytes());
        if self.durable() {
            let i = self.shard_of(key);
            return Ok(self.request(i, manager::OP_FETCH_ADD, key, &req)?.1 as i64);
        }
        self.update(key, |cur| {
            let new = counter_value(cur, prefix).wrapping_add(delta);
            req[prefix.len()..].copy_from_slice(&new.to_le_bytes());
            (Update::Set(req), new)
        })
    }

    /// Number of entries (in this node's shards).
    pub fn len(&mut self) -> Result<u64, Error> {
        self.health()?;
        Ok(self.here().map(|(_, s)| s.len()).sum())
    }

    /// Whether the DDict is empty.
    pub fn is_empty(&mut self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Number of entries in shard `i`.
    pub fn shard_len(&mut self, i: usize) -> Result<u64, Error> {
        self.health()?;
        Ok(self.shard(i)?.len())
    }

    /// Call `f(key, value)` for every entry of shard `i`.
    pub fn for_each_in(&mut self, i: usize, f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        self.health()?;
        self.shard(i)?.for_each(f);
        Ok(())
    }

    /// Call `f(key, value)` for every entry (of this node's shards).
    pub fn for_each(&mut self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        self.health()?;
        for (_, s) in self.here() {
            s.for_each(&mut f);
        }
        Ok(())
    }

    /// Indexes of the shards mapped here.
    pub fn local_shards(&self) -> Vec<usize> {
        self.here().map(|(i, _)| i).collect()
    }

    /// Every key.
    pub fn keys(&mut self) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        self.for_each(|k, _| out.push(k.to_vec()))?;
        Ok(out)
    }

    /// Remove every entry (of this node's shards).
    pub fn clear(&mut self) -> Result<(), Error> {
        for i in self.local_shards() {
            if self.durable() {
                self.request(i, manager::OP_CLEAR, &[], &[])?;
            } else {
                self.op(i, |sh, s| sh.clear(s))?;
            }
        }
        Ok(())
    }

    /// Make every shard (of this node) read-only (gets then take no locks).
    pub fn freeze(&mut self) -> Result<(), Error> {
        self.health()?;
        for i in self.local_shards() {
            if self.durable() {
                self.request(i, manager::OP_FREEZE, &[], &[])?;
            } else {
                self.shard(i)?.freeze();
            }
        }
        Ok(())
    }

    /// Make every shard (of this node) writable again.
    pub fn unfreeze(&mut self) -> Result<(), Error> {
        self.health()?;
        for i in self.local_shards() {
            if self.durable() {
                self.request(i, manager::OP_UNFREEZE, &[], &[])?;
            } else {
                self.shard(i)?.unfreeze();
            }
        }
        Ok(())
    }

    /// Whether the DDict (this node's shards) is frozen.
    pub fn is_frozen(&self) -> bool {
        self.here().all(|(_, s)| s.is_frozen())
    }

    /// Counters of this node's shards, with their indexes.
    pub fn stats_here(&self) -> Vec<(usize, ShardStats)> {
        self.here().map(|(i, s)| (i, s.stats())).collect()
    }

    /// Counters of every shard (all must be on this node).
    pub fn stats(&self) -> Vec<ShardStats> {
        self.here().map(|(_, s)| s.stats()).collect()
    }

    /// Ask every manager (of this node's shards) to stop and remove its
    /// shard. On one node the DDict is gone for every process once this
    /// returns.
    pub fn destroy(&mut self) {
        for (_, sh) in self.here() {
            sh.set_state(ddict_shard::state::SHUTDOWN);
            let _ = sh.unlink();
        }
    }

    /// Give the client slots back (done on drop too).
    pub fn detach(&mut self) {
        if ProcessId::current().pid != self.pid {
            return;
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let (Some(s), Some(sh)) = (s.take(), &self.shards[i]) {
                sh.release_slot(s);
            }
        }
    }

    // ---- durable mode: writes through the managers ----------------------------

    fn request(&mut self, i: usize, op: u64, key: &[u8], value: &[u8]) -> Result<(u64, u64), Error> {
        self.slot(i)?;
        let slot = self.slots[i].as_ref().expect("claimed");
        manager::request(self.shard(i)?, slot, op, key, value).map_err(|e| match e {
            Error::Full { detail, .. } => Error::Full { shard: i, detail },
            Error::ManagerDied { .. } => Error::ManagerDied { shard: i },
            e => e,
        })
    }

    fn durable_put(&mut self, i: usize, key: &[u8], parts: &[&[u8]], if_absent: bool) -> Result<Put, Error> {
        let v = parts.concat();
        let op = if if_absent { manager::OP_PUT_IF_ABSENT } else { manager::OP_PUT };
        Ok(match self.request(i, op, key, &v)?.0 {
            0 => Put::Inserted,
            1 => Put::Replaced,
            _ => Put::Exists,
        })
    }

    fn durable_delete(&mut self, i: usize, key: &[u8]) -> Result<bool, Error> {
        Ok(self.request(i, manager::OP_DELETE, key, &[])?.0 == 1)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.detach();
    }
}
