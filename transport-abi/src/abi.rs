//! The transport plugin C ABI, version 1.
//!
//! Everything a plugin and its host exchange is declared here, in C types
//! only: `transport-abi/include/dragon_transport.h` is generated from this
//! file by cbindgen (and a test fails if the checked-in header is stale).
//! `docs/plugin-guide.md` is the guide for plugin authors.
//!
//! # The entry point
//!
//! A plugin is a shared library exporting one function,
//!
//! ```c
//! const DragonTransportTable *dragon_transport_v1(void);
//! ```
//!
//! whose name carries the ABI major version. It returns a pointer to a table
//! that lives as long as the library is loaded. The table starts with its own
//! size and the ABI version and only ever grows by appending fields: a host
//! reads a field only if the table's `size` covers it, so a newer host runs
//! an older plugin of the same major version, and an older host ignores
//! what a newer plugin appended. A change that is not an append bumps the
//! major version, and with it the entry symbol's name.
//!
//! # Conventions of every function
//!
//! - Return value: `DRAGON_OK` (0) or a negative errno-style code
//!   (`DRAGON_E*`, Linux errno values negated).
//! - Errors: the last two arguments are a caller buffer `err` of `err_cap`
//!   bytes. On failure the plugin writes a human-readable UTF-8 message there,
//!   truncated to `err_cap - 1` bytes on a character boundary and always
//!   NUL-terminated. `err` may be NULL (or `err_cap` 0): no message then.
//!   On success the buffer is left untouched.
//! - Timeouts are in nanoseconds: `0` means do not wait (fail with
//!   `DRAGON_EAGAIN` at once), `DRAGON_TIMEOUT_FOREVER` means no limit, any
//!   other value waits at most that long and then fails with
//!   `DRAGON_ETIMEDOUT`.
//! - Ownership: pointers passed in are borrowed for the duration of the
//!   call only. Objects a plugin hands out (`DragonTransport`,
//!   `DragonChannel`, a `DragonMessage`'s data) belong to the plugin and are
//!   given back through the matching close/free function, exactly once.
//! - Threads: every function may be called from any thread, and concurrently
//!   on the same object, except the functions that end an object's life
//!   (`close`, `channel_close`, `message_free`): no other call on that object
//!   may be in progress or follow.
//! - Panics (Rust) and C++ exceptions never cross the boundary: a plugin
//!   catches them and returns `DRAGON_EPANIC` with a message.

use std::ffi::{c_char, c_void};

/// ABI major version: part of the entry symbol's name; a host loads only
/// plugins of its own major version.
pub const DRAGON_TRANSPORT_ABI_MAJOR: u16 = 1;
/// ABI minor version of these declarations: bumped when fields are
/// appended to the table.
pub const DRAGON_TRANSPORT_ABI_MINOR: u16 = 1;
/// Name of the entry symbol of ABI major version 1.
pub const DRAGON_TRANSPORT_ENTRY_V1: &str = "dragon_transport_v1";

/// Timeout meaning "wait as long as it takes".
pub const DRAGON_TIMEOUT_FOREVER: u64 = u64::MAX;

