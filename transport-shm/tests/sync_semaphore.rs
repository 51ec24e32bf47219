//! Semaphores and events across real processes.

mod sync_common;

use std::time::Duration;
use sync_common::{arg, Child, Scratch, Unlink};
use sync_objects::{ReleaseError, WaitError};
use transport_shm::{ShmEvent, ShmSemaphore};

const UNITS: u64 = 500;

/// Entry point of the child processes (run with `--ignored --exact child_entry`).
#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_entry() {
    sync_common::child_entry(role);
}

fn role(role: &str) -> i32 {
    match role {
        "consume" => {
            let sem = ShmSemaphore::attach_text(&arg("SEM")).unwrap();
            let scratch = Scratch::open(&arg("SCRATCH"));
            let slot: usize = arg("SLOT").parse().unwrap();
            for _ in 0..UNITS {
                sem.acquire(Some(Duration::from_secs(30))).unwrap();
                scratch.set(slot, scratch.get(slot) + 1);
            }
            0
        }
        "take_one" => {
            let sem = ShmSemaphore::attach_text(&arg("SEM")).unwrap();
            // Exit holding the unit: a semaphore has no owner to recover.
            i32::from(sem.acquire(Some(Duration::from_secs(30))).is_err())
        }
        "overflow" => {
            let sem = ShmSemaphore::attach_text(&arg("SEM")).unwrap();
            i32::from(sem.release() != Err(ReleaseError::Overflow { max: 2 }))
        }
        "wait_event" => {
            let ev = ShmEvent::attach_text(&arg("EVENT")).unwrap();
            let short = ev.wait(Some(Duration::from_millis(1)));
            ShmSemaphore::attach_text(&arg("READY")).unwrap().release().unwrap();
            i32::from(short || !ev.wait(Some(Duration::from_secs(30))))
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn units_are_conserved_across_processes() {
    sync_common::watchdog();
    let sem = ShmSemaphore::create(0, None).unwrap();
    let _g = Unlink::of(&[sem.handle()]);
    let scratch = Scratch::create();
    let mut kids: Vec<Child> = (0..2)
        .map(|i| {
            Child::spawn(
                "consume",
                &[("SEM", sem.handle().to_text()), ("SCRATCH", scratch.name()), ("SLOT", i.to_string())],
            )
        })
        .collect();
    for i in 0..2 * UNITS {
        sem.release().unwrap();
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for k in &mut kids {
        k.expect_success();
    }
    assert_eq!(scratch.get(0) + scratch.get(1), 2 * UNITS);
    assert_eq!(sem.value(), 0);
    assert_eq!(sem.acquire(Some(Duration::from_millis(20))), Err(WaitError::TimedOut));
    sem.destroy().unwrap();
}

#[test]
fn bounded_semaphore_across_processes() {
    sync_common::watchdog();
    let sem = ShmSemaphore::create(2, Some(2)).unwrap();
    let _g = Unlink::of(&[sem.handle()]);
    let h = [("SEM", sem.handle().to_text())];
    Child::spawn("overflow", &h).expect_success();
    assert_eq!(sem.value(), 2);
    Child::spawn("take_one", &h).expect_success();
    assert_eq!(sem.value(), 1, "a unit taken by a process that exited stays taken");
    sem.release().unwrap();
    assert_eq!(sem.release(), Err(ReleaseError::Overflow { max: 2 }));
    assert_eq!(sem.max(), Some(2));
    sem.destroy().unwrap();
}

#[test]
fn event_wakes_every_process() {
    sync_common::watchdog();
    let ev = ShmEvent::create().unwrap();
    let ready = ShmSemaphore::create(0, None).unwrap();
    let _g = Unlink::of(&[ev.handle(), ready.handle()]);
    let env = [("EVENT", ev.handle().to_text()), ("READY", ready.handle().to_text())];
    let mut kids: Vec<Child> = (0..3).map(|_| Child::spawn("wait_event", &env)).collect();
    for _ in 0..3 {
        ready.acquire(Some(Duration::from_secs(30))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    ev.set();
    for k in &mut kids {
        k.expect_success();
    }
    assert!(ev.is_set());
    ev.clear();
    assert!(!ev.wait(Some(Duration::from_millis(10))));
    ev.destroy().unwrap();
    ready.destroy().unwrap();
}
