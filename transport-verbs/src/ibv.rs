//! The verbs interface over rdma-core's `libibverbs.so.1`, loaded at run
//! time with `libloading`.
//!
//! Only the library's exported functions are called by name; the calls
//! rdma-core's header defines inline (`ibv_post_send`, `ibv_post_recv`,
//! `ibv_poll_cq`, `ibv_req_notify_cq`) go, as those inline functions do,
//! through the operation table of the device context (`ibv_context.ops`),
//! whose layout is part of the library's stable ABI. The structures passed
//! are declared here with the layout of `<infiniband/verbs.h>` on 64-bit
//! Linux; their sizes are checked at compile time and every field offset
//! is checked against the installed header by the test
//! `tests/ibv_layout.rs` (CI installs `libibverbs-dev`).
//!
//! Loading fails cleanly: without the library, without a device, or
//! without an active port, [`IbvFabric::load`] or [`Fabric::ports`] says
//! [`VerbsError::NoDevice`] and nothing else happens.

use crate::verbs::*;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The library's file name (its ABI version 1).
pub const LIBRARY: &str = "libibverbs.so.1";

// ---- the structures (rdma-core's verbs.h, x86-64 / aarch64 LP64) ----------------

/// `struct ibv_sge`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvSge {
    /// Address.
    pub addr: u64,
    /// Length.
    pub length: u32,
    /// Local key.
    pub lkey: u32,
}

/// `struct ibv_send_wr` (the `wr.rdma` member of its union; the others are
/// covered by padding of the same size).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IbvSendWr {
    /// Work request id.
    pub wr_id: u64,
    /// Next in a chain (NULL).
    pub next: *mut IbvSendWr,
    /// Scatter/gather list.
    pub sg_list: *mut IbvSge,
    /// Its length.
    pub num_sge: c_int,
    /// `enum ibv_wr_opcode`.
    pub opcode: c_uint,
    /// `IBV_SEND_*`.
    pub send_flags: c_uint,
    /// Immediate data (network order).
    pub imm_data: u32,
    /// `wr.rdma.remote_addr`.
    pub remote_addr: u64,
    /// `wr.rdma.rkey`.
    pub rkey: u32,
    /// Rest of the `wr` union (atomic is the largest: 32 bytes).
    pub _wr_rest: [u8; 20],
    /// `qp_type` union.
    pub _qp_type: u32,
    /// The `bind_mw`/`tso` union.
    pub _tail: [u64; 6],
}

/// `struct ibv_recv_wr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IbvRecvWr {
    /// Work request id.
    pub wr_id: u64,
    /// Next in a chain (NULL).
    pub next: *mut IbvRecvWr,
    /// Scatter/gather list.
    pub sg_list: *mut IbvSge,
    /// Its length.
    pub num_sge: c_int,
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvWc {
    /// Work request id.
    pub wr_id: u64,
    /// `enum ibv_wc_status`.
    pub status: c_uint,
    /// `enum ibv_wc_opcode`.
    pub opcode: c_uint,
    /// Vendor error.
    pub vendor_err: u32,
    /// Bytes.
    pub byte_len: u32,
    /// Immediate data (network order).
    pub imm_data: u32,
    /// Local queue pair number.
    pub qp_num: u32,
    /// Source queue pair (UD).
    pub src_qp: u32,
    /// `IBV_WC_*` flags.
    pub wc_flags: c_uint,
    /// Partition key index.
    pub pkey_index: u16,
    /// Source LID.
    pub slid: u16,
    /// Service level.
    pub sl: u8,
    /// Path bits.
    pub dlid_path_bits: u8,
}

/// `struct ibv_qp_cap`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvQpCap {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// Send scatter/gather elements.
    pub max_send_sge: u32,
    /// Receive scatter/gather elements.
    pub max_recv_sge: u32,
    /// Inline bytes.
    pub max_inline_data: u32,
}

/// `struct ibv_qp_init_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IbvQpInitAttr {
    /// User context.
    pub qp_context: *mut c_void,
    /// Send completion queue.
    pub send_cq: *mut c_void,
    /// Receive completion queue.
    pub recv_cq: *mut c_void,
    /// Shared receive queue (NULL).
    pub srq: *mut c_void,
    /// Sizes.
    pub cap: IbvQpCap,
    /// `enum ibv_qp_type`.
    pub qp_type: c_uint,
    /// Signal every send.
    pub sq_sig_all: c_int,
}

/// `struct ibv_global_route` (8-aligned: its GID is a union with two
/// 64-bit words).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvGlobalRoute {
    /// Destination GID.
    pub dgid: [u8; 16],
    /// Flow label.
    pub flow_label: u32,
    /// Source GID index.
    pub sgid_index: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
}

/// `struct ibv_ah_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvAhAttr {
    /// Global route.
    pub grh: IbvGlobalRoute,
    /// Destination LID.
    pub dlid: u16,
    /// Service level.
    pub sl: u8,
    /// Source path bits.
    pub src_path_bits: u8,
    /// Static rate.
    pub static_rate: u8,
    /// Whether `grh` is used.
    pub is_global: u8,
    /// Port.
    pub port_num: u8,
}

