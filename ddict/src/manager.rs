//! The manager of one shard: creates and owns the shard's segment, reaps
//! the slots of dead clients, and in durable mode applies every write
//! after logging it (group commit: every request pending when the manager
//! wakes is logged, made durable with one `fdatasync`, applied, then
//! answered).
//!
//! Requests travel through the client's slot in the shard (the key and
//! value in a block the client allocated, the operation code beside it,
//! a doorbell word the manager sleeps on and an acknowledgement word the
//! client sleeps on): one round trip, no copy of the value through a
//! channel, and a request whose client died is still well-formed.

use crate::persist::{self, Wal, REC_CLEAR, REC_DELETE, REC_PUT};
use crate::Error;
use ddict_shard::ShmShard;
use ddict_shard::{state, KvError, Put, Request, Slot, FLAG_MANAGER_REAPS};
use shm_primitives::ProcessId;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Request: store the value.
pub const OP_PUT: u64 = 1;
/// Request: store the value unless the key exists.
pub const OP_PUT_IF_ABSENT: u64 = 2;
/// Request: remove the key.
pub const OP_DELETE: u64 = 3;
/// Request: remove every key of the shard.
pub const OP_CLEAR: u64 = 4;
/// Request: add the value (little-endian i64) to the key's i64.
pub const OP_FETCH_ADD: u64 = 5;
/// Request: freeze the shard.
pub const OP_FREEZE: u64 = 6;
/// Request: unfreeze the shard.
pub const OP_UNFREEZE: u64 = 7;
/// Request: a client writes at checkpoint `value` (u64 LE): make it the
/// newest, retiring checkpoints that fall out of the working set.
pub const OP_CKPT_ADVANCE: u64 = 8;
/// Request: store every pair of the batch (one log sync for all).
pub const OP_PUT_BATCH: u64 = 9;

/// Prefix of versioned keys: `CKPT_PREFIX | checkpoint (u64 BE) | key`.
/// (Pickled keys start with the PROTO opcode 0x80, so they never collide.)
pub const CKPT_PREFIX: &[u8] = b"\x00\xffck";
/// First byte of a versioned value that records a deletion.
pub const TOMBSTONE: u8 = 3;
/// User word: newest checkpoint written in this shard.
pub const UW_NEWEST: usize = 1;
/// User word: oldest checkpoint kept in this shard (older ones were merged
/// into the unversioned entries).
pub const UW_OLDEST: usize = 2;
/// User word: the working set size (checkpoints kept).
pub const UW_WORKING_SET: usize = 3;

