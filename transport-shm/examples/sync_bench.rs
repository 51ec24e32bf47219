//! Benchmark of the shared-memory synchronisation objects against POSIX
//! process-shared semaphores (`sem_t` with `pshared = 1`, what CPython's
//! `multiprocessing` locks and semaphores are built on), in the same run.
//!
//! ```sh
//! cargo run --release -p transport-shm --example sync_bench
//! ```
//!
//! Prints one JSON line per case and implementation: the median and the
//! minimum over batches of the time per operation, in nanoseconds. Cases:
//! - `lock_uncontended`: acquire + release by one process (ns per pair).
//! - `pingpong`: two processes hand a token back and forth through two
//!   semaphores (ns per round trip, i.e. two blocking hand-overs).
//! - `lock_contended`: two processes each increment a shared counter under
//!   one lock, starting together (ns per increment, both processes
//!   together; one batch).

use std::process::Command;
use std::time::{Duration, Instant};
use transport_shm::segment::{RunId, Segment};
use transport_shm::{ShmLock, ShmSemaphore};

const UNCONTENDED: u64 = 2_000_000;
const PINGPONG: u64 = 50_000;
const CONTENDED: u64 = 3_000_000;

/// POSIX semaphores in a segment of their own (slot `i` at `i * 64`).
struct PosixSems {
    seg: Segment,
    owner: bool,
}

impl PosixSems {
    fn create(values: &[u32]) -> PosixSems {
        let seg = Segment::create(&RunId::current().segment_name("bench"), 4096).unwrap();
        let s = PosixSems { seg, owner: true };
        for (i, v) in values.iter().enumerate() {
            // SAFETY: a fresh, page-aligned mapping; slot i is in bounds and
            // suitably aligned for sem_t (64-byte slots, sem_t is 32 bytes).
            let r = unsafe { libc::sem_init(s.sem(i), 1, *v) };
            assert_eq!(r, 0);
        }
        s
    }

    fn open(name: &str) -> PosixSems {
        PosixSems { seg: Segment::open(name).unwrap(), owner: false }
    }

    fn sem(&self, i: usize) -> *mut libc::sem_t {
        use shm_primitives::region::Region;
        assert!(i < 64);
        // SAFETY: in bounds of the 4 KiB mapping.
        unsafe { self.seg.base().as_ptr().add(i * 64).cast() }
    }

    fn wait(&self, i: usize) {
        // SAFETY: an initialised process-shared semaphore.
        while unsafe { libc::sem_wait(self.sem(i)) } != 0 {}
    }

    fn post(&self, i: usize) {
        // SAFETY: an initialised process-shared semaphore.
        unsafe { libc::sem_post(self.sem(i)) };
    }

    fn counter(&self) -> *mut u64 {
        use shm_primitives::region::Region;
        // SAFETY: the last 8 bytes of the page, away from the semaphores.
        unsafe { self.seg.base().as_ptr().add(4088).cast() }
    }
}

impl Drop for PosixSems {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.seg.unlink();
        }
    }
}

const BATCHES: u64 = 10;

fn report(case: &str, imp: &str, mut batches: Vec<f64>) {
    batches.sort_by(f64::total_cmp);
    let median = batches[batches.len() / 2];
    let min = batches[0];
    println!(
        "{{\"bench\":\"sync\",\"case\":\"{case}\",\"impl\":\"{imp}\",\"median_ns\":{median:.1},\"min_ns\":{min:.1},\"batches\":{}}}",
        batches.len()
    );
}

fn per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// Time `BATCHES` batches of `n / BATCHES` operations each.
fn batches(n: u64, mut op: impl FnMut()) -> Vec<f64> {
    let per_batch = n / BATCHES;
    (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                op();
            }
            per(t.elapsed(), per_batch)
        })
        .collect()
}

fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap()).args(args).spawn().unwrap()
}