/// `struct ibv_qp_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvQpAttr {
    /// `enum ibv_qp_state`.
    pub qp_state: c_uint,
    /// Current state.
    pub cur_qp_state: c_uint,
    /// `enum ibv_mtu`.
    pub path_mtu: c_uint,
    /// Migration state.
    pub path_mig_state: c_uint,
    /// Q_Key (UD).
    pub qkey: u32,
    /// Receive PSN.
    pub rq_psn: u32,
    /// Send PSN.
    pub sq_psn: u32,
    /// Destination queue pair.
    pub dest_qp_num: u32,
    /// `IBV_ACCESS_*`.
    pub qp_access_flags: c_uint,
    /// Sizes.
    pub cap: IbvQpCap,
    /// Address vector.
    pub ah_attr: IbvAhAttr,
    /// Alternate address vector.
    pub alt_ah_attr: IbvAhAttr,
    /// Partition key index.
    pub pkey_index: u16,
    /// Alternate partition key index.
    pub alt_pkey_index: u16,
    /// SQD notification.
    pub en_sqd_async_notify: u8,
    /// SQ draining.
    pub sq_draining: u8,
    /// Outstanding RDMA reads as initiator.
    pub max_rd_atomic: u8,
    /// Outstanding RDMA reads as target.
    pub max_dest_rd_atomic: u8,
    /// RNR NAK timer.
    pub min_rnr_timer: u8,
    /// Port.
    pub port_num: u8,
    /// Local ACK timeout.
    pub timeout: u8,
    /// Retry count.
    pub retry_cnt: u8,
    /// RNR retry count.
    pub rnr_retry: u8,
    /// Alternate port.
    pub alt_port_num: u8,
    /// Alternate timeout.
    pub alt_timeout: u8,
    /// Rate limit.
    pub rate_limit: u32,
}

const _: () = {
    assert!(std::mem::size_of::<IbvSge>() == 16);
    assert!(std::mem::size_of::<IbvSendWr>() == 128);
    assert!(std::mem::size_of::<IbvRecvWr>() == 32);
    assert!(std::mem::size_of::<IbvWc>() == 48);
    assert!(std::mem::size_of::<IbvQpInitAttr>() == 64);
    assert!(std::mem::size_of::<IbvAhAttr>() == 32);
    assert!(std::mem::size_of::<IbvQpAttr>() == 144);
};

/// Offsets into structures the library allocates (read only).
pub mod offsets {
    /// `ibv_context.ops.poll_cq`.
    pub const CTX_POLL_CQ: usize = 96;
    /// `ibv_context.ops.req_notify_cq`.
    pub const CTX_REQ_NOTIFY_CQ: usize = 104;
    /// `ibv_context.ops.post_send`.
    pub const CTX_POST_SEND: usize = 208;
    /// `ibv_context.ops.post_recv`.
    pub const CTX_POST_RECV: usize = 216;
    /// `ibv_qp.qp_num`.
    pub const QP_NUM: usize = 52;
    /// `ibv_mr.lkey`.
    pub const MR_LKEY: usize = 36;
    /// `ibv_mr.rkey`.
    pub const MR_RKEY: usize = 40;
    /// `ibv_comp_channel.fd`.
    pub const CHANNEL_FD: usize = 8;
    /// `ibv_port_attr.state`.
    pub const PORT_STATE: usize = 0;
    /// `ibv_port_attr.active_mtu`.
    pub const PORT_ACTIVE_MTU: usize = 8;
    /// `ibv_port_attr.gid_tbl_len`.
    pub const PORT_GID_TBL_LEN: usize = 12;
    /// `ibv_port_attr.lid`.
    pub const PORT_LID: usize = 34;
    /// `ibv_port_attr.link_layer`.
    pub const PORT_LINK_LAYER: usize = 46;
    /// `sizeof(struct ibv_port_attr)`.
    pub const PORT_ATTR_SIZE: usize = 52;
    /// `ibv_device_attr.max_qp_wr`.
    pub const DEV_MAX_QP_WR: usize = 112;
    /// `ibv_device_attr.max_qp_rd_atom`.
    pub const DEV_MAX_QP_RD_ATOM: usize = 144;
    /// `ibv_device_attr.max_qp_init_rd_atom`.
    pub const DEV_MAX_QP_INIT_RD_ATOM: usize = 156;
    /// `ibv_device_attr.phys_port_cnt`.
    pub const DEV_PHYS_PORT_CNT: usize = 227;
    /// `sizeof(struct ibv_device_attr)`.
    pub const DEV_ATTR_SIZE: usize = 232;
}

const QPT_RC: c_uint = 2;
const QPS_INIT: c_uint = 1;
const QPS_RTR: c_uint = 2;
const QPS_RTS: c_uint = 3;
const QPS_ERR: c_uint = 6;
const MASK_STATE: c_int = 1;
const MASK_ACCESS: c_int = 8;
const MASK_PKEY: c_int = 16;
const MASK_PORT: c_int = 32;
const MASK_AV: c_int = 128;
const MASK_PATH_MTU: c_int = 256;
const MASK_TIMEOUT: c_int = 512;
const MASK_RETRY: c_int = 1024;
const MASK_RNR_RETRY: c_int = 2048;
const MASK_RQ_PSN: c_int = 4096;
const MASK_MAX_RD: c_int = 8192;
const MASK_MIN_RNR: c_int = 32768;
const MASK_SQ_PSN: c_int = 65536;
const MASK_MAX_DEST_RD: c_int = 131072;
const MASK_DEST_QPN: c_int = 1 << 20;
const WR_WRITE_IMM: c_uint = 1;
const WR_SEND: c_uint = 2;
const WR_READ: c_uint = 4;
const SEND_SIGNALED: c_uint = 2;
const SEND_INLINE: c_uint = 8;
const WC_WITH_IMM: c_uint = 2;

