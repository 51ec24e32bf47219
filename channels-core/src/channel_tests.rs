//! Unit tests of the channel on a heap region, with threads, and with
//! deaths simulated by pointing attachment rows at exited processes.

use super::*;
use std::collections::HashMap;
use std::thread;

/// A heap channel; also arms the binary's watchdog, so a hang fails the run.
fn heap(opts: &ChannelOptions) -> Result<Channel, ChannelError> {
    test_support::watchdog::start();
    Channel::heap(opts)
}

fn opts() -> ChannelOptions {
    ChannelOptions::new().capacity(8).slot_size(64)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8).collect()
}

/// A pid that no longer exists.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn assert_no_leaks(ch: &Channel) {
    let st = ch.alloc_stats().unwrap();
    assert_eq!(st.owned, 0, "{st:?}");
    assert_eq!(st.in_ring, 0, "{st:?}");
    assert_eq!(st.free, st.blocks, "{st:?}");
    assert_eq!(st.listed, st.free, "{st:?}");
}

#[test]
fn inline_messages_of_every_size_round_trip_in_order() {
    let ch = heap(&opts()).unwrap();
    assert_eq!(ch.max_inline(), 40);
    for len in 0..=ch.max_inline() {
        ch.send(pattern(len as u64, len)).unwrap();
        let m = ch.recv().unwrap();
        assert_eq!(&*m, &pattern(len as u64, len)[..]);
        assert!(!m.is_zero_copy());
    }
    for i in 0..8u8 {
        ch.try_send([i]).unwrap();
    }
    assert!(ch.is_full());
    assert!(matches!(ch.try_send([9u8]), Err(TrySendError::Full(m)) if m == [9u8]));
    assert!(ch.send_timeout([9u8], Duration::from_millis(5)).unwrap_err().is_timeout());
    for i in 0..8u8 {
        assert_eq!(&*ch.try_recv().unwrap(), &[i]);
    }
    assert_eq!(ch.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(ch.recv_timeout(Duration::from_millis(5)).unwrap_err(), RecvTimeoutError::Timeout);
}

#[test]
fn large_messages_use_blocks_and_are_received_without_copy() {
    let ch = heap(&opts()).unwrap();
    for &len in &[41usize, 1024, 1025, 100_000, 3 << 20] {
        let data = pattern(len as u64, len);
        ch.send(&data).unwrap();
        let m = ch.recv().unwrap();
        assert!(m.is_zero_copy(), "{len}");
        assert_eq!(m.len(), len);
        assert!(*m == data[..]);
        let b = m.into_bytes();
        let b2 = b.clone();
        drop(b);
        assert!(b2 == data[..]);
        let st = ch.alloc_stats().unwrap();
        assert_eq!(st.owned, 1, "held by the Bytes: {st:?}");
        drop(b2);
        assert_no_leaks(&ch);
    }
    // Blocks are reused, not grown, for a steady stream.
    ch.send(pattern(0, 5000)).unwrap();
    drop(ch.recv().unwrap());
    let before = ch.alloc_stats().unwrap().segments;
    for i in 0..100 {
        ch.send(pattern(i, 5000)).unwrap();
        assert_eq!(ch.recv().unwrap().into_vec(), pattern(i, 5000));
    }
    assert_eq!(ch.alloc_stats().unwrap().segments, before);
    assert_no_leaks(&ch);
}

#[test]
fn parts_and_in_place_send_and_receive() {
    let ch = heap(&opts()).unwrap();
    ch.send_parts(&[b"head", b"er", b""], None).unwrap();
    assert_eq!(ch.recv_with(None, |b| b.to_vec()).unwrap(), b"header");
    let big = pattern(1, 70_000);
    ch.send_parts(&[&big[..10], &big[10..]], Some(Duration::ZERO)).unwrap();
    assert!(ch.recv_with(Some(Duration::ZERO), |b| b == &big[..]).unwrap());
    ch.send_with(5, |buf| buf.copy_from_slice(b"12345")).unwrap();
    ch.send_with(20_000, |buf| buf.fill(7)).unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"12345");
    assert!(ch.recv().unwrap().iter().all(|&b| b == 7));
    for _ in 0..8 {
        ch.send([0u8]).unwrap();
    }
    let e = ch.send_with_timeout(3, Some(Duration::ZERO), |_| panic!("not called")).unwrap_err();
    assert!(e.is_timeout());
    // A large in-place message on a full channel: the writer is given back
    // unused and its block is returned.
    let e = ch.send_with_timeout(50_000, Some(Duration::ZERO), |_| panic!("not called")).unwrap_err();
    assert!(e.is_timeout());
    drop(ch.recv().unwrap());
    let write = e.into_inner();
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ch.send_with(50_000, write))).is_err());
    // A panicking in-place reader does not leave its slot claimed.
    while ch.try_recv().is_ok() {}
    ch.send(b"boom").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ch.recv_with(None, |_| panic!("reader"))));
    assert!(r.is_err());
    while ch.try_recv().is_ok() {}
    ch.send(b"after").unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"after");
    assert_no_leaks(&ch);
}

