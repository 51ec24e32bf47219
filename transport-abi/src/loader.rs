//! The host side of the ABI: find a plugin, load it, check it, and use it
//! through safe wrappers.
//!
//! ```no_run
//! use transport_abi::{ChannelAttrs, Plugin};
//! use std::time::Duration;
//! let plugin = Plugin::find("shm")?;            // DRAGON_TRANSPORT_PATH, config file, beside the binary
//! let transport = plugin.open("")?;
//! let ch = transport.create_channel(&ChannelAttrs::default())?;
//! let peer = transport.attach_channel(&ch.handle()?)?;
//! peer.send(b"hello", None)?;
//! assert_eq!(ch.recv(Some(Duration::from_secs(1)))?, b"hello");
//! ch.destroy()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Lifetimes: a [`PluginChannel`] and a [`PluginMessage`] keep their
//! [`Transport`] open, and a transport keeps its library loaded (reference
//! counts), so the library can never be unloaded under an open channel.

use super::abi::*;
use std::ffi::{c_char, OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable: `:`-separated folders searched first.
pub const PATH_ENV: &str = "DRAGON_TRANSPORT_PATH";
/// Environment variable: the config file to read (default
/// `$XDG_CONFIG_HOME/dragon/transports.conf`, else
/// `~/.config/dragon/transports.conf`).
pub const CONFIG_ENV: &str = "DRAGON_TRANSPORT_CONFIG";

/// File name of the plugin called `name`: `libdragon_transport_<name>.so`.
pub fn library_file_name(name: &str) -> String {
    format!("libdragon_transport_{name}.so")
}

/// Why a plugin could not be found or loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// The name is not a plugin name (letters, digits, `_`; 1-64 bytes).
    BadName(String),
    /// No file for the plugin in any place searched.
    NotFound { name: String, searched: Vec<PathBuf> },
    /// The config file could not be read or has a bad line.
    Config { path: PathBuf, reason: String },
    /// The file does not exist.
    Missing(PathBuf),
    /// The dynamic loader refused the file (not a shared library, wrong
    /// architecture, missing dependencies).
    NotALibrary { path: PathBuf, reason: String },
    /// The library exports no `dragon_transport_v1`. `other_major` is set
    /// when it exports the entry symbol of another major version.
    NoEntry { path: PathBuf, other_major: Option<u16> },
    /// The entry function returned NULL.
    NullTable(PathBuf),
    /// The table is of another ABI major version.
    WrongVersion { path: PathBuf, major: u16, minor: u16 },
    /// The table is shorter than version 1.0's.
    TableTooShort { path: PathBuf, size: u32, need: u32 },
    /// A required function pointer is NULL.
    MissingFunction { path: PathBuf, function: &'static str },
    /// The table's name is NULL, too long or not printable ASCII.
    BadTableName(PathBuf),
    /// The library is a different transport than the one asked for.
    NameMismatch { path: PathBuf, expected: String, found: String },
    /// Another table is already registered under this name in this program.
    Duplicate(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::BadName(n) => {
                write!(f, "{n:?} is not a transport name (letters, digits and '_', at most 64)")
            }
            LoadError::NotFound { name, searched } => {
                write!(f, "no transport plugin {name:?} ({}) found; looked in", library_file_name(name))?;
                if searched.is_empty() {
                    f.write_str(" no place (set DRAGON_TRANSPORT_PATH)")?;
                }
                for (i, p) in searched.iter().enumerate() {
                    write!(f, "{} {}", if i == 0 { "" } else { "," }, p.display())?;
                }
                Ok(())
            }
            LoadError::Config { path, reason } => write!(f, "transport config {}: {reason}", path.display()),
            LoadError::Missing(p) => write!(f, "transport plugin {}: no such file", p.display()),
            LoadError::NotALibrary { path, reason } => {
                write!(f, "transport plugin {}: not a loadable shared library: {reason}", path.display())
            }
            LoadError::NoEntry { path, other_major: Some(m) } => write!(
                f,
                "transport plugin {}: built for plugin ABI version {m}, this build supports version \
                 {DRAGON_TRANSPORT_ABI_MAJOR} (it exports dragon_transport_v{m}, not {DRAGON_TRANSPORT_ENTRY_V1})",
                path.display()
            ),
            LoadError::NoEntry { path, other_major: None } => write!(
                f,
                "transport plugin {}: not a transport plugin (no {DRAGON_TRANSPORT_ENTRY_V1} symbol)",
                path.display()
            ),
            LoadError::NullTable(p) => {
                write!(f, "transport plugin {}: {DRAGON_TRANSPORT_ENTRY_V1}() returned NULL", p.display())
            }
            LoadError::WrongVersion { path, major, minor } => write!(
                f,
                "transport plugin {}: its table is ABI version {major}.{minor}, this build supports major \
                 version {DRAGON_TRANSPORT_ABI_MAJOR}",
                path.display()
            ),
            LoadError::TableTooShort { path, size, need } => write!(
                f,
                "transport plugin {}: its function table is {size} bytes, ABI {DRAGON_TRANSPORT_ABI_MAJOR}.0 needs \
                 at least {need}",
                path.display()
            ),
            LoadError::MissingFunction { path, function } => {
                write!(f, "transport plugin {}: required function {function} is NULL", path.display())
            }
            LoadError::BadTableName(p) => {
                write!(f, "transport plugin {}: its name is NULL, too long or not ASCII", p.display())
            }
            LoadError::NameMismatch { path, expected, found } => {
                write!(f, "transport plugin {}: asked for {expected:?}, the library is {found:?}", path.display())
            }
            LoadError::Duplicate(name) => {
                write!(f, "transport {name:?} is already registered in this program with another table")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// What kind of failure a plugin reported (from its `DRAGON_E*` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad argument or config (`DRAGON_EINVAL`).
    Invalid,
    /// Would block with a zero timeout (`DRAGON_EAGAIN`).
    WouldBlock,
    /// The timeout elapsed (`DRAGON_ETIMEDOUT`).
    TimedOut,
    /// The buffer is too small; [`PluginError::needed`] says how big it must
    /// be; the message was kept (`DRAGON_EMSGSIZE`).
    BufferTooSmall,
    /// The message is too large for the channel (`DRAGON_E2BIG`).
    TooBig,
    /// Closed or no peer left (`DRAGON_EPIPE`).
    Closed,
    /// The channel was destroyed (`DRAGON_EIDRM`).
    Destroyed,
    /// Handle bytes are invalid (`DRAGON_EBADMSG`).
    BadHandle,
    /// The object does not exist (`DRAGON_ENOENT`).
    NotFound,
    /// A handle of an earlier object of that name (`DRAGON_ESTALE`).
    Stale,
    /// The object is on another node (`DRAGON_EREMOTE`).
    Remote,
    /// Incompatible builds (`DRAGON_EPROTO`).
    Incompatible,
    /// Out of memory (`DRAGON_ENOMEM`).
    NoMemory,
    /// A fixed limit was reached (`DRAGON_EMFILE`).
    Limit,
    /// Still in use (`DRAGON_EBUSY`).
    Busy,
    /// Not implemented by this plugin (`DRAGON_ENOTSUP`).
    Unsupported,
    /// The plugin panicked (`DRAGON_EPANIC`).
    Panicked,
    /// Input/output error (`DRAGON_EIO`) or a code this build does not know.
    Other,
}

impl ErrorKind {
    fn of(code: i32) -> ErrorKind {
        match code {
            DRAGON_EINVAL => ErrorKind::Invalid,
            DRAGON_EAGAIN => ErrorKind::WouldBlock,
            DRAGON_ETIMEDOUT => ErrorKind::TimedOut,
            DRAGON_EMSGSIZE => ErrorKind::BufferTooSmall,
            DRAGON_E2BIG => ErrorKind::TooBig,
            DRAGON_EPIPE => ErrorKind::Closed,
            DRAGON_EIDRM => ErrorKind::Destroyed,
            DRAGON_EBADMSG => ErrorKind::BadHandle,
            DRAGON_ENOENT => ErrorKind::NotFound,
            DRAGON_ESTALE => ErrorKind::Stale,
            DRAGON_EREMOTE => ErrorKind::Remote,
            DRAGON_EPROTO => ErrorKind::Incompatible,
            DRAGON_ENOMEM => ErrorKind::NoMemory,
            DRAGON_EMFILE => ErrorKind::Limit,
            DRAGON_EBUSY => ErrorKind::Busy,
            DRAGON_ENOTSUP => ErrorKind::Unsupported,
            DRAGON_EPANIC => ErrorKind::Panicked,
            _ => ErrorKind::Other,
        }
    }
}

/// An operation failed inside a plugin (or the plugin broke the ABI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    plugin: String,
    op: &'static str,
    code: i32,
    message: String,
    needed: Option<usize>,
}

impl PluginError {
    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::of(self.code)
    }
    /// The raw `DRAGON_E*` code.
    pub fn code(&self) -> i32 {
        self.code
    }
    /// The plugin's message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// For [`ErrorKind::BufferTooSmall`]: the bytes needed.
    pub fn needed(&self) -> Option<usize> {
        self.needed
    }
    /// The operation that failed (`"send"`, `"open"`, ...).
    pub fn operation(&self) -> &'static str {
        self.op
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transport {:?}: {}: {} (code {})", self.plugin, self.op, self.message, self.code)
    }
}

