//! Helpers for the multi-process tests of the synchronisation objects.
//!
//! A test spawns children by re-running its own test binary with
//! `--ignored --exact child_entry` and the role in [`ROLE_ENV`]; the
//! binary's `child_entry` test (ignored, so a normal run neither runs nor
//! counts it) runs the role and exits with its status. Children are killed and
//! reaped when their [`Child`] guard drops, die with their parent
//! (`PR_SET_PDEATHSIG`), and every wait has a deadline, so a hang fails the
//! test instead of stalling the suite. [`watchdog`] aborts a test binary
//! that hangs anyway, after removing its run's segments.
#![allow(dead_code)]

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};
use transport_shm::segment::{cleanup_run, RunId, Segment};

/// Environment variable naming the role a re-executed test binary plays.
pub const ROLE_ENV: &str = "DRAGON_SYNC_TEST_ROLE";

/// Longest any child may run before the test fails.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// Longest a whole test binary may run before its watchdog aborts it.
pub const BINARY_DEADLINE: Duration = Duration::from_secs(300);

/// Environment variable carrying the parent's pid to children.
const PARENT_ENV: &str = "DRAGON_SYNC_TEST_PARENT";

/// Start (once per process) a thread that aborts the test binary if it is
/// still running after [`BINARY_DEADLINE`], removing the segments of its
/// run first. Every test calls this first.
pub fn watchdog() {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(BINARY_DEADLINE);
            eprintln!("watchdog: test binary still running after {BINARY_DEADLINE:?}; aborting");
            let run = RunId::current();
            if run.owner().pid == std::process::id() {
                cleanup_run(run);
            }
            std::process::abort();
        });
    });
}

/// If this process is a child, run its role and exit; otherwise return.
pub fn child_entry(run: fn(&str) -> i32) {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        // Die with the parent, so an aborted test leaves no stray children.
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) != Some(parent) {
            // The parent died before the prctl took effect.
            std::process::exit(2);
        }
        let code = run(&role);
        std::process::exit(code);
    }
}

/// A value passed to a child through its environment.
pub fn arg(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child started without {name}"))
}

/// A child process running a role; killed and reaped on drop.
pub struct Child {
    child: std::process::Child,
    reaped: Option<ExitStatus>,
}

impl Child {
    /// Re-run this test binary as a child playing `role`, with `env`.
    pub fn spawn(role: &str, env: &[(&str, String)]) -> Child {
        // The run id reaches children through the environment.
        let _ = RunId::current();
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args(["--ignored", "--exact", "child_entry", "--nocapture", "--test-threads", "1", "-q"])
            .env(ROLE_ENV, role)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Child { child: cmd.spawn().expect("spawn child"), reaped: None }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the child to exit (at most [`CHILD_DEADLINE`]).
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.reaped {
            return s;
        }
        let end = Instant::now() + CHILD_DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.reaped = Some(s);
                    return s;
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = self.child.kill();
                    panic!("child {} did not finish within {:?}", self.child.id(), CHILD_DEADLINE);
                }
                Err(e) => panic!("waiting for child: {e}"),
            }
        }
    }

    /// Wait and require a zero exit status.
    pub fn expect_success(&mut self) {
        let s = self.wait();
        assert!(s.success(), "child {} failed: {s:?}", self.child.id());
    }

    /// Send SIGKILL without reaping (the child stays a zombie until
    /// [`Child::wait`] or drop).
    pub fn kill_no_reap(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped
        // child, so it cannot have been reused.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Wait for the child and check it was killed by SIGKILL.
    pub fn expect_killed(&mut self) {
        let s = self.wait();
        assert_eq!(s.signal(), Some(libc::SIGKILL), "child {} was not killed: {s:?}", self.child.id());
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scratch shared-memory segment (counters, flags), unlinked on drop.
pub struct Scratch {
    pub seg: Segment,
    owner: bool,
}

impl Scratch {
    /// A new zeroed page in the current run.
    pub fn create() -> Scratch {
        let name = RunId::current().segment_name("t");
        Scratch { seg: Segment::create(&name, 4096).expect("scratch segment"), owner: true }
    }

    /// Map a scratch segment created by another process.
    pub fn open(name: &str) -> Scratch {
        Scratch { seg: Segment::open(name).expect("open scratch segment"), owner: false }
    }

    /// The segment's name.
    pub fn name(&self) -> String {
        self.seg.name().to_owned()
    }

    /// The `i`-th 64-bit word.
    fn word(&self, i: usize) -> *mut u64 {
        use channels_core::region::Region;
        assert!((i + 1) * 8 <= self.seg.len());
        // SAFETY: in bounds (checked above) and 8-byte aligned (the mapping
        // is page aligned).
        unsafe { self.seg.base().as_ptr().cast::<u64>().add(i) }
    }

    /// Read word `i` (volatile: other processes write it).
    pub fn get(&self, i: usize) -> u64 {
        // SAFETY: see `word`; callers order accesses with the objects under
        // test, which is what these tests check.
        unsafe { self.word(i).read_volatile() }
    }

    /// Write word `i`.
    pub fn set(&self, i: usize, v: u64) {
        // SAFETY: see `get`.
        unsafe { self.word(i).write_volatile(v) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.seg.unlink();
        }
    }
}

/// Whether a segment name still exists in /dev/shm.
pub fn exists(name: &str) -> bool {
    std::path::Path::new(transport_shm::segment::SHM_DIR).join(name).exists()
}

/// Poll `f` until it is true or `timeout` passes; returns the last value.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Unlinks the segments of the given handles on drop, so a failing test
/// leaves nothing in /dev/shm either.
pub struct Unlink(Vec<String>);

impl Unlink {
    /// Guard the segments of `handles`.
    pub fn of(handles: &[&channels_core::handle::Handle]) -> Unlink {
        Unlink(handles.iter().map(|h| h.segment.clone()).collect())
    }
}

impl Drop for Unlink {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = transport_shm::segment::unlink(name);
        }
    }
}
