//! The plugin side of the ABI, for plugins written in Rust.
//!
//! Implement [`TransportImpl`] and [`ChannelImpl`] with safe Rust, then
//! write `transport_abi::export_transport!(MyTransport);` at the root of a
//! `cdylib` crate: the macro exports `dragon_transport_v1` and a static
//! [`DragonTransportTable`] of the generic `extern "C"` functions below.
//! Those functions do everything the ABI asks beyond the transport itself:
//! argument checks, `catch_unwind` around every call (a panic becomes
//! `DRAGON_EPANIC` with its message), error messages copied into the
//! caller's buffer, the "buffer too small: keep the message" rule of
//! `recv`, zero-copy messages, and refusing to close a transport whose
//! channels or messages are still alive.
//!
//! The crate must be built with `panic = "unwind"` (the default): with
//! `panic = "abort"` a panic ends the process instead.

use super::abi::*;
use shm_primitives::futex::Deadline;
use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A failed operation: a `DRAGON_E*` code and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A negative `DRAGON_E*` code.
    pub code: i32,
    /// Human-readable message for the caller.
    pub message: String,
}

impl Failure {
    /// A failure with `code` (negative) and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        debug_assert!(code < 0, "failure codes are negative");
        Failure { code, message: message.into() }
    }
}

/// A timeout as the ABI gives it: `None` waits forever, `Some(ZERO)` does
/// not wait.
pub type Timeout = Option<Duration>;

/// Convert an ABI timeout in nanoseconds.
pub fn timeout_from_ns(ns: u64) -> Timeout {
    (ns != DRAGON_TIMEOUT_FOREVER).then(|| Duration::from_nanos(ns))
}

/// A wait of a [`Timeout`] under way, for entry points that wait in steps
/// (check, sleep, check again).
#[derive(Debug)]
pub struct Wait {
    timeout: Timeout,
    deadline: Deadline,
}

impl Wait {
    /// Start waiting for at most `timeout`.
    pub fn new(timeout: Timeout) -> Wait {
        Wait { timeout, deadline: Deadline::after(timeout) }
    }

    /// The time left (`None`: forever) or, once it has run out, the failure
    /// the ABI asks for: `DRAGON_EAGAIN` saying `not_now` for a zero
    /// timeout, `DRAGON_ETIMEDOUT` saying `timed_out` otherwise.
    pub fn left(&self, not_now: &str, timed_out: &str) -> Result<Timeout, Failure> {
        match self.deadline.remaining() {
            Some(left) if left.is_zero() => Err(if self.timeout == Some(Duration::ZERO) {
                Failure::new(DRAGON_EAGAIN, not_now)
            } else {
                Failure::new(DRAGON_ETIMEDOUT, timed_out)
            }),
            left => Ok(left),
        }
    }
}

/// A transport: what `open` makes. Called from any thread, concurrently.
pub trait TransportImpl: Sized + Send + Sync + 'static {
    /// Its channel attachments.
    type Channel: ChannelImpl;
    /// Short name, e.g. `c"shm"`.
    const NAME: &'static CStr;
    /// `DRAGON_CAP_*` bits. `DRAGON_CAP_ZERO_COPY_RECV` is implemented by
    /// this module for every transport (received messages are handed out
    /// in place); include it.
    const CAPABILITIES: u64;

    /// Start an instance from a config string (may be empty).
    fn open(config: &str) -> Result<Self, Failure>;
    /// Create a channel and attach to it (attribute fields 0: defaults).
    fn create_channel(&self, attrs: &DragonChannelAttrs) -> Result<Self::Channel, Failure>;
    /// Attach to the channel of these handle bytes (validate them first).
    fn attach_channel(&self, handle: &[u8]) -> Result<Self::Channel, Failure>;
}

