//! Zero-copy `bytes`: large messages (`bytes` objects, pickles, raw bytes)
//! travel as a block of the run's block store (`transport_shm::blocks`),
//! and the receiving process gets a `bytes` object whose data *are* the
//! block's pages.
//!
//! # How an object is made
//!
//! CPython keeps a `bytes` object's header (reference count, type, size,
//! hash) right before its data. Each receiving process maps the block's
//! pages read-only behind a private page of its own and writes the header at
//! the end of that page, so every process has its own header over the same
//! data. These *views* live in one address range reserved at first use, and
//! a hook wrapping CPython's object allocator (`PyMem_SetAllocator`, which
//! CPython allows after start-up when the hook calls the allocator it wraps)
//! recognises them when CPython frees them. Every other pointer goes
//! straight to the wrapped allocator after a range check.
//!
//! # Who holds the block
//!
//! The receiver owns the block and pins it while its object lives. Sending
//! that same object again, while this process still owns its block, passes
//! the block on (no copy); the pin stays until the object dies, and the
//! block is reused only once nobody owns or pins it (`channels_core::lend`).
//! A view is kept for reuse after its object dies, so the next object over
//! the same block costs no system call.
//!
//! # Limits
//!
//! - Only messages of at least [`MIN_LEN`] bytes go this way (below that
//!   the copy is cheaper than the bookkeeping): exact `bytes` objects,
//!   pickles and raw bytes. Only a `bytes` object can be passed on.
//! - When the store is full or cannot be used, messages are copied as
//!   before; nothing is refused.
//! - If another allocator hook is installed above this one (`tracemalloc`
//!   tracing, say), receives copy until it is removed.
//! - A child forked with `os.fork` gets private copies of the views alive at
//!   the fork (the parent copies them just before forking), so what its
//!   parent does later cannot change its objects.
//! - A C extension that writes into a received `bytes` object's data (which
//!   `bytes` forbids) gets a segmentation fault: the pages are read-only.
//! - `DRAGON_ZERO_COPY=0` turns all of this off.

use crate::errors::DragonError;
use channels_core::lend::LentState;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use transport_shm::blocks::{self, BlockId, Store, PAGE};
use transport_shm::segment::RunId;

/// The tag of a message that names a block instead of carrying bytes.
pub(crate) use queues::wire::TAG_LENT;

/// The smallest payload that travels as a block.
pub(crate) const MIN_LEN: usize = 1 << blocks::MIN_CLASS;

/// Address space reserved for views.
const ARENA_LEN: usize = 64 << 30;

/// Where a `bytes` object's data start, from its address (CPython 3.8+, a
/// release build: checked against `bytes.__basicsize__` before first use).
const SVAL_OFFSET: usize = 32;
const SHASH_OFFSET: usize = 24;

// ---- CPython's allocator interface (not in the limited API, exported by
// every CPython) ----------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
struct PyMemAllocatorEx {
    ctx: *mut c_void,
    malloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    calloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    realloc: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void>,
    free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
}

const PYMEM_DOMAIN_OBJ: c_int = 2;

extern "C" {
    fn PyMem_GetAllocator(domain: c_int, allocator: *mut PyMemAllocatorEx);
    fn PyMem_SetAllocator(domain: c_int, allocator: *mut PyMemAllocatorEx);
}

/// The allocator the hook wraps (written once, under the GIL, before the
/// hook is installed; read-only afterwards).
static WRAPPED: OnceLock<WrappedAlloc> = OnceLock::new();

struct WrappedAlloc(PyMemAllocatorEx);
// SAFETY: function pointers and CPython's context pointer, used only as
// CPython itself uses them (under the GIL).
unsafe impl Send for WrappedAlloc {}
// SAFETY: as above.
unsafe impl Sync for WrappedAlloc {}

