//! The `sync` scenario (not written yet).
use crate::{Opts, Summary};

/// Run the scenario.
pub fn run(_opts: &Opts, sum: &mut Summary) {
    sum.violation("the sync scenario is not built yet");
}

/// A worker.
pub fn worker() -> i32 {
    crate::exit::ERROR
}
