//! The `ddict` scenario: manager processes serve the shards of one DDict;
//! client processes put, get and delete random keys through the `ddict`
//! crate's Rust API while the chaos loop kills clients at random and
//! starts replacements; at the end a manager is killed too.
//!
//! * **Values are verifiable.** A value is `[magic u32][writer u32]
//!   [seq u64][key hash u64][checksum u64]` and a payload derived from
//!   (seed, writer, seq) (0 bytes to 64 KiB); the checksum covers the
//!   payload and is seeded with writer, seq and the key, so a torn value, or
//!   one stored under another key, fails it.
//! * **Shared keys** (`s0`..`s47`) are written, read and deleted by every
//!   client. A client logs each put's (key, seq) before it issues it and
//!   each read's (key, writer, seq); at the end every read must match a put
//!   its writer logged for that key.
//! * **Private keys** (`p<client>-<n>`) are a client's own: after each
//!   operation on one, the client reads it back and must find exactly what
//!   it did (a delete holds; a put that failed because the shard was full
//!   left the old value). It logs each operation before it starts and again
//!   once it returned. When a killed client is reaped, its private keys must
//!   hold the state after its last finished operation or after the one it
//!   was killed in (no partial write or delete); the parent then deletes
//!   them. Clients that ended cleanly are checked the same way at the end.
//! * **Accounting.** Once every client is gone and the managers have reaped
//!   the dead ones' slots, each shard's heap walk (`Shard::check`) must
//!   agree with its counters (entries, used bytes), hold no block in
//!   flight, and list as many entries as the dictionary iterates.
//! * **A killed manager** makes every client's next operations fail with
//!   `ManagerDied` within a bound (clients and the parent are checked), not
//!   hang; `destroy` still removes every shard.

use crate::{
    checksum, env, env_u64, exit, fill, nap, parse_records, read_all, record, replace_ended, Opts, Pids, Rng, Summary,
    WorkDir, Worker,
};
use ddict::manager::{self, Config};
use ddict::{Client, Descriptor, Error, ShardRef};
use ddict_shard::ShmShard;
use shm_primitives::ProcessId;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};
use transport_shm::segment::{nonce32, RunId};
use transport_shm::ShmEvent;

/// Shared keys.
pub const SHARED_KEYS: u32 = 48;
/// Private keys per client.
pub const PRIVATE_KEYS: u32 = 8;
/// Bytes per shard.
pub const SHARD_BYTES: usize = 8 << 20;
/// Exit code of a client that saw the clear `ManagerDied` error it was
/// told to expect.
pub const EXIT_MANAGER_DIED: i32 = 7;

const MAGIC: u32 = u32::from_le_bytes(*b"DDSV");
const HEADER: usize = 32;

// Log records: (op | key << 8, seq, writer-or-0).
const L_PUT: u32 = 1; // private put started
const L_DEL: u32 = 2; // private delete started
const L_DONE: u32 = 3; // the private operation started last returned (seq in b; c = 1 if it changed nothing)
const L_SPUT: u32 = 4; // shared put started
const L_SREAD: u32 = 5; // shared read returned (seq in b, writer in c)

fn shared_key(n: u32) -> Vec<u8> {
    format!("s{n}").into_bytes()
}

fn private_key(client: u32, n: u32) -> Vec<u8> {
    format!("p{client}-{n}").into_bytes()
}

fn key_hash(key: &[u8]) -> u64 {
    checksum(0xD1C7, key)
}

fn payload_seed(seed: u64, writer: u32, seq: u64, kh: u64) -> u64 {
    Rng::derive(seed ^ seq.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ kh, u64::from(writer)).next_u64()
}

