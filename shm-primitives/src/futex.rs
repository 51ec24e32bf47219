//! Sleeping and waking on a 32-bit word in shared memory (Linux futex).
//!
//! The words live in `MAP_SHARED` mappings, so the calls use the shared
//! (non-`PRIVATE`) futex operations: a waiter in one process is woken by a
//! `wake` from any process that maps the same page.
//!
//! Under `--cfg dragon_loom` the kernel is replaced by a model with the same
//! contract (a waiter sleeps only if the word still holds the expected value
//! when it goes to sleep, checked atomically with respect to `wake`), so the
//! announce / re-check / sleep handshakes built on it can be model-checked.

use crate::sync::AtomicU32;
use std::time::{Duration, Instant};

/// How a [`wait`] ended. Every outcome may also be spurious: callers re-check
/// their condition in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken by [`wake`] (or spuriously).
    Woken,
    /// The word no longer held the expected value.
    Changed,
    /// The timeout elapsed.
    TimedOut,
    /// A signal arrived; the caller may want to run signal handlers.
    Interrupted,
}

/// A point in time a blocking call must return by; `None` means never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: wait forever.
    pub const NEVER: Deadline = Deadline(None);

    /// A deadline `timeout` from now (`None`: never).
    #[inline]
    pub fn after(timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future)))
    }

    /// Time left, `None` if there is no deadline, zero once it has passed.
    #[inline]
    pub fn remaining(&self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    #[inline]
    pub fn expired(&self) -> bool {
        matches!(self.remaining(), Some(d) if d.is_zero())
    }

    /// The time left, capped at `slice` (sleepers wake at least this often
    /// to look for dead peers).
    #[inline]
    pub fn slice(&self, slice: Duration) -> Duration {
        self.remaining().map_or(slice, |r| r.min(slice))
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Sleep while `*word == expected`, for at most `timeout` (`None`: no limit).
#[inline]
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    imp::wait(word, expected, timeout)
}

/// Wake up to `n` sleepers on `word`; returns how many were woken.
#[inline]
pub fn wake(word: &AtomicU32, n: u32) -> u32 {
    imp::wake(word, n)
}

/// Wake every sleeper on `word`.
#[inline]
pub fn wake_all(word: &AtomicU32) -> u32 {
    imp::wake(word, i32::MAX as u32)
}

/// Sleep until any of `words[i]` differs from `expected[i]`, one of them is
/// woken, or the timeout elapses. Returns the index that woke us, if known.
///
/// Uses `futex_waitv` (Linux 5.16+); on older kernels it sleeps on the first
/// word only, with the timeout capped at a millisecond, and callers re-check
/// all words (correct, merely a little slower).
pub fn wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> (Wake, Option<usize>) {
    imp::wait_any(words, timeout)
}

#[cfg(not(dragon_loom))]
mod imp {
    use super::Wake;
    use crate::sync::local::{AtomicBool, Ordering as StdOrdering};
    use crate::sync::{AtomicU32, Ordering};
    use std::time::Duration;

    fn timespec(d: Duration) -> libc::timespec {
        libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64 / 2) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        }
    }

    pub(super) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
        let ts = timeout.map(timespec);
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `word` is a valid, aligned 32-bit word for the duration of
        // the call; FUTEX_WAIT only reads it. The timeout pointer is null or
        // points at a live timespec.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word as *const AtomicU32,
                libc::FUTEX_WAIT,
                expected,
                ts_ptr,
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        if r == 0 {
            return Wake::Woken;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Wake::Changed,
            Some(libc::ETIMEDOUT) => Wake::TimedOut,
            Some(libc::EINTR) => Wake::Interrupted,
            _ => Wake::Woken,
        }
    }

    pub(super) fn wake(word: &AtomicU32, n: u32) -> u32 {
        let n = n.min(i32::MAX as u32) as libc::c_int;
        // SAFETY: FUTEX_WAKE does not access the word's memory beyond using
        // its address as a key.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word as *const AtomicU32,
                libc::FUTEX_WAKE,
                n,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        r.max(0) as u32
    }

    #[repr(C)]
    struct FutexWaitv {
        val: u64,
        uaddr: u64,
        flags: u32,
        reserved: u32,
    }

    const FUTEX2_SIZE_U32: u32 = 0x02;
    const SYS_FUTEX_WAITV: libc::c_long = 449;
    static NO_WAITV: AtomicBool = AtomicBool::new(false);

    pub(super) fn wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> (Wake, Option<usize>) {
        if words.is_empty() {
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
            return (Wake::TimedOut, None);
        }
        if words.len() == 1 || words.len() > 128 || NO_WAITV.load(StdOrdering::Relaxed) {
            let t = if words.len() == 1 {
                timeout
            } else {
                Some(timeout.map_or(Duration::from_millis(1), |t| t.min(Duration::from_millis(1))))
            };
            return (wait(words[0].0, words[0].1, t), Some(0));
        }
        let waiters: Vec<FutexWaitv> = words
            .iter()
            .map(|(w, v)| FutexWaitv {
                val: u64::from(*v),
                uaddr: *w as *const AtomicU32 as u64,
                flags: FUTEX2_SIZE_U32,
                reserved: 0,
            })
            .collect();
        let abs = timeout.map(|t| {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `now` is a valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
            let total = Duration::new(now.tv_sec as u64, now.tv_nsec as u32).saturating_add(t);
            timespec(total)
        });
        let ts_ptr = abs.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `waiters` is a valid array of `words.len()` futex_waitv
        // entries whose addresses are live aligned words; the timeout is null
        // or a live absolute CLOCK_MONOTONIC timespec.
        let r = unsafe {
            libc::syscall(
                SYS_FUTEX_WAITV,
                waiters.as_ptr(),
                waiters.len() as libc::c_uint,
                0u32,
                ts_ptr,
                libc::CLOCK_MONOTONIC,
            )
        };
        if r >= 0 {
            return (Wake::Woken, Some(r as usize));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => {
                let i = words.iter().position(|(w, v)| w.load(Ordering::Relaxed) != *v);
                (Wake::Changed, i)
            }
            Some(libc::ETIMEDOUT) => (Wake::TimedOut, None),
            Some(libc::EINTR) => (Wake::Interrupted, None),
            Some(libc::ENOSYS) => {
                NO_WAITV.store(true, StdOrdering::Relaxed);
                wait_any(words, timeout)
            }
            _ => (Wake::Woken, None),
        }
    }
}

