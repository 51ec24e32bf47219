//! DDicts of this node used from other nodes.
//!
//! A DDict's shards live in the shared memory of their nodes (its
//! descriptor says which); processes of a shard's node map it and operate
//! on it directly. A process of another node sends each operation on this
//! node's shards here (a DDICT request, carried by its node's service),
//! and this node's service performs it with a client of its own (one per
//! DDict, made on first use, mapping this node's shards), on a thread of
//! the waiting pool so that a durable write's log sync never holds up the
//! service. Keyed operations go to the key's shard (which the requester
//! found to be here); whole-DDict operations (`LEN`, `KEYS`, `CLEAR`, ...)
//! cover this node's shards, and the requester combines the nodes'
//! answers.
//!
//! Request: `op u8, pin i64 (-1: none), descriptor length u16,
//! descriptor, fields`; fields (in the request and in an answer) are
//! `count u32` then `length u32, bytes` each. An answer is `status u8`
//! ([`OK`] or the [`ErrorKind`] of a failure, whose one field is the
//! message) and the operation's fields.

use bytes::{BufMut, Bytes, BytesMut};
use ddict::{Client, Descriptor, Error, Put, ShardStats};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use transport_abi::abi::{DRAGON_EIO, DRAGON_EPROTO};
use transport_tcp::serve::{Post, Reply};

/// Store `[key, value parts...]` (the value is their concatenation: a
/// requester sends a tag and its data as they are, without joining them).
pub const PUT: u8 = 1;
/// Store `[key, value parts...]` unless present: `[stored u8]`.
pub const PUT_IF_ABSENT: u8 = 2;
/// Store `[shard u64, key, value parts...]` in that shard.
pub const PUT_IN: u8 = 3;
/// Remove `[shard u64, key]` from that shard: `[was there u8]`.
pub const DELETE_IN: u8 = 4;
/// `[shard u64]`: `[newest u64, oldest u64, working set u64]`.
pub const CKPT_STATE: u8 = 5;
/// `[shard u64, checkpoint u64]`: `[oldest kept u64]`.
pub const CKPT_ADVANCE: u8 = 6;
/// Store `[key, value]` in every shard.
pub const PUT_ALL: u8 = 7;
/// Store `[key, tag, data, key, tag, data, ...]` (each value in two parts).
pub const PUT_MANY: u8 = 8;
/// `[key]`: `[]` if absent, else `[value]`.
pub const GET: u8 = 9;
/// `[shard u64, key]`: as [`GET`], from that shard.
pub const GET_FROM: u8 = 10;
/// `[key]`: `[present u8]`.
pub const CONTAINS: u8 = 11;
/// `[key]`: `[was there u8]`.
pub const DELETE: u8 = 12;
/// `[key]`: as [`GET`], and the key is removed.
pub const POP: u8 = 13;
/// `[key, prefix, delta i64]`: `[new value i64]`.
pub const FETCH_ADD: u8 = 14;
/// `[]` or `[shard u64]`: `[entries u64]`.
pub const LEN: u8 = 15;
/// `[]` or `[shard u64]`: `[key, key, ...]`.
pub const KEYS: u8 = 16;
/// `[]` or `[shard u64]`: `[key, value, key, value, ...]`.
pub const ITEMS: u8 = 17;
/// Remove every entry.
pub const CLEAR: u8 = 18;
/// Make it read-only.
pub const FREEZE: u8 = 19;
/// Make it writable.
pub const UNFREEZE: u8 = 20;
/// `[frozen u8]`.
pub const IS_FROZEN: u8 = 21;
/// Fails if the DDict was destroyed or a manager died.
pub const CHECK: u8 = 22;
/// Per shard of this node: `[7 u64: index, entries, used, heap, total
/// bytes, clients, frozen]`.
pub const STATS: u8 = 23;
/// Stop the managers and remove every shard.
pub const DESTROY: u8 = 24;

/// Status of a successful answer.
pub const OK: u8 = 0;

