#![forbid(unsafe_code)]
//! Soak and crash-injection runs of the whole system: real processes on
//! real shared memory, killed with `SIGKILL` at random moments while they
//! work, and checks that every message is delivered exactly once, that
//! locks stay exclusive and recover, that the DDict never returns a torn
//! value, and that nothing leaks.
//!
//! The `stress` binary runs one scenario per invocation ([`channel`],
//! [`sync`], [`ddict`]); it re-executes itself for every worker process
//! (the role travels in [`ROLE_ENV`]). Each run prints one JSON summary
//! line and exits non-zero on any violation, hang or leak. See
//! `docs/stress.md`.

pub mod channel;
pub mod ddict_scenario;
pub mod lend;
pub mod sync;

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport_shm::segment::{self, RunId};

/// Environment variable naming the role a re-executed `stress` plays.
pub const ROLE_ENV: &str = "DRAGON_STRESS_ROLE";
/// Environment variable carrying the parent's pid to workers.
pub const PARENT_ENV: &str = "DRAGON_STRESS_PARENT";

/// Worker exit codes (anything else, or a signal we did not send, is a
/// violation too).
pub mod exit {
    /// Finished cleanly (the run ended).
    pub const OK: i32 = 0;
    /// A check inside the worker failed (corrupt message, torn value,
    /// mutual exclusion broken...); the worker printed why on stderr.
    pub const VIOLATION: i32 = 3;
    /// A wait overran its deadline: a hang.
    pub const HANG: i32 = 4;
    /// Attaching to the shared object failed.
    pub const ATTACH: i32 = 5;
    /// An operation failed with an unexpected error.
    pub const ERROR: i32 = 6;
    /// The parent went away: the worker ended itself.
    pub const ORPHAN: i32 = 70;
}

/// What a scenario is told to do.
#[derive(Debug, Clone)]
pub struct Opts {
    /// How long to run the chaos phase.
    pub duration: Duration,
    /// Stop after this many kills (if given) even if time remains.
    pub iterations: Option<u64>,
    /// Seed of every random choice (printed, replayable).
    pub seed: u64,
    /// Worker processes of the first kind (producers, lockers, clients).
    pub workers: usize,
    /// Worker processes of the second kind (consumers; scenario-specific).
    pub workers2: usize,
    /// Mean time between kills.
    pub kill_every: Duration,
    /// Print progress on stderr.
    pub verbose: bool,
}

/// The outcome of one run: printed as one JSON line.
#[derive(Debug, Default)]
pub struct Summary {
    /// Scenario name.
    pub scenario: &'static str,
    /// The seed.
    pub seed: u64,
    /// Wall time of the whole run, seconds.
    pub duration_s: f64,
    /// Worker processes started (replacements included).
    pub started: u64,
    /// Worker processes killed by the chaos.
    pub killed: u64,
    /// Scenario-specific counters, in order.
    pub counters: Vec<(&'static str, u64)>,
    /// What went wrong (empty: the run passed).
    pub violations: Vec<String>,
}

impl Summary {
    /// A new summary for `scenario`.
    pub fn new(scenario: &'static str, seed: u64) -> Summary {
        Summary { scenario, seed, ..Summary::default() }
    }

    /// Record a violation (also printed on stderr at once).
    pub fn violation(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("stress {}: VIOLATION: {what}", self.scenario);
        self.violations.push(what);
    }

    /// Set a counter.
    pub fn count(&mut self, name: &'static str, v: u64) {
        match self.counters.iter_mut().find(|(n, _)| *n == name) {
            Some(c) => c.1 = v,
            None => self.counters.push((name, v)),
        }
    }

    /// Add to a counter.
    pub fn add(&mut self, name: &'static str, v: u64) {
        let cur = self.counters.iter().find(|(n, _)| *n == name).map_or(0, |c| c.1);
        self.count(name, cur + v);
    }

    /// The value of a counter (0 if never set).
    pub fn get(&self, name: &str) -> u64 {
        self.counters.iter().find(|(n, _)| *n == name).map_or(0, |c| c.1)
    }

    /// The JSON line.
    pub fn to_json(&self) -> String {
        let mut s = format!(
            "{{\"scenario\":\"{}\",\"seed\":{},\"duration_s\":{:.2},\"started\":{},\"killed\":{}",
            self.scenario, self.seed, self.duration_s, self.started, self.killed
        );
        for (k, v) in &self.counters {
            let _ = write!(s, ",\"{k}\":{v}");
        }
        let _ = write!(s, ",\"violations\":{}", self.violations.len());
        s.push_str(",\"first_violations\":[");
        for (i, v) in self.violations.iter().take(5).enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&json_string(v));
        }
        s.push_str("]}");
        s
    }
}