#[cfg(dragon_loom)]
mod imp {
    //! A model of the futex contract for loom: one lock and condition
    //! variable stand in for the kernel's hash of wait queues.
    use super::Wake;
    use crate::sync::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};
    use std::time::Duration;

    loom::lazy_static! {
        static ref KERNEL: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }

    pub(super) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
        if timeout.is_some() {
            // A timed sleep may always end early; modelling it as an
            // immediate timeout keeps the state space finite.
            loom::thread::yield_now();
            return if word.load(Ordering::SeqCst) != expected { Wake::Changed } else { Wake::TimedOut };
        }
        let (lock, cv) = &*KERNEL;
        let guard = lock.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return Wake::Changed;
        }
        drop(cv.wait(guard).unwrap());
        Wake::Woken
    }

    pub(super) fn wake(_word: &AtomicU32, _n: u32) -> u32 {
        let (lock, cv) = &*KERNEL;
        let _guard = lock.lock().unwrap();
        cv.notify_all();
        1
    }

    pub(super) fn wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> (Wake, Option<usize>) {
        let (lock, cv) = &*KERNEL;
        let guard = lock.lock().unwrap();
        // SeqCst: as the kernel's compare under its bucket lock (above).
        if let Some(i) = words.iter().position(|(w, v)| w.load(Ordering::SeqCst) != *v) {
            return (Wake::Changed, Some(i));
        }
        if timeout.is_some() {
            drop(guard);
            loom::thread::yield_now();
            return (Wake::TimedOut, None);
        }
        drop(cv.wait(guard).unwrap());
        (Wake::Woken, None)
    }
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;
    use crate::sync::Ordering;
    use std::sync::Arc;

    #[test]
    fn wait_returns_changed_when_value_differs() {
        let w = AtomicU32::new(5);
        assert_eq!(wait(&w, 4, Some(Duration::from_secs(5))), Wake::Changed);
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        assert_eq!(wait(&w, 0, Some(Duration::from_millis(5))), Wake::TimedOut);
    }

    #[test]
    fn wake_releases_a_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, Some(Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake_all(&w);
        t.join().unwrap();
    }

    #[test]
    fn wait_any_sees_second_word() {
        let a = AtomicU32::new(0);
        let b = AtomicU32::new(1);
        let (how, idx) = wait_any(&[(&a, 0), (&b, 0)], Some(Duration::from_secs(5)));
        assert_eq!(how, Wake::Changed);
        assert_eq!(idx, Some(1));
    }

    #[test]
    fn deadline_math() {
        assert!(!Deadline::NEVER.expired());
        assert!(Deadline::after(Some(Duration::ZERO)).expired());
        assert_eq!(Deadline::NEVER.slice(Duration::from_millis(7)), Duration::from_millis(7));
    }
}