/// The view range, for the hook's fast path (0..0 until reserved).
static ARENA_LO: AtomicUsize = AtomicUsize::new(0);
static ARENA_HI: AtomicUsize = AtomicUsize::new(0);

fn in_arena(p: *mut c_void) -> bool {
    let a = p as usize;
    // Relaxed: the range is set before any view is handed out, by the same
    // thread (under the GIL) that later frees through the hook.
    a >= ARENA_LO.load(Ordering::Relaxed) && a < ARENA_HI.load(Ordering::Relaxed)
}

fn wrapped() -> &'static PyMemAllocatorEx {
    &WRAPPED.get().expect("the hook runs only once installed").0
}

unsafe extern "C" fn hook_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    let w = wrapped();
    // SAFETY: forwarding to the allocator CPython had, with its context.
    unsafe { (w.malloc.expect("malloc"))(w.ctx, n) }
}

unsafe extern "C" fn hook_calloc(_: *mut c_void, n: usize, s: usize) -> *mut c_void {
    let w = wrapped();
    // SAFETY: as above.
    unsafe { (w.calloc.expect("calloc"))(w.ctx, n, s) }
}

unsafe extern "C" fn hook_realloc(_: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    let w = wrapped();
    if p.is_null() || !in_arena(p) {
        // SAFETY: as above.
        return unsafe { (w.realloc.expect("realloc"))(w.ctx, p, n) };
    }
    // A view being resized (`_PyBytes_Resize` on an object nobody else
    // references): move it to ordinary memory.
    // SAFETY: a view is a live bytes object; its size field follows the
    // reference count and the type.
    let old = SVAL_OFFSET + 1 + unsafe { p.cast::<u8>().add(16).cast::<isize>().read() } as usize;
    // SAFETY: a fresh allocation of `n` bytes from the wrapped allocator.
    let q = unsafe { (w.malloc.expect("malloc"))(w.ctx, n) };
    if !q.is_null() {
        // SAFETY: both ranges are valid for the smaller length.
        unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), old.min(n)) };
        view_freed(p);
    }
    q
}

unsafe extern "C" fn hook_free(_: *mut c_void, p: *mut c_void) {
    if !p.is_null() && in_arena(p) {
        view_freed(p);
        return;
    }
    let w = wrapped();
    // SAFETY: forwarding to the allocator CPython had.
    unsafe { (w.free.expect("free"))(w.ctx, p) }
}

/// Our hook's context pointer: how we recognise it among allocators.
static HOOK_MARK: u8 = 0;

fn our_hook() -> PyMemAllocatorEx {
    PyMemAllocatorEx {
        ctx: (&raw const HOOK_MARK).cast_mut().cast(),
        malloc: Some(hook_malloc),
        calloc: Some(hook_calloc),
        realloc: Some(hook_realloc),
        free: Some(hook_free),
    }
}

// ---- process state ---------------------------------------------------------

/// A view's place: which store (index into `State::stores`), segment, block.
type Key = (usize, u8, u8);

struct Live {
    key: Key,
    /// The generation at which this process received the block: while the
    /// block's state is `OWNED(us, gen)`, this process may send or free it.
    gen: u32,
    base: usize,
    /// A thread of this process is sending this object (forwarding it).
    sending: bool,
}

#[derive(Default)]
struct State {
    pid: u32,
    stores: Vec<(String, Arc<Store>)>,
    arena_next: usize,
    idle: HashMap<Key, Vec<usize>>,
    view_len: HashMap<Key, usize>,
    live: HashMap<usize, Live>,
    pins: HashMap<Key, u32>,
    /// Views inherited across `fork`, made private: unmapped when freed.
    orphans: HashMap<usize, (usize, usize)>,
    hook: bool,
    unusable: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Messages this process sent as blocks, and received from blocks (as
/// views or, when views cannot be made, as copies).
static SENT: AtomicUsize = AtomicUsize::new(0);
static RECEIVED: AtomicUsize = AtomicUsize::new(0);
static DISABLED: AtomicBool = AtomicBool::new(false);

fn enabled() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| std::env::var("DRAGON_ZERO_COPY").map_or(true, |v| v != "0"))
        && !DISABLED.load(Ordering::Relaxed)
}

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let st = g.get_or_insert_with(State::default);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    if st.pid != pid {
        if st.pid != 0 {
            // A child forked without the after-fork handler (a fork from C):
            // no private copies, but the parent's attachments are not ours.
            st.forget_parent(Vec::new());
        }
        st.pid = pid;
    }
    let r = f(st);
    loop {
        let p = PENDING.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match p {
            Some(p) => st.freed(p),
            None => break,
        }
    }
    r
}

