//! The protocol engine: a reliable, ordered, flow-controlled message link
//! between two endpoints over one RC queue pair of the [`crate::verbs`]
//! interface.
//!
//! **Set-up.** Each side creates a completion queue and a queue pair,
//! registers its receive buffers and receive ring, and posts its receives
//! (before anything can arrive). The initiator's [`offer`] and the
//! responder's answer ([`accept`]) are [`crate::wire::Address`]es, carried
//! by the caller over a stream both already trust (the node services'
//! authenticated TCP link): [`connect`] takes that exchange as a function
//! from bytes out to bytes in. The responder moves to RTR (ready to
//! receive) before it answers; the initiator then moves to RTR and RTS and
//! sends HELLO; the responder sends nothing until HELLO has arrived, so no
//! message ever reaches a queue pair that cannot take it.
//!
//! **Messages.** A message of at most the inline size (header included)
//! goes as a send with its bytes inline in the work request, into one of
//! the peer's posted receives. Up to the eager size it is copied into a
//! registered staging slot and RDMA-written, with immediate data, into the
//! peer's receive ring at the slot of its sequence number (the write
//! consumes one posted receive, for the completion). Larger messages are
//! copied into a buffer of the registration cache and announced by a
//! descriptor; the receiver RDMA-reads them straight from that buffer into
//! one of its own cache, in chunks, and reports the read in its next
//! header, which releases the sender's buffer. The receiver hands large
//! messages to the application without a copy (the bytes are the cache
//! buffer, returned when dropped).
//!
//! **Flow control** is [`crate::flow`]: data credits are ring slots, freed
//! when the application takes a message, so a slow receiver stops its
//! sender after as many messages as it has slots; control credits cover
//! the control messages. Nothing is buffered without bound.
//!
//! **Errors.** A work request that completes in error fails the link with
//! an [`EngineError`] saying which operation and why: the peer lost
//! (transport retries exceeded), its credit window exceeded (no receive
//! posted), a remote access refused, a local protection error, ... A
//! peer's bytes that break the protocol fail it too. Once failed, every
//! call returns the same error; messages received before it are still
//! delivered. A keepalive control message every [`EngineConfig::keepalive`]
//! lets a side that only waits notice a lost peer.
//!
//! **Teardown.** [`Engine::close`] (or dropping the engine) waits, for a
//! bounded time, until the peer has read this side's large messages and
//! every send has completed, says BYE, stops the progress thread, moves
//! the queue pair to the error state and destroys it, then the completion
//! queue, then deregisters and frees every region; large messages still
//! held by the application keep their own cache buffer until dropped.

use crate::flow::Flow;
use crate::regcache::{CacheLimits, CacheStats, Lease, LeasedBytes, RegCache};
use crate::verbs::*;
use crate::wire::{self, Address, Descriptor, Header, WireError, BYE, CTRL, DATA, DESCRIPTOR, HEADER, HELLO, LARGE};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Sizes and limits of a link.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Slots of the receive ring: the data credits the peer gets.
    pub slots: u32,
    /// Bytes per slot, header included: the eager limit.
    pub slot_size: u32,
    /// Control receives: the control credits the peer gets.
    pub ctrl: u32,
    /// Bytes per posted receive (the largest inline send taken).
    pub recv_buf: u32,
    /// Inline bytes asked of the queue pair.
    pub max_inline: u32,
    /// RDMA reads outstanding at most.
    pub max_reads: u8,
    /// Bytes per RDMA read work request.
    pub read_chunk: usize,
    /// Largest message.
    pub max_message: usize,
    /// A control message after this long without sending (None: never).
    pub keepalive: Option<Duration>,
    /// How long closing waits for the peer to read large messages.
    pub linger: Duration,
    /// Bounds of the registration cache.
    pub cache: CacheLimits,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            slots: 32,
            slot_size: 8192,
            ctrl: 8,
            recv_buf: 256,
            max_inline: 128,
            max_reads: 8,
            read_chunk: 1 << 20,
            max_message: 1 << 34,
            keepalive: Some(Duration::from_secs(1)),
            linger: Duration::from_secs(5),
            cache: CacheLimits::default(),
        }
    }
}

/// Why a link failed or a call on it did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// Setting the link up failed.
    Setup(String),
    /// The peer is gone: its process died, its link is cut, or it stopped
    /// answering (transport retries exceeded).
    PeerLost(String),
    /// The peer said BYE: it closed the link.
    PeerClosed,
    /// A message found no receive at the peer: the credit window was
    /// exceeded.
    CreditExhausted(String),
    /// A work request failed.
    WorkRequest {
        /// What it was.
        op: &'static str,
        /// How it ended.
        status: WcStatus,
        /// The adapter's own code.
        vendor: u32,
    },
    /// The peer sent something that breaks the protocol.
    Protocol(String),
    /// Memory or queue resources failed.
    Resources(VerbsError),
    /// A message larger than the link carries.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A zero timeout and the call would have to wait.
    WouldBlock,
    /// The timeout passed.
    TimedOut,
    /// This side closed the link.
    Closed,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Setup(why) => write!(f, "RDMA link set-up failed: {why}"),
            EngineError::PeerLost(why) => write!(f, "RDMA peer lost: {why}"),
            EngineError::PeerClosed => write!(f, "the RDMA peer closed the link"),
            EngineError::CreditExhausted(why) => write!(f, "RDMA credit window exhausted: {why}"),
            EngineError::WorkRequest { op, status, vendor } => {
                write!(
                    f,
                    "RDMA {op} failed: {} (status {}, vendor error {vendor:#x})",
                    status.describe(),
                    status.code()
                )
            }
            EngineError::Protocol(why) => write!(f, "RDMA protocol error: {why}"),
            EngineError::Resources(e) => write!(f, "RDMA resources: {e}"),
            EngineError::TooLarge { len, max } => write!(f, "a message of {len} bytes; the RDMA link carries {max}"),
            EngineError::WouldBlock => write!(f, "the RDMA link cannot take or give a message now"),
            EngineError::TimedOut => write!(f, "timed out on the RDMA link"),
            EngineError::Closed => write!(f, "the RDMA link was closed"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<WireError> for EngineError {
    fn from(e: WireError) -> EngineError {
        EngineError::Protocol(e.0)
    }
}

impl From<VerbsError> for EngineError {
    fn from(e: VerbsError) -> EngineError {
        EngineError::Resources(e)
    }
}

/// What a link did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Data messages sent inline.
    pub sent_inline: u64,
    /// Data messages RDMA-written into the peer's ring.
    pub sent_written: u64,
    /// Large messages announced for the peer to read.
    pub sent_large: u64,
    /// Of those, read by the peer in place from a block store segment
    /// (not copied into a registered buffer first).
    pub sent_in_place: u64,
    /// Control messages sent.
    pub ctrl_sent: u64,
    /// Data and large messages received.
    pub received: u64,
    /// RDMA read work requests completed.
    pub reads: u64,
    /// Times a sender waited for a data credit.
    pub credit_waits: u64,
    /// Most data messages held for the application at once.
    pub peak_held: u32,
}