/// The value `writer` puts as its `seq`-th write, for `key`.
pub fn make_value(seed: u64, writer: u32, seq: u64, key: &[u8]) -> Vec<u8> {
    let kh = key_hash(key);
    let ps = payload_seed(seed, writer, seq, kh);
    let mut r = Rng::derive(ps, 1);
    let len = if r.percent(10) { r.range(4096, 64 << 10) } else { r.below(600) } as usize;
    let mut v = vec![0u8; HEADER + len];
    fill(ps, &mut v[HEADER..]);
    let sum = checksum(ps, &v[HEADER..]);
    v[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    v[4..8].copy_from_slice(&writer.to_le_bytes());
    v[8..16].copy_from_slice(&seq.to_le_bytes());
    v[16..24].copy_from_slice(&kh.to_le_bytes());
    v[24..32].copy_from_slice(&sum.to_le_bytes());
    v
}

/// Check a value read for `key`: (writer, seq) or what is wrong.
pub fn verify_value(seed: u64, key: &[u8], v: &[u8]) -> Result<(u32, u64), String> {
    let k = String::from_utf8_lossy(key);
    if v.len() < HEADER {
        return Err(format!("key {k}: a value of {} bytes, shorter than its header", v.len()));
    }
    let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    let magic = u32::from_le_bytes(v[0..4].try_into().expect("4 bytes"));
    let writer = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
    let (seq, kh, sum) = (u64_at(8), u64_at(16), u64_at(24));
    if magic != MAGIC {
        return Err(format!("key {k}: bad magic {magic:#x}"));
    }
    if kh != key_hash(key) {
        return Err(format!("key {k}: holds a value written for another key (writer {writer} seq {seq})"));
    }
    if checksum(payload_seed(seed, writer, seq, kh), &v[HEADER..]) != sum {
        return Err(format!("key {k}: torn value (writer {writer} seq {seq}, {} bytes)", v.len()));
    }
    Ok((writer, seq))
}

// ---- workers ----------------------------------------------------------------------

/// A ddict worker: `manager` or `client`.
pub fn worker(role: &str) -> i32 {
    match role {
        "manager" => manager_main(),
        "client" => client_main(),
        other => {
            eprintln!("stress: unknown worker role {other}");
            exit::ERROR
        }
    }
}

fn manager_main() -> i32 {
    let index = env_u64("DRAGON_STRESS_ID") as usize;
    let cfg = Config {
        segment: env("DRAGON_STRESS_SEGMENT"),
        id: env_u64("DRAGON_STRESS_SHARD_ID"),
        len: SHARD_BYTES,
        index,
        name: "stress".into(),
        owner: ProcessId {
            pid: env_u64("DRAGON_STRESS_OWNER_PID") as u32,
            start: env_u64("DRAGON_STRESS_OWNER_START"),
        },
        persist: None,
        restore: false,
        compact_after: 1 << 20,
        working_set: 1,
    };
    let ready = format!("{}/ready{index}", env("DRAGON_STRESS_DIR"));
    match manager::serve(&cfg, || {
        let _ = crate::write_private(&ready, b"ready");
    }) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("ddict manager {index}: {e}");
            exit::ERROR
        }
    }
}

struct C {
    id: u32,
    seed: u64,
    client: Client,
    log: File,
    rng: Rng,
    seq: u64,
    /// The state of each private key: the seq of the value it holds.
    model: Vec<Option<u64>>,
    expect_death: bool,
}

enum End {
    Code(i32),
}

impl C {
    fn log(&mut self, op: u32, key: u32, b: u64, c: u32) {
        self.log.write_all(&record(op | key << 8, b as u32, c)).expect("client log");
    }

    fn fail(&self, what: &str, e: Error) -> End {
        if matches!(e, Error::ManagerDied { .. }) && self.expect_death {
            eprintln!("ddict client {}: {what} got the expected clear error: {e}", self.id);
            return End::Code(EXIT_MANAGER_DIED);
        }
        eprintln!("ddict client {}: {what}: {e}", self.id);
        End::Code(exit::ERROR)
    }

    fn violation(&self, m: String) -> End {
        eprintln!("ddict client {}: {m}", self.id);
        End::Code(exit::VIOLATION)
    }

