//! Error types of queue and pipe operations: one small enum per kind of
//! operation, each saying what happened and what to do.

use crate::channel::Fault;
use crate::wire::WireError;
use channels_core::ChannelError;
use std::fmt;
use transport_shm::SyncShmError;

/// Why a put did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutError {
    /// A bounded queue stayed full until the timeout (Python's `queue.Full`).
    Full,
    /// This queue object was closed ([`crate::Queue::close`]).
    Closed,
    /// The payload cannot go under the tag asked for.
    Wire(WireError),
    /// The channel failed (too large a message, destroyed, ...).
    Channel(Fault),
    /// A synchronisation object of the queue failed (its node is gone, a
    /// wait was interrupted, ...); nothing was put.
    Sync(Fault),
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full => f.write_str("queue is full"),
            PutError::Closed => f.write_str("queue is closed in this process (close() was called)"),
            PutError::Wire(e) => e.fmt(f),
            PutError::Channel(e) => write!(f, "put failed: {e}"),
            PutError::Sync(e) => write!(f, "put failed: {e}"),
        }
    }
}

impl std::error::Error for PutError {}

impl From<WireError> for PutError {
    fn from(e: WireError) -> Self {
        PutError::Wire(e)
    }
}

/// Why a get did not return an item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GetError {
    /// Nothing came before the timeout (Python's `queue.Empty`).
    Empty,
    /// This queue object was closed ([`crate::Queue::close`]).
    Closed,
    /// The channel failed (destroyed, ...).
    Channel(Fault),
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Empty => f.write_str("queue is empty"),
            GetError::Closed => f.write_str("queue is closed in this process (close() was called)"),
            GetError::Channel(e) => write!(f, "get failed: {e}"),
        }
    }
}

impl std::error::Error for GetError {}

/// Why a [`crate::JoinableQueue::task_done`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskDoneError {
    /// More `task_done` calls than items put.
    TooManyCalls,
    /// A synchronisation object of the queue failed.
    Sync(Fault),
}

impl fmt::Display for TaskDoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskDoneError::TooManyCalls => f.write_str("task_done() called too many times"),
            TaskDoneError::Sync(e) => write!(f, "task_done() failed: {e}"),
        }
    }
}

impl std::error::Error for TaskDoneError {}

/// Why a connection's send or receive failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipeError {
    /// Receives: every copy of the other end is closed (or its processes
    /// died) and nothing is left to read (Python's `EOFError`).
    Eof,
    /// Nothing came before the timeout.
    Timeout,
    /// This end was closed.
    Closed,
    /// This end cannot do that (a receive on a write-only end, or the
    /// reverse).
    WrongDirection(&'static str),
    /// The payload cannot go under the tag asked for.
    Wire(WireError),
    /// The channel failed.
    Channel(Fault),
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipeError::Eof => f.write_str("end of file: the other end of the pipe is closed"),
            PipeError::Timeout => f.write_str("nothing was received before the timeout"),
            PipeError::Closed => f.write_str("handle is closed"),
            PipeError::WrongDirection(m) => f.write_str(m),
            PipeError::Wire(e) => e.fmt(f),
            PipeError::Channel(e) => write!(f, "pipe operation failed: {e}"),
        }
    }
}

impl std::error::Error for PipeError {}

impl From<WireError> for PipeError {
    fn from(e: WireError) -> Self {
        PipeError::Wire(e)
    }
}

/// Why a queue or pipe could not be created or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    /// Its channel could not be created or attached.
    Channel(ChannelError),
    /// One of its synchronisation objects could not be created or attached.
    Sync(SyncShmError),
    /// The handle is malformed, of another kind of object, or does not
    /// match the objects it names.
    Handle(String),
    /// An argument is out of range.
    Invalid(String),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Channel(e) => write!(f, "queue channel: {e}"),
            QueueError::Sync(e) => write!(f, "queue synchronisation object: {e}"),
            QueueError::Handle(m) => write!(f, "bad queue handle: {m}"),
            QueueError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Channel(e) => Some(e),
            QueueError::Sync(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ChannelError> for QueueError {
    fn from(e: ChannelError) -> Self {
        QueueError::Channel(e)
    }
}

impl From<SyncShmError> for QueueError {
    fn from(e: SyncShmError) -> Self {
        QueueError::Sync(e)
    }
}