/// Where [`Engine::readiness`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// A message can be taken now (or the link failed: a call returns at once).
    pub readable: bool,
    /// A message can be sent now without waiting for credit.
    pub writable: bool,
}

const WR_RECV: u64 = 1 << 56;
const WR_INLINE: u64 = 2 << 56;
const WR_STAGE: u64 = 3 << 56;
const WR_CTRL: u64 = 4 << 56;
const WR_READ: u64 = 5 << 56;
const WR_KIND: u64 = 0xff << 56;
const CTRL_STAGE: usize = 64;

/// A received message waiting for the application.
enum Incoming {
    Bytes(Bytes),
    Slot { slot: u32, len: usize },
    Large { seq: u32, lease: Lease, len: usize, done: bool },
}

/// A large message of this side until the peer has read it (held for
/// what dropping it releases).
#[allow(dead_code)]
enum Out {
    /// Copied into a registered buffer of the cache.
    Copied(Lease),
    /// Read in place: the bytes (kept alive and unmodified) in a store
    /// segment registered in `Shared::sources`.
    InPlace(Bytes, Arc<dyn MemoryRegion>),
}

/// The registrations of block store segments that large messages are
/// read from in place, by the segment mapping's unique number.
type Sources = std::collections::HashMap<u64, Arc<dyn MemoryRegion>>;

/// Registrations of store segments kept at most (more are made again
/// when used again; messages in flight keep theirs).
const MAX_SOURCES: usize = 256;

/// Most inline bytes a LARGE announcement carries before the message's
/// in-place part (a reply's head, a tag byte).
pub const MAX_PREFIX: usize = wire::MAX_PREFIX;

struct ReadJob {
    seq: u32,
    remote: u64,
    rkey: u32,
    local: u64,
    lkey: u32,
    len: u64,
    next: u64,
    outstanding: u32,
}

struct State {
    flow: Flow,
    ready: bool,
    failed: Option<EngineError>,
    closing: bool,
    peer_bye: bool,
    inbox: VecDeque<Incoming>,
    reads: VecDeque<ReadJob>,
    reads_in_flight: u32,
    large_out: VecDeque<Out>,
    stage_free: Vec<u32>,
    ctrl_free: Vec<u32>,
    sq_outstanding: u32,
    last_sent: Instant,
    stats: EngineStats,
}

/// The verbs objects of one end, dropped in this order.
struct Res {
    qp: Box<dyn QueuePair>,
    _cq: Arc<dyn CompletionQueue>,
    recv_mr: Box<dyn MemoryRegion>,
    _ring_mr: Box<dyn MemoryRegion>,
    stage_mr: Option<Box<dyn MemoryRegion>>,
    recv: Buffer,
    ring: Buffer,
    stage: Option<Buffer>,
}

struct Limits {
    slots: u32,
    slot_size: usize,
    ctrl: u32,
    recv_buf: usize,
    /// Largest message (header included) sent inline.
    inline: usize,
    /// Largest message (header included) RDMA-written into the peer's ring.
    eager: usize,
    /// Data staging slots (the data credit cap).
    stage_slots: usize,
    peer_ring: u64,
    peer_rkey: u32,
    peer_slots: u32,
    peer_slot_size: u64,
    max_reads: u32,
    read_chunk: u64,
    max_message: usize,
    sq_depth: u32,
    keepalive: Option<Duration>,
    linger: Duration,
}

struct Shared {
    res: Mutex<Option<Res>>,
    // Copied out of `res` for use without its lock.
    qp: *const dyn QueuePair,
    cq: Arc<dyn CompletionQueue>,
    recv_addr: u64,
    recv_lkey: u32,
    ring_addr: *const u8,
    stage_addr: u64,
    stage_lkey: u32,
    lim: Limits,
    state: Mutex<State>,
    cond: Condvar,
    cache: RegCache,
    port: Arc<dyn Port>,
    sources: Mutex<Sources>,
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    peer: String,
}

// SAFETY: the raw pointers name the queue pair, ring and staging memory
// owned by `res`, which is dropped only after the progress thread has
// ended and with the state marked closed, so that no call uses them
// afterwards; verbs objects may be used from any thread.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// One end of an RDMA link. Dropping it closes it ([`Engine::close`]).
pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("peer", &self.shared.peer).finish_non_exhaustive()
    }
}

