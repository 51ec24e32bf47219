//! Synchronisation objects in shared memory, created and attached by handle.
//!
//! Each object gets its own small segment of the current run (named
//! `<run prefix>lk-…`, `rl-`, `sem-`, `ev-`, `cv-`, `bar-`), placed at
//! offset 0, with a random 64-bit id and generation 1. Its [`Handle`]
//! carries the segment name, kind, id and generation; [`Shm::attach`]
//! opens the segment and checks all of them, so a garbage, forged or stale
//! handle (the object was destroyed) is a clear [`SyncShmError`].
//!
//! [`Shm::destroy`] removes the segment's name: no new process can attach,
//! but every existing mapping (the creator's and every attacher's) keeps
//! working until dropped. Segments of a run that is never destroyed are
//! removed by the run's cleanup (`segment::cleanup_run`).
//!
//! One segment per object keeps destruction trivially safe (the kernel
//! frees the memory when the last mapping goes) at the cost of a page (16
//! KiB for a condition with the default 1020 waiter slots) per object.

use crate::segment::{self, nonce32, RunId, Segment, SegmentError};
use shm_primitives::handle::{Handle, HandleError, Kind};
use std::fmt;
use std::ops::Deref;
use sync_objects::{Barrier, Condition, Event, Lock, ObjectError, RLock, Semaphore, SyncObject};

/// A synchronisation object in its own shared-memory segment.
pub struct Shm<T> {
    obj: T,
    handle: Handle,
}

/// A [`Lock`] in shared memory.
pub type ShmLock = Shm<Lock<Segment>>;
/// An [`RLock`] in shared memory.
pub type ShmRLock = Shm<RLock<Segment>>;
/// A [`Semaphore`] in shared memory.
pub type ShmSemaphore = Shm<Semaphore<Segment>>;
/// An [`Event`] in shared memory.
pub type ShmEvent = Shm<Event<Segment>>;
/// A [`Condition`] in shared memory.
pub type ShmCondition = Shm<Condition<Segment>>;
/// A [`Barrier`] in shared memory.
pub type ShmBarrier = Shm<Barrier<Segment>>;

/// Why a shared-memory synchronisation object could not be created or
/// attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncShmError {
    /// The handle does not parse, or is for another kind of object.
    Handle(HandleError),
    /// The handle names an object on another node.
    NotLocal {
        /// The home node's transport address.
        address: String,
    },
    /// The object's segment no longer exists: it was destroyed (or the
    /// handle was forged).
    Destroyed {
        /// The segment named by the handle.
        segment: String,
    },
    /// Creating or mapping the segment failed.
    Segment(SegmentError),
    /// The segment does not hold the object the handle describes, or a
    /// creation parameter is invalid.
    Object(ObjectError),
}

impl fmt::Display for SyncShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncShmError::Handle(e) => write!(f, "{e}"),
            SyncShmError::NotLocal { address } => {
                write!(f, "handle names an object on another node ({address}); it cannot be mapped here")
            }
            SyncShmError::Destroyed { segment } => {
                write!(f, "synchronisation object was destroyed: its segment {segment} no longer exists")
            }
            SyncShmError::Segment(e) => write!(f, "{e}"),
            SyncShmError::Object(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SyncShmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncShmError::Handle(e) => Some(e),
            SyncShmError::Segment(e) => Some(e),
            SyncShmError::Object(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HandleError> for SyncShmError {
    fn from(e: HandleError) -> Self {
        SyncShmError::Handle(e)
    }
}

impl From<SegmentError> for SyncShmError {
    fn from(e: SegmentError) -> Self {
        SyncShmError::Segment(e)
    }
}

impl From<ObjectError> for SyncShmError {
    fn from(e: ObjectError) -> Self {
        SyncShmError::Object(e)
    }
}

fn tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Lock => "lk",
        Kind::RLock => "rl",
        Kind::Semaphore => "sem",
        Kind::Event => "ev",
        Kind::Condition => "cv",
        Kind::Barrier => "bar",
        _ => "obj",
    }
}

impl<T> Deref for Shm<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.obj
    }
}

impl<T> fmt::Debug for Shm<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shm")
            .field("kind", &self.handle.kind)
            .field("segment", &self.handle.segment)
            .field("id", &self.handle.id)
            .finish()
    }
}

impl<T: SyncObject<Segment>> Shm<T> {
    /// The handle kind of this object.
    pub const KIND: Kind = T::KIND;

    /// Create a segment of `size` bytes in the current run and place the
    /// object with `init` at offset 0. The segment is removed if `init`
    /// fails.
    fn create_with(
        size: usize,
        init: impl FnOnce(Segment, u64, u64) -> Result<T, ObjectError>,
    ) -> Result<Shm<T>, SyncShmError> {
        let name = RunId::current().segment_name(tag(T::KIND));
        let seg = Segment::create(&name, size)?;
        let id = (u64::from(nonce32()) << 32) | u64::from(nonce32());
        let generation = 1;
        match init(seg, id, generation) {
            Ok(obj) => Ok(Shm {
                obj,
                handle: Handle {
                    kind: T::KIND,
                    id,
                    generation,
                    offset: 0,
                    node: crate::this_node(),
                    segment: name,
                    address: String::new(),
                },
            }),
            Err(e) => {
                let _ = segment::unlink(&name);
                Err(e.into())
            }
        }
    }

