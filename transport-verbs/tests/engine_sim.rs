//! The protocol engine between two endpoints on the simulated fabric (one
//! process; `engine_mp.rs` has two): sizes, order, flow control, the
//! registration cache, every failure path, teardown.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use transport_shm::blocks::{BlockId, BlockMessage, Store, Stores};
use transport_verbs::engine::{self, EngineConfig, EngineError};
use transport_verbs::regcache::CacheLimits;
use transport_verbs::sim::{Fault, SimStats};
use transport_verbs::verbs::*;
use transport_verbs::wire::{self, Address, Header, HEADER};

#[test]
fn messages_of_every_size_round_trip_both_ways() {
    let p = pair(quiet());
    let inline = 128 - HEADER;
    let eager = 8192 - HEADER;
    let sizes = [0, 1, 7, inline - 1, inline, inline + 1, 4000, eager, eager + 1, 70_000, 1 << 20, 3 << 20];
    for (from, to) in [(&p.a, &p.b), (&p.b, &p.a)] {
        for (i, &n) in sizes.iter().enumerate() {
            let m = pattern(n, i as u64);
            // In two parts: the engine gathers them.
            let (x, y) = m.split_at(n / 3);
            from.send(&[x, y], Some(WAIT)).unwrap();
        }
        for (i, &n) in sizes.iter().enumerate() {
            let got = to.recv(Some(WAIT)).unwrap();
            assert_eq!(got.len(), n);
            assert!(got[..] == pattern(n, i as u64)[..], "message {i} ({n} bytes) damaged");
        }
    }
    let s = p.a.stats();
    // Sizes 0 to inline (5) and the large messages' descriptors (4) went
    // inline, 3 were written into the ring, 4 were read by the peer.
    assert_eq!((s.sent_inline, s.sent_written, s.sent_large), (9, 3, 4), "{s:?}");
    assert_eq!(p.b.stats().reads, 6, "1 MiB chunks: the 3 MiB message takes 3 reads");
}

#[test]
fn one_sender_stays_in_order_across_many_ring_laps() {
    let p = pair(EngineConfig { slots: 8, ..quiet() });
    let a = Arc::new(p.a);
    let tx = a.clone();
    const N: u32 = 3000;
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            let len = match i % 100 {
                7 => 100_000,
                13 => 5000,
                _ => 4 + (i as usize % 60),
            };
            let mut m = pattern(len, u64::from(i));
            m[..4].copy_from_slice(&i.to_le_bytes());
            tx.send(&[&m], Some(WAIT)).unwrap();
        }
    });
    for i in 0..N {
        let m = p.b.recv(Some(WAIT)).unwrap();
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), i, "out of order");
        assert!(m[4..] == pattern(m.len(), u64::from(i))[4..]);
    }
    sender.join().unwrap();
    assert!(p.b.stats().peak_held <= 8);
}

#[test]
fn a_slow_receiver_slows_its_sender() {
    let p = pair(EngineConfig { slots: 4, ..quiet() });
    let a = Arc::new(p.a);
    let tx = a.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..100u32 {
            tx.send(&[&i.to_le_bytes()], Some(WAIT)).unwrap();
        }
    });
    // The receiver takes nothing: the sender must come to wait for credit
    // once the 4 slots are full (more would be a protocol error at the
    // receiver, which fails the link).
    assert!(test_support::eventually(WAIT, || a.stats().credit_waits > 0), "the sender never waited");
    assert!(test_support::eventually(WAIT, || p.b.stats().received == 4));
    assert_eq!(p.b.stats().peak_held, 4);
    assert!(matches!(a.send(&[b"x"], Some(Duration::ZERO)), Err(EngineError::WouldBlock)));
    assert!(matches!(a.send(&[b"x"], Some(Duration::from_millis(20))), Err(EngineError::TimedOut)));
    for i in 0..100u32 {
        assert_eq!(p.b.recv(Some(WAIT)).unwrap()[..], i.to_le_bytes());
    }
    sender.join().unwrap();
    assert!(p.b.stats().peak_held <= 4, "a receiver holds at most its slots");
    // Large messages too: the receiver's memory is bounded by its slots.
    let waits = a.stats().credit_waits;
    let tx = a.clone();
    let big = pattern(200_000, 1);
    let b2 = big.clone();
    let sender = std::thread::spawn(move || {
        for _ in 0..12 {
            tx.send(&[&b2], Some(WAIT)).unwrap();
        }
    });
    assert!(test_support::eventually(WAIT, || a.stats().credit_waits > waits));
    assert!(test_support::eventually(WAIT, || p.b.stats().received == 104));
    assert!(p.b.failure().is_none());
    for _ in 0..12 {
        assert!(p.b.recv(Some(WAIT)).unwrap()[..] == big[..]);
    }
    sender.join().unwrap();
}