/// The initiator's half-made link, waiting for the responder's answer.
pub struct Connector {
    port: Arc<dyn Port>,
    cfg: EngineConfig,
    half: Half,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

/// A queue pair in INIT with its receives posted, before the peer is known.
struct Half {
    // Dropped in this order.
    qp: Box<dyn QueuePair>,
    cq: Arc<dyn CompletionQueue>,
    recv_mr: Box<dyn MemoryRegion>,
    ring_mr: Box<dyn MemoryRegion>,
    recv: Buffer,
    ring: Buffer,
}

fn check_config(cfg: &EngineConfig) -> Result<(), EngineError> {
    let bad = |why: &str| Err(EngineError::Setup(format!("engine configuration: {why}")));
    if !(1..=wire::MAX_SLOTS).contains(&cfg.slots) {
        return bad("slots must be 1 to 4096");
    }
    if !(wire::MIN_CTRL..=wire::MAX_CTRL).contains(&cfg.ctrl) {
        return bad("ctrl must be 3 to 1024");
    }
    if cfg.slot_size < (HEADER + DESCRIPTOR) as u32 || cfg.slot_size > wire::MAX_SLOT_SIZE {
        return bad("slot_size must be 48 bytes to 16 MiB");
    }
    if cfg.recv_buf < (HEADER + DESCRIPTOR) as u32 || cfg.recv_buf > cfg.slot_size {
        return bad("recv_buf must be 48 bytes to slot_size");
    }
    if cfg.max_reads == 0 || cfg.read_chunk == 0 || cfg.read_chunk > 1 << 30 || cfg.max_message == 0 {
        return bad("max_reads, read_chunk (at most 1 GiB) and max_message must not be 0");
    }
    Ok(())
}

fn half(port: &Arc<dyn Port>, cfg: &EngineConfig) -> Result<Half, EngineError> {
    check_config(cfg)?;
    let recvs = cfg.slots + cfg.ctrl;
    let sq = cfg.slots + cfg.ctrl + u32::from(cfg.max_reads) + 4;
    let cq = port.create_cq(sq + recvs + 8)?;
    let caps = QpCaps { max_send_wr: sq, max_recv_wr: recvs, max_inline: cfg.max_inline, max_rd_atomic: cfg.max_reads };
    let qp = port.create_qp(&cq, caps)?;
    let got = qp.caps();
    if got.max_send_wr < sq || got.max_recv_wr < recvs {
        return Err(EngineError::Setup(format!(
            "the device grants {} sends and {} receives per queue pair; {sq} and {recvs} are needed",
            got.max_send_wr, got.max_recv_wr
        )));
    }
    qp.modify(QpTransition::Init)?;
    let recv = port.alloc(recvs as usize * cfg.recv_buf as usize)?;
    // SAFETY: the region is dropped before the buffer (field order of Half
    // and Res, which is where it goes).
    let recv_mr = unsafe { port.register(recv.ptr(), recv.len(), Access::LOCAL_WRITE)? };
    let ring = port.alloc(cfg.slots as usize * cfg.slot_size as usize)?;
    // SAFETY: as above.
    let ring_mr = unsafe { port.register(ring.ptr(), ring.len(), Access::LOCAL_WRITE | Access::REMOTE_WRITE)? };
    for i in 0..recvs {
        let sge =
            Sge { addr: recv.addr() + u64::from(i) * u64::from(cfg.recv_buf), len: cfg.recv_buf, lkey: recv_mr.lkey() };
        qp.post_recv(&RecvWr { wr_id: WR_RECV | u64::from(i), sge })?;
    }
    Ok(Half { qp, cq, recv_mr, ring_mr, recv, ring })
}

fn address_of(h: &Half, cfg: &EngineConfig, answer: bool) -> Address {
    Address {
        answer,
        qp: h.qp.address(),
        max_reads: h.qp.caps().max_rd_atomic.max(1),
        ring_addr: h.ring.addr(),
        ring_rkey: h.ring_mr.rkey(),
        slots: cfg.slots,
        slot_size: cfg.slot_size,
        ctrl: cfg.ctrl,
        recv_buf: cfg.recv_buf,
    }
}

/// Start a link as initiator: the connector and the offer to send to the
/// responder.
pub fn offer(port: Arc<dyn Port>, cfg: EngineConfig) -> Result<(Connector, Vec<u8>), EngineError> {
    let h = half(&port, &cfg)?;
    let bytes = address_of(&h, &cfg, false).encode();
    Ok((Connector { port, cfg, half: h }, bytes))
}

impl Connector {
    /// Finish with the responder's answer: the link, ready to use.
    pub fn finish(self, answer: &[u8]) -> Result<Engine, EngineError> {
        let peer = Address::decode(answer).map_err(|e| EngineError::Setup(format!("the peer's answer: {e}")))?;
        if !peer.answer {
            return Err(EngineError::Setup("the peer answered with an offer".into()));
        }
        let e = build(self.port, self.cfg, self.half, &peer, true)?;
        e.hello()?;
        Ok(e)
    }
}

/// Answer an initiator's offer: the link (which sends nothing until the
/// initiator's HELLO arrives) and the answer to send back.
pub fn accept(port: Arc<dyn Port>, cfg: EngineConfig, offer: &[u8]) -> Result<(Engine, Vec<u8>), EngineError> {
    let peer = Address::decode(offer).map_err(|e| EngineError::Setup(format!("the peer's offer: {e}")))?;
    if peer.answer {
        return Err(EngineError::Setup("the peer sent an answer where an offer was due".into()));
    }
    let h = half(&port, &cfg)?;
    let answer = address_of(&h, &cfg, true).encode();
    let e = build(port, cfg, h, &peer, false)?;
    Ok((e, answer))
}

/// Set a link up as initiator, with `exchange` carrying the offer to the
/// responder and returning its answer (over the authenticated stream).
pub fn connect(
    port: Arc<dyn Port>,
    cfg: EngineConfig,
    exchange: impl FnOnce(&[u8]) -> std::io::Result<Vec<u8>>,
) -> Result<Engine, EngineError> {
    let (c, bytes) = offer(port, cfg)?;
    let answer = exchange(&bytes).map_err(|e| EngineError::Setup(format!("exchanging addresses: {e}")))?;
    c.finish(&answer)
}

fn build(port: Arc<dyn Port>, cfg: EngineConfig, h: Half, peer: &Address, ready: bool) -> Result<Engine, EngineError> {
    h.qp.modify(QpTransition::ReadyToReceive(peer.qp.clone()))?;
    h.qp.modify(QpTransition::ReadyToSend)?;
    let caps = h.qp.caps();
    let credits = peer.slots.min(cfg.slots);
    let ctrl_credits = peer.ctrl.min(cfg.ctrl);
    let eager = peer.slot_size.min(cfg.slot_size) as usize;
    let stage = port.alloc(credits as usize * eager + ctrl_credits as usize * CTRL_STAGE)?;
    // SAFETY: dropped before the buffer (field order of Res).
    let stage_mr = unsafe { port.register(stage.ptr(), stage.len(), Access::LOCAL_WRITE)? };
    let mut flow = Flow::new(cfg.slots, cfg.ctrl, peer.slots, peer.ctrl);
    flow.cap_credits(credits, ctrl_credits);
    let lim = Limits {
        slots: cfg.slots,
        slot_size: cfg.slot_size as usize,
        ctrl: cfg.ctrl,
        recv_buf: cfg.recv_buf as usize,
        inline: (caps.max_inline as usize).min(peer.recv_buf as usize),
        eager,
        stage_slots: credits as usize,
        peer_ring: peer.ring_addr,
        peer_rkey: peer.ring_rkey,
        peer_slots: peer.slots,
        peer_slot_size: u64::from(peer.slot_size),
        max_reads: u32::from(cfg.max_reads.min(peer.max_reads).min(caps.max_rd_atomic.max(1))),
        read_chunk: cfg.read_chunk as u64,
        max_message: cfg.max_message,
        sq_depth: caps.max_send_wr,
        keepalive: cfg.keepalive,
        linger: cfg.linger,
    };
    let Half { qp, cq, recv_mr, ring_mr, recv, ring } = h;
    let res = Res {
        qp,
        _cq: cq.clone(),
        recv_mr,
        _ring_mr: ring_mr,
        stage_mr: Some(stage_mr),
        recv,
        ring,
        stage: Some(stage),
    };
    let shared = Arc::new(Shared {
        qp: &*res.qp as *const dyn QueuePair,
        cq,
        recv_addr: res.recv.addr(),
        recv_lkey: res.recv_mr.lkey(),
        ring_addr: res.ring.ptr(),
        stage_addr: res.stage.as_ref().expect("set").addr(),
        stage_lkey: res.stage_mr.as_ref().expect("set").lkey(),
        state: Mutex::new(State {
            flow,
            ready,
            failed: None,
            closing: false,
            peer_bye: false,
            inbox: VecDeque::new(),
            reads: VecDeque::new(),
            reads_in_flight: 0,
            large_out: VecDeque::new(),
            stage_free: (0..credits).rev().collect(),
            ctrl_free: (0..ctrl_credits).rev().collect(),
            sq_outstanding: 0,
            last_sent: Instant::now(),
            stats: EngineStats::default(),
        }),
        cond: Condvar::new(),
        cache: RegCache::new(port.clone(), cfg.cache),
        port,
        sources: Mutex::new(Sources::new()),
        waker: Mutex::new(None),
        peer: format!("queue pair {} at {}", peer.qp.qpn, peer.qp.gid),
        lim,
        res: Mutex::new(Some(res)),
    });
    let s2 = shared.clone();
    let thread = std::thread::Builder::new()
        .name("dragon-verbs".into())
        .spawn(move || progress(&s2))
        .map_err(|e| EngineError::Setup(format!("cannot start the progress thread: {e}")))?;
    Ok(Engine { shared, thread: Mutex::new(Some(thread)) })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wc_error(what: &'static str, c: &Completion) -> EngineError {
    match c.status {
        WcStatus::RetryExceeded => {
            EngineError::PeerLost(format!("{what}: {} (vendor error {:#x})", c.status.describe(), c.vendor_err))
        }
        WcStatus::RnrRetryExceeded => {
            EngineError::CreditExhausted(format!("{what}: {} (vendor error {:#x})", c.status.describe(), c.vendor_err))
        }
        status => EngineError::WorkRequest { op: what, status, vendor: c.vendor_err },
    }
}

fn op_name(wr_id: u64) -> &'static str {
    match wr_id & WR_KIND {
        WR_RECV => "receive",
        WR_INLINE => "inline send",
        WR_STAGE => "RDMA write with immediate data",
        WR_CTRL => "control send",
        WR_READ => "RDMA read",
        _ => "work request",
    }
}

impl Shared {
    fn qp(&self) -> &dyn QueuePair {
        // SAFETY: `qp` points into `res`, dropped only after the progress
        // thread ended and with `closing` set (see the Send impl); callers
        // hold the state lock and have checked `closing`.
        unsafe { &*self.qp }
    }

