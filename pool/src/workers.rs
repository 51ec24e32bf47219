//! A pool of worker processes for Rust programs.
//!
//! Workers are re-executions of the current program: the program calls
//! [`Functions::serve_if_worker`] at the top of `main`, which in a worker
//! (the environment says so: [`WORKER_ENV`]) runs the worker loop and
//! exits, and in the program itself returns at once. Tasks name a
//! registered function; arguments and results are bytes.
//!
//! Tasks travel on one shared-memory channel, results on another, in the
//! formats of [`crate::message`]; workers take tasks with [`crate::take`]
//! under a robust lock and record them in the [`crate::Ledger`], so a worker
//! that dies (`SIGKILL`, a crash) fails its task alone with
//! [`TaskError::WorkerLost`] and the pool starts a replacement. Workers
//! that die before they start, [`crate::MAX_START_FAILURES`] in a row, make
//! the pool broken: every task then fails with [`TaskError::Broken`].
use crate::ledger::{ended_how, take, Gap, Ledger, Taker};
use crate::message::{self, Kind, Lost, ResultHeader, TaskHeader};
use crate::slots::Slots;
use channels_core::{Channel, RecvTimeoutError, TryRecvError};
use shm_primitives::process::ProcessId;
use shm_primitives::sync::local::{AtomicBool, Ordering};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use sync_objects::WaitError;
use transport_shm::channel::{self, ChannelOptions};
use transport_shm::memblock::MemoryBlock;
use transport_shm::ShmLock;

/// Environment variable that makes a re-executed program a pool worker
/// (its value says which pool and slot).
pub const WORKER_ENV: &str = "DRAGON_POOL_WORKER";

/// A task function: the task's argument bytes in, result bytes or an error
/// message out.
pub type TaskFn = fn(&[u8]) -> Result<Vec<u8>, String>;

/// Ring slots of the task and result channels.
const CAPACITY: u64 = 1024;
/// Bytes per ring slot (larger messages go through the channel's blocks).
const SLOT_SIZE: usize = 256;
/// How often the owner looks for workers that exited.
const MONITOR_TICK: Duration = Duration::from_millis(10);
/// Most workers per pool (each is attached to the pool's channels).
pub const MAX_WORKERS: usize = 1000;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The functions tasks may name. Register the same ones in every process
/// (build the value the same way before [`Functions::serve_if_worker`]).
#[derive(Debug, Clone, Default)]
pub struct Functions {
    map: BTreeMap<String, TaskFn>,
}

impl Functions {
    /// No functions yet.
    pub fn new() -> Functions {
        Functions::default()
    }

    /// Register `f` as `name` (replacing a function of that name).
    pub fn register(mut self, name: &str, f: TaskFn) -> Functions {
        self.map.insert(name.to_owned(), f);
        self
    }

    /// The function registered as `name`.
    pub fn get(&self, name: &str) -> Option<TaskFn> {
        self.map.get(name).copied()
    }

    /// In a pool worker (started by a [`Pool`] of this program), run the
    /// worker loop and exit the process; otherwise return at once. Call it
    /// at the top of `main`, before anything else the workers should not do.
    pub fn serve_if_worker(&self) {
        let Ok(spec) = std::env::var(WORKER_ENV) else { return };
        let code = match serve(self, &spec) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pool worker {}: {e}", std::process::id());
                1
            }
        };
        std::process::exit(code);
    }
}

/// Why a task produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The function returned an error (or panicked): its message.
    Failed(String),
    /// The worker running the task died (the task is not run again).
    WorkerLost {
        /// The worker's pid (`None`: it died while taking the task, before
        /// it recorded which).
        pid: Option<u32>,
        /// How it ended ("was killed by SIGKILL", "exited with code 3").
        how: String,
    },
    /// The pool is broken (its workers die before they start): the task
    /// was not run.
    Broken(String),
    /// The pool was terminated before the task ran.
    Closed,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(m) => write!(f, "the task failed: {m}"),
            TaskError::WorkerLost { pid: Some(pid), how } => {
                write!(f, "pool worker process {pid} {how} while running this task (the task is not run again)")
            }
            TaskError::WorkerLost { pid: None, how: _ } => f.write_str(
                "a pool worker process died while taking this task from the pool's queue (the task is not run again)",
            ),
            TaskError::Broken(why) => write!(f, "the pool is broken: {why}"),
            TaskError::Closed => f.write_str("the pool was terminated before the task ran"),
        }
    }
}