// ---- the library -------------------------------------------------------------------

type GetDeviceList = unsafe extern "C" fn(*mut c_int) -> *mut *mut c_void;
type FreeDeviceList = unsafe extern "C" fn(*mut *mut c_void);
type GetDeviceName = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type OpenDevice = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type CloseDevice = unsafe extern "C" fn(*mut c_void) -> c_int;
type QueryDevice = unsafe extern "C" fn(*mut c_void, *mut u8) -> c_int;
type QueryPort = unsafe extern "C" fn(*mut c_void, u8, *mut u8) -> c_int;
type QueryGid = unsafe extern "C" fn(*mut c_void, u8, c_int, *mut [u8; 16]) -> c_int;
type AllocPd = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type Destroy = unsafe extern "C" fn(*mut c_void) -> c_int;
type RegMr = unsafe extern "C" fn(*mut c_void, *mut c_void, usize, c_int) -> *mut c_void;
type CreateCompChannel = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type CreateCq = unsafe extern "C" fn(*mut c_void, c_int, *mut c_void, *mut c_void, c_int) -> *mut c_void;
type GetCqEvent = unsafe extern "C" fn(*mut c_void, *mut *mut c_void, *mut *mut c_void) -> c_int;
type AckCqEvents = unsafe extern "C" fn(*mut c_void, c_uint);
type CreateQp = unsafe extern "C" fn(*mut c_void, *mut IbvQpInitAttr) -> *mut c_void;
type ModifyQp = unsafe extern "C" fn(*mut c_void, *mut IbvQpAttr, c_int) -> c_int;
type QueryQp = unsafe extern "C" fn(*mut c_void, *mut IbvQpAttr, c_int, *mut IbvQpInitAttr) -> c_int;
type PollCq = unsafe extern "C" fn(*mut c_void, c_int, *mut IbvWc) -> c_int;
type ReqNotifyCq = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type PostSend = unsafe extern "C" fn(*mut c_void, *mut IbvSendWr, *mut *mut IbvSendWr) -> c_int;
type PostRecv = unsafe extern "C" fn(*mut c_void, *mut IbvRecvWr, *mut *mut IbvRecvWr) -> c_int;

struct Lib {
    get_device_list: GetDeviceList,
    free_device_list: FreeDeviceList,
    get_device_name: GetDeviceName,
    open_device: OpenDevice,
    close_device: CloseDevice,
    query_device: QueryDevice,
    query_port: QueryPort,
    query_gid: QueryGid,
    alloc_pd: AllocPd,
    dealloc_pd: Destroy,
    reg_mr: RegMr,
    dereg_mr: Destroy,
    create_comp_channel: CreateCompChannel,
    destroy_comp_channel: Destroy,
    create_cq: CreateCq,
    destroy_cq: Destroy,
    get_cq_event: GetCqEvent,
    ack_cq_events: AckCqEvents,
    create_qp: CreateQp,
    modify_qp: ModifyQp,
    query_qp: QueryQp,
    destroy_qp: Destroy,
    // Last: unloaded after every pointer above is gone.
    _lib: libloading::Library,
}

impl Lib {
    fn load(path: &str) -> Result<Lib, VerbsError> {
        // SAFETY: loading rdma-core runs its initialisers, which only set up
        // its own state (provider discovery happens on the first call).
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| VerbsError::NoDevice(format!("{path} cannot be loaded (is rdma-core installed?): {e}")))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is rdma-core's exported function of
                // this name, whose C signature the type alias declares.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| VerbsError::NoDevice(format!("{path} lacks {}: {e}", $name)))?
            };
        }
        Ok(Lib {
            get_device_list: sym!("ibv_get_device_list"),
            free_device_list: sym!("ibv_free_device_list"),
            get_device_name: sym!("ibv_get_device_name"),
            open_device: sym!("ibv_open_device"),
            close_device: sym!("ibv_close_device"),
            query_device: sym!("ibv_query_device"),
            query_port: sym!("ibv_query_port"),
            query_gid: sym!("ibv_query_gid"),
            alloc_pd: sym!("ibv_alloc_pd"),
            dealloc_pd: sym!("ibv_dealloc_pd"),
            reg_mr: sym!("ibv_reg_mr"),
            dereg_mr: sym!("ibv_dereg_mr"),
            create_comp_channel: sym!("ibv_create_comp_channel"),
            destroy_comp_channel: sym!("ibv_destroy_comp_channel"),
            create_cq: sym!("ibv_create_cq"),
            destroy_cq: sym!("ibv_destroy_cq"),
            get_cq_event: sym!("ibv_get_cq_event"),
            ack_cq_events: sym!("ibv_ack_cq_events"),
            create_qp: sym!("ibv_create_qp"),
            modify_qp: sym!("ibv_modify_qp"),
            query_qp: sym!("ibv_query_qp"),
            destroy_qp: sym!("ibv_destroy_qp"),
            _lib: lib,
        })
    }
}