#[test]
fn too_large_and_memory_limit_are_clear_errors() {
    let ch = heap(&opts().max_block_bytes(256 << 10)).unwrap();
    let e = ch.try_send(vec![0u8; 300 << 10]).unwrap_err();
    assert!(matches!(e, TrySendError::Alloc(_, AllocError::LimitReached { .. })), "{e:?}");
    assert!(e.to_string().contains("memory limit"), "{e}");
    assert_eq!(e.into_inner().len(), 300 << 10);
    ch.send(vec![1u8; 2000]).unwrap();
    assert_eq!(ch.recv().unwrap().len(), 2000);
}

#[test]
fn close_drains_then_disconnects_everyone() {
    let ch = heap(&opts()).unwrap();
    let other = ch.attach_again(Roles::BOTH).unwrap();
    ch.send(b"a").unwrap();
    ch.send(vec![3u8; 5000]).unwrap();
    assert!(other.close());
    assert!(!ch.close());
    assert!(ch.is_closed());
    assert!(matches!(ch.send(b"b"), Err(SendError::Disconnected(_))));
    assert_eq!(&*ch.recv().unwrap(), b"a");
    assert_eq!(other.recv().unwrap().len(), 5000);
    assert_eq!(ch.recv().unwrap_err(), RecvError::Disconnected);
    assert_eq!(other.try_recv().unwrap_err(), TryRecvError::Disconnected);
    assert!(ch.is_readable());
    assert_no_leaks(&ch);
}

#[test]
fn destroy_fails_every_attachment_clearly() {
    let ch = heap(&opts()).unwrap();
    let other = ch.attach_again(Roles::BOTH).unwrap();
    ch.send(b"x").unwrap();
    other.destroy();
    assert!(ch.is_destroyed());
    assert!(matches!(ch.try_send(b"y"), Err(TrySendError::Destroyed(_))));
    assert_eq!(ch.try_recv().unwrap_err(), TryRecvError::Destroyed);
    assert_eq!(other.recv().unwrap_err(), RecvError::Destroyed);
    assert_eq!(ch.attach_again(Roles::BOTH).unwrap_err(), ChannelError::Destroyed);
}

