//! Exclusive advisory locks on files (`flock`): one holder at a time among
//! the processes that open the same file, released when the holder closes
//! it or dies. The DDict's managers hold one on each shard's lock file, so
//! that two managers never write one shard's log.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// What [`try_lock_exclusive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Taken: this open file holds it until it is closed.
    Taken,
    /// Another open file (of this process or another) holds it.
    Held,
    /// The file system has no `flock` (Lustre mounted without it, say):
    /// there is nothing to take.
    Unsupported,
}

/// Take an exclusive lock on `file` without waiting. The lock lasts while
/// `file` (or a duplicate of its descriptor) is open.
pub fn try_lock_exclusive(file: &File) -> io::Result<Lock> {
    loop {
        // SAFETY: flock touches no memory; the descriptor is `file`'s, open
        // for the duration of the call.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Lock::Taken);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(Lock::Held),
            Some(libc::EINTR) => continue,
            Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOLCK) => return Ok(Lock::Unsupported),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_it_closes() {
        let path = std::env::temp_dir().join(format!("filelock-{}", std::process::id()));
        let open = || std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
        let (a, b) = (open(), open());
        assert_eq!(try_lock_exclusive(&a).unwrap(), Lock::Taken);
        assert_eq!(try_lock_exclusive(&a).unwrap(), Lock::Taken, "the holder may take it again");
        assert_eq!(try_lock_exclusive(&b).unwrap(), Lock::Held, "another open file may not");
        drop(a);
        assert_eq!(try_lock_exclusive(&b).unwrap(), Lock::Taken, "free once the holder closed it");
        std::fs::remove_file(&path).unwrap();
    }
}