fn json_string(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// SplitMix64: small, fast, and good enough for choosing sizes and moments.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// A generator derived from `seed` and a stream number.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    /// A random duration around `mean` (uniform in 0..2*mean).
    pub fn around(&mut self, mean: Duration) -> Duration {
        let ns = mean.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        Duration::from_nanos(self.below(2 * ns.max(1)))
    }
}

/// A 64-bit checksum of `data` seeded with `seed` (word at a time).
pub fn checksum(seed: u64, data: &[u8]) -> u64 {
    let mut h = seed ^ 0x6A09_E667_F3BC_C908 ^ (data.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        h = (h ^ (u64::from(b) << (8 * i))).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

/// Fill `buf` with bytes derived from `seed`.
pub fn fill(seed: u64, buf: &mut [u8]) {
    let mut r = Rng::derive(seed, 0xF111);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    let tail = r.next_u64().to_le_bytes();
    let rem = chunks.into_remainder();
    let n = rem.len();
    rem.copy_from_slice(&tail[..n]);
}

// ---- worker side ------------------------------------------------------------------

/// A value the parent passed to this worker.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("stress worker started without {name}"))
}

/// A numeric value the parent passed to this worker.
pub fn env_u64(name: &str) -> u64 {
    env(name).parse().unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// Called first in every worker: a thread ends the process if the parent
/// goes away (an aborted run leaves no stray workers).
pub fn worker_guard() {
    let parent: u32 = env_u64(PARENT_ENV) as u32;
    if std::os::unix::process::parent_id() != parent {
        std::process::exit(exit::ORPHAN);
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(exit::ORPHAN);
        }
    });
}

// ---- parent side --------------------------------------------------------------

/// Pids of every worker alive, for the run watchdog.
#[derive(Debug, Clone, Default)]
pub struct Pids(Arc<Mutex<Vec<u32>>>);

impl Pids {
    fn add(&self, pid: u32) {
        self.0.lock().expect("pids").push(pid);
    }
    fn remove(&self, pid: u32) {
        self.0.lock().expect("pids").retain(|&p| p != pid);
    }
    fn all(&self) -> Vec<u32> {
        self.0.lock().expect("pids").clone()
    }
}

/// A worker process.
#[derive(Debug)]
pub struct Worker {
    /// Role name.
    pub role: &'static str,
    /// The scenario's id for it (producer id, client id...).
    pub id: u64,
    child: std::process::Child,
    /// Whether the chaos killed it.
    pub killed: bool,
    /// Its exit status once reaped.
    pub status: Option<ExitStatus>,
    pids: Pids,
}

impl Worker {
    /// Start this executable as a worker playing `role`.
    pub fn spawn(pids: &Pids, role: &'static str, id: u64, vars: &[(&str, String)]) -> Worker {
        // The run id reaches workers through the environment.
        let _ = RunId::current();
        let exe = std::env::current_exe().expect("own executable");
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .env(ROLE_ENV, role)
            .env(PARENT_ENV, std::process::id().to_string())
            .env("DRAGON_STRESS_ID", id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn a worker");
        pids.add(child.id());
        Worker { role, id, child, killed: false, status: None, pids: pids.clone() }
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.child.kill();
        self.killed = true;
        self.reap_blocking();
    }

    fn reap_blocking(&mut self) {
        if let Ok(s) = self.child.wait() {
            self.status = Some(s);
        }
        self.pids.remove(self.child.id());
    }

    /// Reap it if it exited; returns whether it did.
    pub fn poll(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.status = Some(s);
                self.pids.remove(self.child.id());
                true
            }
            _ => false,
        }
    }

    /// Wait for it to exit, at most until `deadline`; returns whether it did.
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            if self.poll() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// If it ended in a way that is not allowed (anything but our SIGKILL or
    /// a clean exit), say how.
    pub fn bad_end(&self) -> Option<String> {
        let s = self.status?;
        if self.killed && s.signal() == Some(9) {
            return None;
        }
        match s.code() {
            Some(exit::OK) => None,
            Some(exit::VIOLATION) => Some(format!("{} {} (pid {}) found a violation", self.role, self.id, self.pid())),
            Some(exit::HANG) => {
                Some(format!("{} {} (pid {}): a wait overran its deadline", self.role, self.id, self.pid()))
            }
            Some(exit::ATTACH) => Some(format!("{} {} (pid {}) could not attach", self.role, self.id, self.pid())),
            Some(c) => Some(format!("{} {} (pid {}) exited with code {c}", self.role, self.id, self.pid())),
            None => Some(format!("{} {} (pid {}) died of signal {:?}", self.role, self.id, self.pid(), s.signal())),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.reap_blocking();
        }
    }
}

/// Start a thread that ends the run if it is still going at `limit`:
/// kills every worker, removes the run's segments and work directory,
/// prints a summary line with the hang and exits with status 2.
pub fn run_watchdog(scenario: &'static str, seed: u64, pids: Pids, dir: PathBuf, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("stress {scenario}: run still going after {limit:?}: a hang; killing every worker");
        for pid in pids.all() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        segment::cleanup_run(RunId::current());
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Summary::new(scenario, seed);
        s.violations.push(format!("the run did not finish within {limit:?} (hang)"));
        println!("{}", s.to_json());
        std::process::exit(2);
    });
}

