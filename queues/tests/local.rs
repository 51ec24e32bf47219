//! Queue, JoinableQueue, SimpleQueue and pipe semantics in one process
//! (threads where a second party is needed).

mod common;

use common::{assert_gone, deadline};
use queues::{
    pipe, GetError, JoinableQueue, Mode, PipeError, PutError, Queue, QueueChannel, QueueError, QueueHandle,
    SimpleQueue, Tag, TaskDoneError,
};
use std::sync::Arc;
use std::time::Duration;

const NOW: Option<Duration> = Some(Duration::ZERO);

#[test]
fn bounded_put_fails_when_full_and_get_makes_room() {
    let _g = deadline("bounded");
    let q = Queue::new(2).unwrap();
    assert_eq!(q.mode(), Mode::Exact);
    q.put(b"a", None).unwrap();
    q.put(b"b", None).unwrap();
    assert!(q.full());
    assert_eq!(q.put(b"c", NOW), Err(PutError::Full));
    assert_eq!(q.put(b"c", Some(Duration::from_millis(20))), Err(PutError::Full));
    assert_eq!(q.qsize(), 2);
    assert_eq!(q.get(None).unwrap().payload(), b"a");
    q.put(b"c", NOW).unwrap();
    assert_eq!(q.get(None).unwrap().payload(), b"b");
    assert_eq!(q.get(None).unwrap().payload(), b"c");
    assert_eq!(q.get(NOW).unwrap_err(), GetError::Empty);
    assert_eq!(q.get(Some(Duration::from_millis(20))).unwrap_err(), GetError::Empty);
    let h = q.handle().to_string();
    drop(q);
    assert_gone(&h);
}

#[test]
fn a_blocked_put_goes_through_when_a_thread_gets() {
    let _g = deadline("blocked put");
    let q = Arc::new(Queue::new(1).unwrap());
    q.put(b"first", None).unwrap();
    let q2 = Arc::clone(&q);
    let t = std::thread::spawn(move || q2.put(b"second", None));
    // The put waits for room; the get makes it.
    assert_eq!(q.get(None).unwrap().payload(), b"first");
    t.join().unwrap().unwrap();
    assert_eq!(q.get(None).unwrap().payload(), b"second");
}

#[test]
fn unbounded_put_never_waits_and_keeps_order() {
    let _g = deadline("unbounded");
    let q = Queue::new(0).unwrap();
    assert_eq!(q.mode(), Mode::Unbounded);
    // Far more than the ring holds: the feeder sends the rest.
    let n = 5000u32;
    for i in 0..n {
        q.put(&i.to_le_bytes(), NOW).unwrap();
    }
    assert!(!q.full());
    // Approximate: a message the feeder is sending may count twice.
    assert!((n as usize..=n as usize + 1).contains(&q.qsize()), "qsize {}", q.qsize());
    for i in 0..n {
        let item = q.get(None).unwrap();
        assert_eq!(item.tag(), Tag::Bytes);
        assert_eq!(item.payload(), i.to_le_bytes());
    }
    assert!(q.empty());
}

#[test]
fn large_messages_travel_in_blocks() {
    let _g = deadline("large");
    let q = Queue::new(0).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        q.put(&big, None).unwrap();
    }
    for _ in 0..3 {
        assert_eq!(q.get(None).unwrap().payload(), &big[..]);
    }
}

#[test]
fn semaphore_mode_bounds_above_exact_max() {
    let _g = deadline("semaphore");
    let n = queues::EXACT_MAX + 10;
    let q = Queue::new(n).unwrap();
    assert_eq!(q.mode(), Mode::Semaphore);
    for i in 0..n {
        q.put(&i.to_le_bytes(), NOW).unwrap();
    }
    assert!(q.full());
    assert_eq!(q.qsize() as u64, n);
    assert_eq!(q.put(b"x", NOW), Err(PutError::Full));
    assert_eq!(q.get(None).unwrap().payload(), 0u64.to_le_bytes());
    q.put(b"x", NOW).unwrap();
    for i in 1..n {
        assert_eq!(q.get(None).unwrap().payload(), i.to_le_bytes());
    }
    assert_eq!(q.get(None).unwrap().payload(), b"x");
    let h = q.handle().to_string();
    drop(q);
    assert_gone(&h);
}