    fn step(&mut self) -> Result<(), End> {
        match self.rng.below(100) {
            0..=34 => {
                let n = self.rng.below(u64::from(SHARED_KEYS)) as u32;
                let key = shared_key(n);
                let seed = self.seed;
                let got =
                    self.client.get_with(&key, |v| verify_value(seed, &key, v)).map_err(|e| self.fail("get", e))?;
                match got {
                    None => {}
                    Some(Ok((w, s))) => self.log(L_SREAD, n, s, w),
                    Some(Err(m)) => return Err(self.violation(m)),
                }
            }
            35..=54 => {
                let n = self.rng.below(u64::from(SHARED_KEYS)) as u32;
                let key = shared_key(n);
                self.seq += 1;
                let (id, seq) = (self.id, self.seq);
                self.log(L_SPUT, n, seq, id);
                let v = make_value(self.seed, id, seq, &key);
                match self.client.put(&key, &v) {
                    Ok(_) | Err(Error::Full { .. }) => {}
                    Err(e) => return Err(self.fail("put", e)),
                }
            }
            55..=59 => {
                let key = shared_key(self.rng.below(u64::from(SHARED_KEYS)) as u32);
                self.client.delete(&key).map_err(|e| self.fail("delete", e))?;
            }
            r => {
                let n = self.rng.below(u64::from(PRIVATE_KEYS)) as u32;
                let key = private_key(self.id, n);
                self.seq += 1;
                let seq = self.seq;
                if r < 85 {
                    self.log(L_PUT, n, seq, 0);
                    let v = make_value(self.seed, self.id, seq, &key);
                    match self.client.put(&key, &v) {
                        Ok(_) => {
                            self.model[n as usize] = Some(seq);
                            self.log(L_DONE, n, seq, 0);
                        }
                        Err(Error::Full { .. }) => self.log(L_DONE, n, seq, 1),
                        Err(e) => return Err(self.fail("put", e)),
                    }
                } else if r < 95 {
                    self.log(L_DEL, n, seq, 0);
                    let was = self.client.delete(&key).map_err(|e| self.fail("delete", e))?;
                    if was != self.model[n as usize].is_some() {
                        return Err(self.violation(format!(
                            "delete of private key p{}-{n} said present={was}, but it holds {:?}",
                            self.id, self.model[n as usize]
                        )));
                    }
                    self.model[n as usize] = None;
                    self.log(L_DONE, n, seq, 0);
                }
                // Read it back: exactly what this client did.
                let seed = self.seed;
                let got =
                    self.client.get_with(&key, |v| verify_value(seed, &key, v)).map_err(|e| self.fail("get", e))?;
                let want = self.model[n as usize];
                let ok = match (&got, want) {
                    (None, None) => true,
                    (Some(Ok((w, s))), Some(ws)) => *w == self.id && *s == ws,
                    _ => false,
                };
                if !ok {
                    return Err(self.violation(format!(
                        "private key p{}-{n}: read {got:?}, but the last write of this client was {want:?}",
                        self.id
                    )));
                }
            }
        }
        Ok(())
    }
}

fn client_main() -> i32 {
    let id = env_u64("DRAGON_STRESS_ID") as u32;
    let dir = env("DRAGON_STRESS_DIR");
    let stop = match ShmEvent::attach_text(&env("DRAGON_STRESS_STOP")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ddict client {id}: attach stop event: {e}");
            return exit::ATTACH;
        }
    };
    let client = match Descriptor::from_text(&env("DRAGON_STRESS_DDICT")).and_then(|d| Client::attach(&d)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ddict client {id}: attach: {e}");
            return exit::ATTACH;
        }
    };
    let mut c = C {
        id,
        seed: env_u64("DRAGON_STRESS_SEED"),
        client,
        log: crate::private_file().create(true).append(true).open(format!("{dir}/c{id}")).expect("client log"),
        rng: Rng::derive(env_u64("DRAGON_STRESS_SEED"), 0x7000_0000 + u64::from(id)),
        seq: 0,
        model: vec![None; PRIVATE_KEYS as usize],
        expect_death: std::env::var("DRAGON_STRESS_EXPECT_DEATH").is_ok(),
    };
    let mut ops = 0u64;
    while !stop.is_set() {
        if let Err(End::Code(code)) = c.step() {
            return code;
        }
        ops += 1;
        if ops % 64 == 0 {
            let _ = crate::write_private(format!("{dir}/ops{id}"), ops.to_string());
        }
    }
    let _ = crate::write_private(format!("{dir}/ops{id}"), ops.to_string());
    exit::OK
}

