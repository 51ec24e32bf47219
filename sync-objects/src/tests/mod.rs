//! Loom models of the synchronisation objects: threads stand in for
//! processes (each with a made-up pid), the futex is loom's model of it
//! (`shm_primitives::futex` under `--cfg dragon_loom`), and a lost wake-up shows up
//! as loom reporting every thread blocked.

mod loom_barrier;
mod loom_condition;
mod loom_event;
mod loom_lock;
mod loom_semaphore;

use super::Me;
use shm_primitives::process::ProcessId;
use shm_primitives::region::HeapRegion;
use std::sync::Arc;

/// A region big enough for any object of these models (loom's atomics are
/// larger than the real ones).
pub(super) fn region() -> Arc<HeapRegion> {
    Arc::new(HeapRegion::new(1 << 14))
}

/// A made-up process identity for model thread `i`.
pub(super) fn me(i: u32) -> Me {
    Me { process: ProcessId { pid: 100 + i, start: 1 }, tid: 1000 + i }
}

/// Everyone is alive.
pub(super) fn all_alive(_: &ProcessId) -> bool {
    true
}

/// A model checker with a preemption bound, to keep larger models finite.
pub(super) fn bounded(preemptions: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b
}
