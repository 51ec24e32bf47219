//! Threads for requests that wait (a receive on an empty channel, a send
//! on a full one, a poll), kept for reuse: every waiting request gets a
//! thread of its own at once (never queued behind another wait), but a
//! thread that finished one wait serves the next instead of a new thread
//! being started for it. A thread idle for [`IDLE`] ends.

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a thread waits for another request before it ends.
pub const IDLE: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    /// Threads waiting for a job and not yet promised one.
    idle: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = unbounded();
        Pool { tx, rx, idle: AtomicUsize::new(0) }
    })
}

/// Promise a job to an idle thread, if there is one.
fn reserve_idle(p: &Pool) -> bool {
    // The count only says how many threads may take a job; the job itself
    // travels through the channel, which orders everything it carries.
    p.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
}

fn worker(first: Job) {
    let p = pool();
    first();
    loop {
        p.idle.fetch_add(1, Ordering::AcqRel);
        match p.rx.recv_timeout(IDLE) {
            Ok(job) => job(),
            Err(RecvTimeoutError::Timeout) => {
                // End, unless a job was promised to an idle thread
                // meanwhile (then take it: it is on its way).
                if reserve_idle(p) {
                    return;
                }
                match p.rx.recv() {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Run `job` on a thread of its own: an idle one, or a new one.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let p = pool();
    let job: Job = Box::new(job);
    if reserve_idle(p) {
        // An idle thread is promised: it takes this job from the channel.
        let _ = p.tx.send(job);
        return Ok(());
    }
    std::thread::Builder::new().name("dragon-wait".into()).spawn(move || worker(job)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn every_job_runs_at_once_even_while_others_wait() {
        // Eight jobs that each wait for a release: none may be queued
        // behind another, so all eight start.
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = crossbeam_channel::unbounded::<()>();
        for _ in 0..8 {
            let (s, g) = (started_tx.clone(), go_rx.clone());
            spawn(move || {
                s.send(()).unwrap();
                g.recv().unwrap();
            })
            .unwrap();
        }
        for _ in 0..8 {
            started_rx.recv_timeout(Duration::from_secs(60)).expect("a job did not start");
        }
        for _ in 0..8 {
            go_tx.send(()).unwrap();
        }
        // Threads that finished are reused: more jobs still all run.
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..20 {
            let d = done_tx.clone();
            spawn(move || d.send(i).unwrap()).unwrap();
        }
        let mut got: Vec<i32> = (0..20).map(|_| done_rx.recv_timeout(Duration::from_secs(60)).unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