fn child(args: &[String]) {
    match args[0].as_str() {
        "pong-dragon" => {
            let ping = ShmSemaphore::attach_text(&args[1]).unwrap();
            let pong = ShmSemaphore::attach_text(&args[2]).unwrap();
            for _ in 0..PINGPONG {
                ping.acquire(None).unwrap();
                pong.release().unwrap();
            }
        }
        "pong-posix" => {
            let s = PosixSems::open(&args[1]);
            for _ in 0..PINGPONG {
                s.wait(0);
                s.post(1);
            }
        }
        "count-dragon" => {
            let lock = ShmLock::attach_text(&args[1]).unwrap();
            let sems = PosixSems::open(&args[2]);
            sems.post(3);
            count_dragon(&lock, sems.counter());
        }
        "count-posix" => {
            let s = PosixSems::open(&args[1]);
            s.post(3);
            count_posix(&s);
        }
        other => panic!("unknown child role {other}"),
    }
}

fn count_dragon(lock: &ShmLock, counter: *mut u64) {
    for _ in 0..CONTENDED {
        lock.acquire(None).unwrap();
        // SAFETY: the counter is only touched under the lock.
        unsafe { counter.write_volatile(counter.read_volatile() + 1) };
        lock.release().unwrap();
    }
}

fn count_posix(s: &PosixSems) {
    let c = s.counter();
    for _ in 0..CONTENDED {
        s.wait(2);
        // SAFETY: the counter is only touched under the semaphore.
        unsafe { c.write_volatile(c.read_volatile() + 1) };
        s.post(2);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return child(&args);
    }

    // Uncontended acquire + release.
    let lock = ShmLock::create().unwrap();
    let b = batches(UNCONTENDED, || {
        lock.acquire(None).unwrap();
        lock.release().unwrap();
    });
    report("lock_uncontended", "dragon", b);
    let posix = PosixSems::create(&[0, 0, 1, 0]);
    let b = batches(UNCONTENDED, || {
        posix.wait(2);
        posix.post(2);
    });
    report("lock_uncontended", "posix_sem", b);

    // Ping-pong between two processes.
    let ping = ShmSemaphore::create(0, None).unwrap();
    let pong = ShmSemaphore::create(0, None).unwrap();
    let mut c = spawn(&["pong-dragon", &ping.handle().to_text(), &pong.handle().to_text()]);
    let b = batches(PINGPONG, || {
        ping.release().unwrap();
        pong.acquire(None).unwrap();
    });
    report("pingpong", "dragon", b);
    c.wait().unwrap();
    let mut c = spawn(&["pong-posix", posix.seg.name()]);
    let b = batches(PINGPONG, || {
        posix.post(0);
        posix.wait(1);
    });
    report("pingpong", "posix_sem", b);
    c.wait().unwrap();

    // Two processes contending for one lock.
    // SAFETY: nobody else uses the counter yet.
    unsafe { posix.counter().write(0) };
    let mut c = spawn(&["count-dragon", &lock.handle().to_text(), posix.seg.name()]);
    posix.wait(3);
    let t = Instant::now();
    count_dragon(&lock, posix.counter());
    c.wait().unwrap();
    report("lock_contended", "dragon", vec![per(t.elapsed(), 2 * CONTENDED)]);
    // SAFETY: the child has exited.
    assert_eq!(unsafe { posix.counter().read() }, 2 * CONTENDED);
    // SAFETY: as above.
    unsafe { posix.counter().write(0) };
    let mut c = spawn(&["count-posix", posix.seg.name()]);
    posix.wait(3);
    let t = Instant::now();
    count_posix(&posix);
    c.wait().unwrap();
    report("lock_contended", "posix_sem", vec![per(t.elapsed(), 2 * CONTENDED)]);
    // SAFETY: the child has exited.
    assert_eq!(unsafe { posix.counter().read() }, 2 * CONTENDED);

    for h in [lock.handle(), ping.handle(), pong.handle()] {
        transport_shm::segment::unlink(&h.segment).unwrap();
    }
}
