//! The sleep/wake handshake on a [`WaitWord`] (see `channel.rs` for the
//! protocol and why it cannot lose a wake-up). Kept apart so the loom model
//! checks exactly this code.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `wake-fence`: a SeqCst fence after the waiter's announcement and one
//!   after the notifier's change: of a waiter re-checking its condition and
//!   a notifier reading the waiter count, at least one sees the other's
//!   write, so either the waiter sees the change or the notifier wakes it.
//! - `wake-seq`: the notifier's Release bump of `seq` pairs with the
//!   waiter's Acquire load of it: a waiter that reads the new value sees
//!   the change (and sleeps on a value the next bump changes).

use crate::layout::{WaitWord, SELECT_WAITER_ONE};
use shm_primitives::futex;
use shm_primitives::sync::{fence, Ordering};

/// Announce a waiter (`one` is `WAITER_ONE` or `SELECT_WAITER_ONE`) and
/// return the futex value to sleep on. The caller must re-check its
/// condition after this and before sleeping, then [`retract`].
#[inline]
pub(crate) fn announce(word: &WaitWord, one: u32) -> u32 {
    // SeqCst: the announcement, ordered by the fence below (wake-fence).
    word.waiters.fetch_add(one, Ordering::SeqCst);
    // SYNC POINT wake-fence: our announcement before the caller's re-check.
    fence(Ordering::SeqCst);
    // SYNC POINT wake-seq: a value read here comes with the change the
    // notifier made before bumping it.
    word.seq.load(Ordering::Acquire)
}

/// Withdraw an announcement.
#[inline]
pub(crate) fn retract(word: &WaitWord, one: u32) {
    // Release: no edge of its own; keeps the count's decrement after our
    // last check of the condition (a notifier then skips a wake-up only
    // for a waiter that no longer waits).
    word.waiters.fetch_sub(one, Ordering::Release);
}

/// After a change that may unblock waiters: wake one (or, if select
/// waiters are present, all) if anyone announced itself.
#[inline]
pub(crate) fn notify(word: &WaitWord) {
    // SYNC POINT wake-fence: the change just made (a Release store of a
    // stamp) before reading the waiter count.
    fence(Ordering::SeqCst);
    // Relaxed: ordered by the fence above (wake-fence).
    let waiters = word.waiters.load(Ordering::Relaxed);
    if waiters != 0 {
        // SYNC POINT wake-seq: our change, to a waiter that reads the new
        // value.
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
    // SYNC POINT wake-fence: the change just made, before the bump.
    fence(Ordering::SeqCst);
    // SYNC POINT wake-seq: the change, to waiters reading the new value.
    word.seq.fetch_add(1, Ordering::Release);
    futex::wake_all(&word.seq);
}
