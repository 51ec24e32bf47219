//! Support for the project's tests (a dev-dependency only): one copy of what
//! every crate's tests need so that a hang fails instead of stalling, and
//! tests can run in parallel.
//!
//! - [`watchdog`]: a per-binary deadline that aborts a hung test binary
//!   (after killing its children and running cleanup hooks),
//!   [`watchdog::within`] for one call, and [`watchdog::steps`] for each
//!   step of a long loop (a fuzz input).
//! - [`child`]: tests that re-run their own test binary as a child
//!   process playing a role, killed and reaped on drop, dying with their
//!   parent, every wait under a deadline.
//! - [`unique_name`]: names no other test (of this or another process)
//!   uses, for temporary files and objects; [`TempDir`], a temporary
//!   directory under such a name, removed on drop.
//! - [`eventually`]: wait for a condition under a deadline.
//! - `fuzz` (feature `fuzz`): byte-mutation fuzzing of decoders with
//!   proptest: corpus, mutations, a deadline per input, an allocation
//!   counter.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod child;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `tag` made unique: `<tag>-<pid>-<sequence>-<nonce>` (ASCII letters,
/// digits and `-` if `tag` is), so tests running in parallel, in one
/// process or several, never share a name.
pub fn unique_name(tag: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only uniqueness within the process matters.
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{seq}-{nanos:08x}", std::process::id())
}

/// A directory in the system's temporary folder under a
/// [`unique_name`], removed with everything in it on drop (also when the
/// test fails).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Reserve the path `<tmp>/<unique_name("dragon-test-" + tag)>`;
    /// nothing is created (for code under test that creates it).
    pub fn new(tag: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(unique_name(&format!("dragon-test-{tag}"))))
    }

    /// Create the directory (and its parents).
    pub fn create(tag: &str) -> TempDir {
        let d = TempDir::new(tag);
        std::fs::create_dir_all(&d.0).unwrap_or_else(|e| panic!("create {}: {e}", d.0.display()));
        d
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Poll `f` until it is true (returns `true`) or `timeout` passes (returns
/// `false`). For waiting on another process's visible effect, never for
/// measuring time.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("t-{}-", std::process::id())));
    }

    #[test]
    fn temp_dirs_are_unique_and_removed() {
        let a = TempDir::create("x");
        let b = TempDir::new("x");
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && !b.path().exists());
        std::fs::write(a.path().join("f"), b"data").unwrap();
        let p = a.path().to_owned();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn eventually_reports_both_outcomes() {
        let mut n = 0;
        assert!(eventually(Duration::from_secs(30), || {
            n += 1;
            n == 3
        }));
        assert!(!eventually(Duration::ZERO, || false));
    }
}