#[test]
fn large_messages_reuse_registered_buffers() {
    let cfg =
        EngineConfig { cache: CacheLimits { min_size: 64 << 10, max_idle: 4, max_idle_bytes: 16 << 20 }, ..quiet() };
    let p = pair(cfg);
    let m = pattern(500_000, 3);
    for _ in 0..10 {
        p.a.send(&[&m], Some(WAIT)).unwrap();
        assert!(p.b.recv(Some(WAIT)).unwrap()[..] == m[..]);
        // The sender's buffer comes back when the receiver's report of its
        // read arrives: wait for that event, so that the next send finds it.
        assert!(test_support::eventually(WAIT, || p.a.cache_stats().in_use == 0));
    }
    let (sa, sb) = (p.a.cache_stats(), p.b.cache_stats());
    assert!(sa.hits >= 8 && sa.misses <= 2, "sender {sa:?}");
    assert!(sb.hits >= 8 && sb.misses <= 2, "receiver {sb:?}");
    // A received large message is the cache's buffer: in use while held.
    p.a.send(&[&m], Some(WAIT)).unwrap();
    let held = p.b.recv(Some(WAIT)).unwrap();
    assert_eq!(p.b.cache_stats().in_use, 1);
    drop(held);
    assert_eq!(p.b.cache_stats().in_use, 0);
}

/// Wait until the link fails, through a receive.
fn failure_of(e: &engine::Engine) -> EngineError {
    match e.recv(Some(WAIT)) {
        Err(err) => err,
        Ok(m) => panic!("a message of {} bytes where a failure was due", m.len()),
    }
}

