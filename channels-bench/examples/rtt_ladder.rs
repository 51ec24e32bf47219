//! Where the spinning round trip's time goes: the raw floor, then the
//! channel's ring protocol built up one step at a time on raw shared memory
//! (no channel code), then the channel itself. Every step is an 8-byte
//! ping-pong between two processes (the second one forked), both sides
//! busy-polling, measured like `rtt_spin_8B` (median of 4000 batches of 32
//! round trips); the steps are interleaved over the repetitions.
//!
//! ```sh
//! cargo run --release --example rtt_ladder [reps]
//! ```
//!
//! Steps, each adding to the one before:
//!
//! 1. `floor`: one word each way (the bench's raw spin floor).
//! 2. `slots`: a ring of 64-byte slots whose stamp says EMPTY(lap) or
//!    FULL(lap); the writer waits for EMPTY, writes, stores FULL; the reader
//!    polls for FULL, reads, stores EMPTY(lap + 1). No read-modify-write.
//! 3. `+claim_w`: the writer claims with a CAS EMPTY -> WRITING first.
//! 4. `+claim_r`: the reader claims with a CAS FULL -> READING.
//! 5. `+positions`: head and tail are shared words moved by CAS.
//! 6. `+fences`: a SeqCst fence and a waiter-count load after publishing and
//!    after releasing (the wake handshake): this is the channel's protocol.
//! 7. `channel`: the channel (`try_send` / `try_recv`), same shape.

use std::sync::atomic::{fence, AtomicU64, Ordering::*};
use std::time::Instant;

const CAP: u64 = 64;
const BATCHES: usize = 4000;
const BATCH: usize = 32;

#[derive(Clone, Copy)]
struct Step {
    claim_w: bool,
    claim_r: bool,
    positions: bool,
    fences: bool,
}

/// One direction: positions and waiter counts on lines of their own, then
/// the slots (one 64-byte line each).
#[repr(C, align(128))]
struct Ring {
    head: [AtomicU64; 16],
    tail: [AtomicU64; 16],
    waiters: [AtomicU64; 16],
    slots: [[AtomicU64; 8]; CAP as usize],
}

const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const READING: u64 = 3;

fn stamp(lap: u64, att: u64, state: u64) -> u64 {
    lap << 14 | att << 4 | state
}

#[inline(never)]
fn send(r: &Ring, step: Step, me: u64, tail: &mut u64, v: u64) {
    let t = if step.positions { r.tail[0].load(Acquire) } else { *tail };
    let (i, lap) = (t % CAP, t / CAP);
    let s = &r.slots[i as usize];
    if step.claim_w {
        while s[0].compare_exchange(stamp(lap, 0, EMPTY), stamp(lap, me, WRITING), Acquire, Relaxed).is_err() {
            std::hint::spin_loop();
        }
    } else {
        while s[0].load(Acquire) != stamp(lap, 0, EMPTY) {
            std::hint::spin_loop();
        }
    }
    if step.positions {
        let _ = r.tail[0].compare_exchange(t, t + 1, Release, Relaxed);
    } else {
        *tail = t + 1;
    }
    s[1].store(8, Relaxed);
    s[3].store(v, Relaxed);
    s[0].store(stamp(lap, 0, FULL), Release);
    if step.fences {
        fence(SeqCst);
        assert_eq!(r.waiters[0].load(Relaxed), 0);
    }
}

#[inline(never)]
fn recv(r: &Ring, step: Step, me: u64, head: &mut u64) -> u64 {
    let h = if step.positions { r.head[0].load(Relaxed) } else { *head };
    let (i, lap) = (h % CAP, h / CAP);
    let s = &r.slots[i as usize];
    loop {
        let x = s[0].load(Acquire);
        if x == stamp(lap, 0, FULL)
            && (!step.claim_r || s[0].compare_exchange(x, stamp(lap, me, READING), Acquire, Relaxed).is_ok())
        {
            break;
        }
        std::hint::spin_loop();
    }
    if step.positions {
        let _ = r.head[0].compare_exchange(h, h + 1, Release, Relaxed);
    } else {
        *head = h + 1;
    }
    let v = s[3].load(Relaxed);
    s[0].store(stamp(lap + 1, 0, EMPTY), Release);
    if step.fences {
        fence(SeqCst);
        assert_eq!(r.waiters[0].load(Relaxed), 0);
    }
    v
}

/// Zeroed shared memory that a forked child shares.
fn shared(len: usize) -> *mut u8 {
    // SAFETY: an anonymous shared mapping; no file, nothing left behind.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    p.cast()
}

