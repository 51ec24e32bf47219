//! Process-shared synchronisation objects: [`Lock`], [`RLock`],
//! [`Semaphore`], [`Event`], [`Condition`] and [`Barrier`], with the
//! semantics of Python's `multiprocessing` (and `threading.Barrier`).
//!
//! Each object lives in a [`Region`] at an offset, is `#[repr(C)]`, holds
//! only atomics (so any bit pattern is a valid value and attaching to
//! garbage cannot cause undefined behaviour, only a clear error), and starts
//! with a common header:
//!
//! ```text
//!  offset  size  field
//!  0       4     magic "DRGS" (little endian u32 0x5347_5244)
//!  4       4     layout version (low 16 bits) | kind << 16 (handle::Kind)
//!  8       8     object id          (also carried in the handle)
//!  16      8     generation         (also carried in the handle)
//!  24      ...   the object's own fields (see each module)
//! ```
//!
//! Objects start at offsets that are multiples of [`OBJECT_ALIGN`] (64, one
//! cache line). The creator writes every field, then stores the magic with
//! Release; an attacher loads it with Acquire and checks magic, layout
//! version, kind, id and generation, so a wrong, stale or forged handle fails
//! with an [`ObjectError`] instead of touching the wrong memory.
//!
//! # The lock word
//!
//! Locks (and the internal locks of [`Condition`] and [`Barrier`]) keep their
//! owner in the lock word itself, in the format of the kernel's robust futex
//! word, so acquiring and recording the owner are one compare-and-swap:
//!
//! ```text
//!  bit 31     WAITERS     someone may sleep on the word: release must wake
//!  bit 30     OWNER_DIED  the holder took the lock over from a dead process
//!  bits 0-29  pid of the holding process (0: free)
//! ```
//!
//! A second word records `pid << 32 | low 32 bits of the holder's start
//! time`, so a pid reused by a new process is not mistaken for the holder.
//!
//! # Crash rules
//!
//! * **Lock, RLock**: a lock whose holder died is taken over by the next
//!   acquirer, who gets [`Acquired::OwnerDied`] (the robust mutex's
//!   `EOWNERDEAD`): the data the lock protected may be half-updated. Sleepers
//!   wake at least every [`LIVENESS_SLICE`] to check the holder
//!   (`ProcessId::is_alive`; a zombie is dead), and a non-blocking acquire
//!   checks the holder when it finds the lock taken. Nobody waits forever on
//!   a dead holder. A recursive lock held by a live process but by a thread
//!   that exited stays held, as in Python.
//! * **Semaphore**: has no owner. Units a dead process acquired are not given
//!   back (as with POSIX semaphores); timeouts apply.
//! * **Event**: has no owner; nothing to recover.
//! * **Condition**: its internal lock is robust. Every waiter holds a slot
//!   with its pid; `notify(n)` skips (and frees) slots of dead waiters, so a
//!   notification is never spent on a dead process. The user's lock follows
//!   the lock rules above.
//! * **Barrier**: its internal lock is robust; a process dying inside the
//!   barrier's critical section, or while running the barrier action, breaks
//!   the barrier (waiters get [`BarrierError::Broken`] within a
//!   [`LIVENESS_SLICE`]). A party that dies before arriving cannot be told
//!   from a slow one: the barrier's timeout applies.
//!
//! Owners are recorded as pids, so all processes sharing an object must be
//! in the same pid namespace.
//!
//! # Waiting
//!
//! Every blocking call spins briefly, then sleeps on a shared futex word
//! (waiters announce themselves, so release, post and set only make the
//! wake system call when someone sleeps), takes an `Option<Duration>`
//! timeout, and has a `_with` variant taking an interrupt hook
//! (`&mut dyn FnMut() -> bool`) that is called when a signal interrupts the
//! sleep and at least every [`LIVENESS_SLICE`]; returning `false` makes the
//! call give up with an `Interrupted` error.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `object-header`: `publish`'s Release store of the magic makes every
//!   field `init` wrote visible to an attacher whose Acquire load sees the
//!   magic.

mod barrier;
mod condition;
mod event;
mod lock;
mod rlock;
mod semaphore;

pub mod raw;

#[cfg(all(test, dragon_loom))]
mod tests;

pub use barrier::{Barrier, BarrierError};
pub use condition::{CondError, CondLock, CondWait, Condition};
pub use event::Event;
pub use lock::Lock;
pub use rlock::RLock;
pub use semaphore::{Semaphore, SEM_VALUE_MAX};

pub(crate) use raw::{stamp_alive, AliveFn, Me, Slept, Waiter};

