//! [`SimpleQueue`]: Python's `multiprocessing.SimpleQueue` on a channel.

use crate::channel::{Fault, QueueChannel, ShmChannel};
use crate::error::{GetError, PutError, QueueError};
use crate::handle::{Mode, QueueHandle, QueueKind};
use crate::queue::{recv_item, recv_tagged, send_retrying, MAX_ATTACHMENTS, SLOT_SIZE, UNBOUNDED_CAPACITY};
use crate::wire::{self, Item, Tag};
use channels_core::{ChannelOptions, Roles};
use shm_primitives::sync::local::{AtomicBool, Ordering};
use std::fmt;
use std::time::Duration;

/// A FIFO queue without a feeder thread: [`SimpleQueue::put`] waits while
/// the ring is full (as Python's waits on a full pipe).
pub struct SimpleQueue<C: QueueChannel = ShmChannel> {
    chan: C,
    closed: AtomicBool,
}

impl<C: QueueChannel> fmt::Debug for SimpleQueue<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue").field("segment", &self.chan.handle().segment).finish()
    }
}

impl SimpleQueue<ShmChannel> {
    /// A new simple queue in this node's shared memory.
    pub fn new() -> Result<SimpleQueue, QueueError> {
        let opts = ChannelOptions::new()
            .capacity(UNBOUNDED_CAPACITY)
            .slot_size(SLOT_SIZE)
            .max_attachments(MAX_ATTACHMENTS)
            .roles(Roles::BOTH);
        Ok(SimpleQueue::from_channel(ShmChannel::create(&opts)?))
    }

    /// Attach to the simple queue `handle` names.
    pub fn attach(handle: &QueueHandle) -> Result<SimpleQueue, QueueError> {
        handle.expect(QueueKind::Simple, "SimpleQueue")?;
        let ch = handle.channel.as_ref().ok_or_else(|| QueueError::Handle("no channel".into()))?;
        Ok(SimpleQueue::from_channel(ShmChannel::attach(ch, Roles::BOTH)?))
    }

    /// The handle other processes attach by ([`SimpleQueue::attach`]).
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            kind: QueueKind::Simple,
            mode: Mode::Unbounded,
            maxsize: 0,
            channel: Some(self.chan.handle()),
            recv: None,
            sem: None,
            tasks: None,
        }
    }
}

impl<C: QueueChannel> SimpleQueue<C> {
    /// A simple queue on a channel made elsewhere.
    pub fn from_channel(chan: C) -> SimpleQueue<C> {
        SimpleQueue { chan, closed: AtomicBool::new(false) }
    }

    /// Put `data` (received as [`Tag::Bytes`]), waiting while the ring is
    /// full.
    pub fn put(&self, data: &[u8]) -> Result<(), PutError> {
        self.put_tagged(Tag::Bytes, data)
    }

    /// [`SimpleQueue::put`] with the message's tag.
    pub fn put_tagged(&self, tag: Tag, payload: &[u8]) -> Result<(), PutError> {
        // Relaxed: a flag of this object only.
        if self.closed.load(Ordering::Relaxed) {
            return Err(PutError::Closed);
        }
        let pre = wire::prefix(tag, payload)?.map(|p| [p]);
        let parts: &[&[u8]] = match &pre {
            Some(p) => &[p, payload],
            None => &[payload],
        };
        self.put_with(|chan| send_retrying(chan, parts, None, false))
    }

    /// A put whose sending the caller does (a binding that sends its own
    /// objects): `send(chan)` sends the message, waiting as long as the
    /// ring is full.
    pub fn put_with(&self, send: impl FnOnce(&C) -> Result<(), Fault>) -> Result<(), PutError> {
        // Relaxed: as in put_tagged.
        if self.closed.load(Ordering::Relaxed) {
            return Err(PutError::Closed);
        }
        send(&self.chan).map_err(PutError::Channel)
    }

    /// Take the next item, waiting for one.
    pub fn get(&self) -> Result<Item<C::Msg>, GetError> {
        self.get_timeout(None)
    }

    /// Take the next item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Option<Duration>) -> Result<Item<C::Msg>, GetError> {
        self.get_with(timeout, recv_tagged)
    }

    /// A get whose receiving the caller does, as [`crate::Queue::get_with`]:
    /// control messages are skipped.
    pub fn get_with<T>(
        &self,
        timeout: Option<Duration>,
        recv: impl FnMut(&C, Option<Duration>) -> Result<(Tag, T), Fault>,
    ) -> Result<T, GetError> {
        // Relaxed: as in put_tagged.
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed);
        }
        recv_item(&self.chan, timeout, recv)
    }

    /// Whether the queue looks empty (a snapshot).
    pub fn empty(&self) -> bool {
        self.chan.is_empty()
    }

    /// This object will put and get no more.
    pub fn close(&self) {
        // Relaxed: as in put_tagged.
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The channel under the queue.
    pub fn channel(&self) -> &C {
        &self.chan
    }
}
