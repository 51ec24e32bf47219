//! A simulated RDMA fabric: the [`crate::verbs`] interface between
//! processes of one machine, in shared memory, with injectable failures.
//!
//! It exists because the protocol must be tested where there is no RDMA
//! device, and it models what the protocol depends on:
//!
//! - **Memory regions are shared memory.** [`Port::alloc`] makes a segment
//!   of the run (`/dev/shm`); only such memory can be registered. A
//!   registration is a row of the protection domain's table (its own
//!   segment): key, address, length, rights, and the segment and offset
//!   that back it. A peer resolves a remote key through that table, checks
//!   bounds and rights, and copies into or out of the segment: the
//!   one-sided access of an adapter. A deregistered key is refused.
//! - **Completion queues and receive queues are channels** (this project's
//!   shared-memory channels): the work requests posted on a receive queue
//!   wait in a channel of their own; completions are records in the
//!   completion queue's channel, whose wait is the completion channel.
//! - **The initiator's adapter is its posting thread.** A send, RDMA write
//!   with immediate data or RDMA read is carried out in `post_send`: the
//!   data is copied, the peer's next posted receive consumed, the
//!   completions pushed to both completion queues, in posting order (the
//!   order of a reliable connection).
//! - **Errors as an adapter reports them**: a send with no receive posted
//!   at the peer completes with `RnrRetryExceeded` (a retry count of
//!   zero); a peer whose process died, whose queue pair was destroyed or
//!   is in error, whose link is cut, or that is not connected to this one
//!   gives `RetryExceeded`; a bad remote key `RemoteAccess`; a bad local
//!   key `LocalProtection`; a receive buffer too small `LocalLength` at the
//!   receiver and `RemoteInvalidRequest` at the sender. The failing queue
//!   pair goes to the error state and flushes its posted receives; later
//!   work requests complete with `Flushed`.
//! - **Injected failures** ([`SimPort::inject`]): the n-th next work
//!   request fails with a chosen status; the port's link is cut (every
//!   work request to or from it fails as with a lost peer), or a whole
//!   network ([`cut_network`]); receives are
//!   dropped instead of posted (a receiver that stops replenishing: the
//!   peer's credit window is exhausted and its next send finds no
//!   receive).
//!
//! What it does not model: timing (transfers are copies, immediate;
//! retries are not waited for), packets, MTUs and PSNs (checked for
//! presence only), memory that is not shared (a real adapter registers any
//! memory; here only what [`Port::alloc`] made), page pinning, shared
//! receive queues, unsignalled completions, atomics, more than one
//! scatter/gather element, and the adapter's own limits beyond those set
//! by the caller.
//!
//! The GID of a simulated port is derived from the fabric's name (subnet
//! prefix) and the process (interface id): two simulated fabrics of
//! different names are different networks.

use crate::verbs::*;
use channels_core::{select_recv, Channel, ChannelOptions, SelectError, TryRecvError, TrySendError};
use shm_primitives::process::ProcessId;
use shm_primitives::region::Region;
use shm_primitives::sync::local::{AtomicBool as LocalBool, AtomicUsize as LocalUsize, Ordering as LocalOrdering};
use shm_primitives::sync::{fence, AtomicU32, AtomicU64, Ordering};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use transport_shm::segment::{self, RunId, Segment};

/// Layout version of the simulation's segments.
const VERSION: u32 = 1;
const PD_MAGIC: u64 = u64::from_le_bytes(*b"DRVSIMPD");
const QP_MAGIC: u64 = u64::from_le_bytes(*b"DRVSIMQP");

// Protection domain segment:
//
//   0  magic u64 | 8 version u32 | 12 rows u32 | 16 owner pid u32 |
//   24 owner start u64 | 64.. rows of PD_ROW bytes:
//
//   0 seq u32 (odd while written) | 4 key u32 (0: free) | 8 access u32 |
//   12 name length u32 | 16 address u64 | 24 length u64 |
//   32 offset in the backing segment u64 | 48 name (26 u64 words)
const PD_ROWS: usize = 1024;
const PD_ROW: usize = 256;
const PD_HEAD: usize = 64;
const ROW_NAME: usize = 48;
const NAME_WORDS: usize = 26;

// Queue pair segment:
//
//   0 magic u64 | 8 version u32 | 12 qpn u32 | 16 owner pid u32 |
//   20 state u32 (QpState code, DESTROYED) | 24 owner start u64 |
//   32 cut u32 | 36 connected-to qpn u32 | 40 max inline u32 |
//   64 protection domain segment name (u32 length, bytes) |
//   256 completion queue handle (u32 length, bytes) |
//   768 receive queue handle (u32 length, bytes)
const QP_SEG: usize = 4096;
const QP_STATE: usize = 20;
const QP_CUT: usize = 32;
const QP_REMOTE: usize = 36;
const QP_INLINE: usize = 40;
const QP_PD_NAME: usize = 64;
const QP_CQ: usize = 256;
const QP_RQ: usize = 768;
const FIELD_MAX: usize = 508;

const ST_RESET: u32 = 0;
const ST_INIT: u32 = 1;
const ST_RTR: u32 = 2;
const ST_RTS: u32 = 3;
const ST_ERROR: u32 = 4;
const ST_DESTROYED: u32 = 5;

// A completion record: wr_id u64, status u32, opcode u32, byte_len u32,
// imm u32, flags u32 (1: has imm, 2: a wake-up, not a completion), vendor u32.
const CQE: usize = 32;
const CQE_IMM: u32 = 1;
const CQE_WAKE: u32 = 2;
// A posted receive: wr_id u64, addr u64, len u32, lkey u32.
const RQE: usize = 24;

/// How often a peer's process is checked for life.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The `u32` at `off` of `seg`.
fn u32_at(seg: &Segment, off: usize) -> &AtomicU32 {
    assert!(off % 4 == 0 && off + 4 <= seg.len());
    // SAFETY: in bounds and aligned (checked; segments are page-aligned);
    // the segment is mapped for the reference's lifetime; every access to
    // these words is atomic.
    unsafe { &*seg.base().as_ptr().add(off).cast::<AtomicU32>() }
}

/// The `u64` at `off` of `seg`.
fn u64_at(seg: &Segment, off: usize) -> &AtomicU64 {
    assert!(off % 8 == 0 && off + 8 <= seg.len());
    // SAFETY: as in `u32_at`.
    unsafe { &*seg.base().as_ptr().add(off).cast::<AtomicU64>() }
}