/// A private directory of the run for the workers' logs, removed on drop.
#[derive(Debug)]
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    /// Create it (`0700`) under the temporary directory, named after the run.
    pub fn new(scenario: &str) -> WorkDir {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let p = std::env::temp_dir().join(format!("dragon-stress-{scenario}-{}", RunId::current()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&p).expect("create the run's work directory");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("make the work directory private");
        WorkDir(p)
    }
    /// A file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options for a file of the run's work directory: created `0600`.
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

/// Write a whole file of the run's work directory (created `0600`).
pub fn write_private(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    private_file().create(true).truncate(true).write(true).open(p)?.write_all(data.as_ref())
}

/// Read a whole file (empty if missing).
pub fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    if let Ok(mut f) = File::open(p) {
        let _ = f.read_to_end(&mut v);
    }
    v
}

/// Names in `/dev/shm` of the current run.
pub fn shm_leftovers() -> Vec<String> {
    let prefix = RunId::current().prefix();
    std::fs::read_dir(segment::SHM_DIR)
        .map(|d| {
            d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with(&prefix)).collect()
        })
        .unwrap_or_default()
}

/// Final check of every scenario: nothing of the run is left in
/// `/dev/shm` (then remove whatever is, so a failed run cleans up too).
pub fn check_no_shm_left(sum: &mut Summary) {
    let left = shm_leftovers();
    if !left.is_empty() {
        sum.violation(format!("{} segment(s) left in /dev/shm: {:?}", left.len(), left));
        segment::cleanup_run(RunId::current());
    }
}

/// A 16-byte record checked by a tag: `[a u32][b u32][c u32][tag u32]`.
pub fn record(a: u32, b: u32, c: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..4].copy_from_slice(&a.to_le_bytes());
    r[4..8].copy_from_slice(&b.to_le_bytes());
    r[8..12].copy_from_slice(&c.to_le_bytes());
    r[12..16].copy_from_slice(&record_tag(a, b, c).to_le_bytes());
    r
}

fn record_tag(a: u32, b: u32, c: u32) -> u32 {
    (checksum(0x5eed, &[a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes()].concat()) >> 16) as u32
}

/// Parse the records of an append-only log. A short tail (the writer was
/// killed inside the write) is dropped; a record with a bad tag is an error.
pub fn parse_records(data: &[u8]) -> Result<Vec<(u32, u32, u32)>, String> {
    let mut out = Vec::with_capacity(data.len() / 16);
    for (i, r) in data.chunks_exact(16).enumerate() {
        let w = |k: usize| u32::from_le_bytes(r[k..k + 4].try_into().expect("4 bytes"));
        let (a, b, c, t) = (w(0), w(4), w(8), w(12));
        if t != record_tag(a, b, c) {
            return Err(format!("record {i} has a bad tag"));
        }
        out.push((a, b, c));
    }
    Ok(out)
}

/// Replace every worker that ended on its own with `respawn(&ended)`: only
/// the chaos loop ends workers before the end, so each is a violation.
pub fn replace_ended(
    workers: &mut Vec<Worker>,
    done: &mut Vec<Worker>,
    sum: &mut Summary,
    mut respawn: impl FnMut(&Worker) -> Worker,
) {
    for i in (0..workers.len()).rev() {
        if workers[i].poll() {
            let w = workers.swap_remove(i);
            sum.violation(w.bad_end().unwrap_or_else(|| format!("{} {} ended early", w.role, w.id)));
            workers.push(respawn(&w));
            done.push(w);
        }
    }
}

/// Sleep until `until`, or at most `step`, whichever is sooner.
pub fn nap(until: Instant, step: Duration) {
    let now = Instant::now();
    if until > now {
        std::thread::sleep((until - now).min(step));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_a_short_tail_is_dropped_and_a_bad_tag_is_an_error() {
        let mut log = Vec::new();
        log.extend_from_slice(&record(1, 2, 3));
        log.extend_from_slice(&record(4, 5, 6));
        log.extend_from_slice(&record(7, 8, 9)[..5]);
        assert_eq!(parse_records(&log), Ok(vec![(1, 2, 3), (4, 5, 6)]));
        log[17] ^= 1;
        assert!(parse_records(&log).is_err());
    }

    #[test]
    fn summary_is_one_json_line() {
        let mut s = Summary::new("channel", 7);
        s.count("sent", 3);
        s.add("sent", 2);
        s.violations.push("a \"quoted\"\nline".into());
        let j = s.to_json();
        assert!(!j.contains('\n'));
        assert!(j.contains("\"sent\":5") && j.contains("\"violations\":1") && j.contains("\\\"quoted\\\"\\u000a"));
    }
}