impl std::error::Error for PluginError {}

/// The function pointers of a checked table: every one is `Some` except
/// `recv_msg`/`message_free` without the zero-copy capability.
#[derive(Clone, Copy)]
struct Fns {
    open: DragonOpenFn,
    close: DragonCloseFn,
    channel_create: DragonChannelCreateFn,
    channel_attach: DragonChannelAttachFn,
    channel_handle: DragonChannelHandleFn,
    channel_close: DragonChannelOpFn,
    channel_destroy: DragonChannelOpFn,
    send: DragonSendFn,
    recv: DragonRecvFn,
    recv_msg: DragonRecvMsgFn,
    message_free: DragonMessageFreeFn,
    poll: DragonPollFn,
    len: DragonLenFn,
    // Minor version 1 (NULL, or not in an older plugin's table: the host
    // does without).
    send_deferred: DragonSendDeferredFn,
    flush: DragonFlushFn,
}

/// Size of a table of minor version 0: it ends with `len`. Every table of
/// major version 1 is at least this large.
pub const TABLE_SIZE_V1_0: u32 = std::mem::offset_of!(DragonTransportTable, send_deferred) as u32;

/// A required function of a checked table.
fn req<F>(f: Option<F>) -> F {
    f.expect("required functions are checked when the plugin is loaded")
}