/// Why an operation failed (the answer's status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// The key's shard is full.
    Full = 1,
    /// The DDict is frozen.
    Frozen = 2,
    /// A manager died.
    ManagerDied = 3,
    /// The DDict was destroyed.
    Destroyed = 4,
    /// A durable write could not be logged.
    Persist = 5,
    /// Anything else (a bad request, a bad descriptor, ...).
    Other = 6,
}

impl ErrorKind {
    /// The kind of an answer's status byte.
    pub fn from_status(s: u8) -> ErrorKind {
        match s {
            1 => ErrorKind::Full,
            2 => ErrorKind::Frozen,
            3 => ErrorKind::ManagerDied,
            4 => ErrorKind::Destroyed,
            5 => ErrorKind::Persist,
            _ => ErrorKind::Other,
        }
    }

    fn of(e: &Error) -> ErrorKind {
        match e {
            Error::Full { .. } => ErrorKind::Full,
            Error::Frozen => ErrorKind::Frozen,
            Error::ManagerDied { .. } => ErrorKind::ManagerDied,
            Error::Destroyed => ErrorKind::Destroyed,
            Error::Persist(_) | Error::PersistCorrupt(_) => ErrorKind::Persist,
            _ => ErrorKind::Other,
        }
    }
}

/// Encode fields.
pub fn put_fields(out: &mut impl BufMut, fields: &[&[u8]]) {
    out.put_u32_le(fields.len() as u32);
    for f in fields {
        out.put_u32_le(f.len() as u32);
        out.put_slice(f);
    }
}

/// Decode fields (`None`: malformed).
pub fn fields(mut p: &[u8]) -> Option<Vec<&[u8]>> {
    let n = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
    p = &p[4..];
    // Each field takes at least its length word: a count beyond that is forged.
    if n > p.len() / 4 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
        out.push(p.get(4..4 + len)?);
        p = &p[4 + len..];
    }
    p.is_empty().then_some(out)
}

/// Encode a request.
pub fn encode(op: u8, pin: Option<usize>, descriptor: &str, args: &[&[u8]]) -> Vec<u8> {
    // Written once into memory of its final size (a 1 MiB value is copied once).
    let mut p = Vec::with_capacity(15 + descriptor.len() + args.iter().map(|a| a.len() + 4).sum::<usize>());
    p.put_u8(op);
    p.put_i64_le(pin.map_or(-1, |p| p as i64));
    p.put_u16_le(descriptor.len() as u16);
    p.put_slice(descriptor.as_bytes());
    put_fields(&mut p, args);
    p
}

/// [`encode`] of a request whose last argument, of `last_len` bytes, the
/// caller appends (a block message standing for it: `proto::BLOCK_TAIL`).
pub fn encode_but_last(op: u8, pin: Option<usize>, descriptor: &str, args: &[&[u8]], last_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + descriptor.len() + args.iter().map(|a| a.len() + 4).sum::<usize>());
    p.put_u8(op);
    p.put_i64_le(pin.map_or(-1, |p| p as i64));
    p.put_u16_le(descriptor.len() as u16);
    p.put_slice(descriptor.as_bytes());
    p.put_u32_le(args.len() as u32 + 1);
    for a in args {
        p.put_u32_le(a.len() as u32);
        p.put_slice(a);
    }
    p.put_u32_le(last_len as u32);
    p
}

/// A decoded request.
#[derive(Debug)]
struct Request<'a> {
    op: u8,
    pin: Option<usize>,
    descriptor: &'a str,
    args: Vec<&'a [u8]>,
}

fn parse(p: &[u8]) -> Option<Request<'_>> {
    let op = *p.first()?;
    let pin = i64::from_le_bytes(p.get(1..9)?.try_into().ok()?);
    let n = usize::from(u16::from_le_bytes(p.get(9..11)?.try_into().ok()?));
    let descriptor = std::str::from_utf8(p.get(11..11 + n)?).ok()?;
    let args = fields(&p[11 + n..])?;
    let pin = if pin < 0 { None } else { Some(usize::try_from(pin).ok()?) };
    Some(Request { op, pin, descriptor, args })
}