fn errno(call: &'static str) -> VerbsError {
    VerbsError::Call { call, reason: std::io::Error::last_os_error().to_string() }
}

fn rc(call: &'static str, r: c_int) -> Result<(), VerbsError> {
    match r {
        0 => Ok(()),
        // Most calls return an errno value; some return -1 and set errno.
        r if r > 0 => Err(VerbsError::Call { call, reason: std::io::Error::from_raw_os_error(r).to_string() }),
        _ => Err(errno(call)),
    }
}

/// Read a `T` at `off` of the library-owned structure at `p`.
///
/// # Safety
///
/// `p` points to a live structure at least `off + size_of::<T>()` long
/// whose bytes there are a `T`.
unsafe fn field<T: Copy>(p: *const c_void, off: usize) -> T {
    // SAFETY: the caller's contract.
    unsafe { p.cast::<u8>().add(off).cast::<T>().read_unaligned() }
}

/// The devices of the machine, as rdma-core lists them.
#[derive(Clone)]
pub struct IbvFabric {
    lib: Arc<Lib>,
    gid_index: Option<u8>,
}

impl std::fmt::Debug for IbvFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvFabric").field("gid_index", &self.gid_index).finish_non_exhaustive()
    }
}

/// An open device context with a protection domain.
struct Ctx {
    lib: Arc<Lib>,
    ctx: *mut c_void,
    pd: *mut c_void,
}

// SAFETY: verbs objects may be used from any thread (rdma-core locks
// internally where needed); the pointers are only freed in Drop.
unsafe impl Send for Ctx {}
// SAFETY: as above.
unsafe impl Sync for Ctx {}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: created by alloc_pd/open_device; every object made from
        // them (which hold an Arc of this) is gone.
        unsafe {
            (self.lib.dealloc_pd)(self.pd);
            (self.lib.close_device)(self.ctx);
        }
    }
}

impl Ctx {
    fn op<T: Copy>(&self, off: usize) -> T {
        // SAFETY: `ctx` is a live `struct ibv_context`, whose ops table
        // entries at these offsets are function pointers of type T.
        unsafe { field::<T>(self.ctx, off) }
    }
}

struct DeviceList<'a> {
    lib: &'a Lib,
    list: *mut *mut c_void,
    n: usize,
}

impl Drop for DeviceList<'_> {
    fn drop(&mut self) {
        // SAFETY: returned by get_device_list, freed once.
        unsafe { (self.lib.free_device_list)(self.list) };
    }
}

impl DeviceList<'_> {
    fn get(lib: &Lib) -> Result<DeviceList<'_>, VerbsError> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer.
        let list = unsafe { (lib.get_device_list)(&mut n) };
        if list.is_null() {
            return Err(VerbsError::NoDevice(format!(
                "ibv_get_device_list failed: {} (no RDMA support in this kernel?)",
                std::io::Error::last_os_error()
            )));
        }
        Ok(DeviceList { lib, list, n: n.max(0) as usize })
    }

    fn devices(&self) -> Vec<(String, *mut c_void)> {
        (0..self.n)
            .map(|i| {
                // SAFETY: the list holds `n` device pointers.
                let d = unsafe { *self.list.add(i) };
                // SAFETY: a device of the list; its name is a C string.
                let name = unsafe { CStr::from_ptr((self.lib.get_device_name)(d)) }.to_string_lossy().into_owned();
                (name, d)
            })
            .collect()
    }
}

impl IbvFabric {
    /// Load `libibverbs.so.1` (or the file `path` names).
    pub fn load(path: Option<&str>) -> Result<IbvFabric, VerbsError> {
        Ok(IbvFabric { lib: Arc::new(Lib::load(path.unwrap_or(LIBRARY))?), gid_index: None })
    }

    /// Use GID table entry `index` instead of choosing one.
    pub fn with_gid_index(mut self, index: Option<u8>) -> IbvFabric {
        self.gid_index = index;
        self
    }

    fn open_ctx(&self, device: &str) -> Result<*mut c_void, VerbsError> {
        let list = DeviceList::get(&self.lib)?;
        let Some((_, d)) = list.devices().into_iter().find(|(n, _)| n == device) else {
            return Err(VerbsError::NoDevice(format!("device {device} is gone")));
        };
        // SAFETY: a device of the live list.
        let ctx = unsafe { (self.lib.open_device)(d) };
        if ctx.is_null() {
            return Err(errno("ibv_open_device"));
        }
        Ok(ctx)
    }

