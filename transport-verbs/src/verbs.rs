//! The narrow interface over the verbs calls the protocol needs, with two
//! implementations: [`crate::ibv`] (rdma-core's `libibverbs`, loaded at run
//! time) and [`crate::sim`] (a simulated fabric in shared memory).
//!
//! It covers what one reliable-connected link uses and nothing more:
//!
//! - discovery: [`Fabric::ports`] lists the ports of every device with their
//!   state, link layer, LID and GID;
//! - [`Fabric::open`] opens one port with a protection domain of its own: a
//!   [`Port`], which allocates memory it can register ([`Port::alloc`]),
//!   registers it ([`Port::register`], a [`MemoryRegion`] that deregisters
//!   when dropped), and makes completion queues and RC queue pairs;
//! - a [`QueuePair`] moves through the states of an RC queue pair
//!   ([`QueuePair::modify`]: INIT, RTR with the peer's address, RTS, ERROR)
//!   and takes work requests: receives ([`RecvWr`]) and sends, RDMA writes
//!   with immediate data and RDMA reads ([`SendWr`], one scatter/gather
//!   element each);
//! - a [`CompletionQueue`] is polled for [`Completion`]s and waited on (the
//!   completion channel), and a waiter can be woken from another thread.
//!
//! Every call returns a [`VerbsError`] that says what failed; a work
//! request that fails does so through its completion ([`WcStatus`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A 128-bit global identifier of a port (IPv6-formatted).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The upper 64 bits: the subnet prefix (InfiniBand).
    pub fn subnet_prefix(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// The lower 64 bits: the interface id.
    pub fn interface_id(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }

    /// Whether every byte is zero (an empty GID table entry).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`, RoCE v2).
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        (self.0[..10] == [0; 10] && self.0[10..12] == [0xff, 0xff])
            .then(|| std::net::Ipv4Addr::new(self.0[12], self.0[13], self.0[14], self.0[15]))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// What a port's link runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// InfiniBand: peers are addressed by LID within a subnet.
    InfiniBand,
    /// Ethernet (RoCE): peers are addressed by GID.
    Ethernet,
    /// Another value the library reported.
    Other(u8),
}

impl LinkLayer {
    /// The code used on the wire (the verbs value).
    pub fn code(self) -> u8 {
        match self {
            LinkLayer::InfiniBand => 1,
            LinkLayer::Ethernet => 2,
            LinkLayer::Other(c) => c,
        }
    }

    /// The link layer of a verbs code.
    pub fn from_code(c: u8) -> LinkLayer {
        match c {
            1 => LinkLayer::InfiniBand,
            2 => LinkLayer::Ethernet,
            c => LinkLayer::Other(c),
        }
    }
}

/// The logical state of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// No link.
    Down,
    /// Link up, not configured by the subnet manager yet.
    Init,
    /// Configured, not yet active.
    Armed,
    /// Ready for traffic.
    Active,
    /// Another value the library reported.
    Other(u32),
}

impl PortState {
    /// The state of a verbs code.
    pub fn from_code(c: u32) -> PortState {
        match c {
            1 => PortState::Down,
            2 => PortState::Init,
            3 => PortState::Armed,
            4 => PortState::Active,
            c => PortState::Other(c),
        }
    }
}

/// Path MTU, as the verbs enumeration (1: 256 bytes ... 5: 4096 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mtu(pub u8);

impl Mtu {
    /// The MTU in bytes (0 for a code out of range).
    pub fn bytes(self) -> usize {
        match self.0 {
            1..=5 => 128 << self.0,
            _ => 0,
        }
    }
}

/// One port of one device, as discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// The device's name (`mlx5_0`, `sim0`, ...).
    pub device: String,
    /// The port number (from 1).
    pub port: u8,
    /// Its state.
    pub state: PortState,
    /// What its link runs on.
    pub link_layer: LinkLayer,
    /// Its LID (InfiniBand; 0 on Ethernet).
    pub lid: u16,
    /// The GID used for connections, and its index in the GID table.
    pub gid: Gid,
    /// Index of [`PortInfo::gid`] in the port's GID table.
    pub gid_index: u8,
    /// The active MTU.
    pub mtu: Mtu,
}

