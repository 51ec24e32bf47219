//! Locks and recursive locks across real processes: mutual exclusion, any
//! process may release a Lock, RLock ownership, and a holder killed with
//! SIGKILL hands the lock to the next acquirer, who learns the owner died.

mod sync_common;

use std::time::Duration;
use sync_common::{arg, exists, Child, Scratch, Unlink};
use sync_objects::{Acquired, ReleaseError};
use transport_shm::{ShmEvent, ShmLock, ShmRLock, ShmSemaphore};

const ROUNDS: u64 = 2000;

/// Entry point of the child processes (run with `--ignored --exact child_entry`).
#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_entry() {
    sync_common::child_entry(role);
}

fn role(role: &str) -> i32 {
    match role {
        "count" => {
            let lock = ShmLock::attach_text(&arg("LOCK")).unwrap();
            let scratch = Scratch::open(&arg("SCRATCH"));
            for i in 0..ROUNDS {
                assert_eq!(lock.acquire(Some(Duration::from_secs(30))), Ok(Acquired::Normal));
                let v = scratch.get(0);
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
                scratch.set(0, v + 1);
                lock.release().unwrap();
                // Other work between critical sections lets sleepers in.
                std::thread::sleep(Duration::from_micros(100));
            }
            0
        }
        "hold" => {
            let lock = ShmLock::attach_text(&arg("LOCK")).unwrap();
            lock.acquire(None).unwrap();
            ShmEvent::attach_text(&arg("HELD")).unwrap().set();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "take" => {
            // Blocks on a lock held by a live process until it is killed.
            let lock = ShmLock::attach_text(&arg("LOCK")).unwrap();
            ShmEvent::attach_text(&arg("WAITING")).unwrap().set();
            let got = lock.acquire(Some(Duration::from_secs(30)));
            let dead: u32 = arg("DEAD").parse().unwrap();
            if got == Ok(Acquired::OwnerDied { pid: dead }) {
                // Exit holding the lock: the next acquirer must learn that too.
                0
            } else {
                eprintln!("expected OwnerDied {{ pid: {dead} }}, got {got:?}");
                1
            }
        }
        "release" => {
            let lock = ShmLock::attach_text(&arg("LOCK")).unwrap();
            i32::from(lock.release().is_err())
        }
        "hold_rlock" => {
            let lock = ShmRLock::attach_text(&arg("LOCK")).unwrap();
            lock.acquire(None).unwrap();
            lock.acquire(None).unwrap();
            ShmEvent::attach_text(&arg("HELD")).unwrap().set();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "foreign_rlock" => {
            let lock = ShmRLock::attach_text(&arg("LOCK")).unwrap();
            let ok = !lock.is_mine()
                && lock.count() == 0
                && lock.is_locked()
                && lock.release() == Err(ReleaseError::NotOwner)
                && lock.try_acquire() == Ok(None);
            i32::from(!ok)
        }
        "hammer" => {
            // Increment under the lock until told to stop; count takeovers.
            // With HOLD_AT=n, say "started" from inside the n-th critical
            // section and stay in it (the parent kills us there).
            let lock = ShmLock::attach_text(&arg("LOCK")).unwrap();
            let stop = ShmEvent::attach_text(&arg("STOP")).unwrap();
            let started = ShmSemaphore::attach_text(&arg("STARTED")).unwrap();
            let scratch = Scratch::open(&arg("SCRATCH"));
            let hold_at: Option<u64> = std::env::var("HOLD_AT").ok().map(|v| v.parse().unwrap());
            if hold_at.is_none() {
                started.release().unwrap();
            }
            let mut i = 0;
            while !stop.is_set() {
                let a = lock.acquire(Some(Duration::from_secs(30))).unwrap();
                if a.owner_died() {
                    scratch.set(1, scratch.get(1) + 1);
                }
                scratch.set(0, scratch.get(0) + 1);
                i += 1;
                if hold_at == Some(i) {
                    started.release().unwrap();
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                // Hold the lock a while, so that random kills can hit a holder.
                for _ in 0..2000 {
                    std::hint::spin_loop();
                }
                lock.release().unwrap();
                // Other work between critical sections lets sleepers in.
                std::thread::sleep(Duration::from_micros(100));
            }
            0
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn lock_excludes_across_processes() {
    sync_common::watchdog();
    let lock = ShmLock::create().unwrap();
    let _g = Unlink::of(&[lock.handle()]);
    let scratch = Scratch::create();
    let env = [("LOCK", lock.handle().to_text()), ("SCRATCH", scratch.name())];
    let mut kids: Vec<Child> = (0..3).map(|_| Child::spawn("count", &env)).collect();
    for _ in 0..ROUNDS {
        lock.acquire(Some(Duration::from_secs(30))).unwrap();
        let v = scratch.get(0);
        scratch.set(0, v + 1);
        lock.release().unwrap();
    }
    for k in &mut kids {
        k.expect_success();
    }
    assert_eq!(scratch.get(0), 4 * ROUNDS);
    assert!(!lock.is_locked());
    lock.destroy().unwrap();
    assert!(!exists(&lock.handle().segment));
}

#[test]
fn killed_holder_hands_the_lock_over() {
    sync_common::watchdog();
    let lock = ShmLock::create().unwrap();
    let held = ShmEvent::create().unwrap();
    let waiting = ShmEvent::create().unwrap();
    let _g = Unlink::of(&[lock.handle(), held.handle(), waiting.handle()]);
    let mut holder = Child::spawn("hold", &[("LOCK", lock.handle().to_text()), ("HELD", held.handle().to_text())]);
    assert!(held.wait(Some(Duration::from_secs(30))), "holder never took the lock");
    assert_eq!(lock.holder(), Some(holder.pid()));
    // A second process sleeps on the lock while its holder is killed.
    let mut taker = Child::spawn(
        "take",
        &[
            ("LOCK", lock.handle().to_text()),
            ("WAITING", waiting.handle().to_text()),
            ("DEAD", holder.pid().to_string()),
        ],
    );
    assert!(waiting.wait(Some(Duration::from_secs(30))));
    std::thread::sleep(Duration::from_millis(50));
    // Killed but not reaped: a zombie counts as dead.
    holder.kill_no_reap();
    taker.expect_success();
    holder.expect_killed();
    // The taker exited holding the lock: we take it over in turn.
    assert_eq!(lock.acquire(Some(Duration::from_secs(30))), Ok(Acquired::OwnerDied { pid: taker.pid() }));
    assert!(lock.holder_recovered());
    lock.release().unwrap();
    assert_eq!(lock.acquire(None), Ok(Acquired::Normal), "after a clean release nobody died");
    lock.release().unwrap();
    for h in [lock.handle(), held.handle(), waiting.handle()] {
        transport_shm::segment::unlink(&h.segment).unwrap();
        assert!(!exists(&h.segment));
    }
}

#[test]
fn any_process_may_release_a_lock() {
    sync_common::watchdog();
    let lock = ShmLock::create().unwrap();
    let _g = Unlink::of(&[lock.handle()]);
    lock.acquire(None).unwrap();
    Child::spawn("release", &[("LOCK", lock.handle().to_text())]).expect_success();
    assert!(!lock.is_locked());
    // Releasing a free lock fails in the child too.
    Child::spawn("release", &[("LOCK", lock.handle().to_text())]).wait();
    assert_eq!(lock.release(), Err(ReleaseError::NotHeld));
    lock.destroy().unwrap();
}

#[test]
fn rlock_belongs_to_one_thread_of_one_process() {
    sync_common::watchdog();
    let lock = ShmRLock::create().unwrap();
    let _g = Unlink::of(&[lock.handle()]);
    lock.acquire(None).unwrap();
    lock.acquire(None).unwrap();
    assert_eq!(lock.count(), 2);
    Child::spawn("foreign_rlock", &[("LOCK", lock.handle().to_text())]).expect_success();
    assert_eq!(lock.count(), 2, "a foreign release changed nothing");
    lock.release().unwrap();
    lock.release().unwrap();
    assert_eq!(lock.release(), Err(ReleaseError::NotOwner));
    lock.destroy().unwrap();
}

#[test]
fn killed_rlock_owner_hands_it_over() {
    sync_common::watchdog();
    let lock = ShmRLock::create().unwrap();
    let held = ShmEvent::create().unwrap();
    let _g = Unlink::of(&[lock.handle(), held.handle()]);
    let mut holder =
        Child::spawn("hold_rlock", &[("LOCK", lock.handle().to_text()), ("HELD", held.handle().to_text())]);
    assert!(held.wait(Some(Duration::from_secs(30))));
    assert_eq!(lock.try_acquire(), Ok(None));
    holder.kill_no_reap();
    assert_eq!(lock.acquire(Some(Duration::from_secs(30))), Ok(Acquired::OwnerDied { pid: holder.pid() }));
    assert_eq!(lock.count(), 1, "the dead owner's recursion depth is not inherited");
    lock.release().unwrap();
    assert!(!lock.is_locked());
    holder.expect_killed();
    lock.destroy().unwrap();
    held.destroy().unwrap();
}

#[test]
fn lock_survives_holders_killed_at_random_points() {
    sync_common::watchdog();
    let lock = ShmLock::create().unwrap();
    let stop = ShmEvent::create().unwrap();
    let started = ShmSemaphore::create(0, None).unwrap();
    let _g = Unlink::of(&[lock.handle(), stop.handle(), started.handle()]);
    let scratch = Scratch::create();
    let env = [
        ("LOCK", lock.handle().to_text()),
        ("STOP", stop.handle().to_text()),
        ("STARTED", started.handle().to_text()),
        ("SCRATCH", scratch.name()),
    ];
    let mut survivors: Vec<Child> = (0..2).map(|_| Child::spawn("hammer", &env)).collect();
    for _ in &survivors {
        started.acquire(Some(Duration::from_secs(30))).unwrap();
    }
    let mut killed_holding = 0;
    for round in 0..12u64 {
        let mut victim = if round % 2 == 0 {
            // Killed inside its third critical section.
            let mut env = env.to_vec();
            env.push(("HOLD_AT", "3".into()));
            Child::spawn("hammer", &env)
        } else {
            Child::spawn("hammer", &env)
        };
        started.acquire(Some(Duration::from_secs(30))).unwrap();
        if round % 2 == 1 {
            // A pseudo-random moment inside the victim's loop.
            std::thread::sleep(Duration::from_micros(200 + (round * 7919) % 3000));
        }
        victim.kill_no_reap();
        victim.expect_killed();
        if round % 2 == 0 {
            assert_eq!(lock.holder(), Some(victim.pid()), "killed inside its critical section");
            killed_holding += 1;
        }
    }
    // Everyone still makes progress: the survivors (and we) can take the lock.
    let before = scratch.get(0);
    assert!(sync_common::eventually(Duration::from_secs(30), || scratch.get(0) > before + 100));
    stop.set();
    for k in &mut survivors {
        k.expect_success();
    }
    let a = lock.acquire(Some(Duration::from_secs(30))).unwrap();
    lock.release().unwrap();
    // Every lock held by a killed process was taken over exactly once, and
    // only then: no takeover without a death.
    let takeovers = scratch.get(1) + u64::from(a.owner_died());
    assert!(takeovers >= killed_holding, "{takeovers} takeovers < {killed_holding} killed holding");
    assert!(takeovers <= 12, "{takeovers} takeovers for 12 deaths");
    assert!(!lock.is_locked());
}