impl std::error::Error for TaskError {}

/// Why a pool could not be made or a task not submitted.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// No function of that name is registered.
    UnknownFunction(String),
    /// Zero workers, or more than [`MAX_WORKERS`].
    BadWorkerCount(usize),
    /// Shared memory or a worker process could not be set up.
    Setup(String),
    /// The task could not be sent (the pool is closing).
    Closed,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::UnknownFunction(n) => write!(f, "no pool function is registered as {n:?}"),
            PoolError::BadWorkerCount(n) => {
                write!(f, "a pool has between 1 and {MAX_WORKERS} workers, not {n}")
            }
            PoolError::Setup(m) => write!(f, "pool set-up failed: {m}"),
            PoolError::Closed => f.write_str("the pool is closed"),
        }
    }
}

impl std::error::Error for PoolError {}

fn setup<E: fmt::Display>(what: &'static str) -> impl Fn(E) -> PoolError {
    move |e| PoolError::Setup(format!("{what}: {e}"))
}

/// How to start a pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    workers: usize,
    args: Vec<OsString>,
}

impl PoolOptions {
    /// `workers` workers, started as the current program without arguments.
    pub fn new(workers: usize) -> PoolOptions {
        PoolOptions { workers, args: Vec::new() }
    }

    /// Command-line arguments for the workers (for a program whose
    /// `main` needs some to reach [`Functions::serve_if_worker`]).
    pub fn worker_args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> PoolOptions {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
}

/// Where a result goes: the job's receiver and the task's index in it.
type Reply = (mpsc::Sender<(usize, Result<Vec<u8>, TaskError>)>, usize);

struct Worker {
    slot: usize,
    child: Child,
}

struct Procs {
    workers: Vec<Worker>,
    slots: Slots,
}

struct Shared {
    funcs: Functions,
    size: usize,
    tasks: Channel,
    results: Channel,
    lock: ShmLock,
    ledger: Ledger<MemoryBlock>,
    /// Next sequence number and job; held while a task is sent, so that
    /// tasks enter the ring in the order of their numbers.
    sender: Mutex<(i64, i64)>,
    pending: Mutex<HashMap<i64, Reply>>,
    procs: Mutex<Procs>,
    /// Why the pool is broken, once it is (apart from `procs`: the result
    /// thread reads it while the worker thread may wait to send holding
    /// `procs`).
    broken: Mutex<Option<String>>,
    exe: std::path::PathBuf,
    args: Vec<OsString>,
    owner: ProcessId,
    closing: AtomicBool,
    terminating: AtomicBool,
}

/// A pool of worker processes running registered functions.
///
/// Dropping it terminates the workers (tasks not yet done fail with
/// [`TaskError::Closed`]) and removes its shared memory; [`Pool::close`]
/// lets the tasks already submitted finish first.
pub struct Pool {
    shared: Arc<Shared>,
    monitor: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("workers", &self.shared.size).finish_non_exhaustive()
    }
}

/// A submitted task's result, to wait for.
#[derive(Debug)]
pub struct TaskHandle {
    rx: mpsc::Receiver<(usize, Result<Vec<u8>, TaskError>)>,
}

impl TaskHandle {
    /// Wait for the result.
    pub fn wait(self) -> Result<Vec<u8>, TaskError> {
        self.rx.recv().map_or(Err(TaskError::Closed), |(_, r)| r)
    }

    /// Wait at most `timeout`; `None` if the result has not come yet.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<Vec<u8>, TaskError>> {
        match self.rx.recv_timeout(timeout) {
            Ok((_, r)) => Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(TaskError::Closed)),
        }
    }
}

impl Pool {
    /// A pool of `workers` worker processes that run `funcs`.
    pub fn new(funcs: &Functions, workers: usize) -> Result<Pool, PoolError> {
        Pool::with_options(funcs, PoolOptions::new(workers))
    }

