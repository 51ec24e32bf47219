//! What the queue tests share: watchdog set-up and the check that a
//! segment is gone.
#![allow(dead_code)]

use std::time::Duration;
use test_support::watchdog;
use transport_shm::segment;

/// Arm a deadline for one test: past it the binary kills its children,
/// removes its run's segments and aborts.
pub fn deadline(what: &str) -> watchdog::Guard {
    watchdog::on_abort(segment::cleanup_own_run);
    watchdog::guard(what, Duration::from_secs(120))
}

/// Whether any file of segment `name` (and its extensions) is left.
pub fn segment_left(name: &str) -> bool {
    std::fs::read_dir(segment::SHM_DIR)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .any(|f| f == name || f.starts_with(&format!("{name}-x")))
}

/// Every segment a queue handle names.
pub fn segments_of(text: &str) -> Vec<String> {
    text.split(':')
        .skip(4)
        .filter(|p| *p != "-")
        .map(|p| shm_primitives::Handle::from_text(p).unwrap().segment)
        .collect()
}

/// Assert that every segment a handle named is gone.
pub fn assert_gone(handle_text: &str) {
    for s in segments_of(handle_text) {
        assert!(!segment_left(&s), "segment {s} was left in /dev/shm");
    }
}
