//! Multi-process tests of shared-memory channels: real processes (this test
//! binary re-executed in a child role), real `SIGKILL`s, a watchdog on every
//! test, and a check that nothing is left in `/dev/shm`.

use channels_core::{Channel, ChannelError, ChannelOptions, RecoveryReport, RecvError, RecvTimeoutError, TryRecvError};
use shm_primitives::fault::FAULT_ENV;
use shm_primitives::{Handle, HandleError, Kind};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use test_support::child::{self, Child};
use test_support::watchdog;
use transport_shm::channel as shm;
use transport_shm::segment::{self, RunId, Segment};

const HANDLE_ENV: &str = "DRAGON_TEST_HANDLE";
const HANDLE2_ENV: &str = "DRAGON_TEST_HANDLE2";
const ARGS_ENV: &str = "DRAGON_TEST_ARGS";
/// What a child prints once it is attached.
const ATTACHED: &str = "attached";

// ---- messages -----------------------------------------------------------------

/// Message sizes: mostly inline, some in blocks of several classes, a few of
/// a mebibyte.
fn size_for(seq: u32) -> usize {
    match seq {
        s if s % 50 == 7 => (1 << 20) + 3,
        s if s % 10 == 3 => 70_000,
        s if s % 4 == 1 => 2000,
        s => 16 + (s % 80) as usize,
    }
}