use shm_primitives::handle::Kind;
use shm_primitives::region::Region;
use shm_primitives::sync::{AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Duration;

/// First word of every synchronisation object ("DRGS").
pub const SYNC_MAGIC: u32 = u32::from_le_bytes(*b"DRGS");
/// Layout version of the objects written by this build.
pub const SYNC_LAYOUT_VERSION: u16 = 1;
/// Objects start at offsets that are multiples of this.
pub const OBJECT_ALIGN: usize = 64;
/// Sleepers wake at least this often to check for dead peers and run the
/// interrupt hook.
pub const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// How many times a lock acquire polls before it sleeps (about a
/// microsecond: a holder running on another core often releases within
/// that, and a sleep/wake round trip costs several).
#[cfg(not(dragon_loom))]
const LOCK_SPIN: u32 = 40;
#[cfg(dragon_loom)]
const LOCK_SPIN: u32 = 1;

/// How many times a semaphore or event wait re-checks before it sleeps: the
/// poster is usually asleep itself, so long spins only take a core from it
/// (measured: 64 spins doubled a two-process ping-pong on two cores).
#[cfg(not(dragon_loom))]
const SIGNAL_SPIN: u32 = 4;
#[cfg(dragon_loom)]
const SIGNAL_SPIN: u32 = 1;

/// How an acquire of a lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free, or released by its holder.
    Normal,
    /// The previous holder died while holding the lock; the caller now holds
    /// it, and the state it protected may be inconsistent.
    OwnerDied {
        /// Pid of the dead holder.
        pid: u32,
    },
}

impl Acquired {
    /// Whether the previous holder died holding the lock.
    pub fn owner_died(&self) -> bool {
        matches!(self, Acquired::OwnerDied { .. })
    }
}

/// Why a blocking call gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout elapsed.
    TimedOut,
    /// The interrupt hook asked to stop.
    Interrupted,
    /// A recursive lock was acquired more times than its counter holds.
    RecursionLimit,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::TimedOut => f.write_str("timed out"),
            WaitError::Interrupted => f.write_str("wait interrupted"),
            WaitError::RecursionLimit => f.write_str("recursive lock acquired too many times"),
        }
    }
}

impl std::error::Error for WaitError {}

/// The interrupt hook asked a wait to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wait interrupted")
    }
}

impl std::error::Error for Interrupted {}

impl From<Interrupted> for WaitError {
    fn from(_: Interrupted) -> WaitError {
        WaitError::Interrupted
    }
}

/// Why a release failed. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The lock is not held ("released too many times").
    NotHeld,
    /// A recursive lock is held by another thread or process (or not at all).
    NotOwner,
    /// The semaphore is at its maximum value.
    Overflow {
        /// The semaphore's maximum value.
        max: u32,
    },
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::NotHeld => f.write_str("lock released too many times: it is not held"),
            ReleaseError::NotOwner => {
                f.write_str("cannot release a recursive lock that the calling thread does not hold")
            }
            ReleaseError::Overflow { max } => {
                write!(f, "semaphore released too many times: it is already at its maximum value {max}")
            }
        }
    }
}

impl std::error::Error for ReleaseError {}

/// Why an object could not be placed at, or attached to, an offset of a
/// region.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectError {
    /// The offset is not a multiple of [`OBJECT_ALIGN`].
    Misaligned {
        /// The offending offset.
        offset: u64,
    },
    /// The object does not fit in the region at that offset.
    OutOfBounds {
        /// Offset of the object.
        offset: u64,
        /// Bytes the object needs.
        size: u64,
        /// Length of the region.
        len: u64,
    },
    /// No synchronisation object starts there.
    BadMagic {
        /// The word found instead of the magic.
        found: u32,
    },
    /// Written by a build with another object layout.
    UnsupportedLayout {
        /// The layout version found.
        found: u16,
    },
    /// An object of another kind is there.
    WrongKind {
        /// The kind asked for.
        expected: Kind,
        /// The kind byte found.
        found: u8,
    },
    /// The object's id differs from the handle's: a stale or forged handle.
    IdMismatch {
        /// Id in the handle.
        expected: u64,
        /// Id in the object.
        found: u64,
    },
    /// The object was destroyed and its place reused: a stale handle.
    GenerationMismatch {
        /// Generation in the handle.
        expected: u64,
        /// Generation in the object.
        found: u64,
    },
    /// A field of the object holds an impossible value.
    Corrupt(&'static str),
    /// A creation parameter is out of range.
    InvalidParameter(&'static str),
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectError::Misaligned { offset } => {
                write!(f, "offset {offset} is not a multiple of {OBJECT_ALIGN}: not a synchronisation object")
            }
            ObjectError::OutOfBounds { offset, size, len } => {
                write!(f, "an object of {size} bytes at offset {offset} does not fit in a region of {len} bytes")
            }
            ObjectError::BadMagic { found } => write!(
                f,
                "no synchronisation object at this place (found {found:#010x} instead of the magic): \
                 wrong, stale or garbage handle"
            ),
            ObjectError::UnsupportedLayout { found } => {
                write!(f, "synchronisation object has layout version {found}, this build reads {SYNC_LAYOUT_VERSION}")
            }
            ObjectError::WrongKind { expected, found } => match Kind::from_u8(*found) {
                Some(k) => write!(f, "the object is a {k:?}, not a {expected:?}"),
                None => write!(f, "the object has unknown kind {found}, not a {expected:?}"),
            },
            ObjectError::IdMismatch { expected, found } => {
                write!(f, "object id {found:#x} differs from the handle's {expected:#x}: stale or forged handle")
            }
            ObjectError::GenerationMismatch { expected, found } => {
                write!(f, "object generation {found} differs from the handle's {expected}: the object was destroyed")
            }
            ObjectError::Corrupt(what) => write!(f, "synchronisation object is corrupt: {what}"),
            ObjectError::InvalidParameter(what) => write!(f, "invalid parameter: {what}"),
        }
    }
}

