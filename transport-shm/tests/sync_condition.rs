//! Conditions across real processes and threads, following CPython's own
//! multiprocessing tests: notify(n) wakes exactly n waiters, timed-out
//! waiters do not absorb notifications, and a dead waiter is skipped.

mod sync_common;

use std::sync::Arc;
use std::time::Duration;
use sync_common::{arg, eventually, Child, Unlink};
use transport_shm::{ShmCondition, ShmRLock, ShmSemaphore};

/// Entry point of the child processes (run with `--ignored --exact child_entry`).
#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_entry() {
    sync_common::child_entry(role);
}

/// The condition, its lock, and the `sleeping` / `woken` counters of
/// CPython's `_TestCondition.f`.
struct Objects {
    cond: ShmCondition,
    lock: ShmRLock,
    sleeping: ShmSemaphore,
    woken: ShmSemaphore,
}

impl Objects {
    fn create() -> Objects {
        Objects {
            cond: ShmCondition::with_capacity(16).unwrap(),
            lock: ShmRLock::create().unwrap(),
            sleeping: ShmSemaphore::create(0, None).unwrap(),
            woken: ShmSemaphore::create(0, None).unwrap(),
        }
    }

    fn attach() -> Objects {
        Objects {
            cond: ShmCondition::attach_text(&arg("COND")).unwrap(),
            lock: ShmRLock::attach_text(&arg("LOCK")).unwrap(),
            sleeping: ShmSemaphore::attach_text(&arg("SLEEPING")).unwrap(),
            woken: ShmSemaphore::attach_text(&arg("WOKEN")).unwrap(),
        }
    }

    fn env(&self, timeout_ms: Option<u64>) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("COND", self.cond.handle().to_text()),
            ("LOCK", self.lock.handle().to_text()),
            ("SLEEPING", self.sleeping.handle().to_text()),
            ("WOKEN", self.woken.handle().to_text()),
        ];
        if let Some(t) = timeout_ms {
            v.push(("TIMEOUT_MS", t.to_string()));
        }
        v
    }

    fn guard(&self) -> Unlink {
        Unlink::of(&[self.cond.handle(), self.lock.handle(), self.sleeping.handle(), self.woken.handle()])
    }

    /// CPython's `f`: take the lock, say we sleep, wait, say we woke.
    fn f(&self, timeout: Option<Duration>) {
        self.lock.acquire(None).unwrap();
        self.sleeping.release().unwrap();
        self.cond.wait(&*self.lock, timeout).unwrap();
        self.woken.release().unwrap();
        self.lock.release().unwrap();
    }

    fn notify(&self, n: u32) -> u32 {
        self.lock.acquire(None).unwrap();
        let k = self.cond.notify(n);
        self.lock.release().unwrap();
        k
    }

    /// Start `n` waiting processes and `n` waiting threads, and wait until
    /// all of them sleep.
    fn start(self: &Arc<Self>, n: usize, timeout_ms: Option<u64>) -> (Vec<Child>, Vec<std::thread::JoinHandle<()>>) {
        let kids = (0..n).map(|_| Child::spawn("f", &self.env(timeout_ms))).collect();
        let threads = (0..n)
            .map(|_| {
                let o = Arc::clone(self);
                std::thread::spawn(move || o.f(timeout_ms.map(Duration::from_millis)))
            })
            .collect();
        for _ in 0..2 * n {
            self.sleeping.acquire(Some(Duration::from_secs(30))).unwrap();
        }
        (kids, threads)
    }
}

fn role(role: &str) -> i32 {
    match role {
        "f" => {
            let timeout = std::env::var("TIMEOUT_MS").ok().map(|t| Duration::from_millis(t.parse().unwrap()));
            Objects::attach().f(timeout);
            0
        }
        "wait_forever" => {
            let o = Objects::attach();
            o.lock.acquire(None).unwrap();
            o.sleeping.release().unwrap();
            let _ = o.cond.wait(&*o.lock, None);
            // Never notified: the parent kills us.
            1
        }
        other => panic!("unknown role {other}"),
    }
}

fn settle() {
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn notify_n_wakes_exactly_n() {
    sync_common::watchdog();
    let o = Arc::new(Objects::create());
    let _g = o.guard();
    let (mut kids, threads) = o.start(3, None);
    settle();
    assert_eq!(o.woken.value(), 0);
    assert_eq!(o.notify(2), 2);
    assert!(eventually(Duration::from_secs(30), || o.woken.value() == 2));
    settle();
    assert_eq!(o.woken.value(), 2, "notify(2) woke more than 2");
    assert_eq!(o.notify(4), 4);
    assert!(eventually(Duration::from_secs(30), || o.woken.value() == 6));
    assert_eq!(o.notify(3), 0);
    settle();
    assert_eq!(o.woken.value(), 6);
    for k in &mut kids {
        k.expect_success();
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(o.cond.waiting() + o.cond.notified_pending(), 0);
}

#[test]
fn notify_one_at_a_time() {
    sync_common::watchdog();
    let o = Arc::new(Objects::create());
    let _g = o.guard();
    let (mut kids, threads) = o.start(1, None);
    settle();
    for expected in 1..=2 {
        assert_eq!(o.notify(1), 1);
        assert!(eventually(Duration::from_secs(30), || o.woken.value() == expected));
        settle();
        assert_eq!(o.woken.value(), expected);
    }
    for k in &mut kids {
        k.expect_success();
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn timed_out_waiters_then_notify_all() {
    sync_common::watchdog();
    let o = Arc::new(Objects::create());
    let _g = o.guard();
    let (mut kids, threads) = o.start(3, Some(100));
    // They all time out.
    for _ in 0..6 {
        o.woken.acquire(Some(Duration::from_secs(30))).unwrap();
    }
    for k in &mut kids {
        k.expect_success();
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(o.cond.waiting() + o.cond.notified_pending(), 0);
    let (mut kids, threads) = o.start(3, None);
    settle();
    assert_eq!(o.woken.value(), 0);
    assert_eq!(o.notify(u32::MAX), 6);
    assert!(eventually(Duration::from_secs(30), || o.woken.value() == 6));
    for k in &mut kids {
        k.expect_success();
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(o.cond.waiting() + o.cond.notified_pending(), 0);
}

#[test]
fn dead_waiter_does_not_absorb_a_notification() {
    sync_common::watchdog();
    let o = Arc::new(Objects::create());
    let _g = o.guard();
    let mut doomed = Child::spawn("wait_forever", &o.env(None));
    o.sleeping.acquire(Some(Duration::from_secs(30))).unwrap();
    let (mut kids, threads) = o.start(1, None);
    doomed.kill_no_reap();
    doomed.expect_killed();
    // Three waiters, the oldest dead: notify(1) must reach a live one.
    assert_eq!(o.cond.waiting(), 3);
    assert_eq!(o.notify(1), 1);
    assert!(eventually(Duration::from_secs(30), || o.woken.value() == 1));
    assert_eq!(o.notify(1), 1);
    assert!(eventually(Duration::from_secs(30), || o.woken.value() == 2));
    for k in &mut kids {
        k.expect_success();
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(o.cond.waiting() + o.cond.notified_pending(), 0);
}
