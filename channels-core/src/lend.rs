//! Blocks lent between processes: who owns one large block of a run-wide
//! block store, and which processes still map its pages.
//!
//! A zero-copy receive hands the receiving process a view of the block's
//! pages instead of a copy, and that process may pass the block on while
//! its own view is still alive (an echo server does exactly that). So a
//! block has one *owner*, the attachment that may send or free it, and a
//! set of *pinners*, the attachments that still map it. It is reused only
//! once it has neither.
//!
//! ```text
//!   state = generation (32) << 32 | kind (4) << 28 | attachment (10)
//!   FREE        may be taken
//!   OWNED(a)    attachment a may write, send or free it
//!   SENT        a message names it (with its generation); its receiver takes it over
//!   ZOMBIE(a)   a freed it while it was pinned; the last unpin frees it
//!   pins        one bit per attachment (ids 1..)
//!
//!   take      FREE(g)      -> OWNED(g+1, a)
//!   send      OWNED(g, a)  -> SENT(g+1)         the message carries g+1
//!   unsend    SENT(g)      -> OWNED(g, a)       the message could not be sent
//!   receive   SENT(g)      -> OWNED(g, b)       a stale or forged message names another g: refused
//!   pin       set bit b                         only by the owner, so nobody frees it meanwhile
//!   release   OWNED(g, a)  -> ZOMBIE(g, a), then, if no pins, ZOMBIE(g, a) -> FREE(g)
//!   unpin     clear bit b, then, if ZOMBIE and no pins, ZOMBIE(g, x) -> FREE(g)
//! ```
//!
//! `release` writes the state and then reads the pins; `unpin` writes a pin
//! word and then reads the state. Every one of these accesses is a
//! read-modify-write (the reads change nothing), so each reads the latest
//! value of its word, and of the owner freeing the block and the last
//! pinner letting go, at least one sees the other's write (as in Dekker's
//! mutual exclusion) and tries the reclaiming CAS; the CAS from the exact ZOMBIE
//! word lets exactly one of them succeed. A generation changes with every
//! take and every send, so a message can be received once only.
//!
//! Crash rules: a dead attachment's [`Lent::sweep`] clears its pin and
//! releases what it owned, and frees any ZOMBIE left without pins (which
//! covers a death between the two steps of a release). A block that is
//! `SENT` belongs to the message that names it; if a process dies between
//! taking a message off a channel and `receive`, or between `send` and
//! publishing the message, that block is stranded until the store is
//! removed with its run. Those windows are a few instructions wide.

use crate::sync::{AtomicU64, Ordering};

/// Words of pin bits per block (64 attachments per word).
#[cfg(not(dragon_loom))]
pub const PIN_WORDS: usize = 16;
#[cfg(dragon_loom)]
pub const PIN_WORDS: usize = 2;

/// The largest attachment id a pin bit can name.
pub const MAX_ATTACHMENT: u32 = (PIN_WORDS * 64 - 1) as u32;

const KIND_SHIFT: u32 = 28;
const ATT_MASK: u64 = 0x3FF;

/// What a block is doing now (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LentState {
    /// Free to take.
    Free,
    /// Owned by an attachment.
    Owned(u32),
    /// Named by a message in flight.
    Sent,
    /// Released by its owner, still pinned.
    Zombie(u32),
}

const FREE: u64 = 0;
const OWNED: u64 = 1;
const SENT: u64 = 2;
const ZOMBIE: u64 = 3;

fn word(gen: u32, kind: u64, att: u32) -> u64 {
    (u64::from(gen) << 32) | (kind << KIND_SHIFT) | (u64::from(att) & ATT_MASK)
}
fn gen_of(w: u64) -> u32 {
    (w >> 32) as u32
}
fn kind_of(w: u64) -> u64 {
    (w >> KIND_SHIFT) & 0xF
}
fn att_of(w: u64) -> u32 {
    (w & ATT_MASK) as u32
}

