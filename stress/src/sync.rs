//! The `sync` scenario: worker processes contend on one shared Lock,
//! RLock, Semaphore, Event, Condition (with its own Lock) and Barrier
//! while the chaos loop kills them at random, often while they hold
//! something.
//!
//! How each property is checked (the shared words live in a file of the
//! run's work directory, read and written with `pread`/`pwrite`, so they
//! survive their writer's death):
//!
//! * **Mutual exclusion.** Each lock has a holder word. On entering, a
//!   worker reads it: it must be 0, or, if the acquire said
//!   `OwnerDied { pid }`, 0 or `pid` (the dead holder's entry). It writes
//!   its own pid, works a little, and on leaving the word must still hold
//!   its pid. Any other value means two holders at once.
//! * **Owner died.** Every `OwnerDied { pid }` is logged; at the end each
//!   such pid must be one the chaos killed, and the parent itself acquires
//!   every lock (a lock a killed worker held must come back, with the
//!   indication).
//! * **Semaphore.** A holder of a unit claims one of `K` marker names with
//!   an atomic `link(2)`; finding all `K` taken means `K + 1` holders. Each
//!   worker records its semaphore phase; when a worker killed while holding
//!   a unit is reaped, the parent removes its marker and gives the unit
//!   back (units of dead holders are not recovered by design, as with POSIX
//!   semaphores). A worker killed inside `acquire` or `release` may or may
//!   not have moved a unit: at the end, `K - value` must not exceed the
//!   number of such workers.
//! * **Nobody waits forever.** Every wait has a timeout and its elapsed time
//!   is checked against it (plus slack); lock acquires have a 20 s limit
//!   while critical sections last microseconds.
//! * **Event, Condition, Barrier**: event waits and sets, a bounded item
//!   count under the condition's lock (notify on put, wait with a timeout
//!   on take), barrier waits with a timeout that reset a broken barrier.

use crate::{
    env, env_u64, exit, nap, parse_records, read_all, record, replace_ended, Opts, Pids, Rng, Summary, WorkDir, Worker,
};
use shm_primitives::ProcessId;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sync_objects::{Acquired, BarrierError, WaitError};
use transport_shm::{ShmBarrier, ShmCondition, ShmEvent, ShmLock, ShmRLock, ShmSemaphore};

/// Units of the semaphore.
pub const SEM_UNITS: u32 = 2;
/// A lock acquire that takes this long is a hang.
pub const LOCK_LIMIT: Duration = Duration::from_secs(20);
/// How late a timed wait may return before it counts as a hang.
pub const SLACK: Duration = Duration::from_secs(5);

const W_LOCK: u64 = 0;
const W_RLOCK: u64 = 1;
const W_ITEMS: u64 = 2;
const W_CLOCK: u64 = 3;

// Semaphore phases a worker records (word 0 of its own file).
const SEM_IDLE: u64 = 0;
const SEM_ACQUIRING: u64 = 1;
const SEM_HOLDING: u64 = 2;
const SEM_RELEASING: u64 = 3;

// Kinds of owner-died records.
const OD_LOCK: u32 = 1;
const OD_RLOCK: u32 = 2;
const OD_CLOCK: u32 = 3;

// Counters a worker keeps in its own file (words 1..).
const COUNTERS: [&str; 10] = [
    "lock_ops",
    "rlock_ops",
    "sem_ops",
    "sem_timeouts",
    "event_ops",
    "cond_puts",
    "cond_takes",
    "cond_timeouts",
    "barrier_passed",
    "barrier_broken",
];

/// Words in a file, read and written with `pread`/`pwrite`.
struct Words(File);

impl Words {
    fn open(p: &Path) -> Words {
        Words(crate::private_file().create(true).truncate(false).read(true).write(true).open(p).expect("words file"))
    }
    fn get(&self, i: u64) -> u64 {
        let mut b = [0u8; 8];
        match self.0.read_exact_at(&mut b, i * 8) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }
    fn set(&self, i: u64, v: u64) {
        self.0.write_all_at(&v.to_le_bytes(), i * 8).expect("pwrite");
    }
}