fn u64_of(f: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(f.try_into().ok()?))
}

/// What an operation answers, or why it failed.
enum Outcome {
    Fields(Vec<Vec<u8>>),
    Failed(ErrorKind, String),
}

fn answer(id: u64, o: Outcome) -> Reply {
    let mut p = BytesMut::new();
    match o {
        Outcome::Fields(f) => {
            p.put_u8(OK);
            put_fields(&mut p, &f.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }
        Outcome::Failed(kind, msg) => {
            p.put_u8(kind as u8);
            put_fields(&mut p, &[msg.as_bytes()]);
        }
    }
    Reply::ok(id, p.freeze())
}

fn flag(b: bool) -> Vec<Vec<u8>> {
    vec![vec![u8::from(b)]]
}

fn num(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Perform one request with `c`.
fn perform(c: &mut Client, r: &Request<'_>) -> Result<Vec<Vec<u8>>, Error> {
    let bad = || Error::Unsupported("malformed DDict request");
    let a = &r.args;
    let shard = |i: usize| -> Result<usize, Error> {
        let s = a.get(i).and_then(|f| u64_of(f)).ok_or_else(bad)? as usize;
        if s >= c.shards() {
            return Err(Error::BadDescriptor(format!("no shard {s}")));
        }
        Ok(s)
    };
    let arg = |i: usize| a.get(i).copied().ok_or_else(bad);
    let opt_shard = || if a.is_empty() { Ok(None) } else { shard(0).map(Some) };
    Ok(match (r.op, a.len()) {
        (PUT, 1..) => c.put_parts(arg(0)?, &a[1..], false).map(|_| Vec::new())?,
        (PUT_IF_ABSENT, 1..) => flag(c.put_parts(arg(0)?, &a[1..], true)? != Put::Exists),
        (PUT_IN, 2..) => c.put_parts_in(shard(0)?, arg(1)?, &a[2..], false).map(|_| Vec::new())?,
        (DELETE_IN, 2) => flag(c.delete_in(shard(0)?, arg(1)?)?),
        (CKPT_STATE, 1) => {
            let (a, b, w) = c.checkpoint_state(shard(0)?)?;
            vec![num(a), num(b), num(w)]
        }
        (CKPT_ADVANCE, 2) => vec![num(c.checkpoint_advance(shard(0)?, u64_of(arg(1)?).ok_or_else(bad)?)?)],
        (PUT_ALL, 2) => c.put_all(arg(0)?, arg(1)?).map(|()| Vec::new())?,
        (PUT_MANY, n) if n % 3 == 0 => {
            if c.durable() {
                // One logged batch per shard: the values joined.
                let values: Vec<Vec<u8>> = a.chunks_exact(3).map(|t| [t[1], t[2]].concat()).collect();
                let pairs: Vec<(&[u8], &[u8])> =
                    a.chunks_exact(3).zip(&values).map(|(t, v)| (t[0], v.as_slice())).collect();
                c.put_batch(&pairs)?;
            } else {
                for t in a.chunks_exact(3) {
                    c.put_parts(t[0], &t[1..], false)?;
                }
            }
            Vec::new()
        }
        (GET, 1) => c.get(arg(0)?)?.into_iter().collect(),
        (GET_FROM, 2) => c.get_from(shard(0)?, arg(1)?, <[u8]>::to_vec)?.into_iter().collect(),
        (CONTAINS, 1) => flag(c.contains(arg(0)?)?),
        (DELETE, 1) => flag(c.delete(arg(0)?)?),
        (POP, 1) => c.take_with(arg(0)?, <[u8]>::to_vec)?.into_iter().collect(),
        (FETCH_ADD, 3) => {
            let delta = u64_of(arg(2)?).ok_or_else(bad)? as i64;
            vec![c.fetch_add_tagged(arg(0)?, arg(1)?, delta)?.to_le_bytes().to_vec()]
        }
        (LEN, 0 | 1) => vec![num(match opt_shard()? {
            None => c.len()?,
            Some(i) => c.shard_len(i)?,
        })],
        (KEYS | ITEMS, 0 | 1) => {
            let items = r.op == ITEMS;
            let mut out = Vec::new();
            let mut f = |k: &[u8], v: &[u8]| {
                out.push(k.to_vec());
                if items {
                    out.push(v.to_vec());
                }
            };
            match opt_shard()? {
                None => c.for_each(&mut f)?,
                Some(i) => c.for_each_in(i, &mut f)?,
            }
            out
        }
        (CLEAR, 0) => c.clear().map(|()| Vec::new())?,
        (FREEZE, 0) => c.freeze().map(|()| Vec::new())?,
        (UNFREEZE, 0) => c.unfreeze().map(|()| Vec::new())?,
        (IS_FROZEN, 0) => flag(c.is_frozen()),
        (CHECK, 0) => c.check_now().map(|()| Vec::new())?,
        (STATS, 0) => c.stats_here().iter().map(|(i, s)| stats_row(*i, s)).collect(),
        (DESTROY, 0) => {
            c.destroy();
            Vec::new()
        }
        _ => return Err(bad()),
    })
}

/// A [`STATS`] answer's field for shard `i`.
pub fn stats_row(i: usize, s: &ShardStats) -> Vec<u8> {
    [i as u64, s.entries, s.used_bytes, s.heap_bytes, s.total_bytes, s.clients, u64::from(s.frozen)]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// The shard and its counters in a [`STATS`] answer's field.
pub fn parse_stats_row(f: &[u8]) -> Option<(usize, ShardStats)> {
    let v: Vec<u64> = f.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    let [i, entries, used_bytes, heap_bytes, total_bytes, clients, frozen] = v[..] else { return None };
    let s = ShardStats { entries, used_bytes, heap_bytes, total_bytes, clients, frozen: frozen != 0 };
    Some((usize::try_from(i).ok()?, s))
}

/// This node's DDicts as other nodes use them: a client per DDict.
pub struct DDictServer {
    node: u32,
    clients: Arc<Mutex<HashMap<String, Arc<Mutex<Client>>>>>,
}

impl std::fmt::Debug for DDictServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.clients.lock().unwrap_or_else(|e| e.into_inner()).len();
        f.debug_struct("DDictServer").field("clients", &n).finish()
    }
}

impl DDictServer {
    /// The server of node `node`'s shards.
    pub fn new(node: u32) -> DDictServer {
        DDictServer { node, clients: Arc::default() }
    }

    /// Let go of the DDicts destroyed since they were last used here (by
    /// a process of their own node, say, whose destroy this service never
    /// sees): their shards' memory is freed once nobody maps it. A client
    /// in use is looked at next time.
    pub fn sweep(&mut self) {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, c| match c.try_lock() {
            Ok(c) => !c.destroyed(),
            Err(_) => true,
        });
    }

    /// Perform a DDICT request: at once (`Some`) if it is a short operation
    /// on a DDict already in use here whose client is free (a read, or a
    /// write of a DDict without a log to sync), else on a thread of the
    /// waiting pool, which posts the answer (`None`).
    pub fn handle(&mut self, id: u64, payload: Bytes, post: &Post) -> Option<Reply> {
        if let Some(r) = parse(&payload) {
            let client = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(r.descriptor).cloned();
            if let Some(c) = client.filter(|_| SHORT.contains(&r.op)) {
                if let Ok(g) = c.try_lock() {
                    if !WRITES.contains(&r.op) || !g.durable() {
                        return Some(answer(id, run_on(&self.clients, g, &r)));
                    }
                }
            }
        }
        let (post, clients, node) = (post.clone(), self.clients.clone(), self.node);
        let work = move || {
            post(match parse(&payload) {
                Some(r) => answer(id, run(&clients, node, &r)),
                None => Reply::error(id, DRAGON_EPROTO, "malformed DDict request"),
            })
        };
        match transport_tcp::waiters::spawn(work) {
            Ok(()) => None,
            Err(e) => Some(Reply::error(id, DRAGON_EIO, &format!("cannot start a thread for the DDict: {e}"))),
        }
    }
}

