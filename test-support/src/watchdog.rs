//! Turning a hang into a failure.
//!
//! [`start`] arms one watchdog per test binary: if the binary still runs
//! after [`BINARY_DEADLINE`], it kills the children started through
//! [`crate::child`], runs the cleanup hooks registered with [`on_abort`]
//! (removing a run's shared-memory segments, say), and aborts, so the test
//! run fails instead of stalling and leaves nothing behind. Every test that
//! can block calls [`start`] (or [`start_with`]) first; calling it again is
//! free.
//!
//! [`guard`] bounds one test the same way: the binary is aborted if the
//! guard is still alive after the given time. [`within`] bounds one call
//! instead: the test fails if the call has not returned in time. [`steps`]
//! bounds each step of a long loop: the binary is aborted if one step runs
//! too long (a fuzz case that hangs, among thousands that do not).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

/// Longest a whole test binary may run before its watchdog aborts it.
pub const BINARY_DEADLINE: Duration = Duration::from_secs(300);

static HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Arm this binary's watchdog (once per process).
pub fn start() {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::Builder::new()
            .name("test-watchdog".to_owned())
            .spawn(|| {
                std::thread::sleep(BINARY_DEADLINE);
                fire();
            })
            .expect("start the test watchdog");
    });
}

/// Have any watchdog of this binary (the binary's or a [`guard`]) run
/// `cleanup` before it aborts (each distinct function once).
pub fn on_abort(cleanup: fn()) {
    let mut hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    if !hooks.iter().any(|&h| h as usize == cleanup as usize) {
        hooks.push(cleanup);
    }
}

/// [`on_abort`], then [`start`].
pub fn start_with(cleanup: fn()) {
    on_abort(cleanup);
    start();
}

fn fire() {
    let exe = std::env::current_exe().ok();
    let name = exe.as_deref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    abort(&format!("test binary {}", name.as_deref().unwrap_or("?")), BINARY_DEADLINE);
}

fn abort(what: &str, limit: Duration) -> ! {
    eprintln!("watchdog: {what} still running after {limit:?}; killing its children and aborting");
    crate::child::kill_all();
    let hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for hook in hooks {
        hook();
    }
    std::process::abort();
}

/// A deadline for one test: see [`guard`].
#[derive(Debug)]
#[must_use = "the deadline ends when the guard is dropped"]
pub struct Guard {
    _done: mpsc::Sender<()>,
}

/// Abort the binary (killing its children and running the cleanup hooks)
/// if the returned guard is still alive after `limit`; `what` names the
/// test in the message. For binaries whose tests need deadlines of their
/// own instead of the binary's [`BINARY_DEADLINE`].
pub fn guard(what: &str, limit: Duration) -> Guard {
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_owned();
    std::thread::Builder::new()
        .name("test-guard".to_owned())
        .spawn(move || {
            // Dropping the guard disconnects the channel: the test ended.
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                abort(&what, limit);
            }
        })
        .expect("start a test guard");
    Guard { _done: tx }
}

/// How often the step watchdog looks at the running step.
const STEP_POLL: Duration = Duration::from_millis(500);

/// A deadline on every step of a long loop: see [`steps`].
#[derive(Debug)]
#[must_use = "the steps are watched until this is dropped"]
pub struct Steps {
    state: Arc<(Mutex<StepState>, Condvar)>,
}

#[derive(Debug)]
struct StepState {
    /// When the running step started (`None` between steps).
    since: Option<Instant>,
    /// The running step's input.
    input: Vec<u8>,
    stop: bool,
}

/// Watch the steps of a long loop (a fuzz case among thousands): if a
/// step, from [`Steps::start`] to [`Steps::end`], runs for more than
/// `limit`, print what `report` makes of its input (the hung case), kill
/// the children, run the cleanup hooks and abort. Time between steps does
/// not count; the watch ends when the returned value is dropped.
pub fn steps(limit: Duration, report: impl Fn(&[u8]) -> String + Send + 'static) -> Steps {
    let state = Arc::new((Mutex::new(StepState { since: None, input: Vec::new(), stop: false }), Condvar::new()));
    let watched = Arc::clone(&state);
    std::thread::Builder::new()
        .name("test-step-watchdog".to_owned())
        .spawn(move || {
            let (m, cv) = &*watched;
            let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
            while !st.stop {
                if st.since.is_some_and(|t| t.elapsed() > limit) {
                    let message = report(&st.input);
                    drop(st);
                    eprintln!("{message}");
                    abort("a step", limit);
                }
                st = cv.wait_timeout(st, STEP_POLL).unwrap_or_else(|e| e.into_inner()).0;
            }
        })
        .expect("start the step watchdog");
    Steps { state }
}

impl Steps {
    /// A step on `input` starts.
    pub fn start(&self, input: &[u8]) {
        let mut st = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        st.since = Some(Instant::now());
        st.input.clear();
        st.input.extend_from_slice(input);
    }

    /// The step ended.
    pub fn end(&self) {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).since = None;
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.state.1.notify_all();
    }
}

/// Run `f` on a thread of its own and return its result; fail the test if
/// it has not returned after `limit` (a panic in `f` is passed on; the hung
/// thread is left behind, to the binary's watchdog).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = f();
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(limit) {
        Ok(()) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(RecvTimeoutError::Disconnected) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(RecvTimeoutError::Timeout) => panic!("test hung: not done after {limit:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_returns_the_value_and_passes_panics_on() {
        assert_eq!(within(Duration::from_secs(60), || 7), 7);
        let r = std::panic::catch_unwind(|| within(Duration::from_secs(60), || panic!("inner")));
        assert!(r.is_err());
    }

    #[test]
    fn within_fails_a_call_that_does_not_return() {
        let (tx, rx) = mpsc::channel::<()>();
        let r = std::panic::catch_unwind(move || {
            within(Duration::from_millis(10), move || {
                // Blocks until the test drops the sender below.
                let _ = rx.recv();
            })
        });
        drop(tx);
        assert!(r.is_err(), "a hung call must fail the test");
    }

    #[test]
    fn only_a_running_step_is_timed() {
        let watch = steps(Duration::from_millis(50), |input| format!("step on {input:?} hung"));
        for i in 0..2u8 {
            watch.start(&[i]);
            watch.end();
            // Longer than the limit, and than a poll: between steps.
            std::thread::sleep(STEP_POLL + Duration::from_millis(100));
        }
    }

    #[test]
    fn hooks_are_registered_once() {
        fn hook() {}
        start_with(hook);
        start_with(hook);
        let hook: fn() = hook;
        let n = HOOKS.lock().unwrap().iter().filter(|&&h| h as usize == hook as usize).count();
        assert_eq!(n, 1);
    }
}