struct Library {
    fns: Fns,
    name: String,
    path: PathBuf,
    version: (u16, u16),
    capabilities: u64,
    // Last: dropped (unloaded) after everything above. Never dropped while a
    // Transport (hence a channel or message) exists: they hold Arc<Library>.
    // None: a table linked into this program (see `Plugin::from_static`).
    _lib: Option<libloading::Library>,
}

/// A loaded, checked transport plugin. Cheap to clone; the library stays
/// loaded while any clone, transport, channel or message of it lives.
#[derive(Clone)]
pub struct Plugin {
    lib: Arc<Library>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.lib.name)
            .field("path", &self.lib.path)
            .field("version", &self.lib.version)
            .field("capabilities", &format_args!("{:#x}", self.lib.capabilities))
            .finish()
    }
}

const ERR_CAP: usize = 1024;

/// Longest name a table may carry.
const MAX_NAME: usize = 64;

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Read a NUL-terminated name of at most [`MAX_NAME`] bytes.
///
/// # Safety
///
/// `p` is NULL or points to readable bytes up to a NUL or `MAX_NAME + 1`
/// bytes, whichever comes first.
unsafe fn read_name(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..=MAX_NAME {
        // SAFETY: bytes up to the NUL (or the bound) are readable (contract).
        let b = unsafe { *p.add(i) } as u8;
        if b == 0 {
            return String::from_utf8(out).ok().filter(|s| valid_name(s));
        }
        out.push(b);
    }
    None
}

/// What [`check_table`] read from a valid table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The transport's name.
    pub name: String,
    /// ABI version (major, minor) the plugin was built against.
    pub version: (u16, u16),
    /// `DRAGON_CAP_*` bits.
    pub capabilities: u64,
}

/// Check a transport table as [`Plugin::load`] does, without a library
/// (`path` only names it in errors): NULL or misaligned, another major
/// version, shorter than version 1.0's table, a bad name, a required
/// function missing are each a [`LoadError`]. For tools, and for tests that
/// build tables in memory.
///
/// # Safety
///
/// `table` is NULL, or points to at least 8 readable bytes (size and
/// version) and to as many readable bytes as its size field says (at
/// most a whole [`DragonTransportTable`] is read); its `name` is NULL or
/// readable up to a NUL or 65 bytes.
pub unsafe fn check_table(table: *const DragonTransportTable, path: &Path) -> Result<TableInfo, LoadError> {
    // SAFETY: the caller's contract is `checked`'s.
    unsafe { checked(table, path) }.map(|(_, info)| info)
}

/// [`check_table`], with the function pointers.
///
/// # Safety
///
/// As [`check_table`].
unsafe fn checked(table: *const DragonTransportTable, path: &Path) -> Result<(Fns, TableInfo), LoadError> {
    let path = path.to_path_buf();
    if table.is_null() || !table.is_aligned() {
        return Err(LoadError::NullTable(path));
    }
    // SAFETY: a table starts with size (u32) and version (2 x u16): 8
    // bytes every table of every version has (contract).
    let (size, major, minor) = unsafe {
        let t = table.cast::<u8>();
        (t.cast::<u32>().read(), t.add(4).cast::<u16>().read(), t.add(6).cast::<u16>().read())
    };
    if major != DRAGON_TRANSPORT_ABI_MAJOR {
        return Err(LoadError::WrongVersion { path, major, minor });
    }
    let need = TABLE_SIZE_V1_0;
    if size < need {
        return Err(LoadError::TableTooShort { path, size, need });
    }
    // Fields are read through the raw pointer: a table of an older minor
    // version is shorter than `DragonTransportTable`.
    macro_rules! field {
        ($f:ident) => {
            // SAFETY: the table is at least `TABLE_SIZE_V1_0` bytes (its
            // size says so, contract), which covers every field of minor
            // version 0, and outlives this call.
            unsafe { std::ptr::addr_of!((*table).$f).read() }
        };
    }
    // A field appended later: read only if the table's size covers it.
    macro_rules! appended {
        ($f:ident) => {{
            let end = std::mem::offset_of!(DragonTransportTable, $f) + std::mem::size_of::<usize>();
            if size as usize >= end {
                field!($f)
            } else {
                None
            }
        }};
    }
    let name_ptr = field!(name);
    // SAFETY: `name` is NULL or a NUL-terminated string (contract).
    let name = unsafe { read_name(name_ptr) }.ok_or_else(|| LoadError::BadTableName(path.clone()))?;
    macro_rules! req {
        ($f:ident) => {
            Some(field!($f).ok_or(LoadError::MissingFunction { path: path.clone(), function: stringify!($f) })?)
        };
    }
    let capabilities = field!(capabilities);
    let zero_copy = capabilities & DRAGON_CAP_ZERO_COPY_RECV != 0;
    let fns = Fns {
        open: req!(open),
        close: req!(close),
        channel_create: req!(channel_create),
        channel_attach: req!(channel_attach),
        channel_handle: req!(channel_handle),
        channel_close: req!(channel_close),
        channel_destroy: req!(channel_destroy),
        send: req!(send),
        recv: req!(recv),
        recv_msg: if zero_copy { req!(recv_msg) } else { None },
        message_free: if zero_copy { req!(message_free) } else { None },
        poll: req!(poll),
        len: req!(len),
        send_deferred: appended!(send_deferred),
        flush: appended!(flush),
    };
    Ok((fns, TableInfo { name, version: (major, minor), capabilities }))
}

