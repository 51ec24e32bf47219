//! Named shared-memory segments: creation, attachment, naming, cleanup.
//!
//! A segment is a file in `/dev/shm` (what `shm_open` uses on Linux) mapped
//! `MAP_SHARED`. Segments are created `0600` and `O_EXCL`; their pages are
//! reserved up front with `fallocate`, so a full `/dev/shm` is a clear error
//! at creation time and never a `SIGBUS` later.
//!
//! Every segment of one run shares the run's prefix,
//! `dragon-<pid>-<start>-<nonce>-`, where `pid`/`start` identify the process
//! that owns the run. [`cleanup_run`] removes a run's segments and
//! [`cleanup_dead_runs`] removes those of every run whose owner is dead.

use shm_primitives::process::ProcessId;
use shm_primitives::region::{Region, REGION_ALIGN};
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;

/// Directory backing POSIX shared memory on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Every segment name starts with this.
pub const NAME_PREFIX: &str = "dragon-";

/// Environment variable carrying the run id to child processes.
pub const RUN_ENV: &str = "DRAGON_RUN_ID";

/// Longest segment name accepted (file names are limited to 255 bytes).
pub const MAX_NAME_LEN: usize = 200;

/// Why a segment operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SegmentError {
    /// No segment of that name exists (never created, or destroyed).
    NotFound(String),
    /// A segment of that name already exists.
    Exists(String),
    /// `/dev/shm` has not enough room for the segment.
    NoSpace { name: String, needed: usize, available: Option<u64> },
    /// The name is not a valid segment name.
    BadName(String),
    /// Any other operating-system error.
    Io { name: String, op: &'static str, source: io::Error },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::NotFound(n) => {
                write!(f, "shared-memory segment {n} does not exist (never created, or already destroyed)")
            }
            SegmentError::Exists(n) => write!(f, "shared-memory segment {n} already exists"),
            SegmentError::NoSpace { name, needed, available } => {
                write!(f, "not enough shared memory for segment {name}: needs {needed} bytes")?;
                if let Some(a) = available {
                    write!(f, ", {a} bytes free in {SHM_DIR}")?;
                }
                write!(f, " (enlarge {SHM_DIR}, e.g. docker --shm-size, or use less memory)")
            }
            SegmentError::BadName(n) => write!(f, "invalid shared-memory segment name {n:?}"),
            SegmentError::Io { name, op, source } => write!(f, "{op} of shared-memory segment {name} failed: {source}"),
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SegmentError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A mapped shared-memory segment. Dropping it unmaps; only [`Segment::unlink`]
/// (or [`unlink`]) removes the name.
pub struct Segment {
    name: String,
    ptr: NonNull<u8>,
    len: usize,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment").field("name", &self.name).field("len", &self.len).finish()
    }
}

// SAFETY: the mapping is shared memory; concurrent access is mediated by the
// atomics and protocols of what is placed in it.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn check_name(name: &str) -> Result<CString, SegmentError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if !ok {
        return Err(SegmentError::BadName(name.to_owned()));
    }
    CString::new(format!("{SHM_DIR}/{name}")).map_err(|_| SegmentError::BadName(name.to_owned()))
}

fn io_err(name: &str, op: &'static str) -> SegmentError {
    SegmentError::Io { name: name.to_owned(), op, source: io::Error::last_os_error() }
}

/// Bytes free in `/dev/shm`, if the file system says.
pub fn shm_available() -> Option<u64> {
    let path = CString::new(SHM_DIR).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Size of the file system behind `/dev/shm` in bytes (free or not), if
/// it says: a message larger than this can never be sent.
pub fn shm_total() -> Option<u64> {
    let path = CString::new(SHM_DIR).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_blocks as u64 * st.f_frsize as u64)
}