fn sem_marker(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("sem{i}"))
}

// ---- worker ----------------------------------------------------------------------

struct W {
    me: u64,
    words: Words,
    own: Words,
    odlog: File,
    counts: [u64; COUNTERS.len()],
    dir: PathBuf,
    tmp: PathBuf,
    rng: Rng,
    lock: ShmLock,
    rlock: ShmRLock,
    sem: ShmSemaphore,
    ev: ShmEvent,
    cond: ShmCondition,
    clock: ShmLock,
    bar: ShmBarrier,
}

/// What ends a worker early: a violation or a hang.
enum Stop {
    Violation(String),
    Hang(String),
}

type Step = Result<(), Stop>;

fn attach<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, i32> {
    r.map_err(|e| {
        eprintln!("sync worker: attach {what}: {e}");
        exit::ATTACH
    })
}

/// A sync worker process.
pub fn worker() -> i32 {
    match worker_inner() {
        Ok(c) | Err(c) => c,
    }
}

fn worker_inner() -> Result<i32, i32> {
    let id = env_u64("DRAGON_STRESS_ID");
    let dir = PathBuf::from(env("DRAGON_STRESS_DIR"));
    let me = u64::from(std::process::id());
    let tmp = dir.join(format!("tmp-{me}"));
    crate::write_private(&tmp, me.to_string()).expect("marker source");
    let stop = attach("stop event", ShmEvent::attach_text(&env("DRAGON_STRESS_STOP")))?;
    let mut w = W {
        me,
        words: Words::open(&dir.join("words")),
        own: Words::open(&dir.join(format!("w{id}"))),
        odlog: crate::private_file().create(true).append(true).open(dir.join(format!("od{id}"))).expect("od log"),
        counts: [0; COUNTERS.len()],
        dir,
        tmp,
        rng: Rng::derive(env_u64("DRAGON_STRESS_SEED"), 0x5000_0000 + id),
        lock: attach("lock", ShmLock::attach_text(&env("DRAGON_STRESS_LOCK")))?,
        rlock: attach("rlock", ShmRLock::attach_text(&env("DRAGON_STRESS_RLOCK")))?,
        sem: attach("semaphore", ShmSemaphore::attach_text(&env("DRAGON_STRESS_SEM")))?,
        ev: attach("event", ShmEvent::attach_text(&env("DRAGON_STRESS_EVENT")))?,
        cond: attach("condition", ShmCondition::attach_text(&env("DRAGON_STRESS_COND")))?,
        clock: attach("condition lock", ShmLock::attach_text(&env("DRAGON_STRESS_CLOCK")))?,
        bar: attach("barrier", ShmBarrier::attach_text(&env("DRAGON_STRESS_BARRIER")))?,
    };
    let mut n = 0u64;
    while !stop.is_set() {
        let r = match w.rng.below(100) {
            0..=24 => w.lock_op(),
            25..=39 => w.rlock_op(),
            40..=54 => w.sem_op(),
            55..=64 => w.event_op(),
            65..=89 => w.cond_op(),
            _ => w.barrier_op(),
        };
        n += 1;
        if n % 16 == 0 {
            w.save_counts();
        }
        match r {
            Ok(()) => {}
            Err(Stop::Violation(m)) => {
                eprintln!("sync worker {id} (pid {me}): {m}");
                return Ok(exit::VIOLATION);
            }
            Err(Stop::Hang(m)) => {
                eprintln!("sync worker {id} (pid {me}): {m}");
                return Ok(exit::HANG);
            }
        }
    }
    w.save_counts();
    let _ = std::fs::remove_file(&w.tmp);
    Ok(exit::OK)
}

impl W {
    fn save_counts(&self) {
        for (i, &c) in self.counts.iter().enumerate() {
            self.own.set(1 + i as u64, c);
        }
    }
    fn bump(&mut self, name: &str) {
        let i = COUNTERS.iter().position(|&c| c == name).expect("counter");
        self.counts[i] += 1;
    }

