//! The sleep/wake handshake on a [`WaitWord`] (see `channel.rs` for the
//! protocol and why it cannot lose a wake-up). Kept apart so the loom model
//! checks exactly this code.

use crate::layout::{WaitWord, SELECT_WAITER_ONE};
use shm_primitives::futex;
use shm_primitives::sync::{fence, Ordering};

/// Announce a waiter (`one` is `WAITER_ONE` or `SELECT_WAITER_ONE`) and
/// return the futex value to sleep on. The caller must re-check its
/// condition after this and before sleeping, then [`retract`].
#[inline]
pub(crate) fn announce(word: &WaitWord, one: u32) -> u32 {
    word.waiters.fetch_add(one, Ordering::SeqCst);
    // SYNC POINT (SeqCst fence): orders our announcement before the
    // re-check; pairs with the fence in `notify`.
    fence(Ordering::SeqCst);
    // Acquire: pairs with the Release seq bump in `notify`.
    word.seq.load(Ordering::Acquire)
}

/// Withdraw an announcement.
#[inline]
pub(crate) fn retract(word: &WaitWord, one: u32) {
    // Release: nothing to publish but keeps the count's updates ordered
    // after our last check.
    word.waiters.fetch_sub(one, Ordering::Release);
}

/// After a change that may unblock waiters: wake one (or, if select
/// waiters are present, all) if anyone announced itself.
#[inline]
pub(crate) fn notify(word: &WaitWord) {
    // SYNC POINT (SeqCst fence): the change just made (a Release store of a
    // stamp) is ordered before reading the waiter count; pairs with the
    // fence in `announce`.
    fence(Ordering::SeqCst);
    // Relaxed: ordered by the fence above.
    let waiters = word.waiters.load(Ordering::Relaxed);
    if waiters != 0 {
        // Release: a waiter that reads the new seq sees our change.
        word.seq.fetch_add(1, Ordering::Release);
        if waiters >= SELECT_WAITER_ONE {
            futex::wake_all(&word.seq);
        } else {
            futex::wake(&word.seq, 1);
        }
    }
}

/// Wake every waiter, announced or not yet asleep (close, destroy,
/// recovery).
pub(crate) fn notify_all(word: &WaitWord) {
    fence(Ordering::SeqCst);
    // Release: waiters reading the new seq see the change.
    word.seq.fetch_add(1, Ordering::Release);
    futex::wake_all(&word.seq);
}