impl Plugin {
    /// Load the plugin in the file at `path` and check its table.
    pub fn load(path: impl AsRef<Path>) -> Result<Plugin, LoadError> {
        let path = path.as_ref();
        let path = if path.is_relative() && path.components().count() == 1 {
            // A bare file name would make dlopen search the system paths.
            Path::new(".").join(path)
        } else {
            path.to_path_buf()
        };
        if !path.exists() {
            return Err(LoadError::Missing(path));
        }
        // SAFETY: loading runs the library's initialisers; loading a file
        // as a plugin is trusting it, as every plugin system does. The
        // path names a file the user or the search path chose.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| LoadError::NotALibrary { path: path.clone(), reason: e.to_string() })?;
        // SAFETY: the symbol, if present, has the type the ABI declares.
        let entry = match unsafe { lib.get::<DragonTransportEntryV1>(DRAGON_TRANSPORT_ENTRY_V1.as_bytes()) } {
            Ok(e) => *e,
            Err(_) => {
                let other_major = (2..=16u16).find(|m| {
                    // SAFETY: only the symbol's presence is checked; it is
                    // never called.
                    unsafe { lib.get::<*const ()>(format!("dragon_transport_v{m}").as_bytes()) }.is_ok()
                });
                return Err(LoadError::NoEntry { path, other_major });
            }
        };
        // SAFETY: the entry function takes no arguments and returns the
        // table pointer (ABI); it may not unwind (ABI).
        let table = unsafe { entry() };
        // SAFETY: the ABI says the table is NULL or a static table whose
        // size field says how much of it there is, with a static name.
        let (fns, info) = unsafe { checked(table, &path) }?;
        Ok(Plugin::new(fns, info, path, Some(lib)))
    }

    fn new(fns: Fns, info: TableInfo, path: PathBuf, lib: Option<libloading::Library>) -> Plugin {
        let TableInfo { name, version, capabilities } = info;
        Plugin { lib: Arc::new(Library { fns, name, path, version, capabilities, _lib: lib }) }
    }

    /// A transport linked into this program, from its table (checked as a
    /// loaded plugin's is): what [`crate::registry::register`] registers.
    /// Its [`Plugin::path`] is empty.
    pub fn from_static(table: &'static DragonTransportTable) -> Result<Plugin, LoadError> {
        let path = PathBuf::new();
        // SAFETY: a reference to a static table: aligned, readable, and its
        // name and functions live as long as the program.
        let (fns, info) = unsafe { checked(table, &path) }?;
        Ok(Plugin::new(fns, info, path, None))
    }

    /// Whether it is linked into this program rather than loaded from a file.
    pub fn is_static(&self) -> bool {
        self.lib._lib.is_none()
    }

    /// Find the plugin `name` as [`Discovery::from_env`] says and load it.
    pub fn find(name: &str) -> Result<Plugin, LoadError> {
        Discovery::from_env().find(name)
    }

    /// The transport's name, from its table.
    pub fn name(&self) -> &str {
        &self.lib.name
    }
    /// The file it was loaded from (empty for a transport linked into this
    /// program).
    pub fn path(&self) -> &Path {
        &self.lib.path
    }
    /// ABI version (major, minor) the plugin was built against.
    pub fn version(&self) -> (u16, u16) {
        self.lib.version
    }
    /// `DRAGON_CAP_*` bits.
    pub fn capabilities(&self) -> u64 {
        self.lib.capabilities
    }
    /// Whether it has every capability bit in `cap`.
    pub fn has(&self, cap: u64) -> bool {
        self.lib.capabilities & cap == cap
    }

    /// Start a transport instance with `config` (empty: defaults).
    pub fn open(&self, config: &str) -> Result<Transport, PluginError> {
        let mut out = std::ptr::null_mut();
        let lib = &self.lib;
        call(lib, "open", |err| {
            // SAFETY: config is readable for its length during the call;
            // out is writable; err has ERR_CAP bytes.
            unsafe { req(lib.fns.open)(config.as_ptr().cast(), config.len(), &mut out, err, ERR_CAP) }
        })?;
        let ptr = nonnull(lib, "open", out)?;
        Ok(Transport { inner: Arc::new(TransportInner { lib: Arc::clone(lib), ptr }) })
    }
}

