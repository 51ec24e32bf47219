//! Queues and pipes between real processes: this test binary re-executed
//! in a child role, real `SIGKILL`s, a watchdog on every test, and a check
//! that nothing is left in `/dev/shm`.

mod common;

use common::{assert_gone, deadline};
use queues::{pipe, Connection, GetError, JoinableQueue, PipeError, Queue, QueueHandle, SimpleQueue};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Lines};
use std::process::{ChildStdout, Stdio};
use std::time::Duration;
use test_support::child::{self, Child};

const HANDLE_ENV: &str = "QUEUES_TEST_HANDLE";
const COUNT_ENV: &str = "QUEUES_TEST_COUNT";
const ID_ENV: &str = "QUEUES_TEST_ID";

#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_entry() {
    child::entry(run_child);
}

fn handle() -> QueueHandle {
    child::arg(HANDLE_ENV).parse().expect("handle")
}

fn count() -> u32 {
    child::arg(COUNT_ENV).parse().expect("count")
}

fn run_child(role: &str) -> i32 {
    match role {
        // Put COUNT items "<id> <seq>" and exit (dropping the queue waits
        // for the feeder).
        "producer" => {
            let q = Queue::attach(&handle()).unwrap();
            let id = child::arg(ID_ENV);
            println!("attached");
            for seq in 0..count() {
                q.put(format!("{id} {seq}").as_bytes(), None).unwrap();
            }
            0
        }
        // Take items, mark each done, until "stop".
        "worker" => {
            let q = JoinableQueue::attach(&handle()).unwrap();
            println!("attached");
            loop {
                let item = q.get(None).unwrap();
                let stop = item.payload() == b"stop";
                q.task_done().unwrap();
                if stop {
                    return 0;
                }
            }
        }
        // Put for ever on a (full) bounded queue, or get for ever.
        "spam-put" => {
            let q = Queue::attach(&handle()).unwrap();
            println!("attached");
            loop {
                let _ = q.put(&[7u8; 100], Some(Duration::from_millis(1)));
                let _ = q.put(&[9u8; 5000], Some(Duration::from_millis(1)));
            }
        }
        "spam-get" => {
            let q = Queue::attach(&handle()).unwrap();
            println!("attached");
            loop {
                let _ = q.get(Some(Duration::from_millis(1)));
            }
        }
        // A simple queue: echo COUNT items back on the same queue, tagged.
        "simple-echo" => {
            let q = SimpleQueue::attach(&handle()).unwrap();
            for _ in 0..count() {
                let item = q.get().unwrap();
                let mut v = b"echo ".to_vec();
                v.extend_from_slice(item.payload());
                q.put(&v).unwrap();
            }
            0
        }
        // A pipe end: send "hello" and "bye", then exit (or wait to be
        // killed).
        "pipe-send" | "pipe-hold" => {
            let c = Connection::attach(&handle()).unwrap();
            println!("attached");
            if role == "pipe-hold" {
                c.send(b"held").unwrap();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            c.send(b"hello").unwrap();
            let back = c.recv().unwrap();
            c.send(&[b"got ", back.payload()].concat()).unwrap();
            c.close();
            0
        }
        other => panic!("unknown role {other}"),
    }
}

/// Start a child playing `role` on the object `handle`; its stdout piped.
fn spawn(role: &str, handle: &QueueHandle, env: &[(&str, String)]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut cmd = child::command("child_entry", role);
    cmd.env(HANDLE_ENV, handle.to_string()).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut c = Child::start(&mut cmd);
    let out = BufReader::new(c.stdout().expect("piped")).lines();
    (c, out)
}

/// Wait for a child's "attached" line.
fn attached(lines: &mut Lines<BufReader<ChildStdout>>) {
    // The test harness prints lines of its own first.
    for l in lines.by_ref() {
        if l.expect("line") == "attached" {
            return;
        }
    }
    panic!("the child ended without attaching");
}

#[test]
fn one_producers_items_arrive_in_order_through_the_feeder() {
    let _g = deadline("feeder order");
    let q = Queue::new(0).unwrap();
    let n = 3000u32; // far more than the ring's 512 slots: the feeders work
                     // (Their stdout readers are kept: a child must not write to a closed pipe.)
    let mut kids: Vec<_> = (0..2)
        .map(|id| spawn("producer", &q.handle(), &[(ID_ENV, id.to_string()), (COUNT_ENV, n.to_string())]))
        .collect();
    let mut next: HashMap<String, u32> = HashMap::new();
    for _ in 0..2 * n {
        let item = q.get(Some(Duration::from_secs(60))).expect("an item within the watchdog's time");
        let text = String::from_utf8(item.to_vec()).unwrap();
        let (id, seq) = text.split_once(' ').unwrap();
        let want = next.entry(id.to_owned()).or_default();
        assert_eq!(seq.parse::<u32>().unwrap(), *want, "producer {id} out of order");
        *want += 1;
    }
    for (k, _) in &mut kids {
        k.expect_success();
    }
    assert_eq!(q.get(Some(Duration::ZERO)).unwrap_err(), GetError::Empty);
    let h = q.handle().to_string();
    drop(q);
    assert_gone(&h);
}

#[test]
fn join_wakes_after_the_last_task_done_of_another_process() {
    let _g = deadline("joinable mp");
    let q = JoinableQueue::new(0).unwrap();
    for i in 0..200u32 {
        q.put(&i.to_le_bytes(), None).unwrap();
    }
    q.put(b"stop", None).unwrap();
    let (mut w, mut out) = spawn("worker", &q.handle(), &[]);
    attached(&mut out);
    q.join().unwrap();
    assert_eq!(q.unfinished(), 0);
    assert!(q.empty());
    w.expect_success();
    let h = q.handle().to_string();
    drop(q);
    assert_gone(&h);
}

#[test]
fn peers_killed_mid_put_and_get_leave_the_queue_usable() {
    let _g = deadline("kill");
    for maxsize in [4u64, 0] {
        let q = Queue::new(maxsize).unwrap();
        let mut kids = Vec::new();
        for role in ["spam-put", "spam-get", "spam-put", "spam-get"] {
            let (c, mut out) = spawn(role, &q.handle(), &[]);
            attached(&mut out);
            kids.push(c);
        }
        // Let them run into each other, then kill them wherever they are.
        std::thread::sleep(Duration::from_millis(50));
        for k in &mut kids {
            k.kill_no_reap();
        }
        for k in &mut kids {
            k.expect_killed();
        }
        // Drain what they left (half-written messages are skipped) ...
        while q.get(Some(Duration::from_millis(200))).is_ok() {}
        // ... and the queue works for the living.
        for round in 0..10u8 {
            for i in 0..4u8 {
                q.put(&[round, i], Some(Duration::from_secs(30))).unwrap();
            }
            for i in 0..4u8 {
                assert_eq!(q.get(Some(Duration::from_secs(30))).unwrap().payload(), [round, i]);
            }
        }
        let h = q.handle().to_string();
        drop(q);
        assert_gone(&h);
    }
}

#[test]
fn a_simple_queue_is_shared_with_another_process() {
    let _g = deadline("simple mp");
    let q = SimpleQueue::new().unwrap();
    let (mut c, _out) = spawn("simple-echo", &q.handle(), &[(COUNT_ENV, "1".into())]);
    q.put(b"x").unwrap();
    // The child takes "x" and puts "echo x"; we may see our own "x" first
    // only if we race it, so wait for the child before reading.
    c.expect_success();
    assert_eq!(q.get().unwrap().payload(), b"echo x");
}

#[test]
fn a_pipe_end_in_another_process_talks_and_then_gives_eof() {
    let _g = deadline("pipe mp");
    let (a, b) = pipe(true).unwrap();
    let (mut c, mut out) = spawn("pipe-send", &b.handle().unwrap(), &[]);
    attached(&mut out);
    // The child holds its own attachment: our copy of its end can go.
    drop(b);
    assert_eq!(a.recv().unwrap().payload(), b"hello");
    a.send(b"ping").unwrap();
    assert_eq!(a.recv().unwrap().payload(), b"got ping");
    assert_eq!(a.recv().unwrap_err(), PipeError::Eof);
    c.expect_success();
}

#[test]
fn a_pipe_gives_eof_when_the_other_process_is_killed() {
    let _g = deadline("pipe kill");
    let (r, w) = pipe(false).unwrap();
    let (mut c, mut out) = spawn("pipe-hold", &w.handle().unwrap(), &[]);
    attached(&mut out);
    drop(w);
    assert_eq!(r.recv().unwrap().payload(), b"held");
    c.kill();
    assert_eq!(r.recv().unwrap_err(), PipeError::Eof);
    let h = r.handle().unwrap().to_string();
    drop(r);
    assert_gone(&h);
}
