//! A crash-safe key/value table in one memory region: the DDict shard.
//!
//! A [`Shard`] is a hash table whose index, entries and allocator all live
//! in one region (a shared-memory segment in production), so every process
//! of a node operates on it directly: a get or a put is a lock, a few loads
//! and stores, a copy, an unlock. It is bounded: the region's length is the
//! whole budget, metadata included.
//!
//! # Layout
//!
//! ```text
//!  0            header (one page): magic, version, id, geometry, frozen
//!               flag, manager stamp, state, used bytes, doorbell,
//!               user words, the allocator's lock and journal, and the
//!               heads of its segregated free lists
//!  stripes_off  nstripes x 192 B: robust lock, entry count, journal
//!  slots_off    nslots x 128 B: client slots (owner stamp, pending
//!               blocks, frozen-reader flag, request mailbox)
//!  buckets_off  nbuckets x 8 B: chain heads (offsets of entries, 0: none)
//!  heap_off     the heap, up to heap_end (a 16-byte used sentinel block
//!               ends it)
//! ```
//!
//! Offsets are bytes from the region's base; every word is a little-endian
//! `u64` accessed atomically. Heap blocks:
//!
//! ```text
//!  used:  [hdr: size|USED|PREV_FREE] [next] [hash] [klen] [vlen] key value
//!  free:  [hdr: size|PREV_FREE=0]    [next free] [prev free] ... [footer: size]
//! ```
//!
//! `size` counts the whole block (a multiple of 16, at least 32). The
//! allocator is a segregated-fit allocator with boundary tags (four size
//! classes per power of two, first fit within a class, immediate
//! coalescing of neighbours), so any freed memory can serve any later size.
//!
//! # Locks and journals
//!
//! Bucket `b` belongs to stripe `b % nstripes`; the stripe's robust lock
//! (the `sync-objects` raw lock word: holder pid, owner-died takeover) protects its
//! buckets, their chains and its count. The allocator has one lock. A
//! stripe lock may be held while taking the allocator lock, never the other
//! way round.
//!
//! Every change to shared structures is a small transaction: the writes
//! (offset, new value) are computed under the lock, copied into the lock's
//! journal, committed by storing their count, applied, and the count is
//! cleared. A process killed at any instruction leaves either an
//! uncommitted journal (nothing was applied: discarded) or a committed one
//! (re-applied in full by the next holder, who takes the lock over from the
//! dead). Writes are absolute values, so applying twice is harmless.
//!
//! # Blocks in flight
//!
//! A client owns a slot. A put allocates its block first (the allocator's
//! transaction records the block in the slot's `pending[0]`), fills it,
//! then links it under the stripe lock (the stripe's transaction clears
//! `pending[0]` and moves the replaced entry, if any, to `pending[1]`, a
//! chain of entries to free), then frees what `pending[1]` holds. A dead
//! client's slot is reaped: every lock is taken and released once (so any
//! journal the dead process left is resolved), then its pending blocks are
//! freed. Nothing leaks, and a put that does not fit fails before anything
//! is changed.
//!
//! # Frozen shards
//!
//! A frozen shard refuses writes, and its gets take no lock: a reader sets
//! its slot's reading flag, issues a full fence and checks the frozen flag;
//! `unfreeze` clears the flag, fences, and waits for every reading flag to
//! drop before writers may proceed.
//!
//! Synchronising edges (`// SYNC POINT <name>` at both ends):
//!
//! - `shard-header`: `init`'s Release store of the magic publishes the
//!   header to an attacher's Acquire load of it.
//! - `shard-state`: `set_state`'s Release store publishes what the setter
//!   did before (a final flush) to `state`'s Acquire load.
//! - `doorbell`: `ring_doorbell`'s Release increment publishes the request
//!   written before it to the manager's Acquire load of the counter.
//! - `client-slot`: a slot's owner stamp: cleared with Release when the slot
//!   is given back (or reaped), claimed with an Acquire compare-and-swap
//!   (also of a dead client's stamp), so the next owner finds the slot's
//!   words clean.
//! - `journal-commit`: a stripe journal's count stored with Release after
//!   its entries; a recovering process reads it with an Acquire
//!   read-modify-write and sees the entries.
//! - `journal-clear`: the journal cleared with Release after the logged
//!   writes are applied; recovery's read-modify-write sees them applied.
//! - `freeze-done`: `freeze` stores `FROZEN_DONE` (SeqCst, so also Release)
//!   after taking every stripe lock once; a lock-free reader that sees it
//!   sees every write made before the freeze.
//! - `frozen-read`: a lock-free reader drops its reading flag with Release
//!   after its reads; `unfreeze` waits for the flag with Acquire before
//!   writes resume.
//! - `shard-request`: a client's Release store of its request sequence
//!   publishes the request block and operation to the manager's Acquire
//!   load.
//! - `shard-reply`: the manager's Release store of the acknowledged sequence
//!   publishes the result and the applied request to the client's Acquire
//!   load in `wait_reply`.

use shm_primitives::futex;
use shm_primitives::process::ProcessId;
use shm_primitives::region::Region;
use shm_primitives::sync::{fence, AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;
use sync_objects::raw::{Me, RawLock, Waiter};
use sync_objects::Acquired;

pub mod shm;

pub use shm::{KvShmError, ShmShard};

#[cfg(all(test, not(dragon_loom)))]
mod tests;

#[cfg(all(test, dragon_loom))]
mod loom_kv;

/// First word of a shard ("DRKV").
pub const KV_MAGIC: u32 = u32::from_le_bytes(*b"DRKV");
/// Layout version written by this build.
pub const KV_LAYOUT_VERSION: u32 = 1;
/// Smallest region a shard can be built in.
pub const MIN_SHARD_LEN: usize = 64 * 1024;
/// How long a lock wait runs before it checks whether the holder lives.
#[cfg(not(dragon_loom))]
const DEAD_HOLDER_CHECK: Duration = Duration::from_millis(1);
/// Number of user words in the header ([`Shard::user_word`]).
pub const USER_WORDS: usize = 14;

// ---- header offsets -------------------------------------------------------
const H_MAGIC: u64 = 0; // u32 magic | u32 version << 32
const H_ID: u64 = 8;
const H_LEN: u64 = 16;
const H_NSTRIPES: u64 = 24;
const H_NBUCKETS: u64 = 32;
const H_NSLOTS: u64 = 40;
const H_STRIPES: u64 = 48;
const H_SLOTS: u64 = 56;
const H_BUCKETS: u64 = 64;
const H_HEAP: u64 = 72;
const H_HEAP_END: u64 = 80;
const H_FROZEN: u64 = 88; // FROZEN_NO, FROZEN_PENDING or FROZEN_DONE
const H_MANAGER: u64 = 96;
const H_STATE: u64 = 104;
const H_FLAGS: u64 = 112;
const H_USED: u64 = 120;
const H_DOORBELL: u64 = 128; // u32 futex word; u32 at 132: manager sleeping
const H_SLOT_HWM: u64 = 136;
const H_USER: u64 = 144; // USER_WORDS words, to 256
const H_ALLOC_LOCK: u64 = 256; // RawLock, 16 bytes
const H_ALLOC_JOURNAL: u64 = 272; // len + ALLOC_JOURNAL_CAP entries
const H_FREE_HEADS: u64 = 1024; // NCLASS words
const HEADER_LEN: u64 = 4096;

/// Writable.
const FROZEN_NO: u64 = 0;
/// Writes are refused; some may still be finishing (reads take locks).
const FROZEN_PENDING: u64 = 1;
/// Frozen: no write in progress, reads take no locks.
const FROZEN_DONE: u64 = 2;

const ALLOC_JOURNAL_CAP: usize = 32;
const STRIPE_JOURNAL_CAP: usize = 8;

// ---- stripes ---------------------------------------------------------------
const STRIPE_LEN: u64 = 192;
const S_LOCK: u64 = 0;
const S_COUNT: u64 = 16;
const S_JOURNAL: u64 = 24; // len + STRIPE_JOURNAL_CAP entries: to 160

// ---- client slots ----------------------------------------------------------
const SLOT_LEN: u64 = 128;
const C_STAMP: u64 = 0;
const C_PENDING0: u64 = 8;
const C_PENDING1: u64 = 16;
const C_READING: u64 = 24;
const C_REQ_SEQ: u64 = 32; // u32, bumped by the client per request
const C_ACK_SEQ: u64 = 36; // u32 futex word, set to the request's seq by the manager
const C_REQ_OP: u64 = 40;
const C_RESULT: u64 = 48;
const C_VALUE: u64 = 56;
const C_BATCH: u64 = 64; // chain (by `next`) of entries of a batch request

// ---- blocks ----------------------------------------------------------------
const USED: u64 = 1;
const PREV_FREE: u64 = 2;
const SIZE_MASK: u64 = !15;
const MIN_BLOCK: u64 = 32;
/// Bytes of an entry before its key: block header, next, hash, klen, vlen.
const ENTRY_HDR: u64 = 40;
const E_NEXT: u64 = 8;
const E_HASH: u64 = 16;
const E_KLEN: u64 = 24;
const E_VLEN: u64 = 32;
const NCLASS: usize = 176;

/// Flag bit ([`Shard::flags`]): only the manager reaps dead clients (its
/// requests touch client slots, so no one else may free them under it).
pub const FLAG_MANAGER_REAPS: u64 = 1;

/// Shard states ([`Shard::state`]).
pub mod state {
    /// In use.
    pub const OPEN: u64 = 0;
    /// Its manager was asked to stop.
    pub const SHUTDOWN: u64 = 1;
    /// Destroyed: clients must stop using it.
    pub const DESTROYED: u64 = 2;
}

/// Why a shard operation failed. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// The entry does not fit in the shard's free memory.
    Full {
        /// Bytes the entry needs (block overhead included).
        needed: u64,
        /// Bytes in use in the shard's heap.
        used: u64,
        /// Size of the shard's heap.
        heap: u64,
    },
    /// The shard is frozen (read-only).
    Frozen,
    /// Every client slot is taken by a live process.
    TooManyClients(u64),
    /// The region is too small for a shard.
    TooSmall(usize),
    /// The region does not hold the shard asked for.
    NotAShard(String),
    /// A structure in the shard holds an impossible value.
    Corrupt(String),
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Full { needed, used, heap } => write!(
                f,
                "shard is full: the entry needs {needed} bytes, {used} of {heap} heap bytes are in use \
                 (raise total_mem, use more managers, or delete entries)"
            ),
            KvError::Frozen => f.write_str("shard is frozen (read-only): unfreeze it to write"),
            KvError::TooManyClients(n) => write!(f, "all {n} client slots of the shard are taken by live processes"),
            KvError::TooSmall(n) => write!(f, "a shard needs at least {MIN_SHARD_LEN} bytes, got {n}"),
            KvError::NotAShard(m) => write!(f, "not a key/value shard: {m}"),
            KvError::Corrupt(m) => write!(f, "key/value shard is corrupt: {m}"),
        }
    }
}