/// Call a table function with an error buffer; turn failure into an error.
fn call(lib: &Library, op: &'static str, f: impl FnOnce(*mut c_char) -> i32) -> Result<(), PluginError> {
    let mut buf = [0u8; ERR_CAP];
    let code = f(buf.as_mut_ptr().cast());
    if code == DRAGON_OK {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    let mut message = String::from_utf8_lossy(&buf[..end]).into_owned();
    if message.is_empty() {
        message = "(the plugin gave no message)".to_owned();
    }
    let code = if code > 0 {
        message = format!("invalid positive return code {code}: {message}");
        DRAGON_EIO
    } else {
        code
    };
    Err(PluginError { plugin: lib.name.clone(), op, code, message, needed: None })
}

fn broken(lib: &Library, op: &'static str, what: &str) -> PluginError {
    PluginError {
        plugin: lib.name.clone(),
        op,
        code: DRAGON_EIO,
        message: format!("the plugin broke the ABI: {what}"),
        needed: None,
    }
}

fn nonnull<T>(lib: &Library, op: &'static str, p: *mut T) -> Result<NonNull<T>, PluginError> {
    NonNull::new(p).ok_or_else(|| broken(lib, op, "it reported success but returned no object"))
}

/// ABI timeout from an optional duration (`None`: forever).
pub fn timeout_ns(timeout: Option<Duration>) -> u64 {
    match timeout {
        None => DRAGON_TIMEOUT_FOREVER,
        Some(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).min(DRAGON_TIMEOUT_FOREVER - 1),
    }
}

struct TransportInner {
    // Keeps the library loaded while the instance exists.
    lib: Arc<Library>,
    ptr: NonNull<DragonTransport>,
}

// SAFETY: the ABI requires every function to be callable from any thread,
// concurrently on one object, except `close`, which runs only in Drop (when
// no other reference exists).
unsafe impl Send for TransportInner {}
// SAFETY: as for Send.
unsafe impl Sync for TransportInner {}

impl Drop for TransportInner {
    fn drop(&mut self) {
        // Every channel and message holds an Arc of this, so none is open.
        let _ = call(&self.lib, "close", |err| {
            // SAFETY: ptr came from open and is closed only here, once.
            unsafe { req(self.lib.fns.close)(self.ptr.as_ptr(), err, ERR_CAP) }
        });
    }
}

/// An open transport instance. Cheap to clone; closed when the last clone,
/// channel and message of it is dropped.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<TransportInner>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").field("plugin", &self.inner.lib.name).finish_non_exhaustive()
    }
}

/// Attributes of a new channel; 0 means the transport's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelAttrs {
    /// Messages held before a send waits.
    pub capacity: u64,
    /// Slot size in bytes (messages up to about this size travel inline).
    pub slot_size: u64,
    /// Largest total of out-of-slot message memory.
    pub max_block_bytes: u64,
}

impl Transport {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.lib.name
    }

    /// Create a channel and attach to it.
    pub fn create_channel(&self, attrs: &ChannelAttrs) -> Result<PluginChannel, PluginError> {
        let a = DragonChannelAttrs {
            size: std::mem::size_of::<DragonChannelAttrs>() as u32,
            flags: 0,
            capacity: attrs.capacity,
            slot_size: attrs.slot_size,
            max_block_bytes: attrs.max_block_bytes,
        };
        let mut out = std::ptr::null_mut();
        let lib = &self.inner.lib;
        call(lib, "channel_create", |err| {
            // SAFETY: the instance is open; a and out live across the call.
            unsafe { req(lib.fns.channel_create)(self.inner.ptr.as_ptr(), &a, &mut out, err, ERR_CAP) }
        })?;
        Ok(PluginChannel { transport: Arc::clone(&self.inner), ptr: nonnull(lib, "channel_create", out)? })
    }

    /// Attach to the channel of these handle bytes.
    pub fn attach_channel(&self, handle: &[u8]) -> Result<PluginChannel, PluginError> {
        let mut out = std::ptr::null_mut();
        let lib = &self.inner.lib;
        call(lib, "channel_attach", |err| {
            // SAFETY: the instance is open; handle is readable for its length.
            unsafe {
                req(lib.fns.channel_attach)(
                    self.inner.ptr.as_ptr(),
                    handle.as_ptr(),
                    handle.len(),
                    &mut out,
                    err,
                    ERR_CAP,
                )
            }
        })?;
        Ok(PluginChannel { transport: Arc::clone(&self.inner), ptr: nonnull(lib, "channel_attach", out)? })
    }
}

/// Readiness bits of [`PluginChannel::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollEvents(pub u32);