    /// A little work inside a critical section: yield, spin or sleep.
    fn work(&mut self) {
        match self.rng.below(4) {
            0 => std::thread::yield_now(),
            1 => std::thread::sleep(Duration::from_micros(self.rng.below(2000))),
            _ => {
                let mut x = self.rng.next_u64();
                for _ in 0..self.rng.below(2000) {
                    x = x.rotate_left(7) ^ 0x55;
                }
                std::hint::black_box(x);
            }
        }
    }

    /// Entering a critical section guarded by holder word `i`.
    fn enter(&mut self, i: u64, how: Acquired, kind: u32) -> Step {
        let h = self.words.get(i);
        match how {
            Acquired::OwnerDied { pid } => {
                self.odlog.write_all(&record(kind, pid, 0)).expect("od log");
                if h != 0 && h != u64::from(pid) {
                    return Err(Stop::Violation(format!(
                        "lock {kind}: took over from dead pid {pid}, but pid {h} is inside"
                    )));
                }
            }
            Acquired::Normal if h != 0 => {
                return Err(Stop::Violation(format!("lock {kind}: acquired normally while pid {h} is inside")));
            }
            Acquired::Normal => {}
        }
        self.words.set(i, self.me);
        Ok(())
    }

    fn leave(&mut self, i: u64, kind: u32) -> Step {
        let h = self.words.get(i);
        if h != self.me {
            return Err(Stop::Violation(format!("lock {kind}: pid {h} entered while this process held the lock")));
        }
        self.words.set(i, 0);
        Ok(())
    }

    fn acquire_lock(&self, lock: &ShmLock, what: &str) -> Result<Acquired, Stop> {
        match lock.acquire(Some(LOCK_LIMIT)) {
            Ok(a) => Ok(a),
            Err(e) => Err(Stop::Hang(format!("{what} acquire: {e} after {LOCK_LIMIT:?}"))),
        }
    }

    fn lock_op(&mut self) -> Step {
        let a = self.acquire_lock(&self.lock, "lock")?;
        self.enter(W_LOCK, a, OD_LOCK)?;
        self.work();
        self.leave(W_LOCK, OD_LOCK)?;
        self.lock.release().map_err(|e| Stop::Violation(format!("lock release: {e}")))?;
        self.bump("lock_ops");
        Ok(())
    }

    fn rlock_op(&mut self) -> Step {
        let depth = 1 + self.rng.below(3) as u32;
        let first = self.rlock.acquire(Some(LOCK_LIMIT)).map_err(|e| Stop::Hang(format!("rlock acquire: {e}")))?;
        self.enter(W_RLOCK, first, OD_RLOCK)?;
        for k in 2..=depth {
            match self.rlock.acquire(Some(Duration::ZERO)) {
                Ok(Acquired::Normal) => {}
                other => return Err(Stop::Violation(format!("rlock re-acquire {k} by its owner: {other:?}"))),
            }
        }
        if !self.rlock.is_mine() || self.rlock.count() != depth {
            return Err(Stop::Violation(format!(
                "rlock: held {depth} times, but is_mine {} count {}",
                self.rlock.is_mine(),
                self.rlock.count()
            )));
        }
        self.work();
        for _ in 1..depth {
            self.rlock.release().map_err(|e| Stop::Violation(format!("rlock inner release: {e}")))?;
        }
        self.leave(W_RLOCK, OD_RLOCK)?;
        self.rlock.release().map_err(|e| Stop::Violation(format!("rlock release: {e}")))?;
        self.bump("rlock_ops");
        Ok(())
    }