impl PortInfo {
    /// Whether the port can carry traffic now.
    pub fn is_active(&self) -> bool {
        self.state == PortState::Active
    }

    /// Whether this port and `other` (another node's, as it described
    /// itself) are on a common network: both active, the same link layer,
    /// and on InfiniBand the same subnet prefix; on Ethernet, GIDs of the
    /// same kind (both IPv4-mapped or both not).
    pub fn reaches(&self, other: &PortInfo) -> bool {
        self.is_active()
            && other.is_active()
            && self.link_layer == other.link_layer
            && !self.gid.is_zero()
            && !other.gid.is_zero()
            && match self.link_layer {
                LinkLayer::InfiniBand => self.gid.subnet_prefix() == other.gid.subnet_prefix(),
                _ => self.gid.ipv4().is_some() == other.gid.ipv4().is_some(),
            }
    }
}

/// Access rights of a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// The local adapter may write (receives, RDMA read targets).
    pub const LOCAL_WRITE: Access = Access(1);
    /// A peer may RDMA-write into it.
    pub const REMOTE_WRITE: Access = Access(2);
    /// A peer may RDMA-read from it.
    pub const REMOTE_READ: Access = Access(4);

    /// Whether every right of `other` is included.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }
}

/// What a peer needs to connect its queue pair to ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QpAddress {
    /// The port's GID.
    pub gid: Gid,
    /// The port's LID.
    pub lid: u16,
    /// The queue pair number.
    pub qpn: u32,
    /// The first packet sequence number this side sends (24 bits).
    pub psn: u32,
    /// The port's active MTU.
    pub mtu: Mtu,
    /// The port's link layer.
    pub link_layer: LinkLayer,
    /// Whatever else the fabric needs to reach the queue pair (empty on
    /// real devices; the simulated fabric's shared-memory names).
    pub fabric: Vec<u8>,
}

/// Sizes of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send work requests outstanding at most.
    pub max_send_wr: u32,
    /// Receive work requests posted at most.
    pub max_recv_wr: u32,
    /// Bytes a send may carry inline (in the work request itself).
    pub max_inline: u32,
    /// RDMA reads outstanding at most, as initiator and as target.
    pub max_rd_atomic: u8,
}

/// A state an RC queue pair moves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QpTransition {
    /// RESET to INIT: the port, and the remote access allowed.
    Init,
    /// INIT to RTR (ready to receive): the peer's address.
    ReadyToReceive(QpAddress),
    /// RTR to RTS (ready to send).
    ReadyToSend,
    /// Any state to ERROR: outstanding work requests are flushed.
    Error,
}

/// The state of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Initialised.
    Init,
    /// Ready to receive.
    ReadyToReceive,
    /// Ready to send.
    ReadyToSend,
    /// Failed or stopped: work requests complete with flush errors.
    Error,
}

/// One scatter/gather element: local memory of a registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Address in this process.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The local key of the region holding it (ignored for inline sends).
    pub lkey: u32,
}

/// A receive work request: where the next incoming send lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The buffer (an RDMA write with immediate data consumes the request
    /// without touching it).
    pub sge: Sge,
}

/// What a send work request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// A send into the peer's next posted receive.
    Send,
    /// An RDMA write to `remote_addr` under `rkey`, consuming one of the
    /// peer's posted receives to deliver `imm` in its completion.
    WriteImm {
        /// Peer address written.
        remote_addr: u64,
        /// The peer region's remote key.
        rkey: u32,
        /// Immediate data for the peer's completion.
        imm: u32,
    },
    /// An RDMA read from `remote_addr` under `rkey` into the local element.
    Read {
        /// Peer address read.
        remote_addr: u64,
        /// The peer region's remote key.
        rkey: u32,
    },
}