impl Segment {
    /// Create a new segment of at least `len` bytes (rounded up to a page),
    /// zero-filled, mode `0600`. Fails if the name exists.
    pub fn create(name: &str, len: usize) -> Result<Segment, SegmentError> {
        let path = check_name(name)?;
        let len = len.max(1).div_ceil(REGION_ALIGN) * REGION_ALIGN;
        // SAFETY: `path` is a valid C string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        };
        if fd < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::EEXIST) => SegmentError::Exists(name.to_owned()),
                _ => io_err(name, "create"),
            });
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let fail = |e: SegmentError| {
            // SAFETY: `path` is a valid C string; we created this file.
            unsafe { libc::unlink(path.as_ptr()) };
            e
        };
        // SAFETY: valid fd; ftruncate has no memory preconditions.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(fail(io_err(name, "resize")));
        }
        // Reserve the pages now: tmpfs would otherwise hand out pages lazily
        // and a full /dev/shm would surface as SIGBUS on first touch.
        // SAFETY: valid fd and range.
        let r = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
                    return Err(fail(SegmentError::NoSpace {
                        name: name.to_owned(),
                        needed: len,
                        available: shm_available(),
                    }))
                }
                // File systems without fallocate: carry on, pages come lazily.
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {}
                _ => return Err(fail(SegmentError::Io { name: name.to_owned(), op: "reserve", source: e })),
            }
        }
        map(name, &fd, len).map_err(fail)
    }

    /// Map an existing segment (its whole current length).
    pub fn open(name: &str) -> Result<Segment, SegmentError> {
        let path = check_name(name)?;
        // SAFETY: `path` is a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
        if fd < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOENT) => SegmentError::NotFound(name.to_owned()),
                _ => io_err(name, "open"),
            });
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed stat is valid plain data; fd is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err(name, "stat"));
        }
        let len = st.st_size as usize;
        if len == 0 {
            return Err(SegmentError::NotFound(name.to_owned()));
        }
        map(name, &fd, len)
    }

    /// The segment's name (without the `/dev/shm/` directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Remove the segment's name; existing mappings stay valid.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        unlink(&self.name)
    }
}

fn map(name: &str, fd: &OwnedFd, len: usize) -> Result<Segment, SegmentError> {
    // SAFETY: mapping a valid fd with a fresh address; the result is checked.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(io_err(name, "map"));
    }
    let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io_err(name, "map"))?;
    Ok(Segment { name: name.to_owned(), ptr, len })
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is page-aligned (mmap), stays mapped until drop, and
// never moves.
unsafe impl Region for Segment {
    fn base(&self) -> NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Remove a segment by name. Removing a segment that is already gone is
/// not an error.
pub fn unlink(name: &str) -> Result<(), SegmentError> {
    let path = check_name(name)?;
    // SAFETY: `path` is a valid C string.
    if unsafe { libc::unlink(path.as_ptr()) } != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
        return Err(io_err(name, "unlink"));
    }
    Ok(())
}

/// Identifies one run: the process that owns it plus a random nonce.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

impl RunId {
    /// A fresh run owned by this process.
    pub fn new_owned_by_me() -> RunId {
        let me = ProcessId::current();
        RunId(format!("{}-{}-{:08x}", me.pid, me.start, nonce32()))
    }

    /// Parse a run id (as carried in [`RUN_ENV`]).
    pub fn parse(s: &str) -> Option<RunId> {
        let mut it = s.split('-');
        let ok = it.next()?.parse::<u32>().is_ok()
            && it.next()?.parse::<u64>().is_ok()
            && it.next().is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            && it.next().is_none();
        ok.then(|| RunId(s.to_owned()))
    }