impl State {
    /// In a child of a fork: the views alive at the fork become orphans
    /// (over the private `copies` the parent made just before the fork,
    /// `(object, copy, view data, length)`, where there are some; the others
    /// stay shared, better than unmapping an object the child may use), the
    /// parent's idle views go back to the arena's reservation, and the
    /// parent's attachments are forgotten (dropping a store handle unmaps,
    /// and does not detach: its process is the parent).
    fn forget_parent(&mut self, copies: Vec<(usize, usize, usize, usize)>) {
        for (obj, tmp, data, len) in copies {
            // SAFETY: moves the private copy over the view's data pages
            // (atomically replacing them); both ranges are `len` long.
            let r = unsafe {
                libc::mremap(
                    tmp as *mut c_void,
                    len,
                    len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    data as *mut c_void,
                )
            };
            if r != libc::MAP_FAILED && self.live.remove(&obj).is_some() {
                self.orphans.insert(obj, (data - PAGE, PAGE + len));
            }
        }
        for (obj, live) in std::mem::take(&mut self.live) {
            let len = self.view_len.get(&live.key).copied().unwrap_or(0);
            self.orphans.insert(obj, (live.base, PAGE + len));
        }
        for (key, bases) in std::mem::take(&mut self.idle) {
            let len = self.view_len.get(&key).copied().unwrap_or(0);
            for base in bases {
                unreserve(base, PAGE + len);
            }
        }
        self.view_len.clear();
        self.pins.clear();
        self.stores.clear();
        // SAFETY: getpid has no preconditions.
        self.pid = unsafe { libc::getpid() } as u32;
    }

    fn store_index(&mut self, name: &str, create: bool) -> Option<usize> {
        if let Some(i) = self.stores.iter().position(|(n, _)| n == name) {
            return Some(i);
        }
        let s = if create { Store::open(name) } else { Store::open_existing(name) };
        let s = s.ok()?;
        self.stores.push((name.to_owned(), Arc::new(s)));
        Some(self.stores.len() - 1)
    }

    fn own_store(&mut self) -> Option<usize> {
        if self.unusable {
            return None;
        }
        let name = blocks::store_name(RunId::current());
        let i = self.store_index(&name, true);
        if i.is_none() {
            self.unusable = true;
        }
        i
    }