    /// A pool as `opts` says.
    pub fn with_options(funcs: &Functions, opts: PoolOptions) -> Result<Pool, PoolError> {
        let n = opts.workers;
        if n == 0 || n > MAX_WORKERS {
            return Err(PoolError::BadWorkerCount(n));
        }
        let exe = std::env::current_exe().map_err(setup("the current program's path"))?;
        let copts = ChannelOptions::new().capacity(CAPACITY.max(2 * n as u64 + 8)).slot_size(SLOT_SIZE);
        let tasks = channel::create(&copts).map_err(setup("task channel"))?;
        let results = match channel::create(&copts.clone().capacity(CAPACITY)) {
            Ok(r) => r,
            Err(e) => {
                tasks.destroy();
                return Err(setup("result channel")(e));
            }
        };
        let made = ShmLock::create().map_err(setup("task lock")).and_then(|l| {
            match MemoryBlock::create(8 * crate::ledger::words_for(n)) {
                Ok(b) => Ok((l, b)),
                Err(e) => {
                    let _ = l.destroy();
                    Err(setup("task ledger")(e))
                }
            }
        });
        let (lock, block) = match made {
            Ok(x) => x,
            Err(e) => {
                tasks.destroy();
                results.destroy();
                return Err(e);
            }
        };
        let ledger = Ledger::new(block, n).map_err(setup("task ledger"))?;
        ledger.init(0);
        let shared = Arc::new(Shared {
            funcs: funcs.clone(),
            size: n,
            tasks,
            results,
            lock,
            ledger,
            sender: Mutex::new((0, 0)),
            pending: Mutex::new(HashMap::new()),
            procs: Mutex::new(Procs { workers: Vec::new(), slots: Slots::new(n) }),
            broken: Mutex::new(None),
            exe,
            args: opts.args,
            owner: ProcessId::current(),
            closing: AtomicBool::new(false),
            terminating: AtomicBool::new(false),
        });
        let mut pool = Pool { shared: Arc::clone(&shared), monitor: None, receiver: None };
        // On an error, dropping `pool` removes what was made.
        shared.repopulate(&mut guard(&shared.procs))?;
        let s = Arc::clone(&shared);
        pool.receiver = Some(
            std::thread::Builder::new()
                .name("pool-results".into())
                .spawn(move || s.receive())
                .map_err(setup("result thread"))?,
        );
        let s = Arc::clone(&shared);
        pool.monitor = Some(
            std::thread::Builder::new()
                .name("pool-workers".into())
                .spawn(move || s.monitor())
                .map_err(setup("worker thread"))?,
        );
        Ok(pool)
    }

    /// Run `function` on `args` in a worker.
    pub fn submit(&self, function: &str, args: &[u8]) -> Result<TaskHandle, PoolError> {
        let (tx, rx) = mpsc::channel();
        self.shared.send_job(function, std::iter::once(args), tx)?;
        Ok(TaskHandle { rx })
    }