impl std::error::Error for KvError {}

/// Where the parts of a shard go for a region of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Region length.
    pub len: u64,
    /// Number of stripe locks (a power of two).
    pub nstripes: u64,
    /// Number of hash buckets (a power of two, a multiple of `nstripes`).
    pub nbuckets: u64,
    /// Number of client slots.
    pub nslots: u64,
    /// Offset of the stripe array.
    pub stripes_off: u64,
    /// Offset of the client slots.
    pub slots_off: u64,
    /// Offset of the bucket array.
    pub buckets_off: u64,
    /// First byte of the heap.
    pub heap_off: u64,
    /// End of the heap (the sentinel block ends here).
    pub heap_end: u64,
}

fn pow2_floor(x: u64) -> u64 {
    if x == 0 {
        1
    } else {
        1 << (63 - x.leading_zeros())
    }
}

impl Geometry {
    /// The geometry of a shard filling `len` bytes.
    pub fn for_len(len: usize) -> Result<Geometry, KvError> {
        if len < MIN_SHARD_LEN {
            return Err(KvError::TooSmall(len));
        }
        let len = len as u64;
        let nstripes = pow2_floor(len / 65536).clamp(16, 1024);
        let nbuckets = pow2_floor(len / 256).clamp(nstripes, 1 << 26);
        let nslots = (len / 8192).clamp(64, 1024);
        let stripes_off = HEADER_LEN;
        let slots_off = stripes_off + nstripes * STRIPE_LEN;
        let buckets_off = (slots_off + nslots * SLOT_LEN).next_multiple_of(64);
        let heap_off = (buckets_off + nbuckets * 8).next_multiple_of(64);
        let heap_end = len & !15;
        if heap_end < heap_off + 4096 {
            return Err(KvError::TooSmall(len as usize));
        }
        Ok(Geometry { len, nstripes, nbuckets, nslots, stripes_off, slots_off, buckets_off, heap_off, heap_end })
    }

    /// Heap bytes (what entries can use, their block overhead included).
    pub fn heap_len(&self) -> u64 {
        self.heap_end - self.heap_off - 16
    }
}

/// Counters of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    /// Number of entries.
    pub entries: u64,
    /// Heap bytes in used blocks (entries and blocks in flight).
    pub used_bytes: u64,
    /// Heap bytes in total.
    pub heap_bytes: u64,
    /// Region length (the memory budget, metadata included).
    pub total_bytes: u64,
    /// Client slots held by processes.
    pub clients: u64,
    /// Whether the shard is frozen.
    pub frozen: bool,
}

/// What a walk of the whole heap found ([`Shard::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapReport {
    /// Used blocks.
    pub used_blocks: u64,
    /// Bytes in used blocks.
    pub used_bytes: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Bytes in free blocks.
    pub free_bytes: u64,
    /// Entries reachable from the buckets.
    pub entries: u64,
    /// Used blocks held in client slots (in flight).
    pub pending_blocks: u64,
}

/// A client's claim on one slot of a shard. Operations that may allocate
/// or free take it; release it with [`Shard::release_slot`] (or let a
/// reaper free it after the process dies).
#[derive(Debug)]
pub struct Slot {
    index: u64,
    stamp: u64,
}

impl Slot {
    /// The slot's index.
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// How [`Shard::update`] changes an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Leave the entry as it is (absent stays absent).
    Keep,
    /// Store this value.
    Set(Vec<u8>),
    /// Remove the entry.
    Remove,
}

/// The stable 64-bit hash of a key: FNV-1a over its bytes (offset basis
/// 0xcbf29ce484222325, prime 0x100000001b3). The same on every process,
/// run and machine.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Spread a key hash over buckets (the splitmix64 finaliser), so that
/// routing by `hash % managers` and bucketing use independent bits.
fn bucket_mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn class_of(size: u64) -> usize {
    let fl = 63 - u64::from(size.leading_zeros());
    let sl = (size >> (fl - 2)) & 3;
    (((fl - 5) * 4 + sl) as usize).min(NCLASS - 1)
}

fn class_lo(c: usize) -> u64 {
    let fl = (c / 4 + 5) as u32;
    let sl = (c % 4) as u64;
    (1u64 << fl) + sl * (1u64 << (fl - 2))
}

fn block_size_for(klen: usize, vlen: usize) -> Option<u64> {
    let n = ENTRY_HDR.checked_add(klen as u64)?.checked_add(vlen as u64)?;
    Some(n.checked_next_multiple_of(16)?.max(MIN_BLOCK))
}

// ---- raw access -------------------------------------------------------------

/// Bounds-checked word access to the region. A wrong offset (a corrupt
/// shard) panics with a message; it never touches memory outside the
/// region.
#[derive(Clone, Copy)]
struct Mem {
    base: NonNull<u8>,
    len: u64,
    /// Under loom, words live in loom atomics kept beside the region (loom
    /// atomics cannot be cast from raw memory); bytes stay in the region.
    #[cfg(dragon_loom)]
    shadow: &'static loom_mem::Shadow,
}

#[cfg(dragon_loom)]
mod loom_mem {
    //! The loom stand-in for raw word access: every word, 32-bit word and
    //! lock of a region is a loom object created on first use (zero, as in
    //! a fresh region). A location is always read in the mode (word or
    //! bytes) it was last written in, so keeping the two apart is exact.
    use shm_primitives::sync::{AtomicU32, AtomicU64};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use sync_objects::raw::RawLock;

    #[derive(Default)]
    pub(super) struct Shadow {
        words: Mutex<HashMap<u64, Box<AtomicU64>>>,
        words32: Mutex<HashMap<u64, Box<AtomicU32>>>,
        locks: Mutex<HashMap<u64, Box<RawLock>>>,
    }

    static REGIONS: Mutex<Option<HashMap<usize, &'static Shadow>>> = Mutex::new(None);

    /// A fresh shadow for the region at `base` (a new shard).
    pub(super) fn fresh(base: usize) -> &'static Shadow {
        let s: &'static Shadow = Box::leak(Box::default());
        REGIONS.lock().unwrap().get_or_insert_with(HashMap::new).insert(base, s);
        s
    }

    /// The shadow of the shard at `base`.
    pub(super) fn of(base: usize) -> &'static Shadow {
        REGIONS.lock().unwrap().get_or_insert_with(HashMap::new).get(&base).expect("no shard in this region")
    }

    fn get<T>(m: &Mutex<HashMap<u64, Box<T>>>, off: u64, new: impl FnOnce() -> T) -> &T {
        let mut g = m.lock().unwrap();
        let p: *const T = &**g.entry(off).or_insert_with(|| Box::new(new()));
        // SAFETY: boxed, never removed while the shadow lives (leaked).
        unsafe { &*p }
    }

    impl Shadow {
        pub(super) fn w(&self, off: u64) -> &AtomicU64 {
            get(&self.words, off, || AtomicU64::new(0))
        }
        pub(super) fn w32(&self, off: u64) -> &AtomicU32 {
            get(&self.words32, off, || AtomicU32::new(0))
        }
        pub(super) fn lock(&self, off: u64) -> &RawLock {
            get(&self.locks, off, RawLock::new)
        }
    }
}