    fn sem_op(&mut self) -> Step {
        let timeout = Duration::from_millis(500);
        self.own.set(0, SEM_ACQUIRING);
        let t = Instant::now();
        match self.sem.acquire(Some(timeout)) {
            Ok(()) => {}
            Err(WaitError::TimedOut) => {
                self.own.set(0, SEM_IDLE);
                self.bump("sem_timeouts");
                return overran("semaphore acquire", t, timeout);
            }
            Err(e) => return Err(Stop::Violation(format!("semaphore acquire: {e}"))),
        }
        self.own.set(0, SEM_HOLDING);
        let Some(i) = (0..SEM_UNITS).find(|&i| std::fs::hard_link(&self.tmp, sem_marker(&self.dir, i)).is_ok()) else {
            let holders: Vec<String> =
                (0..SEM_UNITS).map(|i| std::fs::read_to_string(sem_marker(&self.dir, i)).unwrap_or_default()).collect();
            return Err(Stop::Violation(format!(
                "semaphore of {SEM_UNITS} units: holding one while {holders:?} hold every marker"
            )));
        };
        self.work();
        std::fs::remove_file(sem_marker(&self.dir, i)).expect("remove marker");
        self.own.set(0, SEM_RELEASING);
        self.sem.release().map_err(|e| Stop::Violation(format!("semaphore release: {e}")))?;
        self.own.set(0, SEM_IDLE);
        self.bump("sem_ops");
        Ok(())
    }

    fn event_op(&mut self) -> Step {
        if self.rng.percent(40) {
            self.ev.set();
            std::thread::sleep(Duration::from_micros(self.rng.below(500)));
            self.ev.clear();
        } else {
            let timeout = Duration::from_millis(self.rng.range(1, 100));
            let t = Instant::now();
            let _ = self.ev.wait(Some(timeout));
            overran("event wait", t, timeout)?;
        }
        self.bump("event_ops");
        Ok(())
    }

    fn cond_op(&mut self) -> Step {
        let a = self.acquire_lock(&self.clock, "condition lock")?;
        self.enter(W_CLOCK, a, OD_CLOCK)?;
        let items = self.words.get(W_ITEMS);
        if self.rng.percent(50) {
            if items < 64 {
                self.words.set(W_ITEMS, items + 1);
                self.cond.notify(1);
                self.bump("cond_puts");
            }
        } else {
            if items == 0 {
                let timeout = Duration::from_millis(self.rng.range(1, 200));
                self.words.set(W_CLOCK, 0);
                let t = Instant::now();
                let r = self.cond.wait(&*self.clock, Some(timeout));
                let r = r.map_err(|e| Stop::Violation(format!("condition wait: {e:?}")))?;
                overran("condition wait", t, timeout + LOCK_LIMIT)?;
                self.enter(W_CLOCK, r.lock, OD_CLOCK)?;
                if !r.notified {
                    self.bump("cond_timeouts");
                }
            }
            let items = self.words.get(W_ITEMS);
            if items > 0 {
                self.words.set(W_ITEMS, items - 1);
                self.bump("cond_takes");
            }
        }
        self.leave(W_CLOCK, OD_CLOCK)?;
        self.clock.release().map_err(|e| Stop::Violation(format!("condition lock release: {e}")))?;
        Ok(())
    }

    fn barrier_op(&mut self) -> Step {
        let timeout = Duration::from_millis(self.rng.range(5, 300));
        let t = Instant::now();
        match self.bar.wait(Some(timeout)) {
            Ok(i) if i < self.bar.parties() => self.bump("barrier_passed"),
            Ok(i) => return Err(Stop::Violation(format!("barrier wait returned index {i}"))),
            Err(BarrierError::Broken) | Err(BarrierError::TimedOut) => {
                self.bump("barrier_broken");
                if self.bar.broken() {
                    self.bar.reset();
                }
            }
            Err(e) => return Err(Stop::Violation(format!("barrier wait: {e:?}"))),
        }
        overran("barrier wait", t, timeout)
    }
}

fn overran(what: &str, t: Instant, timeout: Duration) -> Step {
    let took = t.elapsed();
    if took > timeout + SLACK {
        return Err(Stop::Hang(format!("{what} with timeout {timeout:?} took {took:?}")));
    }
    Ok(())
}

// ---- the run ------------------------------------------------------------------------

