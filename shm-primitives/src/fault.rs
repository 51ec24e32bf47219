//! Crash points for tests (feature `fault-injection`).
//!
//! With the feature on, `DRAGON_FAULT=<point>:<n>` makes the process
//! `SIGKILL` itself the `n`-th time it passes `<point>`, so multi-process
//! tests can kill a peer exactly inside each crash window of the ring and
//! the allocator. Without the feature every point compiles to nothing.

/// Environment variable naming the crash point and count.
pub const FAULT_ENV: &str = "DRAGON_FAULT";

/// Pass crash point `name`.
#[cfg(all(feature = "fault-injection", not(dragon_loom)))]
#[inline]
pub fn point(name: &'static str) {
    use crate::sync::local::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<(String, AtomicU64)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var(FAULT_ENV).ok()?;
        let (p, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((p.to_owned(), AtomicU64::new(n.parse().unwrap_or(1))))
    });
    if let Some((p, left)) = armed {
        // Relaxed: a process-local countdown.
        if p == name && left.fetch_sub(1, Ordering::Relaxed) == 1 {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Pass crash point `name` (no-op without the `fault-injection` feature).
#[cfg(not(all(feature = "fault-injection", not(dragon_loom))))]
#[inline(always)]
pub fn point(_name: &'static str) {}
