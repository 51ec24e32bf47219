//! Credit-based flow control of one end of a link: pure bookkeeping, no
//! verbs, so that it can be checked on its own (`tests/prop_flow.rs`).
//!
//! Each side posts `slots + ctrl` receives and gives the peer that many
//! credits of two kinds:
//!
//! - **data credits** (`slots`): one per DATA or LARGE message; the receive
//!   ring slot it occupies is freed when the application takes the
//!   message, so a receiver that does not take messages stops its sender
//!   after `slots` of them (no unbounded buffering anywhere);
//! - **control credits** (`ctrl`): one per CTRL message (credit returns,
//!   read completions, keepalive, HELLO, BYE), which the engine handles at
//!   once.
//!
//! Returns travel in every header as cumulative counters (data slots
//! freed, control messages seen, large messages read), so a lost or
//! repeated report cannot skew them. A receive is always re-posted before
//! the credit for it is reported, so a sender that keeps to its credits
//! never finds the peer without a receive.
//!
//! A side that owes returns and has nothing to send sends a CTRL message:
//! when it owes half its peer's data credits, half the control credits
//! (at least 2: [`ctrl_threshold`]), or any read completion. Control
//! messages need control credits (at least 3 per side), and the last one
//! may only be spent on a message that returns control credits: then, of
//! two sides that both ran out, at least one can always send, and what it
//! sends gives the other credits back. `tests/prop_flow.rs` checks that
//! no interleaving overruns a receiver or ends in a deadlock.

use crate::wire::{Header, WireError, CTRL};

/// Credit state of one end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    slots: u32,
    ctrl: u32,
    peer_slots: u32,
    peer_ctrl: u32,
    data_credits: u32,
    ctrl_credits: u32,
    data_sent: u32,
    ctrl_sent: u32,
    large_sent: u32,
    peer_data_freed: u32,
    peer_ctrl_seen: u32,
    peer_reads_done: u32,
    data_recv: u32,
    ctrl_recv: u32,
    data_freed: u32,
    ctrl_seen: u32,
    reads_done: u32,
    rep_data: u32,
    rep_ctrl: u32,
    rep_reads: u32,
}

/// Control messages seen that call for a control message of their own:
/// at least 2, so that one control message never answers another forever
/// (a chain of them halves each time), and at most `ctrl - 1`, so that a
/// peer down to its last control credit always gets some back.
pub fn ctrl_threshold(ctrl: u32) -> u32 {
    (ctrl / 2).max(2)
}

fn proto(why: String) -> WireError {
    WireError(why)
}

impl Flow {
    /// A fresh link: this side posts `slots` data and `ctrl` control
    /// receives, the peer `peer_slots` and `peer_ctrl`.
    pub fn new(slots: u32, ctrl: u32, peer_slots: u32, peer_ctrl: u32) -> Flow {
        Flow {
            slots,
            ctrl,
            peer_slots,
            peer_ctrl,
            data_credits: peer_slots,
            ctrl_credits: peer_ctrl,
            data_sent: 0,
            ctrl_sent: 0,
            large_sent: 0,
            peer_data_freed: 0,
            peer_ctrl_seen: 0,
            peer_reads_done: 0,
            data_recv: 0,
            ctrl_recv: 0,
            data_freed: 0,
            ctrl_seen: 0,
            reads_done: 0,
            rep_data: 0,
            rep_ctrl: 0,
            rep_reads: 0,
        }
    }

    /// Use at most `data` data and `ctrl` control credits of those the
    /// peer offers (this side's send queue is sized for those).
    pub fn cap_credits(&mut self, data: u32, ctrl: u32) {
        self.data_credits = self.data_credits.min(data);
        self.ctrl_credits = self.ctrl_credits.min(ctrl);
    }

    /// Data messages this side may send now.
    pub fn data_credits(&self) -> u32 {
        self.data_credits
    }

    /// Control messages this side may send now.
    pub fn ctrl_credits(&self) -> u32 {
        self.ctrl_credits
    }