/// Run the scenario.
pub fn run(opts: &Opts, sum: &mut Summary) {
    let mut rng = Rng::new(opts.seed);
    let dir = WorkDir::new("sync");
    let pids = Pids::default();
    crate::run_watchdog("sync", opts.seed, pids.clone(), dir.0.clone(), opts.duration + Duration::from_secs(120));
    let words = Words::open(&dir.file("words"));
    let lock = ShmLock::create().expect("lock");
    let rlock = ShmRLock::create().expect("rlock");
    let sem = ShmSemaphore::create(SEM_UNITS, Some(SEM_UNITS)).expect("semaphore");
    let ev = ShmEvent::create().expect("event");
    let stop = ShmEvent::create().expect("stop event");
    let cond = ShmCondition::create().expect("condition");
    let clock = ShmLock::create().expect("condition lock");
    let bar = ShmBarrier::create(2).expect("barrier");
    let vars = vec![
        ("DRAGON_STRESS_SEED", opts.seed.to_string()),
        ("DRAGON_STRESS_DIR", dir.0.display().to_string()),
        ("DRAGON_STRESS_STOP", stop.handle().to_text()),
        ("DRAGON_STRESS_LOCK", lock.handle().to_text()),
        ("DRAGON_STRESS_RLOCK", rlock.handle().to_text()),
        ("DRAGON_STRESS_SEM", sem.handle().to_text()),
        ("DRAGON_STRESS_EVENT", ev.handle().to_text()),
        ("DRAGON_STRESS_COND", cond.handle().to_text()),
        ("DRAGON_STRESS_CLOCK", clock.handle().to_text()),
        ("DRAGON_STRESS_BARRIER", bar.handle().to_text()),
    ];
    let mut next = 0u64;
    let mut spawn = || {
        next += 1;
        Worker::spawn(&pids, "locker", next - 1, &vars)
    };
    let mut workers: Vec<Worker> = (0..opts.workers.max(2)).map(|_| spawn()).collect();
    let mut done: Vec<Worker> = Vec::new();
    let mut killed_pids = HashSet::new();
    let (mut ambiguous, mut repaired) = (0u64, 0u64);
    // After a worker is killed: give back a semaphore unit it surely held.
    let mut repair = |w: &Worker, sum: &mut Summary| {
        match Words::open(&dir.file(&format!("w{}", w.id))).get(0) {
            SEM_HOLDING => {
                for i in 0..SEM_UNITS {
                    let m = sem_marker(&dir.0, i);
                    if std::fs::read_to_string(&m).ok().as_deref() == Some(&w.pid().to_string()) {
                        let _ = std::fs::remove_file(&m);
                    }
                }
                if let Err(e) = sem.release() {
                    sum.violation(format!("giving back the unit of killed pid {}: {e}", w.pid()));
                }
                repaired += 1;
            }
            SEM_ACQUIRING | SEM_RELEASING => ambiguous += 1,
            _ => {}
        }
        let _ = std::fs::remove_file(dir.file(&format!("tmp-{}", w.pid())));
    };
    let end = Instant::now() + opts.duration;
    let (mut kills, mut aimed) = (0u64, 0u64);
    while Instant::now() < end && opts.iterations.map_or(true, |n| kills < n) {
        let at = Instant::now() + rng.around(opts.kill_every);
        while Instant::now() < at {
            nap(at, Duration::from_millis(5));
            replace_ended(&mut workers, &mut done, sum, |_| spawn());
        }
        // Half the kills aim at a process inside a critical section (a
        // lock's holder word, or a semaphore marker), the rest at anyone.
        let target = if rng.percent(50) {
            let mut inside: Vec<u64> = [W_LOCK, W_RLOCK, W_CLOCK].iter().map(|&w| words.get(w)).collect();
            for i in 0..SEM_UNITS {
                let m = std::fs::read_to_string(sem_marker(&dir.0, i)).ok().and_then(|s| s.parse().ok());
                inside.push(m.unwrap_or(0));
            }
            let found: Vec<usize> =
                (0..workers.len()).filter(|&i| inside.contains(&u64::from(workers[i].pid()))).collect();
            (!found.is_empty()).then(|| found[rng.below(found.len() as u64) as usize])
        } else {
            None
        };
        if target.is_some() {
            aimed += 1;
        }
        let i = target.unwrap_or_else(|| rng.below(workers.len() as u64) as usize);
        let mut w = workers.swap_remove(i);
        w.kill();
        kills += 1;
        killed_pids.insert(w.pid());
        repair(&w, sum);
        done.push(w);
        workers.push(spawn());
    }
    stop.set();
    let deadline = Instant::now() + Duration::from_secs(60);
    for mut w in workers.drain(..) {
        if !w.wait_until(deadline) {
            sum.violation(format!("locker {} (pid {}) did not stop within 60 s", w.id, w.pid()));
            w.kill();
            killed_pids.insert(w.pid());
            repair(&w, sum);
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
    // Every owner-died report names a process the chaos killed.
    let mut owner_died = 0u64;
    for w in &done {
        match parse_records(&read_all(&dir.file(&format!("od{}", w.id)))) {
            Ok(recs) => {
                for (kind, pid, _) in recs {
                    owner_died += 1;
                    if !killed_pids.contains(&pid) {
                        sum.violation(format!("lock {kind}: owner-died reported for pid {pid}, which was not killed"));
                    }
                }
            }
            Err(e) => sum.violation(format!("owner-died log of locker {}: {e}", w.id)),
        }
        let own = Words::open(&dir.file(&format!("w{}", w.id)));
        for (i, name) in COUNTERS.iter().enumerate() {
            sum.add(name, own.get(1 + i as u64));
        }
    }
    // Every lock comes back; one a killed worker held says so.
    let dead = |pid: u32| killed_pids.contains(&pid) || !ProcessId::pid_only(pid).is_alive();
    for (name, word, l) in [("lock", W_LOCK, &lock), ("condition lock", W_CLOCK, &clock)] {
        match l.acquire(Some(Duration::from_secs(5))) {
            Ok(a) => {
                let h = words.get(word);
                match a {
                    Acquired::OwnerDied { pid } if !killed_pids.contains(&pid) => {
                        sum.violation(format!("{name}: owner-died for pid {pid}, which was not killed"))
                    }
                    Acquired::Normal if h != 0 => sum.violation(format!("{name}: free, but pid {h} is inside")),
                    _ if h != 0 && !dead(h as u32) => sum.violation(format!("{name}: live pid {h} is inside")),
                    _ => {}
                }
                let _ = l.release();
            }
            Err(e) => sum.violation(format!("{name}: the parent could not acquire it at the end: {e}")),
        }
    }
    match rlock.acquire(Some(Duration::from_secs(5))) {
        Ok(a) => {
            if let Acquired::OwnerDied { pid } = a {
                if !killed_pids.contains(&pid) {
                    sum.violation(format!("rlock: owner-died for pid {pid}, which was not killed"));
                }
            }
            let _ = rlock.release();
        }
        Err(e) => sum.violation(format!("rlock: the parent could not acquire it at the end: {e}")),
    }
    // Semaphore units: only workers killed inside acquire/release may have
    // taken one with them.
    let value = sem.value();
    let lost = u64::from(SEM_UNITS.saturating_sub(value));
    if value > SEM_UNITS || lost > ambiguous {
        sum.violation(format!(
            "semaphore value {value} of {SEM_UNITS} at the end; only {ambiguous} workers died inside acquire/release"
        ));
    }
    for i in 0..SEM_UNITS {
        if sem_marker(&dir.0, i).exists() {
            sum.violation(format!("semaphore marker {i} left by a holder that is gone"));
        }
    }
    for o in [lock.destroy(), rlock.destroy(), sem.destroy(), ev.destroy(), stop.destroy(), cond.destroy()] {
        if let Err(e) = o {
            sum.violation(format!("destroy: {e}"));
        }
    }
    if let Err(e) = clock.destroy().and(bar.destroy()) {
        sum.violation(format!("destroy: {e}"));
    }
    crate::check_no_shm_left(sum);
    sum.started = next;
    sum.killed = kills;
    sum.count("kills_aimed_at_holders", aimed);
    sum.count("owner_died_takeovers", owner_died);
    sum.count("sem_units_given_back", repaired);
    sum.count("sem_units_lost", lost);
    sum.count("items_left", words.get(W_ITEMS));
}
