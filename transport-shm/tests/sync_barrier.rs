//! Barriers across real processes: lockstep over many generations with an
//! action that runs once per generation, abort and reset, a timeout that
//! breaks the barrier for everyone, a killed waiter that does not block
//! later generations, and a killed action runner that breaks the barrier.

mod sync_common;

use std::time::Duration;
use sync_common::{arg, eventually, Child, Scratch, Unlink};
use sync_objects::BarrierError;
use transport_shm::{ShmBarrier, ShmEvent};

const PARTIES: usize = 4;
const GENERATIONS: usize = 40;
const LONG: Option<Duration> = Some(Duration::from_secs(30));

/// Entry point of the child processes (run with `--ignored --exact child_entry`).
#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_entry() {
    sync_common::child_entry(role);
}

/// Scratch layout of the lockstep test: words `[0, PARTIES)` count each
/// party's arrivals, word `ACTIONS` counts action runs, and from `INDEXES`
/// on, `party * GENERATIONS + generation` holds the arrival index.
const ACTIONS: usize = PARTIES;
const INDEXES: usize = PARTIES + 1;

/// One party of the lockstep test.
fn lockstep(b: &ShmBarrier, scratch: &Scratch, party: usize) {
    for generation in 0..GENERATIONS {
        scratch.set(party, generation as u64 + 1);
        let mut action = || {
            scratch.set(ACTIONS, scratch.get(ACTIONS) + 1);
            true
        };
        let index = b.wait_with(LONG, Some(&mut action), None).unwrap();
        // Everyone has arrived in this generation before anyone leaves it.
        for other in 0..PARTIES {
            assert!(scratch.get(other) > generation as u64, "party {other} had not arrived");
        }
        scratch.set(INDEXES + party * GENERATIONS + generation, u64::from(index));
        // A second wait keeps the arrival counters of the next generation
        // from racing with the check above.
        b.wait(LONG).unwrap();
    }
}