// ---- the run ------------------------------------------------------------------------

/// What a client's log says.
#[derive(Default)]
struct ClientLog {
    /// Private key -> allowed final states (seq of the value, or None).
    allowed: HashMap<u32, Vec<Option<u64>>>,
    /// (key, seq) of shared puts started.
    shared_puts: std::collections::HashSet<(u32, u64)>,
    /// (key, writer, seq) of shared reads.
    shared_reads: Vec<(u32, u32, u64)>,
}

fn read_log(data: &[u8]) -> Result<ClientLog, String> {
    let mut out = ClientLog::default();
    // Per private key: state after the last finished op, and the op in flight.
    let mut state: HashMap<u32, Option<u64>> = HashMap::new();
    let mut flight: Option<(u32, u32, u64)> = None;
    for (a, b, c) in parse_records(data)? {
        let (op, key, seq) = (a & 0xff, a >> 8, u64::from(b));
        match op {
            L_PUT | L_DEL => flight = Some((op, key, seq)),
            L_DONE => {
                let Some((fop, fkey, fseq)) = flight.take() else { return Err("a finish without a start".into()) };
                if fkey != key || fseq != seq {
                    return Err(format!("finish of {key}/{seq} after start of {fkey}/{fseq}"));
                }
                if c == 0 {
                    state.insert(key, if fop == L_PUT { Some(seq) } else { None });
                }
            }
            L_SPUT => {
                out.shared_puts.insert((key, seq));
            }
            L_SREAD => out.shared_reads.push((key, c, seq)),
            other => return Err(format!("unknown record {other}")),
        }
    }
    for n in 0..PRIVATE_KEYS {
        let now = state.get(&n).copied().unwrap_or(None);
        let mut allowed = vec![now];
        if let Some((op, key, seq)) = flight {
            if key == n {
                allowed.push(if op == L_PUT { Some(seq) } else { None });
            }
        }
        out.allowed.insert(n, allowed);
    }
    Ok(out)
}

/// Check (and then delete) the private keys of client `id`.
fn check_private(c: &mut Client, seed: u64, id: u32, log: &ClientLog, sum: &mut Summary) {
    for n in 0..PRIVATE_KEYS {
        let key = private_key(id, n);
        let got = match c.get_with(&key, |v| verify_value(seed, &key, v)) {
            Ok(g) => g,
            Err(e) => {
                sum.violation(format!("parent get of p{id}-{n}: {e}"));
                continue;
            }
        };
        let state = match got {
            None => None,
            Some(Ok((w, s))) if w == id => Some(s),
            Some(Ok((w, s))) => {
                sum.violation(format!("p{id}-{n} holds writer {w}'s seq {s}"));
                continue;
            }
            Some(Err(m)) => {
                sum.violation(m);
                continue;
            }
        };
        let allowed = &log.allowed[&n];
        if !allowed.contains(&state) {
            sum.violation(format!(
                "private key p{id}-{n} of a finished or killed client holds {state:?}; allowed {allowed:?}"
            ));
        }
        if state.is_some() {
            if let Err(e) = c.delete(&key) {
                sum.violation(format!("parent delete of p{id}-{n}: {e}"));
            }
        }
    }
    sum.add("private_keys_checked", u64::from(PRIVATE_KEYS));
}

