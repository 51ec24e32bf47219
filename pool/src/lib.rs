#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Task distribution: a pool of workers pulling tasks from a shared
//! channel, results back, worker loss detected.
//!
//! - [`ledger`]: the task ledger in shared memory, the take operation
//!   ([`take`]: robust lock held by the caller, gap detection), lost-task
//!   detection for an exited worker's slot, start-failure counting.
//! - [`Slots`]: the owner's bookkeeping of its workers' slots (free slots,
//!   lost-task notices of exited workers, a broken pool), shared by every
//!   pool: this crate's and the Python package's.
//! - [`message`]: the task, result, lost-task and end messages, byte for
//!   byte those of the Python package's `dragon/_pool_part.py`.
//! - [`Pool`]: a pool of worker processes for Rust programs, running
//!   functions registered in [`Functions`] on byte arguments.
//!
//! ```no_run
//! use pool::{Functions, Pool};
//!
//! fn square(arg: &[u8]) -> Result<Vec<u8>, String> {
//!     let x = u64::from_le_bytes(arg.try_into().map_err(|_| "8 bytes expected")?);
//!     Ok((x * x).to_le_bytes().to_vec())
//! }
//!
//! fn main() {
//!     let funcs = Functions::new().register("square", square);
//!     funcs.serve_if_worker(); // a worker runs tasks here and exits
//!     let pool = Pool::new(&funcs, 3).unwrap();
//!     let inputs: Vec<[u8; 8]> = (1..=5u64).map(u64::to_le_bytes).collect();
//!     for r in pool.map("square", &inputs).unwrap() {
//!         println!("{}", u64::from_le_bytes(r.unwrap().try_into().unwrap()));
//!     }
//!     pool.close();
//! }
//! ```
//!
//! `queues`, `pool` and `ddict` need no `unsafe`: the shared words come from
//! `transport-shm` ([`transport_shm::memblock::MemoryBlock::words`]).

pub mod ledger;
pub mod message;
pub mod slots;
#[cfg(not(dragon_loom))]
mod workers;

#[cfg(all(test, dragon_loom))]
mod loom_ledger;

pub use ledger::{take, Gap, Ledger, StartFailures, Taker, Words, MAX_START_FAILURES};
pub use slots::Slots;
#[cfg(not(dragon_loom))]
pub use workers::{Functions, Pool, PoolError, PoolOptions, TaskError, TaskFn, TaskHandle, MAX_WORKERS, WORKER_ENV};