    fn describe(&self, ctx: *mut c_void, device: &str) -> Result<Vec<PortInfo>, VerbsError> {
        let mut dev = [0u8; offsets::DEV_ATTR_SIZE + 64];
        // SAFETY: a live context; the buffer is larger than the structure.
        rc("ibv_query_device", unsafe { (self.lib.query_device)(ctx, dev.as_mut_ptr()) })?;
        let nports = dev[offsets::DEV_PHYS_PORT_CNT];
        let mut out = Vec::new();
        for port in 1..=nports {
            let mut a = [0u8; offsets::PORT_ATTR_SIZE + 64];
            // SAFETY: a live context; the zeroed buffer is larger than the
            // structure (old or new layout).
            rc("ibv_query_port", unsafe { (self.lib.query_port)(ctx, port, a.as_mut_ptr()) })?;
            let u32_at = |o: usize| u32::from_ne_bytes(a[o..o + 4].try_into().expect("4 bytes"));
            // 0 ("unspecified", older drivers) is InfiniBand.
            let link_layer = LinkLayer::from_code(a[offsets::PORT_LINK_LAYER].max(1));
            let gids = u32_at(offsets::PORT_GID_TBL_LEN).min(256);
            let gid_at = |i: u32| -> Option<Gid> {
                let mut g = [0u8; 16];
                // SAFETY: a live context; `g` is a valid out-pointer.
                let r = unsafe { (self.lib.query_gid)(ctx, port, i as c_int, &mut g) };
                (r == 0).then_some(Gid(g))
            };
            // On Ethernet prefer an IPv4-mapped GID (RoCE v2 of the
            // interface's address); else the first non-zero one.
            let chosen = match self.gid_index {
                Some(i) => gid_at(u32::from(i)).map(|g| (i, g)),
                None => {
                    let all: Vec<(u8, Gid)> = (0..gids.min(32))
                        .filter_map(|i| gid_at(i).map(|g| (i as u8, g)))
                        .filter(|(_, g)| !g.is_zero())
                        .collect();
                    let v4 = all.iter().find(|(_, g)| g.ipv4().is_some()).copied();
                    if link_layer == LinkLayer::Ethernet && v4.is_some() {
                        v4
                    } else {
                        all.first().copied()
                    }
                }
            };
            let (gid_index, gid) = chosen.unwrap_or((0, Gid::default()));
            out.push(PortInfo {
                device: device.to_owned(),
                port,
                state: PortState::from_code(u32_at(offsets::PORT_STATE)),
                link_layer,
                lid: u16::from_ne_bytes([a[offsets::PORT_LID], a[offsets::PORT_LID + 1]]),
                gid,
                gid_index,
                mtu: Mtu(u32_at(offsets::PORT_ACTIVE_MTU) as u8),
            });
        }
        Ok(out)
    }
}

impl Fabric for IbvFabric {
    fn name(&self) -> String {
        "ibverbs".to_owned()
    }

    fn ports(&self) -> Result<Vec<PortInfo>, VerbsError> {
        let list = DeviceList::get(&self.lib)?;
        let devices = list.devices();
        if devices.is_empty() {
            return Err(VerbsError::NoDevice("rdma-core lists no RDMA device on this machine".into()));
        }
        let mut out = Vec::new();
        let mut why = Vec::new();
        for (name, d) in devices {
            // SAFETY: a device of the live list.
            let ctx = unsafe { (self.lib.open_device)(d) };
            if ctx.is_null() {
                why.push(format!("{name}: {}", errno("ibv_open_device")));
                continue;
            }
            let r = self.describe(ctx, &name);
            // SAFETY: opened above, closed once.
            unsafe { (self.lib.close_device)(ctx) };
            match r {
                Ok(p) => out.extend(p),
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        if out.is_empty() {
            return Err(VerbsError::NoDevice(format!("no device could be opened ({})", why.join("; "))));
        }
        Ok(out)
    }

    fn open(&self, port: &PortInfo) -> Result<Arc<dyn Port>, VerbsError> {
        let raw = self.open_ctx(&port.device)?;
        // SAFETY: a live context.
        let pd = unsafe { (self.lib.alloc_pd)(raw) };
        if pd.is_null() {
            let e = errno("ibv_alloc_pd");
            // SAFETY: opened above, closed once.
            unsafe { (self.lib.close_device)(raw) };
            return Err(e);
        }
        let ctx = Arc::new(Ctx { lib: self.lib.clone(), ctx: raw, pd });
        let mut dev = [0u8; offsets::DEV_ATTR_SIZE + 64];
        // SAFETY: a live context; the buffer is larger than the structure.
        rc("ibv_query_device", unsafe { (self.lib.query_device)(raw, dev.as_mut_ptr()) })?;
        let i32_at = |o: usize| i32::from_ne_bytes(dev[o..o + 4].try_into().expect("4 bytes"));
        let rd = i32_at(offsets::DEV_MAX_QP_RD_ATOM).min(i32_at(offsets::DEV_MAX_QP_INIT_RD_ATOM)).clamp(1, 16) as u8;
        let max_wr = i32_at(offsets::DEV_MAX_QP_WR).max(1) as u32;
        Ok(Arc::new(IbvPort { ctx, info: port.clone(), rd, max_wr }))
    }
}

// ---- port, memory, queues -------------------------------------------------------------

struct IbvPort {
    ctx: Arc<Ctx>,
    info: PortInfo,
    rd: u8,
    max_wr: u32,
}

impl std::fmt::Debug for IbvPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvPort").field("info", &self.info).finish_non_exhaustive()
    }
}

struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: anonymous memory owned by this value.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `alloc`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

struct IbvMr {
    ctx: Arc<Ctx>,
    mr: *mut c_void,
    addr: u64,
    len: usize,
}

// SAFETY: see Ctx.
unsafe impl Send for IbvMr {}
// SAFETY: see Ctx.
unsafe impl Sync for IbvMr {}

impl std::fmt::Debug for IbvMr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvMr").field("addr", &self.addr).field("len", &self.len).finish()
    }
}