    /// Run `function` on each input, spread over the workers; the results
    /// in the order of the inputs, each its task's own.
    pub fn map<I, A>(&self, function: &str, inputs: I) -> Result<Vec<Result<Vec<u8>, TaskError>>, PoolError>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let (tx, rx) = mpsc::channel();
        let n = self.shared.send_job(function, inputs.into_iter(), tx)?;
        let mut out: Vec<Option<Result<Vec<u8>, TaskError>>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            match rx.recv() {
                Ok((i, r)) => out[i] = Some(r),
                Err(_) => break,
            }
        }
        Ok(out.into_iter().map(|r| r.unwrap_or(Err(TaskError::Closed))).collect())
    }

    /// Workers the pool keeps.
    pub fn size(&self) -> usize {
        self.shared.size
    }

    /// The pids of the workers alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        guard(&self.shared.procs).workers.iter().map(|w| w.child.id()).collect()
    }

    /// Let every task submitted so far finish, then stop the workers and
    /// remove the pool's shared memory.
    pub fn close(mut self) {
        self.stop(false);
    }

    /// Stop the workers now (tasks not done fail with
    /// [`TaskError::Closed`]) and remove the pool's shared memory; what
    /// dropping the pool does.
    pub fn terminate(mut self) {
        self.stop(true);
    }

    fn stop(&mut self, kill: bool) {
        let s = &self.shared;
        // Relaxed: a flag of this process; what it guards is ordered by the
        // mutexes and the thread joins below.
        if s.closing.swap(true, Ordering::Relaxed) {
            return;
        }
        if kill {
            // Relaxed: as above.
            s.terminating.store(true, Ordering::Relaxed);
            for w in guard(&s.procs).workers.iter_mut() {
                let _ = w.child.kill();
            }
        } else {
            let live = guard(&s.procs).workers.len();
            for _ in 0..live {
                let mut sender = guard(&s.sender);
                let seq = sender.0;
                if s.tasks.send(TaskHeader::stop(seq)).is_err() {
                    break;
                }
                sender.0 = seq + 1;
                s.ledger.publish_sent(seq + 1);
            }
        }
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        let _ = s.results.send([message::END]);
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
        for (_, (tx, i)) in guard(&s.pending).drain() {
            let _ = tx.send((i, Err(TaskError::Closed)));
        }
        s.tasks.destroy();
        s.results.destroy();
        let _ = s.lock.destroy();
        let _ = s.ledger.storage().unlink();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop(true);
    }
}

