//! Two processes passing messages through a `JoinableQueue` (jobs) and a
//! `Queue` (results), with the `queues` crate alone (no Python).
//!
//! Run it with `cargo run --release -p queues --example queue_demo`: the
//! program starts itself again as a worker process, hands it the queues'
//! handles in arguments, puts jobs, waits with `join` until the worker has
//! marked each one done, and prints what came back.

use queues::{JoinableQueue, Queue, QueueHandle};
use std::process::Command;
use std::time::Duration;

fn worker(jobs: &str, results: &str) -> Result<(), Box<dyn std::error::Error>> {
    let jobs = JoinableQueue::attach(&jobs.parse::<QueueHandle>()?)?;
    let results = Queue::attach(&results.parse::<QueueHandle>()?)?;
    loop {
        let job = jobs.get(None)?;
        let text = String::from_utf8_lossy(job.payload()).into_owned();
        if text == "stop" {
            jobs.task_done()?;
            return Ok(());
        }
        let n: u64 = text.parse()?;
        results.put(format!("{n} squared is {}", n * n).as_bytes(), None)?;
        jobs.task_done()?;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "worker" {
        return worker(&args[2], &args[3]);
    }
    let jobs = JoinableQueue::new(0)?;
    let results = Queue::new(0)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["worker", &jobs.handle().to_string(), &results.handle().to_string()])
        .spawn()?;
    println!("parent {}: started worker process {}", std::process::id(), child.id());

    for n in 1..=5u64 {
        jobs.put(n.to_string().as_bytes(), None)?;
    }
    println!("parent: put 5 jobs; waiting for the worker to finish them (join)");
    jobs.join()?;
    println!("parent: every job is done (unfinished tasks: {})", jobs.unfinished());
    for _ in 0..5 {
        let r = results.get(Some(Duration::from_secs(30)))?;
        println!("parent: got {:?}", String::from_utf8_lossy(r.payload()));
    }
    jobs.put(b"stop", None)?;
    jobs.join()?;
    let status = child.wait()?;
    println!("parent: the worker exited ({status})");
    Ok(())
}
