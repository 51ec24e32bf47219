//! Who holds what: process identities and whether they are still alive.
//!
//! Shared-memory objects record their users as `(pid, start time)` pairs.
//! The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`)
//! tells a live process from a later one that reused the pid. A zombie (killed
//! but not yet reaped by its parent) counts as dead: it will never run again.

use std::sync::atomic::{AtomicU64, Ordering}; // facade-exempt: process-local cache, not shared memory

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

    /// Whether this process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        pid_alive(self.pid, self.start)
    }
}

/// The id of the calling thread (unique on the node while it lives).
pub fn current_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Whether `pid` is alive; if `start` is non-zero it must also match the
/// process's start time (a different start time means the pid was reused).
pub fn pid_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match read_stat(pid) {
        Some(s) => !s.zombie && (start == 0 || s.start == start),
        None => {
            // No /proc entry: the process is gone, unless /proc is not
            // mounted at all, in which case ask the kernel directly.
            if std::path::Path::new("/proc/self/stat").exists() {
                false
            } else {
                // SAFETY: kill with signal 0 only checks for existence.
                let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
                r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            }
        }
    }
}

/// Whether `pid` is alive, checking only the low 32 bits of its start time
/// (`start_lo`; 0 means unknown). Shared-memory lock words have room for a
/// pid and 32 bits of start time in one atomic 64-bit word, and 32 bits of
/// clock ticks cover over a year of uptime at the usual 100 ticks a second.
pub fn pid_alive_lo(pid: u32, start_lo: u32) -> bool {
    if start_lo == 0 {
        return pid_alive(pid, 0);
    }
    match read_stat(pid) {
        Some(s) => !s.zombie && s.start as u32 == start_lo,
        None => pid_alive(pid, 0),
    }
}

struct Stat {
    zombie: bool,
    start: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ", so
    // fields are counted from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // After the state come ppid, pgrp, session, tty_nr, tpgid, flags, minflt,
    // cminflt, majflt, cmajflt, utime, stime, cutime, cstime, priority, nice,
    // num_threads, itrealvalue, then starttime (field 22 overall).
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { zombie: state == "Z" || state == "X" || state == "x", start })
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
    fn wrong_start_time_means_dead() {
        let me = ProcessId::current();
        assert!(!pid_alive(me.pid, me.start + 1));
        assert!(pid_alive_lo(me.pid, me.start as u32));
        assert!(pid_alive_lo(me.pid, 0));
        assert!(!pid_alive_lo(me.pid, (me.start as u32).wrapping_add(1)));
    }

    #[test]
    fn reaped_and_zombie_children_are_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait until it exits but do not reap: it is a zombie.
        for _ in 0..500 {
            if !pid_alive(pid, 0) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(!pid_alive(pid, 0), "a zombie must count as dead");
        child.wait().unwrap();
        assert!(!pid_alive(pid, 0));
        assert!(!pid_alive(0, 0));
    }
}