    fn wake_users(&self) {
        self.cond.notify_all();
        let w = lock(&self.waker).clone();
        if let Some(w) = w {
            w();
        }
    }

    /// Fail the link (the first cause stays).
    fn fail(&self, st: &mut State, e: EngineError) {
        if st.failed.is_none() {
            st.failed = Some(e);
        }
    }

    /// Post a send work request (the state lock held, not closing).
    fn post(&self, st: &mut State, wr: &SendWr) -> Result<(), EngineError> {
        if st.sq_outstanding >= self.lim.sq_depth {
            let e = EngineError::Protocol("send queue overrun".into());
            self.fail(st, e.clone());
            return Err(e);
        }
        if let Err(e) = self.qp().post_send(wr) {
            let e = EngineError::Resources(e);
            self.fail(st, e.clone());
            return Err(e);
        }
        st.sq_outstanding += 1;
        st.last_sent = Instant::now();
        Ok(())
    }

    /// Post a message of at most the eager size with data sequence number
    /// `seq`: inline, or RDMA-written from a staging slot (one is free:
    /// the caller checked).
    fn post_small(&self, st: &mut State, parts: &[&[u8]], seq: u32) -> Result<(), EngineError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= self.lim.inline {
            let bytes = parts.concat();
            let wr = SendWr {
                wr_id: WR_INLINE,
                op: SendOp::Send,
                sge: Sge { addr: bytes.as_ptr() as u64, len: total as u32, lkey: 0 },
                inline: true,
            };
            self.post(st, &wr)?;
            st.stats.sent_inline += 1;
            return Ok(());
        }
        let i = st.stage_free.pop().expect("the caller checked for a staging slot");
        let off = i as usize * self.lim.eager;
        self.stage_write(off, parts);
        let remote = self.lim.peer_ring + u64::from(seq % self.lim.peer_slots) * self.lim.peer_slot_size;
        let wr = SendWr {
            wr_id: WR_STAGE | u64::from(i),
            op: SendOp::WriteImm { remote_addr: remote, rkey: self.lim.peer_rkey, imm: seq },
            sge: Sge { addr: self.stage_addr + off as u64, len: total as u32, lkey: self.stage_lkey },
            inline: false,
        };
        if let Err(e) = self.post(st, &wr) {
            st.stage_free.push(i);
            return Err(e);
        }
        st.stats.sent_written += 1;
        Ok(())
    }

