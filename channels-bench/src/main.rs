//! Channel benchmarks: this project's shared-memory channel between two real
//! processes, against the floors (raw pipe, raw futex and raw spin round
//! trips between two processes, crossbeam-channel between two threads) and
//! iceoryx2, all in the same run. One JSON line per case on stdout.
//!
//! Usage: `channels-bench [filter]` (runs cases whose name contains the
//! filter). Children are this binary re-executed with `--child <role>`; they
//! print `READY`, wait for `GO` on stdin, run, and print `DONE`.

use channels_core::{Channel, ChannelOptions, Roles, TryRecvError};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use transport_shm::channel as shm;

const RTT_SPIN_BATCHES: usize = 4000;
const BATCH: usize = 32;
const RTT_BLOCK: usize = 20_000;
const STREAM_N: u64 = 4_000_000;
const BIG: usize = 1 << 20;
const BIG_N: u64 = 4000;
const MPMC_PER_PRODUCER: u64 = 2_000_000;
const WARM_SMALL: u64 = 200_000;
const WARM_BIG: u64 = 200;
const FLOOR_TIMEOUT: Option<Duration> = None;

// ---- plumbing ---------------------------------------------------------------------

/// While alive, this process (and every peer it spawns, which inherits the
/// mask) runs on the one vCPU it is on now; the old mask comes back on drop.
///
/// For the blocking round trips. A wake-up's cost depends mostly on where
/// the woken process is: on the waker's vCPU it is a context switch (about
/// 4 µs here), on the other, idle vCPU it is an interrupt to a halted vCPU,
/// which in this kind of VM (no halt-polling) takes about 50 µs. Unpinned,
/// the scheduler picks one or the other per process pair, by chance, so a
/// case could land 12x off its floor with no difference in code. Pinned,
/// every implementation and its floor pay the same placement, and the ratio
/// measures the code. `BENCH_BLOCK_UNPINNED=1` measures unpinned.
struct OneCpu(Option<libc::cpu_set_t>);

impl OneCpu {
    fn here() -> OneCpu {
        if std::env::var_os("BENCH_BLOCK_UNPINNED").is_some_and(|v| v == "1") {
            return OneCpu(None);
        }
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls write
        // into and read from the sets we own.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return OneCpu(None);
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return OneCpu(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                return OneCpu(None);
            }
            OneCpu(Some(old))
        }
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: `old` is the mask read in `here`.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old) };
        }
    }
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(role: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Peer { child, stdin, stdout };
        p.expect("READY");
        p
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_owned()
    }

    fn expect(&mut self, what: &str) -> String {
        let l = self.line();
        assert!(l.starts_with(what), "child said {l:?}, expected {what}");
        l
    }

    fn go(&mut self) {
        writeln!(self.stdin, "GO").unwrap();
        self.stdin.flush().unwrap();
    }

    fn finish(mut self) {
        drop(self.stdin);
        let s = self.child.wait().unwrap();
        assert!(s.success(), "child failed: {s}");
    }
}

/// Child side of the handshake.
fn ready_and_wait_go() {
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).unwrap();
}

fn done(extra: &str) {
    println!("DONE {extra}");
    std::io::stdout().flush().unwrap();
}

fn median_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

/// One measurement of one case by one implementation.
struct Record {
    case: String,
    imp: String,
    fields: Vec<(String, f64)>,
    notes: String,
}

static RECORDS: std::sync::Mutex<Vec<Record>> = std::sync::Mutex::new(Vec::new());

/// Record a measurement (printed at the end as the median over repetitions).
fn emit(case: &str, imp: &str, fields: &[(&str, f64)], notes: &str) {
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{case} {imp} {fields:?}");
    }
    RECORDS.lock().unwrap().push(Record {
        case: case.into(),
        imp: imp.into(),
        fields: fields.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        notes: notes.into(),
    });
}

fn json_line(case: &str, imp: &str, fields: &[(String, f64)], extra: &str, notes: &str) -> String {
    let mut s = format!("{{\"case\":\"{case}\",\"impl\":\"{imp}\"");
    for (k, v) in fields {
        s.push_str(&format!(",\"{k}\":{v:.3}"));
    }
    s.push_str(extra);
    if !notes.is_empty() {
        s.push_str(&format!(",\"notes\":\"{notes}\""));
    }
    s.push('}');
    s
}

