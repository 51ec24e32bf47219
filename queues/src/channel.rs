//! What a queue needs from a channel ([`QueueChannel`]), and its
//! implementation for channels in this node's shared memory
//! ([`ShmChannel`]).
//!
//! Queues are generic over the trait so that a channel of another node
//! (reached through a transport's agent) can carry a queue too: such a
//! channel says so with [`QueueChannel::defers_sends`], and the queue then
//! puts with [`QueueChannel::send_deferred`] (in order, without waiting for
//! the round trip) and waits for them with [`QueueChannel::flush`] in
//! `join_thread` and on drop.

use channels_core::{
    AllocError, BackingError, ChannelError, ChannelOptions, RecvError, RecvTimeoutError, Roles, SendTimeoutError,
    TryRecvError,
};
use shm_primitives::Handle;
use std::fmt;
use std::time::Duration;

/// Why a channel operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The channel stayed full (a send) or empty (a receive) until the
    /// timeout.
    WouldBlock,
    /// Shared memory for a large message is short for now: retry later.
    NoMemory(String),
    /// The message can never be sent: it is larger than the channel's
    /// largest message, or than all shared memory.
    TooLarge(String),
    /// Sends: nobody will ever receive. Receives: every sender is gone and
    /// nothing is left (end of file).
    Closed,
    /// The channel was destroyed.
    Destroyed,
    /// Any other failure, said in words.
    Other(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::WouldBlock => f.write_str("the channel stayed full (or empty) until the timeout"),
            Fault::NoMemory(m) => write!(f, "shared memory is short for now: {m}"),
            Fault::TooLarge(m) => write!(f, "message too large: {m}"),
            Fault::Closed => f.write_str("the channel is closed: nobody is left at the other end"),
            Fault::Destroyed => f.write_str("the channel was destroyed"),
            Fault::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Fault {}

/// The channel operations a queue or pipe uses. Timeouts: `None` waits
/// without limit, `Some(Duration::ZERO)` does not wait.
pub trait QueueChannel: Send + Sync + 'static {
    /// A received message.
    type Msg: AsRef<[u8]> + Send + 'static;

    /// Send the concatenation of `parts` as one message.
    fn send_parts(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault>;

    /// Whether sends should be deferred (a channel of another node: a
    /// send need not wait for its round trip).
    fn defers_sends(&self) -> bool {
        false
    }

    /// Send without waiting for the send to complete, in order with this
    /// attachment's other sends; a failure may be reported by a later call
    /// or by [`QueueChannel::flush`]. The default sends at once.
    fn send_deferred(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault> {
        self.send_parts(parts, timeout)
    }

    /// Wait until every deferred send is in the channel.
    fn flush(&self) -> Result<(), Fault> {
        Ok(())
    }

    /// Receive one message.
    fn recv(&self, timeout: Option<Duration>) -> Result<Self::Msg, Fault>;

    /// Whether a receive would not wait (a message, or an error to report).
    fn poll(&self) -> bool;

    /// Attachments of other live processes (dead ones are swept first).
    fn peers(&self) -> u32;

    /// Messages in the channel (a snapshot).
    fn len(&self) -> usize;

    /// Whether the channel holds no message (a snapshot).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every slot is taken (a snapshot).
    fn is_full(&self) -> bool;

    /// Ring slots (0 if not known here: a channel of another node, say).
    fn capacity(&self) -> usize;

    /// The handle other processes attach by.
    fn handle(&self) -> Handle;
}

/// One attachment of this process to a channel in this node's shared
/// memory. Dropping the last attachment of any process destroys the
/// channel (dead processes' attachments are swept first), as the Python
/// package does: keep an attachment while a handle travels to a process
/// that has not attached yet.
#[derive(Debug)]
pub struct ShmChannel {
    ch: channels_core::Channel,
}

impl ShmChannel {
    /// Create a channel in shared memory (this process attached with the
    /// roles of `opts`).
    pub fn create(opts: &ChannelOptions) -> Result<ShmChannel, ChannelError> {
        Ok(ShmChannel { ch: transport_shm::channel::create(opts)? })
    }

    /// Attach to the channel `handle` names, with `roles`.
    pub fn attach(handle: &Handle, roles: Roles) -> Result<ShmChannel, ChannelError> {
        Ok(ShmChannel { ch: transport_shm::channel::attach_with(handle, roles)? })
    }

    /// A second attachment of this process, with `roles`.
    pub fn attach_again(&self, roles: Roles) -> Result<ShmChannel, ChannelError> {
        Ok(ShmChannel { ch: self.ch.attach_again(roles)? })
    }

    /// The channel itself.
    pub fn channel(&self) -> &channels_core::Channel {
        &self.ch
    }
}

impl Drop for ShmChannel {
    fn drop(&mut self) {
        if !self.ch.is_destroyed() {
            let _ = self.ch.recover();
            if self.ch.attachment_count() <= 1 {
                self.ch.destroy();
            }
        }
    }
}

/// What a failed send of a `len`-byte message on a channel of this node
/// means for a queue.
pub fn send_fault<M>(e: SendTimeoutError<M>, len: usize) -> Fault {
    match e {
        SendTimeoutError::Timeout(_) => Fault::WouldBlock,
        SendTimeoutError::Disconnected(_) => Fault::Closed,
        SendTimeoutError::Destroyed(_) => Fault::Destroyed,
        SendTimeoutError::Alloc(_, a) => alloc_fault(&a, len),
        SendTimeoutError::Interrupted(_) => Fault::Other("send interrupted".into()),
        _ => Fault::Other("send failed".into()),
    }
}

fn alloc_fault(a: &AllocError, len: usize) -> Fault {
    match a {
        AllocError::TooLarge { .. } => Fault::TooLarge(a.to_string()),
        AllocError::LimitReached { .. }
        | AllocError::OutOfSegments { .. }
        | AllocError::Backing(BackingError::NoSpace(_)) => match transport_shm::segment::shm_total() {
            Some(total) if len as u64 > total => Fault::TooLarge(format!(
                "message of {len} bytes is larger than all shared memory ({} holds {total} bytes)",
                transport_shm::segment::SHM_DIR
            )),
            _ => Fault::NoMemory(a.to_string()),
        },
        AllocError::Backing(BackingError::NotFound(_)) => Fault::Destroyed,
        a => Fault::Other(a.to_string()),
    }
}

impl ShmChannel {
    /// [`QueueChannel::send_parts`] on any attachment of a channel.
    pub fn send_parts_on(ch: &channels_core::Channel, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault> {
        ch.send_parts(parts, timeout).map_err(|e| send_fault(e, parts.iter().map(|p| p.len()).sum()))
    }

    /// [`QueueChannel::recv`] on any attachment of a channel.
    pub fn recv_on(ch: &channels_core::Channel, timeout: Option<Duration>) -> Result<channels_core::Message, Fault> {
        match timeout {
            Some(Duration::ZERO) => ch.try_recv().map_err(|e| match e {
                TryRecvError::Empty => Fault::WouldBlock,
                TryRecvError::Disconnected => Fault::Closed,
                TryRecvError::Destroyed => Fault::Destroyed,
                e => Fault::Other(e.to_string()),
            }),
            Some(t) => ch.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => Fault::WouldBlock,
                RecvTimeoutError::Disconnected => Fault::Closed,
                RecvTimeoutError::Destroyed => Fault::Destroyed,
                e => Fault::Other(e.to_string()),
            }),
            None => ch.recv().map_err(|e| match e {
                RecvError::Disconnected => Fault::Closed,
                RecvError::Destroyed => Fault::Destroyed,
                e => Fault::Other(e.to_string()),
            }),
        }
    }
}

impl QueueChannel for ShmChannel {
    type Msg = channels_core::Message;

    fn send_parts(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), Fault> {
        ShmChannel::send_parts_on(&self.ch, parts, timeout)
    }

    fn recv(&self, timeout: Option<Duration>) -> Result<Self::Msg, Fault> {
        ShmChannel::recv_on(&self.ch, timeout)
    }

    fn poll(&self) -> bool {
        self.ch.is_readable()
    }

    fn peers(&self) -> u32 {
        let _ = self.ch.recover();
        self.ch.attachment_count().saturating_sub(1)
    }

    fn len(&self) -> usize {
        self.ch.len()
    }

    fn is_full(&self) -> bool {
        self.ch.is_full()
    }

    fn capacity(&self) -> usize {
        self.ch.capacity()
    }

    fn handle(&self) -> Handle {
        Handle { node: transport_shm::this_node(), ..self.ch.handle() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_say_whether_to_retry() {
        let too_large = AllocError::TooLarge { len: 1 << 40, max: 1 << 34 };
        assert!(matches!(alloc_fault(&too_large, 1 << 40), Fault::TooLarge(_)));
        let short = AllocError::LimitReached { limit: 1 << 20 };
        assert!(matches!(alloc_fault(&short, 10), Fault::NoMemory(_)));
        // Larger than all of /dev/shm: it can never fit.
        assert!(matches!(alloc_fault(&short, usize::MAX), Fault::TooLarge(_)));
    }
}