/// Operations short enough to perform on the service's own thread (one
/// key, or one number), when nothing has to reach the disk.
const SHORT: [u8; 12] =
    [PUT, PUT_IF_ABSENT, PUT_IN, DELETE_IN, GET, GET_FROM, CONTAINS, DELETE, POP, FETCH_ADD, LEN, IS_FROZEN];
/// Of those, the ones a durable DDict logs (and syncs).
const WRITES: [u8; 7] = [PUT, PUT_IF_ABSENT, PUT_IN, DELETE_IN, DELETE, POP, FETCH_ADD];

type Clients = Mutex<HashMap<String, Arc<Mutex<Client>>>>;

fn run(clients: &Clients, node: u32, r: &Request<'_>) -> Outcome {
    let failed = |e: Error| Outcome::Failed(ErrorKind::of(&e), e.to_string());
    let client = {
        let mut map = clients.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(r.descriptor) {
            Some(c) => c.clone(),
            None => {
                let made = Descriptor::from_text(r.descriptor).and_then(|d| Client::attach_on(&d, node));
                match made {
                    Ok(c) => {
                        let c = Arc::new(Mutex::new(c));
                        map.insert(r.descriptor.to_owned(), c.clone());
                        c
                    }
                    Err(e) => return failed(e),
                }
            }
        }
    };
    let c = client.lock().unwrap_or_else(|e| e.into_inner());
    run_on(clients, c, r)
}