#[inline]
fn spin_recv(ch: &Channel) -> channels_core::Message {
    loop {
        match ch.try_recv() {
            Ok(m) => return m,
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

#[inline]
fn spin_send(ch: &Channel, m: &[u8]) {
    while let Err(e) = ch.try_send(m) {
        assert!(e.is_full(), "{e}");
        std::hint::spin_loop();
    }
}

fn opts_small() -> ChannelOptions {
    ChannelOptions::new().capacity(1024).slot_size(64)
}

// ---- this project's channel ---------------------------------------------------------

fn dragon_rtt(spin: bool, results: &mut Vec<(String, f64)>) {
    let a = shm::create(&ChannelOptions::new().capacity(64).slot_size(64)).unwrap();
    let b = shm::create(&ChannelOptions::new().capacity(64).slot_size(64)).unwrap();
    if !spin {
        a.set_spin(Duration::ZERO);
        b.set_spin(Duration::ZERO);
    }
    let mode = if spin { "spin" } else { "block" };
    let mut peer = Peer::spawn("dragon-echo", &[mode, &a.handle().to_text(), &b.handle().to_text()]);
    peer.go();
    let msg = [7u8; 8];
    let rtt = |n: usize| {
        for _ in 0..n {
            if spin {
                spin_send(&a, &msg);
                spin_recv(&b);
            } else {
                a.send(msg).unwrap();
                b.recv().unwrap();
            }
        }
    };
    rtt(20_000);
    let samples: Vec<f64> = if spin {
        (0..RTT_SPIN_BATCHES)
            .map(|_| {
                let t = Instant::now();
                rtt(BATCH);
                t.elapsed().as_nanos() as f64 / BATCH as f64
            })
            .collect()
    } else {
        (0..RTT_BLOCK)
            .map(|_| {
                let t = Instant::now();
                rtt(1);
                t.elapsed().as_nanos() as f64
            })
            .collect()
    };
    a.send([]).unwrap(); // stop
    peer.finish();
    let (med, p99) = median_p99(samples);
    let case = format!("rtt_{mode}_8B");
    emit(&case, "dragon", &[("median_ns", med), ("p99_ns", p99)], "two processes, 64-slot channels of 64 B slots");
    results.push((format!("{case}/dragon"), med));
    a.destroy();
    b.destroy();
}

fn child_dragon_echo(args: &[String]) {
    let a = shm::attach_text(&args[1]).unwrap();
    let b = shm::attach_text(&args[2]).unwrap();
    let spin = args[0] == "spin";
    if !spin {
        a.set_spin(Duration::ZERO);
        b.set_spin(Duration::ZERO);
    }
    ready_and_wait_go();
    loop {
        let m = if spin { spin_recv(&a) } else { a.recv().unwrap() };
        if m.is_empty() {
            break;
        }
        if spin {
            spin_send(&b, &m);
        } else {
            b.send(&*m).unwrap();
        }
    }
}

fn dragon_stream(results: &mut Vec<(String, f64)>) {
    let ch = shm::create(&opts_small()).unwrap();
    let mut peer = Peer::spawn("dragon-sink", &[&ch.handle().to_text(), &STREAM_N.to_string(), "8"]);
    let msg = [1u8; 8];
    peer.go();
    for _ in 0..WARM_SMALL {
        spin_send(&ch, &msg);
    }
    peer.expect("WARM");
    let t = Instant::now();
    for _ in 0..STREAM_N {
        spin_send(&ch, &msg);
    }
    peer.expect("DONE");
    let secs = t.elapsed().as_secs_f64();
    peer.finish();
    let rate = STREAM_N as f64 / secs;
    emit("stream_8B", "dragon", &[("msgs_per_s", rate)], "one producer process, one consumer process, 1024 slots");
    results.push(("stream_8B/dragon".into(), rate));
    ch.destroy();
}

fn dragon_big(results: &mut Vec<(String, f64)>) {
    let ch = shm::create(&ChannelOptions::new().capacity(8).slot_size(64)).unwrap();
    let mut peer = Peer::spawn("dragon-sink", &[&ch.handle().to_text(), &BIG_N.to_string(), &BIG.to_string()]);
    let src = vec![3u8; BIG];
    peer.go();
    // Warm up through the receiver: segments created and mapped by both.
    for _ in 0..WARM_BIG {
        ch.send_with(BIG, |buf| buf.copy_from_slice(&src)).unwrap();
    }
    peer.expect("WARM");
    let t = Instant::now();
    for _ in 0..BIG_N {
        ch.send_with(BIG, |buf| buf.copy_from_slice(&src)).unwrap();
    }
    peer.expect("DONE");
    let secs = t.elapsed().as_secs_f64();
    peer.finish();
    let gbs = (BIG_N as f64 * BIG as f64) / secs / 1e9;
    emit(
        "oneway_1MiB",
        "dragon",
        &[("GB_per_s", gbs)],
        "sender copies 1 MiB into a shared block; receiver takes it zero-copy and reads both ends",
    );
    results.push(("oneway_1MiB/dragon".into(), gbs));
    ch.destroy();
}

fn child_dragon_sink(args: &[String]) {
    let ch = shm::attach_text(&args[0]).unwrap();
    let n: u64 = args[1].parse().unwrap();
    let len: usize = args[2].parse().unwrap();
    let warm = if len > 64 { WARM_BIG } else { WARM_SMALL };
    ready_and_wait_go();
    let mut sum = 0u64;
    for i in 0..warm + n {
        if i == warm {
            println!("WARM");
            std::io::stdout().flush().unwrap();
        }
        let m = spin_recv(&ch);
        assert_eq!(m.len(), len);
        sum += u64::from(m[0]) + u64::from(m[len - 1]);
    }
    done(&sum.to_string());
}

fn dragon_mpmc(results: &mut Vec<(String, f64)>) {
    let ch = shm::create(&opts_small()).unwrap();
    ch.set_spin(Duration::from_micros(2));
    let h = ch.handle().to_text();
    let n = MPMC_PER_PRODUCER.to_string();
    let mut cons: Vec<Peer> = (0..2).map(|_| Peer::spawn("dragon-mpmc-consumer", &[&h])).collect();
    let mut prods: Vec<Peer> = (0..2).map(|_| Peer::spawn("dragon-mpmc-producer", &[&h, &n])).collect();
    let t = Instant::now();
    for p in prods.iter_mut().chain(cons.iter_mut()) {
        p.go();
    }
    for p in &mut prods {
        p.expect("DONE");
    }
    ch.close();
    let mut total = 0u64;
    for c in &mut cons {
        total += c.expect("DONE").split(' ').nth(1).unwrap().parse::<u64>().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    for p in prods.into_iter().chain(cons) {
        p.finish();
    }
    assert_eq!(total, 2 * MPMC_PER_PRODUCER);
    let rate = total as f64 / secs;
    emit(
        "mpmc_2x2_8B",
        "dragon",
        &[("msgs_per_s", rate)],
        "2 producer + 2 consumer processes on one 1024-slot channel",
    );
    results.push(("mpmc_2x2_8B/dragon".into(), rate));
    ch.destroy();
}

fn child_dragon_mpmc(role: &str, args: &[String]) {
    let ch = transport_shm::channel::attach_with(
        &shm_primitives::Handle::from_text(&args[0]).unwrap(),
        if role == "producer" { Roles::SEND } else { Roles::RECV },
    )
    .unwrap();
    ch.set_spin(Duration::from_micros(2));
    ready_and_wait_go();
    if role == "producer" {
        let n: u64 = args[1].parse().unwrap();
        for i in 0..n {
            ch.send(i.to_le_bytes()).unwrap();
        }
        done("");
    } else {
        let mut got = 0u64;
        while ch.recv().is_ok() {
            got += 1;
        }
        done(&got.to_string());
    }
}

// ---- floors ---------------------------------------------------------------------------

fn pipe_rtt(results: &mut Vec<(String, f64)>) {
    let mut ab = [0i32; 2];
    let mut ba = [0i32; 2];
    // SAFETY: valid out-arrays. The child inherits its two ends; ours are
    // close-on-exec so that closing them here ends the child's loop.
    unsafe {
        assert_eq!(libc::pipe(ab.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(ba.as_mut_ptr()), 0);
        libc::fcntl(ab[1], libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(ba[0], libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let mut peer = Peer::spawn("pipe-echo", &[&ab[0].to_string(), &ba[1].to_string()]);
    peer.go();
    let mut buf = [0u8; 8];
    let one = |buf: &mut [u8; 8]| {
        // SAFETY: 8-byte buffers, open fds.
        unsafe {
            assert_eq!(libc::write(ab[1], buf.as_ptr().cast(), 8), 8);
            assert_eq!(libc::read(ba[0], buf.as_mut_ptr().cast(), 8), 8);
        }
    };
    for _ in 0..5000 {
        one(&mut buf);
    }
    let samples: Vec<f64> = (0..RTT_BLOCK)
        .map(|_| {
            let t = Instant::now();
            one(&mut buf);
            t.elapsed().as_nanos() as f64
        })
        .collect();
    // SAFETY: closing our ends ends the child's loop.
    unsafe { libc::close(ab[1]) };
    peer.finish();
    let (med, p99) = median_p99(samples);
    emit("rtt_block_8B", "pipe", &[("median_ns", med), ("p99_ns", p99)], "raw pipe floor, two processes");
    results.push(("rtt_block_8B/pipe".into(), med));
}

fn child_pipe_echo(args: &[String]) {
    let (rd, wr): (i32, i32) = (args[0].parse().unwrap(), args[1].parse().unwrap());
    ready_and_wait_go();
    let mut buf = [0u8; 8];
    // SAFETY: 8-byte buffer, inherited fds.
    while unsafe { libc::read(rd, buf.as_mut_ptr().cast(), 8) } == 8 {
        // SAFETY: as above.
        unsafe { libc::write(wr, buf.as_ptr().cast(), 8) };
    }
}

/// Two words in a shared segment, for the raw futex and spin floors.
fn words(seg: &transport_shm::Segment) -> (&AtomicU32, &AtomicU32) {
    use shm_primitives::region::Region;
    let p = seg.base().as_ptr();
    // SAFETY: the segment is a page of zeroed shared memory; two aligned u32
    // words on separate cache lines.
    unsafe { (&*p.cast::<AtomicU32>(), &*p.add(128).cast::<AtomicU32>()) }
}

fn raw_rtt(futex: bool, results: &mut Vec<(String, f64)>) {
    let name = transport_shm::RunId::current().segment_name("bench");
    let seg = transport_shm::Segment::create(&name, 4096).unwrap();
    let (ping, pong) = words(&seg);
    let mode = if futex { "futex" } else { "spin" };
    let mut peer = Peer::spawn("raw-echo", &[mode, &name]);
    peer.go();
    let mut seq = 0u32;
    let mut one = || {
        seq += 1;
        ping.store(seq, Ordering::Release);
        if futex {
            shm_primitives::futex::wake(ping, 1);
            while pong.load(Ordering::Acquire) != seq {
                shm_primitives::futex::wait(pong, seq - 1, FLOOR_TIMEOUT);
            }
        } else {
            while pong.load(Ordering::Acquire) != seq {
                std::hint::spin_loop();
            }
        }
    };
    for _ in 0..5000 {
        one();
    }
    let samples: Vec<f64> = if futex {
        (0..RTT_BLOCK)
            .map(|_| {
                let t = Instant::now();
                one();
                t.elapsed().as_nanos() as f64
            })
            .collect()
    } else {
        (0..RTT_SPIN_BATCHES)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..BATCH {
                    one();
                }
                t.elapsed().as_nanos() as f64 / BATCH as f64
            })
            .collect()
    };
    ping.store(u32::MAX, Ordering::Release);
    shm_primitives::futex::wake(ping, 1);
    peer.finish();
    seg.unlink().unwrap();
    let (med, p99) = median_p99(samples);
    let case = if futex { "rtt_block_8B" } else { "rtt_spin_8B" };
    emit(case, mode, &[("median_ns", med), ("p99_ns", p99)], "raw shared-memory floor, two processes");
    results.push((format!("{case}/{mode}"), med));
}

fn child_raw_echo(args: &[String]) {
    let seg = transport_shm::Segment::open(&args[1]).unwrap();
    let (ping, pong) = words(&seg);
    let futex = args[0] == "futex";
    ready_and_wait_go();
    let mut seen = 0u32;
    loop {
        let v = loop {
            let v = ping.load(Ordering::Acquire);
            if v != seen {
                break v;
            }
            if futex {
                shm_primitives::futex::wait(ping, seen, FLOOR_TIMEOUT);
            } else {
                std::hint::spin_loop();
            }
        };
        if v == u32::MAX {
            return;
        }
        seen = v;
        pong.store(v, Ordering::Release);
        if futex {
            shm_primitives::futex::wake(pong, 1);
        }
    }
}

fn crossbeam(results: &mut Vec<(String, f64)>) {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 8]>(1024);
    let t = Instant::now();
    let h = std::thread::spawn(move || {
        for _ in 0..STREAM_N {
            rx.recv().unwrap();
        }
    });
    for _ in 0..STREAM_N {
        tx.send([1; 8]).unwrap();
    }
    h.join().unwrap();
    let rate = STREAM_N as f64 / t.elapsed().as_secs_f64();
    emit("stream_8B", "crossbeam", &[("msgs_per_s", rate)], "crossbeam-channel bounded(1024), two threads");
    results.push(("stream_8B/crossbeam".into(), rate));

    let (a_tx, a_rx) = crossbeam_channel::bounded::<[u8; 8]>(1);
    let (b_tx, b_rx) = crossbeam_channel::bounded::<[u8; 8]>(1);
    let h = std::thread::spawn(move || {
        while let Ok(m) = a_rx.recv() {
            b_tx.send(m).unwrap();
        }
    });
    for _ in 0..20_000 {
        a_tx.send([0; 8]).unwrap();
        b_rx.recv().unwrap();
    }
    let samples: Vec<f64> = (0..RTT_SPIN_BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                a_tx.send([0; 8]).unwrap();
                b_rx.recv().unwrap();
            }
            t.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    drop(a_tx);
    h.join().unwrap();
    let (med, p99) = median_p99(samples);
    emit("rtt_spin_8B", "crossbeam", &[("median_ns", med), ("p99_ns", p99)], "crossbeam-channel, two threads");
}

// ---- iceoryx2 ---------------------------------------------------------------------------

mod iox {
    use super::*;
    use iceoryx2::prelude::*;

    pub(super) fn service(kind: &str) -> String {
        format!("dragon-bench/{}/{kind}", std::process::id())
    }

    fn node() -> Node<ipc::Service> {
        NodeBuilder::new().create::<ipc::Service>().unwrap()
    }

    fn u64_service(
        node: &Node<ipc::Service>,
        name: &str,
    ) -> iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, u64, ()> {
        node.service_builder(&ServiceName::new(name).unwrap())
            .publish_subscribe::<u64>()
            .subscriber_max_buffer_size(1024)
            .history_size(0)
            .enable_safe_overflow(false)
            .open_or_create()
            .unwrap()
    }

    fn event(
        node: &Node<ipc::Service>,
        name: &str,
    ) -> iceoryx2::service::port_factory::event::PortFactory<ipc::Service> {
        node.service_builder(&ServiceName::new(name).unwrap()).event().open_or_create().unwrap()
    }

    pub(super) fn rtt(spin: bool, results: &mut Vec<(String, f64)>) {
        let base = service(if spin { "rtt-spin" } else { "rtt-block" });
        let node = node();
        let ping = u64_service(&node, &format!("{base}/ping"));
        let pong = u64_service(&node, &format!("{base}/pong"));
        let publisher =
            ping.publisher_builder().backpressure_strategy(BackpressureStrategy::RetryUntilDelivered).create().unwrap();
        let subscriber = pong.subscriber_builder().buffer_size(1024).create().unwrap();
        let ev_ping = event(&node, &format!("{base}/ping-ev"));
        let ev_pong = event(&node, &format!("{base}/pong-ev"));
        let notifier = ev_ping.notifier_builder().create().unwrap();
        let listener = ev_pong.listener_builder().create().unwrap();
        let mode = if spin { "spin" } else { "block" };
        let mut peer = Peer::spawn("iox-echo", &[mode, &base]);
        peer.go();
        let recv_one = || loop {
            if let Some(s) = subscriber.receive().unwrap() {
                return *s;
            }
            if spin {
                std::hint::spin_loop();
            } else {
                listener.timed_wait(|_| {}, Duration::from_millis(10)).unwrap();
            }
        };
        // Warm up; the first samples may go out before the echo subscribed.
        let mut next = 1u64;
        let warm = Instant::now();
        let mut got = 0;
        while got < 20_000 {
            publisher.send_copy(next).unwrap();
            if !spin {
                notifier.notify().unwrap();
            }
            next += 1;
            let t = Instant::now();
            loop {
                if subscriber.receive().unwrap().is_some() {
                    got += 1;
                    break;
                }
                if t.elapsed() > Duration::from_millis(20) {
                    break;
                }
                if !spin {
                    let _ = listener.timed_wait(|_| {}, Duration::from_millis(1));
                }
            }
            assert!(warm.elapsed() < Duration::from_secs(60), "iceoryx2 echo never answered");
        }
        while subscriber.receive().unwrap().is_some() {}
        let mut one = || {
            publisher.send_copy(next).unwrap();
            if !spin {
                notifier.notify().unwrap();
            }
            next += 1;
            recv_one();
        };
        let samples: Vec<f64> = if spin {
            (0..RTT_SPIN_BATCHES)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..BATCH {
                        one();
                    }
                    t.elapsed().as_nanos() as f64 / BATCH as f64
                })
                .collect()
        } else {
            (0..RTT_BLOCK)
                .map(|_| {
                    let t = Instant::now();
                    one();
                    t.elapsed().as_nanos() as f64
                })
                .collect()
        };
        publisher.send_copy(0).unwrap();
        notifier.notify().unwrap();
        peer.finish();
        let (med, p99) = median_p99(samples);
        let case = format!("rtt_{mode}_8B");
        emit(
            &case,
            "iceoryx2",
            &[("median_ns", med), ("p99_ns", p99)],
            if spin {
                "publish-subscribe u64, busy-polling receive"
            } else {
                "publish-subscribe u64 + event notifier/listener"
            },
        );
        results.push((format!("{case}/iceoryx2"), med));
    }

    pub(super) fn child_echo(args: &[String]) {
        let spin = args[0] == "spin";
        let base = &args[1];
        let node = node();
        let ping = u64_service(&node, &format!("{base}/ping"));
        let pong = u64_service(&node, &format!("{base}/pong"));
        let subscriber = ping.subscriber_builder().buffer_size(1024).create().unwrap();
        let publisher =
            pong.publisher_builder().backpressure_strategy(BackpressureStrategy::RetryUntilDelivered).create().unwrap();
        let listener = event(&node, &format!("{base}/ping-ev")).listener_builder().create().unwrap();
        let notifier = event(&node, &format!("{base}/pong-ev")).notifier_builder().create().unwrap();
        ready_and_wait_go();
        loop {
            match subscriber.receive().unwrap() {
                Some(s) => {
                    if *s == 0 {
                        return;
                    }
                    publisher.send_copy(*s).unwrap();
                    if !spin {
                        notifier.notify().unwrap();
                    }
                }
                None if spin => std::hint::spin_loop(),
                None => {
                    listener.timed_wait(|_| {}, Duration::from_millis(10)).unwrap();
                }
            }
        }
    }

    pub(super) fn stream(results: &mut Vec<(String, f64)>) {
        let base = service("stream");
        let node = node();
        let svc = u64_service(&node, &base);
        let publisher =
            svc.publisher_builder().backpressure_strategy(BackpressureStrategy::RetryUntilDelivered).create().unwrap();
        let mut peer = Peer::spawn("iox-sink", &[&base, &STREAM_N.to_string()]);
        // The subscriber exists once the child said READY.
        peer.go();
        for i in 0..WARM_SMALL {
            publisher.send_copy(i).unwrap();
        }
        peer.expect("WARM");
        let t = Instant::now();
        for i in 0..STREAM_N {
            publisher.send_copy(i).unwrap();
        }
        peer.expect("DONE");
        let rate = STREAM_N as f64 / t.elapsed().as_secs_f64();
        peer.finish();
        emit("stream_8B", "iceoryx2", &[("msgs_per_s", rate)], "publish-subscribe u64, buffer 1024, no overflow");
        results.push(("stream_8B/iceoryx2".into(), rate));
    }

    pub(super) fn child_sink(args: &[String]) {
        let node = node();
        let svc = u64_service(&node, &args[0]);
        let n: u64 = args[1].parse().unwrap();
        let subscriber = svc.subscriber_builder().buffer_size(1024).create().unwrap();
        ready_and_wait_go();
        let mut got = 0;
        while got < WARM_SMALL + n {
            match subscriber.receive().unwrap() {
                Some(_) => {
                    got += 1;
                    if got == WARM_SMALL {
                        println!("WARM");
                        std::io::stdout().flush().unwrap();
                    }
                }
                None => std::hint::spin_loop(),
            }
        }
        done("");
    }

    fn slice_service(
        node: &Node<ipc::Service>,
        name: &str,
    ) -> iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()> {
        node.service_builder(&ServiceName::new(name).unwrap())
            .publish_subscribe::<[u8]>()
            .subscriber_max_buffer_size(8)
            .history_size(0)
            .enable_safe_overflow(false)
            .open_or_create()
            .unwrap()
    }

    pub(super) fn big(results: &mut Vec<(String, f64)>) {
        let base = service("big");
        let node = node();
        let svc = slice_service(&node, &base);
        let publisher = svc
            .publisher_builder()
            .initial_max_slice_len(BIG)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .unwrap();
        let src = vec![3u8; BIG];
        let mut peer = Peer::spawn("iox-big-sink", &[&base, &BIG_N.to_string()]);
        peer.go();
        for _ in 0..WARM_BIG {
            publisher.loan_slice_uninit(BIG).unwrap().write_from_slice(&src).send().unwrap();
        }
        peer.expect("WARM");
        let t = Instant::now();
        for _ in 0..BIG_N {
            publisher.loan_slice_uninit(BIG).unwrap().write_from_slice(&src).send().unwrap();
        }
        peer.expect("DONE");
        let gbs = (BIG_N as f64 * BIG as f64) / t.elapsed().as_secs_f64() / 1e9;
        peer.finish();
        emit(
            "oneway_1MiB",
            "iceoryx2",
            &[("GB_per_s", gbs)],
            "publisher copies 1 MiB into a loaned sample; subscriber reads both ends",
        );
        results.push(("oneway_1MiB/iceoryx2".into(), gbs));
    }

    pub(super) fn child_big_sink(args: &[String]) {
        let node = node();
        let svc = slice_service(&node, &args[0]);
        let n: u64 = args[1].parse().unwrap();
        let subscriber = svc.subscriber_builder().buffer_size(8).create().unwrap();
        ready_and_wait_go();
        let (mut got, mut sum) = (0, 0u64);
        while got < WARM_BIG + n {
            match subscriber.receive().unwrap() {
                Some(s) => {
                    sum += u64::from(s[0]) + u64::from(s[s.len() - 1]);
                    got += 1;
                    if got == WARM_BIG {
                        println!("WARM");
                        std::io::stdout().flush().unwrap();
                    }
                }
                None => std::hint::spin_loop(),
            }
        }
        done(&sum.to_string());
    }
}

// ---- main ---------------------------------------------------------------------------------

fn child(role: &str, args: &[String]) {
    match role {
        "dragon-echo" => child_dragon_echo(args),
        "dragon-sink" => child_dragon_sink(args),
        "dragon-mpmc-producer" => child_dragon_mpmc("producer", args),
        "dragon-mpmc-consumer" => child_dragon_mpmc("consumer", args),
        "pipe-echo" => child_pipe_echo(args),
        "raw-echo" => child_raw_echo(args),
        "iox-echo" => iox::child_echo(args),
        "iox-sink" => iox::child_sink(args),
        "iox-big-sink" => iox::child_big_sink(args),
        other => panic!("unknown role {other}"),
    }
}

/// Run a blocking round-trip case with both processes on one vCPU (see
/// [`OneCpu`]).
fn pinned(case: impl FnOnce(&mut Vec<(String, f64)>), results: &mut Vec<(String, f64)>) {
    let _one = OneCpu::here();
    case(results);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2], &args[3..]);
        return;
    }
    let filter = args.get(1).cloned().unwrap_or_default();
    let want = |name: &str| name.contains(&filter);
    let reps: usize = std::env::var("BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let mut r: Vec<(String, f64)> = vec![];
    type Case = (&'static str, fn(&mut Vec<(String, f64)>));
    // Blocking round trips first: right after the spinning cases (both
    // vCPUs busy) the first sleeps of a process take several times longer
    // on this kind of machine, which would penalise whichever case runs next.
    let cases: &[Case] = &[
        ("rtt_block_8B/pipe", |r| pinned(pipe_rtt, r)),
        ("rtt_block_8B/futex", |r| pinned(|r| raw_rtt(true, r), r)),
        ("rtt_block_8B/dragon", |r| pinned(|r| dragon_rtt(false, r), r)),
        ("rtt_block_8B/iceoryx2", |r| pinned(|r| iox::rtt(false, r), r)),
        ("rtt_spin_8B/spin", |r| raw_rtt(false, r)),
        ("rtt_spin_8B/dragon", |r| dragon_rtt(true, r)),
        ("rtt_spin_8B/iceoryx2", |r| iox::rtt(true, r)),
        ("stream_8B/crossbeam", crossbeam),
        ("stream_8B/dragon", dragon_stream),
        ("stream_8B/iceoryx2", iox::stream),
        ("oneway_1MiB/dragon", dragon_big),
        ("oneway_1MiB/iceoryx2", iox::big),
        ("mpmc_2x2_8B/dragon", dragon_mpmc),
    ];
    // Repetitions are interleaved (rep -> case), so slow phases of a shared
    // machine hit every implementation alike; each line is the median.
    for _ in 0..reps {
        for (name, f) in cases {
            if want(name) {
                f(&mut r);
                // Let the machine settle between cases.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let records = std::mem::take(&mut *RECORDS.lock().unwrap());
    let mut keys: Vec<(String, String)> = vec![];
    for rec in &records {
        let k = (rec.case.clone(), rec.imp.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (case, imp) in &keys {
        let runs: Vec<&Record> = records.iter().filter(|x| &x.case == case && &x.imp == imp).collect();
        let fields: Vec<(String, f64)> = runs[0]
            .fields
            .iter()
            .map(|(k, _)| {
                let vals: Vec<f64> =
                    runs.iter().filter_map(|x| x.fields.iter().find(|f| &f.0 == k)).map(|f| f.1).collect();
                (k.clone(), median_p99(vals).0)
            })
            .collect();
        println!("{}", json_line(case, imp, &fields, &format!(",\"reps\":{}", runs.len()), &runs[0].notes));
    }
    // Per-repetition values of each key, in repetition order.
    let per_rep = |k: &str| r.iter().filter(|(n, _)| n == k).map(|(_, v)| *v).collect::<Vec<f64>>();
    let get = |k: &str| {
        let v = per_rep(k);
        (!v.is_empty()).then(|| median_p99(v).0)
    };
    // Ratios are paired per repetition (both measured within seconds of each
    // other), then the median is taken: the machine's wake-up latency flips
    // between modes from one repetition to the next.
    let ratio = |a: &str, b: &str| {
        let pairs: Vec<f64> = per_rep(a).iter().zip(per_rep(b)).filter(|(_, y)| *y > 0.0).map(|(x, y)| x / y).collect();
        (!pairs.is_empty()).then(|| median_p99(pairs).0)
    };
    let mut fields: Vec<(String, f64)> = vec![];
    let mut add = |k: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            fields.push((k.to_string(), v));
        }
    };
    add("spin_rtt_dragon_ns", get("rtt_spin_8B/dragon"));
    add("spin_rtt_dragon_over_iceoryx2", ratio("rtt_spin_8B/dragon", "rtt_spin_8B/iceoryx2"));
    add("block_rtt_dragon_over_futex", ratio("rtt_block_8B/dragon", "rtt_block_8B/futex"));
    add("stream_dragon_msgs_per_s", get("stream_8B/dragon"));
    add("stream_dragon_over_iceoryx2", ratio("stream_8B/dragon", "stream_8B/iceoryx2"));
    add("big_dragon_over_iceoryx2", ratio("oneway_1MiB/dragon", "oneway_1MiB/iceoryx2"));
    add("mpmc_dragon_msgs_per_s", get("mpmc_2x2_8B/dragon"));
    if !fields.is_empty() {
        println!(
            "{}",
            json_line(
                "summary",
                "dragon",
                &fields,
                &format!(",\"reps\":{reps}"),
                "medians (ratios: median of per-repetition ratios); targets: spin <= 600 ns and < iceoryx2; block <= 1.3x futex; stream >= 10M/s and >= 2.5x iceoryx2; 1MiB >= 0.7x iceoryx2; mpmc >= 5M/s"
            )
        );
    }
}