/// Write a length-prefixed byte field (before the segment is published).
fn put_field(seg: &Segment, off: usize, b: &[u8]) -> Result<(), VerbsError> {
    if b.len() > FIELD_MAX {
        return Err(VerbsError::Invalid(format!("a name of {} bytes is too long for the simulation", b.len())));
    }
    // Relaxed: published to other processes by the out-of-band exchange of
    // the segment's name (a system call), after every field is written.
    u32_at(seg, off).store(b.len() as u32, Ordering::Relaxed);
    // SAFETY: in bounds (FIELD_MAX + 4 fits every field slot); nobody else
    // maps the segment before its name is handed out.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), seg.base().as_ptr().add(off + 4), b.len()) };
    Ok(())
}

/// Read a length-prefixed byte field written by [`put_field`].
fn get_field(seg: &Segment, off: usize) -> Option<Vec<u8>> {
    // Relaxed: written once before the segment was published.
    let n = u32_at(seg, off).load(Ordering::Relaxed) as usize;
    if n > FIELD_MAX || off + 4 + n > seg.len() {
        return None;
    }
    let mut v = vec![0u8; n];
    // SAFETY: in bounds (checked); written once before publication.
    unsafe { std::ptr::copy_nonoverlapping(seg.base().as_ptr().add(off + 4), v.as_mut_ptr(), n) };
    Some(v)
}

// ---- the fabric ---------------------------------------------------------------

/// A simulated fabric: every process that opens one of the same name is on
/// the same network.
#[derive(Debug, Clone)]
pub struct SimFabric {
    name: String,
    down: Arc<LocalBool>,
}

impl SimFabric {
    /// The simulated network called `name` (letters, digits, `-`, `_`, `.`).
    pub fn new(name: &str) -> Result<SimFabric, VerbsError> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(VerbsError::Invalid(format!("simulated fabric name {name:?}: up to 64 of [A-Za-z0-9._-]")));
        }
        Ok(SimFabric { name: name.to_owned(), down: Arc::new(LocalBool::new(false)) })
    }

    /// Report this process's port as down (or active again).
    pub fn set_port_down(&self, down: bool) {
        // Relaxed: a flag read by the next discovery; nothing else to order.
        self.down.store(down, LocalOrdering::Relaxed);
    }

    fn port_info(&self) -> PortInfo {
        let me = ProcessId::current();
        let prefix = prefix_of(&self.name);
        let iface = fnv(format!("{}-{}", me.pid, me.start).as_bytes()) | 1;
        let mut gid = [0u8; 16];
        gid[..8].copy_from_slice(&prefix.to_be_bytes());
        gid[8..].copy_from_slice(&iface.to_be_bytes());
        // Relaxed: see set_port_down.
        let down = self.down.load(LocalOrdering::Relaxed);
        PortInfo {
            device: "sim0".to_owned(),
            port: 1,
            state: if down { PortState::Down } else { PortState::Active },
            link_layer: LinkLayer::InfiniBand,
            lid: 1 + (me.pid % 0xbffe) as u16,
            gid: Gid(gid),
            gid_index: 0,
            mtu: Mtu(5),
        }
    }

    /// Open this process's port, as the concrete type (for [`SimPort::inject`]
    /// and [`SimPort::stats`]).
    pub fn open_sim(&self) -> Result<Arc<SimPort>, VerbsError> {
        SimPort::new(self.port_info()).map(Arc::new)
    }
}

impl Fabric for SimFabric {
    fn name(&self) -> String {
        format!("sim:{}", self.name)
    }

    fn ports(&self) -> Result<Vec<PortInfo>, VerbsError> {
        Ok(vec![self.port_info()])
    }

    fn open(&self, port: &PortInfo) -> Result<Arc<dyn Port>, VerbsError> {
        let mine = self.port_info();
        if port.device != mine.device || port.port != mine.port {
            return Err(VerbsError::Invalid(format!("no port {} of {} on {}", port.port, port.device, self.name())));
        }
        Ok(self.open_sim()?)
    }
}

// ---- buffers -------------------------------------------------------------------

/// Buffers allocated by simulated ports of this process: start → (length,
/// segment name). Registration finds the segment behind an address here.
static BUFFERS: Mutex<BTreeMap<usize, (usize, String)>> = Mutex::new(BTreeMap::new());

struct SimBuffer {
    seg: Segment,
    stats: Arc<Counters>,
}

impl Drop for SimBuffer {
    fn drop(&mut self) {
        lock(&BUFFERS).remove(&(self.seg.base().as_ptr() as usize));
        let _ = self.seg.unlink();
        // Relaxed: a statistics counter.
        self.stats.buffers.fetch_sub(1, LocalOrdering::Relaxed);
    }
}

/// The segment and offset behind `len` bytes at `addr`, if simulated ports
/// of this process allocated them or they lie in a block store segment
/// this process mapped (large messages are read from there in place).
/// A real adapter registers any memory; these two kinds are all the
/// protocol registers.
fn backing_of(addr: usize, len: usize) -> Option<(String, usize)> {
    {
        let bufs = lock(&BUFFERS);
        if let Some((&start, (blen, name))) = bufs.range(..=addr).next_back() {
            if addr.checked_add(len)? <= start + blen {
                return Some((name.clone(), addr - start));
            }
        }
    }
    let m = transport_shm::blocks::segment_mapping(addr, len)?;
    Some((m.name, addr - m.base))
}

// ---- protection domain and registrations -----------------------------------------

#[derive(Debug, Default)]
struct Counters {
    mrs: LocalUsize,
    buffers: LocalUsize,
    cqs: LocalUsize,
    qps: LocalUsize,
}

/// What a simulated port holds now (for tests of teardown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimStats {
    /// Registered memory regions.
    pub mrs: usize,
    /// Buffers allocated and not freed.
    pub buffers: usize,
    /// Completion queues.
    pub cqs: usize,
    /// Queue pairs.
    pub qps: usize,
}

struct Pd {
    seg: Segment,
    /// Per row: the generation of its last key.
    rows: Mutex<Vec<u8>>,
}

impl Drop for Pd {
    fn drop(&mut self) {
        let _ = self.seg.unlink();
    }
}

/// A registration row as read from a protection domain segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    access: u32,
    addr: u64,
    len: u64,
    offset: u64,
    name: String,
}

