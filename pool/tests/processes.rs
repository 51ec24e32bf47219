//! The worker pool with real processes: this binary is its own worker
//! (`main` calls `serve_if_worker` first), so it has no libtest harness; each
//! test runs under the binary's watchdog, and nothing waits for a time:
//! tests wait for events (a file, a pid gone) under generous deadlines.
use pool::{Functions, Pool, PoolError, PoolOptions, TaskError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use test_support::{eventually, watchdog, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);

fn square(arg: &[u8]) -> Result<Vec<u8>, String> {
    let x = u64::from_le_bytes(arg.try_into().map_err(|_| format!("8 bytes expected, got {}", arg.len()))?);
    Ok((x * x).to_le_bytes().to_vec())
}

fn echo(arg: &[u8]) -> Result<Vec<u8>, String> {
    Ok(arg.to_vec())
}

fn fail(arg: &[u8]) -> Result<Vec<u8>, String> {
    Err(format!("refused {}", String::from_utf8_lossy(arg)))
}

fn panics(_: &[u8]) -> Result<Vec<u8>, String> {
    panic!("on purpose")
}

/// Write this worker's pid to the file the argument names, then wait
/// forever (until killed).
fn hang(arg: &[u8]) -> Result<Vec<u8>, String> {
    let path = PathBuf::from(String::from_utf8_lossy(arg).into_owned());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, std::process::id().to_string()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}

fn funcs() -> Functions {
    Functions::new()
        .register("square", square)
        .register("echo", echo)
        .register("fail", fail)
        .register("panics", panics)
        .register("hang", hang)
}

fn n(x: u64) -> [u8; 8] {
    x.to_le_bytes()
}

fn alive(pid: u32) -> bool {
    shm_primitives::ProcessId::pid_only(pid).is_alive()
}

/// Segments of this run in /dev/shm.
fn run_files() -> Vec<String> {
    let prefix = transport_shm::RunId::current().prefix();
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| f.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// Wait for the file `hang` writes; the pid in it.
fn pid_in(path: &Path) -> u32 {
    assert!(eventually(DEADLINE, || path.exists()), "no worker wrote {}", path.display());
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

fn kill9(pid: u32) {
    let st = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

fn map_runs_every_task_and_routes_results() {
    let pool = Pool::new(&funcs(), 3).unwrap();
    assert_eq!(pool.size(), 3);
    let inputs: Vec<[u8; 8]> = (0..200).map(n).collect();
    let out = pool.map("square", &inputs).unwrap();
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.as_deref(), Ok(&n((i * i) as u64)[..]), "task {i}");
    }
    // Each task its own outcome.
    let mixed = pool.map("square", [&n(3)[..], b"bad", &n(4)[..]]).unwrap();
    assert_eq!(mixed[0].as_deref(), Ok(&n(9)[..]));
    assert_eq!(mixed[1], Err(TaskError::Failed("8 bytes expected, got 3".into())));
    assert_eq!(mixed[2].as_deref(), Ok(&n(16)[..]));
    let h = pool.submit("fail", b"this").unwrap();
    assert_eq!(h.wait(), Err(TaskError::Failed("refused this".into())));
    match pool.submit("panics", b"").unwrap().wait() {
        Err(TaskError::Failed(m)) => assert!(m.contains("panicked: on purpose"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Larger than a ring slot, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    assert_eq!(pool.submit("echo", &big).unwrap().wait(), Ok(big));
    assert!(matches!(pool.submit("nope", b""), Err(PoolError::UnknownFunction(n)) if n == "nope"));
    assert!(matches!(Pool::new(&funcs(), 0), Err(PoolError::BadWorkerCount(0))));
    // Three workers took the tasks; none died.
    assert_eq!(pool.worker_pids().len(), 3);
    pool.close();
}

fn killed_worker_loses_its_task_only_and_is_replaced() {
    let dir = TempDir::create("pool-kill");
    let pool = Pool::new(&funcs(), 2).unwrap();
    let marker = dir.path().join("pid");
    let h = pool.submit("hang", marker.to_str().unwrap().as_bytes()).unwrap();
    let pid = pid_in(&marker);
    // Other tasks run meanwhile, on the other worker.
    let before: Vec<[u8; 8]> = (0..20).map(n).collect();
    assert!(pool.map("square", &before).unwrap().iter().all(Result::is_ok));
    kill9(pid);
    assert_eq!(h.wait(), Err(TaskError::WorkerLost { pid: Some(pid), how: "was killed by SIGKILL".into() }));
    // A replacement takes the dead worker's place.
    assert!(eventually(DEADLINE, || {
        let pids = pool.worker_pids();
        pids.len() == 2 && !pids.contains(&pid)
    }));
    let after = pool.map("square", &before).unwrap();
    for (i, r) in after.iter().enumerate() {
        assert_eq!(r.as_deref(), Ok(&n((i * i) as u64)[..]));
    }
    pool.close();
}

fn dropping_stops_workers_and_leaves_no_shared_memory() {
    let dir = TempDir::create("pool-drop");
    let files = run_files();
    let pool = Pool::new(&funcs(), 2).unwrap();
    assert!(run_files().len() > files.len());
    let marker = dir.path().join("pid");
    let h = pool.submit("hang", marker.to_str().unwrap().as_bytes()).unwrap();
    let hung = pid_in(&marker);
    let pids = pool.worker_pids();
    drop(pool);
    // The hanging task's worker was stopped with the others.
    assert_eq!(h.wait(), Err(TaskError::Closed));
    for pid in pids.iter().chain([&hung]) {
        assert!(!alive(*pid), "worker {pid} outlived its pool");
    }
    assert_eq!(run_files(), files);
}

fn close_finishes_submitted_tasks() {
    let files = run_files();
    let pool = Pool::new(&funcs(), 2).unwrap();
    let hs: Vec<_> = (0..30).map(|i| pool.submit("square", &n(i)).unwrap()).collect();
    let pids = pool.worker_pids();
    pool.close();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.wait().as_deref(), Ok(&n((i * i) as u64)[..]));
    }
    for pid in pids {
        assert!(!alive(pid));
    }
    assert_eq!(run_files(), files);
}

fn workers_that_cannot_start_break_the_pool() {
    let files = run_files();
    let opts = PoolOptions::new(2).worker_args(["--fail-start"]);
    let pool = Pool::with_options(&funcs(), opts).unwrap();
    let out = pool.map("square", [n(1), n(2), n(3)]).unwrap();
    for r in out {
        match r {
            Err(TaskError::Broken(why)) => assert!(why.contains("exited with code 3"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    drop(pool);
    assert_eq!(run_files(), files);
}

/// A process that makes a pool, writes its workers' pids, and waits to be
/// killed.
fn owner_role(out: &str) {
    let pool = Pool::new(&funcs(), 2).unwrap();
    let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    std::fs::write(format!("{out}.tmp"), pids.join(" ")).unwrap();
    std::fs::rename(format!("{out}.tmp"), out).unwrap();
    loop {
        std::thread::park();
    }
}

fn workers_exit_when_their_owner_is_killed() {
    let dir = TempDir::create("pool-owner");
    let out = dir.path().join("pids");
    let mut owner =
        Command::new(std::env::current_exe().unwrap()).args(["--owner", out.to_str().unwrap()]).spawn().unwrap();
    assert!(eventually(DEADLINE, || out.exists()));
    let pids: Vec<u32> = std::fs::read_to_string(&out).unwrap().split(' ').map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    owner.kill().unwrap();
    owner.wait().unwrap();
    // Orphaned workers are reaped by init; they notice the owner is gone.
    assert!(eventually(DEADLINE, || pids.iter().all(|p| !alive(*p))), "workers outlived their owner");
    // The owner could not clean up: remove its run's files (its run id is ours).
    let _ = transport_shm::segment::cleanup_run(transport_shm::RunId::current());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--fail-start") {
        std::process::exit(3);
    }
    if std::env::var_os(pool::WORKER_ENV).is_some() {
        // The `panics` task panics on purpose: no message on the test's
        // output for it (the result says it).
        std::panic::set_hook(Box::new(|_| {}));
    }
    funcs().serve_if_worker();
    if args.get(1).map(String::as_str) == Some("--owner") {
        owner_role(&args[2]);
    }
    watchdog::start();
    let tests: [(&str, fn()); 6] = [
        ("map_runs_every_task_and_routes_results", map_runs_every_task_and_routes_results),
        ("killed_worker_loses_its_task_only_and_is_replaced", killed_worker_loses_its_task_only_and_is_replaced),
        ("dropping_stops_workers_and_leaves_no_shared_memory", dropping_stops_workers_and_leaves_no_shared_memory),
        ("close_finishes_submitted_tasks", close_finishes_submitted_tasks),
        ("workers_that_cannot_start_break_the_pool", workers_that_cannot_start_break_the_pool),
        ("workers_exit_when_their_owner_is_killed", workers_exit_when_their_owner_is_killed),
    ];
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let mut ran = 0;
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        test();
        println!("ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed; 0 failed");
}