/// A send work request with one scatter/gather element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// What it does.
    pub op: SendOp,
    /// The local memory sent from or read into.
    pub sge: Sge,
    /// Carry the data in the work request (sends and writes of at most
    /// [`QpCaps::max_inline`] bytes; the memory need not be registered).
    pub inline: bool,
}

/// The status of a completed work request (the verbs `ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    /// Done.
    Success,
    /// Local length error (a receive buffer too small, say).
    LocalLength,
    /// Local queue pair operation error.
    LocalQpOperation,
    /// Local protection error: a bad lkey or address.
    LocalProtection,
    /// Flushed: the queue pair went to the error state first.
    Flushed,
    /// The peer found the request invalid (its receive buffer too small).
    RemoteInvalidRequest,
    /// The peer refused the access: a bad rkey, address or right.
    RemoteAccess,
    /// The peer reported an operation error.
    RemoteOperation,
    /// The peer did not answer after every retry: it is gone or cut off.
    RetryExceeded,
    /// The peer had no receive posted after every retry.
    RnrRetryExceeded,
    /// Another status (the verbs code).
    Other(u32),
}

impl WcStatus {
    /// The status of a verbs code.
    pub fn from_code(c: u32) -> WcStatus {
        match c {
            0 => WcStatus::Success,
            1 => WcStatus::LocalLength,
            2 => WcStatus::LocalQpOperation,
            4 => WcStatus::LocalProtection,
            5 => WcStatus::Flushed,
            9 => WcStatus::RemoteInvalidRequest,
            10 => WcStatus::RemoteAccess,
            11 => WcStatus::RemoteOperation,
            12 => WcStatus::RetryExceeded,
            13 => WcStatus::RnrRetryExceeded,
            c => WcStatus::Other(c),
        }
    }

    /// The verbs code.
    pub fn code(self) -> u32 {
        match self {
            WcStatus::Success => 0,
            WcStatus::LocalLength => 1,
            WcStatus::LocalQpOperation => 2,
            WcStatus::LocalProtection => 4,
            WcStatus::Flushed => 5,
            WcStatus::RemoteInvalidRequest => 9,
            WcStatus::RemoteAccess => 10,
            WcStatus::RemoteOperation => 11,
            WcStatus::RetryExceeded => 12,
            WcStatus::RnrRetryExceeded => 13,
            WcStatus::Other(c) => c,
        }
    }

    /// What it means, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            WcStatus::Success => "success",
            WcStatus::LocalLength => "local length error",
            WcStatus::LocalQpOperation => "local queue pair operation error",
            WcStatus::LocalProtection => "local protection error (bad local key or address)",
            WcStatus::Flushed => "flushed (the queue pair had failed)",
            WcStatus::RemoteInvalidRequest => "remote invalid request (the peer's receive buffer is too small)",
            WcStatus::RemoteAccess => "remote access error (bad remote key, address or rights)",
            WcStatus::RemoteOperation => "remote operation error",
            WcStatus::RetryExceeded => "transport retry counter exceeded (the peer is gone or cut off)",
            WcStatus::RnrRetryExceeded => "receiver-not-ready retry counter exceeded (no receive posted at the peer)",
            WcStatus::Other(_) => "error",
        }
    }
}

/// The kind of a completed work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    /// A send of ours.
    Send,
    /// An RDMA write of ours.
    RdmaWrite,
    /// An RDMA read of ours.
    RdmaRead,
    /// A send from the peer landed in a posted receive.
    Recv,
    /// An RDMA write with immediate data from the peer consumed a receive.
    RecvWithImm,
    /// Another code (or unknown: error completions need not carry one).
    Other(u32),
}

impl WcOpcode {
    /// The opcode of a verbs code.
    pub fn from_code(c: u32) -> WcOpcode {
        match c {
            0 => WcOpcode::Send,
            1 => WcOpcode::RdmaWrite,
            2 => WcOpcode::RdmaRead,
            128 => WcOpcode::Recv,
            129 => WcOpcode::RecvWithImm,
            c => WcOpcode::Other(c),
        }
    }