// SAFETY: the memory is shared; every word is accessed atomically, and byte
// ranges only under the ownership rules of the module docs.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    #[inline]
    fn check(&self, off: u64, n: u64, align: u64) {
        if off % align != 0 || off.checked_add(n).map_or(true, |e| e > self.len) {
            panic!("key/value shard is corrupt: access of {n} bytes at offset {off} (region of {} bytes)", self.len);
        }
    }

    #[cfg(not(dragon_loom))]
    fn new(base: NonNull<u8>, len: u64, _fresh: bool) -> Mem {
        Mem { base, len }
    }

    #[cfg(dragon_loom)]
    fn new(base: NonNull<u8>, len: u64, fresh: bool) -> Mem {
        let a = base.as_ptr() as usize;
        Mem { base, len, shadow: if fresh { loom_mem::fresh(a) } else { loom_mem::of(a) } }
    }

    #[cfg(dragon_loom)]
    fn w(&self, off: u64) -> &AtomicU64 {
        self.check(off, 8, 8);
        self.shadow.w(off)
    }

    #[cfg(dragon_loom)]
    fn w32(&self, off: u64) -> &AtomicU32 {
        self.check(off, 4, 4);
        self.shadow.w32(off)
    }

    #[cfg(dragon_loom)]
    fn lock(&self, off: u64) -> &RawLock {
        self.check(off, std::mem::size_of::<RawLock>() as u64, 8);
        self.shadow.lock(off)
    }

    #[cfg(not(dragon_loom))]
    #[inline]
    fn w(&self, off: u64) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: in bounds and 8-aligned (checked; the base is page
        // aligned); AtomicU64 has the layout of u64 and any bits are valid.
        unsafe { &*self.base.as_ptr().add(off as usize).cast::<AtomicU64>() }
    }

    #[cfg(not(dragon_loom))]
    #[inline]
    fn w32(&self, off: u64) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: as in `w`, for a 4-byte word.
        unsafe { &*self.base.as_ptr().add(off as usize).cast::<AtomicU32>() }
    }

    #[cfg(not(dragon_loom))]
    #[inline]
    fn lock(&self, off: u64) -> &RawLock {
        self.check(off, std::mem::size_of::<RawLock>() as u64, 8);
        // SAFETY: in bounds and aligned; RawLock is repr(C) of atomics, so
        // any bit pattern is a valid value.
        unsafe { &*self.base.as_ptr().add(off as usize).cast::<RawLock>() }
    }

    #[inline]
    fn get(&self, off: u64) -> u64 {
        // Relaxed: words are read under the lock that protects them (or in
        // a frozen shard, which nobody writes); the lock orders them.
        self.w(off).load(Ordering::Relaxed)
    }

    #[inline]
    fn set(&self, off: u64, v: u64) {
        // Relaxed: as in `get`; journal commits order their own stores.
        self.w(off).store(v, Ordering::Relaxed)
    }

    /// The bytes at `off..off+n`.
    ///
    /// # Safety
    ///
    /// Nobody may write them while the slice lives (the caller holds the
    /// lock protecting them, or the shard is frozen).
    #[inline]
    unsafe fn bytes(&self, off: u64, n: u64) -> &[u8] {
        self.check(off, n, 1);
        // SAFETY: in bounds (checked); the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off as usize), n as usize) }
    }

    /// Copy `src` to `off`.
    ///
    /// # Safety
    ///
    /// The caller owns the bytes (a block in flight that nobody else reads).
    #[inline]
    unsafe fn write(&self, off: u64, src: &[u8]) {
        self.check(off, src.len() as u64, 1);
        // SAFETY: in bounds (checked); the caller owns the destination, and
        // `src` is process memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off as usize), src.len()) }
    }
}

/// Crash-injection points for the unit tests: a countdown per thread that
/// makes the current operation stop dead (as a killed process would).
#[cfg(all(test, not(dragon_loom)))]
pub(crate) mod crash {
    use std::cell::Cell;
    thread_local! {
        pub(crate) static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
        pub(crate) static DEAD: Cell<bool> = const { Cell::new(false) };
    }
    /// Payload of the panic that simulates death.
    pub(crate) struct Died;
    #[inline]
    pub(crate) fn point() {
        COUNTDOWN.with(|c| {
            let n = c.get();
            if n == 1 {
                c.set(0);
                DEAD.with(|d| d.set(true));
                std::panic::panic_any(Died);
            } else if n > 1 {
                c.set(n - 1);
            }
        });
    }
    pub(crate) fn dead() -> bool {
        DEAD.with(|d| d.get())
    }
}

#[inline]
fn crash_point() {
    #[cfg(all(test, not(dragon_loom)))]
    crash::point();
}

/// A set of word writes applied atomically with respect to crashes.
struct Txn<const N: usize> {
    w: [(u64, u64); N],
    n: usize,
}

impl<const N: usize> Txn<N> {
    fn new() -> Self {
        Txn { w: [(0, 0); N], n: 0 }
    }

    /// The word's value as this transaction will leave it.
    fn get(&self, mem: &Mem, off: u64) -> u64 {
        for &(o, v) in self.w[..self.n].iter().rev() {
            if o == off {
                return v;
            }
        }
        mem.get(off)
    }

    fn set(&mut self, off: u64, v: u64) {
        for e in self.w[..self.n].iter_mut() {
            if e.0 == off {
                e.1 = v;
                return;
            }
        }
        assert!(self.n < N, "key/value shard: transaction larger than its journal ({N} writes)");
        self.w[self.n] = (off, v);
        self.n += 1;
    }

    /// Journal, apply and clear. `journal` is the offset of the journal's
    /// length word; its entries follow it.
    fn commit(&self, mem: &Mem, journal: u64) {
        if self.n == 0 {
            return;
        }
        for (i, &(o, v)) in self.w[..self.n].iter().enumerate() {
            let e = journal + 8 + 16 * i as u64;
            mem.set(e, o);
            crash_point();
            mem.set(e + 8, v);
            crash_point();
        }
        // SYNC POINT journal-commit: the entries become visible before the
        // count, to whoever reads the count with the Acquire RMW in `recover`.
        mem.w(journal).store(self.n as u64, Ordering::Release);
        crash_point();
        for &(o, v) in &self.w[..self.n] {
            mem.set(o, v);
            crash_point();
        }
        // SYNC POINT journal-clear: the applied writes become visible
        // before the journal reads empty (pairs with `recover`'s RMW).
        mem.w(journal).store(0, Ordering::Release);
        crash_point();
    }
}

/// Replay a committed journal left by a dead holder (we hold its lock).
fn recover(mem: &Mem, journal: u64, cap: usize) -> bool {
    // SYNC POINT journal-commit, journal-clear: an RMW reads the last value in the
    // word's modification order, so a count the dead holder stored is seen
    // together with what it published (entries, or the applied writes).
    let n = mem.w(journal).fetch_add(0, Ordering::AcqRel);
    if n == 0 {
        return false;
    }
    let n = (n as usize).min(cap);
    for i in 0..n {
        let e = journal + 8 + 16 * i as u64;
        mem.set(mem.get(e), mem.get(e + 8));
    }
    // SYNC POINT journal-clear: as in `Txn::commit`.
    mem.w(journal).store(0, Ordering::Release);
    true
}

/// A held lock (stripe or allocator); releases on drop.
struct Guard<'a> {
    lock: &'a RawLock,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        #[cfg(all(test, not(dragon_loom)))]
        if crash::dead() {
            return; // a dead process releases nothing
        }
        let _ = self.lock.unlock();
    }
}

/// One shard in a region. See the module docs.
pub struct Shard<R: Region> {
    region: R,
    mem: Mem,
    g: Geometry,
}

impl<R: Region> fmt::Debug for Shard<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard").field("id", &self.id()).field("geometry", &self.g).finish_non_exhaustive()
    }
}

/// A request posted to the manager ([`Shard::requests`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client's slot.
    pub slot: u64,
    /// The request's sequence number.
    pub seq: u32,
    /// The operation (the layer above defines the codes).
    pub op: u64,
    block: u64,
}

/// Outcome of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The key was new.
    Inserted,
    /// The key's previous value was replaced.
    Replaced,
    /// `if_absent` was asked and the key exists: nothing changed.
    Exists,
}

impl<R: Region> Shard<R> {
    /// Build an empty shard filling `region`, with id `id`.
    ///
    /// # Safety
    ///
    /// The region must be zero-filled, and no other thread or process may
    /// use it until this returns.
    pub unsafe fn init(region: R, id: u64) -> Result<Shard<R>, KvError> {
        let g = Geometry::for_len(region.len())?;
        let mem = Mem::new(region.base(), g.len, true);
        // Under loom, make every metadata word now, in the creating thread:
        // in real memory they exist (as zeros) before anyone looks.
        #[cfg(dragon_loom)]
        {
            for off in (0..g.heap_off).step_by(8) {
                mem.w(off);
            }
            mem.w32(H_DOORBELL);
            mem.w32(H_DOORBELL + 4);
            mem.lock(H_ALLOC_LOCK);
            for i in 0..g.nstripes {
                mem.lock(g.stripes_off + i * STRIPE_LEN + S_LOCK);
            }
            for i in 0..g.nslots {
                mem.w32(g.slots_off + i * SLOT_LEN + C_REQ_SEQ);
                mem.w32(g.slots_off + i * SLOT_LEN + C_ACK_SEQ);
            }
        }
        mem.set(H_ID, id);
        mem.set(H_LEN, g.len);
        mem.set(H_NSTRIPES, g.nstripes);
        mem.set(H_NBUCKETS, g.nbuckets);
        mem.set(H_NSLOTS, g.nslots);
        mem.set(H_STRIPES, g.stripes_off);
        mem.set(H_SLOTS, g.slots_off);
        mem.set(H_BUCKETS, g.buckets_off);
        mem.set(H_HEAP, g.heap_off);
        mem.set(H_HEAP_END, g.heap_end);
        // The heap: one free block, then the used sentinel.
        let first = g.heap_off;
        let size = g.heap_end - 16 - first;
        mem.set(first, size);
        mem.set(first + size - 8, size);
        mem.set(H_FREE_HEADS + 8 * class_of(size) as u64, first);
        mem.set(g.heap_end - 16, 16 | USED | PREV_FREE);
        // SYNC POINT shard-header: everything above is visible to an attacher
        // whose Acquire load of the magic sees it.
        mem.w(H_MAGIC).store(u64::from(KV_MAGIC) | (u64::from(KV_LAYOUT_VERSION) << 32), Ordering::Release);
        Ok(Shard { region, mem, g })
    }