/// Ownership and pins of one block, in shared memory. All zero is a free
/// block, generation 0, with no pins.
#[repr(C)]
#[derive(Debug)]
pub struct Lent {
    state: AtomicU64,
    pins: [AtomicU64; PIN_WORDS],
}

impl Lent {
    /// A free block (for tests and heap-backed stores; shared memory starts
    /// zero-filled, which is the same).
    pub fn new() -> Lent {
        Lent { state: AtomicU64::new(0), pins: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    /// The current state and generation.
    pub fn state(&self) -> (LentState, u32) {
        let w = self.state.load(Ordering::SeqCst);
        let s = match kind_of(w) {
            FREE => LentState::Free,
            OWNED => LentState::Owned(att_of(w)),
            SENT => LentState::Sent,
            _ => LentState::Zombie(att_of(w)),
        };
        (s, gen_of(w))
    }

    /// Whether attachment `a` pins the block.
    pub fn pinned_by(&self, a: u32) -> bool {
        let (i, bit) = pin_bit(a);
        self.pins[i].load(Ordering::SeqCst) & bit != 0
    }

    /// Take a free block for attachment `a`; returns its generation.
    pub fn take(&self, a: u32) -> Option<u32> {
        let w = self.state.load(Ordering::Acquire);
        if kind_of(w) != FREE {
            return None;
        }
        let g = gen_of(w).wrapping_add(1);
        // Acquire: the last reader's unpin and the reclaim happen before
        // this process writes the block.
        self.state.compare_exchange(w, word(g, OWNED, a), Ordering::AcqRel, Ordering::Relaxed).ok().map(|_| g)
    }

    /// Hand the block, owned by `a` at generation `g`, to a message; returns
    /// the generation the message must carry, or `None` if `a` does not own
    /// it at `g`.
    pub fn send(&self, a: u32, g: u32) -> Option<u32> {
        let m = g.wrapping_add(1);
        // Release: the payload written by the owner is visible to whoever
        // receives the message.
        self.state
            .compare_exchange(word(g, OWNED, a), word(m, SENT, 0), Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| m)
    }

    /// Take back a block whose message (generation `m`) was not sent.
    pub fn unsend(&self, a: u32, m: u32) -> bool {
        self.receive(a, m)
    }

    /// Become the owner of the block a message of generation `m` names.
    /// False for a message that is stale, forged or already received.
    pub fn receive(&self, b: u32, m: u32) -> bool {
        // Acquire: pairs with `send`, so the payload is visible.
        self.state.compare_exchange(word(m, SENT, 0), word(m, OWNED, b), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Record that attachment `b`, the owner, maps the block.
    pub fn pin(&self, b: u32) {
        let (i, bit) = pin_bit(b);
        self.pins[i].fetch_or(bit, Ordering::SeqCst);
    }

    /// Attachment `b` no longer maps the block. Returns true if this freed
    /// it (its owner had released it already).
    pub fn unpin(&self, b: u32) -> bool {
        let (i, bit) = pin_bit(b);
        self.pins[i].fetch_and(!bit, Ordering::SeqCst);
        self.reclaim_if_unpinned()
    }

    /// The owner `a` (at generation `g`) lets the block go. Returns true if
    /// it is free now, false if pinners keep it (the last one frees it) or
    /// if `a` did not own it at `g`.
    pub fn release(&self, a: u32, g: u32) -> bool {
        if self
            .state
            .compare_exchange(word(g, OWNED, a), word(g, ZOMBIE, a), Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.reclaim_if_unpinned()
    }

    /// Undo what dead attachment `d` held: its pin, its ownership, and any
    /// zombie nobody pins any more. Returns true if the block became free.
    pub fn sweep(&self, d: u32) -> bool {
        let (i, bit) = pin_bit(d);
        self.pins[i].fetch_and(!bit, Ordering::SeqCst);
        let w = self.state.fetch_or(0, Ordering::SeqCst);
        if kind_of(w) == OWNED && att_of(w) == d {
            return self.release(d, gen_of(w));
        }
        self.reclaim_if_unpinned()
    }

    // The reads after a write (the pins after a release, the state after an
    // unpin) are read-modify-writes that change nothing: an RMW reads the
    // latest value of its word, so the argument in the module docs holds in
    // the acquire/release model alone (which is also what loom checks).
    fn unpinned(&self) -> bool {
        self.pins.iter().all(|p| p.fetch_or(0, Ordering::SeqCst) == 0)
    }

    fn reclaim_if_unpinned(&self) -> bool {
        let w = self.state.fetch_or(0, Ordering::SeqCst);
        if kind_of(w) != ZOMBIE || !self.unpinned() {
            return false;
        }
        // Release: every reader's unpin (read above) happens before the
        // next taker's writes.
        self.state.compare_exchange(w, word(gen_of(w), FREE, 0), Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }
}

impl Default for Lent {
    fn default() -> Lent {
        Lent::new()
    }
}

fn pin_bit(a: u32) -> (usize, u64) {
    assert!(a >= 1 && a <= MAX_ATTACHMENT, "attachment id {a} out of range");
    ((a / 64) as usize, 1u64 << (a % 64))
}

#[cfg(all(test, not(dragon_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_with_forwarding() {
        let l = Lent::new();
        // The sender takes, fills and sends.
        let g = l.take(1).unwrap();
        assert_eq!(l.take(2), None, "an owned block cannot be taken");
        let m = l.send(1, g).unwrap();
        assert!(!l.receive(2, m.wrapping_add(5)), "a forged generation is refused");
        // The echo receives, maps, and forwards while its view lives.
        assert!(l.receive(2, m));
        assert!(!l.receive(3, m), "a message is received once");
        l.pin(2);
        let m2 = l.send(2, m).unwrap();
        assert_ne!(m2, m);
        // The sender receives it back and frees it while the echo still maps it.
        assert!(l.receive(1, m2));
        assert!(!l.release(1, m2), "the echo's pin keeps it");
        assert_eq!(l.state().0, LentState::Zombie(1));
        assert_eq!(l.take(3), None);
        assert!(l.unpin(2), "the last unpin frees it");
        assert_eq!(l.state().0, LentState::Free);
        assert!(l.take(3).is_some());
    }

    #[test]
    fn release_needs_the_current_owner_and_generation() {
        let l = Lent::new();
        let g = l.take(4).unwrap();
        assert!(!l.release(5, g));
        assert!(!l.release(4, g + 1));
        assert!(l.release(4, g));
        assert_eq!(l.state().0, LentState::Free);
    }

    #[test]
    fn unsend_gives_the_block_back() {
        let l = Lent::new();
        let g = l.take(1).unwrap();
        let m = l.send(1, g).unwrap();
        assert!(l.unsend(1, m));
        assert_eq!(l.state(), (LentState::Owned(1), m));
        assert!(l.release(1, m));
    }

    #[test]
    fn sweep_returns_what_the_dead_held() {
        // Dead owner.
        let l = Lent::new();
        let g = l.take(7).unwrap();
        assert!(l.sweep(7));
        assert_eq!(l.state().0, LentState::Free);
        // Dead pinner of a zombie.
        let g2 = l.take(1).unwrap();
        assert_ne!(g2, g, "every take is a new generation");
        let m = l.send(1, g2).unwrap();
        assert!(l.receive(900, m));
        l.pin(900);
        let m = l.send(900, m).unwrap();
        assert!(l.receive(1, m));
        assert!(!l.release(1, m));
        assert!(!l.sweep(3), "an unrelated attachment changes nothing");
        assert!(l.sweep(900));
        assert_eq!(l.state().0, LentState::Free);
        assert!(!l.pinned_by(900));
    }

    #[test]
    fn a_message_in_flight_survives_sweeps() {
        let l = Lent::new();
        let g = l.take(1).unwrap();
        let m = l.send(1, g).unwrap();
        assert!(!l.sweep(1), "the message owns it, not the dead sender");
        assert!(l.receive(2, m));
    }
}
