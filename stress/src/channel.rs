//! The `channel` scenario: producer and consumer processes on one
//! shared-memory channel, killed at random moments and replaced.
//!
//! * Every message carries `[magic u32][producer u32][seq u64][len u64]
//!   [checksum u64]` and a payload derived from (seed, producer, seq); the
//!   checksum covers the payload and is seeded with producer and seq, so a
//!   torn, mixed or truncated message fails it. Sizes are random: mostly
//!   inline, some blocks of up to 256 KiB, a few of up to 4 MiB.
//! * A producer sends seq 0, 1, 2, ... and after each send returns records
//!   "n sent" in its log (one 16-byte `pwrite` at offset 0).
//! * A consumer verifies each message in place, then appends a 16-byte
//!   record `(producer, seq)` to its own log (an `O_APPEND` write, which
//!   survives the writer's SIGKILL). It holds at most one message between
//!   taking it from the ring and logging it, so a killed consumer loses at
//!   most one message.
//! * The chaos loop kills a random worker every `kill_every` (random
//!   interval) and starts a replacement under a fresh id.
//!
//! At the end the parent closes the channel (producers stop, consumers
//! drain and exit), recovers the dead attachments, drains the rest itself,
//! and checks: no (producer, seq) delivered twice; each consumer saw each
//! producer's messages in increasing order; nothing delivered that was not
//! sent (seq <= the producer's sent count); every message a producer
//! recorded as sent was delivered, except at most one per killed consumer;
//! the allocator holds no block (`owned == in_ring == 0`, `free == blocks
//! == listed`); nothing of the run is left in `/dev/shm`.

use crate::{
    checksum, env, env_u64, exit, fill, nap, parse_records, read_all, record, replace_ended, Opts, Pids, Rng, Summary,
    WorkDir, Worker,
};
use channels_core::{ChannelOptions, RecoveryReport, RecvTimeoutError, SendTimeoutError, TryRecvError};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use transport_shm::channel as shm;

/// First word of every message.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DSTR");
/// Header bytes of a message.
pub const HEADER: usize = 32;
/// The longest a producer may wait for room before it calls it a hang
/// (consumers are always being replaced, so a full channel drains).
pub const SEND_DEADLINE: Duration = Duration::from_secs(30);

/// Largest message size (a few MiB).
pub const MAX_LEN: usize = 4 << 20;

/// A random message length: 70% inline, 25% up to 256 KiB, 5% up to 4 MiB.
pub fn random_len(rng: &mut Rng, max_inline: usize) -> usize {
    let inline = max_inline.max(HEADER);
    match rng.below(100) {
        0..=69 => rng.range(HEADER as u64, inline as u64) as usize,
        70..=94 => rng.range(inline as u64 + 1, 256 << 10) as usize,
        _ => rng.range((256 << 10) + 1, MAX_LEN as u64) as usize,
    }
}

fn payload_seed(seed: u64, producer: u32, seq: u64) -> u64 {
    Rng::derive(seed ^ seq.wrapping_mul(0x2545_F491_4F6C_DD1D), u64::from(producer)).next_u64()
}

/// Write message (producer, seq) of `buf.len()` bytes into `buf`.
pub fn build(buf: &mut [u8], seed: u64, producer: u32, seq: u64) {
    let ps = payload_seed(seed, producer, seq);
    fill(ps, &mut buf[HEADER..]);
    let sum = checksum(ps, &buf[HEADER..]);
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&producer.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    let len = buf.len() as u64;
    buf[16..24].copy_from_slice(&len.to_le_bytes());
    buf[24..32].copy_from_slice(&sum.to_le_bytes());
}

/// Check a message: (producer, seq, len) or what is wrong with it.
pub fn verify(m: &[u8], seed: u64) -> Result<(u32, u64, usize), String> {
    if m.len() < HEADER {
        return Err(format!("a message of {} bytes, shorter than the header", m.len()));
    }
    let u32_at = |k: usize| u32::from_le_bytes(m[k..k + 4].try_into().expect("4 bytes"));
    let u64_at = |k: usize| u64::from_le_bytes(m[k..k + 8].try_into().expect("8 bytes"));
    let (magic, p, seq, len, sum) = (u32_at(0), u32_at(4), u64_at(8), u64_at(16), u64_at(24));
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#x} in a message of {} bytes", m.len()));
    }
    if len != m.len() as u64 {
        return Err(format!("message {p}/{seq}: {} bytes arrived, header says {len}", m.len()));
    }
    let got = checksum(payload_seed(seed, p, seq), &m[HEADER..]);
    if got != sum {
        return Err(format!("message {p}/{seq} ({len} bytes): checksum {got:#x}, header says {sum:#x}"));
    }
    Ok((p, seq, m.len()))
}