impl PollEvents {
    /// A receive would not block.
    pub const IN: PollEvents = PollEvents(DRAGON_POLL_IN);
    /// A send would not block.
    pub const OUT: PollEvents = PollEvents(DRAGON_POLL_OUT);
    /// Closed or destroyed (reported only).
    pub const HUP: PollEvents = PollEvents(DRAGON_POLL_HUP);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: PollEvents) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for PollEvents {
    type Output = PollEvents;
    fn bitor(self, rhs: PollEvents) -> PollEvents {
        PollEvents(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for PollEvents {
    type Output = PollEvents;
    fn bitand(self, rhs: PollEvents) -> PollEvents {
        PollEvents(self.0 & rhs.0)
    }
}

/// This process's attachment to a channel, through a plugin. Usable from
/// many threads at once; detaches when dropped.
pub struct PluginChannel {
    transport: Arc<TransportInner>,
    ptr: NonNull<DragonChannel>,
}

// SAFETY: the ABI requires channel functions to be thread-safe on one
// attachment; `channel_close` runs only in Drop.
unsafe impl Send for PluginChannel {}
// SAFETY: as for Send.
unsafe impl Sync for PluginChannel {}

impl fmt::Debug for PluginChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginChannel").field("plugin", &self.transport.lib.name).finish_non_exhaustive()
    }
}

impl Drop for PluginChannel {
    fn drop(&mut self) {
        let lib = &self.transport.lib;
        let _ = call(lib, "channel_close", |err| {
            // SAFETY: ptr came from channel_create/attach; closed once, here.
            unsafe { req(lib.fns.channel_close)(self.ptr.as_ptr(), err, ERR_CAP) }
        });
    }
}

impl PluginChannel {
    fn lib(&self) -> &Library {
        &self.transport.lib
    }

    /// The channel's handle bytes (give them to another process).
    pub fn handle(&self) -> Result<Vec<u8>, PluginError> {
        let mut buf = vec![0u8; 128];
        loop {
            let mut len = 0usize;
            let r = call(self.lib(), "channel_handle", |err| {
                // SAFETY: buf is writable for its length; len is writable.
                unsafe {
                    req(self.lib().fns.channel_handle)(
                        self.ptr.as_ptr(),
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut len,
                        err,
                        ERR_CAP,
                    )
                }
            });
            match r {
                Ok(()) if len <= buf.len() => {
                    buf.truncate(len);
                    return Ok(buf);
                }
                Ok(()) => return Err(broken(self.lib(), "channel_handle", "length larger than the buffer")),
                Err(e) if e.code == DRAGON_EMSGSIZE && len > buf.len() && len <= 1 << 20 => buf.resize(len, 0),
                Err(e) => return Err(e),
            }
        }
    }

    /// Send a copy of `data`, waiting at most `timeout` (`None`: forever)
    /// while the channel is full.
    pub fn send(&self, data: &[u8], timeout: Option<Duration>) -> Result<(), PluginError> {
        call(self.lib(), "send", |err| {
            // SAFETY: data is readable for its length during the call.
            unsafe {
                req(self.lib().fns.send)(
                    self.ptr.as_ptr(),
                    data.as_ptr(),
                    data.len(),
                    timeout_ns(timeout),
                    err,
                    ERR_CAP,
                )
            }
        })
    }

    /// Hand a copy of `data` to be sent after every earlier send of this
    /// attachment, without waiting for it to arrive (a plugin without
    /// `send_deferred` sends it now, waiting as long as it takes). Waits at
    /// most `timeout` for room among the attachment's messages in flight
    /// ([`ErrorKind::WouldBlock`] / [`ErrorKind::TimedOut`]: not taken).
    /// Any other error is an earlier deferred message's, and `data` was not
    /// taken either.
    pub fn send_deferred(&self, data: &[u8], timeout: Option<Duration>) -> Result<(), PluginError> {
        let Some(f) = self.lib().fns.send_deferred else {
            return self.send(data, None);
        };
        call(self.lib(), "send_deferred", |err| {
            // SAFETY: data is readable for its length during the call.
            unsafe { f(self.ptr.as_ptr(), data.as_ptr(), data.len(), timeout_ns(timeout), err, ERR_CAP) }
        })
    }

    /// Wait at most `timeout` until every message given to
    /// [`PluginChannel::send_deferred`] is in the channel; the first
    /// failure among them not yet reported.
    pub fn flush(&self, timeout: Option<Duration>) -> Result<(), PluginError> {
        let Some(f) = self.lib().fns.flush else { return Ok(()) };
        call(self.lib(), "flush", |err| {
            // SAFETY: the channel pointer is live (self).
            unsafe { f(self.ptr.as_ptr(), timeout_ns(timeout), err, ERR_CAP) }
        })
    }

    /// Receive into `buf`, waiting at most `timeout`; the message's length.
    /// A message longer than `buf` fails with [`ErrorKind::BufferTooSmall`]
    /// ([`PluginError::needed`] tells the size) and stays first in line.
    pub fn recv_into(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize, PluginError> {
        let mut len = 0usize;
        let r = call(self.lib(), "recv", |err| {
            // SAFETY: buf is writable for its length; len is writable.
            unsafe {
                req(self.lib().fns.recv)(
                    self.ptr.as_ptr(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut len,
                    timeout_ns(timeout),
                    err,
                    ERR_CAP,
                )
            }
        });
        match r {
            Ok(()) if len <= buf.len() => Ok(len),
            Ok(()) => Err(broken(self.lib(), "recv", "length larger than the buffer")),
            Err(mut e) => {
                if e.code == DRAGON_EMSGSIZE {
                    e.needed = Some(len);
                }
                Err(e)
            }
        }
    }

    /// Receive a message as a vector, waiting at most `timeout`.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Vec<u8>, PluginError> {
        if self.lib().fns.recv_msg.is_some() {
            return self.recv_msg(timeout).map(|m| m.to_vec());
        }
        let mut buf = vec![0u8; 4096];
        loop {
            match self.recv_into(&mut buf, timeout) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == ErrorKind::BufferTooSmall => buf.resize(e.needed().unwrap_or(buf.len() * 2), 0),
                Err(e) => return Err(e),
            }
        }
    }

    /// Receive without copying (plugins with `DRAGON_CAP_ZERO_COPY_RECV`;
    /// others fail with [`ErrorKind::Unsupported`]).
    pub fn recv_msg(&self, timeout: Option<Duration>) -> Result<PluginMessage, PluginError> {
        let (Some(recv_msg), Some(free)) = (self.lib().fns.recv_msg, self.lib().fns.message_free) else {
            return Err(PluginError {
                plugin: self.lib().name.clone(),
                op: "recv_msg",
                code: DRAGON_ENOTSUP,
                message: "this transport has no zero-copy receive".into(),
                needed: None,
            });
        };
        let mut m = DragonMessage { data: std::ptr::null(), len: 0, token: std::ptr::null_mut() };
        call(self.lib(), "recv_msg", |err| {
            // SAFETY: m is writable.
            unsafe { recv_msg(self.ptr.as_ptr(), &mut m, timeout_ns(timeout), err, ERR_CAP) }
        })?;
        if m.data.is_null() {
            // SAFETY: freeing what the plugin handed out, once.
            unsafe { free(&mut m) };
            return Err(broken(self.lib(), "recv_msg", "NULL message data"));
        }
        Ok(PluginMessage { transport: Arc::clone(&self.transport), msg: m, free })
    }

    /// Wait at most `timeout` until one of `events` holds; the events that
    /// hold. None holding in time is [`ErrorKind::TimedOut`] (or
    /// [`ErrorKind::WouldBlock`] for a zero timeout).
    pub fn poll(&self, events: PollEvents, timeout: Option<Duration>) -> Result<PollEvents, PluginError> {
        let mut rev = 0u32;
        call(self.lib(), "poll", |err| {
            // SAFETY: rev is writable.
            unsafe {
                req(self.lib().fns.poll)(self.ptr.as_ptr(), events.0, timeout_ns(timeout), &mut rev, err, ERR_CAP)
            }
        })?;
        Ok(PollEvents(rev))
    }

    /// Messages in the channel (a snapshot).
    pub fn len(&self) -> Result<u64, PluginError> {
        let mut n = 0u64;
        call(self.lib(), "len", |err| {
            // SAFETY: n is writable.
            unsafe { req(self.lib().fns.len)(self.ptr.as_ptr(), &mut n, err, ERR_CAP) }
        })?;
        Ok(n)
    }

    /// Whether the channel holds no message (a snapshot).
    pub fn is_empty(&self) -> Result<bool, PluginError> {
        Ok(self.len()? == 0)
    }

    /// Remove the channel for every process (this attachment stays, and
    /// reports the channel destroyed).
    pub fn destroy(&self) -> Result<(), PluginError> {
        call(self.lib(), "channel_destroy", |err| {
            // SAFETY: the attachment is open.
            unsafe { req(self.lib().fns.channel_destroy)(self.ptr.as_ptr(), err, ERR_CAP) }
        })
    }
}

/// A message received without a copy; its bytes live in the plugin until
/// it is dropped.
pub struct PluginMessage {
    // Keeps the transport (and library) alive while the bytes are borrowed.
    transport: Arc<TransportInner>,
    msg: DragonMessage,
    free: unsafe extern "C" fn(*mut DragonMessage),
}

// SAFETY: the ABI lets a message be read and freed from any thread; its
// bytes are immutable.
unsafe impl Send for PluginMessage {}
// SAFETY: as for Send.
unsafe impl Sync for PluginMessage {}

impl std::ops::Deref for PluginMessage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: data (not NULL, checked) and len describe bytes the plugin
        // keeps valid until message_free, which only Drop calls.
        unsafe { std::slice::from_raw_parts(self.msg.data, self.msg.len) }
    }
}

