//! Credit-based flow control (`flow::Flow`, public API only) between two
//! sides that send, deliver, consume and return credits in any order,
//! against what must hold: a message never arrives without a receive
//! posted for it, a receiver never holds more data messages than it has
//! slots, no return is ever inconsistent, and once the applications stop
//! sending and consume what they get, everything is delivered and both
//! sides go quiet (no deadlock, whatever the sizes and the interleaving).

use proptest::prelude::*;
use std::collections::VecDeque;
use transport_verbs::flow::Flow;
use transport_verbs::wire::{Header, CTRL, DATA, LARGE};

struct Side {
    flow: Flow,
    slots: u32,
    ctrl: u32,
    /// Data messages delivered, not yet taken by the application.
    inbox: VecDeque<u8>,
    /// Messages the application still wants to send.
    to_send: u32,
    /// Data messages the application took.
    got: u32,
    /// Large messages received and not yet read.
    unread: u32,
}

impl Side {
    fn new(slots: u32, ctrl: u32, peer_slots: u32, peer_ctrl: u32, to_send: u32) -> Side {
        Side {
            flow: Flow::new(slots, ctrl, peer_slots, peer_ctrl),
            slots,
            ctrl,
            inbox: VecDeque::new(),
            to_send,
            got: 0,
            unread: 0,
        }
    }
}

/// Send an application message (every third one large) if there is credit.
fn app_send(s: &mut Side, net: &mut VecDeque<Header>) -> bool {
    if s.to_send == 0 {
        return false;
    }
    let kind = if s.to_send % 3 == 0 { LARGE } else { DATA };
    match s.flow.send_data(kind, 0) {
        Some(h) => {
            net.push_back(h);
            s.to_send -= 1;
            true
        }
        None => false,
    }
}

/// Deliver the oldest message in `net` to `to` (its receive is re-posted
/// at once, as the engine does, before any return is reported).
fn deliver(to: &mut Side, net: &mut VecDeque<Header>) -> Result<bool, TestCaseError> {
    let Some(h) = net.pop_front() else { return Ok(false) };
    to.flow.on_header(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
    match h.kind {
        CTRL => to.flow.on_ctrl(h.seq).map_err(|e| TestCaseError::fail(e.to_string()))?,
        k => {
            to.flow.on_data(h.seq).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(to.flow.held() <= to.slots, "more data held than slots");
            if k == LARGE {
                to.unread += 1;
            }
            to.inbox.push_back(k);
        }
    }
    Ok(true)
}

/// The application takes a message (a large one is read first).
fn consume(s: &mut Side, net: &mut VecDeque<Header>) -> bool {
    let Some(k) = s.inbox.pop_front() else { return false };
    if k == LARGE {
        s.unread -= 1;
        s.flow.read_done();
    }
    s.flow.freed();
    s.got += 1;
    settle(s, net);
    true
}

/// Send the control message owed, if allowed.
fn settle(s: &mut Side, net: &mut VecDeque<Header>) -> bool {
    if s.flow.wants_ctrl() {
        if let Some(h) = s.flow.send_ctrl(0, false) {
            net.push_back(h);
            return true;
        }
    }
    false
}

fn keepalive(s: &mut Side, net: &mut VecDeque<Header>) -> bool {
    match s.flow.send_ctrl(0, false) {
        Some(h) => {
            net.push_back(h);
            true
        }
        None => false,
    }
}

fn check_in_flight(net: &VecDeque<Header>, to: &Side) -> Result<(), TestCaseError> {
    prop_assert!(
        net.len() as u32 <= to.slots + to.ctrl,
        "{} messages in flight to a side with {} receives posted",
        net.len(),
        to.slots + to.ctrl
    );
    Ok(())
}

fn step(
    a: &mut Side,
    b: &mut Side,
    ab: &mut VecDeque<Header>,
    ba: &mut VecDeque<Header>,
    op: u8,
) -> Result<bool, TestCaseError> {
    let did = match op % 10 {
        0 => app_send(a, ab),
        1 => app_send(b, ba),
        2 => deliver(b, ab)?,
        3 => deliver(a, ba)?,
        4 => consume(a, ab),
        5 => consume(b, ba),
        6 => settle(a, ab),
        7 => settle(b, ba),
        8 => keepalive(a, ab),
        _ => keepalive(b, ba),
    };
    check_in_flight(ab, b)?;
    check_in_flight(ba, a)?;
    Ok(did)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn credits_never_overrun_and_never_deadlock(
        a_slots in 1u32..6, a_ctrl in 3u32..7, b_slots in 1u32..6, b_ctrl in 3u32..7,
        a_n in 0u32..60, b_n in 0u32..60,
        ops in proptest::collection::vec(0u8..10, 0..1500),
    ) {
        let mut a = Side::new(a_slots, a_ctrl, b_slots, b_ctrl, a_n);
        let mut b = Side::new(b_slots, b_ctrl, a_slots, a_ctrl, b_n);
        let (mut ab, mut ba) = (VecDeque::new(), VecDeque::new());
        for op in ops {
            step(&mut a, &mut b, &mut ab, &mut ba, op)?;
        }
        // From here on the applications keep sending what is left and take
        // everything they get; keepalives stop. Everything must get through.
        let mut idle_rounds = 0;
        for _ in 0..100_000 {
            let mut any = false;
            for op in 0u8..8 {
                any |= step(&mut a, &mut b, &mut ab, &mut ba, op)?;
            }
            if any {
                idle_rounds = 0;
            } else {
                idle_rounds += 1;
                if idle_rounds > 2 {
                    break;
                }
            }
        }
        prop_assert_eq!((a.to_send, b.to_send), (0, 0), "a sender is stuck");
        prop_assert_eq!((b.got, a.got), (a_n, b_n), "messages lost");
        prop_assert!(ab.is_empty() && ba.is_empty());
        prop_assert_eq!((a.flow.large_unread(), b.flow.large_unread()), (0, 0), "a large message never reported read");
        prop_assert!(!a.flow.wants_ctrl() && !b.flow.wants_ctrl(), "returns owed at the end");
    }
}