pub(crate) fn sent_record(n: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&n.to_le_bytes());
    r[8..16].copy_from_slice(&(n ^ 0xA5A5_5A5A_C3C3_3C3C).to_le_bytes());
    r
}

pub(crate) fn parse_sent(data: &[u8]) -> Result<u64, String> {
    if data.is_empty() {
        return Ok(0);
    }
    if data.len() != 16 {
        return Err(format!("sent log of {} bytes", data.len()));
    }
    let n = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let c = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    if n ^ 0xA5A5_5A5A_C3C3_3C3C != c {
        return Err("torn sent log".into());
    }
    Ok(n)
}

// ---- workers ----------------------------------------------------------------------

/// A producer process: send until the channel closes.
pub fn producer() -> i32 {
    let id = env_u64("DRAGON_STRESS_ID") as u32;
    let seed = env_u64("DRAGON_STRESS_SEED");
    let dir = env("DRAGON_STRESS_DIR");
    let ch = match shm::attach_text(&env("DRAGON_STRESS_HANDLE")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("producer {id}: attach: {e}");
            return exit::ATTACH;
        }
    };
    let log = crate::private_file()
        .create(true)
        .truncate(true)
        .write(true)
        .open(format!("{dir}/p{id}"))
        .expect("producer log");
    let mut rng = Rng::derive(seed, 0x1000_0000 + u64::from(id));
    let max_inline = ch.max_inline();
    let mut seq = 0u64;
    loop {
        let len = random_len(&mut rng, max_inline);
        match ch.send_with_timeout(len, Some(SEND_DEADLINE), |buf| build(buf, seed, id, seq)) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                eprintln!("producer {id}: channel stayed full for {SEND_DEADLINE:?} (seq {seq})");
                return exit::HANG;
            }
            Err(SendTimeoutError::Disconnected(_)) | Err(SendTimeoutError::Destroyed(_)) => return exit::OK,
            Err(e) => {
                eprintln!("producer {id}: send of {len} bytes: {e}");
                return exit::ERROR;
            }
        }
        seq += 1;
        log.write_all_at(&sent_record(seq), 0).expect("producer log write");
    }
}

/// A consumer process: receive, verify, log, until the channel is closed
/// and empty.
pub fn consumer() -> i32 {
    let id = env_u64("DRAGON_STRESS_ID");
    let seed = env_u64("DRAGON_STRESS_SEED");
    let dir = env("DRAGON_STRESS_DIR");
    let ch = match shm::attach_text(&env("DRAGON_STRESS_HANDLE")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("consumer {id}: attach: {e}");
            return exit::ATTACH;
        }
    };
    let mut log = crate::private_file().create(true).append(true).open(format!("{dir}/c{id}")).expect("consumer log");
    loop {
        match ch.recv_with(Some(Duration::from_millis(500)), |m| verify(m, seed)) {
            Ok(Ok((p, seq, len))) => {
                log.write_all(&record(p, seq as u32, len as u32)).expect("consumer log write");
            }
            Ok(Err(e)) => {
                eprintln!("consumer {id}: {e}");
                return exit::VIOLATION;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Destroyed) => return exit::OK,
            Err(e) => {
                eprintln!("consumer {id}: recv: {e}");
                return exit::ERROR;
            }
        }
    }
}

// ---- the run ------------------------------------------------------------------------

struct Deliveries {
    /// (producer, seq) -> times delivered.
    seen: HashMap<(u32, u64), u32>,
    bytes: u64,
    large: u64,
}

