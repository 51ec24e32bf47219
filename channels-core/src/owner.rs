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

/// Cache of this process's identity: `pid << 32 | ...` is not enough room,
/// so pid and start time are cached separately and refreshed after `fork`.
static CACHED_PID: AtomicU64 = AtomicU64::new(0);
static CACHED_START: AtomicU64 = AtomicU64::new(0);

impl ProcessId {
    /// This process. Cheap after the first call; correct across `fork`.
    pub fn current() -> ProcessId {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u32;
        // Relaxed: a per-process cache; a stale read only costs a re-read of /proc.
        if CACHED_PID.load(Ordering::Relaxed) == u64::from(pid) {
            return ProcessId { pid, start: CACHED_START.load(Ordering::Relaxed) };
        }
        let start = read_stat(pid).map_or(0, |s| s.start);
        CACHED_START.store(start, Ordering::Relaxed);
        CACHED_PID.store(u64::from(pid), Ordering::Relaxed);
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