fn row_off(i: usize) -> usize {
    PD_HEAD + i * PD_ROW
}

/// Look `key` up in protection domain segment `pd` (a seqlock read: the
/// owner may rewrite the row meanwhile).
fn lookup(pd: &Segment, key: u32) -> Option<Row> {
    let i = (key >> 8) as usize;
    if key == 0 || i >= PD_ROWS {
        return None;
    }
    let o = row_off(i);
    // SYNC POINT sim-mr-row: Acquire pairs with the owner's Release store
    // of the even sequence number after writing the row.
    let s1 = u32_at(pd, o).load(Ordering::Acquire);
    if s1 % 2 == 1 {
        return None;
    }
    // Relaxed: the sequence number re-read below validates these reads.
    let k = u32_at(pd, o + 4).load(Ordering::Relaxed);
    let access = u32_at(pd, o + 8).load(Ordering::Relaxed);
    let nlen = (u32_at(pd, o + 12).load(Ordering::Relaxed) as usize).min(NAME_WORDS * 8);
    let addr = u64_at(pd, o + 16).load(Ordering::Relaxed);
    let len = u64_at(pd, o + 24).load(Ordering::Relaxed);
    let offset = u64_at(pd, o + 32).load(Ordering::Relaxed);
    let mut name = Vec::with_capacity(NAME_WORDS * 8);
    for w in 0..NAME_WORDS {
        name.extend_from_slice(&u64_at(pd, o + ROW_NAME + 8 * w).load(Ordering::Relaxed).to_le_bytes());
    }
    name.truncate(nlen);
    // SYNC POINT sim-mr-row: the Acquire fence orders the reads above
    // before the re-read of the sequence number.
    fence(Ordering::Acquire);
    // Relaxed: ordered by the fence above.
    let s2 = u32_at(pd, o).load(Ordering::Relaxed);
    (s1 == s2 && k == key).then(|| Row { access, addr, len, offset, name: String::from_utf8_lossy(&name).into_owned() })
}

impl Pd {
    fn new(me: ProcessId) -> Result<Pd, VerbsError> {
        let name = RunId::current().segment_name("vpd");
        let seg = Segment::create(&name, PD_HEAD + PD_ROWS * PD_ROW)
            .map_err(|e| VerbsError::Call { call: "ibv_alloc_pd", reason: e.to_string() })?;
        // Relaxed: published with the segment's name, out of band.
        u64_at(&seg, 0).store(PD_MAGIC, Ordering::Relaxed);
        u32_at(&seg, 8).store(VERSION, Ordering::Relaxed);
        u32_at(&seg, 12).store(PD_ROWS as u32, Ordering::Relaxed);
        u32_at(&seg, 16).store(me.pid, Ordering::Relaxed);
        u64_at(&seg, 24).store(me.start, Ordering::Relaxed);
        Ok(Pd { seg, rows: Mutex::new(vec![0; PD_ROWS]) })
    }

    /// Write row `i` (the only writer: this process, under `rows`).
    fn write_row(&self, i: usize, key: u32, r: &Row) {
        let o = row_off(i);
        let seq = u32_at(&self.seg, o);
        // Relaxed: the odd value is ordered before the field writes by the
        // Release fence below.
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // SYNC POINT sim-mr-row: readers that see a field written below
        // also see the odd sequence number.
        fence(Ordering::Release);
        let name = r.name.as_bytes();
        // Relaxed: published by the Release store of the sequence number.
        u32_at(&self.seg, o + 4).store(key, Ordering::Relaxed);
        u32_at(&self.seg, o + 8).store(r.access, Ordering::Relaxed);
        u32_at(&self.seg, o + 12).store(name.len() as u32, Ordering::Relaxed);
        u64_at(&self.seg, o + 16).store(r.addr, Ordering::Relaxed);
        u64_at(&self.seg, o + 24).store(r.len, Ordering::Relaxed);
        u64_at(&self.seg, o + 32).store(r.offset, Ordering::Relaxed);
        for w in 0..NAME_WORDS {
            let mut b = [0u8; 8];
            let from = (8 * w).min(name.len());
            let to = (8 * w + 8).min(name.len());
            b[..to - from].copy_from_slice(&name[from..to]);
            u64_at(&self.seg, o + ROW_NAME + 8 * w).store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        // SYNC POINT sim-mr-row: Release publishes the row's fields.
        seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// A registration on a simulated port.
struct SimMr {
    pd: Arc<Pd>,
    row: usize,
    key: u32,
    addr: u64,
    len: usize,
    stats: Arc<Counters>,
}

impl std::fmt::Debug for SimMr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMr").field("key", &self.key).field("addr", &self.addr).field("len", &self.len).finish()
    }
}

impl MemoryRegion for SimMr {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn lkey(&self) -> u32 {
        self.key
    }
    fn rkey(&self) -> u32 {
        self.key
    }
}

impl Drop for SimMr {
    fn drop(&mut self) {
        let _rows = lock(&self.pd.rows);
        let empty = Row { access: 0, addr: 0, len: 0, offset: 0, name: String::new() };
        self.pd.write_row(self.row, 0, &empty);
        // Relaxed: a statistics counter.
        self.stats.mrs.fetch_sub(1, LocalOrdering::Relaxed);
    }
}

// ---- faults ----------------------------------------------------------------------

/// A failure to inject on a simulated port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The send work request posted after `skip` more succeed completes
    /// with `status` (its queue pair goes to the error state).
    FailWr {
        /// Work requests that still succeed first.
        skip: u32,
        /// The status of the one that fails.
        status: WcStatus,
    },
    /// The port's link is cut: every work request to or from its queue
    /// pairs fails as with a lost peer (`RetryExceeded`).
    Cut,
    /// Receives posted from now on are dropped instead of posted (a
    /// receiver that stops replenishing its receive queue).
    DropRecvs,
}

#[derive(Debug, Default)]
struct Faults {
    fail: Option<(u32, WcStatus)>,
    cut: bool,
    drop_recvs: bool,
    qps: Vec<Weak<QpShared>>,
    /// The port's network (its GID's subnet prefix), for [`cut_network`].
    net: u64,
}

/// Networks cut in this process (subnet prefixes): see [`cut_network`].
static CUT_NETWORKS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The subnet prefix of simulated network `name`'s ports.
fn prefix_of(name: &str) -> u64 {
    0xfe80_0000_0000_0000u64 | (fnv(name.as_bytes()) & 0x0000_ffff_ffff_ffff)
}