/// Run the scenario.
pub fn run(opts: &Opts, sum: &mut Summary) {
    let mut rng = Rng::new(opts.seed);
    let dir = WorkDir::new("ddict");
    let pids = Pids::default();
    crate::run_watchdog("ddict", opts.seed, pids.clone(), dir.0.clone(), opts.duration + Duration::from_secs(150));
    let run = RunId::current();
    let me = ProcessId::current();
    let nshards = opts.workers2.max(1);
    let mut refs = Vec::new();
    let mut managers = Vec::new();
    for i in 0..nshards {
        let segment = format!("{}dd-stress-{i}-{:08x}", run.prefix(), nonce32());
        let id = (u64::from(nonce32()) << 32) | u64::from(nonce32());
        refs.push(ShardRef { segment: segment.clone(), id, node: 0 });
        managers.push(Worker::spawn(
            &pids,
            "manager",
            i as u64,
            &[
                ("DRAGON_STRESS_DIR", dir.0.display().to_string()),
                ("DRAGON_STRESS_SEGMENT", segment),
                ("DRAGON_STRESS_SHARD_ID", id.to_string()),
                ("DRAGON_STRESS_OWNER_PID", me.pid.to_string()),
                ("DRAGON_STRESS_OWNER_START", me.start.to_string()),
            ],
        ));
    }
    let ready_by = Instant::now() + Duration::from_secs(30);
    while (0..nshards).any(|i| !dir.file(&format!("ready{i}")).exists()) {
        if Instant::now() > ready_by || managers.iter_mut().any(|m| m.poll()) {
            sum.violation("a manager did not come up");
            for m in &mut managers {
                m.kill();
            }
            crate::check_no_shm_left(sum);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let desc = Descriptor { name: "stress".into(), flags: 0, shards: refs };
    let mut pc = Client::attach(&desc).expect("parent attaches");
    let stop = ShmEvent::create().expect("stop event");
    let vars = vec![
        ("DRAGON_STRESS_SEED", opts.seed.to_string()),
        ("DRAGON_STRESS_DIR", dir.0.display().to_string()),
        ("DRAGON_STRESS_STOP", stop.handle().to_text()),
        ("DRAGON_STRESS_DDICT", desc.to_text()),
    ];
    let mut next = 0u64;
    let mut spawn = |extra: Option<(&'static str, String)>| {
        next += 1;
        let mut v = vars.clone();
        v.extend(extra);
        Worker::spawn(&pids, "client", next - 1, &v)
    };
    let mut clients: Vec<Worker> = (0..opts.workers.max(1)).map(|_| spawn(None)).collect();
    let mut done: Vec<Worker> = Vec::new();
    let mut logs: HashMap<u32, ClientLog> = HashMap::new();
    let finish = |w: &Worker, pc: &mut Client, sum: &mut Summary, logs: &mut HashMap<u32, ClientLog>| {
        match read_log(&read_all(&dir.file(&format!("c{}", w.id)))) {
            Ok(log) => {
                check_private(pc, opts.seed, w.id as u32, &log, sum);
                logs.insert(w.id as u32, log);
            }
            Err(e) => sum.violation(format!("log of client {}: {e}", w.id)),
        }
        let ops = std::fs::read_to_string(dir.file(&format!("ops{}", w.id))).ok().and_then(|s| s.parse().ok());
        sum.add("client_ops_at_least", ops.unwrap_or(0));
    };
    let end = Instant::now() + opts.duration;
    let mut kills = 0u64;
    while Instant::now() < end && opts.iterations.map_or(true, |n| kills < n) {
        let at = Instant::now() + rng.around(opts.kill_every);
        while Instant::now() < at {
            nap(at, Duration::from_millis(5));
            replace_ended(&mut clients, &mut done, sum, |_| spawn(None));
            for m in &mut managers {
                if m.status.is_none() && m.poll() {
                    sum.violation(m.bad_end().unwrap_or_else(|| format!("manager {} ended early", m.id)));
                }
            }
        }
        let i = rng.below(clients.len() as u64) as usize;
        let mut w = clients.swap_remove(i);
        w.kill();
        kills += 1;
        finish(&w, &mut pc, sum, &mut logs);
        done.push(w);
        clients.push(spawn(None));
    }
    stop.set();
    let deadline = Instant::now() + Duration::from_secs(60);
    for mut w in clients.drain(..) {
        if !w.wait_until(deadline) {
            sum.violation(format!("client {} (pid {}) did not stop within 60 s", w.id, w.pid()));
            w.kill();
        }
        finish(&w, &mut pc, sum, &mut logs);
        done.push(w);
    }
    for w in &done {
        if let Some(bad) = w.bad_end() {
            if !sum.violations.contains(&bad) {
                sum.violation(bad);
            }
        }
    }
    // Every shared read returned a value its writer put under that key.
    let mut reads = 0u64;
    for log in logs.values() {
        for &(key, writer, seq) in &log.shared_reads {
            reads += 1;
            if !logs.get(&writer).is_some_and(|l| l.shared_puts.contains(&(key, seq))) {
                sum.violation(format!(
                    "a read of s{key} returned writer {writer}'s seq {seq}, which it never put there"
                ));
            }
        }
    }
    sum.count("shared_reads_checked", reads);
    // Accounting, once the managers reaped every dead client's slot.
    let shards: Vec<ShmShard> = desc.shards.iter().filter_map(|s| ShmShard::open(&s.segment, s.id).ok()).collect();
    if shards.len() != nshards {
        sum.violation("a shard could not be opened for the accounting check");
    }
    let settle = Instant::now() + Duration::from_secs(10);
    let mut entries = 0;
    for (i, sh) in shards.iter().enumerate() {
        loop {
            let st = sh.stats();
            let rep = sh.check();
            let counted = pc.shard_len(i).unwrap_or(u64::MAX);
            let mut walked = 0u64;
            let _ = pc.for_each_in(i, |_, _| walked += 1);
            let problem = match &rep {
                Err(e) => Some(format!("heap walk: {e}")),
                Ok(r) if r.pending_blocks != 0 => Some(format!("{} blocks still in flight: {r:?}", r.pending_blocks)),
                Ok(r) if r.entries != st.entries || r.used_bytes != st.used_bytes => {
                    Some(format!("counters {st:?} disagree with the heap walk {r:?}"))
                }
                Ok(_) if counted != st.entries || walked != st.entries => {
                    Some(format!("len {counted}, iteration {walked}, counters {}", st.entries))
                }
                Ok(_) if st.clients > 2 => Some(format!("{} client slots still held", st.clients)),
                Ok(_) => None,
            };
            match problem {
                None => {
                    entries += st.entries;
                    break;
                }
                Some(p) if Instant::now() > settle => {
                    sum.violation(format!("shard {i}: {p}"));
                    break;
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    sum.count("entries_at_end", entries);
    drop(shards);
    // A killed manager: clients get a clear error, not a hang.
    stop.clear();
    let mut doomed: Vec<Worker> = (0..2).map(|_| spawn(Some(("DRAGON_STRESS_EXPECT_DEATH", "1".into())))).collect();
    std::thread::sleep(Duration::from_millis(200));
    let victim = rng.below(nshards as u64) as usize;
    managers[victim].kill();
    let t = Instant::now();
    let by = t + Duration::from_secs(10);
    for w in &mut doomed {
        if !w.wait_until(by) {
            sum.violation(format!("client {} still running 10 s after manager {victim} was killed", w.id));
            w.kill();
        } else if w.status.and_then(|s| s.code()) != Some(EXIT_MANAGER_DIED) {
            sum.violation(format!("client {} ended with {:?}, not the manager-died error", w.id, w.status));
        }
    }
    let parent_saw = loop {
        let key = (0..).map(|n: u32| shared_key(n)).find(|k| ddict::shard_of(k, nshards) == victim).expect("a key");
        match pc.put(&key, b"x") {
            Err(Error::ManagerDied { shard }) if shard == victim => break true,
            Err(e) => {
                sum.violation(format!("after manager {victim} was killed, a put failed with: {e}"));
                break false;
            }
            Ok(_) if Instant::now() < by => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {
                sum.violation(format!("puts still succeed 10 s after manager {victim} was killed"));
                break false;
            }
        }
    };
    sum.count("manager_death_noticed_ms", t.elapsed().as_millis() as u64);
    sum.count("manager_death_clear_error", u64::from(parent_saw));
    // The end: destroy; the live managers stop.
    pc.destroy();
    drop(pc);
    let by = Instant::now() + Duration::from_secs(10);
    for m in &mut managers {
        if !m.wait_until(by) {
            sum.violation(format!("manager {} still running 10 s after destroy", m.id));
            m.kill();
        } else if let Some(bad) = m.bad_end() {
            sum.violation(bad);
        }
    }
    let _ = stop.destroy();
    drop(doomed);
    crate::check_no_shm_left(sum);
    sum.started = next + nshards as u64;
    sum.killed = kills + 1;
}