impl MemoryRegion for IbvMr {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn lkey(&self) -> u32 {
        // SAFETY: a live `struct ibv_mr`.
        unsafe { field::<u32>(self.mr, offsets::MR_LKEY) }
    }
    fn rkey(&self) -> u32 {
        // SAFETY: a live `struct ibv_mr`.
        unsafe { field::<u32>(self.mr, offsets::MR_RKEY) }
    }
}

impl Drop for IbvMr {
    fn drop(&mut self) {
        // SAFETY: registered by reg_mr, deregistered once.
        unsafe { (self.ctx.lib.dereg_mr)(self.mr) };
    }
}

impl Port for IbvPort {
    fn info(&self) -> &PortInfo {
        &self.info
    }

    fn alloc(&self, len: usize) -> Result<Buffer, VerbsError> {
        let len = len.max(1).div_ceil(4096) * 4096;
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VerbsError::Exhausted(format!("{len} bytes: {}", std::io::Error::last_os_error())));
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).expect("mmap never returns NULL on success");
        // SAFETY: mapped for `len` bytes until the Mapping is dropped.
        Ok(unsafe { Buffer::from_raw(ptr, len, Box::new(Mapping { ptr: p, len })) })
    }

    unsafe fn register(&self, addr: *mut u8, len: usize, access: Access) -> Result<Box<dyn MemoryRegion>, VerbsError> {
        // SAFETY: a live protection domain; the caller keeps the memory.
        let mr = unsafe { (self.ctx.lib.reg_mr)(self.ctx.pd, addr.cast(), len, access.0 as c_int) };
        if mr.is_null() {
            return Err(errno("ibv_reg_mr"));
        }
        Ok(Box::new(IbvMr { ctx: self.ctx.clone(), mr, addr: addr as u64, len }))
    }

    fn create_cq(&self, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError> {
        let lib = &self.ctx.lib;
        // SAFETY: a live context.
        let chan = unsafe { (lib.create_comp_channel)(self.ctx.ctx) };
        if chan.is_null() {
            return Err(errno("ibv_create_comp_channel"));
        }
        // SAFETY: a live completion channel.
        let fd: c_int = unsafe { field(chan, offsets::CHANNEL_FD) };
        // SAFETY: fcntl on the channel's descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
        // SAFETY: a live context and channel.
        let cq = unsafe { (lib.create_cq)(self.ctx.ctx, depth.max(1) as c_int, std::ptr::null_mut(), chan, 0) };
        if cq.is_null() {
            let e = errno("ibv_create_cq");
            // SAFETY: created above, destroyed once.
            unsafe { (lib.destroy_comp_channel)(chan) };
            return Err(e);
        }
        // SAFETY: eventfd has no memory preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            let e = errno("eventfd");
            // SAFETY: created above, destroyed once, in order.
            unsafe {
                (lib.destroy_cq)(cq);
                (lib.destroy_comp_channel)(chan);
            }
            return Err(e);
        }
        Ok(Arc::new(IbvCq {
            ctx: self.ctx.clone(),
            cq,
            chan,
            fd,
            // SAFETY: a fresh descriptor owned by nobody else.
            wake: unsafe { OwnedFd::from_raw_fd(efd) },
            state: Mutex::new(CqState { stash: Vec::new(), unacked: 0 }),
        }))
    }

    fn create_qp(&self, cq: &Arc<dyn CompletionQueue>, caps: QpCaps) -> Result<Box<dyn QueuePair>, VerbsError> {
        let Some(c) = cq.as_any().downcast_ref::<IbvCq>() else {
            return Err(VerbsError::Invalid("a completion queue of another fabric".into()));
        };
        let mut init = IbvQpInitAttr {
            qp_context: std::ptr::null_mut(),
            send_cq: c.cq,
            recv_cq: c.cq,
            srq: std::ptr::null_mut(),
            cap: IbvQpCap {
                max_send_wr: caps.max_send_wr.min(self.max_wr),
                max_recv_wr: caps.max_recv_wr.min(self.max_wr),
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: caps.max_inline,
            },
            qp_type: QPT_RC,
            sq_sig_all: 1,
        };
        // SAFETY: a live protection domain; `init` is a valid attribute block.
        let qp = unsafe { (self.ctx.lib.create_qp)(self.ctx.pd, &mut init) };
        if qp.is_null() {
            return Err(errno("ibv_create_qp"));
        }
        // SAFETY: a live `struct ibv_qp`.
        let qpn: u32 = unsafe { field(qp, offsets::QP_NUM) };
        let granted = QpCaps {
            max_send_wr: init.cap.max_send_wr,
            max_recv_wr: init.cap.max_recv_wr,
            max_inline: init.cap.max_inline_data,
            max_rd_atomic: caps.max_rd_atomic.min(self.rd),
        };
        let mut psn = [0u8; 4];
        // SAFETY: writes at most 4 bytes into `psn`.
        unsafe { libc::getrandom(psn.as_mut_ptr().cast(), 4, 0) };
        Ok(Box::new(IbvQp {
            ctx: self.ctx.clone(),
            _cq: cq.clone(),
            qp,
            qpn,
            caps: granted,
            info: self.info.clone(),
            psn: u32::from_ne_bytes(psn) & 0x00ff_ffff,
        }))
    }
}

