//! Byte-mutation fuzzing on stable Rust, for the decoders' tests.
//!
//! A fuzz target is a test `fuzz_<target>` in `<crate>/tests/fuzz_<target>.rs`.
//! It starts from the committed corpus of valid inputs in
//! `<crate>/tests/corpus/<target>/` plus valid inputs it generates, applies
//! a few random [`Mutation`]s to one of them (bit flips, set bytes,
//! inserted, deleted and repeated runs, truncation, splices with another
//! input, "interesting" integers written over a field), and runs the
//! decoder on the result. The target's check says whether the input was
//! accepted and asserts what must hold (round trips, the right error);
//! [`fuzz`] adds what holds for every target: no panic (caught and
//! reported as a failure), no hang (a deadline per input,
//! [`watchdog::steps`]) and, with [`CountingAlloc`] as the test binary's
//! allocator, no allocation above the target's bound
//! ([`largest_allocation`]).
//!
//! proptest drives the runs, so a failure is shrunk to the fewest and
//! smallest mutations that still fail, and printed with the input in hex
//! (a regression test is then written by hand from it).
//! [`CASES_ENV`] sets the executions per target: 1000 by default (what
//! `make test` runs), many more in `make fuzz`.

use crate::watchdog;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable: executions per fuzz target.
pub const CASES_ENV: &str = "DRAGON_FUZZ_CASES";
/// Executions per target when [`CASES_ENV`] is not set.
pub const DEFAULT_CASES: u32 = 1000;
/// An input that runs longer than this is a hang (generous: a loaded
/// machine must not trip it).
pub const PER_INPUT: Duration = Duration::from_secs(60);

/// Executions per target: [`CASES_ENV`], else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    match std::env::var(CASES_ENV) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{CASES_ENV}={v:?} is not a number of executions")),
        Err(_) => DEFAULT_CASES,
    }
}

/// The proptest configuration of a fuzz target: [`cases`] executions, no
/// regression files (failures become plain regression tests).
pub fn config() -> Config {
    Config { cases: cases(), failure_persistence: None, max_shrink_iters: 4096, ..Config::default() }
}

/// Every file of the committed corpus in `dir` (sorted by name).
///
/// # Panics
///
/// If the folder is missing or empty: a target must start from valid inputs.
pub fn corpus(dir: impl AsRef<Path>) -> Vec<Vec<u8>> {
    let dir = dir.as_ref();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    names.sort();
    let files: Vec<Vec<u8>> = names.iter().map(|p| std::fs::read(p).expect("corpus file")).collect();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Bytes as hex (at most 4 KiB shown).
pub fn hex(b: &[u8]) -> String {
    let mut s: String = b.iter().take(4096).map(|x| format!("{x:02x}")).collect();
    if b.len() > 4096 {
        s.push_str(&format!("... ({} bytes)", b.len()));
    }
    s
}

/// Integers that decoders get wrong: zero, one, signs, limits, and sizes
/// near the frame and field limits of this project.
const INTERESTING: &[(usize, u64)] = &[
    (1, 0),
    (1, 1),
    (1, 0x7f),
    (1, 0x80),
    (1, 0xff),
    (2, 0),
    (2, 0xff),
    (2, 0x100),
    (2, 0x7fff),
    (2, 0x8000),
    (2, 0xffff),
    (4, 0),
    (4, 1),
    (4, 8),
    (4, 9),
    (4, 73),
    (4, 1024),
    (4, 1025),
    (4, 0x7fff_ffff),
    (4, 0x8000_0000),
    (4, 0xffff_ffff),
    (4, 256 << 20),
    (4, (256 << 20) + 1),
    (8, 0),
    (8, 1),
    (8, 1 << 32),
    (8, 1 << 40),
    (8, i64::MAX as u64),
    (8, u64::MAX - 1),
    (8, u64::MAX),
];

/// One change to an input (positions as [`Index`], so they fit whatever
/// length the input has by then).
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip bit `.1 % 8` of a byte.
    Flip(Index, u8),
    /// Set a byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to `.1` bytes.
    Delete(Index, usize),
    /// Keep only a prefix.
    Truncate(Index),
    /// Repeat a run of up to `.1` bytes `.2` times in place.
    Repeat(Index, usize, u8),
    /// Replace up to `.3` bytes with bytes of another input of the pool
    /// (`.1`), from position `.2`.
    Splice(Index, Index, Index, usize),
    /// Write an interesting integer, little endian, over bytes.
    Interesting(Index, Index),
}

fn at(i: &Index, len: usize) -> Option<usize> {
    (len > 0).then(|| i.index(len))
}