    /// Send a control message now if allowed (`flags`, `last` as in
    /// [`Flow::send_ctrl`]); whether it went.
    fn send_ctrl(&self, st: &mut State, flags: u8, last: bool) -> bool {
        if !st.ready || st.failed.is_some() || st.closing {
            return false;
        }
        let staged = HEADER > self.lim.inline;
        if staged && st.ctrl_free.is_empty() {
            return false;
        }
        let Some(h) = st.flow.send_ctrl(flags, last) else { return false };
        let bytes = h.encode();
        let wr = if staged {
            let j = st.ctrl_free.pop().expect("checked");
            let off = self.lim.stage_slots * self.lim.eager + j as usize * CTRL_STAGE;
            self.stage_write(off, &[&bytes]);
            SendWr {
                wr_id: WR_CTRL | u64::from(j),
                op: SendOp::Send,
                sge: Sge { addr: self.stage_addr + off as u64, len: HEADER as u32, lkey: self.stage_lkey },
                inline: false,
            }
        } else {
            SendWr {
                wr_id: WR_INLINE,
                op: SendOp::Send,
                sge: Sge { addr: bytes.as_ptr() as u64, len: HEADER as u32, lkey: 0 },
                inline: true,
            }
        };
        if self.post(st, &wr).is_err() {
            return false;
        }
        st.stats.ctrl_sent += 1;
        true
    }