impl Shared {
    fn send_job<'a, I, A>(
        &self,
        function: &str,
        inputs: I,
        tx: mpsc::Sender<(usize, Result<Vec<u8>, TaskError>)>,
    ) -> Result<usize, PoolError>
    where
        I: Iterator<Item = A>,
        A: AsRef<[u8]> + 'a,
    {
        if self.funcs.get(function).is_none() {
            return Err(PoolError::UnknownFunction(function.to_owned()));
        }
        // Relaxed: a flag of this process.
        if self.closing.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let mut sender = guard(&self.sender);
        let job = sender.1;
        sender.1 += 1;
        let mut n = 0;
        for (i, args) in inputs.enumerate() {
            let seq = sender.0;
            let m = TaskHeader::message(seq, job, i as i64, Kind::Call, function.as_bytes(), args.as_ref());
            guard(&self.pending).insert(seq, (tx.clone(), i));
            if self.tasks.send(m).is_err() {
                guard(&self.pending).remove(&seq);
                return Err(PoolError::Closed);
            }
            sender.0 = seq + 1;
            // After the task is in the ring.
            self.ledger.publish_sent(seq + 1);
            n += 1;
        }
        Ok(n)
    }

    /// Start workers in the free slots.
    fn repopulate(&self, procs: &mut Procs) -> Result<(), PoolError> {
        while procs.workers.len() < self.size {
            let Some(slot) = procs.slots.take(Some(&self.ledger)) else { break };
            let spec = format!(
                "1 {} {} {} {} {} {} {} {}",
                self.tasks.handle().to_text(),
                self.results.handle().to_text(),
                self.lock.handle().to_text(),
                self.ledger.storage().handle().to_text(),
                self.size,
                slot,
                self.owner.pid,
                self.owner.start
            );
            let child =
                Command::new(&self.exe).args(&self.args).env(WORKER_ENV, spec).stdin(Stdio::null()).spawn().map_err(
                    |e| {
                        procs.slots.not_started(slot);
                        PoolError::Setup(format!("starting a worker process ({}): {e}", self.exe.display()))
                    },
                )?;
            procs.workers.push(Worker { slot, child });
        }
        Ok(())
    }

    /// The owner's worker thread: reaps workers that exited, reports their
    /// tasks lost, starts replacements, fails every task of a broken pool.
    fn monitor(&self) {
        loop {
            std::thread::sleep(MONITOR_TICK);
            let mut procs = guard(&self.procs);
            // Relaxed: flags of this process.
            let closing = self.closing.load(Ordering::Relaxed);
            let terminating = self.terminating.load(Ordering::Relaxed);
            let mut i = 0;
            while i < procs.workers.len() {
                let status = match procs.workers[i].child.try_wait() {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        i += 1;
                        continue;
                    }
                    Err(_) => match procs.workers[i].child.wait() {
                        Ok(s) => s,
                        Err(_) => {
                            i += 1;
                            continue;
                        }
                    },
                };
                let w = procs.workers.swap_remove(i);
                let code = status.code().map_or_else(|| -i64::from(status.signal().unwrap_or(0)), i64::from);
                if code != 0 && !closing {
                    eprintln!("pool worker process {} {}", w.child.id(), ended_how(code));
                }
                if let Some(n) = procs.slots.exited(&self.ledger, w.slot, i64::from(w.child.id()), code, !terminating) {
                    // Behind every result the worker sent.
                    let _ = self.results.send(n.encode());
                }
            }
            if closing {
                if procs.workers.is_empty() {
                    return;
                }
                continue;
            }
            let any_started = procs.workers.iter().any(|w| self.ledger.started(w.slot));
            let mut broken = guard(&self.broken);
            if broken.is_none() {
                if let Some(why) = procs.slots.broken(any_started, None) {
                    eprintln!("pool: {why}");
                    *broken = Some(why);
                }
            }
            if broken.is_some() {
                drop(broken);
                drop(procs);
                self.fail_waiting_tasks();
                continue;
            }
            drop(broken);
            if let Err(e) = self.repopulate(&mut procs) {
                eprintln!("pool: {e}");
            }
        }
    }

    /// A broken pool: take every task in the ring as a worker would and
    /// fail it, unrun.
    fn fail_waiting_tasks(&self) {
        if self.lock.acquire(Some(MONITOR_TICK)).is_err() {
            return;
        }
        let mut t = ChannelTaker { tasks: &self.tasks, results: &self.results, wait: false, interrupt: &mut || true };
        let mut taken = Vec::new();
        while let Ok(Some(m)) = take(&self.ledger, None, &mut t) {
            taken.push(m);
        }
        let _ = self.lock.release();
        for m in taken {
            if let Ok(h) = TaskHeader::decode(&m) {
                if h.kind != Kind::Stop {
                    let n = Lost { seq: h.seq, count: 1, pid: message::NOT_RUN_PID, exit_code: 0 };
                    let _ = self.results.send(n.encode());
                }
            }
        }
    }

    /// The owner's result thread: routes results and lost notices to
    /// their tasks until the end marker.
    fn receive(&self) {
        loop {
            let Ok(m) = self.results.recv() else { return };
            match m.first() {
                Some(&message::RESULT) => {
                    let Ok(h) = ResultHeader::decode(&m) else { continue };
                    let body = &m[message::RESULT_HEADER..];
                    let r = match body.split_first() {
                        Some((1, v)) => Ok(v.to_vec()),
                        Some((_, e)) => Err(TaskError::Failed(String::from_utf8_lossy(e).into_owned())),
                        None => Err(TaskError::Failed("an empty result message".into())),
                    };
                    if let Some((tx, i)) = guard(&self.pending).remove(&h.seq) {
                        let _ = tx.send((i, r));
                    }
                }
                Some(&message::LOST) => {
                    let Ok(n) = Lost::decode(&m) else { continue };
                    let broken = guard(&self.broken).clone();
                    let mut pending = guard(&self.pending);
                    for seq in n.seq..n.seq.saturating_add(n.count.max(0)) {
                        let Some((tx, i)) = pending.remove(&seq) else { continue };
                        let e = match n.pid {
                            message::NOT_RUN_PID => TaskError::Broken(broken.clone().unwrap_or_default()),
                            message::GAP_PID => TaskError::WorkerLost { pid: None, how: "died".into() },
                            pid => TaskError::WorkerLost { pid: u32::try_from(pid).ok(), how: ended_how(n.exit_code) },
                        };
                        let _ = tx.send((i, Err(e)));
                    }
                }
                Some(&message::END) => return,
                _ => {}
            }
        }
    }
}

/// [`Taker`] over the pool's channels: gaps go to the result channel.
struct ChannelTaker<'a> {
    tasks: &'a Channel,
    results: &'a Channel,
    /// Whether to wait for a task when the ring is empty.
    wait: bool,
    interrupt: &'a mut dyn FnMut() -> bool,
}