    /// Data messages received and not yet taken by the application.
    pub fn held(&self) -> u32 {
        self.data_recv.wrapping_sub(self.data_freed)
    }

    /// Large messages sent whose reading the peer has not reported.
    pub fn large_unread(&self) -> u32 {
        self.large_sent.wrapping_sub(self.peer_reads_done)
    }

    /// The peer's ring slot the next data message goes to.
    pub fn next_slot(&self) -> u32 {
        self.data_sent % self.peer_slots
    }

    /// Put the cumulative returns into `h`: they count as reported.
    fn stamp(&mut self, h: &mut Header) {
        h.data_freed = self.data_freed;
        h.ctrl_seen = self.ctrl_seen;
        h.reads_done = self.reads_done;
        self.rep_data = self.data_freed;
        self.rep_ctrl = self.ctrl_seen;
        self.rep_reads = self.reads_done;
    }

    /// Spend a data credit on a message of `kind` (DATA or LARGE): its
    /// header (sequence number and returns), or `None` without credit.
    pub fn send_data(&mut self, kind: u8, len: u32) -> Option<Header> {
        if self.data_credits == 0 {
            return None;
        }
        self.data_credits -= 1;
        let mut h = Header { kind, len, seq: self.data_sent, ..Header::default() };
        self.data_sent = self.data_sent.wrapping_add(1);
        if kind == crate::wire::LARGE {
            self.large_sent = self.large_sent.wrapping_add(1);
        }
        self.stamp(&mut h);
        Some(h)
    }

    /// Whether a control message may be sent now; `last` allows spending
    /// the last credit without returning control credits (BYE, HELLO).
    pub fn can_send_ctrl(&self, last: bool) -> bool {
        self.ctrl_credits >= 2 || (self.ctrl_credits == 1 && (last || self.ctrl_seen != self.rep_ctrl))
    }

    /// Spend a control credit: the header, or `None` when the rule of the
    /// last credit (see the module docs) forbids it.
    pub fn send_ctrl(&mut self, flags: u8, last: bool) -> Option<Header> {
        if !self.can_send_ctrl(last) {
            return None;
        }
        self.ctrl_credits -= 1;
        let mut h = Header { kind: CTRL, flags, seq: self.ctrl_sent, ..Header::default() };
        self.ctrl_sent = self.ctrl_sent.wrapping_add(1);
        self.stamp(&mut h);
        Some(h)
    }

    /// Whether this side owes the peer enough to send a control message of
    /// its own (if nothing else is sent soon).
    pub fn wants_ctrl(&self) -> bool {
        self.data_freed.wrapping_sub(self.rep_data) >= (self.slots / 2).max(1)
            || self.ctrl_seen.wrapping_sub(self.rep_ctrl) >= ctrl_threshold(self.ctrl)
            || self.reads_done != self.rep_reads
    }

    /// Returns owed at all (what a keepalive would carry).
    pub fn owes(&self) -> bool {
        self.data_freed != self.rep_data || self.ctrl_seen != self.rep_ctrl || self.reads_done != self.rep_reads
    }

    /// A header from the peer: take its returns. Gives how many more of
    /// this side's large messages the peer has finished reading.
    pub fn on_header(&mut self, h: &Header) -> Result<u32, WireError> {
        let d = h.data_freed.wrapping_sub(self.peer_data_freed);
        let out = self.data_sent.wrapping_sub(self.peer_data_freed);
        if d > out {
            return Err(proto(format!("the peer freed {d} data slots, {out} were in use")));
        }
        let c = h.ctrl_seen.wrapping_sub(self.peer_ctrl_seen);
        let cout = self.ctrl_sent.wrapping_sub(self.peer_ctrl_seen);
        if c > cout {
            return Err(proto(format!("the peer saw {c} control messages, {cout} were sent")));
        }
        let r = h.reads_done.wrapping_sub(self.peer_reads_done);
        let rout = self.large_sent.wrapping_sub(self.peer_reads_done);
        if r > rout {
            return Err(proto(format!("the peer read {r} large messages, {rout} were sent")));
        }
        self.data_credits += d;
        self.ctrl_credits += c;
        self.peer_data_freed = h.data_freed;
        self.peer_ctrl_seen = h.ctrl_seen;
        self.peer_reads_done = h.reads_done;
        debug_assert!(self.data_credits <= self.peer_slots && self.ctrl_credits <= self.peer_ctrl);
        Ok(r)
    }