impl fmt::Debug for PluginMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginMessage({} bytes via {:?})", self.msg.len, self.transport.lib.name)
    }
}

impl Drop for PluginMessage {
    fn drop(&mut self) {
        // SAFETY: the message came from recv_msg and is freed once, here.
        unsafe { (self.free)(&mut self.msg) };
    }
}

/// Where plugins are looked for, in order: the folders of
/// `DRAGON_TRANSPORT_PATH`, then the config file's entries, then the folder
/// of the installed package or binary (and its `transports/` subfolder).
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Folders searched first (the environment variable's).
    pub path: Vec<PathBuf>,
    /// The config file; `config_required` says whether a missing one is an
    /// error (it is when named by `DRAGON_TRANSPORT_CONFIG`).
    pub config: Option<PathBuf>,
    /// Whether a missing config file is an error.
    pub config_required: bool,
    /// Folders searched last.
    pub beside: Vec<PathBuf>,
}

impl Discovery {
    /// From the process environment (see [`Discovery::from_vars`]).
    pub fn from_env() -> Discovery {
        let v = |k: &str| std::env::var_os(k).filter(|s| !s.is_empty());
        let mut d = Discovery::from_vars(v(PATH_ENV), v(CONFIG_ENV), v("XDG_CONFIG_HOME"), v("HOME"));
        d.beside = installed_folders();
        d
    }

    /// From the values of `DRAGON_TRANSPORT_PATH`, `DRAGON_TRANSPORT_CONFIG`,
    /// `XDG_CONFIG_HOME` and `HOME` (without the folders beside the binary).
    pub fn from_vars(
        path: Option<OsString>,
        config: Option<OsString>,
        xdg: Option<OsString>,
        home: Option<OsString>,
    ) -> Discovery {
        let path = path.map(|p| std::env::split_paths(&p).filter(|d| !d.as_os_str().is_empty()).collect());
        let (config, config_required) = match (config, xdg, home) {
            (Some(c), _, _) => (Some(PathBuf::from(c)), true),
            (None, Some(x), _) => (Some(Path::new(&x).join("dragon/transports.conf")), false),
            (None, None, Some(h)) => (Some(Path::new(&h).join(".config/dragon/transports.conf")), false),
            _ => (None, false),
        };
        Discovery { path: path.unwrap_or_default(), config, config_required, beside: Vec::new() }
    }