impl Taker for ChannelTaker<'_> {
    type Msg = Vec<u8>;
    type Error = String;

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.tasks.try_recv() {
            Ok(m) => Ok(Some(m.into_vec())),
            Err(TryRecvError::Empty) => Ok(None),
            Err(e) => Err(format!("the pool's task channel: {e}")),
        }
    }

    fn recv_wait(&mut self) -> Result<Option<Vec<u8>>, String> {
        if !self.wait {
            return Ok(None);
        }
        match self.tasks.recv_interruptible(None, self.interrupt) {
            Ok(m) => Ok(Some(m.into_vec())),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Interrupted) => Ok(None),
            Err(e) => Err(format!("the pool's task channel: {e}")),
        }
    }

    fn seq(&self, m: &Vec<u8>) -> Result<i64, String> {
        message::task_seq(m).map_err(|e| e.to_string())
    }

    fn report(&mut self, gap: Gap) -> Result<(), String> {
        self.results.send(gap.notice().encode()).map_err(|e| format!("the pool's result channel: {e}"))
    }
}

/// The worker loop (in a process started by a [`Pool`]).
fn serve(funcs: &Functions, spec: &str) -> Result<(), String> {
    let f: Vec<&str> = spec.split(' ').collect();
    if f.len() != 9 || f[0] != "1" {
        return Err(format!("{WORKER_ENV} is malformed: {spec:?}"));
    }
    let num = |s: &str| s.parse::<u64>().map_err(|_| format!("{WORKER_ENV} is malformed: {spec:?}"));
    let tasks = channel::attach_text(f[1]).map_err(|e| format!("attaching the task channel: {e}"))?;
    let results = channel::attach_text(f[2]).map_err(|e| format!("attaching the result channel: {e}"))?;
    let lock = ShmLock::attach_text(f[3]).map_err(|e| format!("attaching the task lock: {e}"))?;
    let handle = shm_primitives::Handle::from_text(f[4]).map_err(|e| format!("the ledger's handle: {e}"))?;
    let block = MemoryBlock::attach(&handle).map_err(|e| format!("attaching the task ledger: {e}"))?;
    let (slots, slot) = (num(f[5])? as usize, num(f[6])? as usize);
    let ledger = Ledger::new(block, slots).map_err(|e| e.to_string())?;
    if slot >= slots {
        return Err(format!("{WORKER_ENV} names slot {slot} of {slots}"));
    }
    let owner = ProcessId { pid: num(f[7])? as u32, start: num(f[8])? };
    let mut owner_alive = || owner.is_alive();
    ledger.mark_started(slot);
    loop {
        match lock.acquire_with(None, &mut owner_alive) {
            Ok(_) => {}
            Err(WaitError::Interrupted) => return Ok(()), // the owner is gone
            Err(e) => return Err(format!("taking the task lock: {e}")),
        }
        let mut t = ChannelTaker { tasks: &tasks, results: &results, wait: true, interrupt: &mut owner_alive };
        let got = take(&ledger, Some(slot), &mut t);
        let _ = lock.release();
        let Some(m) = got? else { return Ok(()) };
        let h = TaskHeader::decode(&m).map_err(|e| e.to_string())?;
        if h.kind == Kind::Stop {
            ledger.finish(slot);
            return Ok(());
        }
        let (name, args) = h.split(&m);
        let name = String::from_utf8_lossy(name);
        let r = match funcs.get(&name) {
            Some(f) => std::panic::catch_unwind(|| f(args)).unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(format!("the task panicked: {what}"))
            }),
            None => Err(format!("no pool function is registered as {name:?} in the worker")),
        };
        let head = ResultHeader { seq: h.seq, job: h.job, index: h.index }.encode();
        let (flag, body): (u8, &[u8]) = match &r {
            Ok(v) => (1, v),
            Err(e) => (0, e.as_bytes()),
        };
        results.send_parts(&[&head, &[flag], body], None).map_err(|e| format!("sending a result: {e:?}"))?;
        ledger.finish(slot);
    }
}