#[test]
fn a_closed_queue_refuses_puts_and_gets_and_its_feeder_flushes() {
    let _g = deadline("close");
    let q = Queue::new(0).unwrap();
    let other = Queue::attach(&q.handle()).unwrap();
    for i in 0..2000u32 {
        q.put(&i.to_le_bytes(), None).unwrap();
    }
    assert!(q.join_thread().is_err(), "join_thread before close");
    q.close();
    assert_eq!(q.put(b"x", None), Err(PutError::Closed));
    assert_eq!(q.get(NOW).unwrap_err(), GetError::Closed);
    let t = {
        let q = Arc::new(q);
        let q2 = Arc::clone(&q);
        (std::thread::spawn(move || q2.join_thread()), q)
    };
    for i in 0..2000u32 {
        assert_eq!(other.get(None).unwrap().payload(), i.to_le_bytes());
    }
    t.0.join().unwrap().unwrap();
}

#[test]
fn a_feeder_with_nobody_to_receive_drops_what_it_holds() {
    let _g = deadline("feeder drop");
    let q = Queue::new(0).unwrap();
    for i in 0..2000u32 {
        q.put(&i.to_le_bytes(), None).unwrap();
    }
    let h = q.handle().to_string();
    // No other process is attached: dropping must not wait for ever.
    drop(q);
    assert_gone(&h);
}

#[test]
fn joinable_queue_counts_tasks() {
    let _g = deadline("joinable");
    let q = Arc::new(JoinableQueue::new(0).unwrap());
    assert_eq!(q.task_done(), Err(TaskDoneError::TooManyCalls));
    assert!(q.join_timeout(NOW).unwrap());
    for i in 0..10u8 {
        q.put(&[i], None).unwrap();
    }
    assert_eq!(q.unfinished(), 10);
    assert!(!q.join_timeout(Some(Duration::from_millis(10))).unwrap());
    let q2 = Arc::clone(&q);
    let worker = std::thread::spawn(move || {
        for _ in 0..10 {
            q2.get(None).unwrap();
            q2.task_done().unwrap();
        }
    });
    q.join().unwrap();
    assert_eq!(q.unfinished(), 0);
    worker.join().unwrap();
    assert_eq!(q.task_done().unwrap_err().to_string(), "task_done() called too many times");
    let h = q.handle().to_string();
    drop(q);
    assert_gone(&h);
}

#[test]
fn a_failed_put_is_not_counted() {
    let _g = deadline("uncount");
    let q = JoinableQueue::new(1).unwrap();
    q.put(b"a", None).unwrap();
    assert_eq!(q.put(b"b", NOW), Err(PutError::Full));
    assert_eq!(q.unfinished(), 1);
    q.get(None).unwrap();
    q.task_done().unwrap();
    assert!(q.join_timeout(NOW).unwrap());
}

#[test]
fn simple_queue_puts_and_gets() {
    let _g = deadline("simple");
    let q = SimpleQueue::new().unwrap();
    q.put(b"hello").unwrap();
    q.put_tagged(Tag::Pickle, b"\x80\x04N.").unwrap();
    assert!(!q.empty());
    assert_eq!(q.get().unwrap().payload(), b"hello");
    let p = q.get().unwrap();
    assert_eq!((p.tag(), p.payload()), (Tag::Pickle, &b"\x80\x04N."[..]));
    assert_eq!(q.get_timeout(NOW).unwrap_err(), GetError::Empty);
    assert_eq!(
        q.put_tagged(Tag::Pickle, b"N.").unwrap_err().to_string(),
        queues::wire::WireError::NotAPickle.to_string()
    );
    let h = q.handle().to_string();
    drop(q);
    assert_gone(&h);
}