    /// Attach to the shard in `region`, checking magic, version, id and
    /// geometry.
    pub fn attach(region: R, id: u64) -> Result<Shard<R>, KvError> {
        if region.len() < MIN_SHARD_LEN {
            return Err(KvError::NotAShard(format!("region of {} bytes is too small", region.len())));
        }
        let mem = Mem::new(region.base(), region.len() as u64, false);
        // SYNC POINT shard-header: pairs with the Release store in `init`.
        let m = mem.w(H_MAGIC).load(Ordering::Acquire);
        if m as u32 != KV_MAGIC {
            return Err(KvError::NotAShard(format!("bad magic {:#x}", m as u32)));
        }
        if (m >> 32) as u32 != KV_LAYOUT_VERSION {
            return Err(KvError::NotAShard(format!(
                "layout version {} (this build reads {KV_LAYOUT_VERSION})",
                m >> 32
            )));
        }
        if mem.get(H_ID) != id {
            return Err(KvError::NotAShard(format!(
                "shard id {:#x} differs from the expected {id:#x}: stale or forged handle",
                mem.get(H_ID)
            )));
        }
        let g = Geometry::for_len(mem.get(H_LEN) as usize).map_err(|e| KvError::Corrupt(e.to_string()))?;
        let stored = Geometry {
            len: mem.get(H_LEN),
            nstripes: mem.get(H_NSTRIPES),
            nbuckets: mem.get(H_NBUCKETS),
            nslots: mem.get(H_NSLOTS),
            stripes_off: mem.get(H_STRIPES),
            slots_off: mem.get(H_SLOTS),
            buckets_off: mem.get(H_BUCKETS),
            heap_off: mem.get(H_HEAP),
            heap_end: mem.get(H_HEAP_END),
        };
        if stored != g || g.len > region.len() as u64 {
            return Err(KvError::Corrupt(format!(
                "geometry {stored:?} does not match a region of {} bytes",
                region.len()
            )));
        }
        Ok(Shard { region, mem, g })
    }

    /// The region holding the shard.
    pub fn region(&self) -> &R {
        &self.region
    }

    /// The shard's id.
    pub fn id(&self) -> u64 {
        self.mem.get(H_ID)
    }

    /// The shard's geometry.
    pub fn geometry(&self) -> Geometry {
        self.g
    }

    // ---- header words ------------------------------------------------------

    /// User word `i` (< [`USER_WORDS`]): configuration the layer above keeps
    /// in the shard.
    pub fn user_word(&self, i: usize) -> u64 {
        assert!(i < USER_WORDS);
        // Relaxed: configuration written once before clients attach (their
        // attach goes through the magic's Acquire or a later handshake).
        self.mem.w(H_USER + 8 * i as u64).load(Ordering::Relaxed)
    }

    /// Set user word `i`.
    pub fn set_user_word(&self, i: usize, v: u64) {
        assert!(i < USER_WORDS);
        // Relaxed: see `user_word`.
        self.mem.w(H_USER + 8 * i as u64).store(v, Ordering::Relaxed)
    }

    /// The shard's state (see [`state`]).
    pub fn state(&self) -> u64 {
        // SYNC POINT shard-state: pairs with the Release in `set_state`.
        self.mem.w(H_STATE).load(Ordering::Acquire)
    }

    /// Set the shard's state and ring the doorbell.
    pub fn set_state(&self, s: u64) {
        // SYNC POINT shard-state: what the setter did before (e.g. a final
        // flush) is seen by whoever reads the new state.
        self.mem.w(H_STATE).store(s, Ordering::Release);
        self.ring_doorbell();
    }

    /// Flag words for the layer above (bit 0: durable mode).
    pub fn flags(&self) -> u64 {
        // Relaxed: written once at creation.
        self.mem.w(H_FLAGS).load(Ordering::Relaxed)
    }

    /// Set the flag words.
    pub fn set_flags(&self, f: u64) {
        // Relaxed: see `flags`.
        self.mem.w(H_FLAGS).store(f, Ordering::Relaxed)
    }

    /// The manager process recorded in the shard (`pid << 32 | start_lo`).
    pub fn manager_stamp(&self) -> u64 {
        // Relaxed: a liveness hint.
        self.mem.w(H_MANAGER).load(Ordering::Relaxed)
    }

    /// Record the calling process as the shard's manager.
    pub fn set_manager_current(&self) {
        // Relaxed: a liveness hint.
        self.mem.w(H_MANAGER).store(Me::current().stamp(), Ordering::Relaxed)
    }

    /// Whether the recorded manager process is alive (reads `/proc`: call
    /// it now and then, not per operation). `true` if none is recorded.
    pub fn manager_alive(&self) -> bool {
        let s = self.manager_stamp();
        s == 0 || ProcessId::from_stamp(s).is_some_and(|p| p.is_alive())
    }

    /// Wake the manager sleeping in [`Shard::wait_doorbell`].
    pub fn ring_doorbell(&self) {
        // SYNC POINT doorbell: Release publishes the request written before
        // ringing to the manager's Acquire load of the counter.
        self.mem.w32(H_DOORBELL).fetch_add(1, Ordering::Release);
        // Relaxed: the manager sets its sleeping flag before re-checking the
        // counter; at worst a wake is spent on nobody.
        if self.mem.w32(H_DOORBELL + 4).load(Ordering::Relaxed) != 0 {
            futex::wake(self.mem.w32(H_DOORBELL), i32::MAX as u32);
        }
    }

    /// The doorbell counter (pass it to [`Shard::wait_doorbell`]).
    pub fn doorbell(&self) -> u32 {
        // SYNC POINT doorbell: pairs with `ring_doorbell`.
        self.mem.w32(H_DOORBELL).load(Ordering::Acquire)
    }

    /// Sleep until the doorbell counter differs from `seen`, or `timeout`.
    pub fn wait_doorbell(&self, seen: u32, timeout: Duration) {
        // Relaxed + SeqCst fence: the flag is visible before we re-check the
        // counter, and a ringer that misses the flag changed the counter
        // first (the futex compares it atomically with sleeping).
        self.mem.w32(H_DOORBELL + 4).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.doorbell() == seen {
            futex::wait(self.mem.w32(H_DOORBELL), seen, Some(timeout));
        }
        // Relaxed: a hint only.
        self.mem.w32(H_DOORBELL + 4).store(0, Ordering::Relaxed);
    }

    // ---- locks --------------------------------------------------------------

    fn stripe_of_bucket(&self, b: u64) -> u64 {
        self.g.stripes_off + (b & (self.g.nstripes - 1)) * STRIPE_LEN
    }