    fn reserve_view(&mut self, key: Key, len: usize) -> Option<usize> {
        if let Some(b) = self.idle.get_mut(&key).and_then(Vec::pop) {
            return Some(b);
        }
        let lo = ARENA_LO.load(Ordering::Relaxed);
        if lo == 0 {
            return None;
        }
        if self.arena_next + PAGE + len > ARENA_LEN {
            return None;
        }
        let base = lo + self.arena_next;
        // SAFETY: inside the reserved arena, not used by any other view.
        let p = unsafe {
            libc::mmap(
                base as *mut c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let (_, store) = &self.stores[key.0];
        let blk = BlockId { seg: key.1, idx: key.2, gen: 0 };
        let at = NonNull::new((base + PAGE) as *mut u8)?;
        // SAFETY: the arena range after the header page is ours.
        if unsafe { store.map_at(blk, at, len) }.is_err() {
            return None;
        }
        self.arena_next += PAGE + len;
        self.view_len.insert(key, len);
        Some(base)
    }
}

static HOOKED: AtomicBool = AtomicBool::new(false);

/// Whether a view may be made now (checked before taking the state lock:
/// it may run Python code). Once the hook is in, it must still be the
/// outermost one: another hook installed above ours (tracemalloc tracing,
/// say) would not know our objects, so receives copy until it is gone.
fn views_possible(py: Python<'_>) -> bool {
    if HOOKED.load(Ordering::Relaxed) {
        let mut cur =
            PyMemAllocatorEx { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None };
        // SAFETY: writes the current allocator into `cur`; GIL held.
        unsafe { PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &mut cur) };
        return std::ptr::eq(cur.ctx, our_hook().ctx);
    }
    layout_ok(py) && !tracing(py)
}

/// Reserve the view range and install the hook (once). False if this
/// process cannot take views.
fn ensure_hook(st: &mut State) -> bool {
    if st.hook {
        return true;
    }
    if st.unusable {
        return false;
    }
    if ARENA_LO.load(Ordering::Relaxed) == 0 {
        // SAFETY: reserving address space only.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA_LEN,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            st.unusable = true;
            return false;
        }
        ARENA_LO.store(p as usize, Ordering::Relaxed);
        ARENA_HI.store(p as usize + ARENA_LEN, Ordering::Relaxed);
    }
    let mut cur = our_hook();
    // SAFETY: GIL held; reads the current object allocator.
    unsafe { PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &mut cur) };
    if WRAPPED.set(WrappedAlloc(cur)).is_err() {
        return false;
    }
    let mut hook = our_hook();
    // SAFETY: GIL held; the hook forwards every pointer it does not own to
    // the allocator it wraps, as PyMem_SetAllocator requires after start-up.
    unsafe { PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &mut hook) };
    st.hook = true;
    HOOKED.store(true, Ordering::Relaxed);
    true
}

fn layout_ok(py: Python<'_>) -> bool {
    let t = py.get_type::<PyBytes>();
    let basic: usize = t.getattr("__basicsize__").and_then(|v| v.extract()).unwrap_or(0);
    let item: usize = t.getattr("__itemsize__").and_then(|v| v.extract()).unwrap_or(0);
    basic == SVAL_OFFSET + 1 && item == 1
}

fn tracing(py: Python<'_>) -> bool {
    let Ok(m) = py.import("sys").and_then(|s| s.getattr("modules")) else { return true };
    match m.get_item("tracemalloc") {
        Ok(t) => t.call_method0("is_tracing").and_then(|r| r.is_truthy()).unwrap_or(true),
        Err(_) => false,
    }
}

// ---- freeing ---------------------------------------------------------------

/// Give `[base, base + len)` of the arena back to its reservation
/// (inaccessible, no memory).
fn unreserve(base: usize, len: usize) {
    // SAFETY: the range is inside the arena and used by no live object.
    unsafe {
        libc::mmap(
            base as *mut c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
}

/// Views freed while this thread held the state (CPython freed one in the
/// middle of our own code): handled at the next [`with_state`].
static PENDING: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn view_freed(p: *mut c_void) {
    let mut g = match STATE.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(p as usize);
            return;
        }
    };
    let Some(st) = g.as_mut() else { return };
    st.freed(p as usize);
}

impl State {
    fn freed(&mut self, p: usize) {
        let st = self;
        if let Some((base, len)) = st.orphans.remove(&p) {
            unreserve(base, len);
            return;
        }
        let Some(live) = st.live.remove(&p) else { return };
        st.idle.entry(live.key).or_default().push(live.base);
        let Some((_, store)) = st.stores.get(live.key.0) else { return };
        let att = store.attachment();
        let blk = BlockId { seg: live.key.1, idx: live.key.2, gen: live.gen };
        let lent = store.lent(blk);
        // Give up ownership (if still ours at this generation), then the pin
        // once no object of this process maps the block.
        lent.release(att, live.gen);
        let n = st.pins.entry(live.key).or_insert(1);
        *n -= 1;
        if *n == 0 {
            st.pins.remove(&live.key);
            lent.unpin(att);
        }
    }
}

