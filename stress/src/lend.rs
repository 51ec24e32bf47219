//! The `lend` scenario: large blocks of the run's block store
//! (`transport_shm::blocks`) travel by name from producers through
//! forwarders to consumers, on two channels, while the chaos loop kills
//! processes at random and replaces them.
//!
//! * A producer takes a block (256 KiB to 2 MiB), writes a message of the
//!   `channel` scenario's format into it (header, payload derived from
//!   (seed, producer, seq), checksum) and puts the block's name on channel
//!   A, handing the block to the message (`send`) as the name is written;
//!   then it records "n sent".
//! * A forwarder takes a name off A and becomes the owner as it does
//!   (`receive`: it must succeed, the message is the only one naming that
//!   generation), pins the block, verifies it, and passes it on to channel B
//!   the same way *while it keeps its pin*. It keeps the last few blocks pinned and,
//!   before unpinning one, verifies it again: a pinned block must never be
//!   reused, so its bytes must not have changed although the block has
//!   long been owned, freed and maybe taken by others.
//! * A consumer takes a name off B, receives, verifies, logs (producer,
//!   seq), releases.
//!
//! At the end the parent closes A (producers stop, forwarders drain it and
//! stop), then B (consumers drain it and stop), drains what is left itself,
//! sweeps the dead, and checks: nothing delivered twice or never sent; lost
//! messages at most one per killed forwarder or consumer; every block free
//! again except at most one per kill (a process killed inside the few
//! instructions between `send` and publishing a name, or between taking a
//! name and `receive`, strands that block until the run ends:
//! `docs/zero-copy.md`);
//! nothing of the run left in `/dev/shm`.

use crate::channel::{build, parse_sent, sent_record, verify, SEND_DEADLINE};
use crate::{
    env, env_u64, exit, nap, parse_records, read_all, record, replace_ended, Opts, Pids, Rng, Summary, WorkDir, Worker,
};
use channels_core::{ChannelOptions, RecvTimeoutError, SendTimeoutError, TryRecvError};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use transport_shm::blocks::{store_name, BlockId, Store};
use transport_shm::channel as shm;
use transport_shm::RunId;

/// Blocks a forwarder keeps pinned after passing them on.
const HOLD: usize = 3;

fn name_msg(b: BlockId, len: usize) -> [u8; 14] {
    let mut m = [0u8; 14];
    m[0] = b.seg;
    m[1] = b.idx;
    m[2..6].copy_from_slice(&b.gen.to_le_bytes());
    m[6..14].copy_from_slice(&(len as u64).to_le_bytes());
    m
}

fn parse_name(m: &[u8]) -> Result<(BlockId, usize), String> {
    if m.len() != 14 {
        return Err(format!("a block name of {} bytes", m.len()));
    }
    let gen = u32::from_le_bytes(m[2..6].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(m[6..14].try_into().expect("8 bytes")) as usize;
    Ok((BlockId { seg: m[0], idx: m[1], gen }, len))
}

/// Read block `b`'s message of `len` bytes and verify it.
fn check(store: &Store, b: BlockId, len: usize, seed: u64) -> Result<(u32, u64, usize), String> {
    let mut buf = vec![0u8; len];
    store.read(b, &mut buf).map_err(|e| format!("read block {}/{}: {e}", b.seg, b.idx))?;
    verify(&buf, seed)
}

fn open_store(role: &str) -> Result<Store, i32> {
    Store::open_existing(&store_name(RunId::current())).map_err(|e| {
        eprintln!("{role}: block store: {e}");
        exit::ATTACH
    })
}

fn attach(role: &str, var: &str) -> Result<channels_core::Channel, i32> {
    shm::attach_text(&env(var)).map_err(|e| {
        eprintln!("{role}: attach: {e}");
        exit::ATTACH
    })
}

/// Name block `b` (owned by `me` at `b.gen`) on `ch`, waiting for room:
/// the block passes to the message as it is written, just before it is
/// published. False once the channel is closed (the block is still ours).
fn send_block(
    ch: &channels_core::Channel,
    store: &Store,
    me: u32,
    b: BlockId,
    len: usize,
    who: &str,
) -> Result<bool, i32> {
    let m = name_msg(BlockId { gen: b.gen.wrapping_add(1), ..b }, len);
    let write = |dst: &mut [u8]| {
        store.lent(b).send(me, b.gen);
        dst.copy_from_slice(&m);
    };
    match ch.send_with_timeout(m.len(), Some(SEND_DEADLINE), write) {
        Ok(()) => Ok(true),
        Err(SendTimeoutError::Disconnected(_)) | Err(SendTimeoutError::Destroyed(_)) => Ok(false),
        Err(SendTimeoutError::Timeout(_)) => {
            eprintln!("{who}: channel stayed full for {SEND_DEADLINE:?}");
            Err(exit::HANG)
        }
        Err(e) => {
            eprintln!("{who}: send: {e}");
            Err(exit::ERROR)
        }
    }
}

/// Take the next block name off `ch` and become the block's owner (in
/// the same step as taking the message, before its slot is let go):
/// `Ok(None)` on a timeout, `Err(OK)` once the channel is closed and empty.
fn next_block(ch: &channels_core::Channel, store: &Store, me: u32, who: &str) -> Result<Option<(BlockId, usize)>, i32> {
    let take = |m: &[u8]| {
        let (b, len) = parse_name(m)?;
        if store.lent(b).receive(me, b.gen) {
            Ok((b, len))
        } else {
            Err(format!("block {}/{} gen {} was not in a message", b.seg, b.idx, b.gen))
        }
    };
    match ch.recv_with(Some(Duration::from_millis(500)), take) {
        Ok(Ok(n)) => Ok(Some(n)),
        Ok(Err(e)) => {
            eprintln!("{who}: {e}");
            Err(exit::VIOLATION)
        }
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Destroyed) => Err(exit::OK),
        Err(e) => {
            eprintln!("{who}: recv: {e}");
            Err(exit::ERROR)
        }
    }
}