    /// The verbs code.
    pub fn code(self) -> u32 {
        match self {
            WcOpcode::Send => 0,
            WcOpcode::RdmaWrite => 1,
            WcOpcode::RdmaRead => 2,
            WcOpcode::Recv => 128,
            WcOpcode::RecvWithImm => 129,
            WcOpcode::Other(c) => c,
        }
    }
}

/// A work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// How it ended.
    pub status: WcStatus,
    /// What it was (meaningful on success).
    pub opcode: WcOpcode,
    /// Bytes received (receives) or read.
    pub byte_len: u32,
    /// Immediate data, if any.
    pub imm: Option<u32>,
    /// The adapter's own error code, for error messages.
    pub vendor_err: u32,
}

/// Why a verbs call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerbsError {
    /// No usable RDMA device here: the library is missing, it lists no
    /// device, or no port is active. The caller falls back (to TCP).
    NoDevice(String),
    /// A verbs call failed (the call, and the error it gave).
    Call {
        /// The verbs function.
        call: &'static str,
        /// What it said (errno text, or the fabric's reason).
        reason: String,
    },
    /// The request is invalid here (sizes, states, keys).
    Invalid(String),
    /// The fabric's resources are used up (memory, queue entries).
    Exhausted(String),
}

impl fmt::Display for VerbsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerbsError::NoDevice(why) => write!(f, "no RDMA device: {why}"),
            VerbsError::Call { call, reason } => write!(f, "{call} failed: {reason}"),
            VerbsError::Invalid(why) => write!(f, "invalid verbs request: {why}"),
            VerbsError::Exhausted(why) => write!(f, "RDMA resources exhausted: {why}"),
        }
    }
}

impl std::error::Error for VerbsError {}

/// Memory a port can register: owned, page-aligned, zero-filled, freed
/// when dropped (after every region registered on it).
pub struct Buffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer").field("addr", &self.ptr).field("len", &self.len).finish()
    }
}

// SAFETY: the buffer is plain memory owned by `_owner` (Send + Sync); who
// writes to it when is the protocol's business, through raw pointers.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// A buffer of `len` bytes at `ptr`, kept alive by `owner`.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads and writes of `len` bytes for as long as
    /// `owner` lives, and nothing else frees it.
    pub unsafe fn from_raw(
        ptr: std::ptr::NonNull<u8>,
        len: usize,
        owner: Box<dyn std::any::Any + Send + Sync>,
    ) -> Buffer {
        Buffer { ptr, len, _owner: owner }
    }

    /// Its first byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its address as a work request names it.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, for buffers a port made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `data` in at `offset`.
    ///
    /// Panics if it does not fit. The caller makes sure no adapter or peer
    /// accesses these bytes meanwhile (the protocol's ownership rules).
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset.checked_add(data.len()).is_some_and(|e| e <= self.len), "write out of the buffer");
        // SAFETY: in bounds (checked); the source is a Rust slice that
        // cannot overlap memory the port handed out.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) };
    }

    /// Copy `len` bytes out from `offset`.
    ///
    /// Panics if out of bounds. As [`Buffer::write`], the caller owns the
    /// bytes at this time.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset.checked_add(len).is_some_and(|e| e <= self.len), "read out of the buffer");
        let mut v = vec![0u8; len];
        // SAFETY: in bounds (checked); `v` is fresh memory.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), v.as_mut_ptr(), len) };
        v
    }

    /// The bytes at `offset..offset + len` as a slice.
    ///
    /// # Safety
    ///
    /// Nothing (adapter, peer, other thread) writes them while the slice
    /// lives.
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|e| e <= self.len), "slice out of the buffer");
        // SAFETY: in bounds; no writer meanwhile (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }
}

/// A registered memory region; dropping it deregisters.
pub trait MemoryRegion: Send + Sync + fmt::Debug {
    /// First address registered.
    fn addr(&self) -> u64;
    /// Bytes registered.
    fn len(&self) -> usize;
    /// Whether the region is empty (never).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The key local work requests use.
    fn lkey(&self) -> u32;
    /// The key a peer uses.
    fn rkey(&self) -> u32;
}