/// Run `child` in a forked process, time `one` round trips here.
fn measure(child: impl FnOnce(), mut one: impl FnMut()) -> (f64, libc::pid_t) {
    // SAFETY: this program is single-threaded when it forks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        child();
        // SAFETY: leave without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    for _ in 0..20_000 {
        one();
    }
    let mut v: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                one();
            }
            t.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], pid)
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed");
}

fn floor() -> f64 {
    let p = shared(4096);
    // SAFETY: two aligned words on separate lines of a zeroed page.
    let (ping, pong) = unsafe { (&*p.cast::<AtomicU64>(), &*p.add(128).cast::<AtomicU64>()) };
    let child = || {
        let mut seen = 0;
        loop {
            let v = ping.load(Acquire);
            if v == seen {
                std::hint::spin_loop();
                continue;
            }
            if v == u64::MAX {
                return;
            }
            seen = v;
            pong.store(v, Release);
        }
    };
    let mut seq = 0;
    let (ns, pid) = measure(child, || {
        seq += 1;
        ping.store(seq, Release);
        while pong.load(Acquire) != seq {
            std::hint::spin_loop();
        }
    });
    ping.store(u64::MAX, Release);
    reap(pid);
    // SAFETY: mapped above, no references left.
    unsafe { libc::munmap(p.cast(), 4096) };
    ns
}

fn protocol(step: Step) -> f64 {
    let len = 2 * std::mem::size_of::<Ring>();
    let p = shared(len);
    // SAFETY: zeroed, aligned memory for two rings (all-zero atomics are
    // valid: every slot EMPTY(0), positions 0).
    let (a, b) = unsafe { (&*p.cast::<Ring>(), &*p.add(len / 2).cast::<Ring>()) };
    let child = || {
        let (mut head, mut tail) = (0, 0);
        loop {
            let v = recv(a, step, 2, &mut head);
            if v == 0 {
                return;
            }
            send(b, step, 2, &mut tail, v);
        }
    };
    let (mut head, mut tail) = (0, 0);
    let (ns, pid) = measure(child, || {
        send(a, step, 1, &mut tail, 7);
        recv(b, step, 1, &mut head);
    });
    send(a, step, 1, &mut tail, 0);
    reap(pid);
    // SAFETY: mapped above, no references left.
    unsafe { libc::munmap(p.cast(), len) };
    ns
}

fn channel() -> f64 {
    use channels_core::{ChannelOptions, TryRecvError};
    let opts = ChannelOptions::new().capacity(64).slot_size(64);
    let a = transport_shm::channel::create(&opts).unwrap();
    let b = transport_shm::channel::create(&opts).unwrap();
    let recv = |ch: &channels_core::Channel| loop {
        match ch.try_recv() {
            Ok(m) => return m,
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    };
    let send = |ch: &channels_core::Channel, m: &[u8]| {
        while ch.try_send(m).is_err() {
            std::hint::spin_loop();
        }
    };
    let child = || loop {
        // The forked child takes attachments of its own on first use.
        let m = recv(&a);
        if m.is_empty() {
            return;
        }
        send(&b, &m);
    };
    let (ns, pid) = measure(child, || {
        send(&a, &[7u8; 8]);
        recv(&b);
    });
    send(&a, &[]);
    reap(pid);
    a.destroy();
    b.destroy();
    ns
}

/// A named step and how to measure it once.
type Case = (&'static str, Box<dyn Fn() -> f64>);

fn main() {
    let reps: usize = std::env::args().nth(1).map_or(5, |s| s.parse().expect("a repetition count"));
    let off = Step { claim_w: false, claim_r: false, positions: false, fences: false };
    let steps: Vec<Case> = vec![
        ("floor", Box::new(floor)),
        ("slots", Box::new(move || protocol(off))),
        ("+claim_w", Box::new(move || protocol(Step { claim_w: true, ..off }))),
        ("+claim_r", Box::new(move || protocol(Step { claim_w: true, claim_r: true, ..off }))),
        (
            "+positions",
            Box::new(move || protocol(Step { claim_w: true, claim_r: true, positions: true, fences: false })),
        ),
        ("+fences", Box::new(move || protocol(Step { claim_w: true, claim_r: true, positions: true, fences: true }))),
        ("channel", Box::new(channel)),
    ];
    let mut runs: Vec<Vec<f64>> = vec![vec![]; steps.len()];
    for _ in 0..reps {
        for (k, (_, f)) in steps.iter().enumerate() {
            runs[k].push(f());
        }
    }
    for ((name, _), mut v) in steps.iter().zip(runs) {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{{\"step\":\"{name}\",\"median_ns\":{:.1},\"min_ns\":{:.1},\"max_ns\":{:.1},\"reps\":{reps}}}",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}