fn fill_byte(p: u32, seq: u32, i: usize) -> u8 {
    let seed = (u64::from(p) << 32 | u64::from(seq)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (seed.wrapping_add(i as u64 * 0x2545_F491) >> 29) as u8
}

/// `[producer u32][seq u32][len u32][reserved u32][payload...]`, payload a
/// pattern derived from (producer, seq).
fn make_msg(p: u32, seq: u32) -> Vec<u8> {
    let len = size_for(seq);
    let mut m = vec![0u8; len];
    m[0..4].copy_from_slice(&p.to_le_bytes());
    m[4..8].copy_from_slice(&seq.to_le_bytes());
    m[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    for (i, b) in m[16..].iter_mut().enumerate() {
        *b = fill_byte(p, seq, i);
    }
    m
}

/// Check a message; returns (producer, seq) or why it is bad.
fn check_msg(m: &[u8]) -> Result<(u32, u32), String> {
    if m.len() < 16 {
        return Err(format!("short message of {} bytes", m.len()));
    }
    let p = u32::from_le_bytes(m[0..4].try_into().unwrap());
    let seq = u32::from_le_bytes(m[4..8].try_into().unwrap());
    let len = u32::from_le_bytes(m[8..12].try_into().unwrap()) as usize;
    if len != m.len() || len != size_for(seq) {
        return Err(format!("message {p}/{seq}: length {} (header {len})", m.len()));
    }
    if let Some(i) = m[16..].iter().enumerate().position(|(i, &b)| b != fill_byte(p, seq, i)) {
        return Err(format!("message {p}/{seq}: payload differs at byte {}", i + 16));
    }
    Ok((p, seq))
}

// ---- child side ---------------------------------------------------------------

fn arg(name: &str) -> Option<u64> {
    let args = std::env::var(ARGS_ENV).unwrap_or_default();
    args.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Entry point of child processes (the parent runs it with `--ignored
/// --exact child_main`); ignored, so it is not counted as a test.
#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_main() {
    child::entry(run_child);
}

fn run_child(role: &str) -> i32 {
    let handle = std::env::var(HANDLE_ENV).unwrap();
    let ch = match shm::attach_text(&handle) {
        Ok(c) => c,
        Err(e) => {
            println!("ATTACH-ERROR {e}");
            return 0;
        }
    };
    // The parent counts this line: a child killed before it is not attached
    // (stdout is line buffered: the line is in the pipe once printed).
    println!("{ATTACHED}");
    match role {
        "producer" => {
            let p = arg("p").unwrap_or(0) as u32;
            let n = arg("n").unwrap_or(0) as u32;
            let mut seq = 0;
            while n == 0 || seq < n {
                match ch.send_timeout(make_msg(p, seq), Duration::from_secs(20)) {
                    Ok(()) => {}
                    Err(e) if e.is_timeout() => return 4,
                    Err(_) => return 0, // closed or destroyed: done
                }
                seq += 1;
            }
            0
        }
        "consumer" | "sink" => {
            let quiet = role == "sink";
            let mut out = String::new();
            loop {
                match ch.recv() {
                    Ok(m) => match check_msg(&m) {
                        Ok((p, s)) if !quiet => out.push_str(&format!("R {p} {s}\n")),
                        Ok(_) => {}
                        Err(e) => {
                            println!("CORRUPT {e}");
                            return 3;
                        }
                    },
                    Err(RecvError::Disconnected) | Err(RecvError::Destroyed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            print!("{out}");
            0
        }
        "drainer" => loop {
            match ch.try_recv() {
                Ok(m) => {
                    if let Err(e) = check_msg(&m) {
                        println!("CORRUPT {e}");
                        return 3;
                    }
                }
                Err(TryRecvError::Empty) => return 0,
                Err(e) => panic!("{e}"),
            }
        },
        "echo" => {
            ch.set_spin(Duration::ZERO);
            let back = shm::attach_text(&std::env::var(HANDLE2_ENV).unwrap()).unwrap();
            back.set_spin(Duration::ZERO);
            while let Ok(m) = ch.recv() {
                back.send(&*m).unwrap();
            }
            0
        }
        "recover" => {
            let _ = ch.recover();
            0
        }
        other => panic!("unknown child role {other}"),
    }
}

// ---- parent side --------------------------------------------------------------

/// Arm a deadline for one test: past it the binary kills its children,
/// removes its run's segments and aborts.
fn deadline(what: &str, limit: Duration) -> watchdog::Guard {
    watchdog::on_abort(segment::cleanup_own_run);
    watchdog::guard(what, limit)
}

/// Start this binary again as a child playing `role` on channel `ch`; its
/// stdout is piped (see [`output`]).
fn spawn(role: &str, ch: &Channel, args: &str, env: &[(&str, &str)]) -> Child {
    let mut cmd = child::command("child_main", role);
    cmd.env(HANDLE_ENV, ch.handle().to_text()).env(ARGS_ENV, args).env_remove(FAULT_ENV).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Child::start(&mut cmd)
}

/// Wait for a child; its exit status and the lines it printed.
fn output(mut child: Child) -> (std::process::ExitStatus, Vec<String>) {
    child.output_lines()
}

/// Every file of channel `name` (main segment and extensions).
fn files_of(name: &str) -> Vec<String> {
    std::fs::read_dir(segment::SHM_DIR)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| f == name || f.starts_with(&format!("{name}-x")))
        .collect()
}

fn destroy_and_check_gone(ch: Channel) {
    let name = ch.handle().segment.clone();
    ch.destroy();
    drop(ch);
    assert_eq!(files_of(&name), Vec::<String>::new(), "files left in /dev/shm");
}

fn assert_no_leaks(ch: &Channel, ctx: &str) {
    let st = ch.alloc_stats().unwrap();
    assert_eq!(st.owned, 0, "{ctx}: blocks still owned: {st:?}");
    assert_eq!(st.in_ring, 0, "{ctx}: blocks still in the ring: {st:?}");
    assert_eq!(st.free, st.blocks, "{ctx}: {st:?}");
    assert_eq!(st.listed, st.free, "{ctx}: free list does not hold every free block: {st:?}");
}

/// Receive everything left, checking each message.
fn drain(ch: &Channel, ctx: &str) -> usize {
    let mut n = 0;
    loop {
        match ch.try_recv() {
            Ok(m) => {
                check_msg(&m).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                n += 1;
            }
            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return n,
            Err(e) => panic!("{ctx}: {e}"),
        }
    }
}

/// Recover until only this process is attached; returns what was done.
/// (A sweep that never ends is caught by the test's watchdog.)
fn recover_all(ch: &Channel) -> RecoveryReport {
    let mut total = RecoveryReport::default();
    while ch.attachment_count() > 1 {
        let r = ch.recover().unwrap();
        total.swept += r.swept;
        total.tombstoned += r.tombstoned;
        total.released += r.released;
        total.blocks_freed += r.blocks_freed;
        std::thread::sleep(Duration::from_millis(1));
    }
    total
}

/// A usable channel still delivers small and large messages.
fn assert_usable(ch: &Channel, ctx: &str) {
    for seq in [0u32, 1, 3, 7] {
        ch.send_timeout(make_msg(99, seq), Duration::from_secs(5)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let m = ch.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(check_msg(&m), Ok((99, seq)), "{ctx}");
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("DRAGON_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    })
}

// ---- tests ----------------------------------------------------------------------

#[test]
fn producers_and_consumers_deliver_every_message_once_in_order() {
    const P: u32 = 3;
    const C: usize = 2;
    const N: u32 = 1200;
    let _deadline = deadline("producers_and_consumers", Duration::from_secs(300));
    let ch = shm::create(&ChannelOptions::new().capacity(16).slot_size(128)).unwrap();
    let consumers: Vec<_> = (0..C).map(|_| spawn("consumer", &ch, "", &[])).collect();
    let producers: Vec<_> = (0..P).map(|p| spawn("producer", &ch, &format!("p={p},n={N}"), &[])).collect();
    for p in producers {
        let (status, _) = output(p);
        assert!(status.success(), "producer failed: {status}");
    }
    ch.close();
    let mut seen = HashSet::new();
    for c in consumers {
        let (status, lines) = output(c);
        assert!(status.success(), "consumer failed: {status} {lines:?}");
        let mut last: HashMap<u32, u32> = HashMap::new();
        for l in lines.iter().filter(|l| l.starts_with("R ")) {
            let mut it = l.split(' ').skip(1).map(|x| x.parse::<u32>().unwrap());
            let (p, s) = (it.next().unwrap(), it.next().unwrap());
            assert!(seen.insert((p, s)), "message {p}/{s} delivered twice");
            if let Some(prev) = last.insert(p, s) {
                assert!(s > prev, "consumer saw {p}/{s} after {p}/{prev}");
            }
        }
    }
    assert_eq!(seen.len(), (P * N) as usize, "messages lost");
    assert_no_leaks(&ch, "after a clean run");
    destroy_and_check_gone(ch);
}

#[test]
fn blocking_ping_pong_between_processes() {
    let _deadline = deadline("ping_pong", Duration::from_secs(300));
    let there = shm::create(&ChannelOptions::new().capacity(4)).unwrap();
    let back = shm::create(&ChannelOptions::new().capacity(4)).unwrap();
    there.set_spin(Duration::ZERO);
    back.set_spin(Duration::ZERO);
    let echo = spawn("echo", &there, "", &[(HANDLE2_ENV, &back.handle().to_text())]);
    for seq in 0..300 {
        there.send(make_msg(1, seq)).unwrap();
        let m = back.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(check_msg(&m), Ok((1, seq)));
    }
    there.close();
    let (status, _) = output(echo);
    assert!(status.success());
    destroy_and_check_gone(there);
    destroy_and_check_gone(back);
}

#[test]
fn peers_killed_at_random_points_leave_the_channel_usable_and_leak_nothing() {
    let seed = seed();
    let mut rng = Rng(seed);
    let _deadline = deadline("random_kills", Duration::from_secs(600));
    let (mut swept, mut attached, mut mid_op, mut drained, mut segments) = (0, 0, 0, 0, 0);
    for round in 0..14 {
        let ctx = format!("seed {seed} round {round}");
        let ch = shm::create(&ChannelOptions::new().capacity(8).slot_size(128)).unwrap();
        let mut producers: Vec<_> = (0..2).map(|p| spawn("producer", &ch, &format!("p={p},n=0"), &[])).collect();
        let mut consumers: Vec<_> = (0..2).map(|_| spawn("sink", &ch, "", &[])).collect();
        // Kills land wherever the children are: some may not have attached
        // yet (more often on a loaded machine), which is fine.
        std::thread::sleep(Duration::from_millis(30 + rng.below(100)));
        if round % 3 == 0 {
            // Consumers die; the producers must keep making progress for a
            // new consumer (us), not wait forever on the dead. (A long
            // wait: only a hang fails, and the watchdog bounds the test.)
            for c in &mut consumers {
                c.kill_no_reap();
            }
            for _ in 0..40 {
                match ch.recv_timeout(Duration::from_secs(120)) {
                    Ok(m) => {
                        check_msg(&m).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    }
                    Err(e) => panic!("{ctx}: no progress after consumers died: {e}"),
                }
            }
        }
        // Everyone else dies at random moments.
        let mut all: Vec<&mut Child> = producers.iter_mut().chain(consumers.iter_mut()).collect();
        while !all.is_empty() {
            let i = rng.below(all.len() as u64) as usize;
            all.swap_remove(i).kill_no_reap();
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
        }
        // What is known: the children that said they were attached before
        // they died. Their rows must all be gone once recovery is done (each
        // swept once, by us or by a child that outlived it: a waiting
        // operation recovers dead peers by itself, so how many are left for
        // us is not known), and nothing may be swept that never attached.
        let mut known = 0;
        for c in producers.into_iter().chain(consumers) {
            let (status, lines) = output(c);
            assert!(
                status.signal() == Some(libc::SIGKILL) || status.success(),
                "{ctx}: child ended with {status}: {lines:?}"
            );
            known += u32::from(lines.iter().any(|l| l == ATTACHED));
        }
        let rep = recover_all(&ch);
        assert!(rep.swept <= 4, "{ctx}: {} attachments swept, only 4 children ever attached", rep.swept);
        assert_eq!(ch.attachment_count(), 1, "{ctx}: rows of dead children left");
        swept += rep.swept;
        attached += known;
        mid_op += rep.tombstoned + rep.released + rep.blocks_freed;
        drained += drain(&ch, &ctx);
        segments += ch.alloc_stats().unwrap().segments;
        assert_no_leaks(&ch, &ctx);
        assert_usable(&ch, &ctx);
        destroy_and_check_gone(ch);
    }
    eprintln!(
        "random kills (seed {seed}): {attached} children known to have attached, {swept} swept by this process, \
         {mid_op} slots/blocks recovered, {drained} messages drained, {segments} extension segments"
    );
    // Rounds 0, 3, 6, 9 and 12 received 40 messages (some of 70 KB, in
    // blocks of extension segments) before the kills.
    assert!(segments > 0, "no message ever used a block: the test tests nothing");
    assert!(attached == 0 || swept > 0, "children attached, yet this process never swept one: the test tests nothing");
    assert!(mid_op > 0, "kills never landed inside an operation: the test tests nothing");
}

/// Kill a peer exactly inside each crash window, then check recovery.
#[test]
fn peers_killed_inside_each_crash_window_are_recovered() {
    let _deadline = deadline("crash_windows", Duration::from_secs(300));
    let cases: &[(&str, &str)] = &[
        ("send.inline_claimed:3", "producer"),
        ("ring.claimed_not_counted:3", "producer"),
        ("send.inline_written:3", "producer"),
        ("alloc.creating:1", "producer"),
        ("alloc.created:1", "producer"),
        ("alloc.ready:1", "producer"),
        ("send.block_filled:2", "producer"),
        ("alloc.pop_announced:1", "producer"),
        ("send.block_claimed:2", "producer"),
        ("send.in_ring:2", "producer"),
        ("recv.claimed:2", "drainer"),
        ("recv.took_block:1", "drainer"),
        ("alloc.push_announced:1", "drainer"),
    ];
    for &(fault, role) in cases {
        let ctx = format!("killed at {fault} ({role})");
        eprintln!("crash window: {ctx}");
        let ch = shm::create(&ChannelOptions::new().capacity(8).slot_size(128)).unwrap();
        if role == "drainer" {
            for seq in 0..8 {
                ch.send(make_msg(7, seq)).unwrap();
            }
        }
        let child = spawn(role, &ch, "p=3,n=200", &[(FAULT_ENV, fault)]);
        let (status, lines) = output(child);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{ctx}: the crash point was not reached: {status} {lines:?}");
        recover_all(&ch);
        drain(&ch, &ctx);
        assert_no_leaks(&ch, &ctx);
        assert_usable(&ch, &ctx);
        destroy_and_check_gone(ch);
    }
}

/// A recovering process killed half-way: its sweep is taken over.
#[test]
fn a_recoverer_killed_mid_sweep_is_taken_over() {
    let _deadline = deadline("recoverer_killed", Duration::from_secs(300));
    for fault in ["recover.sweeping:1", "recover.ring_done:1"] {
        let ctx = format!("recoverer killed at {fault}");
        let ch = shm::create(&ChannelOptions::new().capacity(8).slot_size(128)).unwrap();
        // A producer dies with a block in the ring and a half-written slot.
        let (status, _) = output(spawn("producer", &ch, "p=1,n=100", &[(FAULT_ENV, "send.in_ring:2")]));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{ctx}");
        let (status, _) = output(spawn("recover", &ch, "", &[(FAULT_ENV, fault)]));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{ctx}: recoverer did not reach the crash point");
        recover_all(&ch);
        drain(&ch, &ctx);
        assert_no_leaks(&ch, &ctx);
        assert_usable(&ch, &ctx);
        destroy_and_check_gone(ch);
    }
}

#[test]
fn garbage_truncated_stale_and_foreign_handles_are_clear_errors() {
    let _deadline = deadline("handles", Duration::from_secs(300));
    let ch = shm::create(&ChannelOptions::new()).unwrap();
    let good = ch.handle().to_bytes();
    // Garbage and truncations never attach.
    assert!(matches!(shm::attach_bytes(b"not a handle at all"), Err(ChannelError::Handle(HandleError::BadMagic))));
    for cut in 0..good.len() {
        assert!(matches!(shm::attach_bytes(&good[..cut]), Err(ChannelError::Handle(_))), "cut at {cut}");
    }
    assert!(matches!(shm::attach_text("%%%"), Err(ChannelError::Handle(HandleError::BadText))));
    // Right segment, wrong object kind.
    let mut h = ch.handle();
    h.kind = Kind::Lock;
    assert!(matches!(shm::attach(&h), Err(ChannelError::Handle(HandleError::WrongKind { .. }))));
    // A segment that is not a channel, and one too small for a header.
    for (len, tag) in [(1 << 16, "zeros"), (64, "tiny")] {
        let name = RunId::current().segment_name(tag);
        let seg = Segment::create(&name, len).unwrap();
        let h = Handle { segment: name.clone(), ..ch.handle() };
        let e = shm::attach(&h).unwrap_err();
        assert!(matches!(e, ChannelError::NotAChannel(_)), "{tag}: {e}");
        seg.unlink().unwrap();
    }
    // Destroyed: gone, from this process and from another.
    let old = ch.handle();
    let name = old.segment.clone();
    destroy_and_check_gone(ch);
    let e = shm::attach(&old).unwrap_err();
    assert!(matches!(e, ChannelError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("destroyed"), "{e}");
    // Recreated under the same name: the old handle is stale.
    let again = shm::create_named(&name, &ChannelOptions::new()).unwrap();
    let e = shm::attach(&old).unwrap_err();
    assert!(matches!(e, ChannelError::Stale { .. }), "{e}");
    let (status, lines) = output(spawn("consumer", &again, "", &[(HANDLE_ENV, &old.to_text())]));
    assert!(status.success());
    assert!(lines.iter().any(|l| l.starts_with("ATTACH-ERROR stale channel handle")), "{lines:?}");
    destroy_and_check_gone(again);
}

#[test]
fn pipe_mode_reports_end_of_file_when_the_writer_process_dies() {
    let _deadline = deadline("pipe_eof", Duration::from_secs(300));
    let ch =
        shm::create(&ChannelOptions::new().disconnect_on_no_senders(true).roles(channels_core::Roles::RECV)).unwrap();
    ch.set_spin(Duration::ZERO);
    let mut p = spawn("producer", &ch, "p=5,n=0", &[]);
    // Messages flow, then the writer is killed.
    let m = ch.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(check_msg(&m).unwrap().0, 5);
    p.kill_no_reap();
    let _ = output(p);
    // What it sent before it died, then end of file (the watchdog bounds
    // the wait; the timeout only turns a hang into a clear message).
    loop {
        match ch.recv_timeout(Duration::from_secs(120)) {
            Ok(m) => {
                check_msg(&m).unwrap();
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("expected end of file, got {e}"),
        }
    }
    destroy_and_check_gone(ch);
}