impl Mutation {
    /// Apply to `b`, with `pool` the inputs splices take bytes from.
    pub fn apply(&self, b: &mut Vec<u8>, pool: &[Vec<u8>]) {
        let len = b.len();
        match self {
            Mutation::Flip(i, bit) => {
                if let Some(p) = at(i, len) {
                    b[p] ^= 1 << (bit % 8);
                }
            }
            Mutation::Set(i, v) => {
                if let Some(p) = at(i, len) {
                    b[p] = *v;
                }
            }
            Mutation::Insert(i, bytes) => {
                let p = at(i, len + 1).unwrap_or(0);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if let Some(p) = at(i, len) {
                    b.drain(p..(p + n).min(len));
                }
            }
            Mutation::Truncate(i) => {
                let p = at(i, len + 1).unwrap_or(0);
                b.truncate(p);
            }
            Mutation::Repeat(i, n, times) => {
                if let Some(p) = at(i, len) {
                    let run = b[p..(p + n).min(len)].to_vec();
                    for _ in 0..*times {
                        b.splice(p..p, run.iter().copied());
                    }
                }
            }
            Mutation::Splice(i, which, from, n) => {
                let Some(p) = at(i, len + 1) else { return };
                let Some(src) = at(which, pool.len()).map(|w| &pool[w]) else { return };
                let Some(f) = at(from, src.len()) else { return };
                let take = &src[f..(f + n).min(src.len())];
                let end = (p + take.len()).min(len);
                b.splice(p..end, take.iter().copied());
            }
            Mutation::Interesting(i, which) => {
                if let Some(p) = at(i, len) {
                    let (width, v) = INTERESTING[which.index(INTERESTING.len())];
                    let bytes = v.to_le_bytes();
                    let n = width.min(len - p);
                    b[p..p + n].copy_from_slice(&bytes[..n]);
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..16, 1u8..8).prop_map(|(i, n, t)| Mutation::Repeat(i, n, t)),
        2 => (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(i, w, f, n)| Mutation::Splice(i, w, f, n)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, w)| Mutation::Interesting(i, w)),
    ]
}

/// A mutated input: which input of the pool it started from, the
/// mutations, and the result.
#[derive(Clone)]
pub struct Mutant {
    /// Index of the starting input in the pool.
    pub from: usize,
    /// What was done to it.
    pub steps: Vec<Mutation>,
    /// The bytes the decoder gets.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input {} after {:?}: {} bytes: {}", self.from, self.steps, self.bytes.len(), hex(&self.bytes))
    }
}

/// Inputs of `pool` (valid ones) with 0 to 8 mutations (none one time in
/// sixteen: valid inputs must pass the checks too).
pub fn mutated(pool: Vec<Vec<u8>>) -> impl Strategy<Value = Mutant> {
    assert!(!pool.is_empty(), "no inputs to mutate");
    let pool = Arc::new(pool);
    let n = pool.len();
    let steps = prop_oneof![1 => Just(Vec::new()), 15 => proptest::collection::vec(mutation(), 1..=8)];
    (0..n, steps).prop_map(move |(from, steps)| {
        let mut bytes = pool[from].clone();
        for m in &steps {
            m.apply(&mut bytes, &pool);
        }
        Mutant { from, steps, bytes }
    })
}

/// What a target reports for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The decoder accepted it (and the target's checks on it passed).
    Accepted,
    /// The decoder refused it with a clear error.
    Rejected,
}

/// Run target `target`: [`cases`] mutants of `pool`, each given to
/// `check`, under a deadline of [`PER_INPUT`] each ([`watchdog::steps`]); panics with the shrunk failing input if
/// any check fails or panics. Prints the executions and how many inputs
/// were accepted.
pub fn fuzz(target: &'static str, pool: Vec<Vec<u8>>, check: impl Fn(&[u8]) -> Result<Verdict, TestCaseError>) {
    fuzz_mutants(target, pool, |m, _| check(&m.bytes));
}

/// [`fuzz`], for targets that need the mutations themselves (to apply them
/// to an input made at run time, like a proof for a fresh nonce): `check`
/// gets the mutant and the pool.
pub fn fuzz_mutants(
    target: &'static str,
    pool: Vec<Vec<u8>>,
    check: impl Fn(&Mutant, &[Vec<u8>]) -> Result<Verdict, TestCaseError>,
) {
    let watch = watchdog::steps(PER_INPUT, move |input| {
        format!("fuzz_{target}: an input ran for more than {PER_INPUT:?} (a hang): {}", hex(input))
    });
    let (runs, accepted) = (Cell::new(0u64), Cell::new(0u64));
    let inputs = pool.len();
    let shared = pool.clone();
    let mut runner = TestRunner::new(config());
    let r = runner.run(&mutated(pool), |m| {
        watch.start(&m.bytes);
        let v = check(&m, &shared);
        watch.end();
        runs.set(runs.get() + 1);
        if v.as_ref().is_ok_and(|v| *v == Verdict::Accepted) {
            accepted.set(accepted.get() + 1);
        }
        v.map(|_| ())
    });
    if let Err(e) = r {
        panic!("fuzz_{target}: {e}");
    }
    eprintln!(
        "fuzz_{target}: {} executions from {inputs} valid inputs, {} accepted, {} rejected",
        runs.get(),
        accepted.get(),
        runs.get() - accepted.get()
    );
}

/// A global allocator (the system's) that notes the largest single
/// allocation made on a thread while [`largest_allocation`] runs there.
/// A fuzz test binary installs it:
///
/// ```
/// #[global_allocator]
/// static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;
///
/// fn main() {
///     let (v, largest) = test_support::fuzz::largest_allocation(|| vec![0u8; 4096]);
///     assert_eq!((v.len(), largest), (4096, 4096));
/// }
/// ```
#[derive(Debug)]
pub struct CountingAlloc;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping touches only const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Run `f` and return its result with the largest single allocation it
/// made on this thread (0 if none, or if [`CountingAlloc`] is not the
/// global allocator).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, LARGEST.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_on_any_input() {
        // The longest growth: 8 repeats of a 15-byte run, 7 times each.
        let pool = vec![vec![], vec![1], (0..200).collect::<Vec<u8>>()];
        let mut runner = TestRunner::new(Config { cases: 2000, failure_persistence: None, ..Config::default() });
        runner
            .run(&mutated(pool), |m| {
                prop_assert!(m.bytes.len() <= 200 + 8 * 15 * 7);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn the_largest_allocation_is_seen_only_while_armed() {
        // Without CountingAlloc installed (this test binary), nothing is seen.
        let (v, n) = largest_allocation(|| vec![0u8; 1 << 20]);
        assert_eq!((v.len(), n), (1 << 20, 0));
    }
}