// ---- sending ---------------------------------------------------------------

/// A block ready to be named by a message: the message must be sent with
/// [`Prepared::commit`] run as it is written (just before it is published),
/// and [`Prepared::done`] called after.
pub(crate) struct Prepared {
    /// The message: it names generation `blk.gen + 1`, which `commit` makes.
    pub(crate) desc: Vec<u8>,
    store: Arc<Store>,
    /// The block, at the generation this process owns it.
    blk: BlockId,
    /// The view object forwarded, if this is a forward.
    forwarded: Option<usize>,
}

/// The tag a message of `tag` is reported with when it travels as a block
/// (`None`: its kind never does).
pub(crate) fn block_kind(tag: queues::Tag) -> Option<u8> {
    match tag {
        queues::Tag::Bytes | queues::Tag::Pickle | queues::Tag::Raw => Some(tag.byte()),
        _ => None,
    }
}

/// Put `data` in a block of the run's store, or pass on the block it
/// already is (`obj`: the address of the `bytes` object holding it, if it
/// is one), unless zero-copy does not apply. The receiver will report the
/// message as tag `kind` (`TAG_BYTES`, `TAG_PICKLE` or `TAG_RAW`).
pub(crate) fn prepare(data: &[u8], obj: Option<usize>, kind: u8) -> Option<Prepared> {
    if data.len() < MIN_LEN || !enabled() {
        return None;
    }
    with_state(|st| {
        // Forwarding: a view whose block this process still owns, and that
        // no other thread of ours is sending right now.
        if let Some(live) = obj.and_then(|addr| st.live.get_mut(&addr)) {
            let (name, store) = &st.stores[live.key.0];
            let blk = BlockId { seg: live.key.1, idx: live.key.2, gen: live.gen };
            let owned = store.lent(blk).state() == (LentState::Owned(store.attachment()), live.gen);
            if owned && !live.sending {
                live.sending = true;
                let named = BlockId { gen: live.gen.wrapping_add(1), ..blk };
                return Some(Prepared {
                    desc: descriptor(kind, name, named, data.len()),
                    store: store.clone(),
                    blk,
                    forwarded: obj,
                });
            }
        }
        let si = st.own_store()?;
        let (name, store) = &st.stores[si];
        let blk = store.take(data.len())?;
        if store.write(blk, data).is_err() {
            store.lent(blk).release(store.attachment(), blk.gen);
            return None;
        }
        let named = BlockId { gen: blk.gen.wrapping_add(1), ..blk };
        Some(Prepared { desc: descriptor(kind, name, named, data.len()), store: store.clone(), blk, forwarded: None })
    })
}

impl Prepared {
    /// After [`Prepared::commit`], for a message that did not go out: take
    /// the block back and give it to the store (true), unless its receiver
    /// has it already (false: it is the receiver's to free). Not for a
    /// forward.
    pub(crate) fn recall(&self) -> bool {
        debug_assert!(self.forwarded.is_none(), "a forwarded block is not recalled");
        let (att, m) = (self.store.attachment(), self.blk.gen.wrapping_add(1));
        let lent = self.store.lent(self.blk);
        lent.unsend(att, m) && lent.release(att, m)
    }

    /// Hand the block to the message (called as the message is written,
    /// without the GIL).
    pub(crate) fn commit(&self) {
        let sent = self.store.lent(self.blk).send(self.store.attachment(), self.blk.gen);
        debug_assert_eq!(sent, Some(self.blk.gen.wrapping_add(1)), "the block was ours");
    }