fn role(role: &str) -> i32 {
    let b = ShmBarrier::attach_text(&arg("BARRIER")).unwrap();
    match role {
        "lockstep" => {
            let scratch = Scratch::open(&arg("SCRATCH"));
            lockstep(&b, &scratch, arg("PARTY").parse().unwrap());
            0
        }
        "broken_then_reset" => {
            let reset = ShmEvent::attach_text(&arg("RESET")).unwrap();
            if b.wait(LONG) != Err(BarrierError::Broken) {
                return 1;
            }
            assert!(reset.wait(LONG));
            i32::from(b.wait(LONG).is_err())
        }
        "wait_timeout" => {
            let ms: u64 = arg("TIMEOUT_MS").parse().unwrap();
            match b.wait(Some(Duration::from_millis(ms))) {
                Ok(_) => 0,
                Err(BarrierError::TimedOut) => 10,
                Err(BarrierError::Broken) => 11,
                _ => 1,
            }
        }
        "wait_forever" => {
            let _ = b.wait(None);
            1
        }
        "stuck_action" => {
            let started = ShmEvent::attach_text(&arg("STARTED")).unwrap();
            let mut action = || {
                started.set();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            };
            let _ = b.wait_with(LONG, Some(&mut action), None);
            1
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn processes_pass_in_lockstep_with_one_action_per_generation() {
    sync_common::watchdog();
    let b = ShmBarrier::create(PARTIES as u32).unwrap();
    let _g = Unlink::of(&[b.handle()]);
    let scratch = Scratch::create();
    let mut kids: Vec<Child> = (1..PARTIES)
        .map(|p| {
            Child::spawn(
                "lockstep",
                &[("BARRIER", b.handle().to_text()), ("SCRATCH", scratch.name()), ("PARTY", p.to_string())],
            )
        })
        .collect();
    lockstep(&b, &scratch, 0);
    for k in &mut kids {
        k.expect_success();
    }
    assert_eq!(scratch.get(ACTIONS), GENERATIONS as u64, "the action runs exactly once per generation");
    for generation in 0..GENERATIONS {
        let mut idx: Vec<u64> = (0..PARTIES).map(|p| scratch.get(INDEXES + p * GENERATIONS + generation)).collect();
        idx.sort_unstable();
        assert_eq!(idx, (0..PARTIES as u64).collect::<Vec<_>>(), "generation {generation}");
    }
    assert!(!b.broken());
    assert_eq!(b.n_waiting(), 0);
    b.destroy().unwrap();
}

#[test]
fn abort_breaks_and_reset_restores() {
    sync_common::watchdog();
    let b = ShmBarrier::create(3).unwrap();
    let reset = ShmEvent::create().unwrap();
    let _g = Unlink::of(&[b.handle(), reset.handle()]);
    let env = [("BARRIER", b.handle().to_text()), ("RESET", reset.handle().to_text())];
    let mut kids: Vec<Child> = (0..2).map(|_| Child::spawn("broken_then_reset", &env)).collect();
    assert!(eventually(Duration::from_secs(30), || b.n_waiting() == 2));
    b.abort();
    assert!(b.broken());
    assert_eq!(b.wait(None), Err(BarrierError::Broken));
    // Let both children see the break before resetting.
    std::thread::sleep(Duration::from_millis(200));
    b.reset();
    reset.set();
    assert!(b.wait(LONG).is_ok());
    for k in &mut kids {
        k.expect_success();
    }
    b.destroy().unwrap();
    reset.destroy().unwrap();
}

#[test]
fn one_timeout_breaks_the_barrier_for_all() {
    sync_common::watchdog();
    let b = ShmBarrier::create(3).unwrap();
    let _g = Unlink::of(&[b.handle()]);
    let h = b.handle().to_text();
    let mut patient = Child::spawn("wait_timeout", &[("BARRIER", h.clone()), ("TIMEOUT_MS", "30000".into())]);
    assert!(eventually(Duration::from_secs(30), || b.n_waiting() == 1));
    let mut hasty = Child::spawn("wait_timeout", &[("BARRIER", h), ("TIMEOUT_MS", "100".into())]);
    assert_eq!(hasty.wait().code(), Some(10), "the party whose timeout elapsed gets TimedOut");
    assert_eq!(patient.wait().code(), Some(11), "the other party gets Broken");
    assert!(b.broken());
    b.destroy().unwrap();
}

#[test]
fn killed_waiter_does_not_block_later_generations() {
    sync_common::watchdog();
    let b = ShmBarrier::create(2).unwrap();
    let _g = Unlink::of(&[b.handle()]);
    let mut doomed = Child::spawn("wait_forever", &[("BARRIER", b.handle().to_text())]);
    assert!(eventually(Duration::from_secs(30), || b.n_waiting() == 1));
    doomed.kill_no_reap();
    doomed.expect_killed();
    // The dead party had arrived: this generation passes.
    assert!(b.wait(LONG).is_ok());
    // And the next one works with new parties.
    let h = b.handle().to_text();
    let mut other = Child::spawn("wait_timeout", &[("BARRIER", h), ("TIMEOUT_MS", "30000".into())]);
    assert!(b.wait(LONG).is_ok());
    assert_eq!(other.wait().code(), Some(0), "the child's wait passed");
    b.destroy().unwrap();
}

#[test]
fn killed_action_runner_breaks_the_barrier() {
    sync_common::watchdog();
    let b = ShmBarrier::create(2).unwrap();
    let started = ShmEvent::create().unwrap();
    let _g = Unlink::of(&[b.handle(), started.handle()]);
    let waiter = {
        let h = b.handle().clone();
        std::thread::spawn(move || ShmBarrier::attach(&h).unwrap().wait(LONG))
    };
    assert!(eventually(Duration::from_secs(30), || b.n_waiting() == 1));
    let mut runner =
        Child::spawn("stuck_action", &[("BARRIER", b.handle().to_text()), ("STARTED", started.handle().to_text())]);
    assert!(started.wait(LONG));
    runner.kill_no_reap();
    assert_eq!(waiter.join().unwrap(), Err(BarrierError::Broken));
    runner.expect_killed();
    assert!(b.broken());
    b.destroy().unwrap();
    started.destroy().unwrap();
}