/// Run the scenario.
pub fn run(opts: &Opts, sum: &mut Summary) {
    let mut rng = Rng::new(opts.seed);
    let capacity = [4u64, 16, 64][rng.below(3) as usize];
    let slot = [64usize, 128, 512][rng.below(3) as usize];
    let attachments = 64;
    let producers = opts.workers.max(1);
    let consumers = opts.workers2.max(1);
    if opts.verbose {
        eprintln!(
            "channel: capacity {capacity}, slot {slot} B, {producers} producers, {consumers} consumers, \
             kill every ~{:?}",
            opts.kill_every
        );
    }
    let dir = WorkDir::new("channel");
    let pids = Pids::default();
    crate::run_watchdog("channel", opts.seed, pids.clone(), dir.0.clone(), opts.duration + Duration::from_secs(120));
    let ch = shm::create(&ChannelOptions::new().capacity(capacity).slot_size(slot).max_attachments(attachments))
        .expect("create the channel");
    let vars = || {
        vec![
            ("DRAGON_STRESS_SEED", opts.seed.to_string()),
            ("DRAGON_STRESS_DIR", dir.0.display().to_string()),
            ("DRAGON_STRESS_HANDLE", ch.handle().to_text()),
        ]
    };
    let mut next_p = 0u64;
    let mut next_c = 0u64;
    let mut workers: Vec<Worker> = Vec::new();
    let mut done: Vec<Worker> = Vec::new();
    let spawn = |role: &'static str, next: &mut u64| {
        let id = *next;
        *next += 1;
        Worker::spawn(&pids, role, id, &vars())
    };
    for _ in 0..producers {
        workers.push(spawn("producer", &mut next_p));
    }
    for _ in 0..consumers {
        workers.push(spawn("consumer", &mut next_c));
    }
    let mut rep = RecoveryReport::default();
    let add = |rep: &mut RecoveryReport, r: RecoveryReport| {
        rep.swept += r.swept;
        rep.tombstoned += r.tombstoned;
        rep.released += r.released;
        rep.blocks_freed += r.blocks_freed;
    };
    let start = Instant::now();
    let end = start + opts.duration;
    let mut kills = 0u64;
    let mut killed_consumers = 0u64;
    while Instant::now() < end && opts.iterations.map_or(true, |n| kills < n) {
        let at = Instant::now() + rng.around(opts.kill_every);
        while Instant::now() < at {
            nap(at, Duration::from_millis(5));
            replace_ended(&mut workers, &mut done, sum, |w| {
                spawn(w.role, if w.role == "producer" { &mut next_p } else { &mut next_c })
            });
        }
        let i = rng.below(workers.len() as u64) as usize;
        let mut w = workers.swap_remove(i);
        w.kill();
        kills += 1;
        if w.role == "consumer" {
            killed_consumers += 1;
        }
        let role = w.role;
        done.push(w);
        let next = if role == "producer" { &mut next_p } else { &mut next_c };
        workers.push(spawn(role, next));
        match ch.recover() {
            Ok(r) => add(&mut rep, r),
            Err(e) => sum.violation(format!("recover: {e}")),
        }
    }
    // The end: producers see the close and stop; consumers drain and stop.
    ch.close();
    let deadline = Instant::now() + Duration::from_secs(60);
    for mut w in workers.drain(..) {
        if !w.wait_until(deadline) {
            sum.violation(format!("{} {} (pid {}) did not stop within 60 s of the close", w.role, w.id, w.pid()));
            w.kill();
        }
        done.push(w);
    }
    for w in &done {
        if let Some(bad) = w.bad_end() {
            if !sum.violations.contains(&bad) {
                sum.violation(bad);
            }
        }
    }
    // Recover every dead attachment.
    let rdeadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ch.recover() {
            Ok(r) => add(&mut rep, r),
            Err(e) => {
                sum.violation(format!("recover: {e}"));
                break;
            }
        }
        if ch.attachment_count() <= 1 {
            break;
        }
        if Instant::now() > rdeadline {
            sum.violation(format!("{} attachments still in the table after recovery", ch.attachment_count()));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Collect what the consumers logged, and drain the rest here.
    let mut d = Deliveries { seen: HashMap::new(), bytes: 0, large: 0 };
    let max_inline = ch.max_inline();
    for w in done.iter().filter(|w| w.role == "consumer") {
        let data = read_all(&dir.file(&format!("c{}", w.id)));
        let recs = match parse_records(&data) {
            Ok(r) => r,
            Err(e) => {
                sum.violation(format!("consumer {} log: {e}", w.id));
                continue;
            }
        };
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (p, seq, len) in recs {
            let seq = u64::from(seq);
            if let Some(prev) = last.insert(p, seq) {
                if seq <= prev {
                    sum.violation(format!("consumer {} received {p}/{seq} after {p}/{prev}", w.id));
                }
            }
            *d.seen.entry((p, seq)).or_default() += 1;
            d.bytes += u64::from(len);
            d.large += u64::from(len as usize > max_inline);
        }
    }
    let mut drained = 0u64;
    let mut last: HashMap<u32, u64> = HashMap::new();
    loop {
        match ch.try_recv() {
            Ok(m) => match verify(&m, opts.seed) {
                Ok((p, seq, len)) => {
                    drained += 1;
                    if let Some(prev) = last.insert(p, seq) {
                        if seq <= prev {
                            sum.violation(format!("final drain received {p}/{seq} after {p}/{prev}"));
                        }
                    }
                    *d.seen.entry((p, seq)).or_default() += 1;
                    d.bytes += len as u64;
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
    // Exactly once, nothing invented, nothing lost beyond the dead consumers' share.
    let mut sent_total = 0u64;
    let mut sent: HashMap<u32, u64> = HashMap::new();
    for w in done.iter().filter(|w| w.role == "producer") {
        match parse_sent(&read_all(&dir.file(&format!("p{}", w.id)))) {
            Ok(n) => {
                sent.insert(w.id as u32, n);
                sent_total += n;
            }
            Err(e) => sum.violation(format!("producer {} log: {e}", w.id)),
        }
    }
    let mut dups = 0;
    for (&(p, seq), &n) in &d.seen {
        if n > 1 {
            dups += 1;
            if dups <= 5 {
                sum.violation(format!("message {p}/{seq} delivered {n} times"));
            }
        }
        match sent.get(&p) {
            None => sum.violation(format!("message {p}/{seq} from an unknown producer")),
            Some(&s) if seq > s => {
                sum.violation(format!("message {p}/{seq} delivered but producer {p} recorded only {s} sent"))
            }
            _ => {}
        }
    }
    let mut missing = Vec::new();
    for (&p, &n) in &sent {
        for seq in 0..n {
            if !d.seen.contains_key(&(p, seq)) {
                missing.push((p, seq));
            }
        }
    }
    if missing.len() as u64 > killed_consumers {
        missing.sort_unstable();
        sum.violation(format!(
            "{} sent messages never delivered, but only {killed_consumers} consumers were killed (at most one \
             each may be lost): first {:?}",
            missing.len(),
            &missing[..missing.len().min(8)]
        ));
    }
    // No leaked blocks.
    match ch.alloc_stats() {
        Ok(st) => {
            if st.owned != 0 || st.in_ring != 0 || st.free != st.blocks || st.listed != st.free {
                sum.violation(format!("allocator leak after recovery: {st:?}"));
            }
            sum.count("extension_segments", st.segments);
        }
        Err(e) => sum.violation(format!("alloc_stats: {e}")),
    }
    ch.destroy();
    drop(ch);
    crate::check_no_shm_left(sum);
    let unique: HashSet<_> = d.seen.keys().collect();
    sum.started = next_p + next_c;
    sum.killed = kills;
    sum.count("capacity", capacity);
    sum.count("slot_size", slot as u64);
    sum.count("sent", sent_total);
    sum.count("delivered", unique.len() as u64);
    sum.count("delivered_large", d.large);
    sum.count("delivered_mib", d.bytes >> 20);
    sum.count("drained_at_end", drained);
    sum.count("lost_with_killed_consumers", missing.len() as u64);
    sum.count("killed_consumers", killed_consumers);
    sum.count("attachments_swept", u64::from(rep.swept));
    sum.count("slots_tombstoned", rep.tombstoned);
    sum.count("slots_released", rep.released);
    sum.count("blocks_freed", rep.blocks_freed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_verifies_and_any_change_is_caught() {
        let mut rng = Rng::new(1);
        for _ in 0..40 {
            let len = random_len(&mut rng, 104).min(300_000);
            let mut m = vec![0u8; len];
            build(&mut m, 9, 3, 77);
            assert_eq!(verify(&m, 9), Ok((3, 77, len)));
            assert!(verify(&m, 10).is_err(), "another run's seed");
            let i = rng.below(len as u64) as usize;
            m[i] ^= 1;
            assert!(verify(&m, 9).is_err(), "flip at {i} of {len}");
            m[i] ^= 1;
            assert!(verify(&m[..len - 1], 9).is_err(), "truncated");
        }
        // Same payload under another (producer, seq) header fails too.
        let mut a = vec![0u8; 500];
        build(&mut a, 9, 1, 1);
        a[8..16].copy_from_slice(&2u64.to_le_bytes());
        assert!(verify(&a, 9).is_err());
    }

    #[test]
    fn sent_log_round_trips_and_torn_is_an_error() {
        assert_eq!(parse_sent(&sent_record(12345)), Ok(12345));
        assert_eq!(parse_sent(&[]), Ok(0));
        let mut r = sent_record(5);
        r[3] = 1;
        assert!(parse_sent(&r).is_err());
    }
}
