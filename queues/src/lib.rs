//! `Queue`, `JoinableQueue`, `SimpleQueue` and `Pipe`: the semantics of
//! Python's `multiprocessing` queues and pipes on shared-memory channels,
//! for Rust programs (the Python package `dragon` uses the same crate).
//!
//! - [`Queue`]: bounded (a ring of exactly `maxsize` slots, or a ring plus
//!   a shared semaphore above [`EXACT_MAX`]) or unbounded (a put never
//!   waits: a local buffer and a feeder thread take over while the ring
//!   is full); `put`/`get` with timeouts, `close`, `join_thread`,
//!   `cancel_join_thread`, `qsize`/`empty`/`full`.
//! - [`JoinableQueue`]: a queue with `task_done` and `join`, counted in
//!   shared memory.
//! - [`SimpleQueue`]: a queue whose put waits while the ring is full.
//! - [`pipe`]: two [`Connection`] ends, duplex or one way, with end of
//!   file once the other end is closed or its process died.
//!
//! Messages are bytes with a tag byte in the Python package's format
//! ([`wire`]), so a Python process and a Rust process can share a queue:
//! what [`Queue::put`] sends, Python's `get` returns as `bytes`, and a
//! Rust `get` sees what Python put with its [`Tag`] (a pickle is left to
//! the reader).
//!
//! Another process attaches by handle ([`QueueHandle`], text that fits an
//! environment variable). Crashes: a process may die at any instruction
//! (even by `SIGKILL`, even mid-put or mid-get); the living are never
//! blocked by what it held.
//!
//! Queues are generic over [`QueueChannel`] and [`QueueSync`] (the
//! semaphore, lock and condition that bound and count), implemented here
//! for this node's shared memory ([`ShmChannel`], [`ShmSync`]); a channel
//! or objects of another node can implement them too, as the Python
//! package does (`put_with` and `get_with` let a binding send and receive
//! its own objects by the queue's rules).
//!
//! ```
//! use queues::{JoinableQueue, Queue};
//! use std::time::Duration;
//!
//! let q = Queue::new(2)?;                  // at most two items
//! q.put(b"one", None)?;
//! q.put(b"two", None)?;
//! assert!(q.put(b"three", Some(Duration::ZERO)).is_err()); // full
//! assert_eq!(q.get(None)?.payload(), b"one");
//!
//! let jq = JoinableQueue::new(0)?;         // unbounded, with task_done/join
//! jq.put(b"task", None)?;
//! let item = jq.get(None)?;
//! assert_eq!(item.payload(), b"task");
//! jq.task_done()?;
//! jq.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod channel;
pub mod error;
pub mod handle;
pub mod pipe;
pub mod queue;
pub mod simple;
pub mod sync;
pub mod wire;

pub use channel::{Fault, QueueChannel, ShmChannel};
pub use error::{GetError, PipeError, PutError, QueueError, TaskDoneError};
pub use handle::{Mode, QueueHandle, QueueKind};
pub use pipe::{pipe, Connection, Inbox, PIPE_CAPACITY, PIPE_MAX_ATTACHMENTS};
pub use queue::{
    Feeder, FeederErrorHook, JoinableQueue, Queue, EXACT_MAX, MAX_ATTACHMENTS, MAX_BOUND, SLOT_SIZE, UNBOUNDED_CAPACITY,
};
pub use simple::SimpleQueue;
pub use sync::{QueueSync, ShmSync};
pub use wire::{Item, Tag};