/// Cut simulated network `name` for every port of this process on it, as
/// a switch that dies: from now on each of their work requests fails as
/// with a lost peer (`RetryExceeded`), and marks its queue pair cut so
/// that the peer's work requests fail too. For tests of what runs above
/// the links, where the ports are out of reach (node services in this
/// process, say); [`Fault::Cut`] cuts one port.
pub fn cut_network(name: &str) {
    lock(&CUT_NETWORKS).push(prefix_of(name));
}

fn network_cut(net: u64) -> bool {
    lock(&CUT_NETWORKS).contains(&net)
}

// ---- the port ----------------------------------------------------------------------

/// An open simulated port with its protection domain.
pub struct SimPort {
    info: PortInfo,
    pd: Arc<Pd>,
    faults: Arc<Mutex<Faults>>,
    stats: Arc<Counters>,
}

impl std::fmt::Debug for SimPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPort").field("gid", &self.info.gid).field("pd", &self.pd.seg.name()).finish()
    }
}

impl SimPort {
    fn new(info: PortInfo) -> Result<SimPort, VerbsError> {
        let net = info.gid.subnet_prefix();
        Ok(SimPort {
            info,
            pd: Arc::new(Pd::new(ProcessId::current())?),
            faults: Arc::new(Mutex::new(Faults { net, ..Faults::default() })),
            stats: Arc::new(Counters::default()),
        })
    }