    fn lock_at(&self, lock_off: u64, journal: u64, cap: usize) -> Guard<'_> {
        let lock = self.mem.lock(lock_off);
        let me = Me::current();
        // A short first wait ends with a liveness check of the holder, so a
        // lock left by a dead process is taken over within a millisecond
        // (the untimed wait checks only every liveness slice).
        #[cfg(not(dragon_loom))]
        let r = match lock.lock(&me, ProcessId::is_alive, &mut Waiter::new(Some(DEAD_HOLDER_CHECK), None)) {
            Err(sync_objects::WaitError::TimedOut) => lock.lock(&me, ProcessId::is_alive, &mut Waiter::new(None, None)),
            r => r,
        };
        // Loom models have no dead holders, and a wall-clock deadline would
        // make the model non-deterministic.
        #[cfg(dragon_loom)]
        let r = lock.lock(&me, ProcessId::is_alive, &mut Waiter::forever());
        match r {
            Ok(Acquired::Normal) => {}
            Ok(Acquired::OwnerDied { .. }) => {
                recover(&self.mem, journal, cap);
            }
            // Untimed and without an interrupt hook, a lock wait only ends
            // by acquiring.
            Err(e) => panic!("key/value shard: untimed lock wait failed: {e}"),
        }
        Guard { lock }
    }

    fn lock_stripe(&self, stripe: u64) -> Guard<'_> {
        self.lock_at(stripe + S_LOCK, stripe + S_JOURNAL, STRIPE_JOURNAL_CAP)
    }

    fn lock_alloc(&self) -> Guard<'_> {
        self.lock_at(H_ALLOC_LOCK, H_ALLOC_JOURNAL, ALLOC_JOURNAL_CAP)
    }

    fn slot_off(&self, i: u64) -> u64 {
        self.g.slots_off + i * SLOT_LEN
    }

    // ---- allocator -----------------------------------------------------------

    fn head_off(c: usize) -> u64 {
        H_FREE_HEADS + 8 * c as u64
    }

    fn check_block(&self, b: u64) -> u64 {
        if b < self.g.heap_off || b >= self.g.heap_end || b % 16 != 0 {
            panic!("key/value shard is corrupt: block offset {b} outside the heap");
        }
        b
    }

    fn list_remove(&self, t: &mut Txn<ALLOC_JOURNAL_CAP>, b: u64, size: u64) {
        let next = t.get(&self.mem, b + 8);
        let prev = t.get(&self.mem, b + 16);
        if prev == 0 {
            t.set(Self::head_off(class_of(size)), next);
        } else {
            t.set(self.check_block(prev) + 8, next);
        }
        if next != 0 {
            t.set(self.check_block(next) + 16, prev);
        }
    }

    fn list_push(&self, t: &mut Txn<ALLOC_JOURNAL_CAP>, b: u64, size: u64) {
        let h = Self::head_off(class_of(size));
        let old = t.get(&self.mem, h);
        t.set(b + 8, old);
        t.set(b + 16, 0);
        if old != 0 {
            t.set(self.check_block(old) + 16, b);
        }
        t.set(h, b);
    }

    /// Find a free block of at least `need` bytes (allocator lock held).
    fn find_free(&self, t: &Txn<ALLOC_JOURNAL_CAP>, need: u64) -> Option<u64> {
        let c0 = class_of(need);
        let start = if class_lo(c0) == need { c0 } else { c0 + 1 };
        for c in start..NCLASS {
            let b = t.get(&self.mem, Self::head_off(c));
            if b != 0 {
                return Some(self.check_block(b));
            }
        }
        // First fit among the blocks of need's own class.
        let mut b = t.get(&self.mem, Self::head_off(c0));
        for _ in 0..16 {
            if b == 0 {
                break;
            }
            self.check_block(b);
            if t.get(&self.mem, b) & SIZE_MASK >= need {
                return Some(b);
            }
            b = t.get(&self.mem, b + 8);
        }
        None
    }

    /// Allocate a block of `need` bytes (a multiple of 16, >= MIN_BLOCK) and
    /// record it in `slot_word`, in one transaction.
    fn alloc(&self, need: u64, slot_word: u64) -> Result<u64, KvError> {
        self.alloc_to(need, slot_word, false)
    }

    /// [`Shard::alloc`]; with `chain`, the block is pushed on the chain of
    /// entries `slot_word` heads (its `next` takes the old head).
    fn alloc_to(&self, need: u64, slot_word: u64, chain: bool) -> Result<u64, KvError> {
        let _g = self.lock_alloc();
        let mut t = Txn::<ALLOC_JOURNAL_CAP>::new();
        let Some(b) = self.find_free(&t, need) else {
            return Err(KvError::Full { needed: need, used: self.mem.get(H_USED), heap: self.g.heap_len() });
        };
        let size = self.mem.get(b) & SIZE_MASK;
        self.list_remove(&mut t, b, size);
        let used = if size - need >= MIN_BLOCK {
            let rest = b + need;
            let rsize = size - need;
            t.set(rest, rsize);
            t.set(rest + rsize - 8, rsize);
            self.list_push(&mut t, rest, rsize);
            need
        } else {
            let after = b + size;
            let ah = t.get(&self.mem, after);
            t.set(after, ah & !PREV_FREE);
            size
        };
        t.set(b, used | USED);
        t.set(H_USED, t.get(&self.mem, H_USED) + used);
        if chain {
            t.set(b + E_NEXT, self.mem.get(slot_word));
        }
        t.set(slot_word, b);
        t.commit(&self.mem, H_ALLOC_JOURNAL);
        Ok(b)
    }

    /// Free block `b` and set `slot_word` to `then`, in one transaction.
    fn free(&self, b: u64, slot_word: u64, then: u64) {
        let _g = self.lock_alloc();
        let mut t = Txn::<ALLOC_JOURNAL_CAP>::new();
        let hdr = self.mem.get(self.check_block(b));
        if hdr & USED == 0 {
            panic!("key/value shard is corrupt: freeing block {b}, which is free");
        }
        let bsize = hdr & SIZE_MASK;
        let mut start = b;
        let mut size = bsize;
        let next = self.check_block(b + bsize);
        let nh = self.mem.get(next);
        if nh & USED == 0 {
            let nsize = nh & SIZE_MASK;
            self.list_remove(&mut t, next, nsize);
            size += nsize;
        }
        if hdr & PREV_FREE != 0 {
            let psize = self.mem.get(b - 8);
            let p = self.check_block(b - psize);
            self.list_remove(&mut t, p, psize);
            start = p;
            size += psize;
        }
        t.set(start, size);
        t.set(start + size - 8, size);
        self.list_push(&mut t, start, size);
        let after = start + size;
        let ah = t.get(&self.mem, after);
        t.set(after, ah | PREV_FREE);
        t.set(H_USED, t.get(&self.mem, H_USED) - bsize);
        t.set(slot_word, then);
        t.commit(&self.mem, H_ALLOC_JOURNAL);
    }

    /// Free the chain of entries held in `slot_word` (linked by `next`).
    fn free_chain(&self, slot_word: u64) {
        loop {
            let e = self.mem.get(slot_word);
            if e == 0 {
                return;
            }
            let next = self.mem.get(self.check_block(e) + E_NEXT);
            self.free(e, slot_word, next);
            crash_point();
        }
    }

    // ---- slots ---------------------------------------------------------------

    /// Claim a client slot for the calling process.
    pub fn claim_slot(&self) -> Result<Slot, KvError> {
        let me = Me::current().stamp();
        for round in 0..2 {
            for i in 0..self.g.nslots {
                let s = self.slot_off(i);
                // Relaxed: a first look; the CAS decides.
                if self.mem.w(s + C_STAMP).load(Ordering::Relaxed) != 0 {
                    continue;
                }
                // SYNC POINT client-slot: Acquire pairs with the Release in
                // `release_slot`/reaping: the slot's words are clean.
                if self.mem.w(s + C_STAMP).compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    // Relaxed: the high-water mark only bounds scans; a scan
                    // that misses a just-claimed slot misses a live one.
                    self.mem.w(H_SLOT_HWM).fetch_max(i + 1, Ordering::Relaxed);
                    return Ok(Slot { index: i, stamp: me });
                }
            }
            if round == 0 && (self.flags() & FLAG_MANAGER_REAPS != 0 || self.reap_dead() == 0) {
                break;
            }
        }
        Err(KvError::TooManyClients(self.g.nslots))
    }

    /// Give a slot back (its pending blocks are freed first).
    pub fn release_slot(&self, slot: Slot) {
        let s = self.slot_off(slot.index);
        self.free_pending(s);
        // SYNC POINT client-slot: the slot's clean words are visible to the
        // next claimer.
        let _ = self.mem.w(s + C_STAMP).compare_exchange(slot.stamp, 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Whether `slot` is still the calling process's (a forked child holds
    /// its parent's slot and must claim its own).
    pub fn slot_is_mine(&self, slot: &Slot) -> bool {
        // Relaxed: our own stamp, or a reaper's after we were found dead.
        slot.stamp == Me::current().stamp() && self.mem.get(self.slot_off(slot.index) + C_STAMP) == slot.stamp
    }

    fn free_pending(&self, s: u64) {
        let p0 = self.mem.get(s + C_PENDING0);
        if p0 != 0 {
            self.free(p0, s + C_PENDING0, 0);
        }
        self.free_chain(s + C_PENDING1);
        self.free_chain(s + C_BATCH);
    }

    /// Free the slots (and blocks in flight) of dead clients. Returns how
    /// many slots were reaped. Safe to call from any process at any time.
    pub fn reap_dead(&self) -> usize {
        let me = Me::current().stamp();
        // Relaxed: see `claim_slot`.
        let hwm = self.mem.w(H_SLOT_HWM).load(Ordering::Relaxed).min(self.g.nslots);
        let mut claimed = Vec::new();
        for i in 0..hwm {
            let s = self.slot_off(i);
            let st = self.mem.get(s + C_STAMP);
            if st == 0 || st == me || ProcessId::from_stamp(st).is_some_and(|p| p.is_alive()) {
                continue;
            }
            // SYNC POINT client-slot: Acquire: the dead client's stores to its
            // slot (before its last Release of the stamp) are seen.
            if self.mem.w(s + C_STAMP).compare_exchange(st, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                claimed.push(s);
            }
        }
        if claimed.is_empty() {
            return 0;
        }
        // Resolve every journal a dead process may have left: take and
        // release each lock once (a dead holder's lock is taken over and
        // its journal replayed).
        self.sweep_locks();
        for &s in &claimed {
            self.free_pending(s);
            // Relaxed: the reader flag of a dead client means nothing.
            self.mem.set(s + C_READING, 0);
            // SYNC POINT client-slot: as in `release_slot`.
            self.mem.w(s + C_STAMP).store(0, Ordering::Release);
        }
        claimed.len()
    }

    fn sweep_locks(&self) {
        for i in 0..self.g.nstripes {
            drop(self.lock_stripe(self.g.stripes_off + i * STRIPE_LEN));
        }
        drop(self.lock_alloc());
    }

    // ---- entries -------------------------------------------------------------

    fn bucket_of(&self, h: u64) -> u64 {
        bucket_mix(h) & (self.g.nbuckets - 1)
    }

    fn bucket_off(&self, b: u64) -> u64 {
        self.g.buckets_off + 8 * b
    }

    /// Find `key` in bucket `b` (its stripe lock held, or frozen). Returns
    /// (offset of the word linking to the entry, entry).
    fn find(&self, b: u64, h: u64, key: &[u8]) -> Option<(u64, u64)> {
        let mut link = self.bucket_off(b);
        let mut e = self.mem.get(link);
        let mut steps = 0u64;
        while e != 0 {
            self.check_block(e);
            if self.mem.get(e + E_HASH) == h && self.mem.get(e + E_KLEN) == key.len() as u64 {
                // SAFETY: the entry is linked, and we hold its stripe lock (or
                // the shard is frozen): nobody writes it.
                if unsafe { self.mem.bytes(e + ENTRY_HDR, key.len() as u64) } == key {
                    return Some((link, e));
                }
            }
            link = e + E_NEXT;
            e = self.mem.get(link);
            steps += 1;
            if steps > self.g.heap_len() / MIN_BLOCK {
                panic!("key/value shard is corrupt: a hash chain loops");
            }
        }
        None
    }

    /// The value of entry `e` (lock held or frozen).
    ///
    /// # Safety
    ///
    /// As for [`Mem::bytes`].
    unsafe fn value_of(&self, e: u64) -> &[u8] {
        let klen = self.mem.get(e + E_KLEN);
        let vlen = self.mem.get(e + E_VLEN);
        let size = self.mem.get(e) & SIZE_MASK;
        if ENTRY_HDR.saturating_add(klen).saturating_add(vlen) > size {
            panic!("key/value shard is corrupt: entry at {e} is longer than its block");
        }
        // SAFETY: forwarded.
        unsafe { self.mem.bytes(e + ENTRY_HDR + klen, vlen) }
    }

    /// Allocate and fill an entry block for `key` and the concatenated
    /// `parts`, recorded in the slot's `pending[0]`.
    fn make_entry(&self, slot: &Slot, h: u64, key: &[u8], parts: &[&[u8]]) -> Result<u64, KvError> {
        let vlen: usize = parts.iter().map(|p| p.len()).sum();
        let need = block_size_for(key.len(), vlen).ok_or(KvError::Full {
            needed: u64::MAX,
            used: 0,
            heap: self.g.heap_len(),
        })?;
        let s = self.slot_off(slot.index);
        let e = self.alloc(need, s + C_PENDING0)?;
        crash_point();
        self.mem.set(e + E_NEXT, 0);
        self.fill_entry(e, h, key, parts);
        Ok(e)
    }

    /// Write an entry's hash, lengths, key and value (not its `next`).
    fn fill_entry(&self, e: u64, h: u64, key: &[u8], parts: &[&[u8]]) {
        let vlen: usize = parts.iter().map(|p| p.len()).sum();
        self.mem.set(e + E_HASH, h);
        self.mem.set(e + E_KLEN, key.len() as u64);
        self.mem.set(e + E_VLEN, vlen as u64);
        let mut at = e + ENTRY_HDR;
        // SAFETY: the block is ours (in flight, recorded in our slot).
        unsafe { self.mem.write(at, key) };
        at += key.len() as u64;
        for p in parts {
            // SAFETY: as above.
            unsafe { self.mem.write(at, p) };
            at += p.len() as u64;
        }
        crash_point();
    }

    /// Link entry `e` (in `pending[0]`) in place of `old` or at the head of
    /// bucket `b`, moving `old` to `pending[1]` (stripe lock held).
    fn link(&self, stripe: u64, s: u64, b: u64, e: u64, found: Option<(u64, u64)>) {
        self.link_from(stripe, s, b, e, found, (s + C_PENDING0, 0));
    }

    /// [`Shard::link`], taking `e` off `src` (the slot word holding it,
    /// and the value it gets).
    fn link_from(&self, stripe: u64, s: u64, b: u64, e: u64, found: Option<(u64, u64)>, src: (u64, u64)) {
        let mut t = Txn::<STRIPE_JOURNAL_CAP>::new();
        match found {
            Some((link, old)) => {
                t.set(e + E_NEXT, self.mem.get(old + E_NEXT));
                t.set(link, e);
                t.set(old + E_NEXT, self.mem.get(s + C_PENDING1));
                t.set(s + C_PENDING1, old);
            }
            None => {
                let head = self.bucket_off(b);
                t.set(e + E_NEXT, self.mem.get(head));
                t.set(head, e);
                t.set(stripe + S_COUNT, self.mem.get(stripe + S_COUNT) + 1);
            }
        }
        t.set(src.0, src.1);
        t.commit(&self.mem, stripe + S_JOURNAL);
    }

    /// Unlink entry `old` and move it to `pending[1]` (stripe lock held).
    fn unlink(&self, stripe: u64, s: u64, link: u64, old: u64) {
        let mut t = Txn::<STRIPE_JOURNAL_CAP>::new();
        t.set(link, self.mem.get(old + E_NEXT));
        t.set(old + E_NEXT, self.mem.get(s + C_PENDING1));
        t.set(s + C_PENDING1, old);
        t.set(stripe + S_COUNT, self.mem.get(stripe + S_COUNT) - 1);
        t.commit(&self.mem, stripe + S_JOURNAL);
    }

    /// Whether writes are refused (a freeze is complete or in progress).
    fn frozen(&self) -> bool {
        // Relaxed: writers read it under their stripe lock, which orders it
        // after `freeze`'s store; readers use `frozen_for_readers`.
        self.mem.w(H_FROZEN).load(Ordering::Relaxed) != FROZEN_NO
    }

    /// Whether a freeze is complete: no write is in progress or can start,
    /// so reads may skip the locks.
    fn frozen_for_readers(&self) -> bool {
        // SYNC POINT freeze-done: pairs with the Release store of
        // FROZEN_DONE in `freeze`, made after taking every stripe lock, so
        // every write made before the freeze is visible.
        self.mem.w(H_FROZEN).load(Ordering::Acquire) == FROZEN_DONE
    }

    fn check_slot(&self, slot: &Slot) {
        assert!(slot.index < self.g.nslots, "slot of another shard");
    }

    /// Store `key` = concatenation of `parts`. Allocates first, links
    /// second: on [`KvError::Full`] the previous value is intact. With
    /// `if_absent`, an existing key is left alone ([`Put::Exists`]).
    pub fn put_parts(&self, slot: &Slot, key: &[u8], parts: &[&[u8]], if_absent: bool) -> Result<Put, KvError> {
        self.check_slot(slot);
        if self.frozen() {
            return Err(KvError::Frozen);
        }
        let h = key_hash(key);
        let s = self.slot_off(slot.index);
        let e = self.make_entry(slot, h, key, parts)?;
        let b = self.bucket_of(h);
        let stripe = self.stripe_of_bucket(b);
        let out = {
            let _g = self.lock_stripe(stripe);
            crash_point();
            if self.frozen() {
                Err(KvError::Frozen)
            } else {
                let found = self.find(b, h, key);
                if found.is_some() && if_absent {
                    Ok(Put::Exists)
                } else {
                    self.link(stripe, s, b, e, found);
                    Ok(if found.is_some() { Put::Replaced } else { Put::Inserted })
                }
            }
        };
        crash_point();
        // Not linked (frozen, or exists): give the block back.
        self.free_pending(s);
        out
    }

    /// Store `key` = `value`.
    pub fn put(&self, slot: &Slot, key: &[u8], value: &[u8]) -> Result<Put, KvError> {
        self.put_parts(slot, key, &[value], false)
    }

    /// Run `f` on the value of `key` (under the stripe lock, or lock-free in
    /// a frozen shard). `None` if absent.
    pub fn get_with<T>(&self, slot: &Slot, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        self.check_slot(slot);
        let h = key_hash(key);
        let b = self.bucket_of(h);
        if self.frozen_for_readers() {
            let reading = self.mem.w(self.slot_off(slot.index) + C_READING);
            // Relaxed + SeqCst fence: the flag is visible to `unfreeze`
            // before we read the frozen flag again (Dekker's pattern with
            // its store-fence-load).
            reading.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.frozen_for_readers() {
                let r = self.find(b, h, key).map(|(_, e)| {
                    // SAFETY: frozen, and `unfreeze` waits for our flag.
                    f(unsafe { self.value_of(e) })
                });
                // SYNC POINT frozen-read: Release orders our reads before
                // the flag drops; `unfreeze` waits for it with Acquire.
                reading.store(0, Ordering::Release);
                return r;
            }
            // Release: as above.
            reading.store(0, Ordering::Release);
        }
        let _g = self.lock_stripe(self.stripe_of_bucket(b));
        self.find(b, h, key).map(|(_, e)| {
            // SAFETY: we hold the stripe lock.
            f(unsafe { self.value_of(e) })
        })
    }

    /// A copy of `key`'s value.
    pub fn get(&self, slot: &Slot, key: &[u8]) -> Option<Vec<u8>> {
        self.get_with(slot, key, |v| v.to_vec())
    }

    /// Whether `key` is present.
    pub fn contains(&self, slot: &Slot, key: &[u8]) -> bool {
        self.get_with(slot, key, |_| ()).is_some()
    }

    /// Remove `key`, running `f` on its value first. `None` if absent.
    pub fn take_with<T>(&self, slot: &Slot, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, KvError> {
        self.check_slot(slot);
        if self.frozen() {
            return Err(KvError::Frozen);
        }
        let h = key_hash(key);
        let b = self.bucket_of(h);
        let stripe = self.stripe_of_bucket(b);
        let s = self.slot_off(slot.index);
        let r = {
            let _g = self.lock_stripe(stripe);
            if self.frozen() {
                return Err(KvError::Frozen);
            }
            match self.find(b, h, key) {
                None => None,
                Some((link, e)) => {
                    // SAFETY: we hold the stripe lock.
                    let r = f(unsafe { self.value_of(e) });
                    self.unlink(stripe, s, link, e);
                    Some(r)
                }
            }
        };
        crash_point();
        self.free_chain(s + C_PENDING1);
        Ok(r)
    }

    /// Remove `key`; whether it was present.
    pub fn delete(&self, slot: &Slot, key: &[u8]) -> Result<bool, KvError> {
        Ok(self.take_with(slot, key, |_| ())?.is_some())
    }

    /// Atomically read-modify-write `key`: `f` sees the current value (or
    /// `None`) under the stripe lock and says what to do; `map` turns the
    /// current value into the result. A new value is allocated while the
    /// lock is held; if it does not fit, nothing changes.
    pub fn update<T>(
        &self,
        slot: &Slot,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> (Update, T),
    ) -> Result<T, KvError> {
        self.check_slot(slot);
        if self.frozen() {
            return Err(KvError::Frozen);
        }
        let h = key_hash(key);
        let b = self.bucket_of(h);
        let stripe = self.stripe_of_bucket(b);
        let s = self.slot_off(slot.index);
        let out = {
            let _g = self.lock_stripe(stripe);
            if self.frozen() {
                return Err(KvError::Frozen);
            }
            let found = self.find(b, h, key);
            // SAFETY: we hold the stripe lock.
            let cur = found.map(|(_, e)| unsafe { self.value_of(e) });
            let (u, r) = f(cur);
            match u {
                Update::Keep => {}
                Update::Remove => {
                    if let Some((link, e)) = found {
                        self.unlink(stripe, s, link, e);
                    }
                }
                Update::Set(v) => {
                    // Stripe lock, then allocator lock: the allowed order.
                    let e = self.make_entry(slot, h, key, &[&v])?;
                    self.link(stripe, s, b, e, found);
                }
            }
            r
        };
        crash_point();
        self.free_chain(s + C_PENDING1);
        Ok(out)
    }

    /// Number of entries (a sum over stripes; exact when no write runs).
    pub fn len(&self) -> u64 {
        (0..self.g.nstripes)
            // Relaxed: a snapshot of counters.
            .map(|i| self.mem.w(self.g.stripes_off + i * STRIPE_LEN + S_COUNT).load(Ordering::Relaxed))
            .sum()
    }

    /// Whether the shard has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `f(key, value)` for every entry, one stripe at a time (each
    /// stripe is a consistent snapshot; `f` runs under its lock).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for st in 0..self.g.nstripes {
            let stripe = self.g.stripes_off + st * STRIPE_LEN;
            let _g = if self.frozen_for_readers() { None } else { Some(self.lock_stripe(stripe)) };
            let mut b = st;
            while b < self.g.nbuckets {
                let mut e = self.mem.get(self.bucket_off(b));
                while e != 0 {
                    self.check_block(e);
                    let klen = self.mem.get(e + E_KLEN);
                    // SAFETY: we hold the stripe lock (or the shard is frozen
                    // and is not unfrozen under a `for_each`: see `unfreeze`).
                    let (k, v) = unsafe { (self.mem.bytes(e + ENTRY_HDR, klen), self.value_of(e)) };
                    f(k, v);
                    e = self.mem.get(e + E_NEXT);
                }
                b += self.g.nstripes;
            }
        }
    }

    /// Every key.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.for_each(|k, _| out.push(k.to_vec()));
        out
    }

    /// Remove every entry; returns how many were removed.
    pub fn clear(&self, slot: &Slot) -> Result<u64, KvError> {
        self.check_slot(slot);
        if self.frozen() {
            return Err(KvError::Frozen);
        }
        let s = self.slot_off(slot.index);
        let mut removed = 0;
        for st in 0..self.g.nstripes {
            let stripe = self.g.stripes_off + st * STRIPE_LEN;
            {
                let _g = self.lock_stripe(stripe);
                if self.frozen() {
                    return Err(KvError::Frozen);
                }
                let mut b = st;
                while b < self.g.nbuckets {
                    let head = self.bucket_off(b);
                    let first = self.mem.get(head);
                    if first != 0 {
                        let mut last = first;
                        let mut n = 1;
                        loop {
                            let nx = self.mem.get(self.check_block(last) + E_NEXT);
                            if nx == 0 {
                                break;
                            }
                            last = nx;
                            n += 1;
                        }
                        let mut t = Txn::<STRIPE_JOURNAL_CAP>::new();
                        t.set(head, 0);
                        t.set(last + E_NEXT, self.mem.get(s + C_PENDING1));
                        t.set(s + C_PENDING1, first);
                        t.set(stripe + S_COUNT, self.mem.get(stripe + S_COUNT) - n);
                        t.commit(&self.mem, stripe + S_JOURNAL);
                        removed += n;
                    }
                    b += self.g.nstripes;
                }
            }
            self.free_chain(s + C_PENDING1);
        }
        Ok(removed)
    }

    // ---- freezing -------------------------------------------------------------

    /// Make the shard read-only: writes fail with [`KvError::Frozen`] and
    /// gets take no locks. Waits for writes in progress to finish.
    pub fn freeze(&self) {
        // SeqCst: ordered with the readers' fence protocol. From here on
        // writes are refused, but some may still be in progress.
        self.mem.w(H_FROZEN).store(FROZEN_PENDING, Ordering::SeqCst);
        // Writers check the flag under their stripe lock: after taking and
        // releasing every stripe lock, no write is in progress.
        self.sweep_locks();
        // SYNC POINT freeze-done: Release publishes every write we saw
        // through the sweep's lock hand-overs to lock-free readers.
        self.mem.w(H_FROZEN).store(FROZEN_DONE, Ordering::SeqCst);
    }

    /// Make the shard writable again. Waits until no lock-free read is in
    /// progress (a reader that died mid-read is skipped).
    pub fn unfreeze(&self) {
        // SeqCst + fence: a reader either sees the flag cleared (and takes
        // the lock) or its reading flag is seen below.
        self.mem.w(H_FROZEN).store(FROZEN_NO, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // Relaxed: see `claim_slot`.
        let hwm = self.mem.w(H_SLOT_HWM).load(Ordering::Relaxed).min(self.g.nslots);
        for i in 0..hwm {
            let s = self.slot_off(i);
            let mut spins = 0u32;
            // SYNC POINT frozen-read: pairs with the reader's Release.
            while self.mem.w(s + C_READING).load(Ordering::Acquire) != 0 {
                spins += 1;
                if spins % 1024 == 0 {
                    let st = self.mem.get(s + C_STAMP);
                    if st == 0 || !ProcessId::from_stamp(st).is_some_and(|p| p.is_alive()) {
                        break;
                    }
                    #[cfg(not(dragon_loom))]
                    std::thread::sleep(Duration::from_micros(50));
                    #[cfg(dragon_loom)]
                    shm_primitives::sync::yield_now();
                } else {
                    shm_primitives::sync::spin_loop();
                }
            }
        }
    }

    /// Whether the shard is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen()
    }

    // ---- request mailbox (durable mode) -----------------------------------------

    /// Post a request to the manager: `key` and `value` go into a block in
    /// flight (the slot's `pending[0]`), `op` into the slot, and the
    /// doorbell rings. Returns the request's sequence number for
    /// [`Shard::wait_reply`]. Fails with [`KvError::Full`] (nothing posted)
    /// if the block does not fit.
    pub fn post_request(&self, slot: &Slot, op: u64, key: &[u8], value: &[u8]) -> Result<u32, KvError> {
        self.check_slot(slot);
        let s = self.slot_off(slot.index);
        self.make_entry(slot, key_hash(key), key, &[value])?;
        self.mem.set(s + C_REQ_OP, op);
        // Relaxed: only this client writes its request sequence.
        let seq = self.mem.w32(s + C_REQ_SEQ).load(Ordering::Relaxed).wrapping_add(1);
        // SYNC POINT shard-request: Release publishes the request block and op
        // to the manager's Acquire load in `requests`.
        self.mem.w32(s + C_REQ_SEQ).store(seq, Ordering::Release);
        self.ring_doorbell();
        Ok(seq)
    }

    /// Post a batch of puts to the manager: every pair goes into an entry
    /// block in flight (chained in the slot), then `op` is posted as by
    /// [`Shard::post_request`]. Fails with [`KvError::Full`] (nothing
    /// posted, the blocks given back) if the batch does not fit.
    pub fn post_batch(&self, slot: &Slot, op: u64, pairs: &[(&[u8], &[u8])]) -> Result<u32, KvError> {
        self.check_slot(slot);
        let s = self.slot_off(slot.index);
        // Last pair first: the chain then reads in the caller's order.
        for (k, v) in pairs.iter().rev() {
            let need = block_size_for(k.len(), v.len()).ok_or(KvError::Full {
                needed: u64::MAX,
                used: 0,
                heap: self.g.heap_len(),
            })?;
            match self.alloc_to(need, s + C_BATCH, true) {
                Ok(e) => self.fill_entry(e, key_hash(k), k, &[v]),
                Err(e) => {
                    self.free_chain(s + C_BATCH);
                    return Err(e);
                }
            }
        }
        self.mem.set(s + C_REQ_OP, op);
        // Relaxed: only this client writes its request sequence.
        let seq = self.mem.w32(s + C_REQ_SEQ).load(Ordering::Relaxed).wrapping_add(1);
        // SYNC POINT shard-request: as in `post_request`.
        self.mem.w32(s + C_REQ_SEQ).store(seq, Ordering::Release);
        self.ring_doorbell();
        Ok(seq)
    }

    /// Run `f(key, value)` on every pair of a batch request, in order.
    pub fn batch_data(&self, r: &Request, mut f: impl FnMut(&[u8], &[u8])) {
        let mut e = self.mem.get(self.slot_off(r.slot) + C_BATCH);
        while e != 0 {
            self.check_block(e);
            let klen = self.mem.get(e + E_KLEN);
            // SAFETY: the blocks are the waiting client's, in flight.
            let (k, v) = unsafe { (self.mem.bytes(e + ENTRY_HDR, klen), self.value_of(e)) };
            f(k, v);
            e = self.mem.get(e + E_NEXT);
        }
    }

    /// Link every entry of a batch request, in order (each replaced entry
    /// goes to the client's pending chain). Returns how many were linked.
    pub fn apply_batch(&self, r: &Request) -> Result<u64, KvError> {
        let s = self.slot_off(r.slot);
        let mut n = 0;
        loop {
            let e = self.mem.get(s + C_BATCH);
            if e == 0 {
                return Ok(n);
            }
            self.check_block(e);
            let h = self.mem.get(e + E_HASH);
            let b = self.bucket_of(h);
            let stripe = self.stripe_of_bucket(b);
            let _g = self.lock_stripe(stripe);
            if self.frozen() {
                return Err(KvError::Frozen);
            }
            let klen = self.mem.get(e + E_KLEN);
            // SAFETY: the block is the waiting client's, in flight.
            let found = self.find(b, h, unsafe { self.mem.bytes(e + ENTRY_HDR, klen) });
            let next = self.mem.get(e + E_NEXT);
            self.link_from(stripe, s, b, e, found, (s + C_BATCH, next));
            n += 1;
        }
    }

    /// Wait up to `timeout` for the reply to request `seq`. On a reply, the
    /// request's blocks are freed and the result and value returned; `None`
    /// if the time ran out (call again: the request stays posted).
    pub fn wait_reply(&self, slot: &Slot, seq: u32, timeout: Duration) -> Option<(u64, u64)> {
        let s = self.slot_off(slot.index);
        let ack = self.mem.w32(s + C_ACK_SEQ);
        let deadline = std::time::Instant::now() + timeout;
        let mut spins = 0;
        loop {
            // SYNC POINT shard-reply: pairs with the Release in `reply`: the
            // result and everything the manager applied are visible.
            let a = ack.load(Ordering::Acquire);
            if a == seq {
                let r = (self.mem.get(s + C_RESULT), self.mem.get(s + C_VALUE));
                self.free_pending(s);
                return Some(r);
            }
            if spins < 64 {
                spins += 1;
                shm_primitives::sync::spin_loop();
                continue;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            futex::wait(ack, a, Some(deadline - now));
        }
    }

    /// The requests waiting for the manager, in slot order.
    pub fn requests(&self, out: &mut Vec<Request>) {
        out.clear();
        // Relaxed: see `claim_slot`.
        let hwm = self.mem.w(H_SLOT_HWM).load(Ordering::Relaxed).min(self.g.nslots);
        for i in 0..hwm {
            let s = self.slot_off(i);
            // SYNC POINT shard-request: pairs with the Release in `post_request`.
            let seq = self.mem.w32(s + C_REQ_SEQ).load(Ordering::Acquire);
            // Relaxed: only the manager writes the ack.
            if seq != self.mem.w32(s + C_ACK_SEQ).load(Ordering::Relaxed) {
                let mut block = self.mem.get(s + C_PENDING0);
                if block == 0 {
                    block = self.mem.get(s + C_BATCH);
                }
                if block != 0 {
                    out.push(Request { slot: i, seq, op: self.mem.get(s + C_REQ_OP), block });
                }
            }
        }
    }

    /// Run `f(key, value)` on a request's data.
    pub fn request_data<T>(&self, r: &Request, f: impl FnOnce(&[u8], &[u8]) -> T) -> T {
        let e = self.check_block(r.block);
        let klen = self.mem.get(e + E_KLEN);
        // SAFETY: the block is the waiting client's, in flight: nobody
        // writes it until the client has its reply.
        let (k, v) = unsafe { (self.mem.bytes(e + ENTRY_HDR, klen), self.value_of(e)) };
        f(k, v)
    }

    /// Whether the request's key is present.
    pub fn request_key_present(&self, r: &Request) -> bool {
        let e = self.check_block(r.block);
        let h = self.mem.get(e + E_HASH);
        let b = self.bucket_of(h);
        let _g = self.lock_stripe(self.stripe_of_bucket(b));
        self.request_data(r, |k, _| self.find(b, h, k).is_some())
    }

    /// Overwrite a request's value with `v` of the same length (the manager
    /// computing a new value in place, e.g. an atomic add).
    pub fn rewrite_request_value(&self, r: &Request, v: &[u8]) -> Result<(), KvError> {
        let e = self.check_block(r.block);
        let klen = self.mem.get(e + E_KLEN);
        if self.mem.get(e + E_VLEN) != v.len() as u64 {
            return Err(KvError::Corrupt("request value rewritten with another length".into()));
        }
        // SAFETY: the block is the waiting client's, in flight; only the
        // manager touches it until it replies.
        unsafe { self.mem.write(e + ENTRY_HDR + klen, v) };
        Ok(())
    }

    /// Link a request's block as its key's entry (the client's block
    /// becomes the entry; the replaced one goes to the client's pending
    /// chain, freed when it takes the reply).
    pub fn apply_put(&self, r: &Request) -> Result<Put, KvError> {
        let e = self.check_block(r.block);
        let s = self.slot_off(r.slot);
        let h = self.mem.get(e + E_HASH);
        let b = self.bucket_of(h);
        let stripe = self.stripe_of_bucket(b);
        let _g = self.lock_stripe(stripe);
        if self.frozen() {
            return Err(KvError::Frozen);
        }
        let found = self.request_data(r, |k, _| self.find(b, h, k));
        self.link(stripe, s, b, e, found);
        Ok(if found.is_some() { Put::Replaced } else { Put::Inserted })
    }

    /// Remove a request's key (the entry goes to the client's pending chain).
    pub fn apply_delete(&self, r: &Request) -> Result<bool, KvError> {
        let e = self.check_block(r.block);
        let s = self.slot_off(r.slot);
        let h = self.mem.get(e + E_HASH);
        let b = self.bucket_of(h);
        let stripe = self.stripe_of_bucket(b);
        let _g = self.lock_stripe(stripe);
        if self.frozen() {
            return Err(KvError::Frozen);
        }
        Ok(match self.request_data(r, |k, _| self.find(b, h, k)) {
            Some((link, old)) => {
                self.unlink(stripe, s, link, old);
                true
            }
            None => false,
        })
    }

    /// Answer a request: the client's wait ends with `result` and `value`.
    pub fn reply(&self, r: &Request, result: u64, value: u64) {
        let s = self.slot_off(r.slot);
        self.mem.set(s + C_RESULT, result);
        self.mem.set(s + C_VALUE, value);
        let ack = self.mem.w32(s + C_ACK_SEQ);
        // SYNC POINT shard-reply: Release publishes the result and the applied
        // request to the client's Acquire load in `wait_reply`.
        ack.store(r.seq, Ordering::Release);
        futex::wake(ack, 1);
    }

    // ---- inspection -------------------------------------------------------------

    /// Counters.
    pub fn stats(&self) -> ShardStats {
        // Relaxed: see `claim_slot`.
        let hwm = self.mem.w(H_SLOT_HWM).load(Ordering::Relaxed).min(self.g.nslots);
        ShardStats {
            entries: self.len(),
            used_bytes: self.mem.get(H_USED),
            heap_bytes: self.g.heap_len(),
            total_bytes: self.g.len,
            clients: (0..hwm).filter(|&i| self.mem.get(self.slot_off(i) + C_STAMP) != 0).count() as u64,
            frozen: self.frozen(),
        }
    }

    /// Walk the whole heap and every chain (taking every lock), checking
    /// boundary tags, free lists and counters. For tests and diagnostics.
    pub fn check(&self) -> Result<HeapReport, KvError> {
        let _locks: Vec<Guard<'_>> =
            (0..self.g.nstripes).map(|i| self.lock_stripe(self.g.stripes_off + i * STRIPE_LEN)).collect();
        let _a = self.lock_alloc();
        let bad = |m: String| Err(KvError::Corrupt(m));
        let mut r = HeapReport::default();
        let mut b = self.g.heap_off;
        let mut prev_free = false;
        let mut free_set = std::collections::HashSet::new();
        let mut used_set = std::collections::HashSet::new();
        while b < self.g.heap_end - 16 {
            let h = self.mem.get(b);
            let size = h & SIZE_MASK;
            if size < MIN_BLOCK || b + size > self.g.heap_end - 16 {
                return bad(format!("block at {b} has size {size}"));
            }
            if (h & PREV_FREE != 0) != prev_free {
                return bad(format!("block at {b}: PREV_FREE bit is wrong"));
            }
            if h & USED != 0 {
                r.used_blocks += 1;
                r.used_bytes += size;
                used_set.insert(b);
                prev_free = false;
            } else {
                if prev_free {
                    return bad(format!("two free blocks in a row at {b}"));
                }
                if self.mem.get(b + size - 8) != size {
                    return bad(format!("free block at {b}: footer differs"));
                }
                r.free_blocks += 1;
                r.free_bytes += size;
                free_set.insert(b);
                prev_free = true;
            }
            b += size;
        }
        if (self.mem.get(self.g.heap_end - 16) & PREV_FREE != 0) != prev_free {
            return bad("sentinel PREV_FREE bit is wrong".into());
        }
        if r.used_bytes != self.mem.get(H_USED) {
            return bad(format!("used bytes {} but the counter says {}", r.used_bytes, self.mem.get(H_USED)));
        }
        let mut listed = 0;
        for c in 0..NCLASS {
            let mut prev = 0;
            let mut f = self.mem.get(Self::head_off(c));
            while f != 0 {
                if !free_set.contains(&f) {
                    return bad(format!("free list {c} holds {f}, not a free block"));
                }
                if class_of(self.mem.get(f) & SIZE_MASK) != c || self.mem.get(f + 16) != prev {
                    return bad(format!("free list {c} is mislinked at {f}"));
                }
                listed += 1;
                if listed > r.free_blocks {
                    return bad("free lists loop".into());
                }
                prev = f;
                f = self.mem.get(f + 8);
            }
        }
        if listed != r.free_blocks {
            return bad(format!("{} free blocks, {listed} listed", r.free_blocks));
        }
        let mut seen = std::collections::HashSet::new();
        for st in 0..self.g.nstripes {
            let stripe = self.g.stripes_off + st * STRIPE_LEN;
            let mut n = 0;
            let mut b = st;
            while b < self.g.nbuckets {
                let mut e = self.mem.get(self.bucket_off(b));
                while e != 0 {
                    if !used_set.contains(&e) || !seen.insert(e) {
                        return bad(format!("entry {e} is not a used block, or is linked twice"));
                    }
                    if self.bucket_of(self.mem.get(e + E_HASH)) != b {
                        return bad(format!("entry {e} is in the wrong bucket"));
                    }
                    n += 1;
                    e = self.mem.get(e + E_NEXT);
                }
                b += self.g.nstripes;
            }
            if n != self.mem.get(stripe + S_COUNT) {
                return bad(format!("stripe {st} counts {} entries, holds {n}", self.mem.get(stripe + S_COUNT)));
            }
            if self.mem.get(stripe + S_JOURNAL) != 0 {
                return bad(format!("stripe {st} has a committed journal"));
            }
            r.entries += n;
        }
        for i in 0..self.g.nslots {
            let s = self.slot_off(i);
            let p0 = self.mem.get(s + C_PENDING0);
            if p0 != 0 {
                if !used_set.contains(&p0) || !seen.insert(p0) {
                    return bad(format!("slot {i} holds {p0}, not an unlinked used block"));
                }
                r.pending_blocks += 1;
            }
            for w in [C_PENDING1, C_BATCH] {
                let mut e = self.mem.get(s + w);
                while e != 0 {
                    if !used_set.contains(&e) || !seen.insert(e) {
                        return bad(format!("slot {i} chains {e}, not an unlinked used block"));
                    }
                    r.pending_blocks += 1;
                    e = self.mem.get(e + E_NEXT);
                }
            }
        }
        if seen.len() as u64 != r.used_blocks {
            return bad(format!(
                "{} used blocks but {} are entries or in flight: leaked blocks",
                r.used_blocks,
                seen.len()
            ));
        }
        Ok(r)
    }
}