#[test]
fn handles_round_trip_and_bad_ones_are_refused() {
    let _g = deadline("handles");
    let q = Queue::new(5).unwrap();
    let text = q.handle().to_string();
    let h: QueueHandle = text.parse().unwrap();
    assert_eq!(h, q.handle());
    let again = Queue::attach(&h).unwrap();
    q.put(b"x", None).unwrap();
    assert_eq!(again.get(None).unwrap().payload(), b"x");

    for bad in
        ["", "nonsense", "dq1:queue", "dq2:queue:exact:5:-:-:-", "dq1:queue:exact:5:-:-:-", "dq1:queue:odd:5:AAAA:-:-"]
    {
        assert!(matches!(bad.parse::<QueueHandle>(), Err(QueueError::Handle(_))), "{bad:?} was accepted");
    }
    // Another bound than the channel's: forged.
    let forged: QueueHandle = text.replacen(":5:", ":7:", 1).parse().unwrap();
    assert!(matches!(Queue::attach(&forged), Err(QueueError::Handle(_))));
    // Right syntax, wrong kind.
    let jq = JoinableQueue::new(0).unwrap();
    let err = Queue::attach(&jq.handle()).unwrap_err();
    assert!(err.to_string().contains("joinable"), "{err}");
    assert!(SimpleQueue::attach(&q.handle()).is_err());
    // A queue that is gone.
    drop((q, again));
    assert!(matches!(Queue::attach(&h), Err(QueueError::Channel(_))));
}

#[test]
fn a_duplex_pipe_carries_both_ways_and_ends_with_eof() {
    let _g = deadline("pipe duplex");
    let (a, b) = pipe(true).unwrap();
    a.send(b"ping").unwrap();
    assert!(b.poll(NOW).unwrap());
    assert_eq!(b.recv().unwrap().payload(), b"ping");
    b.send_bytes(b"\x02raw").unwrap();
    let r = a.recv().unwrap();
    assert_eq!((r.tag(), r.payload()), (Tag::Raw, &b"\x02raw"[..]));
    assert_eq!(a.recv_timeout(Some(Duration::from_millis(10))).unwrap_err(), PipeError::Timeout);
    assert!(!a.poll(NOW).unwrap());
    b.send(b"last").unwrap();
    b.close();
    assert!(b.closed());
    assert_eq!(b.send(b"x"), Err(PipeError::Closed));
    assert_eq!(a.recv().unwrap().payload(), b"last");
    assert_eq!(a.recv().unwrap_err(), PipeError::Eof);
    assert!(a.poll(None).unwrap(), "EOF counts as readable");
}

#[test]
fn a_one_way_pipe_reads_at_one_end_and_writes_at_the_other() {
    let _g = deadline("pipe simplex");
    let (r, w) = pipe(false).unwrap();
    assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
    assert!(matches!(r.send(b"x"), Err(PipeError::WrongDirection(_))));
    assert!(matches!(w.recv(), Err(PipeError::WrongDirection(_))));
    w.send(b"one").unwrap();
    let h = r.handle().unwrap().to_string();
    drop(w);
    assert_eq!(r.recv().unwrap().payload(), b"one");
    assert_eq!(r.recv().unwrap_err(), PipeError::Eof);
    drop(r);
    assert_gone(&h);
}

#[test]
fn a_receiver_blocked_on_a_pipe_wakes_at_eof() {
    let _g = deadline("pipe wake");
    let (r, w) = pipe(false).unwrap();
    let t = std::thread::spawn(move || r.recv().map(|i| i.to_vec()));
    w.send(b"a").unwrap();
    w.close();
    let first = t.join().unwrap();
    assert_eq!(first.unwrap(), b"a");
}

#[test]
fn a_binding_makes_the_first_attempt_and_the_feeder_the_rest() {
    let _g = deadline("put_with");
    let q = Queue::new(0).unwrap();
    let other = Queue::attach(&q.handle()).unwrap();
    // Sent by the caller: no feeder.
    let started =
        q.put_with(None, |ch, t| ch.send_parts(&[b"\x02direct"], t).map(|()| true), || unreachable!()).unwrap();
    assert!(!started);
    // Not sent by the caller: buffered; the first such put starts the feeder.
    let started = q.put_with(None, |_, _| Ok(false), || Ok(b"\x02buffered".to_vec())).unwrap();
    assert!(started);
    let started = q.put_with(None, |_, _| Ok(false), || Ok(b"\x02later".to_vec())).unwrap();
    assert!(!started, "the feeder runs already");
    let feeder = q.feeder();
    q.close();
    drop(q);
    feeder.join();
    for want in [&b"direct"[..], b"buffered", b"later"] {
        assert_eq!(other.get(None).unwrap().payload(), want);
    }
    // An exact queue: one call with the caller's timeout, never buffered.
    let exact = Queue::new(3).unwrap();
    let mut asked = None;
    let r = exact.put_with(
        NOW,
        |_, t| {
            asked = Some(t);
            Ok(false)
        },
        || unreachable!(),
    );
    assert_eq!(r, Err(PutError::Full));
    assert_eq!(asked, Some(NOW));
    assert_eq!(exact.put_with(None, |_, _| Ok(true), || unreachable!()), Ok(false));
}

