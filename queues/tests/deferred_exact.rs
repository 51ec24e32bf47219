//! An exact queue's put_nowait on a channel that defers sends (one of
//! another node) must say Full when the ring is full, as the binding's.

mod common;

use queues::{Fault, PutError, Queue, QueueChannel, ShmChannel, Tag, MAX_ATTACHMENTS, SLOT_SIZE};
use shm_primitives::Handle;
use std::sync::Mutex;
use std::time::Duration;

/// A channel of "another node": a deferred send is accepted into the
/// sends in flight without looking at the ring (as a remote channel's is).
struct Far {
    ch: ShmChannel,
    in_flight: Mutex<Vec<Vec<u8>>>,
}

impl QueueChannel for Far {
    type Msg = <ShmChannel as QueueChannel>::Msg;
    fn send_parts(&self, parts: &[&[u8]], t: Option<Duration>) -> Result<(), Fault> {
        self.ch.send_parts(parts, t)
    }
    fn defers_sends(&self) -> bool {
        true
    }
    fn send_deferred(&self, parts: &[&[u8]], _t: Option<Duration>) -> Result<(), Fault> {
        self.in_flight.lock().unwrap().push(parts.concat());
        Ok(())
    }
    fn recv(&self, t: Option<Duration>) -> Result<Self::Msg, Fault> {
        self.ch.recv(t)
    }
    fn poll(&self) -> bool {
        self.ch.poll()
    }
    fn peers(&self) -> u32 {
        self.ch.peers()
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
        self.ch.handle()
    }
}

#[test]
fn put_nowait_on_a_full_exact_queue_of_another_node_is_full() {
    let _d = common::deadline("deferred exact");
    let opts = channels_core::ChannelOptions::new()
        .capacity(1)
        .slot_size(SLOT_SIZE)
        .max_attachments(MAX_ATTACHMENTS)
        .roles(channels_core::Roles::BOTH);
    let far = Far { ch: ShmChannel::create(&opts).unwrap(), in_flight: Mutex::new(Vec::new()) };
    let q: Queue<Far> = Queue::from_channel(far, 1, None).unwrap();
    q.put_tagged(Tag::Bytes, b"a", Some(Duration::ZERO)).unwrap();
    let r = q.put_tagged(Tag::Bytes, b"b", Some(Duration::ZERO));
    assert!(matches!(r, Err(PutError::Full)), "put_nowait on a full exact queue: {r:?}");
}