    /// Copy `parts` into the staging buffer at `off` (a slot this side
    /// owns until the work request posted from it completes).
    fn stage_write(&self, off: usize, parts: &[&[u8]]) {
        let mut at = self.stage_addr as usize + off;
        for p in parts {
            // SAFETY: the slot lies in the staging buffer (offsets are
            // computed within its size at set-up) and is owned by this side
            // (taken from the free list; no work request uses it).
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), at as *mut u8, p.len()) };
            at += p.len();
        }
    }

    /// Send the control message owed, if any (credits, read completions).
    fn settle(&self, st: &mut State) {
        if st.flow.wants_ctrl() {
            self.send_ctrl(st, 0, false);
        }
    }

    fn issue_reads(&self, st: &mut State) {
        while st.failed.is_none() && !st.closing && st.reads_in_flight < self.lim.max_reads {
            let chunk = self.lim.read_chunk;
            let Some(job) = st.reads.iter_mut().find(|j| j.next < j.len) else { break };
            let n = (job.len - job.next).min(chunk);
            let wr = SendWr {
                wr_id: WR_READ | u64::from(job.seq),
                op: SendOp::Read { remote_addr: job.remote + job.next, rkey: job.rkey },
                sge: Sge { addr: job.local + job.next, len: n as u32, lkey: job.lkey },
                inline: false,
            };
            job.next += n;
            job.outstanding += 1;
            if self.post(st, &wr).is_err() {
                return;
            }
            st.reads_in_flight += 1;
        }
    }

    /// One completion; `Err` fails the link.
    fn complete(&self, st: &mut State, c: &Completion) -> Result<(), EngineError> {
        let kind = c.wr_id & WR_KIND;
        if kind != WR_RECV {
            st.sq_outstanding = st.sq_outstanding.saturating_sub(1);
        }
        if c.status != WcStatus::Success {
            if c.status == WcStatus::Flushed && (st.failed.is_some() || st.closing) {
                return Ok(());
            }
            return Err(wc_error(op_name(c.wr_id), c));
        }
        match kind {
            WR_RECV => self.received(st, c),
            WR_INLINE => Ok(()),
            WR_STAGE => {
                st.stage_free.push((c.wr_id & 0xffff_ffff) as u32);
                Ok(())
            }
            WR_CTRL => {
                st.ctrl_free.push((c.wr_id & 0xffff_ffff) as u32);
                Ok(())
            }
            WR_READ => {
                st.reads_in_flight = st.reads_in_flight.saturating_sub(1);
                st.stats.reads += 1;
                let seq = (c.wr_id & 0xffff_ffff) as u32;
                let Some(job) = st.reads.iter_mut().find(|j| j.seq == seq && j.outstanding > 0) else {
                    return Err(EngineError::Protocol(format!("a read completion for unknown message {seq}")));
                };
                job.outstanding -= 1;
                // Reads complete in order: finished jobs leave from the front.
                while st.reads.front().is_some_and(|j| j.next == j.len && j.outstanding == 0) {
                    let j = st.reads.pop_front().expect("checked");
                    for m in st.inbox.iter_mut() {
                        if let Incoming::Large { seq, done, .. } = m {
                            if *seq == j.seq {
                                *done = true;
                            }
                        }
                    }
                    st.flow.read_done();
                }
                Ok(())
            }
            _ => Err(EngineError::Protocol(format!("a completion with unknown id {:#x}", c.wr_id))),
        }
    }

    /// A receive completed: take the message, re-post the receive.
    fn received(&self, st: &mut State, c: &Completion) -> Result<(), EngineError> {
        let index = (c.wr_id & 0xffff_ffff) as u32;
        if index >= self.lim.slots + self.lim.ctrl {
            return Err(EngineError::Protocol(format!("a receive completion for buffer {index}")));
        }
        let len = c.byte_len as usize;
        // The message: in the receive buffer (a send) or in a ring slot (an
        // RDMA write with immediate data; only its first bytes are copied:
        // a DATA payload stays in the slot until the application takes it).
        let (msg, slot): (Vec<u8>, Option<u32>) = match c.opcode {
            WcOpcode::Recv => {
                if len > self.lim.recv_buf {
                    return Err(EngineError::Protocol(format!("a send of {len} bytes")));
                }
                let at = self.recv_addr as usize + index as usize * self.lim.recv_buf;
                let mut v = vec![0u8; len];
                // SAFETY: receive buffer `index` holds the `len` bytes the
                // adapter wrote; it is ours until re-posted below.
                unsafe { std::ptr::copy_nonoverlapping(at as *const u8, v.as_mut_ptr(), len) };
                (v, None)
            }
            WcOpcode::RecvWithImm => {
                let seq = c.imm.ok_or_else(|| EngineError::Protocol("an RDMA write without immediate data".into()))?;
                let slot = seq % self.lim.slots;
                if !(HEADER..=self.lim.slot_size).contains(&len) {
                    return Err(EngineError::Protocol(format!("an RDMA write of {len} bytes")));
                }
                let head = len.min(HEADER + DESCRIPTOR + MAX_PREFIX);
                let mut v = vec![0u8; head];
                let at = slot as usize * self.lim.slot_size;
                // SAFETY: the slot lies in the ring and holds what the peer
                // wrote; it writes the slot again only after this side frees
                // it (the slot's credit).
                unsafe { std::ptr::copy_nonoverlapping(self.ring_addr.add(at), v.as_mut_ptr(), head) };
                (v, Some(slot))
            }
            op => return Err(EngineError::Protocol(format!("a receive completed as {op:?}"))),
        };
        // Re-post the receive before any credit for it can be reported.
        let sge = Sge {
            addr: self.recv_addr + u64::from(index) * self.lim.recv_buf as u64,
            len: self.lim.recv_buf as u32,
            lkey: self.recv_lkey,
        };
        self.qp().post_recv(&RecvWr { wr_id: c.wr_id, sge })?;
        let h = Header::parse(&msg, len)?;
        if let Some(slot) = slot {
            if h.kind == CTRL || slot != h.seq % self.lim.slots || c.imm != Some(h.seq) {
                return Err(EngineError::Protocol("an RDMA write that does not match its header".into()));
            }
        }
        let read = st.flow.on_header(&h)?;
        for _ in 0..read {
            st.large_out.pop_front();
        }
        match h.kind {
            CTRL => {
                st.flow.on_ctrl(h.seq)?;
                if h.flags & HELLO != 0 {
                    st.ready = true;
                }
                if h.flags & BYE != 0 {
                    st.peer_bye = true;
                }
            }
            DATA => {
                st.flow.on_data(h.seq)?;
                st.stats.received += 1;
                st.inbox.push_back(match slot {
                    None => Incoming::Bytes(Bytes::copy_from_slice(&msg[HEADER..])),
                    Some(slot) => Incoming::Slot { slot, len: h.len as usize },
                });
            }
            _ => {
                st.flow.on_data(h.seq)?;
                st.stats.received += 1;
                let d = Descriptor::decode(&msg[HEADER..HEADER + DESCRIPTOR], self.lim.max_message as u64)?;
                // The bytes sent inline before the part to read (checked
                // against MAX_PREFIX by Header::parse).
                let prefix = &msg[HEADER + DESCRIPTOR..HEADER + DESCRIPTOR + h.len as usize];
                let total = d.len as usize + prefix.len();
                if total > self.lim.max_message {
                    return Err(EngineError::Protocol(format!("a large message of {total} bytes")));
                }
                let mut lease = self.cache.get(total)?;
                lease.fill(&[prefix]);
                st.reads.push_back(ReadJob {
                    seq: h.seq,
                    remote: d.addr,
                    rkey: d.rkey,
                    local: lease.addr() + prefix.len() as u64,
                    lkey: lease.lkey(),
                    len: d.len,
                    next: 0,
                    outstanding: 0,
                });
                st.inbox.push_back(Incoming::Large { seq: h.seq, lease, len: total, done: false });
            }
        }
        st.stats.peak_held = st.stats.peak_held.max(st.flow.held());
        Ok(())
    }

    /// Take the next message if it is complete (the state lock held, not
    /// closing: the ring is still there).
    fn take(&self, st: &mut State) -> Option<Bytes> {
        let ready = match st.inbox.front()? {
            Incoming::Large { done, .. } => *done,
            _ => true,
        };
        if !ready {
            return None;
        }
        let m = match st.inbox.pop_front().expect("checked") {
            Incoming::Bytes(b) => b,
            Incoming::Slot { slot, len } => {
                let at = slot as usize * self.lim.slot_size + HEADER;
                // SAFETY: the slot holds the message; its credit is not yet
                // returned, so the peer cannot write it meanwhile.
                let s = unsafe { std::slice::from_raw_parts(self.ring_addr.add(at), len) };
                Bytes::copy_from_slice(s)
            }
            Incoming::Large { lease, len, .. } => Bytes::from_owner(LeasedBytes::new(lease, len)),
        };
        st.flow.freed();
        self.settle(st);
        Some(m)
    }

    fn readable(&self, st: &State) -> bool {
        st.failed.is_some()
            || st.closing
            || st.peer_bye
            || match st.inbox.front() {
                Some(Incoming::Large { done, .. }) => *done,
                Some(_) => true,
                None => false,
            }
    }

    /// Wait at most `timeout` until a message whose first part is `small`
    /// bytes (header included) may be sent; the state lock, held.
    fn wait_credit(&self, small: usize, timeout: Option<Duration>) -> Result<MutexGuard<'_, State>, EngineError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.state);
        let mut waited = false;
        loop {
            if st.closing {
                return Err(EngineError::Closed);
            }
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.peer_bye {
                return Err(EngineError::PeerClosed);
            }
            if self.can_send(&st, small) {
                break;
            }
            if timeout == Some(Duration::ZERO) {
                return Err(EngineError::WouldBlock);
            }
            if !waited && st.ready && st.flow.data_credits() == 0 {
                st.stats.credit_waits += 1;
            }
            waited = true;
            let (g, more) = wait_until(&self.cond, st, deadline);
            st = g;
            if !more {
                return Err(EngineError::TimedOut);
            }
        }
        Ok(st)
    }

    /// The registration of the block store segment that holds all of
    /// `data` (made on first use and kept until the link closes), if it is
    /// in one and the port registers it.
    fn source(&self, data: &[u8]) -> Option<Arc<dyn MemoryRegion>> {
        let m = transport_shm::blocks::segment_mapping(data.as_ptr() as usize, data.len())?;
        let mut sources = lock(&self.sources);
        if let Some(mr) = sources.get(&m.id) {
            return Some(mr.clone());
        }
        // SAFETY: the segment stays mapped while the store that mapped it
        // lives, and every message read from it keeps that store (its
        // bytes own a block view of it) until the peer has read it; a
        // registration that outlives its mapping is never looked up again
        // (mapping numbers are not reused) and goes with the link.
        let mr: Arc<dyn MemoryRegion> =
            Arc::from(unsafe { self.port.register(m.base as *mut u8, m.len, Access::REMOTE_READ) }.ok()?);
        if sources.len() >= MAX_SOURCES {
            sources.clear();
        }
        sources.insert(m.id, mr.clone());
        Some(mr)
    }

    fn can_send(&self, st: &State, small: usize) -> bool {
        st.ready
            && st.flow.data_credits() > 0
            && (small > self.lim.eager || small <= self.lim.inline || !st.stage_free.is_empty())
    }
}