    /// Inject a failure.
    pub fn inject(&self, fault: Fault) {
        let mut f = lock(&self.faults);
        match fault {
            Fault::FailWr { skip, status } => f.fail = Some((skip, status)),
            Fault::DropRecvs => f.drop_recvs = true,
            Fault::Cut => {
                f.cut = true;
                for q in f.qps.iter().filter_map(Weak::upgrade) {
                    // Relaxed: a flag peers read on their next work request.
                    u32_at(&q.seg, QP_CUT).store(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// What the port holds now.
    pub fn stats(&self) -> SimStats {
        // Relaxed: statistics counters.
        let r = |c: &LocalUsize| c.load(LocalOrdering::Relaxed);
        SimStats {
            mrs: r(&self.stats.mrs),
            buffers: r(&self.stats.buffers),
            cqs: r(&self.stats.cqs),
            qps: r(&self.stats.qps),
        }
    }
}

impl Port for SimPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }

    fn alloc(&self, len: usize) -> Result<Buffer, VerbsError> {
        let name = RunId::current().segment_name("vbuf");
        let seg = Segment::create(&name, len).map_err(|e| VerbsError::Exhausted(e.to_string()))?;
        let (ptr, slen) = (seg.base(), seg.len());
        lock(&BUFFERS).insert(ptr.as_ptr() as usize, (slen, name));
        // Relaxed: a statistics counter.
        self.stats.buffers.fetch_add(1, LocalOrdering::Relaxed);
        let owner = SimBuffer { seg, stats: self.stats.clone() };
        // SAFETY: the segment is mapped for `slen` bytes while `owner`
        // lives, and only its drop unmaps it.
        Ok(unsafe { Buffer::from_raw(ptr, slen, Box::new(owner)) })
    }

    unsafe fn register(&self, addr: *mut u8, len: usize, access: Access) -> Result<Box<dyn MemoryRegion>, VerbsError> {
        let Some((name, offset)) = backing_of(addr as usize, len) else {
            return Err(VerbsError::Invalid(format!(
                "the simulated fabric registers only memory its ports allocated or block store segments ({len} bytes at {addr:p} are neither)"
            )));
        };
        if len == 0 {
            return Err(VerbsError::Invalid("a registration of 0 bytes".into()));
        }
        let mut rows = lock(&self.pd.rows);
        let Some(i) = (0..PD_ROWS).find(|&i| {
            // Relaxed: only this process writes its rows, under `rows`.
            u32_at(&self.pd.seg, row_off(i) + 4).load(Ordering::Relaxed) == 0
        }) else {
            return Err(VerbsError::Exhausted(format!("{PD_ROWS} registrations on one simulated port")));
        };
        rows[i] = rows[i].wrapping_add(1).max(1);
        let key = ((i as u32) << 8) | u32::from(rows[i]);
        let row = Row { access: access.0, addr: addr as u64, len: len as u64, offset: offset as u64, name };
        self.pd.write_row(i, key, &row);
        // Relaxed: a statistics counter.
        self.stats.mrs.fetch_add(1, LocalOrdering::Relaxed);
        Ok(Box::new(SimMr { pd: self.pd.clone(), row: i, key, addr: addr as u64, len, stats: self.stats.clone() }))
    }

    fn create_cq(&self, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError> {
        let name = RunId::current().segment_name("vcq");
        let opts = ChannelOptions::new().capacity(u64::from(depth.max(2)) + 1).slot_size(64);
        let ch = transport_shm::channel::create_named(&name, &opts)
            .map_err(|e| VerbsError::Call { call: "ibv_create_cq", reason: e.to_string() })?;
        // Relaxed: a statistics counter.
        self.stats.cqs.fetch_add(1, LocalOrdering::Relaxed);
        Ok(Arc::new(SimCq { handle: ch.handle().to_bytes(), ch, stats: self.stats.clone() }))
    }

    fn create_qp(&self, cq: &Arc<dyn CompletionQueue>, caps: QpCaps) -> Result<Box<dyn QueuePair>, VerbsError> {
        let Some(simcq) = cq.as_any().downcast_ref::<SimCq>() else {
            return Err(VerbsError::Invalid("a completion queue of another fabric".into()));
        };
        let fail = |e: String| VerbsError::Call { call: "ibv_create_qp", reason: e };
        let run = RunId::current();
        let rq_name = run.segment_name("vrq");
        let opts = ChannelOptions::new().capacity(u64::from(caps.max_recv_wr.max(1))).slot_size(64);
        let rq = transport_shm::channel::create_named(&rq_name, &opts).map_err(|e| fail(e.to_string()))?;
        let name = run.segment_name("vqp");
        let seg = match Segment::create(&name, QP_SEG) {
            Ok(s) => s,
            Err(e) => {
                rq.destroy();
                return Err(fail(e.to_string()));
            }
        };
        let qpn = (segment::nonce32() & 0x00ff_ffff).max(1);
        let psn = segment::nonce32() & 0x00ff_ffff;
        let me = ProcessId::current();
        let caps = QpCaps { max_inline: caps.max_inline.min(1024), ..caps };
        // Relaxed: published with the segment's name, out of band.
        u64_at(&seg, 0).store(QP_MAGIC, Ordering::Relaxed);
        u32_at(&seg, 8).store(VERSION, Ordering::Relaxed);
        u32_at(&seg, 12).store(qpn, Ordering::Relaxed);
        u32_at(&seg, 16).store(me.pid, Ordering::Relaxed);
        u32_at(&seg, QP_STATE).store(ST_RESET, Ordering::Relaxed);
        u64_at(&seg, 24).store(me.start, Ordering::Relaxed);
        u32_at(&seg, QP_INLINE).store(caps.max_inline, Ordering::Relaxed);
        let written = put_field(&seg, QP_PD_NAME, self.pd.seg.name().as_bytes())
            .and_then(|()| put_field(&seg, QP_CQ, &simcq.handle))
            .and_then(|()| put_field(&seg, QP_RQ, &rq.handle().to_bytes()));
        if let Err(e) = written {
            rq.destroy();
            let _ = seg.unlink();
            return Err(e);
        }
        let mut faults = lock(&self.faults);
        if faults.cut {
            // Relaxed: a flag peers read on their next work request.
            u32_at(&seg, QP_CUT).store(1, Ordering::Relaxed);
        }
        let shared = Arc::new(QpShared {
            seg,
            rq,
            cq: cq.clone(),
            pd: self.pd.clone(),
            faults: self.faults.clone(),
            stats: self.stats.clone(),
            info: self.info.clone(),
            qpn,
            psn,
            caps,
            inner: Mutex::new(QpInner { remote: None }),
        });
        faults.qps.retain(|w| w.strong_count() > 0);
        faults.qps.push(Arc::downgrade(&shared));
        // Relaxed: a statistics counter.
        self.stats.qps.fetch_add(1, LocalOrdering::Relaxed);
        Ok(Box::new(SimQp(shared)))
    }
}

// ---- completion queues ----------------------------------------------------------

/// A simulated completion queue: a channel of completion records.
struct SimCq {
    ch: Channel,
    handle: Vec<u8>,
    stats: Arc<Counters>,
}

impl std::fmt::Debug for SimCq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCq").field("len", &self.ch.len()).finish()
    }
}

impl Drop for SimCq {
    fn drop(&mut self) {
        self.ch.destroy();
        // Relaxed: a statistics counter.
        self.stats.cqs.fetch_sub(1, LocalOrdering::Relaxed);
    }
}

fn encode_cqe(c: &Completion, flags: u32) -> [u8; CQE] {
    let mut b = [0u8; CQE];
    b[..8].copy_from_slice(&c.wr_id.to_le_bytes());
    b[8..12].copy_from_slice(&c.status.code().to_le_bytes());
    b[12..16].copy_from_slice(&c.opcode.code().to_le_bytes());
    b[16..20].copy_from_slice(&c.byte_len.to_le_bytes());
    b[20..24].copy_from_slice(&c.imm.unwrap_or(0).to_le_bytes());
    let flags = flags | if c.imm.is_some() { CQE_IMM } else { 0 };
    b[24..28].copy_from_slice(&flags.to_le_bytes());
    b[28..32].copy_from_slice(&c.vendor_err.to_le_bytes());
    b
}

fn decode_cqe(b: &[u8]) -> Option<(Completion, u32)> {
    if b.len() != CQE {
        return None;
    }
    let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let flags = u(24);
    Some((
        Completion {
            wr_id: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            status: WcStatus::from_code(u(8)),
            opcode: WcOpcode::from_code(u(12)),
            byte_len: u(16),
            imm: (flags & CQE_IMM != 0).then(|| u(20)),
            vendor_err: u(28),
        },
        flags,
    ))
}

/// Push a completion into the completion queue channel `ch`.
fn push_cqe(ch: &Channel, c: &Completion) -> Result<(), String> {
    match ch.try_send(encode_cqe(c, 0)) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err("completion queue overrun".into()),
        Err(e) => Err(format!("completion queue gone: {e}")),
    }
}

impl CompletionQueue for SimCq {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut n = 0;
        while n < max {
            match self.ch.try_recv() {
                Ok(m) => match decode_cqe(&m) {
                    Some((_, flags)) if flags & CQE_WAKE != 0 => {}
                    Some((c, _)) => {
                        out.push(c);
                        n += 1;
                    }
                    None => {
                        return Err(VerbsError::Call { call: "ibv_poll_cq", reason: "a malformed completion".into() })
                    }
                },
                Err(TryRecvError::Empty) => break,
                Err(e) => return Err(VerbsError::Call { call: "ibv_poll_cq", reason: e.to_string() }),
            }
        }
        Ok(n)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<(), VerbsError> {
        match select_recv(&[&self.ch], timeout) {
            Ok(_) | Err(SelectError::Timeout) => Ok(()),
            Err(e) => Err(VerbsError::Call { call: "ibv_get_cq_event", reason: e.to_string() }),
        }
    }

    fn wake(&self) {
        let c = Completion {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::Other(0),
            byte_len: 0,
            imm: None,
            vendor_err: 0,
        };
        // A full queue wakes its waiter anyway.
        let _ = self.ch.try_send(encode_cqe(&c, CQE_WAKE));
    }
}

// ---- queue pairs ------------------------------------------------------------------

/// The peer a queue pair is connected to, as mapped here.
struct Remote {
    seg: Segment,
    pd: Segment,
    cq: Channel,
    rq: Channel,
    owner: ProcessId,
    qpn: u32,
    /// The peer's buffer segments mapped so far, by name.
    maps: HashMap<String, Segment>,
    checked: Instant,
    alive: bool,
}

impl Remote {
    /// Map the segment backing `row` (cached; a name is never reused).
    fn map(&mut self, row: &Row) -> Option<&Segment> {
        if !self.maps.contains_key(&row.name) {
            if self.maps.len() >= 256 {
                self.maps.clear();
            }
            let s = Segment::open(&row.name).ok()?;
            self.maps.insert(row.name.clone(), s);
        }
        self.maps.get(&row.name)
    }