/// A completion queue with its completion channel.
pub trait CompletionQueue: Send + Sync + fmt::Debug {
    /// For the fabric that made it (to reach its own type).
    fn as_any(&self) -> &dyn std::any::Any;
    /// Move up to `max` completions into `out`; how many.
    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError>;
    /// Wait until a completion may be there, `timeout` passes, or [`wake`]
    /// is called. Spurious returns are allowed: poll after each.
    ///
    /// [`wake`]: CompletionQueue::wake
    fn wait(&self, timeout: Option<Duration>) -> Result<(), VerbsError>;
    /// End a [`CompletionQueue::wait`] in progress (or the next one).
    fn wake(&self);
}

/// A reliable-connected queue pair.
pub trait QueuePair: Send + Sync + fmt::Debug {
    /// Its number.
    fn qpn(&self) -> u32;
    /// Its sizes as the device granted them.
    fn caps(&self) -> QpCaps;
    /// What a peer needs to connect to it.
    fn address(&self) -> QpAddress;
    /// Its current state.
    fn state(&self) -> QpState;
    /// Move it to another state.
    fn modify(&self, to: QpTransition) -> Result<(), VerbsError>;
    /// Post a receive.
    fn post_recv(&self, wr: &RecvWr) -> Result<(), VerbsError>;
    /// Post a send, RDMA write with immediate data, or RDMA read (always
    /// signalled: each gives a completion).
    fn post_send(&self, wr: &SendWr) -> Result<(), VerbsError>;
}

/// One open port with its protection domain.
pub trait Port: Send + Sync + fmt::Debug {
    /// What it is.
    fn info(&self) -> &PortInfo;
    /// Zero-filled memory of at least `len` bytes that this port can
    /// register (and, on the simulated fabric, that a peer can reach).
    fn alloc(&self, len: usize) -> Result<Buffer, VerbsError>;
    /// Register `len` bytes at `addr` with `access`.
    ///
    /// # Safety
    ///
    /// The memory stays allocated until the region is dropped.
    unsafe fn register(&self, addr: *mut u8, len: usize, access: Access) -> Result<Box<dyn MemoryRegion>, VerbsError>;
    /// A completion queue of at least `depth` entries.
    fn create_cq(&self, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError>;
    /// An RC queue pair whose sends and receives complete on `cq`.
    fn create_qp(&self, cq: &Arc<dyn CompletionQueue>, caps: QpCaps) -> Result<Box<dyn QueuePair>, VerbsError>;
}

/// A fabric: the devices of this machine (or of the simulation).
pub trait Fabric: Send + Sync + fmt::Debug {
    /// Short name for messages: `ibverbs`, `sim:<name>`.
    fn name(&self) -> String;
    /// Every port of every device ([`VerbsError::NoDevice`] if none).
    fn ports(&self) -> Result<Vec<PortInfo>, VerbsError>;
    /// Open `port` (one of [`Fabric::ports`]) with a protection domain.
    fn open(&self, port: &PortInfo) -> Result<Arc<dyn Port>, VerbsError>;
}

/// The first active port of `fabric` (of `device`, if given), or why
/// there is none.
pub fn active_port(fabric: &dyn Fabric, device: Option<&str>) -> Result<PortInfo, VerbsError> {
    let ports = fabric.ports()?;
    let mut seen = Vec::new();
    for p in &ports {
        if device.is_some_and(|d| d != p.device) {
            continue;
        }
        if p.is_active() && !p.gid.is_zero() {
            return Ok(p.clone());
        }
        seen.push(format!("{} port {} is {:?}", p.device, p.port, p.state));
    }
    Err(VerbsError::NoDevice(match (device, seen.is_empty()) {
        (Some(d), true) => format!("no device {d} on {}", fabric.name()),
        _ => format!("no active port on {} ({})", fabric.name(), seen.join(", ")),
    }))
}