fn code(r: Result<i32, i32>) -> i32 {
    r.unwrap_or_else(|c| c)
}

// ---- workers ----------------------------------------------------------------------

/// A producer: fill blocks and name them on channel A until it closes.
pub fn producer() -> i32 {
    code(produce())
}

fn produce() -> Result<i32, i32> {
    let id = env_u64("DRAGON_STRESS_ID") as u32;
    let seed = env_u64("DRAGON_STRESS_SEED");
    let who = format!("lend producer {id}");
    let ch = attach(&who, "DRAGON_STRESS_HANDLE")?;
    let store = open_store(&who)?;
    let me = store.attachment();
    let log = crate::private_file()
        .create(true)
        .truncate(true)
        .write(true)
        .open(format!("{}/p{id}", env("DRAGON_STRESS_DIR")))
        .expect("producer log");
    let mut rng = Rng::derive(seed, 0x3000_0000 + u64::from(id));
    let mut seq = 0u64;
    loop {
        let len = rng.range(256 << 10, 2 << 20) as usize;
        let Some(b) = store.take(len) else {
            if ch.is_closed() {
                return Ok(exit::OK);
            }
            std::thread::sleep(Duration::from_millis(2)); // full: the others free
            continue;
        };
        let mut buf = vec![0u8; len];
        build(&mut buf, seed, id, seq);
        store.write(b, &buf).map_err(|e| {
            eprintln!("{who}: write: {e}");
            exit::ERROR
        })?;
        if !send_block(&ch, &store, me, b, len, &who)? {
            store.lent(b).release(me, b.gen);
            return Ok(exit::OK);
        }
        seq += 1;
        log.write_all_at(&sent_record(seq), 0).expect("producer log write");
    }
}

/// A forwarder: A -> B, keeping its last blocks pinned and checking that
/// they do not change.
pub fn forwarder() -> i32 {
    code(forward())
}

fn forward() -> Result<i32, i32> {
    let id = env_u64("DRAGON_STRESS_ID");
    let seed = env_u64("DRAGON_STRESS_SEED");
    let who = format!("lend forwarder {id}");
    let a = attach(&who, "DRAGON_STRESS_HANDLE")?;
    let b_ch = attach(&who, "DRAGON_STRESS_HANDLE2")?;
    let store = open_store(&who)?;
    let me = store.attachment();
    let mut held: VecDeque<(BlockId, usize)> = VecDeque::new();
    let unpin_checked = |blk: BlockId, len: usize| -> Result<(), i32> {
        let r = check(&store, blk, len, seed);
        store.lent(blk).unpin(me);
        r.map(|_| ()).map_err(|e| {
            eprintln!("{who}: a block changed while pinned: {e}");
            exit::VIOLATION
        })
    };
    loop {
        let (blk, len) = match next_block(&a, &store, me, &who) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(c) => {
                for (blk, len) in held.drain(..) {
                    unpin_checked(blk, len)?;
                }
                return Ok(c);
            }
        };
        store.lent(blk).pin(me);
        if let Err(e) = check(&store, blk, len, seed) {
            eprintln!("{who}: {e}");
            return Err(exit::VIOLATION);
        }
        if !send_block(&b_ch, &store, me, blk, len, &who)? {
            store.lent(blk).release(me, blk.gen);
        }
        held.push_back((blk, len));
        if held.len() > HOLD {
            let (old, olen) = held.pop_front().expect("more than HOLD");
            unpin_checked(old, olen)?;
        }
    }
}

