//! Short runs of every scenario (a few seconds each) through the real
//! binary: workers are killed and replaced, and the run must end with zero
//! violations. `make soak` runs the long version.

use std::process::{Command, Stdio};
use std::time::Duration;
use test_support::child::Child;
use test_support::watchdog;

/// Run `stress <args>` under a deadline; returns (success, summary line).
fn run(args: &[&str]) -> (bool, String) {
    let _deadline = watchdog::guard(&format!("stress {args:?}"), Duration::from_secs(150));
    let mut child = Child::start(
        Command::new(env!("CARGO_BIN_EXE_stress")).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()),
    );
    let (status, out) = child.output();
    let line = out.lines().last().unwrap_or_default().to_owned();
    (status.success(), line)
}

/// The value of a numeric field of the summary line.
fn field(line: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    let at = line.find(&key).unwrap_or_else(|| panic!("no {name} in {line}")) + key.len();
    line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a number")
}

#[test]
fn channel_smoke() {
    let (ok, line) = run(&["channel", "--seconds", "4", "--kill-every-ms", "150"]);
    assert!(ok, "{line}");
    assert_eq!(field(&line, "violations"), 0, "{line}");
    assert!(field(&line, "killed") > 0 && field(&line, "delivered") > 0, "the run did nothing: {line}");
}

#[test]
fn bad_arguments_are_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_stress")).args(["channel", "--seconds", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds: not a number"));
}

#[test]
fn sync_smoke() {
    let (ok, line) = run(&["sync", "--seconds", "4", "--kill-every-ms", "150"]);
    assert!(ok, "{line}");
    assert_eq!(field(&line, "violations"), 0, "{line}");
    assert!(field(&line, "killed") > 0 && field(&line, "lock_ops") > 0, "the run did nothing: {line}");
}

#[test]
fn ddict_smoke() {
    let (ok, line) = run(&["ddict", "--seconds", "4", "--kill-every-ms", "150"]);
    assert!(ok, "{line}");
    assert_eq!(field(&line, "violations"), 0, "{line}");
    assert!(field(&line, "killed") > 1 && field(&line, "shared_reads_checked") > 0, "the run did nothing: {line}");
    assert_eq!(field(&line, "manager_death_clear_error"), 1, "{line}");
}

#[test]
fn lend_smoke() {
    let (ok, line) = run(&["lend", "--seconds", "4", "--kill-every-ms", "150"]);
    assert!(ok, "{line}");
    assert_eq!(field(&line, "violations"), 0, "{line}");
    assert!(field(&line, "killed") > 0 && field(&line, "delivered") > 0, "the run did nothing: {line}");
}