    /// The config file's entry for `name`, if any.
    fn config_entry(&self, name: &str) -> Result<Option<PathBuf>, LoadError> {
        let Some(file) = &self.config else { return Ok(None) };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.config_required => return Ok(None),
            Err(e) => return Err(LoadError::Config { path: file.clone(), reason: e.to_string() }),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| LoadError::Config { path: file.clone(), reason: format!("line {}: {why}", i + 1) };
            let (k, v) = line.split_once('=').ok_or_else(|| bad("expected `name = path of the library`"))?;
            let (k, v) = (k.trim(), v.trim());
            if !valid_name(k) {
                return Err(bad(&format!("{k:?} is not a transport name")));
            }
            if v.is_empty() {
                return Err(bad("empty path"));
            }
            if k == name {
                let p = Path::new(v);
                let dir = file.parent().unwrap_or(Path::new("."));
                return Ok(Some(if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }));
            }
        }
        Ok(None)
    }

    /// Every file that would be tried for `name`, in order; the first that
    /// exists is the one [`Discovery::find`] loads.
    pub fn candidates(&self, name: &str) -> Result<Vec<PathBuf>, LoadError> {
        if !valid_name(name) {
            return Err(LoadError::BadName(name.to_owned()));
        }
        let file = library_file_name(name);
        let mut out: Vec<PathBuf> = self.path.iter().map(|d| d.join(&file)).collect();
        out.extend(self.config_entry(name)?);
        out.extend(self.beside.iter().map(|d| d.join(&file)));
        Ok(out)
    }

    /// Load the first existing candidate for `name`. A file that exists but
    /// does not load is an error (never silently skipped), as is a library
    /// whose table names another transport.
    pub fn find(&self, name: &str) -> Result<Plugin, LoadError> {
        let searched = self.candidates(name)?;
        let Some(path) = searched.iter().find(|p| p.exists()) else {
            return Err(LoadError::NotFound { name: name.to_owned(), searched });
        };
        let plugin = Plugin::load(path)?;
        if plugin.name() != name {
            return Err(LoadError::NameMismatch {
                path: path.clone(),
                expected: name.to_owned(),
                found: plugin.name().to_owned(),
            });
        }
        Ok(plugin)
    }
}

/// The folder of the file holding this code (the Python extension module,
/// or the executable) and its `transports/` subfolder.
fn installed_folders() -> Vec<PathBuf> {
    let mut file = None;
    // SAFETY: dladdr only reads the loader's tables; info is written by it.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let here = installed_folders as *const ();
        if libc::dladdr(here.cast(), &mut info) != 0 && !info.dli_fname.is_null() {
            let bytes = std::ffi::CStr::from_ptr(info.dli_fname).to_bytes();
            file = Some(PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes)));
        }
    }
    // The main program may be reported by the name it was started with.
    let file = match file {
        Some(f) if f.is_absolute() => Some(f),
        _ => std::env::current_exe().ok(),
    };
    match file.as_deref().and_then(Path::parent) {
        Some(dir) => vec![dir.to_path_buf(), dir.join("transports")],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_convert() {
        assert_eq!(timeout_ns(None), DRAGON_TIMEOUT_FOREVER);
        assert_eq!(timeout_ns(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ns(Some(Duration::from_millis(3))), 3_000_000);
        assert_eq!(timeout_ns(Some(Duration::MAX)), DRAGON_TIMEOUT_FOREVER - 1);
    }

    #[test]
    fn discovery_order_and_config() {
        let dir = std::env::temp_dir().join(format!("dragon-plugin-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("transports.conf");
        std::fs::write(&conf, "# comment\n\nshm = libs/libdragon_transport_shm.so\ntcp=/opt/x.so # trailing\n")
            .unwrap();
        let d = Discovery::from_vars(Some("/a:/b::".into()), Some(conf.clone().into()), None, None);
        let c = d.candidates("shm").unwrap();
        assert_eq!(
            c,
            vec![
                PathBuf::from("/a/libdragon_transport_shm.so"),
                PathBuf::from("/b/libdragon_transport_shm.so"),
                dir.join("libs/libdragon_transport_shm.so"),
            ]
        );
        assert_eq!(d.candidates("tcp").unwrap().last().unwrap(), &PathBuf::from("/opt/x.so"));
        assert!(matches!(d.candidates("../etc"), Err(LoadError::BadName(_))));
        match d.find("verbs") {
            Err(LoadError::NotFound { name, searched }) => {
                assert_eq!(name, "verbs");
                assert_eq!(searched.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&conf, "shm\n").unwrap();
        let e = d.candidates("shm").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // A config named by the variable must exist; the default one need not.
        let missing = Discovery::from_vars(None, Some("/nonexistent/t.conf".into()), None, None);
        assert!(matches!(missing.candidates("shm"), Err(LoadError::Config { .. })));
        let default = Discovery::from_vars(None, None, None, Some("/nonexistent".into()));
        assert_eq!(default.config, Some(PathBuf::from("/nonexistent/.config/dragon/transports.conf")));
        assert_eq!(default.candidates("shm").unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn installed_folder_is_the_binarys() {
        // The same folder, however it was reached (a symlinked target dir).
        let exe = std::env::current_exe().unwrap();
        let canon = |p: &Path| p.canonicalize().unwrap();
        assert_eq!(canon(&installed_folders()[0]), canon(exe.parent().unwrap()));
    }
}
