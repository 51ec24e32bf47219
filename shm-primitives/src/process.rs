//! Who holds what: process identities and whether they are still alive.
//!
//! Shared-memory objects record their users as [`ProcessId`]s, `(pid, start
//! time)` pairs. The start time (clock ticks since boot, field 22 of
//! `/proc/<pid>/stat`) tells a live process from a later one that reused the
//! pid. A zombie (killed but not yet reaped by its parent) counts as dead: it
//! will never run again. [`ProcessId::is_alive`] is the one liveness check
//! of the project ([`read_stat`] reads what it and others need of
//! `/proc/<pid>/stat`).
//!
//! Where a single atomic 64-bit word must hold an identity (lock owners,
//! shard client slots), it is stored as a *stamp*, `pid << 32 | low 32 bits
//! of the start time` ([`ProcessId::stamp`], [`ProcessId::from_stamp`]):
//! 32 bits of clock ticks cover over a year of uptime at the usual 100
//! ticks a second. A start time that fits in 32 bits may be such a
//! truncated one, so it is compared with the process's in the low 32 bits.

use crate::sync::local::{AtomicU64, Ordering};

/// A process on this node, robust against pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// The OS process id (thread group id).
    pub pid: u32,
    /// Start time in clock ticks since boot; 0 means "unknown" (then only
    /// the pid is checked).
    pub start: u64,
}

/// Cache of this process's identity: pid and start time are cached
/// separately; a `fork` child handler clears the pid, so the child refills
/// the cache with its own identity on first use.
static CACHED_PID: AtomicU64 = AtomicU64::new(0);
static CACHED_START: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: std::sync::Once = std::sync::Once::new();

extern "C" fn forget_identity_after_fork() {
    // Relaxed: runs in the child's only thread before anything else does.
    CACHED_PID.store(0, Ordering::Relaxed);
}

impl ProcessId {
    /// This process. Cheap after the first call (no system call); correct
    /// across `fork` (a `pthread_atfork` child handler resets the cache).
    #[inline]
    pub fn current() -> ProcessId {
        FORK_HOOK.call_once(|| {
            // SAFETY: registers a handler that only stores to an atomic,
            // which is async-signal-safe as fork handlers must be.
            unsafe { libc::pthread_atfork(None, None, Some(forget_identity_after_fork)) };
        });
        // Acquire: pairs with the Release below, so the start time read next
        // is the one stored with this pid.
        let pid = CACHED_PID.load(Ordering::Acquire);
        if pid != 0 {
            // Relaxed: ordered by the Acquire load above.
            return ProcessId { pid: pid as u32, start: CACHED_START.load(Ordering::Relaxed) };
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u32;
        let start = read_stat(pid).map_or(0, |s| s.start);
        // Relaxed: published by the Release store of the pid.
        CACHED_START.store(start, Ordering::Relaxed);
        // Release: publishes the start time stored just before.
        CACHED_PID.store(u64::from(pid), Ordering::Release);
        ProcessId { pid, start }
    }

    /// `pid` with an unknown start time: only the pid is checked.
    pub const fn pid_only(pid: u32) -> ProcessId {
        ProcessId { pid, start: 0 }
    }

    /// Whether this process still exists (and is not a zombie). Pid 0 is
    /// never alive. With a start time (non-zero) the process must also
    /// have started then; a different start time means the pid was reused.
    pub fn is_alive(&self) -> bool {
        if self.pid == 0 {
            return false;
        }
        match read_stat(self.pid) {
            Some(s) => !s.zombie() && self.started_at(s.start),
            None => {
                // No /proc entry: the process is gone, unless /proc is not
                // mounted at all, in which case ask the kernel directly
                // (which cannot tell a reused pid).
                if std::path::Path::new("/proc/self/stat").exists() {
                    false
                } else {
                    // SAFETY: kill with signal 0 only checks for existence.
                    let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
                    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                }
            }
        }
    }

    /// Whether a process that started at `start` (full clock ticks) can be
    /// this one: an unknown start matches anything, one that fits in 32
    /// bits (possibly truncated by a stamp) is compared in 32 bits.
    fn started_at(&self, start: u64) -> bool {
        self.start == 0
            || self.start == start
            || (self.start <= u64::from(u32::MAX) && start as u32 == self.start as u32)
    }

    /// The identity in one word: `pid << 32 | low 32 bits of the start
    /// time`. Never 0 for a real process.
    #[inline]
    pub const fn stamp(&self) -> u64 {
        ((self.pid as u64) << 32) | (self.start as u32 as u64)
    }

    /// The identity a [`stamp`](ProcessId::stamp) records (start time: its
    /// low 32 bits). `None` for 0, the stamp of nobody.
    #[inline]
    pub const fn from_stamp(stamp: u64) -> Option<ProcessId> {
        if stamp == 0 {
            None
        } else {
            Some(ProcessId { pid: (stamp >> 32) as u32, start: stamp as u32 as u64 })
        }
    }
}

/// The id of the calling thread (unique on the node while it lives).
#[inline]
pub fn current_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// What `/proc/<pid>/stat` says of a process: the fields this project
/// reads (liveness, identity, and what `dragon top` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R` running, `S` sleeping, `Z` zombie...).
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// CPU time used, user plus system, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time in clock ticks since boot.
    pub start: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
    /// The command name (the kernel keeps 15 bytes of it; bytes that are
    /// not UTF-8 are replaced).
    pub comm: String,
}

