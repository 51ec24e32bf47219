//! Random operation sequences on a channel against a `VecDeque` model,
//! through the public API only, with inline and block-sized messages and
//! received large messages held for a while (zero-copy blocks in use).

use channels_core::{Channel, ChannelOptions, Message, Roles, TryRecvError, TrySendError};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    TrySend { len: usize, seed: u8 },
    SendParts { a: usize, b: usize, seed: u8 },
    SendWith { len: usize, seed: u8 },
    TryRecv { hold: bool },
    RecvWith,
    RecvTimeoutZero,
    DropHeld,
    Reattach,
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..120,
        3 => 120usize..5000,
        1 => 5000usize..200_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (len_strategy(), any::<u8>()).prop_map(|(len, seed)| Op::TrySend { len, seed }),
        1 => (0usize..3000, 0usize..3000, any::<u8>()).prop_map(|(a, b, seed)| Op::SendParts { a, b, seed }),
        1 => (len_strategy(), any::<u8>()).prop_map(|(len, seed)| Op::SendWith { len, seed }),
        4 => any::<bool>().prop_map(|hold| Op::TryRecv { hold }),
        1 => Just(Op::RecvWith),
        1 => Just(Op::RecvTimeoutZero),
        1 => Just(Op::DropHeld),
        1 => Just(Op::Reattach),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i * 7 % 251) as u8)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn channel_matches_a_bounded_queue(
        cap in 1u64..6,
        slot in prop_oneof![Just(64usize), Just(128), Just(256)],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut ch = Channel::heap(&ChannelOptions::new().capacity(cap).slot_size(slot)).unwrap();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut held: Vec<Message> = vec![];
        for op in ops {
            match op {
                Op::TrySend { len, seed } => {
                    let m = bytes(len, seed);
                    match ch.try_send(m.clone()) {
                        Ok(()) => { prop_assert!((model.len() as u64) < cap); model.push_back(m); }
                        Err(TrySendError::Full(back)) => { prop_assert_eq!(model.len() as u64, cap); prop_assert_eq!(back, m); }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::SendParts { a, b, seed } => {
                    let (x, y) = (bytes(a, seed), bytes(b, seed ^ 0x55));
                    match ch.send_parts(&[&x, &y], Some(Duration::ZERO)) {
                        Ok(()) => { prop_assert!((model.len() as u64) < cap); model.push_back([x, y].concat()); }
                        Err(e) => { prop_assert!(e.is_timeout(), "{e}"); prop_assert_eq!(model.len() as u64, cap); }
                    }
                }
                Op::SendWith { len, seed } => {
                    let m = bytes(len, seed);
                    let r = ch.send_with_timeout(len, Some(Duration::ZERO), |buf| buf.copy_from_slice(&m));
                    match r {
                        Ok(()) => { prop_assert!((model.len() as u64) < cap); model.push_back(m); }
                        Err(e) => { prop_assert!(e.is_timeout()); prop_assert_eq!(model.len() as u64, cap); }
                    }
                }
                Op::TryRecv { hold } => match ch.try_recv() {
                    Ok(m) => {
                        let want = model.pop_front();
                        prop_assert_eq!(Some(&m[..]), want.as_deref());
                        prop_assert_eq!(m.is_zero_copy(), m.len() > ch.max_inline());
                        if hold { held.push(m); }
                    }
                    Err(TryRecvError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                },
                Op::RecvWith => match ch.recv_with(Some(Duration::ZERO), |b| b.to_vec()) {
                    Ok(v) => prop_assert_eq!(Some(v), model.pop_front()),
                    Err(_) => prop_assert!(model.is_empty()),
                },
                Op::RecvTimeoutZero => match ch.recv_timeout(Duration::ZERO) {
                    Ok(m) => prop_assert_eq!(Some(m.into_bytes().to_vec()), model.pop_front()),
                    Err(_) => prop_assert!(model.is_empty()),
                },
                Op::DropHeld => held.clear(),
                Op::Reattach => {
                    // Continue through a fresh attachment of the same channel.
                    ch = ch.attach_again(Roles::BOTH).unwrap();
                }
            }
            prop_assert_eq!(ch.len(), model.len());
            prop_assert_eq!(ch.is_empty(), model.is_empty());
            prop_assert_eq!(ch.is_full(), model.len() as u64 == cap);
        }
        // Every block is accounted for: in the ring, held, or free.
        let st = ch.alloc_stats().unwrap();
        let in_ring = model.iter().filter(|m| m.len() > ch.max_inline()).count() as u64;
        let held_blocks = held.iter().filter(|m| m.is_zero_copy()).count() as u64;
        prop_assert_eq!(st.in_ring, in_ring);
        prop_assert_eq!(st.owned, held_blocks);
        prop_assert_eq!(st.free + st.owned + st.in_ring, st.blocks);
        prop_assert_eq!(st.listed, st.free);
        drop(held);
        while let Ok(m) = ch.try_recv() {
            let want = model.pop_front();
            prop_assert_eq!(Some(&m[..]), want.as_deref());
        }
        let st = ch.alloc_stats().unwrap();
        prop_assert_eq!(st.free, st.blocks);
    }
}