#[test]
fn a_failed_work_request_fails_the_link_with_its_status() {
    let p = pair(quiet());
    p.a.send(&[b"fine"], Some(WAIT)).unwrap();
    assert_eq!(&p.b.recv(Some(WAIT)).unwrap()[..], b"fine");
    p.pa.inject(Fault::FailWr { skip: 0, status: WcStatus::RemoteAccess });
    p.a.send(&[b"this one fails"], Some(WAIT)).unwrap();
    let e = failure_of(&p.a);
    assert!(matches!(e, EngineError::WorkRequest { status: WcStatus::RemoteAccess, op: "inline send", .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("remote access error") && text.contains("inline send"), "{text}");
    // Every later call says the same.
    assert_eq!(p.a.send(&[b"x"], Some(WAIT)).unwrap_err(), e);
    // The peer notices the link is gone at its next send (its messages
    // reach a queue pair in the error state).
    p.b.send(&[b"y"], Some(WAIT)).unwrap();
    assert!(matches!(failure_of(&p.b), EngineError::PeerLost(_)));
    // A failed large transfer: the reader's RDMA read fails.
    let p = pair(quiet());
    p.pb.inject(Fault::FailWr { skip: 0, status: WcStatus::LocalProtection });
    p.a.send(&[&pattern(100_000, 1)], Some(WAIT)).unwrap();
    let e = failure_of(&p.b);
    assert!(matches!(e, EngineError::WorkRequest { op: "RDMA read", status: WcStatus::LocalProtection, .. }), "{e:?}");
}

#[test]
fn a_cut_link_is_a_lost_peer_on_both_sides() {
    let p = pair(quiet());
    p.pb.inject(Fault::Cut);
    p.a.send(&[b"to nowhere"], Some(WAIT)).unwrap();
    let e = failure_of(&p.a);
    assert!(matches!(&e, EngineError::PeerLost(m) if m.contains("retry counter exceeded")), "{e:?}");
    p.b.send(&[b"from nowhere"], Some(WAIT)).unwrap();
    assert!(matches!(failure_of(&p.b), EngineError::PeerLost(_)));
}

#[test]
fn keepalives_notice_a_lost_peer_while_only_waiting() {
    let cfg = EngineConfig { keepalive: Some(Duration::from_millis(20)), ..EngineConfig::default() };
    let p = pair(cfg);
    p.pb.inject(Fault::Cut);
    // `a` sends nothing: only its keepalive can notice.
    assert!(matches!(failure_of(&p.a), EngineError::PeerLost(_)));
}

#[test]
fn an_exhausted_credit_window_is_a_clear_error() {
    // The receiver stops re-posting receives: the sender's credits say
    // there is room, the receive queue says otherwise.
    let p = pair(EngineConfig { slots: 4, ctrl: 3, ..quiet() });
    p.pb.inject(Fault::DropRecvs);
    let mut failed = None;
    for i in 0..20u32 {
        if let Err(e) = p.a.send(&[&i.to_le_bytes()], Some(WAIT)) {
            failed = Some(e);
            break;
        }
        // The receiver takes everything (and returns the credits), until
        // the sender's link fails: the message it last posted never
        // arrives then (nothing tells the receiver, whose keepalive is off).
        loop {
            match p.b.recv(Some(Duration::from_millis(20))) {
                Ok(m) => {
                    assert_eq!(m[..], i.to_le_bytes());
                    break;
                }
                Err(EngineError::TimedOut) if p.a.failure().is_none() => {}
                Err(EngineError::TimedOut) => break,
                Err(e) => panic!("the receiver failed: {e:?}"),
            }
        }
    }
    let e = failed.unwrap_or_else(|| failure_of(&p.a));
    assert!(matches!(&e, EngineError::CreditExhausted(m) if m.contains("no receive posted")), "{e:?}");
}

#[test]
fn closing_says_bye_and_the_peer_sees_it_after_its_messages() {
    let p = pair(quiet());
    p.a.send(&[b"last words"], Some(WAIT)).unwrap();
    p.a.send(&[&pattern(300_000, 2)], Some(WAIT)).unwrap();
    // Closing waits for the peer to have read the large message.
    let b = p.b;
    let reader = std::thread::spawn(move || {
        let x = b.recv(Some(WAIT)).unwrap();
        let y = b.recv(Some(WAIT)).unwrap();
        assert_eq!(&x[..], b"last words");
        assert!(y[..] == pattern(300_000, 2)[..]);
        let e = b.recv(Some(WAIT)).unwrap_err();
        assert_eq!(e, EngineError::PeerClosed);
        assert_eq!(b.send(&[b"x"], Some(WAIT)).unwrap_err(), EngineError::PeerClosed);
    });
    p.a.close();
    assert_eq!(p.a.send(&[b"x"], Some(WAIT)).unwrap_err(), EngineError::Closed);
    assert_eq!(p.a.recv(Some(WAIT)).unwrap_err(), EngineError::Closed);
    reader.join().unwrap();
}

#[test]
fn teardown_deregisters_and_frees_everything() {
    let p = pair(quiet());
    for i in 0..5 {
        p.a.send(&[&pattern(200_000, i)], Some(WAIT)).unwrap();
        p.b.send(&[&pattern(100, i)], Some(WAIT)).unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(p.b.recv(Some(WAIT)).unwrap());
        p.a.recv(Some(WAIT)).unwrap();
    }
    assert!(p.pa.stats().mrs > 0 && p.pb.stats().qps == 1);
    let (pa, pb) = (p.pa.clone(), p.pb.clone());
    drop(p.a);
    drop(p.b);
    assert_eq!(pa.stats(), SimStats::default(), "initiator left something");
    // The receiver's large messages still held keep their buffers...
    let s = pb.stats();
    assert_eq!((s.qps, s.cqs), (0, 0));
    assert!(s.mrs >= 1 && s.mrs == s.buffers, "{s:?}");
    assert!(held.iter().enumerate().all(|(i, m)| m[..] == pattern(200_000, i as u64)[..]));
    // ...until they are dropped.
    drop(held);
    assert_eq!(pb.stats(), SimStats::default(), "responder left something");
}

#[test]
fn set_up_errors_say_what_is_wrong() {
    test_support::watchdog::start();
    let f = fabric();
    let pa = f.open_sim().unwrap() as Arc<dyn Port>;
    let pb = f.open_sim().unwrap() as Arc<dyn Port>;
    let err = |r: Result<(engine::Engine, Vec<u8>), EngineError>| r.map(|_| ()).unwrap_err().to_string();
    assert!(err(engine::accept(pb.clone(), quiet(), b"junk")).contains("offer"));
    let (c, offer) = engine::offer(pa.clone(), quiet()).unwrap();
    // An offer where an answer is due, and the other way round.
    let e = c.finish(&offer).unwrap_err();
    assert!(e.to_string().contains("answered with an offer"), "{e}");
    let mut a = Address::decode(&engine::offer(pa.clone(), quiet()).unwrap().1).unwrap();
    a.answer = true;
    assert!(err(engine::accept(pb.clone(), quiet(), &a.encode())).contains("answer where an offer"));
    // A peer on another simulated network cannot be reached.
    let other = fabric().open_sim().unwrap() as Arc<dyn Port>;
    let (_c, offer) = engine::offer(pa.clone(), quiet()).unwrap();
    let e = err(engine::accept(other, quiet(), &offer));
    assert!(e.contains("not on this simulated network"), "{e}");
    // A bad configuration.
    let e = engine::offer(pa.clone(), EngineConfig { ctrl: 1, ..quiet() }).unwrap_err();
    assert!(e.to_string().contains("ctrl"), "{e}");
    // The exchange itself failing.
    let e = engine::connect(pa, quiet(), |_| Err(std::io::Error::other("the link broke"))).unwrap_err();
    assert!(e.to_string().contains("the link broke"), "{e}");
}

#[test]
fn too_large_and_failed_from_outside() {
    let p = pair(EngineConfig { max_message: 1000, ..quiet() });
    let e = p.a.send(&[&[0u8; 1001]], Some(WAIT)).unwrap_err();
    assert_eq!(e, EngineError::TooLarge { len: 1001, max: 1000 });
    p.b.fail(EngineError::PeerLost("its TCP connection closed".into()));
    assert!(matches!(p.b.recv(None), Err(EngineError::PeerLost(m)) if m.contains("TCP")));
}

/// An engine and, connected to it, a raw queue pair with its completion
/// queue and its registered receive buffer.
type RawPeer = (engine::Engine, Box<dyn QueuePair>, Arc<dyn CompletionQueue>, Buffer, Box<dyn MemoryRegion>);

/// A hand-made peer: a raw queue pair connected to an engine, to send it
/// what no engine would.
fn raw_peer(cfg: EngineConfig) -> RawPeer {
    test_support::watchdog::start();
    let f = fabric();
    let pa = f.open_sim().unwrap() as Arc<dyn Port>;
    let pb = f.open_sim().unwrap() as Arc<dyn Port>;
    let (conn, offer) = engine::offer(pa, cfg).unwrap();
    let offer = Address::decode(&offer).unwrap();
    let cq = pb.create_cq(64).unwrap();
    let qp = pb.create_qp(&cq, QpCaps { max_send_wr: 16, max_recv_wr: 16, max_inline: 128, max_rd_atomic: 4 }).unwrap();
    qp.modify(QpTransition::Init).unwrap();
    let buf = pb.alloc(16 * 256).unwrap();
    // SAFETY: the buffer outlives the region (returned together, region
    // dropped first by the callers).
    let mr = unsafe { pb.register(buf.ptr(), buf.len(), Access::LOCAL_WRITE | Access::REMOTE_WRITE) }.unwrap();
    for i in 0..16u64 {
        qp.post_recv(&RecvWr { wr_id: i, sge: Sge { addr: buf.addr() + i * 256, len: 256, lkey: mr.lkey() } }).unwrap();
    }
    qp.modify(QpTransition::ReadyToReceive(offer.qp.clone())).unwrap();
    qp.modify(QpTransition::ReadyToSend).unwrap();
    let answer = Address {
        answer: true,
        qp: qp.address(),
        max_reads: 4,
        ring_addr: buf.addr(),
        ring_rkey: mr.rkey(),
        slots: 8,
        slot_size: 256,
        ctrl: 8,
        recv_buf: 256,
    };
    let e = conn.finish(&answer.encode()).unwrap();
    (e, qp, cq, buf, mr)
}

fn raw_send(qp: &dyn QueuePair, bytes: &[u8]) {
    let wr = SendWr {
        wr_id: 99,
        op: SendOp::Send,
        sge: Sge { addr: bytes.as_ptr() as u64, len: bytes.len() as u32, lkey: 0 },
        inline: true,
    };
    qp.post_send(&wr).unwrap();
}

#[test]
fn a_peer_that_breaks_the_protocol_fails_the_link() {
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (vec![9; HEADER], "reserved bits"),
        (
            {
                let mut h = Header { kind: 9, ..Header::default() }.encode().to_vec();
                h[1] = 0;
                h
            },
            "kind 9",
        ),
        (
            Header { kind: wire::DATA, len: 1, seq: 5, ..Header::default() }
                .encode()
                .iter()
                .chain(b"x")
                .copied()
                .collect(),
            "data message 5 arrived, 0 was next",
        ),
        (Header { kind: wire::DATA, len: 7, ..Header::default() }.encode().to_vec(), "DATA of 7 bytes"),
        (Header { kind: wire::CTRL, data_freed: 3, ..Header::default() }.encode().to_vec(), "freed 3 data slots"),
        (vec![1, 2, 3], "shorter than its header"),
    ];
    for (bytes, want) in bad {
        let (e, qp, _cq, _buf, _mr) = raw_peer(quiet());
        raw_send(&*qp, &bytes);
        let err = failure_of(&e);
        assert!(matches!(&err, EngineError::Protocol(m) if m.contains(want)), "{want}: {err:?}");
        drop(e);
    }
}

/// A block of a block store of this process, received as a block message
/// names it (what a node service holds when a channel of its node gives it
/// a large message): its bytes as `Bytes`, which hold the block.
fn received_block(store: &Store, stores: &mut Stores, data: &[u8]) -> (Option<u8>, bytes::Bytes) {
    let blk = store.take(data.len()).unwrap();
    store.write(blk, data).unwrap();
    let m = store.lent(blk).send(store.attachment(), blk.gen).unwrap();
    let msg = BlockMessage::encode(0x42, store.name(), BlockId { gen: m, ..blk }, data.len());
    let (tag, view) = stores.view(&msg).unwrap().unwrap();
    (tag, bytes::Bytes::from_owner(view))
}

#[test]
fn large_messages_in_a_block_store_are_read_in_place() {
    let p = pair(quiet());
    let name = test_support::unique_name("blk");
    let store = Store::open(&name).unwrap();
    let mut stores = Stores::default();
    let mrs = p.pa.stats().mrs;
    for i in 0..4 {
        let data = pattern(600_000 + i * 1000, i as u64);
        let (tag, body) = received_block(&store, &mut stores, &data);
        let head = format!("reply {i}:");
        p.a.send_in_place(&[head.as_bytes(), &[tag.unwrap()]], &body, Some(WAIT)).unwrap();
        // The link keeps the bytes (and the block) until the peer has read them.
        drop(body);
        let got = p.b.recv(Some(WAIT)).unwrap();
        assert_eq!(&got[..head.len()], head.as_bytes());
        assert_eq!(got[head.len()], 0x42);
        assert!(got[head.len() + 1..] == data[..], "message {i} differs");
        // Back to the store once the peer's report of its read arrives.
        assert!(test_support::eventually(WAIT, || store.blocks_in_use() == 0));
    }
    let st = p.a.stats();
    assert_eq!((st.sent_large, st.sent_in_place), (4, 4), "{st:?}");
    // No registered buffer was filled on the sending side, and the store's
    // segment was registered once (the blocks are all in one segment).
    assert_eq!(p.a.cache_stats().misses + p.a.cache_stats().hits, 0);
    assert_eq!(p.pa.stats().mrs, mrs + 1);

    // Bytes outside any store, and a head over the inline limit, are
    // copied as before; small messages are not read at all.
    let plain = bytes::Bytes::from(pattern(500_000, 9));
    p.a.send_in_place(&[b"h"], &plain, Some(WAIT)).unwrap();
    let got = p.b.recv(Some(WAIT)).unwrap();
    assert!(got[..1] == b"h"[..] && got[1..] == plain[..]);
    let data = pattern(400_000, 10);
    let (_, body) = received_block(&store, &mut stores, &data);
    let long_head = vec![7u8; engine::MAX_PREFIX + 1];
    p.a.send_in_place(&[&long_head], &body, Some(WAIT)).unwrap();
    let got = p.b.recv(Some(WAIT)).unwrap();
    assert!(got[..long_head.len()] == long_head[..] && got[long_head.len()..] == data[..]);
    let small = bytes::Bytes::from_static(b"small");
    p.a.send_in_place(&[b"h"], &small, Some(WAIT)).unwrap();
    assert_eq!(&p.b.recv(Some(WAIT)).unwrap()[..], b"hsmall");
    assert_eq!(p.a.stats().sent_in_place, 4);
    drop(body);
    assert!(test_support::eventually(WAIT, || store.blocks_in_use() == 0));

    // Closing with a block not yet read gives the block back and
    // deregisters the segment.
    let (_, body) = received_block(&store, &mut stores, &data);
    p.pb.inject(Fault::Cut);
    let _ = p.a.send_in_place(&[b"x"], &body, Some(WAIT));
    drop(body);
    let pa = p.pa.clone();
    drop(p.a);
    assert_eq!(pa.stats(), SimStats::default(), "the sender left a registration or buffer");
    assert!(test_support::eventually(WAIT, || store.blocks_in_use() == 0));
    drop(p.b);
    drop((store, stores));
    for i in 0..64 {
        let _ = transport_shm::segment::unlink(&format!("{name}{i}"));
    }
    let _ = transport_shm::segment::unlink(&name);
}

/// A LARGE announcement with inline bytes is checked like the rest: more
/// than the limit is a protocol error.
#[test]
fn a_large_header_with_too_many_inline_bytes_is_refused() {
    let mut h = Header { kind: wire::LARGE, len: (wire::MAX_PREFIX + 1) as u32, ..Header::default() };
    h.seq = 1;
    let mut b = h.encode().to_vec();
    b.extend_from_slice(&[0u8; wire::DESCRIPTOR + wire::MAX_PREFIX + 1]);
    assert!(Header::parse(&b, b.len()).is_err());
    h.len = wire::MAX_PREFIX as u32;
    let mut b = h.encode().to_vec();
    b.extend_from_slice(&[0u8; wire::DESCRIPTOR + wire::MAX_PREFIX]);
    assert!(Header::parse(&b, b.len()).is_ok());
}