#[test]
fn the_feeder_reports_and_drops_what_it_cannot_send() {
    let _g = deadline("feeder error");
    let q = Queue::new(0).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    q.set_feeder_error_hook(Box::new(move |e, payload| s.lock().unwrap().push((e.clone(), payload.to_vec()))));
    // Nobody receives: the ring fills and the rest waits for the feeder.
    let n = queues::UNBOUNDED_CAPACITY as u32 + 5;
    for i in 0..n {
        q.put(&i.to_le_bytes(), NOW).unwrap();
    }
    q.channel().channel().destroy();
    q.close();
    q.join_thread().unwrap();
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for (e, payload) in seen.iter() {
        assert_eq!(*e, PutError::Channel(queues::Fault::Destroyed));
        assert_eq!(payload.len(), 4, "the payload without its tag byte");
    }
}

#[test]
fn a_put_during_a_slow_first_attempt_waits_behind_it_without_blocking() {
    let _g = deadline("slow attempt");
    let q = Arc::new(Queue::new(0).unwrap());
    let (in_attempt, attempt_started) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let qa = Arc::clone(&q);
    let a = std::thread::spawn(move || {
        qa.put_with(
            None,
            |_, _| {
                in_attempt.send(()).unwrap();
                released.recv().unwrap(); // the attempt "waits", then fails
                Ok(false)
            },
            || Ok(b"\x02first".to_vec()),
        )
    });
    attempt_started.recv().unwrap();
    // Another put meanwhile: neither blocked nor tried first; it waits behind.
    let b = q.put_with(None, |_, _| unreachable!("the head is being sent"), || Ok(b"\x02second".to_vec()));
    assert!(b.unwrap(), "it started the feeder");
    release.send(()).unwrap();
    assert!(!a.join().unwrap().unwrap());
    assert_eq!(q.get(None).unwrap().payload(), b"first");
    assert_eq!(q.get(None).unwrap().payload(), b"second");
}

#[test]
fn an_inbox_keeps_first_skips_control_and_ends_when_the_peer_is_gone() {
    use queues::{Fault, Inbox};
    // A binding's receive: a script of what its channel gives.
    let mut script: std::collections::VecDeque<Option<(Tag, u32)>> =
        [Some((Tag::Control, 0)), Some((Tag::Bytes, 1)), None, Some((Tag::Control, 0))].into();
    let mut inbox = Inbox::new();
    inbox.keep(Tag::Raw, 7);
    let mut gone = false;
    let mut recv = |_t: Option<Duration>| -> Result<Option<(Tag, u32)>, Fault> { Ok(script.pop_front().flatten()) };
    assert_eq!(inbox.recv_with(None, &mut recv, || Ok(false)).unwrap(), (Tag::Raw, 7), "what was kept comes first");
    assert_eq!(inbox.recv_with(None, &mut recv, || Ok(false)).unwrap(), (Tag::Bytes, 1), "control skipped");
    assert_eq!(inbox.recv_with(NOW, &mut recv, || Ok(false)), Err(PipeError::Timeout));
    // A control message, then the peer is gone with nothing left: the end.
    assert_eq!(
        inbox.recv_with(None, &mut recv, || {
            gone = true;
            Ok(true)
        }),
        Err(PipeError::Eof)
    );
    assert!(gone);
    // A poll keeps what it took; the end of file is something to receive.
    let mut one = Some((Tag::Pickle, 9));
    assert!(inbox.poll_with(NOW, |_| Ok(one.take()), || Ok(false)).unwrap());
    assert!(inbox.poll_with(NOW, |_| Ok(None), || Ok(true)).unwrap(), "kept: no receive");
    assert_eq!(inbox.recv_with(NOW, |_| Ok(None), || Ok(true)).unwrap(), (Tag::Pickle, 9));
    assert!(inbox.poll_with(NOW, |_| Ok(None), || Ok(true)).unwrap(), "the end");
    assert!(!inbox.poll_with(NOW, |_| Ok(None), || Ok(false)).unwrap());
    assert_eq!(inbox.recv_with(NOW, |_| Err(Fault::Closed), || Ok(false)), Err(PipeError::Eof));
}