/// One attachment to a channel. Called from any thread, concurrently.
/// Dropping it detaches.
pub trait ChannelImpl: Send + Sync + 'static {
    /// A received message; its bytes stay valid and unmoved until it drops.
    type Message: AsRef<[u8]> + Send + 'static;
    /// The channel's handle bytes.
    fn handle(&self) -> Vec<u8>;
    /// Send a copy of `data`, waiting at most `timeout` while full
    /// (`DRAGON_EAGAIN` for a zero timeout, `DRAGON_ETIMEDOUT` otherwise).
    fn send(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure>;
    /// Receive the next message, waiting at most `timeout` while empty.
    fn recv(&self, timeout: Timeout) -> Result<Self::Message, Failure>;
    /// Wait at most `timeout` until one of `events` (`DRAGON_POLL_IN`,
    /// `DRAGON_POLL_OUT`) holds; return the events that hold.
    fn poll(&self, events: u32, timeout: Timeout) -> Result<u32, Failure>;
    /// Messages in the channel now.
    fn len(&self) -> u64;
    /// Whether the channel holds no message now.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Remove the channel for everyone.
    fn destroy(&self) -> Result<(), Failure>;
    /// Whether a receive should wait in [`ChannelImpl::recv`] itself rather
    /// than in `poll` followed by a receive that does not wait. A transport
    /// whose every call is a request to another node sets this: one
    /// request that waits there instead of three. Receivers of one
    /// attachment then take turns (one waits in `recv` at a time), which
    /// keeps the order the kept-back queue promises.
    const WAITS_IN_RECV: bool = false;
    /// Whether the channel offers deferred sends (the ABI's `send_deferred`
    /// and `flush`, minor version 1): a transport whose every send is a
    /// request to another node sets it, so that a sender does not wait a
    /// round trip per message. Without it the table's two fields are NULL
    /// and hosts send with `send`.
    const DEFERRED_SENDS: bool = false;
    /// Take a copy of `data` to be sent after every earlier send of this
    /// attachment, without waiting for it to arrive (see
    /// `DragonSendDeferredFn`). Called only if `DEFERRED_SENDS`.
    fn send_deferred(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure> {
        let _ = (data, timeout);
        Err(Failure::new(DRAGON_ENOTSUP, "this transport has no deferred sends"))
    }
    /// Wait at most `timeout` until every deferred send is in the channel
    /// (see `DragonFlushFn`). Called only if `DEFERRED_SENDS`.
    fn flush(&self, timeout: Timeout) -> Result<(), Failure> {
        let _ = timeout;
        Ok(())
    }
}

struct TransportBox<T: TransportImpl> {
    transport: T,
}

struct ChannelBox<T: TransportImpl> {
    // Keeps the transport alive (and `close` refusing) while open.
    transport: Arc<TransportBox<T>>,
    channel: T::Channel,
    // Messages taken off the channel for a `recv` whose buffer was too
    // small, handed out first by the next receive on this attachment.
    kept: Mutex<VecDeque<<T::Channel as ChannelImpl>::Message>>,
    // For `WAITS_IN_RECV` channels: whether a receiver is taking its turn.
    turn: Mutex<bool>,
    turn_free: Condvar,
}

/// A receiver's turn on a `WAITS_IN_RECV` channel; ends on drop.
struct Turn<'a> {
    busy: &'a Mutex<bool>,
    free: &'a Condvar,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.free.notify_one();
    }
}