    /// The run of this process: inherited through [`RUN_ENV`], or a new one
    /// owned by this process (and then exported to children).
    pub fn current() -> &'static RunId {
        static CURRENT: OnceLock<RunId> = OnceLock::new();
        CURRENT.get_or_init(|| match std::env::var(RUN_ENV).ok().as_deref().and_then(RunId::parse) {
            Some(r) => r,
            None => {
                let r = RunId::new_owned_by_me();
                std::env::set_var(RUN_ENV, &r.0);
                r
            }
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The process that owns the run.
    pub fn owner(&self) -> ProcessId {
        let mut it = self.0.split('-');
        let pid = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let start = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        ProcessId { pid, start }
    }

    /// Prefix shared by every segment of this run.
    pub fn prefix(&self) -> String {
        format!("{NAME_PREFIX}{}-", self.0)
    }

    /// A new unique segment name in this run, `kind` being a short tag such
    /// as `ch` or `lock`.
    pub fn segment_name(&self, kind: &str) -> String {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        format!("{}{kind}-{pid:x}-{:08x}{:08x}", self.prefix(), nonce32(), nonce32())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 32 random bits from the kernel (falls back to time and a counter).
pub fn nonce32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, libc::GRND_NONBLOCK) };
    if n == 4 {
        return u32::from_ne_bytes(b);
    }
    use shm_primitives::sync::local::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    t ^ COUNTER.fetch_add(0x9E37_79B9, Ordering::Relaxed) ^ std::process::id().rotate_left(16)
}

/// Remove every segment of `run`. Returns how many were removed.
pub fn cleanup_run(run: &RunId) -> usize {
    remove_matching(|name| name.starts_with(&run.prefix()))
}

/// Remove the current run's segments if this process started the run (a
/// child of the run leaves them to its owner): what a watchdog does before
/// it aborts a hung test binary.
pub fn cleanup_own_run() {
    let run = RunId::current();
    if run.owner().pid == std::process::id() {
        cleanup_run(run);
    }
}

/// Environment variable holding this process's node index in a run that
/// spans several nodes (unset or 0: the primary node, or a single node).
pub const NODE_ENV: &str = "DRAGON_NODE_INDEX";

/// This process's node index ([`NODE_ENV`]; 0 when unset or invalid).
/// Handles of objects created here name it, and a handle that names another
/// node is not attached through shared memory.
pub fn this_node() -> u32 {
    static NODE: OnceLock<u32> = OnceLock::new();
    *NODE.get_or_init(|| std::env::var(NODE_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Tag of a run's keeper marker (see [`keep_run`]).
const KEEPER: &str = "keeper";

/// Mark `run` as kept alive on this node by this process, for as long as
/// it lives. A run's owner lives on its primary node; on the other nodes
/// of a multi-node run (another PID namespace, another machine) the owner's
/// pid means nothing, and the node service keeps the run's files from being
/// taken for a dead run's by [`cleanup_dead_runs`]. The marker is an empty
/// file named after the run and the keeper's identity, removed with the
/// run's other files.
pub fn keep_run(run: &RunId) -> io::Result<PathBuf> {
    let me = ProcessId::current();
    let path = Path::new(SHM_DIR).join(format!("{}{KEEPER}-{}-{}", run.prefix(), me.pid, me.start));
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    Ok(path)
}

/// The run a segment name belongs to, if it is one of ours.
fn run_of(name: &str) -> Option<RunId> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.splitn(4, '-');
    let (pid, start, nonce) = (parts.next()?, parts.next()?, parts.next()?);
    RunId::parse(&format!("{pid}-{start}-{nonce}"))
}

/// The runs with a live keeper on this node.
fn kept_runs() -> std::collections::HashSet<String> {
    let mut kept = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else { return kept };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(run) = run_of(name) else { continue };
        let Some(keeper) = name.strip_prefix(&format!("{}{KEEPER}-", run.prefix())) else { continue };
        let Some((pid, start)) = keeper.split_once('-') else { continue };
        if let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) {
            if (ProcessId { pid, start }).is_alive() {
                kept.insert(run.as_str().to_owned());
            }
        }
    }
    kept
}

/// Remove the segments of every run whose owning process is dead (and that
/// no live keeper on this node keeps, see [`keep_run`]).
pub fn cleanup_dead_runs() -> usize {
    let kept = kept_runs();
    remove_matching(|name| {
        let Some(run) = run_of(name) else { return false };
        let owner = run.owner();
        !kept.contains(run.as_str()) && !owner.is_alive()
    })
}

fn remove_matching(pred: impl Fn(&str) -> bool) -> usize {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else { return 0 };
    let mut n = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(NAME_PREFIX) && pred(name) {
            if run_of(name).is_some_and(|r| name == format!("{}{REGISTRY}", r.prefix())) {
                n += remove_noted_semaphores(&entry.path());
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Tag of a run's registry on a node (`dragon._registry`).
const REGISTRY: &str = "reg";

/// Remove the standard library's named semaphores (`/dev/shm/sem.mp-*`)
/// that processes of a run noted in its registry (lines `s <pid>
/// /mp-<name>`): a process killed between making one and unlinking it
/// would leave it behind. Names other than `/mp-` and letters, digits and
/// `_` are ignored (the file is the run's own, but no line may name
/// anything else). Returns how many were removed.
fn remove_noted_semaphores(registry: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(registry) else { return 0 };
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            (f.next() == Some("s")).then(|| f.nth(1)).flatten()
        })
        .filter_map(|name| name.strip_prefix("/mp-"))
        .filter(|rest| {
            !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .filter(|rest| std::fs::remove_file(Path::new(SHM_DIR).join(format!("sem.mp-{rest}"))).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_name(tag: &str) -> String {
        RunId::current().segment_name(tag)
    }

    #[test]
    fn create_open_share_unlink() {
        let name = test_name("segt");
        let a = Segment::create(&name, 100).unwrap();
        assert_eq!(a.len(), REGION_ALIGN);
        // SAFETY: in-bounds write to our own mapping.
        unsafe { a.base().as_ptr().add(10).write(42) };
        let b = Segment::open(&name).unwrap();
        // SAFETY: in-bounds read of a second mapping of the same file.
        assert_eq!(unsafe { b.base().as_ptr().add(10).read() }, 42);
        assert!(matches!(Segment::create(&name, 100), Err(SegmentError::Exists(_))));
        a.unlink().unwrap();
        assert!(matches!(Segment::open(&name), Err(SegmentError::NotFound(_))));
        unlink(&name).unwrap();
    }

    #[test]
    fn segments_are_private_to_the_user() {
        let name = test_name("mode");
        let s = Segment::create(&name, 1).unwrap();
        let meta = std::fs::metadata(format!("{SHM_DIR}/{name}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        s.unlink().unwrap();
    }

    #[test]
    fn bad_names_are_rejected() {
        for n in ["", "../etc/passwd", "a/b", ".hidden", "sp ace"] {
            assert!(matches!(Segment::open(n), Err(SegmentError::BadName(_))), "{n}");
        }
    }

    #[test]
    fn too_big_is_a_clear_error() {
        let name = test_name("huge");
        let err = Segment::create(&name, 1 << 50).unwrap_err();
        assert!(matches!(err, SegmentError::NoSpace { .. } | SegmentError::Io { .. }), "{err}");
        assert!(Segment::open(&name).is_err(), "a failed create leaves nothing behind");
    }

    #[test]
    fn run_ids_round_trip_and_dead_runs_are_cleaned() {
        let run = RunId::current();
        assert_eq!(RunId::parse(run.as_str()).as_ref(), Some(run));
        assert!(RunId::parse("garbage").is_none());
        // A run owned by a process that no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = RunId(format!("{pid}-1-0badc0de"));
        let name = dead.segment_name("x");
        let s = Segment::create(&name, 1).unwrap();
        assert!(cleanup_dead_runs() >= 1);
        assert!(Segment::open(&name).is_err());
        drop(s);
        assert_eq!(cleanup_run(&dead), 0);
    }

    #[test]
    fn semaphores_a_run_noted_go_with_it_and_nothing_else() {
        // A run of this (live) process, so that a test cleaning dead runs
        // meanwhile leaves it alone; its own nonce keeps it apart from ours.
        let (me, nonce) = RunId::current().as_str().rsplit_once('-').unwrap();
        let run = RunId(format!("{me}-{}", if nonce == "5e3a0001" { "5e3a0002" } else { "5e3a0001" }));
        let sem = |n: &str| Path::new(SHM_DIR).join(format!("sem.mp-{n}"));
        let mine = format!("t{}x", std::process::id());
        let other = format!("o{}x", std::process::id());
        for n in [&mine, &other] {
            std::fs::write(sem(n), b"").unwrap();
        }
        let reg = Path::new(SHM_DIR).join(format!("{}{REGISTRY}", run.prefix()));
        let lines = format!("q 1 abcd\ns 12 /mp-{mine}\ns 13 /mp-../../etc/x\ns 14 /other\ns 15\n");
        std::fs::write(&reg, lines).unwrap();
        // The registry, and the one semaphore it names properly.
        assert_eq!(cleanup_run(&run), 2);
        assert!(!reg.exists() && !sem(&mine).exists());
        assert!(sem(&other).exists());
        std::fs::remove_file(sem(&other)).unwrap();
    }
}