    /// A data message with sequence number `seq` arrived.
    pub fn on_data(&mut self, seq: u32) -> Result<(), WireError> {
        if seq != self.data_recv {
            return Err(proto(format!("data message {seq} arrived, {} was next", self.data_recv)));
        }
        if self.held() >= self.slots {
            return Err(proto(format!("the peer sent more than its {} data credits", self.slots)));
        }
        self.data_recv = self.data_recv.wrapping_add(1);
        Ok(())
    }

    /// A control message with sequence number `seq` arrived (and was
    /// handled: its receive is re-posted).
    pub fn on_ctrl(&mut self, seq: u32) -> Result<(), WireError> {
        if seq != self.ctrl_recv {
            return Err(proto(format!("control message {seq} arrived, {} was next", self.ctrl_recv)));
        }
        self.ctrl_recv = self.ctrl_recv.wrapping_add(1);
        self.ctrl_seen = self.ctrl_seen.wrapping_add(1);
        Ok(())
    }

    /// The application took the oldest data message: its slot is free.
    pub fn freed(&mut self) {
        debug_assert!(self.held() > 0);
        self.data_freed = self.data_freed.wrapping_add(1);
    }

    /// A large message of the peer's has been read completely.
    pub fn read_done(&mut self) {
        self.reads_done = self.reads_done.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DATA, LARGE};

    #[test]
    fn credits_run_out_and_come_back() {
        let mut a = Flow::new(4, 2, 4, 2);
        let mut b = Flow::new(4, 2, 4, 2);
        let mut sent = Vec::new();
        while let Some(h) = a.send_data(DATA, 1) {
            sent.push(h);
        }
        assert_eq!(sent.len(), 4);
        for h in &sent {
            b.on_header(h).unwrap();
            b.on_data(h.seq).unwrap();
        }
        assert!(!b.wants_ctrl(), "nothing taken yet");
        b.freed();
        b.freed();
        assert!(b.wants_ctrl());
        let c = b.send_ctrl(0, false).unwrap();
        assert!(!b.owes());
        a.on_header(&c).unwrap();
        a.on_ctrl(c.seq).unwrap();
        assert_eq!(a.data_credits(), 2);
        // A return of more than was sent is a protocol error.
        let mut lie = c;
        lie.data_freed = 9;
        assert!(a.on_header(&lie).is_err());
        // Out of order.
        assert!(b.on_data(9).is_err());
    }

    #[test]
    fn the_last_control_credit_only_goes_with_returns() {
        let mut a = Flow::new(4, 3, 4, 2);
        assert!(a.send_ctrl(0, false).is_some());
        assert_eq!(a.ctrl_credits(), 1);
        assert!(a.send_ctrl(0, false).is_none(), "the last credit, nothing returned");
        a.on_ctrl(0).unwrap();
        assert!(a.send_ctrl(0, false).is_some(), "returns a control credit");
        assert!(a.send_ctrl(0, true).is_none(), "none left at all");
    }

    #[test]
    fn large_messages_are_counted_until_read() {
        let mut a = Flow::new(4, 3, 4, 2);
        let mut b = Flow::new(4, 2, 4, 2);
        let h = a.send_data(LARGE, 0).unwrap();
        assert_eq!(a.large_unread(), 1);
        b.on_header(&h).unwrap();
        b.on_data(h.seq).unwrap();
        b.read_done();
        assert!(b.wants_ctrl());
        let c = b.send_ctrl(0, false).unwrap();
        assert_eq!(a.on_header(&c).unwrap(), 1);
        assert_eq!(a.large_unread(), 0);
    }
}