impl std::error::Error for ObjectError {}

/// The header every object starts with.
#[repr(C)]
pub(crate) struct Header {
    magic: AtomicU32,
    layout: AtomicU32,
    id: AtomicU64,
    generation: AtomicU64,
}

impl Header {
    /// A header that is not yet published (magic 0).
    pub(crate) fn new(kind: Kind, id: u64, generation: u64) -> Header {
        Header {
            magic: AtomicU32::new(0),
            layout: AtomicU32::new(u32::from(SYNC_LAYOUT_VERSION) | (u32::from(kind as u8) << 16)),
            id: AtomicU64::new(id),
            generation: AtomicU64::new(generation),
        }
    }

    /// Make the object visible to attachers.
    pub(crate) fn publish(&self) {
        // SYNC POINT object-header: every field written by `init` becomes visible
        // to an attacher whose Acquire load of the magic sees it.
        self.magic.store(SYNC_MAGIC, Ordering::Release);
    }

    pub(crate) fn id(&self) -> u64 {
        // Relaxed: written before the magic was published, never changed.
        self.id.load(Ordering::Relaxed)
    }

    pub(crate) fn generation(&self) -> u64 {
        // Relaxed: written before the magic was published, never changed.
        self.generation.load(Ordering::Relaxed)
    }

    fn check(&self, kind: Kind, id: u64, generation: u64) -> Result<(), ObjectError> {
        // SYNC POINT object-header: pairs with the Release store in `publish`.
        let magic = self.magic.load(Ordering::Acquire);
        if magic != SYNC_MAGIC {
            return Err(ObjectError::BadMagic { found: magic });
        }
        // Relaxed: ordered after the Acquire load of the magic above.
        let layout = self.layout.load(Ordering::Relaxed);
        let version = (layout & 0xffff) as u16;
        if version != SYNC_LAYOUT_VERSION {
            return Err(ObjectError::UnsupportedLayout { found: version });
        }
        let found_kind = (layout >> 16) as u8;
        if found_kind != kind as u8 || layout >> 24 != 0 {
            return Err(ObjectError::WrongKind { expected: kind, found: found_kind });
        }
        if self.id() != id {
            return Err(ObjectError::IdMismatch { expected: id, found: self.id() });
        }
        if self.generation() != generation {
            return Err(ObjectError::GenerationMismatch { expected: generation, found: self.generation() });
        }
        Ok(())
    }
}

/// A `T` placed in a region: keeps the region (and so the mapping) alive
/// and hands out `&T`.
pub(crate) struct Placed<R, T> {
    region: R,
    offset: usize,
    ptr: NonNull<T>,
    _t: PhantomData<T>,
}

// SAFETY: `T` holds only atomics (Sync and Send); the region is Send + Sync
// by the `Region` contract; the pointer is into the region.
unsafe impl<R: Region, T: Sync> Send for Placed<R, T> {}
// SAFETY: as above.
unsafe impl<R: Region, T: Sync> Sync for Placed<R, T> {}

impl<R: Region, T> Placed<R, T> {
    /// Check that `size` bytes at `offset` fit in the region and are aligned.
    fn locate(region: &R, offset: usize, size: usize) -> Result<NonNull<T>, ObjectError> {
        if offset % OBJECT_ALIGN != 0 || std::mem::align_of::<T>() > OBJECT_ALIGN {
            return Err(ObjectError::Misaligned { offset: offset as u64 });
        }
        let size = size.max(std::mem::size_of::<T>());
        if offset.checked_add(size).map_or(true, |end| end > region.len()) {
            return Err(ObjectError::OutOfBounds {
                offset: offset as u64,
                size: size as u64,
                len: region.len() as u64,
            });
        }
        // SAFETY: `offset + size <= len`, so the pointer stays inside the
        // region (the Region contract keeps it mapped).
        let p = unsafe { region.base().as_ptr().add(offset) };
        NonNull::new(p.cast::<T>()).ok_or(ObjectError::Misaligned { offset: offset as u64 })
    }