#[test]
fn attach_validates_the_handle_against_the_header() {
    let ch = heap(&opts()).unwrap();
    let region = Arc::clone(&ch.inner.region);
    let backing = || ch.inner.alloc.backing().clone_backing();
    let mut h = ch.handle();
    h.generation ^= 1;
    assert!(matches!(
        Channel::attach_in(Arc::clone(&region), backing(), &h, Roles::BOTH),
        Err(ChannelError::Stale { .. })
    ));
    let mut h = ch.handle();
    h.kind = Kind::Lock;
    assert!(matches!(
        Channel::attach_in(Arc::clone(&region), backing(), &h, Roles::BOTH),
        Err(ChannelError::Handle(_))
    ));
    let zeros: Arc<dyn Region> = Arc::new(HeapRegion::new(1 << 16));
    let e = Channel::attach_in(zeros, backing(), &ch.handle(), Roles::BOTH).unwrap_err();
    assert!(matches!(e, ChannelError::NotAChannel(_)), "{e}");
    let tiny: Arc<dyn Region> = Arc::new(HeapRegion::new(16));
    assert!(matches!(
        Channel::attach_in(tiny, backing(), &ch.handle(), Roles::BOTH),
        Err(ChannelError::NotAChannel(_))
    ));
    let h = Handle::from_bytes(&ch.handle().to_bytes()).unwrap();
    let again = Channel::attach_in(region, backing(), &h, Roles::BOTH).unwrap();
    again.send(b"ok").unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"ok");
}

#[test]
fn attachment_table_full_is_an_error_and_rows_are_reused() {
    let ch = heap(&opts().max_attachments(2)).unwrap();
    let b = ch.attach_again(Roles::BOTH).unwrap();
    assert_eq!(ch.attach_again(Roles::BOTH).unwrap_err(), ChannelError::TooManyAttachments { max: 2 });
    drop(b);
    let c = ch.attach_again(Roles::RECV).unwrap();
    assert_eq!((ch.sender_count(), ch.receiver_count()), (1, 2));
    drop(c);
    assert_eq!(ch.attachment_count(), 1);
}

#[test]
fn pipe_mode_disconnects_when_the_last_sender_goes() {
    let o = opts().disconnect_on_no_senders(true).disconnect_on_no_receivers(true).roles(Roles::RECV);
    let rx = heap(&o).unwrap();
    // No sender ever attached yet: an empty channel is just empty.
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    let tx = rx.attach_again(Roles::SEND).unwrap();
    tx.send(b"last words").unwrap();
    let waiter = {
        let rx = rx.clone();
        thread::spawn(move || {
            let first = rx.recv().map(|m| m.to_vec());
            (first, rx.recv().map(|m| m.to_vec()))
        })
    };
    thread::sleep(Duration::from_millis(30));
    drop(tx);
    let (first, second) = waiter.join().unwrap();
    assert_eq!(first.unwrap(), b"last words");
    assert_eq!(second.unwrap_err(), RecvError::Disconnected);
    // And the other direction: no receivers left.
    let tx = rx.attach_again(Roles::SEND).unwrap();
    drop(rx);
    assert!(matches!(tx.send(b"x"), Err(SendError::Disconnected(_))));
}

#[test]
fn blocked_receiver_and_sender_are_woken() {
    let ch = heap(&opts().capacity(1)).unwrap();
    ch.set_spin(Duration::ZERO);
    let rx = ch.clone();
    let t = thread::spawn(move || rx.recv().unwrap().to_vec());
    thread::sleep(Duration::from_millis(30));
    ch.send(b"wake").unwrap();
    assert_eq!(t.join().unwrap(), b"wake");
    ch.send(b"1").unwrap();
    let tx = ch.clone();
    let t = thread::spawn(move || tx.send(b"2").unwrap());
    thread::sleep(Duration::from_millis(30));
    assert_eq!(&*ch.recv().unwrap(), b"1");
    t.join().unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"2");
}

#[test]
fn interrupt_hook_stops_a_wait() {
    let ch = heap(&opts()).unwrap();
    ch.set_spin(Duration::ZERO);
    let mut calls = 0;
    let e = ch
        .recv_interruptible(None, &mut || {
            calls += 1;
            calls < 2
        })
        .unwrap_err();
    assert_eq!(e, RecvTimeoutError::Interrupted);
    assert_eq!(calls, 2);
}

