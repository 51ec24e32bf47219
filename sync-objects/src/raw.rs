//! The robust lock and the waiting machinery under the objects, for other
//! crash-safe structures in shared memory that need them (the DDict shard
//! table takes a [`RawLock`] per stripe).
//!
//! A [`RawLock`] is the lock word of [`Lock`](crate::Lock) without the
//! object header: 16 bytes of atomics at any 8-aligned offset of a region,
//! zero meaning free. Its holder is recorded as a pid in the word and a
//! [`ProcessId::stamp`] beside it, so a dead holder is taken over
//! ([`Acquired::OwnerDied`](crate::Acquired)); every blocking call takes a
//! [`Waiter`] (deadline and interrupt hook) and an [`AliveFn`]
//! ([`ProcessId::is_alive`] outside loom models).

pub use crate::lock::RawLock;

use crate::WaitError;
#[cfg(not(dragon_loom))]
use crate::LIVENESS_SLICE;
use shm_primitives::futex::{self, Deadline, Wake};
use shm_primitives::process::ProcessId;
use shm_primitives::sync::AtomicU32;
use std::fmt;
use std::time::Duration;

/// Who is acting: the process and the thread. Loom models pass made-up
/// identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    /// The process (what lock words and stamps record).
    pub process: ProcessId,
    /// The thread (recursive locks record it; 0 when not needed).
    pub tid: u32,
}

/// Liveness check of a recorded holder: [`ProcessId::is_alive`] in
/// production, a made-up rule in loom models and tests.
pub type AliveFn = fn(&ProcessId) -> bool;

impl Me {
    /// This process; `tid` is 0 (callers that need it use [`Me::with_tid`]).
    #[inline]
    pub fn current() -> Me {
        Me { process: ProcessId::current(), tid: 0 }
    }

    /// This process and thread. The thread id is cached per thread, keyed
    /// by pid (a forked child's thread has a new id).
    pub fn with_tid() -> Me {
        thread_local! {
            static TID: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
        }
        let me = Me::current();
        let tid = TID.with(|c| {
            let (pid, tid) = c.get();
            if pid == me.process.pid {
                return tid;
            }
            let tid = shm_primitives::process::current_tid();
            c.set((me.process.pid, tid));
            tid
        });
        Me { tid, ..me }
    }

    /// The word recorded next to a lock word (see [`ProcessId::stamp`]).
    #[inline]
    pub fn stamp(&self) -> u64 {
        self.process.stamp()
    }
}

/// Liveness of the process recorded in a stamp (0, nobody, counts as
/// alive: there is no one to recover from).
pub(crate) fn stamp_alive(stamp: u64, alive: AliveFn) -> bool {
    ProcessId::from_stamp(stamp).map_or(true, |p| alive(&p))
}

/// How one sleep of a [`Waiter`] ended (the caller re-checks its condition
/// in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slept {
    /// Woken, the word changed, or a signal arrived (and the hook said go on).
    Woken,
    /// A liveness slice ended: time to check on peers.
    SliceEnd,
}

/// The deadline and interrupt hook of one blocking call.
pub struct Waiter<'a> {
    deadline: Deadline,
    interrupt: Option<&'a mut dyn FnMut() -> bool>,
    /// Whether the caller checks on peers and so needs to wake every
    /// liveness slice. Waits with neither this nor an interrupt hook sleep
    /// until woken or the deadline (an untimed futex wait arms no timer).
    watch: bool,
    /// Under loom a timed futex wait ends at once; that counts as the
    /// deadline passing, so models stay finite.
    model_expired: bool,
}

impl fmt::Debug for Waiter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("deadline", &self.deadline)
            .field("interrupt", &self.interrupt.is_some())
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl<'a> Waiter<'a> {
    #[inline]
    pub fn new(timeout: Option<Duration>, interrupt: Option<&'a mut dyn FnMut() -> bool>) -> Waiter<'a> {
        Waiter { deadline: Deadline::after(timeout), interrupt, watch: true, model_expired: false }
    }

    /// The caller has no peer to check on (semaphores, events, condition
    /// slots): without an interrupt hook it need not wake every slice.
    pub fn unwatched(mut self) -> Waiter<'a> {
        self.watch = false;
        self
    }

    /// No deadline and no interrupt hook.
    #[inline]
    pub fn forever() -> Waiter<'static> {
        Waiter { deadline: Deadline::NEVER, interrupt: None, watch: true, model_expired: false }
    }

    /// Whether the deadline has passed.
    #[inline]
    pub fn expired(&self) -> bool {
        self.model_expired || self.deadline.expired()
    }

    /// Run the interrupt hook, if any.
    pub(crate) fn check_interrupt(&mut self) -> Result<(), WaitError> {
        if let Some(hook) = self.interrupt.as_mut() {
            if !hook() {
                return Err(WaitError::Interrupted);
            }
        }
        Ok(())
    }

    /// Sleep while `*word == expected`, for at most one liveness slice.
    /// Fails with `TimedOut` only if the deadline had already passed on
    /// entry (so the caller has re-checked its condition since its last
    /// sleep), and with `Interrupted` if the hook says stop.
    pub(crate) fn sleep(&mut self, word: &AtomicU32, expected: u32) -> Result<Slept, WaitError> {
        if self.expired() {
            return Err(WaitError::TimedOut);
        }
        #[cfg(not(dragon_loom))]
        let t = if self.watch || self.interrupt.is_some() {
            Some(self.deadline.slice(LIVENESS_SLICE))
        } else {
            self.deadline.remaining()
        };
        #[cfg(dragon_loom)]
        let t = self.deadline.remaining();
        match futex::wait(word, expected, t) {
            Wake::Woken | Wake::Changed => Ok(Slept::Woken),
            Wake::Interrupted => {
                self.check_interrupt()?;
                Ok(Slept::Woken)
            }
            Wake::TimedOut => {
                if cfg!(dragon_loom) {
                    self.model_expired = true;
                }
                self.check_interrupt()?;
                Ok(Slept::SliceEnd)
            }
        }
    }
}