    /// Write `value` at `offset` (plus `size - size_of::<T>()` trailing
    /// bytes the caller initialises through [`Placed::tail`]).
    ///
    /// # Safety
    ///
    /// No other thread or process may access the `size` bytes at `offset`
    /// until the object is published, and nothing else may live there
    /// afterwards.
    unsafe fn init(region: R, offset: usize, size: usize, value: T) -> Result<Placed<R, T>, ObjectError> {
        let ptr = Self::locate(&region, offset, size)?;
        // SAFETY: in bounds and aligned (checked by `locate`); the caller
        // guarantees exclusive access.
        unsafe { ptr.as_ptr().write(value) };
        Ok(Placed { region, offset, ptr, _t: PhantomData })
    }

    /// Take the object at `offset` as a `T` without checking its contents
    /// (the caller checks the header next). Safe because `T` holds only
    /// atomics, for which every bit pattern is valid.
    fn attach(region: R, offset: usize, size: usize) -> Result<Placed<R, T>, ObjectError> {
        let ptr = Self::locate(&region, offset, size)?;
        Ok(Placed { region, offset, ptr, _t: PhantomData })
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: `ptr` is in bounds and aligned (checked when placed); the
        // region stays mapped while `self.region` lives; `T` holds only
        // atomics, so shared access from other threads and processes is
        // sound whatever they write.
        unsafe { self.ptr.as_ref() }
    }

    /// Pointer to the first byte after the `T` (variable-size objects keep
    /// an array there, inside the size checked at placement).
    pub(crate) fn tail(&self) -> *mut u8 {
        // SAFETY: one past the `T`, within the checked size.
        unsafe { self.ptr.as_ptr().cast::<u8>().add(std::mem::size_of::<T>()) }
    }

    pub(crate) fn region(&self) -> &R {
        &self.region
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }
}

/// An object with a header, attachable by kind, id and generation.
pub trait SyncObject<R: Region>: Sized {
    /// The handle kind of this object.
    const KIND: Kind;

    /// Attach to the object at `offset` of `region`, checking that it is an
    /// object of this kind with this id and generation.
    fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Self, ObjectError>;

    /// The object's id.
    fn id(&self) -> u64;

    /// The object's generation.
    fn generation(&self) -> u64;

    /// The region holding the object.
    fn region(&self) -> &R;

    /// Byte offset of the object in its region.
    fn offset(&self) -> usize;
}

/// Implements the `SyncObject` plumbing for a `Placed<R, $shared>` newtype
/// whose shared struct has a `header` field.
macro_rules! sync_object_common {
    ($ty:ident, $shared:ty, $kind:expr) => {
        impl<R: shm_primitives::region::Region> $crate::SyncObject<R> for $ty<R> {
            const KIND: shm_primitives::handle::Kind = $kind;

            fn attach(region: R, offset: usize, id: u64, generation: u64) -> Result<Self, $crate::ObjectError> {
                $ty::attach(region, offset, id, generation)
            }
            fn id(&self) -> u64 {
                self.p.get().header.id()
            }
            fn generation(&self) -> u64 {
                self.p.get().header.generation()
            }
            fn region(&self) -> &R {
                self.p.region()
            }
            fn offset(&self) -> usize {
                self.p.offset()
            }
        }

        impl<R: shm_primitives::region::Region> std::fmt::Debug for $ty<R> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("id", &self.p.get().header.id())
                    .field("generation", &self.p.get().header.generation())
                    .field("offset", &self.p.offset())
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use sync_object_common;

/// Bytes of `T` rounded up to [`OBJECT_ALIGN`]: the footprint of a
/// fixed-size object.
pub(crate) const fn footprint<T>() -> usize {
    std::mem::size_of::<T>().div_ceil(OBJECT_ALIGN) * OBJECT_ALIGN
}

#[cfg(all(test, not(dragon_loom)))]
pub(crate) mod test_util {
    use shm_primitives::region::HeapRegion;
    use std::sync::Arc;
    use std::time::Duration;

    /// A fresh region; also arms the binary's watchdog.
    pub(crate) fn region() -> Arc<HeapRegion> {
        test_support::watchdog::start();
        Arc::new(HeapRegion::new(1 << 16))
    }

    /// Fails the test (instead of hanging it) if `f` takes over 60 s.
    pub(crate) fn watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        test_support::watchdog::within(Duration::from_secs(60), f)
    }
}