    /// After the send: a block whose message was not sent (`commit` never
    /// ran) is still ours; a fresh one goes back to the store.
    pub(crate) fn done(self, sent: bool) {
        if sent {
            SENT.fetch_add(1, Ordering::Relaxed);
        }
        match self.forwarded {
            Some(addr) => with_state(|st| {
                if let Some(l) = st.live.get_mut(&addr) {
                    l.sending = false;
                }
            }),
            None if !sent => {
                self.store.lent(self.blk).release(self.store.attachment(), self.blk.gen);
            }
            None => {}
        }
    }
}

/// The block message (`transport_shm::blocks::BlockMessage`).
fn descriptor(kind: u8, store: &str, b: BlockId, len: usize) -> Vec<u8> {
    blocks::BlockMessage::encode(kind, store, b, len)
}

/// What a block message (after its tag) says: the tag to report, the
/// store, the block and the payload's length.
fn parse(payload: &[u8]) -> Option<(u8, &str, BlockId, usize)> {
    blocks::BlockMessage::parse(payload).map(|m| (m.kind, m.store, m.block, m.len))
}

// ---- receiving -------------------------------------------------------------

/// The tag to report and the `bytes` object a block message (`payload`:
/// what follows the tag) names: a view of the block if possible, else a
/// copy.
pub(crate) fn receive<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<(u8, Bound<'py, PyAny>)> {
    let (kind, name, blk, len) = parse(payload).ok_or_else(|| DragonError::new_err("malformed block message"))?;
    let views = views_possible(py);
    RECEIVED.fetch_add(1, Ordering::Relaxed);
    let obj = with_state(|st| {
        let si = st.store_index(name, false).ok_or_else(|| {
            DragonError::new_err(format!("a message names block store {name:?}, which this process cannot open"))
        })?;
        let store = st.stores[si].1.clone();
        let att = store.attachment();
        let (p, cap) = store.block(blk).map_err(|e| crate::errors::lent_block_err(name, e))?;
        if len >= cap || !store.lent(blk).receive(att, blk.gen) {
            return Err(DragonError::new_err(
                "a message names a block it does not hold (stale, forged or already received)",
            ));
        }
        let key = (si, blk.seg, blk.idx);
        if views && ensure_hook(st) {
            if let Some(base) = st.reserve_view(key, cap) {
                let obj = base + PAGE - SVAL_OFFSET;
                // SAFETY: the header page is private and writable; the
                // object's data (the block, with its trailing zero) follow
                // it. PyObject_InitVar sets the type, size and refcount 1.
                unsafe {
                    ffi::PyObject_InitVar(obj as *mut ffi::PyVarObject, &raw mut ffi::PyBytes_Type, len as isize);
                    ((obj + SHASH_OFFSET) as *mut isize).write(-1);
                }
                st.live.insert(obj, Live { key, gen: blk.gen, base, sending: false });
                let n = st.pins.entry(key).or_insert(0);
                if *n == 0 {
                    store.lent(blk).pin(att);
                }
                *n += 1;
                // SAFETY: a new reference to a valid bytes object.
                return Ok(unsafe { Bound::from_owned_ptr(py, obj as *mut ffi::PyObject) });
            }
        }
        // A copy, and the block goes back at once.
        // SAFETY: the block is ours now and holds `len` payload bytes.
        let data = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
        let b = PyBytes::new(py, data).into_any();
        store.lent(blk).release(att, blk.gen);
        Ok(b)
    })?;
    Ok((kind, obj))
}

/// Drop a block message nobody will read (a drained channel): the block
/// goes back to the store.
pub(crate) fn discard(payload: &[u8]) {
    let Some((_, name, blk, _)) = parse(payload) else { return };
    with_state(|st| {
        if let Some(si) = st.store_index(name, false) {
            let store = &st.stores[si].1;
            if store.lent(blk).receive(store.attachment(), blk.gen) {
                store.lent(blk).release(store.attachment(), blk.gen);
            }
        }
    });
}