    /// Attach to the object a handle describes (from any process of this
    /// node), checking kind, id and generation.
    pub fn attach(handle: &Handle) -> Result<Shm<T>, SyncShmError> {
        if handle.kind != T::KIND {
            return Err(HandleError::WrongKind { expected: T::KIND, found: handle.kind }.into());
        }
        if !handle.address.is_empty() || handle.node != crate::this_node() {
            let address =
                if handle.address.is_empty() { format!("node {}", handle.node) } else { handle.address.clone() };
            return Err(SyncShmError::NotLocal { address });
        }
        let seg = match Segment::open(&handle.segment) {
            Ok(s) => s,
            Err(SegmentError::NotFound(segment)) => return Err(SyncShmError::Destroyed { segment }),
            Err(e) => return Err(e.into()),
        };
        let offset = usize::try_from(handle.offset).map_err(|_| ObjectError::OutOfBounds {
            offset: handle.offset,
            size: 0,
            len: 0,
        })?;
        let obj = T::attach(seg, offset, handle.id, handle.generation)?;
        Ok(Shm { obj, handle: handle.clone() })
    }

    /// Attach by the handle's byte form.
    pub fn attach_bytes(bytes: &[u8]) -> Result<Shm<T>, SyncShmError> {
        Self::attach(&Handle::from_bytes_of(bytes, T::KIND)?)
    }

    /// Attach by the handle's text form.
    pub fn attach_text(text: &str) -> Result<Shm<T>, SyncShmError> {
        let h = Handle::from_text(text)?;
        if h.kind != T::KIND {
            return Err(HandleError::WrongKind { expected: T::KIND, found: h.kind }.into());
        }
        Self::attach(&h)
    }

    /// The handle other processes attach by.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Remove the object's segment name: later attaches fail with
    /// [`SyncShmError::Destroyed`]; existing mappings keep working.
    pub fn destroy(&self) -> Result<(), SegmentError> {
        segment::unlink(&self.handle.segment)
    }
}

impl Shm<Lock<Segment>> {
    /// A new free lock.
    pub fn create() -> Result<ShmLock, SyncShmError> {
        // SAFETY: the segment was just created (O_EXCL) and is not yet
        // shared; the lock is its only object.
        Shm::create_with(Lock::<Segment>::SIZE, |seg, id, gen| unsafe { Lock::init(seg, 0, id, gen) })
    }
}

impl Shm<RLock<Segment>> {
    /// A new free recursive lock.
    pub fn create() -> Result<ShmRLock, SyncShmError> {
        // SAFETY: as for `ShmLock::create`.
        Shm::create_with(RLock::<Segment>::SIZE, |seg, id, gen| unsafe { RLock::init(seg, 0, id, gen) })
    }
}

impl Shm<Semaphore<Segment>> {
    /// A new semaphore holding `value`, bounded by `max` if given.
    pub fn create(value: u32, max: Option<u32>) -> Result<ShmSemaphore, SyncShmError> {
        // SAFETY: as for `ShmLock::create`.
        Shm::create_with(Semaphore::<Segment>::SIZE, |seg, id, gen| unsafe {
            Semaphore::init(seg, 0, id, gen, value, max)
        })
    }
}

impl Shm<Event<Segment>> {
    /// A new, clear event.
    pub fn create() -> Result<ShmEvent, SyncShmError> {
        // SAFETY: as for `ShmLock::create`.
        Shm::create_with(Event::<Segment>::SIZE, |seg, id, gen| unsafe { Event::init(seg, 0, id, gen) })
    }
}

impl Shm<Condition<Segment>> {
    /// A new condition with room for
    /// [`Condition::DEFAULT_WAITERS`] simultaneous waiters.
    pub fn create() -> Result<ShmCondition, SyncShmError> {
        Self::with_capacity(Condition::<Segment>::DEFAULT_WAITERS)
    }

    /// A new condition with room for `waiters` simultaneous waiters.
    pub fn with_capacity(waiters: u32) -> Result<ShmCondition, SyncShmError> {
        // SAFETY: as for `ShmLock::create`.
        Shm::create_with(Condition::<Segment>::size_for(waiters), |seg, id, gen| unsafe {
            Condition::init(seg, 0, id, gen, waiters)
        })
    }
}

impl Shm<Barrier<Segment>> {
    /// A new barrier for `parties` parties.
    pub fn create(parties: u32) -> Result<ShmBarrier, SyncShmError> {
        // SAFETY: as for `ShmLock::create`.
        Shm::create_with(Barrier::<Segment>::SIZE, |seg, id, gen| unsafe { Barrier::init(seg, 0, id, gen, parties) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ShmLock>();
        send_sync::<ShmRLock>();
        send_sync::<ShmSemaphore>();
        send_sync::<ShmEvent>();
        send_sync::<ShmCondition>();
        send_sync::<ShmBarrier>();
    }

    #[test]
    fn create_attach_destroy() {
        let l = ShmLock::create().unwrap();
        let l2 = ShmLock::attach_text(&l.handle().to_text()).unwrap();
        l.acquire(None).unwrap();
        assert!(l2.is_locked());
        l.destroy().unwrap();
        // Existing mappings keep working after the name is gone.
        l2.release().unwrap();
        assert!(!l.is_locked());
        assert!(matches!(ShmLock::attach(l.handle()), Err(SyncShmError::Destroyed { .. })));
    }

    #[test]
    fn failed_create_leaves_nothing() {
        assert!(matches!(ShmBarrier::create(0), Err(SyncShmError::Object(ObjectError::InvalidParameter(_)))));
        assert!(matches!(ShmSemaphore::create(5, Some(2)), Err(SyncShmError::Object(_))));
        // Only this test creates barriers in this test binary.
        let prefix = RunId::current().prefix();
        let left = std::fs::read_dir(segment::SHM_DIR)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix) && n.contains("-bar-")))
            .count();
        assert_eq!(left, 0);
    }
}