/// The versioned form of `key` at checkpoint `c`.
pub fn versioned_key(c: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(CKPT_PREFIX.len() + 8 + key.len());
    k.extend_from_slice(CKPT_PREFIX);
    k.extend_from_slice(&c.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// `(checkpoint, key)` of a versioned key.
pub fn split_versioned(k: &[u8]) -> Option<(u64, &[u8])> {
    let rest = k.strip_prefix(CKPT_PREFIX)?;
    if rest.len() < 8 {
        return None;
    }
    Some((u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")), &rest[8..]))
}

/// Results with this bit set are errors.
pub const ERR: u64 = 1 << 63;
/// The shard is full.
pub const ERR_FULL: u64 = ERR | 1;
/// The shard is frozen.
pub const ERR_FROZEN: u64 = ERR | 2;
/// The log could not be written.
pub const ERR_PERSIST: u64 = ERR | 3;
/// Unknown request.
pub const ERR_BAD_OP: u64 = ERR | 4;

/// How long a manager sleeps between looks at its clients and owner.
pub const TICK: Duration = Duration::from_millis(100);

/// What a manager serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Segment name of the shard.
    pub segment: String,
    /// Shard id.
    pub id: u64,
    /// Shard size in bytes (its share of `total_mem`).
    pub len: usize,
    /// Index of the shard in the DDict.
    pub index: usize,
    /// The DDict's name (names the persistence files).
    pub name: String,
    /// The process whose death ends the manager (the DDict's creator).
    pub owner: ProcessId,
    /// Directory of the write-ahead logs: durable mode.
    pub persist: Option<PathBuf>,
    /// Load the shard from its snapshot and log first.
    pub restore: bool,
    /// Compact the log once it exceeds this many bytes (and twice the live
    /// data).
    pub compact_after: u64,
    /// Checkpoints kept before the oldest is merged into the unversioned
    /// entries (at least 1).
    pub working_set: u64,
}

/// Create the shard and serve it until the DDict is destroyed or its owner
/// dies. `ready` is called once the shard is open for clients.
pub fn serve(cfg: &Config, ready: impl FnOnce()) -> Result<(), Error> {
    // A durable shard's files are locked before its memory exists: a
    // manager refused them (another serves them) leaves nothing behind,
    // whenever it is stopped.
    let durable = match &cfg.persist {
        Some(dir) => Some((dir.as_path(), persist::lock_shard(dir, &cfg.name, cfg.index)?)),
        None => None,
    };
    let shard = ShmShard::create(&cfg.segment, cfg.len, cfg.id).map_err(|e| Error::Create(e.to_string()))?;
    let r = run(cfg, &shard, durable, ready);
    if shard.state() == state::OPEN {
        shard.set_state(state::DESTROYED);
    }
    let _ = shard.unlink();
    r
}

/// `durable`: the log's directory and the shard's lock, in durable mode.
fn run(cfg: &Config, shard: &ShmShard, durable: Option<(&Path, File)>, ready: impl FnOnce()) -> Result<(), Error> {
    let slot = shard.claim_slot().map_err(|e| Error::Attach(e.to_string()))?;
    let mut wal = None;
    if let Some((dir, lock)) = durable {
        shard.set_flags(FLAG_MANAGER_REAPS);
        let w = Wal::open_locked(lock, dir, &cfg.name, cfg.index, cfg.restore, |op, k, v| {
            match op {
                REC_PUT => shard.put(&slot, k, v).map(drop),
                REC_DELETE => shard.delete(&slot, k).map(drop),
                REC_CLEAR => shard.clear(&slot).map(drop),
                _ => return Err(format!("unknown record {op} in the log")),
            }
            .map_err(|e| format!("restoring shard {}: {e}", cfg.index))
        })?;
        wal = Some(w);
    }
    // Checkpoint bookkeeping (recomputed from the keys after a restore).
    let (mut lo, mut hi) = (u64::MAX, 0);
    shard.for_each(|k, _| {
        if let Some((c, _)) = split_versioned(k) {
            lo = lo.min(c);
            hi = hi.max(c);
        }
    });
    shard.set_user_word(UW_NEWEST, hi);
    shard.set_user_word(UW_OLDEST, if hi == 0 { 1 } else { lo });
    shard.set_user_word(UW_WORKING_SET, cfg.working_set.max(1));
    shard.set_manager_current();
    ready();
    let mut reqs = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    loop {
        let seen = shard.doorbell();
        if shard.state() != state::OPEN {
            break;
        }
        shard.requests(&mut reqs);
        if !reqs.is_empty() {
            if let Some(w) = wal.as_mut() {
                serve_batch(shard, &slot, w, &reqs);
            } else {
                for r in &reqs {
                    if r.op == OP_CKPT_ADVANCE {
                        let c = request_u64(shard, r);
                        let oldest = advance(shard, &slot, None, c);
                        shard.reply(r, 0, oldest);
                    } else {
                        shard.reply(r, ERR_BAD_OP, 0);
                    }
                }
            }
            continue;
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            shard.reap_dead();
            if !cfg.owner.is_alive() {
                break;
            }
            if let Some(w) = wal.as_mut() {
                let live = shard.stats().used_bytes;
                if w.bytes > cfg.compact_after.max(2 * live) {
                    w.compact(|put| shard.for_each(|k, v| put(k, v)))?;
                }
            }
        }
        shard.wait_doorbell(seen, TICK);
    }
    if let Some(w) = wal.as_mut() {
        w.sync()?;
    }
    shard.release_slot(slot);
    Ok(())
}

enum Act {
    Put,
    Batch,
    Add(i64),
    Delete,
    Clear,
}

/// Log, sync, apply and answer `group`.
fn commit(shard: &ShmShard, slot: &Slot, wal: &mut Wal, group: &mut Vec<(Request, Act)>) {
    if group.is_empty() {
        return;
    }
    if wal.sync().is_err() {
        for (r, _) in group.drain(..) {
            shard.reply(&r, ERR_PERSIST, 0);
        }
        return;
    }
    for (r, a) in group.drain(..) {
        let (res, value) = match a {
            Act::Put => (shard.apply_put(&r).map(|p| p as u64), 0),
            Act::Batch => (shard.apply_batch(&r), 0),
            Act::Add(v) => (shard.apply_put(&r).map(|p| p as u64), v as u64),
            Act::Delete => (shard.apply_delete(&r).map(u64::from), 0),
            Act::Clear => (shard.clear(slot), 0),
        };
        shard.reply(&r, res.unwrap_or_else(err_code), value);
    }
}

fn err_code(e: KvError) -> u64 {
    match e {
        KvError::Full { .. } => ERR_FULL,
        KvError::Frozen => ERR_FROZEN,
        _ => ERR_BAD_OP,
    }
}

fn serve_batch(shard: &ShmShard, slot: &Slot, wal: &mut Wal, reqs: &[Request]) {
    let mut group = Vec::new();
    for r in reqs {
        // Only the manager freezes a durable shard, between groups, so a
        // logged write is never refused when applied.
        let frozen = shard.is_frozen();
        let writes = matches!(r.op, OP_PUT | OP_PUT_IF_ABSENT | OP_DELETE | OP_CLEAR | OP_FETCH_ADD | OP_PUT_BATCH);
        if frozen && writes {
            shard.reply(r, ERR_FROZEN, 0);
            continue;
        }
        match r.op {
            OP_PUT => {
                shard.request_data(r, |k, v| wal.append(REC_PUT, k, v));
                group.push((*r, Act::Put));
            }
            OP_PUT_BATCH => {
                shard.batch_data(r, |k, v| wal.append(REC_PUT, k, v));
                group.push((*r, Act::Batch));
            }
            OP_DELETE => {
                shard.request_data(r, |k, _| wal.append(REC_DELETE, k, b""));
                group.push((*r, Act::Delete));
            }
            OP_CLEAR => {
                wal.append(REC_CLEAR, b"", b"");
                group.push((*r, Act::Clear));
            }
            OP_PUT_IF_ABSENT | OP_FETCH_ADD | OP_FREEZE | OP_UNFREEZE | OP_CKPT_ADVANCE => {
                // These read the shard: apply what is pending first.
                commit(shard, slot, wal, &mut group);
                match r.op {
                    OP_PUT_IF_ABSENT => {
                        if shard.request_key_present(r) {
                            shard.reply(r, Put::Exists as u64, 0);
                        } else {
                            shard.request_data(r, |k, v| wal.append(REC_PUT, k, v));
                            group.push((*r, Act::Put));
                        }
                    }
                    OP_FETCH_ADD => {
                        let (key, mut req) = shard.request_data(r, |k, v| (k.to_vec(), v.to_vec()));
                        if req.len() < 8 {
                            shard.reply(r, ERR_BAD_OP, 0);
                            continue;
                        }
                        let plen = req.len() - 8;
                        let delta = i64::from_le_bytes(req[plen..].try_into().expect("8 bytes"));
                        let old =
                            shard.get_with(slot, &key, |b| crate::counter_value(Some(b), &req[..plen])).unwrap_or(0);
                        let new = old.wrapping_add(delta);
                        req[plen..].copy_from_slice(&new.to_le_bytes());
                        if shard.rewrite_request_value(r, &req).is_err() {
                            shard.reply(r, ERR_BAD_OP, 0);
                            continue;
                        }
                        wal.append(REC_PUT, &key, &req);
                        group.push((*r, Act::Add(new)));
                    }
                    OP_FREEZE => {
                        shard.freeze();
                        shard.reply(r, 0, 0);
                    }
                    OP_CKPT_ADVANCE => {
                        let c = request_u64(shard, r);
                        let oldest = advance(shard, slot, Some(&mut *wal), c);
                        shard.reply(r, 0, oldest);
                    }
                    _ => {
                        shard.unfreeze();
                        shard.reply(r, 0, 0);
                    }
                }
            }
            _ => shard.reply(r, ERR_BAD_OP, 0),
        }
    }
    commit(shard, slot, wal, &mut group);
}

fn request_u64(shard: &ShmShard, r: &Request) -> u64 {
    shard.request_data(r, |_, v| <[u8; 8]>::try_from(v).map_or(0, u64::from_le_bytes))
}

/// Make checkpoint `c` the newest of the shard and merge the checkpoints
/// that fall out of the working set into the unversioned entries, oldest
/// first (logged first in durable mode). Returns the oldest checkpoint kept.
fn advance(shard: &ShmShard, slot: &Slot, mut wal: Option<&mut Wal>, c: u64) -> u64 {
    let newest = shard.user_word(UW_NEWEST).max(c);
    shard.set_user_word(UW_NEWEST, newest);
    let w = shard.user_word(UW_WORKING_SET).max(1);
    let mut oldest = shard.user_word(UW_OLDEST).max(1);
    while newest + 1 > oldest + w {
        let mut moves: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = Vec::new();
        shard.for_each(|k, v| {
            if let Some((v_c, base)) = split_versioned(k) {
                if v_c == oldest {
                    moves.push((k.to_vec(), base.to_vec(), v.to_vec()));
                }
            }
        });
        if let Some(w) = wal.as_mut() {
            for (vk, base, v) in &moves {
                if v.first() == Some(&TOMBSTONE) {
                    w.append(REC_DELETE, base, b"");
                } else {
                    w.append(REC_PUT, base, v);
                }
                w.append(REC_DELETE, vk, b"");
            }
            // A failed sync leaves the versions in place (still readable).
            if w.sync().is_err() {
                return oldest;
            }
        }
        for (vk, base, v) in &moves {
            // The unversioned entry takes the newest retired value first,
            // then the version goes: a reader sees one or the other.
            let r = if v.first() == Some(&TOMBSTONE) {
                shard.delete(slot, base).map(drop)
            } else {
                shard.put(slot, base, v).map(drop)
            };
            if r.is_ok() {
                let _ = shard.delete(slot, vk);
            }
        }
        oldest += 1;
        shard.set_user_word(UW_OLDEST, oldest);
    }
    oldest
}

/// Send one request to the shard's manager and wait for its answer,
/// checking every tick that the manager lives.
/// Returns the result code and the result value.
pub fn request(shard: &ShmShard, slot: &Slot, op: u64, key: &[u8], value: &[u8]) -> Result<(u64, u64), Error> {
    let seq = shard.post_request(slot, op, key, value).map_err(post_err)?;
    wait(shard, slot, op, seq)
}

/// Send a batch of puts to the shard's manager and wait for its answer.
pub fn request_batch(shard: &ShmShard, slot: &Slot, pairs: &[(&[u8], &[u8])]) -> Result<(u64, u64), Error> {
    let seq = shard.post_batch(slot, OP_PUT_BATCH, pairs).map_err(post_err)?;
    wait(shard, slot, OP_PUT_BATCH, seq)
}

fn post_err(e: KvError) -> Error {
    match e {
        KvError::Full { .. } => Error::Full { shard: 0, detail: e.to_string() },
        e => Error::Corrupt(e.to_string()),
    }
}

fn wait(shard: &ShmShard, slot: &Slot, op: u64, seq: u32) -> Result<(u64, u64), Error> {
    loop {
        if let Some((r, value)) = shard.wait_reply(slot, seq, TICK) {
            return match r {
                ERR_FULL => Err(Error::Full { shard: 0, detail: "no room for the new value".into() }),
                ERR_FROZEN => Err(Error::Frozen),
                ERR_PERSIST => Err(Error::Persist("the manager could not write its log".into())),
                r if r & ERR != 0 => Err(Error::Corrupt(format!("manager refused request {op}"))),
                r => Ok((r, value)),
            };
        }
        if shard.state() != state::OPEN {
            return Err(Error::Destroyed);
        }
        if !shard.manager_alive() {
            return Err(Error::ManagerDied { shard: 0 });
        }
    }
}
