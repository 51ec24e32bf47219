//! What a queue needs from shared synchronisation objects ([`QueueSync`]):
//! the semaphore that bounds a queue above [`crate::EXACT_MAX`], and the
//! count, lock and condition of a [`crate::JoinableQueue`]'s tasks; and
//! their implementation for objects in this node's shared memory
//! ([`ShmSync`]).
//!
//! Queues are generic over the trait, as over [`crate::QueueChannel`], so
//! that a binding can bring objects of its own: the Python package's
//! objects may live on another node (each call then a request to that
//! node's service) and their waits must let a Ctrl-C through.
//!
//! Every call may fail ([`Fault`]): an object of another node can become
//! unreachable, a wait can be interrupted. A queue passes the failure on
//! and leaves its count as it was.

use crate::channel::Fault;
use std::time::Duration;
use transport_shm::{ShmCondition, ShmLock, ShmSemaphore};

/// A counting semaphore shared by processes.
pub trait Semaphore: Send + Sync + 'static {
    /// Take a unit, waiting at most `timeout` (`None`: no limit;
    /// `Some(Duration::ZERO)`: not at all); whether one was taken.
    fn acquire(&self, timeout: Option<Duration>) -> Result<bool, Fault>;

    /// Give a unit back.
    fn release(&self) -> Result<(), Fault>;

    /// The units free now (a snapshot).
    fn value(&self) -> Result<u32, Fault>;

    /// The bound, if the object knows it (a queue checks it against its
    /// own when it is made).
    fn max(&self) -> Option<u32> {
        None
    }

    /// The last process using the object lets go of it: remove what names
    /// it, if the object's lifetime is the queue's (the default leaves it
    /// to the object's owner).
    fn destroy(&self) {}
}

/// A lock shared by processes, held by a thread.
pub trait Lock: Send + Sync + 'static {
    /// Take the lock, waiting as long as it takes (a holder that died
    /// leaves it to the next).
    fn acquire(&self) -> Result<(), Fault>;

    /// Let go of the lock.
    fn release(&self) -> Result<(), Fault>;

    /// See [`Semaphore::destroy`].
    fn destroy(&self) {}
}

/// A condition variable shared by processes, waited on with its [`Lock`].
pub trait Condition<L: Lock>: Send + Sync + 'static {
    /// With `lock` held: let go of it, sleep until notified or until
    /// `timeout`, hold it again. May return early without a notification
    /// (the caller looks at its predicate again): an implementation that
    /// cannot register the wait sleeps a little and returns.
    fn wait(&self, lock: &L, timeout: Option<Duration>) -> Result<(), Fault>;

    /// Wake every waiter (the lock held).
    fn notify_all(&self) -> Result<(), Fault>;

    /// See [`Semaphore::destroy`].
    fn destroy(&self) {}
}

/// The kinds of synchronisation objects a queue is made with.
pub trait QueueSync: Send + Sync + 'static {
    /// A bounded queue's semaphore and a joinable queue's task count.
    type Semaphore: Semaphore;
    /// The lock of a joinable queue's task count.
    type Lock: Lock;
    /// The condition `join` waits on.
    type Condition: Condition<Self::Lock>;
}

/// Objects in this node's shared memory (`transport-shm`); destroyed by
/// the last process that lets go of the queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmSync;

impl QueueSync for ShmSync {
    type Semaphore = ShmSemaphore;
    type Lock = ShmLock;
    type Condition = ShmCondition;
}

impl Semaphore for ShmSemaphore {
    fn acquire(&self, timeout: Option<Duration>) -> Result<bool, Fault> {
        Ok(match timeout {
            Some(Duration::ZERO) => self.try_acquire(),
            t => sync_objects_acquire(self, t),
        })
    }

    fn release(&self) -> Result<(), Fault> {
        (**self).release().map_err(|e| Fault::Other(e.to_string()))
    }

    fn value(&self) -> Result<u32, Fault> {
        Ok((**self).value())
    }

    fn max(&self) -> Option<u32> {
        (**self).max()
    }

    fn destroy(&self) {
        let _ = ShmSemaphore::destroy(self);
    }
}

/// A semaphore's timed acquire (its only failure is the timeout: no
/// interrupt hook is given).
fn sync_objects_acquire(s: &ShmSemaphore, t: Option<Duration>) -> bool {
    (**s).acquire(t).is_ok()
}

impl Lock for ShmLock {
    fn acquire(&self) -> Result<(), Fault> {
        // A holder that died leaves consistent state: every change under a
        // queue's lock is one semaphore step plus a notify.
        (**self).acquire(None).map(|_| ()).map_err(|e| Fault::Other(e.to_string()))
    }

    fn release(&self) -> Result<(), Fault> {
        (**self).release().map_err(|e| Fault::Other(e.to_string()))
    }

    fn destroy(&self) {
        let _ = ShmLock::destroy(self);
    }
}

impl Condition<ShmLock> for ShmCondition {
    fn wait(&self, lock: &ShmLock, timeout: Option<Duration>) -> Result<(), Fault> {
        match (**self).wait(&**lock, timeout) {
            Ok(_) => Ok(()),
            Err(sync_objects::CondError::TooManyWaiters { .. }) => {
                // Every waiter slot is taken: sleep a little without the
                // lock (so that the notifier can take it); the caller looks
                // at its predicate again.
                Lock::release(lock)?;
                std::thread::sleep(Duration::from_millis(5));
                Lock::acquire(lock)
            }
            Err(e) => Err(Fault::Other(e.to_string())),
        }
    }

    fn notify_all(&self) -> Result<(), Fault> {
        (**self).notify_all();
        Ok(())
    }

    fn destroy(&self) {
        let _ = ShmCondition::destroy(self);
    }
}