/// Success.
pub const DRAGON_OK: i32 = 0;
/// An argument is invalid (a NULL pointer, a malformed config string, bad
/// channel attributes).
pub const DRAGON_EINVAL: i32 = -22;
/// The operation would block and the timeout was 0 (channel full on send,
/// empty on receive).
pub const DRAGON_EAGAIN: i32 = -11;
/// The timeout elapsed before the operation could complete.
pub const DRAGON_ETIMEDOUT: i32 = -110;
/// The caller's buffer is too small; the size needed is stored through the
/// call's length pointer and nothing was consumed.
pub const DRAGON_EMSGSIZE: i32 = -90;
/// The message is larger than the channel can ever carry.
pub const DRAGON_E2BIG: i32 = -7;
/// The channel is closed (or has no peer left in that direction) and, for a
/// receive, drained.
pub const DRAGON_EPIPE: i32 = -32;
/// The channel was destroyed.
pub const DRAGON_EIDRM: i32 = -43;
/// The handle bytes are not a valid handle (truncated, damaged, forged, or of
/// another object kind).
pub const DRAGON_EBADMSG: i32 = -74;
/// The object a handle names does not exist (any more).
pub const DRAGON_ENOENT: i32 = -2;
/// The handle names an object that an earlier object of the same name had
/// (it was destroyed and replaced).
pub const DRAGON_ESTALE: i32 = -116;
/// The object lives on another node and this transport cannot reach it.
pub const DRAGON_EREMOTE: i32 = -66;
/// The object was made by an incompatible build (memory layout version).
pub const DRAGON_EPROTO: i32 = -71;
/// Out of memory (or shared memory) for the object or the message.
pub const DRAGON_ENOMEM: i32 = -12;
/// Too many attachments, or another fixed limit was reached.
pub const DRAGON_EMFILE: i32 = -24;
/// The object is still in use (closing a transport with open channels).
pub const DRAGON_EBUSY: i32 = -16;
/// The plugin does not implement this operation.
pub const DRAGON_ENOTSUP: i32 = -95;
/// Input/output or other failure; the message says what.
pub const DRAGON_EIO: i32 = -5;
/// The plugin panicked (or threw) inside the call; the object the call was
/// made on may be unusable and should be closed.
pub const DRAGON_EPANIC: i32 = -131;

/// Capability: reaches channels on this node.
pub const DRAGON_CAP_LOCAL: u64 = 1 << 0;
/// Capability: reaches channels on other nodes.
pub const DRAGON_CAP_REMOTE: u64 = 1 << 1;
/// Capability: `recv_msg`/`message_free` are provided and hand out the
/// received bytes without a copy.
pub const DRAGON_CAP_ZERO_COPY_RECV: u64 = 1 << 2;
/// Capability: waits sleep in the kernel rather than spin.
pub const DRAGON_CAP_BLOCKING: u64 = 1 << 3;
/// Capability: `poll` waits for readiness (without it, `poll` only
/// reports the current state and treats any timeout as 0).
pub const DRAGON_CAP_POLL: u64 = 1 << 4;
/// Capability: channels can be created (not only attached).
pub const DRAGON_CAP_CREATE: u64 = 1 << 5;

/// Poll event: a receive would not block (a message, or an error to report).
pub const DRAGON_POLL_IN: u32 = 1 << 0;
/// Poll event: a send would not block.
pub const DRAGON_POLL_OUT: u32 = 1 << 1;
/// Poll event (reported only): the channel is closed or destroyed.
pub const DRAGON_POLL_HUP: u32 = 1 << 2;

/// An open transport instance (opaque; made by `open`, ended by `close`).
#[derive(Debug)]
pub struct DragonTransport {
    _opaque: [u8; 0],
}

/// One attachment of this process to a channel (opaque; made by
/// `channel_create` or `channel_attach`, ended by `channel_close`).
#[derive(Debug)]
pub struct DragonChannel {
    _opaque: [u8; 0],
}

/// Attributes of a new channel. Zero in any field means "the transport's
/// default". Like the table, it starts with its size and only grows.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DragonChannelAttrs {
    /// `sizeof(DragonChannelAttrs)` as the caller compiled it.
    pub size: u32,
    /// Reserved flags; must be 0.
    pub flags: u32,
    /// Number of messages the channel holds before a send waits.
    pub capacity: u64,
    /// Bytes of a slot: messages up to about this size travel inline.
    pub slot_size: u64,
    /// Largest total of out-of-slot message memory, in bytes.
    pub max_block_bytes: u64,
}

/// A message received with `recv_msg`: `len` bytes at `data`, owned by the
/// plugin until `message_free` is called on it (exactly once; the struct may
/// be copied, `token` identifies the message).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DragonMessage {
    /// First byte of the message (not NULL, even for an empty message).
    pub data: *const u8,
    /// Length in bytes.
    pub len: usize,
    /// Plugin-private identity of the message.
    pub token: *mut c_void,
}