    fn reachable(&mut self, me: u32) -> bool {
        if self.checked.elapsed() >= LIVENESS_EVERY {
            self.alive = self.owner.is_alive();
            self.checked = Instant::now();
        }
        // Relaxed: flags the peer's owner or its port set; a late view only
        // delays the failure to the next work request.
        let state = u32_at(&self.seg, QP_STATE).load(Ordering::Relaxed);
        self.alive
            && u32_at(&self.seg, QP_CUT).load(Ordering::Relaxed) == 0
            && matches!(state, ST_RTR | ST_RTS)
            && u32_at(&self.seg, QP_REMOTE).load(Ordering::Relaxed) == me
    }
}

struct QpInner {
    remote: Option<Remote>,
}

struct QpShared {
    seg: Segment,
    rq: Channel,
    cq: Arc<dyn CompletionQueue>,
    pd: Arc<Pd>,
    faults: Arc<Mutex<Faults>>,
    stats: Arc<Counters>,
    info: PortInfo,
    qpn: u32,
    psn: u32,
    caps: QpCaps,
    inner: Mutex<QpInner>,
}

/// A simulated RC queue pair.
struct SimQp(Arc<QpShared>);

impl std::fmt::Debug for SimQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimQp").field("qpn", &self.0.qpn).field("state", &self.state()).finish()
    }
}

fn state_of(code: u32) -> QpState {
    match code {
        ST_RESET => QpState::Reset,
        ST_INIT => QpState::Init,
        ST_RTR => QpState::ReadyToReceive,
        ST_RTS => QpState::ReadyToSend,
        _ => QpState::Error,
    }
}

/// How a work request ended, before its completion is pushed.
enum Outcome {
    Done(u32),
    Failed(WcStatus),
}

impl QpShared {
    fn state_word(&self) -> &AtomicU32 {
        u32_at(&self.seg, QP_STATE)
    }

    fn own_cq(&self) -> &SimCq {
        self.cq.as_any().downcast_ref::<SimCq>().expect("checked at creation")
    }

    /// Go to the error state and flush the posted receives.
    fn fail(&self) {
        // Relaxed: the state word is only a flag for peers and later calls.
        let prev = self.state_word().swap(ST_ERROR, Ordering::Relaxed);
        if prev == ST_DESTROYED {
            self.state_word().store(ST_DESTROYED, Ordering::Relaxed);
            return;
        }
        flush_rq(&self.rq, &self.own_cq().ch);
    }

    /// The bytes a send or write takes from local memory.
    fn source(&self, wr: &SendWr) -> Result<Vec<u8>, WcStatus> {
        let len = wr.sge.len as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        if !wr.inline {
            let row = lookup(&self.pd.seg, wr.sge.lkey).ok_or(WcStatus::LocalProtection)?;
            if !covers(&row, wr.sge.addr, len) {
                return Err(WcStatus::LocalProtection);
            }
        }
        let mut v = vec![0u8; len];
        // SAFETY: an inline source is the caller's memory, valid during the
        // post (the interface's contract); a registered one lies inside a
        // region this process registered, which stays allocated while
        // registered.
        unsafe { std::ptr::copy_nonoverlapping(wr.sge.addr as *const u8, v.as_mut_ptr(), len) };
        Ok(v)
    }

    fn execute(&self, wr: &SendWr, remote: &mut Remote) -> Outcome {
        use Outcome::*;
        let len = wr.sge.len as usize;
        if wr.inline && (len > self.caps.max_inline as usize || matches!(wr.op, SendOp::Read { .. })) {
            return Failed(WcStatus::LocalQpOperation);
        }
        match wr.op {
            SendOp::Send => {
                let data = match self.source(wr) {
                    Ok(d) => d,
                    Err(s) => return Failed(s),
                };
                let Some(recv) = take_recv(&remote.rq) else { return Failed(WcStatus::RnrRetryExceeded) };
                let row = lookup(&remote.pd, recv.sge.lkey);
                let ok = row.as_ref().is_some_and(|r| {
                    covers(r, recv.sge.addr, recv.sge.len as usize) && Access(r.access).contains(Access::LOCAL_WRITE)
                });
                if !ok || data.len() > recv.sge.len as usize {
                    let status = if ok { WcStatus::LocalLength } else { WcStatus::LocalProtection };
                    remote_failed(remote, recv.wr_id, status);
                    return Failed(WcStatus::RemoteInvalidRequest);
                }
                let row = row.expect("checked");
                if !data.is_empty() && !copy_to_remote(remote, &row, recv.sge.addr, &data) {
                    remote_failed(remote, recv.wr_id, WcStatus::LocalProtection);
                    return Failed(WcStatus::RemoteInvalidRequest);
                }
                let c = ok_completion(recv.wr_id, WcOpcode::Recv, data.len() as u32, None);
                if push_cqe(&remote.cq, &c).is_err() {
                    return Failed(WcStatus::RetryExceeded);
                }
                Done(data.len() as u32)
            }
            SendOp::WriteImm { remote_addr, rkey, imm } => {
                let data = match self.source(wr) {
                    Ok(d) => d,
                    Err(s) => return Failed(s),
                };
                if !data.is_empty() {
                    let row = match lookup(&remote.pd, rkey) {
                        Some(r) if covers(&r, remote_addr, len) && Access(r.access).contains(Access::REMOTE_WRITE) => r,
                        _ => return Failed(WcStatus::RemoteAccess),
                    };
                    if !copy_to_remote(remote, &row, remote_addr, &data) {
                        return Failed(WcStatus::RemoteAccess);
                    }
                }
                let Some(recv) = take_recv(&remote.rq) else { return Failed(WcStatus::RnrRetryExceeded) };
                let c = ok_completion(recv.wr_id, WcOpcode::RecvWithImm, data.len() as u32, Some(imm));
                if push_cqe(&remote.cq, &c).is_err() {
                    return Failed(WcStatus::RetryExceeded);
                }
                Done(data.len() as u32)
            }
            SendOp::Read { remote_addr, rkey } => {
                if len == 0 {
                    return Done(0);
                }
                match lookup(&self.pd.seg, wr.sge.lkey) {
                    Some(r) if covers(&r, wr.sge.addr, len) && Access(r.access).contains(Access::LOCAL_WRITE) => {}
                    _ => return Failed(WcStatus::LocalProtection),
                }
                let row = match lookup(&remote.pd, rkey) {
                    Some(r) if covers(&r, remote_addr, len) && Access(r.access).contains(Access::REMOTE_READ) => r,
                    _ => return Failed(WcStatus::RemoteAccess),
                };
                let off = row.offset + (remote_addr - row.addr);
                let Some(seg) = remote.map(&row) else { return Failed(WcStatus::RemoteAccess) };
                if off as usize + len > seg.len() {
                    return Failed(WcStatus::RemoteAccess);
                }
                // SAFETY: the source lies inside the peer's mapped segment
                // (checked); the destination inside a region this process
                // registered with local write (checked), which stays
                // allocated while registered. They are distinct mappings.
                unsafe {
                    std::ptr::copy_nonoverlapping(seg.base().as_ptr().add(off as usize), wr.sge.addr as *mut u8, len)
                };
                Done(len as u32)
            }
        }
    }
}