// ---- fork ------------------------------------------------------------------

/// Private copies of the views alive at a fork, made by the parent just
/// before it: `(object, copy, view data, length)`. The child must not copy
/// after the fork, since by then the parent may already have freed and
/// reused the blocks.
static FORK_COPIES: Mutex<Vec<(usize, usize, usize, usize)>> = Mutex::new(Vec::new());

/// Before `os.fork`: copy every live view's bytes to private memory, for
/// the child to put in place of the shared pages.
#[pyfunction]
fn lent_before_fork() {
    let g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(st) = g.as_ref() else { return };
    let mut copies = FORK_COPIES.lock().unwrap_or_else(|e| e.into_inner());
    for (&obj, live) in &st.live {
        let len = st.view_len.get(&live.key).copied().unwrap_or(0);
        let data = live.base + PAGE;
        // SAFETY: a fresh private mapping, filled from the view's pages.
        unsafe {
            let tmp = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if tmp != libc::MAP_FAILED {
                std::ptr::copy_nonoverlapping(data as *const u8, tmp.cast::<u8>(), len);
                copies.push((obj, tmp as usize, data, len));
            }
        }
    }
}

/// After `os.fork`, in the parent: drop the copies made for the child.
#[pyfunction]
fn lent_after_fork_parent() {
    for (_, tmp, _, len) in FORK_COPIES.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        // SAFETY: a mapping made by `lent_before_fork`, used by nobody else.
        unsafe { libc::munmap(tmp as *mut c_void, len) };
    }
}

/// In a child just forked (`os.fork`): the views alive at the fork get the
/// private copies the parent made just before it, so the parent's later use
/// of the blocks cannot change the child's objects; the parent's
/// attachments and cached views are forgotten.
#[pyfunction]
fn lent_after_fork() {
    let copies: Vec<_> = FORK_COPIES.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
    let mut g = match STATE.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            DISABLED.store(true, Ordering::Relaxed);
            return;
        }
    };
    let Some(st) = g.as_mut() else { return };
    st.forget_parent(copies);
}

/// Counts for tests and diagnostics: live views, idle views, views made
/// private by a fork, messages sent and received as blocks by this process,
/// its attachment, store bytes used and cap.
#[pyfunction]
fn lent_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    with_state(|st| -> PyResult<()> {
        d.set_item("live", st.live.len())?;
        d.set_item("idle", st.idle.values().map(Vec::len).sum::<usize>())?;
        d.set_item("orphans", st.orphans.len())?;
        d.set_item("hook", st.hook)?;
        let own = blocks::store_name(RunId::current());
        if let Some((_, s)) = st.stores.iter().find(|(n, _)| *n == own) {
            let (used, cap) = s.usage();
            d.set_item("attachment", s.attachment())?;
            d.set_item("store_used", used)?;
            d.set_item("store_cap", cap)?;
            d.set_item("blocks_in_use", s.blocks_in_use())?;
        }
        Ok(())
    })?;
    d.set_item("sent", SENT.load(Ordering::Relaxed))?;
    d.set_item("received", RECEIVED.load(Ordering::Relaxed))?;
    d.set_item("enabled", enabled())?;
    d.set_item("min_len", MIN_LEN)?;
    Ok(d)
}

/// Sweep the attachments of dead processes in the run's store; returns how
/// many were swept.
#[pyfunction]
fn lent_sweep() -> usize {
    with_state(|st| st.own_store().map_or(0, |i| st.stores[i].1.sweep_dead()))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(lent_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(lent_after_fork_parent, m)?)?;
    m.add_function(wrap_pyfunction!(lent_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(lent_stats, m)?)?;
    m.add_function(wrap_pyfunction!(lent_sweep, m)?)?;
    m.add("TAG_LENT", TAG_LENT)?;
    m.add("LENT_MIN_LEN", MIN_LEN)?;
    Ok(())
}
