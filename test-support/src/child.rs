//! Tests with real child processes: the test binary re-runs itself.
//!
//! A test binary defines an entry test (by convention `child_entry`),
//! marked `#[ignore]` so that a normal run neither runs nor counts it, that
//! calls [`entry`]. A test starts a child with [`Child::spawn`] (or
//! [`command`] and [`Child::start`] for more control): the child runs the
//! same binary with `--ignored --exact <entry test>` and the role in
//! [`ROLE_ENV`], and [`entry`] runs the role and exits with its status (run
//! without a role, as by `cargo test -- --ignored`, it returns at once).
//!
//! Children die with the thread that started them (`PR_SET_PDEATHSIG`; a
//! child whose parent died before that took effect exits at once), are
//! killed and reaped when their [`Child`] drops, are killed by the
//! [watchdog](crate::watchdog) of a hung binary, and every wait has a
//! deadline, so a hang fails the test instead of stalling the suite.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable naming the role a re-executed test binary plays.
pub const ROLE_ENV: &str = "DRAGON_TEST_ROLE";

/// Environment variable carrying the parent's pid to children.
pub const PARENT_ENV: &str = "DRAGON_TEST_PARENT";

/// Longest [`Child::wait`] waits before the test fails.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// Children started and not yet reaped (the watchdog kills them).
static LIVE: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<HashSet<u32>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kill every child not yet reaped (for the watchdog).
pub(crate) fn kill_all() {
    for &pid in live().iter().flatten() {
        // SAFETY: kill has no memory preconditions; the pids are our
        // unreaped children, so none can have been reused.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// The role this process plays if it is a child started by this module:
/// also makes it die with its parent (and exit at once if the parent has
/// died already). `None` in a normal test run.
pub fn role() -> Option<String> {
    let role = std::env::var(ROLE_ENV).ok()?;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    if std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) != Some(parent) {
        // The parent died before the prctl took effect.
        std::process::exit(2);
    }
    Some(role)
}

/// If this process is a child, run its role and exit with the status `run`
/// returns; otherwise return at once. Called by the binary's entry test.
pub fn entry(run: impl FnOnce(&str) -> i32) {
    if let Some(role) = role() {
        let code = run(&role);
        std::process::exit(code);
    }
}

/// A value passed to a child through its environment (panics, naming it,
/// if the child was started without it).
pub fn arg(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child started without {name}"))
}

/// A command that re-runs this test binary as a child playing `role`,
/// through the entry test `entry_test` (its full name, as `--exact` takes
/// it). Stdin and stdout are null, stderr is inherited; adjust and pass it
/// to [`Child::start`].
pub fn command(entry_test: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", entry_test, "--nocapture", "--test-threads", "1", "-q"])
        .env(ROLE_ENV, role)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// A child process; killed and reaped on drop.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    reaped: Option<ExitStatus>,
}

impl Child {
    /// Re-run this test binary as a child playing `role` (entry test
    /// `child_entry`), with `env` added to its environment.
    pub fn spawn(role: &str, env: &[(&str, String)]) -> Child {
        let mut cmd = command("child_entry", role);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Child::start(&mut cmd)
    }

    /// Start `cmd` (any program) as a child watched like the others.
    pub fn start(cmd: &mut Command) -> Child {
        let child = cmd.spawn().expect("spawn child");
        live().get_or_insert_with(HashSet::new).insert(child.id());
        Child { child, reaped: None }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout, if the command piped it (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stdin, if the command piped it (once).
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    fn reaped(&mut self, s: ExitStatus) -> ExitStatus {
        self.reaped = Some(s);
        if let Some(set) = live().as_mut() {
            set.remove(&self.child.id());
        }
        s
    }

    /// Whether the child has exited (reaping it if so), without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.reaped {
            return Some(s);
        }
        match self.child.try_wait() {
            Ok(Some(s)) => Some(self.reaped(s)),
            Ok(None) => None,
            Err(e) => panic!("waiting for child {}: {e}", self.child.id()),
        }
    }

    /// Wait for the child to exit, at most [`CHILD_DEADLINE`].
    pub fn wait(&mut self) -> ExitStatus {
        self.wait_for(CHILD_DEADLINE)
    }

    /// Wait for the child to exit, at most `limit`; past it the child is
    /// killed and the test fails.
    pub fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!("child {} did not finish within {limit:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Read the child's piped stdout to its end, then wait for it (the
    /// binary's watchdog bounds a child that never closes its stdout).
    pub fn output(&mut self) -> (ExitStatus, String) {
        let mut out = String::new();
        if let Some(mut s) = self.stdout() {
            s.read_to_string(&mut out).expect("read child stdout");
        }
        (self.wait(), out)
    }

    /// The lines of [`Child::output`].
    pub fn output_lines(&mut self) -> (ExitStatus, Vec<String>) {
        let (status, out) = self.output();
        (status, BufReader::new(out.as_bytes()).lines().map(|l| l.expect("utf-8 line")).collect())
    }

    /// Wait and require a zero exit status.
    pub fn expect_success(&mut self) {
        let s = self.wait();
        assert!(s.success(), "child {} failed: {s:?}", self.child.id());
    }

    /// Send SIGKILL without reaping (the child stays a zombie until
    /// [`Child::wait`] or drop, so its pid cannot be reused meanwhile).
    pub fn kill_no_reap(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        // SAFETY: kill has no memory preconditions; the pid is our unreaped
        // child, so it cannot have been reused.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Kill the child and reap it.
    pub fn kill(&mut self) -> ExitStatus {
        self.kill_no_reap();
        self.wait()
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
            if let Ok(s) = self.child.wait() {
                self.reaped(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = "child::tests::child_entry";

    #[test]
    #[ignore = "entry point of child processes"]
    fn child_entry() {
        entry(|role| match role {
            "exit7" => 7,
            "echo" => {
                println!("{}", arg("WORD"));
                0
            }
            "hang" => loop {
                std::thread::park();
            },
            _ => 3,
        });
    }

    #[test]
    fn a_child_runs_its_role_and_exits_with_its_status() {
        crate::watchdog::start();
        let mut c = Child::start(&mut command(ENTRY, "exit7"));
        assert_eq!(c.wait().code(), Some(7));
        let mut cmd = command(ENTRY, "echo");
        cmd.env("WORD", "hello").stdout(Stdio::piped());
        let mut c = Child::start(&mut cmd);
        let (status, lines) = c.output_lines();
        assert!(status.success());
        // The test harness prints its own lines ("running 1 test") too.
        assert!(lines.iter().any(|l| l == "hello"), "{lines:?}");
    }

    #[test]
    fn a_killed_child_is_reported_and_forgotten() {
        crate::watchdog::start();
        let mut c = Child::start(command(ENTRY, "hang").stdout(Stdio::null()));
        let pid = c.pid();
        assert!(live().as_ref().is_some_and(|s| s.contains(&pid)));
        c.kill_no_reap();
        c.expect_killed();
        assert!(!live().as_ref().is_some_and(|s| s.contains(&pid)));
    }
}