#[test]
fn mpmc_threads_deliver_everything_once_in_per_producer_order() {
    const P: u64 = 3;
    const C: usize = 3;
    const N: u64 = 3000;
    let ch = heap(&ChannelOptions::new().capacity(4).slot_size(64)).unwrap();
    ch.set_spin(Duration::from_micros(5));
    let producers: Vec<_> = (0..P)
        .map(|p| {
            let ch = ch.attach_again(Roles::SEND).unwrap();
            thread::spawn(move || {
                for i in 0..N {
                    let len = if i % 50 == 0 { 3000 } else { 16 + (i % 20) as usize };
                    let mut m = pattern(p * N + i, len);
                    m[..8].copy_from_slice(&(p << 32 | i).to_le_bytes());
                    ch.send(m).unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..C)
        .map(|_| {
            let ch = ch.attach_again(Roles::RECV).unwrap();
            thread::spawn(move || {
                let mut got = vec![];
                while let Ok(m) = ch.recv() {
                    let tag = u64::from_le_bytes(m[..8].try_into().unwrap());
                    let (p, i) = (tag >> 32, tag & 0xFFFF_FFFF);
                    let mut expect = pattern(p * N + i, m.len());
                    expect[..8].copy_from_slice(&tag.to_le_bytes());
                    assert!(*m == expect[..], "corrupt message {p}/{i}");
                    got.push((p, i));
                }
                got
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    ch.close();
    let mut last: HashMap<(usize, u64), u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (c, t) in consumers.into_iter().enumerate() {
        for (p, i) in t.join().unwrap() {
            assert!(seen.insert((p, i)), "duplicate {p}/{i}");
            if let Some(&prev) = last.get(&(c, p)) {
                assert!(i > prev, "consumer {c} got {p}/{i} after {prev}");
            }
            last.insert((c, p), i);
        }
    }
    assert_eq!(seen.len() as u64, P * N);
    assert_no_leaks(&ch);
}

#[test]
fn select_finds_the_ready_channel() {
    let chans: Vec<Channel> = (0..3).map(|_| heap(&opts()).unwrap()).collect();
    for c in &chans {
        c.set_spin(Duration::ZERO);
    }
    let refs: Vec<&Channel> = chans.iter().collect();
    assert_eq!(select_recv(&refs, Some(Duration::from_millis(5))).unwrap_err(), SelectError::Timeout);
    assert_eq!(select_send(&refs, Some(Duration::ZERO)).unwrap(), 0);
    let tx = chans[2].clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        tx.send(b"here").unwrap();
    });
    assert_eq!(select_recv(&refs, Some(Duration::from_secs(10))).unwrap(), 2);
    t.join().unwrap();
    assert_eq!(&*chans[2].recv().unwrap(), b"here");
    chans[1].close();
    assert_eq!(select_recv(&refs, None).unwrap(), 1);
    assert_eq!(select_recv(&[], None).unwrap_err(), SelectError::NoChannels);
}

#[test]
fn select_any_mixes_directions() {
    let empty = heap(&opts()).unwrap();
    let full = heap(&opts().capacity(1)).unwrap();
    for c in [&empty, &full] {
        c.set_spin(Duration::ZERO);
    }
    full.send(b"x").unwrap();
    // Nothing to receive on `empty`, no room in `full`.
    let items = [(&empty, Dir::Recv), (&full, Dir::Send)];
    assert_eq!(select_any(&items, Some(Duration::from_millis(5))).unwrap_err(), SelectError::Timeout);
    // Room appears in `full`: the sleeping select wakes on the send side.
    let rx = full.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        assert_eq!(&*rx.recv().unwrap(), b"x");
    });
    assert_eq!(select_any(&items, Some(Duration::from_secs(10))).unwrap(), 1);
    t.join().unwrap();
    // One channel, both directions: an empty channel can be sent to.
    assert_eq!(select_any(&[(&empty, Dir::Recv), (&empty, Dir::Send)], None).unwrap(), 1);
    // And a message wakes the receive side.
    full.send(b"y").unwrap();
    let tx = empty.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        tx.send(b"z").unwrap();
    });
    assert_eq!(select_any(&[(&full, Dir::Send), (&empty, Dir::Recv)], Some(Duration::from_secs(10))).unwrap(), 1);
    t.join().unwrap();
    assert_eq!(select_any(&[], None).unwrap_err(), SelectError::NoChannels);
}

#[test]
fn dead_writer_reader_and_block_owner_are_recovered() {
    let ch = heap(&opts()).unwrap();
    let dead = ch.attach_again(Roles::BOTH).unwrap();
    let d = dead.attachment_id();
    let i = &*dead.inner;
    // The "dead" attachment: claims a slot and stops (inline writer),
    // publishes a large message's slot half-way (block in ring, slot still
    // WRITING), holds an allocated block, and is mid-read of a message.
    ch.send(b"before").unwrap();
    let _half = i.ring.claim_write(d).unwrap();
    let r = i.alloc.alloc(5000, d, &|_| true).unwrap();
    let c = i.ring.claim_write(d).unwrap();
    i.ring.slot(c.index).len.store(5000, Ordering::Relaxed);
    i.ring.slot(c.index).aux.store(r.encode(), Ordering::Relaxed);
    assert!(put_in_ring(i.alloc.meta(r).unwrap(), c.index, d));
    let _held = i.alloc.alloc(5000, d, &|_| true).unwrap();
    ch.send(vec![5u8; 3000]).unwrap();
    ch.send(b"after").unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"before");
    // Blocked behind the half-written slot.
    assert_eq!(ch.try_recv().unwrap_err(), TryRecvError::Empty);
    let st = ch.alloc_stats().unwrap();
    assert_eq!((st.owned, st.in_ring), (1, 2), "{st:?}");

    ch.inner.table.forge_pid(d, dead_pid());
    let rep = ch.recover().unwrap();
    assert_eq!(rep.found_dead, 1);
    assert_eq!(rep.swept, 1);
    assert_eq!(rep.tombstoned, 2);
    assert_eq!(rep.blocks_freed, 2);
    assert_eq!(ch.recover().unwrap(), RecoveryReport::default(), "idempotent");
    assert_eq!(ch.recv().unwrap().len(), 3000);
    assert_eq!(&*ch.recv().unwrap(), b"after");
    assert_eq!(ch.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_no_leaks(&ch);

    // A dead reader: claimed a large message and took its block.
    let reader = ch.attach_again(Roles::RECV).unwrap();
    let ra = reader.attachment_id();
    ch.send(vec![9u8; 4000]).unwrap();
    let ri = &*reader.inner;
    let c = ri.ring.claim_read(ra, false, &mut || {}).unwrap();
    let r = BlockRef::decode(ri.ring.slot(c.index).aux.load(Ordering::Relaxed)).unwrap();
    assert!(take_from_ring(ri.alloc.meta(r).unwrap(), c.index, ra));
    // Fill the ring behind the held slot: a sender that only polls
    // (try_send) finds the dead reader itself.
    let mut sent = 0;
    while ch.try_send([1u8]).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 7, "one slot is held by the reader");
    ch.inner.table.forge_pid(ra, dead_pid());
    assert!(ch.try_send([1u8]).is_ok(), "the dead reader's slot was recovered by the polling sender");
    for _ in 0..8 {
        assert_eq!(&*ch.recv().unwrap(), &[1u8]);
    }
    let rep = ch.recover().unwrap();
    assert_eq!(rep, RecoveryReport::default(), "already recovered");
    assert_no_leaks(&ch);
    for k in 0..20u8 {
        ch.send([k]).unwrap();
        assert_eq!(&*ch.recv().unwrap(), &[k]);
    }
    // The dead rows went back to the table. (The simulated dead attachments
    // must not release rows that are no longer theirs, so they are leaked.)
    assert_eq!(ch.attachment_count(), 1);
    std::mem::forget(dead);
    std::mem::forget(reader);
}