/// Wait on `cond` until `deadline` (None: forever); false once it passed.
fn wait_until<'a>(
    cond: &Condvar,
    g: MutexGuard<'a, State>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, State>, bool) {
    match deadline {
        None => (cond.wait(g).unwrap_or_else(|e| e.into_inner()), true),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (g, false);
            }
            let (g, _) = cond.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner());
            (g, true)
        }
    }
}

impl Engine {
    fn hello(&self) -> Result<(), EngineError> {
        let s = &*self.shared;
        let mut st = lock(&s.state);
        if !s.send_ctrl(&mut st, HELLO, true) {
            return Err(st.failed.clone().unwrap_or_else(|| EngineError::Setup("cannot send HELLO".into())));
        }
        Ok(())
    }

    /// Send one message made of `parts`, waiting at most `timeout` (None:
    /// forever) for credit while the peer is slow to take messages.
    pub fn send(&self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<(), EngineError> {
        let s = &*self.shared;
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if n > s.lim.max_message {
            return Err(EngineError::TooLarge { len: n, max: s.lim.max_message });
        }
        let small = HEADER + n;
        // A large message is copied into a registered buffer first,
        // without the state lock.
        let lease = if small > s.lim.eager {
            let mut l = s.cache.get(n)?;
            l.fill(parts);
            Some(l)
        } else {
            None
        };
        let mut st = s.wait_credit(small, timeout)?;
        match lease {
            Some(lease) => {
                let h = st.flow.send_data(LARGE, 0).expect("credit checked");
                let d = Descriptor { addr: lease.addr(), len: n as u64, rkey: lease.rkey() };
                s.post_small(&mut st, &[&h.encode(), &d.encode()], h.seq)?;
                st.large_out.push_back(Out::Copied(lease));
                st.stats.sent_large += 1;
            }
            None => {
                let h = st.flow.send_data(DATA, n as u32).expect("credit checked");
                let head = h.encode();
                let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
                all.push(&head);
                all.extend_from_slice(parts);
                s.post_small(&mut st, &all, h.seq)?;
            }
        }
        Ok(())
    }

    /// Send one message: the bytes of `head` then those of `body`, waiting
    /// at most `timeout` for credit as [`Engine::send`] does. When `body`
    /// lies in a segment of a block store of this process (a received
    /// block's bytes, `transport_shm::blocks::BlockView`) and `head` is
    /// at most [`MAX_PREFIX`] bytes, the peer reads `body` from there by
    /// RDMA, without a copy on this side; `body` is kept (so is its block)
    /// until it has. Otherwise this is [`Engine::send`].
    pub fn send_in_place(&self, head: &[&[u8]], body: &Bytes, timeout: Option<Duration>) -> Result<(), EngineError> {
        let s = &*self.shared;
        let plen: usize = head.iter().map(|p| p.len()).sum();
        let announce = HEADER + DESCRIPTOR + plen;
        let n = plen + body.len();
        let in_place =
            plen <= MAX_PREFIX && announce <= s.lim.inline && HEADER + n > s.lim.eager && n <= s.lim.max_message;
        let Some(mr) = in_place.then(|| s.source(body)).flatten() else {
            let mut parts = head.to_vec();
            parts.push(body);
            return self.send(&parts, timeout);
        };
        let mut st = s.wait_credit(HEADER + n, timeout)?;
        let h = st.flow.send_data(LARGE, plen as u32).expect("credit checked");
        let d = Descriptor { addr: body.as_ptr() as u64, len: body.len() as u64, rkey: mr.rkey() };
        let (he, de) = (h.encode(), d.encode());
        let mut parts: Vec<&[u8]> = Vec::with_capacity(head.len() + 2);
        parts.push(&he);
        parts.push(&de);
        parts.extend_from_slice(head);
        s.post_small(&mut st, &parts, h.seq)?;
        st.large_out.push_back(Out::InPlace(body.clone(), mr));
        st.stats.sent_large += 1;
        st.stats.sent_in_place += 1;
        Ok(())
    }

    /// Receive the next message, waiting at most `timeout` (None: forever).
    /// Large messages come without a copy (their bytes are a registered
    /// buffer, returned to the cache when dropped).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Bytes, EngineError> {
        let s = &*self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&s.state);
        loop {
            if st.closing {
                return Err(EngineError::Closed);
            }
            if let Some(m) = s.take(&mut st) {
                return Ok(m);
            }
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.peer_bye {
                return Err(EngineError::PeerClosed);
            }
            if timeout == Some(Duration::ZERO) {
                return Err(EngineError::WouldBlock);
            }
            let (g, more) = wait_until(&s.cond, st, deadline);
            st = g;
            if !more {
                return Err(EngineError::TimedOut);
            }
        }
    }

    /// Whether a receive or a small send would complete now.
    pub fn readiness(&self) -> Readiness {
        let s = &*self.shared;
        let st = lock(&s.state);
        Readiness {
            readable: s.readable(&st),
            writable: st.failed.is_some() || st.closing || st.peer_bye || s.can_send(&st, HEADER),
        }
    }

    /// Call `f` (from the progress thread, briefly) whenever completions
    /// were handled: readiness may have changed.
    pub fn set_waker(&self, f: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.shared.waker) = Some(f);
    }

    /// Fail the link from outside (its other channel to the peer broke, say).
    pub fn fail(&self, e: EngineError) {
        let mut st = lock(&self.shared.state);
        self.shared.fail(&mut st, e);
        drop(st);
        self.shared.wake_users();
    }

    /// The error the link failed with, if it did.
    pub fn failure(&self) -> Option<EngineError> {
        lock(&self.shared.state).failed.clone()
    }

    /// What it did so far.
    pub fn stats(&self) -> EngineStats {
        lock(&self.shared.state).stats
    }

    /// The registration cache's figures.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.cache.stats()
    }

    /// The largest message the link carries.
    pub fn max_message(&self) -> usize {
        self.shared.lim.max_message
    }

    /// Who the peer is, for messages.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Close: wait (up to the configured linger) for the peer to read this
    /// side's large messages and for every send to complete, say BYE, stop
    /// the progress thread, and release every verbs object. Later calls
    /// fail with [`EngineError::Closed`]. Closing twice does nothing.
    pub fn close(&self) {
        let s = &*self.shared;
        {
            let deadline = Some(Instant::now() + s.lim.linger);
            let mut st = lock(&s.state);
            if st.closing {
                return;
            }
            let live = |st: &State| st.ready && st.failed.is_none() && !st.peer_bye;
            if live(&st) && !st.large_out.is_empty() {
                // A probe: if the peer is gone, it fails instead of the
                // wait below lasting the whole linger.
                s.send_ctrl(&mut st, 0, false);
            }
            while live(&st) && (!st.large_out.is_empty() || st.sq_outstanding > 0) {
                let (g, more) = wait_until(&s.cond, st, deadline);
                st = g;
                if !more {
                    break;
                }
            }
            if live(&st) && s.send_ctrl(&mut st, BYE, true) {
                while live(&st) && st.sq_outstanding > 0 {
                    let (g, more) = wait_until(&s.cond, st, deadline);
                    st = g;
                    if !more {
                        break;
                    }
                }
            }
            st.closing = true;
        }
        s.cq.wake();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        let res = lock(&s.res).take();
        if let Some(res) = res {
            // Flush what is left, then destroy in order: queue pair, its
            // registrations and memory; the completion queue goes with the
            // last reference.
            let _ = res.qp.modify(QpTransition::Error);
            drop(res);
        }
        // Messages not taken held ring slots and cache buffers, large ones
        // not read held blocks and registrations: gone too.
        {
            let mut st = lock(&s.state);
            st.inbox.clear();
            st.large_out.clear();
        }
        lock(&s.sources).clear();
        s.wake_users();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// The progress thread: completions, receives re-posted, credits returned,
/// reads issued, keepalives; ends when the link closes.
fn progress(s: &Shared) {
    let mut got = Vec::with_capacity(64);
    loop {
        got.clear();
        let polled = s.cq.poll(&mut got, 64);
        let mut st = lock(&s.state);
        if st.closing {
            return;
        }
        let before = st.failed.is_some();
        match polled {
            Err(e) => s.fail(&mut st, EngineError::Resources(e)),
            Ok(_) => {
                for c in &got {
                    if let Err(e) = s.complete(&mut st, c) {
                        s.fail(&mut st, e);
                    }
                }
            }
        }
        if st.failed.is_none() {
            s.issue_reads(&mut st);
            s.settle(&mut st);
            if let Some(k) = s.lim.keepalive {
                if st.ready && st.last_sent.elapsed() >= k {
                    s.send_ctrl(&mut st, 0, false);
                }
            }
        }
        let changed = !got.is_empty() || st.failed.is_some() != before;
        drop(st);
        if changed {
            s.wake_users();
        }
        if got.is_empty() {
            let wait = s.lim.keepalive.map_or(Duration::from_secs(1), |k| k.min(Duration::from_secs(1)));
            if let Err(e) = s.cq.wait(Some(wait)) {
                // Without its completion channel the link cannot go on.
                let mut st = lock(&s.state);
                s.fail(&mut st, EngineError::Resources(e));
                drop(st);
                s.wake_users();
                return;
            }
        }
    }
}