fn covers(r: &Row, addr: u64, len: usize) -> bool {
    addr >= r.addr && addr.checked_add(len as u64).is_some_and(|e| e <= r.addr + r.len)
}

fn ok_completion(wr_id: u64, opcode: WcOpcode, byte_len: u32, imm: Option<u32>) -> Completion {
    Completion { wr_id, status: WcStatus::Success, opcode, byte_len, imm, vendor_err: 0 }
}

fn err_completion(wr_id: u64, opcode: WcOpcode, status: WcStatus) -> Completion {
    Completion { wr_id, status, opcode, byte_len: 0, imm: None, vendor_err: 0x5100 | status.code() }
}

fn take_recv(rq: &Channel) -> Option<RecvWr> {
    let m = rq.try_recv().ok()?;
    if m.len() != RQE {
        return None;
    }
    Some(RecvWr {
        wr_id: u64::from_le_bytes(m[..8].try_into().expect("8 bytes")),
        sge: Sge {
            addr: u64::from_le_bytes(m[8..16].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(m[16..20].try_into().expect("4 bytes")),
            lkey: u32::from_le_bytes(m[20..24].try_into().expect("4 bytes")),
        },
    })
}

/// Complete every receive posted on `rq` with a flush error on `cq`.
fn flush_rq(rq: &Channel, cq: &Channel) {
    while let Some(r) = take_recv(rq) {
        let _ = push_cqe(cq, &err_completion(r.wr_id, WcOpcode::Recv, WcStatus::Flushed));
    }
}

/// The peer's receive `wr_id` failed with `status`: its queue pair goes to
/// the error state, as its adapter would put it.
fn remote_failed(remote: &Remote, wr_id: u64, status: WcStatus) {
    let _ = push_cqe(&remote.cq, &err_completion(wr_id, WcOpcode::Recv, status));
    // Relaxed: a flag the peer reads on its next call.
    u32_at(&remote.seg, QP_STATE).store(ST_ERROR, Ordering::Relaxed);
    flush_rq(&remote.rq, &remote.cq);
}

/// Copy `data` to the peer's address `addr` inside registration `row`.
fn copy_to_remote(remote: &mut Remote, row: &Row, addr: u64, data: &[u8]) -> bool {
    let off = (row.offset + (addr - row.addr)) as usize;
    let Some(seg) = remote.map(row) else { return false };
    if off + data.len() > seg.len() {
        return false;
    }
    // SAFETY: the destination lies inside the peer's mapped segment
    // (checked); the source is a Rust vector.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), seg.base().as_ptr().add(off), data.len()) };
    true
}

fn connect_error(reason: impl Into<String>) -> VerbsError {
    VerbsError::Call { call: "ibv_modify_qp(RTR)", reason: reason.into() }
}

/// Map and check the peer queue pair `addr` names.
fn open_remote(addr: &QpAddress, me: u32) -> Result<Remote, VerbsError> {
    let name =
        std::str::from_utf8(&addr.fabric).map_err(|_| connect_error("the peer's address is not a simulated one"))?;
    let seg = Segment::open(name).map_err(|e| connect_error(format!("the peer's queue pair: {e}")))?;
    if seg.len() < QP_SEG
        // Relaxed: written before the name was published.
        || u64_at(&seg, 0).load(Ordering::Relaxed) != QP_MAGIC
        || u32_at(&seg, 8).load(Ordering::Relaxed) != VERSION
    {
        return Err(connect_error(format!("{name} is not a simulated queue pair of this version")));
    }
    // Relaxed: written before the name was published.
    let qpn = u32_at(&seg, 12).load(Ordering::Relaxed);
    if qpn != addr.qpn {
        return Err(connect_error(format!("queue pair number {} named, {qpn} found", addr.qpn)));
    }
    let owner =
        ProcessId { pid: u32_at(&seg, 16).load(Ordering::Relaxed), start: u64_at(&seg, 24).load(Ordering::Relaxed) };
    let text = |f: Option<Vec<u8>>| f.ok_or_else(|| connect_error("a damaged simulated queue pair"));
    let pd_name = String::from_utf8(text(get_field(&seg, QP_PD_NAME))?).map_err(|_| connect_error("damaged"))?;
    let pd = Segment::open(&pd_name).map_err(|e| connect_error(format!("the peer's protection domain: {e}")))?;
    // Relaxed: written before the name was published.
    if u64_at(&pd, 0).load(Ordering::Relaxed) != PD_MAGIC || pd.len() < PD_HEAD + PD_ROWS * PD_ROW {
        return Err(connect_error(format!("{pd_name} is not a simulated protection domain")));
    }
    let attach = |what: &str, b: Vec<u8>| {
        transport_shm::channel::attach_bytes(&b).map_err(|e| connect_error(format!("the peer's {what}: {e}")))
    };
    let cq = attach("completion queue", text(get_field(&seg, QP_CQ))?)?;
    let rq = attach("receive queue", text(get_field(&seg, QP_RQ))?)?;
    let _ = me;
    Ok(Remote { seg, pd, cq, rq, owner, qpn, maps: HashMap::new(), checked: Instant::now(), alive: owner.is_alive() })
}

impl QueuePair for SimQp {
    fn qpn(&self) -> u32 {
        self.0.qpn
    }

    fn caps(&self) -> QpCaps {
        self.0.caps
    }

    fn address(&self) -> QpAddress {
        QpAddress {
            gid: self.0.info.gid,
            lid: self.0.info.lid,
            qpn: self.0.qpn,
            psn: self.0.psn,
            mtu: self.0.info.mtu,
            link_layer: self.0.info.link_layer,
            fabric: self.0.seg.name().as_bytes().to_vec(),
        }
    }

    fn state(&self) -> QpState {
        // Relaxed: a snapshot.
        state_of(self.0.state_word().load(Ordering::Relaxed))
    }

    fn modify(&self, to: QpTransition) -> Result<(), VerbsError> {
        let q = &self.0;
        let mut inner = lock(&q.inner);
        // Relaxed: transitions are made under `inner`; peers only read it.
        let cur = q.state_word().load(Ordering::Relaxed);
        let bad = |want: &str| VerbsError::Invalid(format!("queue pair {} is {:?}; {want}", q.qpn, state_of(cur)));
        match to {
            QpTransition::Init if cur == ST_RESET => q.state_word().store(ST_INIT, Ordering::Relaxed),
            QpTransition::Init => return Err(bad("INIT needs RESET")),
            QpTransition::ReadyToReceive(addr) if cur == ST_INIT => {
                if addr.gid.subnet_prefix() != q.info.gid.subnet_prefix() {
                    return Err(connect_error(format!(
                        "the peer {} is not on this simulated network ({})",
                        addr.gid, q.info.gid
                    )));
                }
                let r = open_remote(&addr, q.qpn)?;
                u32_at(&q.seg, QP_REMOTE).store(r.qpn, Ordering::Relaxed);
                inner.remote = Some(r);
                q.state_word().store(ST_RTR, Ordering::Relaxed);
            }
            QpTransition::ReadyToReceive(_) => return Err(bad("RTR needs INIT")),
            QpTransition::ReadyToSend if cur == ST_RTR => q.state_word().store(ST_RTS, Ordering::Relaxed),
            QpTransition::ReadyToSend => return Err(bad("RTS needs RTR")),
            QpTransition::Error => {
                drop(inner);
                q.fail();
            }
        }
        Ok(())
    }

    fn post_recv(&self, wr: &RecvWr) -> Result<(), VerbsError> {
        let q = &self.0;
        // Relaxed: a flag; see `modify`.
        match q.state_word().load(Ordering::Relaxed) {
            ST_RESET => return Err(VerbsError::Invalid(format!("queue pair {} is RESET: no receives yet", q.qpn))),
            ST_ERROR | ST_DESTROYED => {
                return push_cqe(&q.own_cq().ch, &err_completion(wr.wr_id, WcOpcode::Recv, WcStatus::Flushed))
                    .map_err(|r| VerbsError::Call { call: "ibv_post_recv", reason: r })
            }
            _ => {}
        }
        if lock(&q.faults).drop_recvs {
            return Ok(());
        }
        let mut b = [0u8; RQE];
        b[..8].copy_from_slice(&wr.wr_id.to_le_bytes());
        b[8..16].copy_from_slice(&wr.sge.addr.to_le_bytes());
        b[16..20].copy_from_slice(&wr.sge.len.to_le_bytes());
        b[20..24].copy_from_slice(&wr.sge.lkey.to_le_bytes());
        match q.rq.try_send(b) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(VerbsError::Exhausted(format!(
                "receive queue of queue pair {} full ({} posted)",
                q.qpn, q.caps.max_recv_wr
            ))),
            Err(e) => Err(VerbsError::Call { call: "ibv_post_recv", reason: e.to_string() }),
        }
    }

    fn post_send(&self, wr: &SendWr) -> Result<(), VerbsError> {
        let q = &self.0;
        let mut inner = lock(&q.inner);
        let opcode = match wr.op {
            SendOp::Send => WcOpcode::Send,
            SendOp::WriteImm { .. } => WcOpcode::RdmaWrite,
            SendOp::Read { .. } => WcOpcode::RdmaRead,
        };
        let cq = &q.own_cq().ch;
        let done = |c: Completion| push_cqe(cq, &c).map_err(|r| VerbsError::Call { call: "ibv_post_send", reason: r });
        // Relaxed: a flag; see `modify`.
        match q.state_word().load(Ordering::Relaxed) {
            ST_RTS => {}
            ST_ERROR | ST_DESTROYED => return done(err_completion(wr.wr_id, opcode, WcStatus::Flushed)),
            s => return Err(VerbsError::Invalid(format!("queue pair {} is {:?}: sends need RTS", q.qpn, state_of(s)))),
        }
        let injected = {
            let mut f = lock(&q.faults);
            let cut = f.cut || network_cut(f.net);
            if cut {
                // Relaxed: a flag the peer reads on its next work request.
                u32_at(&q.seg, QP_CUT).store(1, Ordering::Relaxed);
            }
            let failure = match f.fail {
                Some((0, status)) => {
                    f.fail = None;
                    Some(status)
                }
                Some((n, status)) => {
                    f.fail = Some((n - 1, status));
                    None
                }
                None => None,
            };
            if cut {
                Some(WcStatus::RetryExceeded)
            } else {
                failure
            }
        };
        let remote = inner.remote.as_mut().expect("an RTS queue pair has a peer");
        let outcome = match injected {
            Some(s) => Outcome::Failed(s),
            None if !remote.reachable(q.qpn) => Outcome::Failed(WcStatus::RetryExceeded),
            None => q.execute(wr, remote),
        };
        drop(inner);
        match outcome {
            Outcome::Done(n) => done(ok_completion(wr.wr_id, opcode, n, None)),
            Outcome::Failed(status) => {
                let r = done(err_completion(wr.wr_id, opcode, status));
                q.fail();
                r
            }
        }
    }
}

impl Drop for SimQp {
    fn drop(&mut self) {
        let q = &self.0;
        // Relaxed: a flag peers read on their next work request.
        q.state_word().store(ST_DESTROYED, Ordering::Relaxed);
        lock(&q.inner).remote = None;
        q.rq.destroy();
        let _ = q.seg.unlink();
        // Relaxed: a statistics counter.
        q.stats.qps.fetch_sub(1, LocalOrdering::Relaxed);
    }
}

/// Remove the simulation's segments of this run left by processes that
/// died (a peer killed in a test); those of live processes stay.
pub fn cleanup_dead() -> usize {
    let prefix = RunId::current().prefix();
    let Ok(dir) = std::fs::read_dir(segment::SHM_DIR) else { return 0 };
    let mut n = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let mut parts = rest.split('-');
        let kind = parts.next().unwrap_or("");
        if !matches!(kind, "vpd" | "vqp" | "vbuf" | "vcq" | "vrq") {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| u32::from_str_radix(p, 16).ok()) else { continue };
        if !ProcessId::pid_only(pid).is_alive() && std::fs::remove_file(entry.path()).is_ok() {
            n += 1;
        }
    }
    n
}