impl Stat {
    /// Whether the process has ended (a zombie not yet reaped, or dead):
    /// it will never run again.
    pub fn zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The [`Stat`] of process `pid`, or `None` if there is no such process
/// (or `/proc` is not mounted).
pub fn read_stat(pid: u32) -> Option<Stat> {
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    // The command name is in parentheses and may itself contain ") ", so
    // fields are counted from the last ')'.
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // From the state on (field 3 overall): state, ppid, pgrp, session,
    // tty_nr, tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime,
    // cutime, cstime, priority, nice, num_threads, itrealvalue, starttime,
    // vsize, rss.
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        start: num(19)?,
        rss_pages: num(21)?,
        comm,
    })
}

/// This machine's host name (empty if it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` has room for 256 bytes, the limit passed.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    // SAFETY: gethostname wrote a NUL-terminated string (the buffer was zeroed).
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr().cast()) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive() {
        let me = ProcessId::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start > 0);
        assert!(me.is_alive());
    }

    #[test]
    fn identity_is_refreshed_in_a_forked_child() {
        let parent = ProcessId::current();
        // SAFETY: the child only calls ProcessId::current (which reads
        // /proc; glibc keeps malloc usable after fork) and then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let me = ProcessId::current();
            // SAFETY: getpid has no preconditions.
            let ok = me.pid == unsafe { libc::getpid() } as u32 && me.pid != parent.pid && me.start >= parent.start;
            // SAFETY: _exit has no preconditions and skips the parent's
            // atexit handlers and test harness state.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child saw a stale identity");
        assert_eq!(ProcessId::current(), parent);
    }

    #[test]
    fn stat_of_this_process() {
        let s = read_stat(std::process::id()).expect("this process's stat");
        // SAFETY: getppid has no preconditions.
        assert_eq!(s.ppid, unsafe { libc::getppid() } as u32);
        // The main thread's state: the test harness's may be waiting ('S').
        assert!(s.state.is_ascii_alphabetic() && !s.zombie());
        assert_eq!(s.start, ProcessId::current().start);
        assert!(s.rss_pages > 0 && !s.comm.is_empty());
        assert_eq!(read_stat(0), None);
    }

    #[test]
    fn wrong_start_time_means_dead() {
        let me = ProcessId::current();
        assert!(!ProcessId { start: me.start + 1, ..me }.is_alive());
        assert!(ProcessId::pid_only(me.pid).is_alive());
        let stamped = ProcessId::from_stamp(me.stamp()).unwrap();
        assert_eq!(stamped.pid, me.pid);
        assert!(stamped.is_alive());
        assert!(!ProcessId::from_stamp(me.stamp().wrapping_add(1)).unwrap().is_alive());
        assert_eq!(ProcessId::from_stamp(0), None);
    }

    #[test]
    fn start_times_are_compared_in_the_bits_recorded() {
        let full = ProcessId { pid: 7, start: (5 << 32) | 9 };
        assert!(full.started_at((5 << 32) | 9));
        assert!(!full.started_at((6 << 32) | 9), "a full start time is compared in full");
        let stamped = ProcessId::from_stamp(full.stamp()).unwrap();
        assert_eq!(stamped, ProcessId { pid: 7, start: 9 });
        assert!(stamped.started_at((5 << 32) | 9));
        assert!(!stamped.started_at((5 << 32) | 10));
        assert!(ProcessId::pid_only(7).started_at(12345));
    }

    #[test]
    fn reaped_and_zombie_children_are_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait until it exits but do not reap: it is a zombie.
        for _ in 0..500 {
            if !ProcessId::pid_only(pid).is_alive() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(!ProcessId::pid_only(pid).is_alive(), "a zombie must count as dead");
        child.wait().unwrap();
        assert!(!ProcessId::pid_only(pid).is_alive());
        assert!(!ProcessId::pid_only(0).is_alive());
    }
}