/// A consumer: take names off B, verify, log, free.
pub fn consumer() -> i32 {
    code(consume())
}

fn consume() -> Result<i32, i32> {
    let id = env_u64("DRAGON_STRESS_ID");
    let seed = env_u64("DRAGON_STRESS_SEED");
    let who = format!("lend consumer {id}");
    let ch = attach(&who, "DRAGON_STRESS_HANDLE2")?;
    let store = open_store(&who)?;
    let me = store.attachment();
    let mut log = crate::private_file()
        .create(true)
        .append(true)
        .open(format!("{}/c{id}", env("DRAGON_STRESS_DIR")))
        .expect("consumer log");
    loop {
        let Some((blk, len)) = next_block(&ch, &store, me, &who)? else { continue };
        match check(&store, blk, len, seed) {
            Ok((p, seq, n)) => log.write_all(&record(p, seq as u32, n as u32)).expect("consumer log write"),
            Err(e) => {
                eprintln!("{who}: {e}");
                return Err(exit::VIOLATION);
            }
        }
        store.lent(blk).release(me, blk.gen);
    }
}

// ---- the run ------------------------------------------------------------------------

/// Run the scenario.
pub fn run(opts: &Opts, sum: &mut Summary) {
    let mut rng = Rng::new(opts.seed);
    let producers = opts.workers.max(1);
    let consumers = opts.workers2.max(1);
    let forwarders = 2;
    let dir = WorkDir::new("lend");
    let pids = Pids::default();
    crate::run_watchdog("lend", opts.seed, pids.clone(), dir.0.clone(), opts.duration + Duration::from_secs(120));
    // A small cap, so that the store fills up and blocks are reused a lot.
    let store = Store::open_with_cap(&store_name(RunId::current()), 96 << 20).expect("create the block store");
    let me = store.attachment();
    let opts_ch = ChannelOptions::new().capacity(16).slot_size(64).max_attachments(64);
    let a = shm::create(&opts_ch).expect("create channel A");
    let b = shm::create(&opts_ch).expect("create channel B");
    let vars = || {
        vec![
            ("DRAGON_STRESS_SEED", opts.seed.to_string()),
            ("DRAGON_STRESS_DIR", dir.0.display().to_string()),
            ("DRAGON_STRESS_HANDLE", a.handle().to_text()),
            ("DRAGON_STRESS_HANDLE2", b.handle().to_text()),
        ]
    };
    let mut next: HashMap<&'static str, u64> = HashMap::new();
    let mut spawn = |role: &'static str| {
        let n = next.entry(role).or_default();
        let id = *n;
        *n += 1;
        Worker::spawn(&pids, role, id, &vars())
    };
    let mut workers: Vec<Worker> = Vec::new();
    for _ in 0..producers {
        workers.push(spawn("lend-producer"));
    }
    for _ in 0..forwarders {
        workers.push(spawn("lend-forwarder"));
    }
    for _ in 0..consumers {
        workers.push(spawn("lend-consumer"));
    }
    let mut done: Vec<Worker> = Vec::new();
    let end = Instant::now() + opts.duration;
    let mut kills = 0u64;
    let mut killed: HashMap<&'static str, u64> = HashMap::new();
    while Instant::now() < end && opts.iterations.map_or(true, |n| kills < n) {
        let at = Instant::now() + rng.around(opts.kill_every);
        while Instant::now() < at {
            nap(at, Duration::from_millis(5));
            replace_ended(&mut workers, &mut done, sum, |w| spawn(w.role));
        }
        let i = rng.below(workers.len() as u64) as usize;
        let mut w = workers.swap_remove(i);
        w.kill();
        kills += 1;
        *killed.entry(w.role).or_default() += 1;
        let role = w.role;
        done.push(w);
        workers.push(spawn(role));
        for ch in [&a, &b] {
            if let Err(e) = ch.recover() {
                sum.violation(format!("recover: {e}"));
            }
        }
    }
    // The end: close A (producers stop, forwarders drain it), then B.
    let stop = |ch: &channels_core::Channel,
                roles: &[&str],
                workers: &mut Vec<Worker>,
                done: &mut Vec<Worker>,
                sum: &mut Summary| {
        ch.close();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (these, rest): (Vec<Worker>, Vec<Worker>) = workers.drain(..).partition(|w| roles.contains(&w.role));
        *workers = rest;
        for mut w in these {
            if !w.wait_until(deadline) {
                sum.violation(format!("{} {} (pid {}) did not stop within 60 s", w.role, w.id, w.pid()));
                w.kill();
            }
            done.push(w);
        }
    };
    stop(&a, &["lend-producer", "lend-forwarder"], &mut workers, &mut done, sum);
    stop(&b, &["lend-consumer"], &mut workers, &mut done, sum);
    for w in &done {
        if let Some(bad) = w.bad_end() {
            if !sum.violations.contains(&bad) {
                sum.violation(bad);
            }
        }
    }
    for ch in [&a, &b] {
        if let Err(e) = ch.recover() {
            sum.violation(format!("recover: {e}"));
        }
    }
    // What the consumers logged, then what is still in the channels.
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    for w in done.iter().filter(|w| w.role == "lend-consumer") {
        match parse_records(&read_all(&dir.file(&format!("c{}", w.id)))) {
            Ok(recs) => {
                for (p, seq, _) in recs {
                    *seen.entry((p, u64::from(seq))).or_default() += 1;
                }
            }
            Err(e) => sum.violation(format!("consumer {} log: {e}", w.id)),
        }
    }
    let mut drained = 0u64;
    for ch in [&a, &b] {
        loop {
            match ch.try_recv() {
                Ok(m) => match parse_name(&m) {
                    Ok((blk, len)) if store.lent(blk).receive(me, blk.gen) => {
                        match check(&store, blk, len, opts.seed) {
                            Ok((p, seq, _)) => *seen.entry((p, seq)).or_default() += 1,
                            Err(e) => sum.violation(format!("final drain: {e}")),
                        }
                        store.lent(blk).release(me, blk.gen);
                        drained += 1;
                    }
                    Ok((blk, _)) => {
                        sum.violation(format!("final drain: block {}/{} not in a message", blk.seg, blk.idx))
                    }
                    Err(e) => sum.violation(format!("final drain: {e}")),
                },
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                Err(e) => {
                    sum.violation(format!("final drain: {e}"));
                    break;
                }
            }
        }
    }
    // Exactly once, nothing invented, losses only with killed processes.
    let mut sent: HashMap<u32, u64> = HashMap::new();
    for w in done.iter().filter(|w| w.role == "lend-producer") {
        match parse_sent(&read_all(&dir.file(&format!("p{}", w.id)))) {
            Ok(n) => {
                sent.insert(w.id as u32, n);
            }
            Err(e) => sum.violation(format!("producer {} log: {e}", w.id)),
        }
    }
    for (&(p, seq), &n) in &seen {
        if n > 1 {
            sum.violation(format!("message {p}/{seq} delivered {n} times"));
        }
        // A producer killed between publishing and logging delivered one
        // more (seq == its count) than it recorded.
        if sent.get(&p).map_or(true, |&s| seq > s) {
            sum.violation(format!("message {p}/{seq} delivered but never recorded as sent"));
        }
    }
    let lost = sent.iter().map(|(&p, &n)| (0..n).filter(|&q| !seen.contains_key(&(p, q))).count() as u64).sum::<u64>();
    let may_lose =
        killed.get("lend-forwarder").copied().unwrap_or(0) + killed.get("lend-consumer").copied().unwrap_or(0);
    if lost > may_lose {
        sum.violation(format!("{lost} messages lost, but only {may_lose} forwarders and consumers were killed"));
    }
    // Every block back, but for the ones stranded by a kill in a window.
    let swept = store.sweep_dead();
    let stranded = store.blocks_in_use() as u64;
    if stranded > kills {
        sum.violation(format!("{stranded} blocks still in use after the sweep, more than the {kills} kills"));
    }
    let (used, _) = store.usage();
    drop(store);
    a.destroy();
    b.destroy();
    drop((a, b));
    // The store goes with the run (what the runtime does at its end).
    transport_shm::segment::cleanup_run(RunId::current());
    crate::check_no_shm_left(sum);
    sum.started = next.values().sum();
    sum.killed = kills;
    sum.count("sent", sent.values().sum());
    sum.count("delivered", seen.len() as u64);
    sum.count("drained_at_end", drained);
    sum.count("lost_with_killed", lost);
    sum.count("attachments_swept", swept as u64);
    sum.count("blocks_stranded", stranded);
    sum.count("store_mib", used >> 20);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_round_trip() {
        let b = BlockId { seg: 3, idx: 9, gen: 77 };
        assert_eq!(parse_name(&name_msg(b, 123_456)), Ok((b, 123_456)));
        assert!(parse_name(&[0u8; 13]).is_err());
    }
}