impl<T: TransportImpl> ChannelBox<T> {
    fn kept(&self) -> MutexGuard<'_, VecDeque<<T::Channel as ChannelImpl>::Message>> {
        // A panic while the lock was held left the queue itself intact.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the next message (kept ones first) if `fits` accepts it, waiting
    /// at most `timeout`; a message `fits` refuses stays first in line.
    ///
    /// Messages are taken off the channel only with the kept queue locked,
    /// so that threads sharing this attachment see one queue: a message
    /// kept back by one of them is never overtaken by a later one that
    /// another thread took meanwhile. Waiting happens unlocked, in `poll`.
    fn next(
        &self,
        timeout: Timeout,
        fits: impl FnOnce(&<T::Channel as ChannelImpl>::Message) -> Result<(), Failure>,
    ) -> Result<<T::Channel as ChannelImpl>::Message, Failure> {
        let wait = Wait::new(timeout);
        if <T::Channel as ChannelImpl>::WAITS_IN_RECV {
            return self.next_in_turn(&wait, fits);
        }
        loop {
            {
                let mut kept = self.kept();
                let m = match kept.pop_front() {
                    Some(m) => Some(m),
                    None => match self.channel.recv(Some(Duration::ZERO)) {
                        Ok(m) => Some(m),
                        Err(e) if e.code == DRAGON_EAGAIN => None,
                        Err(e) => return Err(e),
                    },
                };
                if let Some(m) = m {
                    return match fits(&m) {
                        Ok(()) => Ok(m),
                        Err(e) => {
                            kept.push_front(m);
                            Err(e)
                        }
                    };
                }
            }
            let left = wait.left("no message in the channel", "timed out receiving on an empty channel")?;
            match self.channel.poll(DRAGON_POLL_IN, left) {
                Ok(_) => {}
                Err(e) if e.code == DRAGON_ETIMEDOUT || e.code == DRAGON_EAGAIN => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<T: TransportImpl> ChannelBox<T> {
    /// `next` for a channel that waits in `recv`: take a turn (waiting for
    /// it counts against the timeout), hand out a kept message if there is
    /// one, else wait in the channel's own receive.
    fn next_in_turn(
        &self,
        wait: &Wait,
        fits: impl FnOnce(&<T::Channel as ChannelImpl>::Message) -> Result<(), Failure>,
    ) -> Result<<T::Channel as ChannelImpl>::Message, Failure> {
        let (not_now, timed_out) = ("no message in the channel", "timed out receiving on an empty channel");
        {
            let mut busy = self.turn.lock().unwrap_or_else(|p| p.into_inner());
            while *busy {
                busy = match wait.left(not_now, timed_out)? {
                    None => self.turn_free.wait(busy).unwrap_or_else(|p| p.into_inner()),
                    Some(left) => self.turn_free.wait_timeout(busy, left).unwrap_or_else(|p| p.into_inner()).0,
                };
            }
            *busy = true;
        }
        let _turn = Turn { busy: &self.turn, free: &self.turn_free };
        let kept = self.kept().pop_front();
        if let Some(m) = kept {
            return match fits(&m) {
                Ok(()) => Ok(m),
                Err(e) => {
                    self.kept().push_front(m);
                    Err(e)
                }
            };
        }
        // A zero wait once the time is up: a message there now is still taken.
        let left = wait.left(not_now, timed_out).unwrap_or(Some(Duration::ZERO));
        let m = self.channel.recv(left)?;
        match fits(&m) {
            Ok(()) => Ok(m),
            Err(e) => {
                self.kept().push_front(m);
                Err(e)
            }
        }
    }
}

struct MessageBox<T: TransportImpl> {
    _transport: Arc<TransportBox<T>>,
    message: <T::Channel as ChannelImpl>::Message,
}

/// Copy `msg` into the caller's error buffer, truncated on a character
/// boundary and NUL-terminated.
///
/// # Safety
///
/// `err` is NULL or valid for `cap` bytes of writes.
pub unsafe fn write_message(err: *mut c_char, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let mut n = msg.len().min(cap - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller guarantees `cap` writable bytes at `err`; we write
    // n + 1 <= cap of them, from a source that does not overlap (a &str).
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Run `f`, turning its failure or panic into a code and a message.
///
/// # Safety
///
/// As [`write_message`].
unsafe fn guard(err: *mut c_char, err_cap: usize, f: impl FnOnce() -> Result<(), Failure>) -> i32 {
    let (code, msg) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return DRAGON_OK,
        Ok(Err(e)) => (e.code, e.message),
        Err(p) => (DRAGON_EPANIC, format!("the transport plugin panicked: {}", panic_text(&*p))),
    };
    // Formatting cannot panic here; a panicking Drop of the payload could,
    // and is already behind us.
    // SAFETY: forwarded from the caller.
    unsafe { write_message(err, err_cap, &msg) };
    if code < 0 {
        code
    } else {
        DRAGON_EIO
    }
}

fn null(what: &str) -> Failure {
    Failure::new(DRAGON_EINVAL, format!("{what} is NULL"))
}

/// `p`, or the error naming `what` if it is NULL.
fn non_null<P>(p: *mut P, what: &str) -> Result<*mut P, Failure> {
    if p.is_null() {
        Err(null(what))
    } else {
        Ok(p)
    }
}

/// The `len` bytes at `ptr` (which may be null when `len` is 0).
///
/// # Safety
///
/// If `len > 0` and `ptr` is not null, `ptr` must be readable for `len`
/// bytes for the returned lifetime.
unsafe fn input<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(null(what))
    } else {
        // SAFETY: the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

/// The channel behind an ABI pointer.
///
/// # Safety
///
/// `ch` is NULL or was returned by this plugin's `channel_create`/`attach`
/// and not closed.
unsafe fn channel<'a, T: TransportImpl>(ch: *mut DragonChannel) -> Result<&'a ChannelBox<T>, Failure> {
    // SAFETY: by the contract, a non-NULL `ch` is a live ChannelBox<T>.
    unsafe { ch.cast::<ChannelBox<T>>().as_ref() }.ok_or_else(|| null("the channel"))
}

/// Open (see [`DragonOpenFn`]).
///
/// # Safety
///
/// The ABI contract of `open`.
pub unsafe extern "C" fn open<T: TransportImpl>(
    config: *const c_char,
    config_len: usize,
    out: *mut *mut DragonTransport,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: the closure reads `config_len` bytes at `config` and writes
    // `*out`, as the contract allows; `err` is forwarded.
    unsafe {
        guard(err, err_cap, || {
            let out = non_null(out, "the output pointer")?;
            let bytes = input(config.cast::<u8>(), config_len, "the config")?;
            let text = std::str::from_utf8(bytes)
                .map_err(|e| Failure::new(DRAGON_EINVAL, format!("the config string is not UTF-8: {e}")))?;
            let t = T::open(text)?;
            *out = Arc::into_raw(Arc::new(TransportBox { transport: t })).cast_mut().cast();
            Ok(())
        })
    }
}

/// Close (see [`DragonCloseFn`]).
///
/// # Safety
///
/// The ABI contract of `close`.
pub unsafe extern "C" fn close<T: TransportImpl>(t: *mut DragonTransport, err: *mut c_char, err_cap: usize) -> i32 {
    // SAFETY: a non-NULL `t` came from `open` (Arc::into_raw) and is not
    // used concurrently; we take the reference back only if it is the last.
    unsafe {
        guard(err, err_cap, || {
            let t = non_null(t, "the transport")?;
            let arc = Arc::from_raw(t.cast_const().cast::<TransportBox<T>>());
            let others = Arc::strong_count(&arc) - 1;
            if others > 0 {
                let _ = Arc::into_raw(arc);
                return Err(Failure::new(
                    DRAGON_EBUSY,
                    format!("{others} channel(s) or message(s) of this transport are still open; close them first"),
                ));
            }
            drop(arc);
            Ok(())
        })
    }
}

fn transport_ref<T: TransportImpl>(t: *mut DragonTransport) -> Result<Arc<TransportBox<T>>, Failure> {
    let t = non_null(t, "the transport")?;
    let p = t.cast_const().cast::<TransportBox<T>>();
    // SAFETY: a non-NULL `t` came from `open` and is open (contract); we add
    // a reference for the new channel before making an Arc of our own.
    unsafe {
        Arc::increment_strong_count(p);
        Ok(Arc::from_raw(p))
    }
}

fn new_channel<T: TransportImpl>(transport: Arc<TransportBox<T>>, channel: T::Channel) -> *mut DragonChannel {
    Box::into_raw(Box::new(ChannelBox {
        transport,
        channel,
        kept: Mutex::new(VecDeque::new()),
        turn: Mutex::new(false),
        turn_free: Condvar::new(),
    }))
    .cast()
}

/// Create a channel (see [`DragonChannelCreateFn`]).
///
/// # Safety
///
/// The ABI contract of `channel_create`.
pub unsafe extern "C" fn channel_create<T: TransportImpl>(
    t: *mut DragonTransport,
    attrs: *const DragonChannelAttrs,
    out: *mut *mut DragonChannel,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `attrs` is NULL or readable for its own `size` (checked before
    // reading more than that field); `out` is writable; `err` forwarded.
    unsafe {
        guard(err, err_cap, || {
            let out = non_null(out, "the output pointer")?;
            let tr = transport_ref::<T>(t)?;
            let mut a = DragonChannelAttrs::default();
            if !attrs.is_null() {
                let size = (*attrs).size as usize;
                if size < std::mem::size_of::<u32>() * 2 {
                    return Err(Failure::new(
                        DRAGON_EINVAL,
                        format!("channel attributes of {size} bytes are too short"),
                    ));
                }
                let n = size.min(std::mem::size_of::<DragonChannelAttrs>());
                std::ptr::copy_nonoverlapping(attrs.cast::<u8>(), std::ptr::addr_of_mut!(a).cast::<u8>(), n);
                a.size = std::mem::size_of::<DragonChannelAttrs>() as u32;
                if a.flags != 0 {
                    return Err(Failure::new(DRAGON_EINVAL, format!("unknown channel flags {:#x}", a.flags)));
                }
            }
            let ch = tr.transport.create_channel(&a)?;
            *out = new_channel(tr, ch);
            Ok(())
        })
    }
}

/// Attach to a channel (see [`DragonChannelAttachFn`]).
///
/// # Safety
///
/// The ABI contract of `channel_attach`.
pub unsafe extern "C" fn channel_attach<T: TransportImpl>(
    t: *mut DragonTransport,
    handle: *const u8,
    len: usize,
    out: *mut *mut DragonChannel,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `handle` is readable for `len` bytes, `out` writable.
    unsafe {
        guard(err, err_cap, || {
            let out = non_null(out, "the output pointer")?;
            let bytes = input(handle, len, "the handle")?;
            let tr = transport_ref::<T>(t)?;
            let ch = tr.transport.attach_channel(bytes)?;
            *out = new_channel(tr, ch);
            Ok(())
        })
    }
}

/// Copy `data` to a caller buffer, or say how much is needed.
///
/// # Safety
///
/// `buf` is NULL or writable for `cap` bytes; `len` is writable.
unsafe fn copy_out(data: &[u8], buf: *mut u8, cap: usize, len: *mut usize) -> Result<(), Failure> {
    let len = non_null(len, "the length pointer")?;
    // SAFETY: `len` is writable (checked non-NULL; contract).
    unsafe { *len = data.len() };
    if data.len() > cap {
        return Err(Failure::new(DRAGON_EMSGSIZE, format!("buffer too small: need {} bytes, have {cap}", data.len())));
    }
    if !data.is_empty() {
        let buf = non_null(buf, "the buffer")?;
        // SAFETY: `buf` has `cap >= data.len()` writable bytes that do not
        // overlap the plugin's own memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
    }
    Ok(())
}

/// The handle bytes (see [`DragonChannelHandleFn`]).
///
/// # Safety
///
/// The ABI contract of `channel_handle`.
pub unsafe extern "C" fn channel_handle<T: TransportImpl>(
    ch: *mut DragonChannel,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: pointers as the contract states.
    unsafe { guard(err, err_cap, || copy_out(&channel::<T>(ch)?.channel.handle(), buf, cap, len)) }
}

/// Detach and free (see [`DragonChannelOpFn`]).
///
/// # Safety
///
/// The ABI contract of `channel_close`.
pub unsafe extern "C" fn channel_close<T: TransportImpl>(
    ch: *mut DragonChannel,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: a non-NULL `ch` came from Box::into_raw in `new_channel` and
    // no other call on it is in progress or follows (contract).
    unsafe {
        guard(err, err_cap, || {
            let ch = non_null(ch, "the channel")?;
            drop(Box::from_raw(ch.cast::<ChannelBox<T>>()));
            Ok(())
        })
    }
}

/// Destroy (see [`DragonChannelOpFn`]).
///
/// # Safety
///
/// The ABI contract of `channel_destroy`.
pub unsafe extern "C" fn channel_destroy<T: TransportImpl>(
    ch: *mut DragonChannel,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `ch` as the contract states.
    unsafe { guard(err, err_cap, || channel::<T>(ch)?.channel.destroy()) }
}

/// Send (see [`DragonSendFn`]).
///
/// # Safety
///
/// The ABI contract of `send`.
pub unsafe extern "C" fn send<T: TransportImpl>(
    ch: *mut DragonChannel,
    data: *const u8,
    len: usize,
    timeout_ns: u64,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: the caller's contract is `send_with`'s.
    unsafe { send_with::<T>(ch, data, len, timeout_ns, err, err_cap, ChannelImpl::send) }
}

/// Deferred send (see [`DragonSendDeferredFn`]).
///
/// # Safety
///
/// The ABI contract of `send_deferred`.
pub unsafe extern "C" fn send_deferred<T: TransportImpl>(
    ch: *mut DragonChannel,
    data: *const u8,
    len: usize,
    timeout_ns: u64,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: the caller's contract is `send_with`'s.
    unsafe { send_with::<T>(ch, data, len, timeout_ns, err, err_cap, ChannelImpl::send_deferred) }
}

/// What [`send_with`] calls: [`ChannelImpl::send`] or [`ChannelImpl::send_deferred`].
type SendOp<C> = fn(&C, &[u8], Timeout) -> Result<(), Failure>;

/// `send` and `send_deferred`: `op` with the caller's bytes and timeout.
///
/// # Safety
///
/// `ch` is a live channel of `T`; `data` is readable for `len` bytes
/// during the call; `err` as every function's.
unsafe fn send_with<T: TransportImpl>(
    ch: *mut DragonChannel,
    data: *const u8,
    len: usize,
    timeout_ns: u64,
    err: *mut c_char,
    err_cap: usize,
    op: SendOp<T::Channel>,
) -> i32 {
    // SAFETY: `data` is readable for `len` bytes during the call.
    unsafe {
        guard(err, err_cap, || {
            let c = channel::<T>(ch)?;
            let bytes = input(data, len, "the data")?;
            op(&c.channel, bytes, timeout_from_ns(timeout_ns))
        })
    }
}

/// Flush deferred sends (see [`DragonFlushFn`]).
///
/// # Safety
///
/// The ABI contract of `flush`.
pub unsafe extern "C" fn flush<T: TransportImpl>(
    ch: *mut DragonChannel,
    timeout_ns: u64,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `ch` as the contract states.
    unsafe { guard(err, err_cap, || channel::<T>(ch)?.channel.flush(timeout_from_ns(timeout_ns))) }
}

/// Receive into a buffer (see [`DragonRecvFn`]).
///
/// # Safety
///
/// The ABI contract of `recv`.
pub unsafe extern "C" fn recv<T: TransportImpl>(
    ch: *mut DragonChannel,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    timeout_ns: u64,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `buf` writable for `cap` bytes, `len` writable.
    unsafe {
        guard(err, err_cap, || {
            let c = channel::<T>(ch)?;
            let len = non_null(len, "the length pointer")?;
            // Too small (or a NULL buffer): the message stays first in line
            // for the next receive on this attachment.
            c.next(timeout_from_ns(timeout_ns), |m| copy_out(m.as_ref(), buf, cap, len))?;
            Ok(())
        })
    }
}

/// Receive without a copy (see [`DragonRecvMsgFn`]).
///
/// # Safety
///
/// The ABI contract of `recv_msg`.
pub unsafe extern "C" fn recv_msg<T: TransportImpl>(
    ch: *mut DragonChannel,
    msg: *mut DragonMessage,
    timeout_ns: u64,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `msg` writable.
    unsafe {
        guard(err, err_cap, || {
            let c = channel::<T>(ch)?;
            let msg = non_null(msg, "the message pointer")?;
            let m = c.next(timeout_from_ns(timeout_ns), |_| Ok(()))?;
            let b = Box::new(MessageBox::<T> { _transport: Arc::clone(&c.transport), message: m });
            let bytes = b.message.as_ref();
            let (data, n) =
                (if bytes.is_empty() { std::ptr::NonNull::dangling().as_ptr() } else { bytes.as_ptr() }, bytes.len());
            *msg = DragonMessage { data, len: n, token: Box::into_raw(b).cast::<c_void>() };
            Ok(())
        })
    }
}

/// Free a message (see [`DragonMessageFreeFn`]).
///
/// # Safety
///
/// The ABI contract of `message_free`.
pub unsafe extern "C" fn message_free<T: TransportImpl>(msg: *mut DragonMessage) {
    // SAFETY: a non-NULL `msg` holds a token from `recv_msg`, freed once;
    // we clear it so that a second call on the same struct does nothing.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        if let Some(m) = msg.as_mut() {
            let token = std::mem::replace(&mut m.token, std::ptr::null_mut());
            if !token.is_null() {
                drop(Box::from_raw(token.cast::<MessageBox<T>>()));
            }
        }
    }));
}

/// Poll (see [`DragonPollFn`]).
///
/// # Safety
///
/// The ABI contract of `poll`.
pub unsafe extern "C" fn poll<T: TransportImpl>(
    ch: *mut DragonChannel,
    events: u32,
    timeout_ns: u64,
    revents: *mut u32,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `revents` writable.
    unsafe {
        guard(err, err_cap, || {
            let c = channel::<T>(ch)?;
            let revents = non_null(revents, "the revents pointer")?;
            let events = events & (DRAGON_POLL_IN | DRAGON_POLL_OUT);
            if events == 0 {
                return Err(Failure::new(DRAGON_EINVAL, "poll for no events (give DRAGON_POLL_IN and/or _OUT)"));
            }
            let kept = events & DRAGON_POLL_IN != 0 && !c.kept().is_empty();
            let r = if kept {
                let out = if events & DRAGON_POLL_OUT != 0 {
                    c.channel.poll(DRAGON_POLL_OUT, Some(Duration::ZERO)).unwrap_or(0)
                } else {
                    0
                };
                DRAGON_POLL_IN | out
            } else {
                c.channel.poll(events, timeout_from_ns(timeout_ns))?
            };
            *revents = r;
            Ok(())
        })
    }
}

/// Length (see [`DragonLenFn`]).
///
/// # Safety
///
/// The ABI contract of `len`.
pub unsafe extern "C" fn len<T: TransportImpl>(
    ch: *mut DragonChannel,
    len: *mut u64,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: `len` writable.
    unsafe {
        guard(err, err_cap, || {
            let c = channel::<T>(ch)?;
            let len = non_null(len, "the length pointer")?;
            *len = c.channel.len() + c.kept().len() as u64;
            Ok(())
        })
    }
}

/// The table of `T`, for [`export_transport!`](crate::export_transport).
pub const fn table<T: TransportImpl>() -> DragonTransportTable {
    let zero_copy = T::CAPABILITIES & DRAGON_CAP_ZERO_COPY_RECV != 0;
    let deferred = <T::Channel as ChannelImpl>::DEFERRED_SENDS;
    DragonTransportTable {
        size: std::mem::size_of::<DragonTransportTable>() as u32,
        abi_major: DRAGON_TRANSPORT_ABI_MAJOR,
        abi_minor: DRAGON_TRANSPORT_ABI_MINOR,
        name: T::NAME.as_ptr(),
        capabilities: T::CAPABILITIES,
        open: Some(open::<T>),
        close: Some(close::<T>),
        channel_create: Some(channel_create::<T>),
        channel_attach: Some(channel_attach::<T>),
        channel_handle: Some(channel_handle::<T>),
        channel_close: Some(channel_close::<T>),
        channel_destroy: Some(channel_destroy::<T>),
        send: Some(send::<T>),
        recv: Some(recv::<T>),
        recv_msg: if zero_copy { Some(recv_msg::<T>) } else { None },
        message_free: if zero_copy { Some(message_free::<T>) } else { None },
        poll: Some(poll::<T>),
        len: Some(len::<T>),
        send_deferred: if deferred { Some(send_deferred::<T>) } else { None },
        flush: if deferred { Some(flush::<T>) } else { None },
    }
}

/// Export `$t` (a [`TransportImpl`]) as this library's transport plugin:
/// defines the entry symbol `dragon_transport_v1`. Use once, in a `cdylib`.
#[macro_export]
macro_rules! export_transport {
    ($t:ty) => {
        /// Entry point of the transport plugin ABI, major version 1.
        #[no_mangle]
        pub extern "C" fn dragon_transport_v1() -> *const $crate::abi::DragonTransportTable {
            static TABLE: $crate::abi::DragonTransportTable = $crate::export::table::<$t>();
            &TABLE
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::{null, null_mut};

    /// A transport whose calls panic or fail on request (by config).
    struct Odd;
    struct OddChannel;

    impl TransportImpl for Odd {
        type Channel = OddChannel;
        const NAME: &'static CStr = c"odd";
        const CAPABILITIES: u64 = DRAGON_CAP_LOCAL | DRAGON_CAP_ZERO_COPY_RECV;
        fn open(config: &str) -> Result<Self, Failure> {
            match config {
                "panic" => panic!("open was told to panic"),
                "fail" => Err(Failure::new(DRAGON_EINVAL, "bad config «fail»")),
                _ => Ok(Odd),
            }
        }
        fn create_channel(&self, _: &DragonChannelAttrs) -> Result<OddChannel, Failure> {
            Ok(OddChannel)
        }
        fn attach_channel(&self, _: &[u8]) -> Result<OddChannel, Failure> {
            Err(Failure::new(DRAGON_EBADMSG, "never"))
        }
    }

    impl ChannelImpl for OddChannel {
        type Message = Vec<u8>;
        fn handle(&self) -> Vec<u8> {
            b"0123456789".to_vec()
        }
        fn send(&self, _: &[u8], _: Timeout) -> Result<(), Failure> {
            panic!("send panics")
        }
        fn recv(&self, _: Timeout) -> Result<Vec<u8>, Failure> {
            Ok(vec![9; 100])
        }
        fn poll(&self, _: u32, _: Timeout) -> Result<u32, Failure> {
            Ok(0)
        }
        fn len(&self) -> u64 {
            0
        }
        fn destroy(&self) -> Result<(), Failure> {
            Ok(())
        }
    }

    fn text(buf: &[u8]) -> &str {
        let end = buf.iter().position(|&b| b == 0).expect("NUL-terminated");
        std::str::from_utf8(&buf[..end]).expect("UTF-8")
    }

    fn open_odd(config: &str, err: &mut [u8]) -> (i32, *mut DragonTransport) {
        let mut t = null_mut();
        // SAFETY: valid pointers and lengths.
        let rc =
            unsafe { open::<Odd>(config.as_ptr().cast(), config.len(), &mut t, err.as_mut_ptr().cast(), err.len()) };
        (rc, t)
    }

    #[test]
    fn panics_and_failures_become_codes_and_messages() {
        let mut err = [0xAAu8; 64];
        assert_eq!(open_odd("panic", &mut err).0, DRAGON_EPANIC);
        assert_eq!(text(&err), "the transport plugin panicked: open was told to panic");
        // Truncated on a character boundary, NUL-terminated.
        let mut err = [0xAAu8; 13];
        assert_eq!(open_odd("fail", &mut err).0, DRAGON_EINVAL);
        assert_eq!(text(&err), "bad config ");
        // No buffer: still the code.
        let mut t = null_mut();
        // SAFETY: NULL error buffer is allowed.
        assert_eq!(unsafe { open::<Odd>(b"fail".as_ptr().cast(), 4, &mut t, null_mut(), 0) }, DRAGON_EINVAL);
        // SAFETY: a NULL output pointer is reported, not written.
        assert_eq!(unsafe { open::<Odd>(null(), 0, null_mut(), null_mut(), 0) }, DRAGON_EINVAL);
    }

    #[test]
    fn close_refuses_while_channels_or_messages_live_and_panics_stay_inside() {
        let mut err = [0u8; 256];
        let e = err.as_mut_ptr().cast::<c_char>();
        let (rc, t) = open_odd("", &mut err);
        assert_eq!(rc, DRAGON_OK);
        let mut ch = null_mut();
        // SAFETY: t is open; pointers valid. The sequence below follows the
        // ABI contract (each object closed once, nothing used after).
        unsafe {
            assert_eq!(channel_create::<Odd>(t, null(), &mut ch, e, 256), DRAGON_OK);
            assert_eq!(send::<Odd>(ch, b"x".as_ptr(), 1, 0, e, 256), DRAGON_EPANIC);
            assert!(text(&err).contains("send panics"));
            let mut buf = [0u8; 4];
            let mut len = 0;
            assert_eq!(recv::<Odd>(ch, buf.as_mut_ptr(), 4, &mut len, 0, e, 256), DRAGON_EMSGSIZE);
            assert_eq!(len, 100);
            let mut n = 0;
            assert_eq!(self::len::<Odd>(ch, &mut n, e, 256), DRAGON_OK);
            assert_eq!(n, 1, "the kept message counts");
            let mut m = DragonMessage { data: null(), len: 0, token: null_mut() };
            assert_eq!(recv_msg::<Odd>(ch, &mut m, 0, e, 256), DRAGON_OK);
            assert_eq!(m.len, 100, "the kept message comes first");
            assert_eq!(channel_close::<Odd>(ch, e, 256), DRAGON_OK);
            assert_eq!(close::<Odd>(t, e, 256), DRAGON_EBUSY, "a message is alive");
            assert!(text(&err).contains("still open"));
            message_free::<Odd>(&mut m);
            assert!(m.token.is_null());
            message_free::<Odd>(&mut m); // a second free of the same struct does nothing
            let mut hbuf = [0u8; 4];
            let mut hlen = 0;
            let mut ch2 = null_mut();
            assert_eq!(channel_create::<Odd>(t, null(), &mut ch2, e, 256), DRAGON_OK);
            assert_eq!(channel_handle::<Odd>(ch2, hbuf.as_mut_ptr(), 4, &mut hlen, e, 256), DRAGON_EMSGSIZE);
            assert_eq!(hlen, 10);
            assert_eq!(close::<Odd>(t, e, 256), DRAGON_EBUSY, "a channel is open");
            assert_eq!(channel_close::<Odd>(ch2, e, 256), DRAGON_OK);
            assert_eq!(close::<Odd>(t, e, 256), DRAGON_OK);
        }
    }

    #[test]
    fn the_table_is_complete() {
        let t = table::<Odd>();
        assert_eq!(t.size as usize, std::mem::size_of::<DragonTransportTable>());
        assert_eq!((t.abi_major, t.abi_minor), (DRAGON_TRANSPORT_ABI_MAJOR, DRAGON_TRANSPORT_ABI_MINOR));
        assert!(t.recv_msg.is_some() && t.message_free.is_some());
    }
}
