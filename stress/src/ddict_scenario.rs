//! The `ddict` scenario (not written yet).
use crate::{Opts, Summary};

/// Run the scenario.
pub fn run(_opts: &Opts, sum: &mut Summary) {
    sum.violation("the ddict scenario is not built yet");
}

/// A worker.
pub fn worker(_role: &str) -> i32 {
    crate::exit::ERROR
}