/// `open`: start a transport instance from a config string (`config_len`
/// bytes of UTF-8, not necessarily NUL-terminated; empty means defaults).
/// On success `*out` is the instance.
pub type DragonOpenFn = Option<
    unsafe extern "C" fn(
        config: *const c_char,
        config_len: usize,
        out: *mut *mut DragonTransport,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `close`: end a transport instance. Fails with `DRAGON_EBUSY` (and
/// leaves the instance open) while channels of it are open.
pub type DragonCloseFn = Option<unsafe extern "C" fn(t: *mut DragonTransport, err: *mut c_char, err_cap: usize) -> i32>;

/// `channel_create`: create a channel (attrs NULL: defaults) and attach
/// this process to it, sending and receiving; `*out` is the attachment.
pub type DragonChannelCreateFn = Option<
    unsafe extern "C" fn(
        t: *mut DragonTransport,
        attrs: *const DragonChannelAttrs,
        out: *mut *mut DragonChannel,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `channel_attach`: attach to the channel whose handle is the `len` bytes
/// at `handle` (as `channel_handle` wrote them, possibly in another
/// process). Invalid bytes fail with `DRAGON_EBADMSG`, never touch memory.
pub type DragonChannelAttachFn = Option<
    unsafe extern "C" fn(
        t: *mut DragonTransport,
        handle: *const u8,
        len: usize,
        out: *mut *mut DragonChannel,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `channel_handle`: write the channel's handle bytes into `buf` (`cap`
/// bytes) and their length to `*len`. If `cap` is too small, returns
/// `DRAGON_EMSGSIZE` with the length needed in `*len`.
pub type DragonChannelHandleFn = Option<
    unsafe extern "C" fn(
        ch: *mut DragonChannel,
        buf: *mut u8,
        cap: usize,
        len: *mut usize,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `channel_close` (detach) and `channel_destroy` (remove the channel for
/// every process; the attachment stays valid and must still be closed).
pub type DragonChannelOpFn =
    Option<unsafe extern "C" fn(ch: *mut DragonChannel, err: *mut c_char, err_cap: usize) -> i32>;

/// `send`: send `len` bytes (copied before the call returns), waiting at
/// most `timeout_ns` while the channel is full.
pub type DragonSendFn = Option<
    unsafe extern "C" fn(
        ch: *mut DragonChannel,
        data: *const u8,
        len: usize,
        timeout_ns: u64,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `recv`: receive the next message into `buf` (`cap` bytes), waiting at
/// most `timeout_ns`; `*len` is its length. If the message is longer than
/// `cap`, returns `DRAGON_EMSGSIZE` with the length in `*len` and keeps the
/// message for this attachment: the next `recv` or `recv_msg` on it returns
/// that message first, so nothing is lost.
pub type DragonRecvFn = Option<
    unsafe extern "C" fn(
        ch: *mut DragonChannel,
        buf: *mut u8,
        cap: usize,
        len: *mut usize,
        timeout_ns: u64,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `recv_msg`: receive the next message without copying it, waiting at most
/// `timeout_ns`; `*msg` describes it until `message_free`.
pub type DragonRecvMsgFn = Option<
    unsafe extern "C" fn(
        ch: *mut DragonChannel,
        msg: *mut DragonMessage,
        timeout_ns: u64,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `message_free`: give back a message from `recv_msg`.
pub type DragonMessageFreeFn = Option<unsafe extern "C" fn(msg: *mut DragonMessage)>;

/// `poll`: wait at most `timeout_ns` until one of `events`
/// (`DRAGON_POLL_IN`/`OUT`) holds; `*revents` gets the events that hold
/// (possibly with `DRAGON_POLL_HUP`). None holding at the deadline is
/// `DRAGON_ETIMEDOUT` (or `DRAGON_EAGAIN` for a 0 timeout).
pub type DragonPollFn = Option<
    unsafe extern "C" fn(
        ch: *mut DragonChannel,
        events: u32,
        timeout_ns: u64,
        revents: *mut u32,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32,
>;

/// `len`: messages waiting in the channel (a snapshot) into `*len`.
pub type DragonLenFn =
    Option<unsafe extern "C" fn(ch: *mut DragonChannel, len: *mut u64, err: *mut c_char, err_cap: usize) -> i32>;

/// `send_deferred` (minor version 1, optional): take a copy of `data`
/// (`len` bytes) to be sent after every earlier send of this attachment,
/// waiting with no limit while the channel is full, and return without
/// waiting for it to arrive: what a transport whose every send is a
/// request to another node offers so that a sender need not wait a round
/// trip per message. Waits at most `timeout_ns` while the attachment
/// already has as much in flight as the plugin allows; `DRAGON_EAGAIN` /
/// `DRAGON_ETIMEDOUT` then mean nothing was taken. Any other failure is
/// that of an earlier deferred send of the attachment (reported once, by
/// this call or by `flush`), and this call's message was not taken either.
/// A host that finds it NULL sends with `send` and no time limit instead.
pub type DragonSendDeferredFn = DragonSendFn;

/// `flush` (minor version 1, optional): wait at most `timeout_ns` until
/// every message this attachment gave to `send_deferred` is in the
/// channel. Returns `DRAGON_OK`, the first failure of a deferred send not
/// yet reported, or `DRAGON_EAGAIN` / `DRAGON_ETIMEDOUT` while some are
/// still in flight. A host that finds it NULL has nothing to wait for.
pub type DragonFlushFn =
    Option<unsafe extern "C" fn(ch: *mut DragonChannel, timeout_ns: u64, err: *mut c_char, err_cap: usize) -> i32>;

/// The function table of ABI major version 1, returned by
/// `dragon_transport_v1()`. Fields are only ever appended; a host reads a
/// field only if `size` covers it. (The function types are nullable
/// pointers, `Option` in Rust.) Every function pointer of minor version
/// 0 is required (not NULL) except `recv_msg` and `message_free`, which are
/// required with `DRAGON_CAP_ZERO_COPY_RECV` and NULL without it. The
/// fields of minor version 1 (`send_deferred`, `flush`) may be NULL, and a
/// table of minor version 0 (which ends at `len`) is still loaded.
#[repr(C)]
#[derive(Debug)]
pub struct DragonTransportTable {
    /// `sizeof(DragonTransportTable)` as the plugin compiled it.
    pub size: u32,
    /// `DRAGON_TRANSPORT_ABI_MAJOR` the plugin was built against.
    pub abi_major: u16,
    /// `DRAGON_TRANSPORT_ABI_MINOR` the plugin was built against.
    pub abi_minor: u16,
    /// Short name of the transport (NUL-terminated ASCII, static), e.g. "shm".
    pub name: *const c_char,
    /// `DRAGON_CAP_*` bits.
    pub capabilities: u64,
    /// See [`DragonOpenFn`].
    pub open: DragonOpenFn,
    /// See [`DragonCloseFn`].
    pub close: DragonCloseFn,
    /// See [`DragonChannelCreateFn`].
    pub channel_create: DragonChannelCreateFn,
    /// See [`DragonChannelAttachFn`].
    pub channel_attach: DragonChannelAttachFn,
    /// See [`DragonChannelHandleFn`].
    pub channel_handle: DragonChannelHandleFn,
    /// Detach this process and free the attachment (see [`DragonChannelOpFn`]).
    pub channel_close: DragonChannelOpFn,
    /// Destroy the channel for everyone (see [`DragonChannelOpFn`]).
    pub channel_destroy: DragonChannelOpFn,
    /// See [`DragonSendFn`].
    pub send: DragonSendFn,
    /// See [`DragonRecvFn`].
    pub recv: DragonRecvFn,
    /// See [`DragonRecvMsgFn`].
    pub recv_msg: DragonRecvMsgFn,
    /// See [`DragonMessageFreeFn`].
    pub message_free: DragonMessageFreeFn,
    /// See [`DragonPollFn`].
    pub poll: DragonPollFn,
    /// See [`DragonLenFn`].
    pub len: DragonLenFn,
    /// Minor version 1: see [`DragonSendDeferredFn`].
    pub send_deferred: DragonSendDeferredFn,
    /// Minor version 1: see [`DragonFlushFn`].
    pub flush: DragonFlushFn,
}

// SAFETY: the table is immutable once published; `name` points to static
// bytes that are never written.
unsafe impl Sync for DragonTransportTable {}

/// Type of the entry symbol `dragon_transport_v1`.
pub type DragonTransportEntryV1 = unsafe extern "C" fn() -> *const DragonTransportTable;