struct CqState {
    /// Completions taken while arming, handed out by the next poll.
    stash: Vec<Completion>,
    /// Events received and not yet acknowledged.
    unacked: c_uint,
}

struct IbvCq {
    ctx: Arc<Ctx>,
    cq: *mut c_void,
    chan: *mut c_void,
    fd: c_int,
    wake: OwnedFd,
    state: Mutex<CqState>,
}

// SAFETY: see Ctx.
unsafe impl Send for IbvCq {}
// SAFETY: see Ctx.
unsafe impl Sync for IbvCq {}

impl std::fmt::Debug for IbvCq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvCq").finish_non_exhaustive()
    }
}

impl Drop for IbvCq {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: every event received is acknowledged before the queue is
        // destroyed (the library waits for that); then the channel.
        unsafe {
            if st.unacked > 0 {
                (self.ctx.lib.ack_cq_events)(self.cq, st.unacked);
            }
            (self.ctx.lib.destroy_cq)(self.cq);
            (self.ctx.lib.destroy_comp_channel)(self.chan);
        }
    }
}

impl IbvCq {
    fn poll_raw(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let poll: PollCq = self.ctx.op(offsets::CTX_POLL_CQ);
        let mut wc = [IbvWc::default(); 16];
        let mut total = 0;
        while total < max {
            let want = (max - total).min(wc.len()) as c_int;
            // SAFETY: a live completion queue; `wc` holds `want` entries.
            let n = unsafe { poll(self.cq, want, wc.as_mut_ptr()) };
            if n < 0 {
                return Err(VerbsError::Call { call: "ibv_poll_cq", reason: format!("returned {n}") });
            }
            for w in &wc[..n as usize] {
                out.push(Completion {
                    wr_id: w.wr_id,
                    status: WcStatus::from_code(w.status),
                    opcode: WcOpcode::from_code(w.opcode),
                    byte_len: w.byte_len,
                    imm: (w.wc_flags & WC_WITH_IMM != 0).then(|| u32::from_be(w.imm_data)),
                    vendor_err: w.vendor_err,
                });
            }
            total += n as usize;
            if n < want {
                break;
            }
        }
        Ok(total)
    }
}

impl CompletionQueue for IbvCq {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let take = st.stash.len().min(max);
        out.extend(st.stash.drain(..take));
        drop(st);
        Ok(take + self.poll_raw(out, max - take)?)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<(), VerbsError> {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.stash.is_empty() {
                return Ok(());
            }
            let notify: ReqNotifyCq = self.ctx.op(offsets::CTX_REQ_NOTIFY_CQ);
            // SAFETY: a live completion queue.
            rc("ibv_req_notify_cq", unsafe { notify(self.cq, 0) })?;
            // A completion that came before the arming raises no event.
            let mut got = Vec::new();
            self.poll_raw(&mut got, 64)?;
            if !got.is_empty() {
                st.stash.extend(got);
                return Ok(());
            }
        }
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as c_int);
        let mut fds = [
            libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(VerbsError::Call { call: "poll", reason: e.to_string() });
        }
        if fds[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into `v` from the eventfd.
            unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
        if fds[0].revents != 0 {
            let (mut cq, mut cx) = (std::ptr::null_mut(), std::ptr::null_mut());
            // SAFETY: a live, non-blocking channel; valid out-pointers.
            if unsafe { (self.ctx.lib.get_cq_event)(self.chan, &mut cq, &mut cx) } == 0 {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.unacked += 1;
                if st.unacked >= 64 {
                    // SAFETY: acknowledges events received on this queue.
                    unsafe { (self.ctx.lib.ack_cq_events)(self.cq, st.unacked) };
                    st.unacked = 0;
                }
            }
        }
        Ok(())
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to the eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

struct IbvQp {
    ctx: Arc<Ctx>,
    _cq: Arc<dyn CompletionQueue>,
    qp: *mut c_void,
    qpn: u32,
    caps: QpCaps,
    info: PortInfo,
    psn: u32,
}

// SAFETY: see Ctx.
unsafe impl Send for IbvQp {}
// SAFETY: see Ctx.
unsafe impl Sync for IbvQp {}

impl std::fmt::Debug for IbvQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvQp").field("qpn", &self.qpn).finish_non_exhaustive()
    }
}

impl Drop for IbvQp {
    fn drop(&mut self) {
        // SAFETY: created by create_qp, destroyed once, before its queue.
        unsafe { (self.ctx.lib.destroy_qp)(self.qp) };
    }
}

impl IbvQp {
    fn modify_raw(&self, call: &'static str, mut a: IbvQpAttr, mask: c_int) -> Result<(), VerbsError> {
        // SAFETY: a live queue pair; `a` is a valid attribute block.
        rc(call, unsafe { (self.ctx.lib.modify_qp)(self.qp, &mut a, mask) })
    }
}

impl QueuePair for IbvQp {
    fn qpn(&self) -> u32 {
        self.qpn
    }

    fn caps(&self) -> QpCaps {
        self.caps
    }

    fn address(&self) -> QpAddress {
        QpAddress {
            gid: self.info.gid,
            lid: self.info.lid,
            qpn: self.qpn,
            psn: self.psn,
            mtu: self.info.mtu,
            link_layer: self.info.link_layer,
            fabric: Vec::new(),
        }
    }

