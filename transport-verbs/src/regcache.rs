//! The registration cache: registered buffers for large messages, kept
//! registered between uses.
//!
//! Registering memory is expensive (the adapter pins and maps the pages),
//! so the buffers large messages travel in (a sender's source, a
//! receiver's RDMA read target) are taken from this cache and given back
//! to it, still registered, when the transfer (or the application's use of
//! a received message) ends. Buffers come in power-of-two size classes
//! from [`CacheLimits::min_size`] up; a request is served by an idle buffer
//! of its class (a hit) or by a new one, allocated and registered (a
//! miss).
//!
//! Idle buffers are bounded ([`CacheLimits::max_idle`] buffers,
//! [`CacheLimits::max_idle_bytes`] bytes): when a returned buffer takes the
//! idle set over either bound, the least recently used idle buffers are
//! evicted: deregistered, then freed. Buffers in use are never evicted; how
//! many there are is bounded by the protocol (credits), not here. Dropping
//! the cache deregisters every idle buffer; a buffer still in use is
//! deregistered when its last user lets go.

use crate::verbs::{Access, Buffer, MemoryRegion, Port, VerbsError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bounds of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Smallest buffer (requests below it get one of this size).
    pub min_size: usize,
    /// Idle buffers kept at most.
    pub max_idle: usize,
    /// Idle bytes kept at most.
    pub max_idle_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> CacheLimits {
        CacheLimits { min_size: 64 << 10, max_idle: 32, max_idle_bytes: 64 << 20 }
    }
}

/// What the cache did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Requests served by an idle buffer.
    pub hits: u64,
    /// Requests that registered a new buffer.
    pub misses: u64,
    /// Idle buffers deregistered to stay within the limits.
    pub evictions: u64,
    /// Buffers idle now.
    pub idle: usize,
    /// Bytes idle now.
    pub idle_bytes: usize,
    /// Buffers in use now.
    pub in_use: usize,
}

struct Entry {
    // Dropped in this order: the registration, then the memory.
    mr: Box<dyn MemoryRegion>,
    buf: Buffer,
    size: usize,
    idle_since: Option<u64>,
}

struct Inner {
    entries: HashMap<u64, Entry>,
    next_id: u64,
    tick: u64,
    stats: CacheStats,
}

struct Shared {
    port: Arc<dyn Port>,
    limits: CacheLimits,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A registration cache on one port.
#[derive(Clone)]
pub struct RegCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RegCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegCache").field("stats", &self.stats()).finish()
    }
}

/// The size class of a request of `len` bytes.
pub fn class_of(len: usize, min: usize) -> usize {
    len.max(min).max(1).next_power_of_two()
}

impl RegCache {
    /// An empty cache on `port`.
    pub fn new(port: Arc<dyn Port>, limits: CacheLimits) -> RegCache {
        RegCache {
            shared: Arc::new(Shared {
                port,
                limits,
                inner: Mutex::new(Inner { entries: HashMap::new(), next_id: 1, tick: 0, stats: CacheStats::default() }),
            }),
        }
    }

    /// What it did so far and holds now.
    pub fn stats(&self) -> CacheStats {
        self.shared.lock().stats
    }

    /// A registered buffer of at least `len` bytes, readable and writable
    /// by a peer, in use until the lease is dropped.
    pub fn get(&self, len: usize) -> Result<Lease, VerbsError> {
        let class = class_of(len, self.shared.limits.min_size);
        {
            let mut inner = self.shared.lock();
            let hit = inner
                .entries
                .iter()
                .filter(|(_, e)| e.size == class && e.idle_since.is_some())
                .max_by_key(|(_, e)| e.idle_since)
                .map(|(&id, _)| id);
            if let Some(id) = hit {
                let e = inner.entries.get_mut(&id).expect("found");
                e.idle_since = None;
                let lease = Lease::of(&self.shared, id, e);
                inner.stats.hits += 1;
                inner.stats.idle -= 1;
                inner.stats.idle_bytes -= class;
                inner.stats.in_use += 1;
                return Ok(lease);
            }
        }
        // A miss: allocate and register without holding the lock.
        let (buf, mr) = match self.register(class) {
            Ok(x) => x,
            Err(VerbsError::Exhausted(_)) => {
                // Room may come from the idle buffers: give them all back.
                self.evict_idle(0, 0);
                self.register(class)?
            }
            Err(e) => return Err(e),
        };
        let mut inner = self.shared.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let e = Entry { mr, buf, size: class, idle_since: None };
        let lease = Lease::of(&self.shared, id, &e);
        inner.entries.insert(id, e);
        inner.stats.misses += 1;
        inner.stats.in_use += 1;
        Ok(lease)
    }