/// Perform `r` with client `c` (of the DDict `r` names).
fn run_on(clients: &Clients, mut c: std::sync::MutexGuard<'_, Client>, r: &Request<'_>) -> Outcome {
    let out = c.set_pin(r.pin).and_then(|()| perform(&mut c, r));
    let _ = c.set_pin(None);
    if r.op == DESTROY || matches!(out, Err(Error::Destroyed)) {
        // Let go of the shards' memory (a DDict destroyed is never used
        // again: a later request attaches anew, and is told so).
        drop(c);
        clients.lock().unwrap_or_else(|e| e.into_inner()).remove(r.descriptor);
    }
    match out {
        Ok(f) => Outcome::Fields(f),
        Err(e) => Outcome::Failed(ErrorKind::of(&e), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        let p = encode(GET_FROM, Some(2), "ddict1;x;0;seg:1", &[&7u64.to_le_bytes(), b"key"]);
        let r = parse(&p).unwrap();
        assert_eq!((r.op, r.pin, r.descriptor), (GET_FROM, Some(2), "ddict1;x;0;seg:1"));
        assert_eq!(r.args, vec![&7u64.to_le_bytes()[..], b"key"]);
        for cut in 0..p.len() {
            assert!(parse(&p[..cut]).is_none(), "{cut}");
        }
        let mut long = p.clone();
        long.push(0);
        assert!(parse(&long).is_none());
        // A count of fields that cannot fit is refused before allocating.
        let mut forged = BytesMut::new();
        forged.put_u32_le(u32::MAX);
        assert!(fields(&forged).is_none());
        assert_eq!(parse(&encode(CLEAR, None, "d", &[])).unwrap().pin, None);
        // A request whose last argument is written after the rest is the same request.
        let value = vec![9u8; 1000];
        let args: [&[u8]; 3] = [&7u64.to_le_bytes(), b"key", &value];
        let mut split = encode_but_last(PUT, Some(1), "d", &args[..2], value.len());
        split.extend_from_slice(&value);
        assert_eq!(split, encode(PUT, Some(1), "d", &args));
    }

    #[test]
    fn stats_rows_round_trip_and_short_ones_are_refused() {
        let s = ShardStats { entries: 3, used_bytes: 40, heap_bytes: 50, total_bytes: 60, clients: 2, frozen: true };
        let row = stats_row(5, &s);
        assert_eq!(parse_stats_row(&row), Some((5, s)));
        assert_eq!(parse_stats_row(&row[..48]), None);
    }
}