    fn state(&self) -> QpState {
        let mut a = IbvQpAttr::default();
        // SAFETY: zeroed plain data is a valid init attribute block.
        let mut init: IbvQpInitAttr = unsafe { std::mem::zeroed() };
        // SAFETY: a live queue pair; valid out-pointers.
        if unsafe { (self.ctx.lib.query_qp)(self.qp, &mut a, MASK_STATE, &mut init) } != 0 {
            return QpState::Error;
        }
        match a.qp_state {
            0 => QpState::Reset,
            QPS_INIT => QpState::Init,
            QPS_RTR => QpState::ReadyToReceive,
            QPS_RTS => QpState::ReadyToSend,
            _ => QpState::Error,
        }
    }

    fn modify(&self, to: QpTransition) -> Result<(), VerbsError> {
        let mut a = IbvQpAttr::default();
        match to {
            QpTransition::Init => {
                a.qp_state = QPS_INIT;
                a.port_num = self.info.port;
                a.qp_access_flags = (Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ).0;
                self.modify_raw("ibv_modify_qp(INIT)", a, MASK_STATE | MASK_PKEY | MASK_PORT | MASK_ACCESS)
            }
            QpTransition::ReadyToReceive(peer) => {
                a.qp_state = QPS_RTR;
                a.path_mtu = u32::from(self.info.mtu.min(peer.mtu).0);
                a.dest_qp_num = peer.qpn;
                a.rq_psn = peer.psn;
                a.max_dest_rd_atomic = self.caps.max_rd_atomic;
                a.min_rnr_timer = 12;
                a.ah_attr.port_num = self.info.port;
                a.ah_attr.dlid = peer.lid;
                if self.info.link_layer == LinkLayer::Ethernet || peer.lid == 0 {
                    a.ah_attr.is_global = 1;
                    a.ah_attr.grh.dgid = peer.gid.0;
                    a.ah_attr.grh.sgid_index = self.info.gid_index;
                    a.ah_attr.grh.hop_limit = 64;
                }
                let mask = MASK_STATE
                    | MASK_AV
                    | MASK_PATH_MTU
                    | MASK_DEST_QPN
                    | MASK_RQ_PSN
                    | MASK_MAX_DEST_RD
                    | MASK_MIN_RNR;
                self.modify_raw("ibv_modify_qp(RTR)", a, mask)
            }
            QpTransition::ReadyToSend => {
                a.qp_state = QPS_RTS;
                a.timeout = 14;
                a.retry_cnt = 7;
                // Finite: with credits no receive is ever missing, so one
                // that is becomes an error instead of a hang.
                a.rnr_retry = 6;
                a.sq_psn = self.psn;
                a.max_rd_atomic = self.caps.max_rd_atomic;
                let mask = MASK_STATE | MASK_TIMEOUT | MASK_RETRY | MASK_RNR_RETRY | MASK_SQ_PSN | MASK_MAX_RD;
                self.modify_raw("ibv_modify_qp(RTS)", a, mask)
            }
            QpTransition::Error => {
                a.qp_state = QPS_ERR;
                self.modify_raw("ibv_modify_qp(ERR)", a, MASK_STATE)
            }
        }
    }

    fn post_recv(&self, wr: &RecvWr) -> Result<(), VerbsError> {
        let mut sge = IbvSge { addr: wr.sge.addr, length: wr.sge.len, lkey: wr.sge.lkey };
        let mut w = IbvRecvWr { wr_id: wr.wr_id, next: std::ptr::null_mut(), sg_list: &mut sge, num_sge: 1 };
        let mut bad = std::ptr::null_mut();
        let post: PostRecv = self.ctx.op(offsets::CTX_POST_RECV);
        // SAFETY: a live queue pair; `w` and `sge` outlive the call (the
        // library copies them into the queue).
        rc("ibv_post_recv", unsafe { post(self.qp, &mut w, &mut bad) })
    }

    fn post_send(&self, wr: &SendWr) -> Result<(), VerbsError> {
        let mut sge = IbvSge { addr: wr.sge.addr, length: wr.sge.len, lkey: wr.sge.lkey };
        let (opcode, remote_addr, rkey, imm) = match wr.op {
            SendOp::Send => (WR_SEND, 0, 0, 0),
            SendOp::WriteImm { remote_addr, rkey, imm } => (WR_WRITE_IMM, remote_addr, rkey, imm.to_be()),
            SendOp::Read { remote_addr, rkey } => (WR_READ, remote_addr, rkey, 0),
        };
        let mut w = IbvSendWr {
            wr_id: wr.wr_id,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: if wr.sge.len == 0 { 0 } else { 1 },
            opcode,
            send_flags: SEND_SIGNALED | if wr.inline { SEND_INLINE } else { 0 },
            imm_data: imm,
            remote_addr,
            rkey,
            _wr_rest: [0; 20],
            _qp_type: 0,
            _tail: [0; 6],
        };
        let mut bad = std::ptr::null_mut();
        let post: PostSend = self.ctx.op(offsets::CTX_POST_SEND);
        // SAFETY: a live queue pair; `w` and `sge` outlive the call, and an
        // inline source is read during it.
        rc("ibv_post_send", unsafe { post(self.qp, &mut w, &mut bad) })
    }
}