    fn register(&self, class: usize) -> Result<(Buffer, Box<dyn MemoryRegion>), VerbsError> {
        let buf = self.shared.port.alloc(class)?;
        let access = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        // SAFETY: the buffer lives in the same entry as the registration
        // and is dropped after it (field order of Entry).
        let mr = unsafe { self.shared.port.register(buf.ptr(), buf.len(), access)? };
        Ok((buf, mr))
    }

    /// Evict least recently used idle buffers until at most `max` buffers
    /// and `max_bytes` bytes are idle.
    fn evict_idle(&self, max: usize, max_bytes: usize) {
        evict(&self.shared, max, max_bytes);
    }
}

fn evict(shared: &Shared, max: usize, max_bytes: usize) {
    let mut gone = Vec::new();
    {
        let mut inner = shared.lock();
        while inner.stats.idle > max || inner.stats.idle_bytes > max_bytes {
            let Some(id) =
                inner.entries.iter().filter_map(|(&id, e)| e.idle_since.map(|t| (t, id))).min().map(|(_, id)| id)
            else {
                break;
            };
            let e = inner.entries.remove(&id).expect("found");
            inner.stats.idle -= 1;
            inner.stats.idle_bytes -= e.size;
            inner.stats.evictions += 1;
            gone.push(e);
        }
    }
    // Deregistered and freed outside the lock.
    drop(gone);
}

/// A registered buffer taken from a [`RegCache`].
pub struct Lease {
    shared: Arc<Shared>,
    id: u64,
    ptr: *mut u8,
    addr: u64,
    size: usize,
    lkey: u32,
    rkey: u32,
}

// SAFETY: the lease names memory owned by the cache's entry, which stays
// allocated and registered while the lease lives; the lease itself is
// plain data.
unsafe impl Send for Lease {}
// SAFETY: as above; concurrent access to the bytes is the protocol's
// business (one owner at a time).
unsafe impl Sync for Lease {}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("addr", &self.addr).field("size", &self.size).finish()
    }
}

impl Lease {
    fn of(shared: &Arc<Shared>, id: u64, e: &Entry) -> Lease {
        Lease {
            shared: shared.clone(),
            id,
            ptr: e.buf.ptr(),
            addr: e.mr.addr(),
            size: e.size,
            lkey: e.mr.lkey(),
            rkey: e.mr.rkey(),
        }
    }

    /// Its capacity.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Its address, as work requests name it.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Its local key.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// Its remote key.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// Copy `parts` in, one after the other, from the start.
    ///
    /// Panics if they do not fit. The caller owns the bytes now (no
    /// transfer in progress on them).
    pub fn fill(&mut self, parts: &[&[u8]]) {
        let mut at = 0;
        for p in parts {
            assert!(at + p.len() <= self.size, "lease overflow");
            // SAFETY: in bounds (checked); the lease's memory is exclusively
            // ours (`&mut self`, no transfer in progress).
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), self.ptr.add(at), p.len()) };
            at += p.len();
        }
    }

    /// The first `len` bytes.
    ///
    /// # Safety
    ///
    /// No transfer writes them while the slice lives.
    pub unsafe fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.size);
        // SAFETY: in bounds; no writer meanwhile (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr, len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(e) = inner.entries.get_mut(&self.id) {
                e.idle_since = Some(tick);
                inner.stats.in_use -= 1;
                inner.stats.idle += 1;
                inner.stats.idle_bytes += self.size;
            }
        }
        let l = self.shared.limits;
        evict(&self.shared, l.max_idle, l.max_idle_bytes);
    }
}

/// The first `len` bytes of a lease, as received-message bytes: the lease
/// goes back to the cache when the last of them is dropped.
#[derive(Debug)]
pub struct LeasedBytes {
    lease: Lease,
    len: usize,
}

impl LeasedBytes {
    /// The first `len` bytes of `lease`, which nothing writes any more.
    pub fn new(lease: Lease, len: usize) -> LeasedBytes {
        assert!(len <= lease.size());
        LeasedBytes { lease, len }
    }
}

impl AsRef<[u8]> for LeasedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: nothing writes a lease handed out as received bytes (the
        // read into it completed; the cache reuses it only after this drops).
        unsafe { self.lease.bytes(self.len) }
    }
}
