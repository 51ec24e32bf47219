//! The run-wide block store: large blocks that messages name instead of
//! carrying, so that a receiver can map the sender's pages rather than copy
//! them, and pass them on in turn (`channels_core::lend` has the ownership
//! rules and the crash rules).
//!
//! Files: `dragon-<run>-blk` holds the control area ([`StoreCtl`]), and
//! `dragon-<run>-blk<i>` segment `i`, whose blocks all have one size class:
//! `2^class` bytes plus a page (room for the payload and a trailing byte).
//! Blocks start on page boundaries, so a receiver can map exactly one. All
//! of them go with the run's other segments when the run ends.

use crate::segment::{self, RunId, Segment, SegmentError};
use channels_core::lend::{Lent, SegState, StoreCtl, BLOCKS_PER_SEGMENT, SEGMENTS};
use shm_primitives::region::Region;
use shm_primitives::sync::local::{AtomicU64 as LocalU64, Ordering as LocalOrdering};
use shm_primitives::ProcessId;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Page size the block layout assumes.
pub const PAGE: usize = 4096;
/// The smallest class (256 KiB): smaller payloads are cheaper to copy.
pub const MIN_CLASS: u32 = 18;
/// The largest class (1 GiB).
pub const MAX_CLASS: u32 = 30;
/// The most a store creates segments for, whatever `/dev/shm` has free.
pub const DEFAULT_CAP: u64 = 8 << 30;
/// The least time between two sweeps a store miss may start.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Aim for segments of about this size (fewer blocks for large classes).
const SEGMENT_TARGET: usize = 64 << 20;

/// A block of the store, as a message names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockId {
    /// Segment slot.
    pub seg: u8,
    /// Block within the segment.
    pub idx: u8,
    /// Generation (of ownership, or of the message naming it).
    pub gen: u32,
}

/// Bytes from one block to the next in a segment of `class`.
pub fn stride(class: u32) -> usize {
    (1usize << class) + PAGE
}

/// The class for a payload of `len` bytes (plus its trailing byte), if any.
pub fn class_for(len: usize) -> Option<u32> {
    let need = (len + 1).saturating_sub(PAGE).max(1);
    let class = need.next_power_of_two().trailing_zeros().max(MIN_CLASS);
    (class <= MAX_CLASS).then_some(class)
}

struct Mapped {
    seg: Segment,
    fd: OwnedFd,
    class: u32,
    blocks: usize,
}

/// One process's handle on a run's block store.
pub struct Store {
    name: String,
    ctl_seg: Segment,
    segs: Vec<OnceLock<Mapped>>,
    att: u32,
    me: ProcessId,
    last_sweep: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).field("att", &self.att).finish()
    }
}

/// Why a store could not be used.
#[derive(Debug)]
pub enum StoreError {
    /// A segment or control file failed.
    Segment(SegmentError),
    /// Every attachment row is held by a live process.
    Full,
    /// The control file never became ready.
    NotReady(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Segment(e) => write!(f, "block store: {e}"),
            StoreError::Full => f.write_str("block store: every attachment row is in use"),
            StoreError::NotReady(n) => write!(f, "block store {n}: never initialised"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<SegmentError> for StoreError {
    fn from(e: SegmentError) -> StoreError {
        StoreError::Segment(e)
    }
}

/// The name of `run`'s store.
pub fn store_name(run: &RunId) -> String {
    format!("{}blk", run.prefix())
}

impl Store {
    /// Open the store called `name`, creating it if it does not exist, and
    /// attach this process. A new store may create segments up to a quarter
    /// of what `/dev/shm` has free, at most [`DEFAULT_CAP`].
    pub fn open(name: &str) -> Result<Store, StoreError> {
        Store::open_with_cap(name, (segment::shm_available().unwrap_or(1 << 30) / 4).min(DEFAULT_CAP))
    }

    /// [`Store::open`] with the cap for a new store given (an existing
    /// store keeps its own).
    pub fn open_with_cap(name: &str, cap: u64) -> Result<Store, StoreError> {
        let ctl_seg = match Segment::create(name, StoreCtl::SIZE) {
            Ok(s) => {
                // SAFETY: a fresh zero-filled mapping of at least SIZE bytes, page aligned.
                let ctl = unsafe { StoreCtl::from_ptr(s.base()) };
                ctl.init(cap);
                s
            }
            Err(SegmentError::Exists(_)) => open_ready(name, true)?,
            Err(e) => return Err(e.into()),
        };
        Store::attach_to(name.to_owned(), ctl_seg)
    }

    /// Open an existing store (a receiver's way: a message names it) and
    /// attach this process. A store that does not exist is an error at once
    /// (whoever sent a message naming it had it open): a forged or damaged
    /// name must not hold the receiver up.
    pub fn open_existing(name: &str) -> Result<Store, StoreError> {
        Store::attach_to(name.to_owned(), open_ready(name, false)?)
    }

    fn attach_to(name: String, ctl_seg: Segment) -> Result<Store, StoreError> {
        let me = ProcessId::current();
        // SAFETY: the control segment is mapped, long enough and ready; it
        // lives as long as the store.
        let ctl = unsafe { StoreCtl::from_ptr(ctl_seg.base()) };
        let att = ctl.attach(me).ok_or(StoreError::Full)?;
        let segs = (0..SEGMENTS).map(|_| OnceLock::new()).collect();
        Ok(Store { name, ctl_seg, segs, att, me, last_sweep: Mutex::new(None) })
    }

    /// Sweep the attachments of dead processes; returns how many.
    pub fn sweep_dead(&self) -> usize {
        self.ctl().sweep_dead(self.me)
    }

    /// Blocks not free now (owned, in a message, or pinned), over all
    /// segments.
    pub fn blocks_in_use(&self) -> usize {
        let ctl = self.ctl();
        (0..SEGMENTS)
            .filter_map(|seg| match ctl.segment(seg) {
                SegState::Ready { blocks, .. } => Some((seg, blocks as usize)),
                _ => None,
            })
            .map(|(seg, n)| {
                (0..n).filter(|&i| ctl.lent(seg, i).state().0 != channels_core::lend::LentState::Free).count()
            })
            .sum()
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This process's attachment id in the store.
    pub fn attachment(&self) -> u32 {
        self.att
    }

    /// The process that attached.
    pub fn process(&self) -> ProcessId {
        self.me
    }

    fn ctl(&self) -> &StoreCtl {
        // SAFETY: the control segment stays mapped as long as `self`.
        unsafe { StoreCtl::from_ptr(self.ctl_seg.base()) }
    }

    /// The ownership word of a block.
    pub fn lent(&self, b: BlockId) -> &Lent {
        self.ctl().lent(usize::from(b.seg), usize::from(b.idx))
    }

    /// Bytes of segments created, and the cap.
    pub fn usage(&self) -> (u64, u64) {
        self.ctl().usage()
    }

    /// Take a free block that holds `len` bytes plus a trailing byte, for
    /// this process; `None` if the payload is too large for any class or the
    /// store has no room (the caller then copies as usual).
    pub fn take(&self, len: usize) -> Option<BlockId> {
        let class = class_for(len)?;
        if let Some(b) = self.take_in(class) {
            return Some(b);
        }
        // Before growing, blocks that dead processes held come back (at
        // most every SWEEP_EVERY, since it reads /proc for each attachment).
        if self.sweep_due() && self.ctl().sweep_dead(self.me) > 0 {
            if let Some(b) = self.take_in(class) {
                return Some(b);
            }
        }
        self.grow(class)
    }

    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < SWEEP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn take_in(&self, class: u32) -> Option<BlockId> {
        let ctl = self.ctl();
        for seg in 0..SEGMENTS {
            match ctl.segment(seg) {
                SegState::Ready { class: c, blocks } if c == class => {
                    for idx in 0..blocks as usize {
                        if let Some(gen) = ctl.lent(seg, idx).take(self.att) {
                            return Some(BlockId { seg: seg as u8, idx: idx as u8, gen });
                        }
                    }
                }
                SegState::Empty => break,
                _ => {}
            }
        }
        None
    }

    /// Create a segment of `class` in the first empty slot and take its
    /// first block.
    fn grow(&self, class: u32) -> Option<BlockId> {
        let ctl = self.ctl();
        let blocks = (SEGMENT_TARGET / stride(class)).clamp(1, BLOCKS_PER_SEGMENT);
        let bytes = (blocks * stride(class)) as u64;
        for seg in 0..SEGMENTS {
            match ctl.segment(seg) {
                SegState::Ready { .. } => continue,
                SegState::Creating(pid) if (ProcessId { pid, start: 0 }).is_alive() => continue,
                _ => {}
            }
            if !ctl.begin_segment(seg, self.me.pid, bytes) {
                continue;
            }
            let name = self.segment_name(seg);
            let _ = segment::unlink(&name); // a dead creator's leftover
            if Segment::create(&name, bytes as usize).is_err() {
                ctl.abandon_segment(seg, bytes);
                return None;
            }
            ctl.finish_segment(seg, class, blocks as u32);
            let gen = ctl.lent(seg, 0).take(self.att)?;
            return Some(BlockId { seg: seg as u8, idx: 0, gen });
        }
        None
    }

    fn segment_name(&self, seg: usize) -> String {
        format!("{}{seg}", self.name)
    }

    fn mapped(&self, seg: u8) -> io::Result<&Mapped> {
        let slot = self.segs.get(usize::from(seg)).ok_or_else(|| bad("no such segment"))?;
        if let Some(m) = slot.get() {
            return Ok(m);
        }
        let SegState::Ready { class, blocks } = self.ctl().segment(usize::from(seg)) else {
            return Err(bad("segment not ready"));
        };
        let name = self.segment_name(usize::from(seg));
        let seg_map = Segment::open(&name).map_err(|e| io::Error::other(e.to_string()))?;
        if seg_map.len() < blocks as usize * stride(class) {
            return Err(bad("segment shorter than its blocks"));
        }
        let path = CString::new(format!("{}/{name}", segment::SHM_DIR)).map_err(|_| bad("name"))?;
        // SAFETY: a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if slot.set(Mapped { seg: seg_map, fd, class, blocks: blocks as usize }).is_ok() {
            let m = slot.get().expect("just set");
            note_mapping(m.seg.base().as_ptr() as usize, m.seg.len(), &name);
        }
        Ok(slot.get().expect("just set"))
    }

    /// The block's bytes in this process's read-write mapping of its
    /// segment, and their count (the class size plus a page).
    pub fn block(&self, b: BlockId) -> io::Result<(NonNull<u8>, usize)> {
        let m = self.mapped(b.seg)?;
        if usize::from(b.idx) >= m.blocks {
            return Err(bad("no such block"));
        }
        let s = stride(m.class);
        // SAFETY: in bounds of the mapping (checked against its length in `mapped`).
        Ok((unsafe { NonNull::new_unchecked(m.seg.base().as_ptr().add(usize::from(b.idx) * s)) }, s))
    }

    /// Copy `data` to the start of block `b`, followed by a zero byte (for
    /// the process that owns it: writing a block another process owns or
    /// maps breaks the lend protocol, though not memory safety here).
    pub fn write(&self, b: BlockId, data: &[u8]) -> io::Result<()> {
        let (p, len) = self.block(b)?;
        if data.len() >= len {
            return Err(bad("payload larger than the block"));
        }
        // SAFETY: in bounds of the block (checked); the mapping is shared
        // memory, which other processes may read but never free under us.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len());
            p.as_ptr().add(data.len()).write(0);
        }
        Ok(())
    }

    /// Copy the first `out.len()` bytes of block `b` into `out`.
    pub fn read(&self, b: BlockId, out: &mut [u8]) -> io::Result<()> {
        let (p, len) = self.block(b)?;
        if out.len() > len {
            return Err(bad("read past the block"));
        }
        // SAFETY: in bounds of the block (checked).
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Map block `b` read-only at `at`, replacing whatever is mapped there
    /// (`len` bytes, at most the block's). The pages are the block's own.
    ///
    /// # Safety
    /// `[at, at + len)` must be a page-aligned range this process reserved
    /// and nothing else uses.
    pub unsafe fn map_at(&self, b: BlockId, at: NonNull<u8>, len: usize) -> io::Result<()> {
        let m = self.mapped(b.seg)?;
        let s = stride(m.class);
        if usize::from(b.idx) >= m.blocks || len > s {
            return Err(bad("no such block"));
        }
        // SAFETY: the caller owns the range; the file range is in bounds.
        let p = unsafe {
            libc::mmap(
                at.as_ptr().cast(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
                m.fd.as_raw_fd(),
                (usize::from(b.idx) * s) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The payload capacity of a block (its class size).
    pub fn capacity(&self, b: BlockId) -> io::Result<usize> {
        Ok(1 << self.mapped(b.seg)?.class)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for m in self.segs.iter().filter_map(OnceLock::get) {
            forget_mapping(m.seg.base().as_ptr() as usize);
        }
        if ProcessId::current().pid == self.me.pid {
            self.ctl().detach(self.att, self.me);
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("block store: {what}"))
}

/// Open store `name` once its creator has initialised it (waiting up to
/// 5 s). `missing_ok`: the segment may not exist yet (its creator is
/// between creating and sizing it); else a missing store is an error at once.
fn open_ready(name: &str, missing_ok: bool) -> Result<Segment, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Segment::open(name) {
            Ok(s) if s.len() >= StoreCtl::SIZE => {
                // SAFETY: mapped, long enough, page aligned.
                if unsafe { StoreCtl::from_ptr(s.base()) }.ready() {
                    return Ok(s);
                }
            }
            Err(SegmentError::NotFound(_)) if missing_ok => {}
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            return Err(StoreError::NotReady(name.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> String {
        format!("dragon-test-blk-{:x}-{:08x}", std::process::id(), segment::nonce32())
    }

    fn cleanup(name: &str) {
        for i in 0..SEGMENTS {
            let _ = segment::unlink(&format!("{name}{i}"));
        }
        let _ = segment::unlink(name);
    }

    #[test]
    fn classes() {
        assert_eq!(class_for(1), Some(MIN_CLASS));
        assert_eq!(class_for(1 << 20), Some(20));
        assert_eq!(class_for((1 << 20) + PAGE), Some(21));
        assert_eq!(class_for((1 << 20) + PAGE - 1), Some(20));
        assert_eq!(class_for(2 << 30), None);
    }

    #[test]
    fn take_write_send_receive_map() {
        let name = fresh();
        let a = Store::open(&name).unwrap();
        let b = Store::open(&name).unwrap();
        assert_ne!(a.attachment(), b.attachment());
        let blk = a.take(1 << 20).unwrap();
        let (p, len) = a.block(blk).unwrap();
        assert_eq!(len, (1 << 20) + PAGE);
        // SAFETY: the block is ours and `len` long.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0x5A, 1 << 20) };
        let m = a.lent(blk).send(a.attachment(), blk.gen).unwrap();
        assert!(b.lent(blk).receive(b.attachment(), m));
        // Map it behind a reserved page, as a receiver does.
        // SAFETY: reserving fresh anonymous memory.
        let r = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE + len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(r, libc::MAP_FAILED);
        let at = NonNull::new(r.cast::<u8>().wrapping_add(PAGE)).unwrap();
        // SAFETY: the range was just reserved by this test.
        unsafe { b.map_at(blk, at, len).unwrap() };
        // SAFETY: mapped just above.
        let view = unsafe { std::slice::from_raw_parts(at.as_ptr(), 1 << 20) };
        assert!(view.iter().all(|&x| x == 0x5A));
        assert!(b.lent(blk).release(b.attachment(), m));
        // SAFETY: our own mapping.
        unsafe { libc::munmap(r, PAGE + len) };
        // The freed block is taken again (same segment, new generation).
        let again = a.take(1 << 20).unwrap();
        assert_eq!((again.seg, again.idx), (blk.seg, blk.idx));
        assert_ne!(again.gen, blk.gen);
        drop((a, b));
        cleanup(&name);
    }

    #[test]
    fn a_received_block_is_viewed_in_place_and_freed_with_its_view() {
        let name = fresh();
        let a = Store::open(&name).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut stores = Stores::default();
        // A payload of exactly a class size (2 MiB) lies in the block's
        // extra page: it was once refused as "a block it does not hold".
        let exact: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
        let blk = a.take(exact.len()).unwrap();
        a.write(blk, &exact).unwrap();
        let m = a.lent(blk).send(a.attachment(), blk.gen).unwrap();
        let msg = BlockMessage::encode(0x42, &name, BlockId { gen: m, ..blk }, exact.len());
        let (_, view) = stores.view(&msg).unwrap().unwrap();
        assert!(view.as_ref() == &exact[..]);
        drop(view);
        for (kind, tag) in [(0x80u8, None), (0x42, Some(0x42))] {
            let blk = a.take(data.len()).unwrap();
            a.write(blk, &data).unwrap();
            let m = a.lent(blk).send(a.attachment(), blk.gen).unwrap();
            let msg = BlockMessage::encode(kind, &name, BlockId { gen: m, ..blk }, data.len());
            let (t, view) = stores.view(&msg).unwrap().unwrap();
            assert_eq!(t, tag);
            assert!(view.as_ref() == &data[..]);
            // The view is the block's own memory (the receiving side's
            // mapping of its segment): what an RDMA link registers to send
            // it in place.
            let seg = segment_mapping(view.as_ref().as_ptr() as usize, data.len()).unwrap();
            assert!(seg.name.starts_with(&name) && seg.len >= data.len());
            // Received once: a second receive of the same message is refused.
            assert!(stores.view(&msg).is_err());
            assert_eq!(a.blocks_in_use(), 1);
            drop(view);
            assert_eq!(a.blocks_in_use(), 0);
        }
        // materialize: the same bytes as a copy, tag first.
        let blk = a.take(data.len()).unwrap();
        a.write(blk, &data).unwrap();
        let m = a.lent(blk).send(a.attachment(), blk.gen).unwrap();
        let copy = stores.materialize(&BlockMessage::encode(0x42, &name, BlockId { gen: m, ..blk }, data.len()));
        let copy = copy.unwrap().unwrap();
        assert_eq!(copy[0], 0x42);
        assert!(copy[1..] == data[..]);
        assert_eq!(a.blocks_in_use(), 0);
        assert_eq!(stores.view(b"not a block message").unwrap().map(|(t, _)| t), None);
        drop((a, stores));
        // The store's segments are no longer known once it is gone.
        assert!(MAPPINGS.lock().unwrap().values().all(|m| !m.name.starts_with(&name)));
        cleanup(&name);
    }

    /// Found by fuzzing the Python wire format: a damaged block message
    /// named a store that does not exist, and the receiver waited 5 s for
    /// it to appear (then said "never initialised"), holding the GIL.
    #[test]
    fn a_store_that_does_not_exist_is_an_error_at_once() {
        match Store::open_existing(&fresh()) {
            Err(StoreError::Segment(SegmentError::NotFound(_))) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn the_cap_bounds_growth_and_a_full_store_says_none() {
        let name = fresh();
        let s = Store::open_with_cap(&name, 300 << 20).unwrap();
        let (_, cap) = s.usage();
        assert_eq!(cap, 300 << 20);
        let mut held = Vec::new();
        // Big blocks until the cap refuses (or the segment slots run out).
        while let Some(b) = s.take(64 << 20) {
            held.push(b);
            assert!(held.len() <= SEGMENTS * BLOCKS_PER_SEGMENT);
        }
        let (used, _) = s.usage();
        assert!(used <= cap);
        assert!(!held.is_empty());
        drop(s);
        cleanup(&name);
    }

    #[test]
    fn a_dead_process_blocks_come_back() {
        let name = fresh();
        let s = Store::open(&name).unwrap();
        // A child attaches, takes a block and dies without freeing it.
        // SAFETY: the child only calls the store and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match Store::open(&name).ok().and_then(|c| {
                let b = c.take(1 << 18)?;
                std::mem::forget(c);
                Some(b)
            }) {
                Some(b) => i32::from(b.idx) + 1,
                None => 100,
            };
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let idx = libc::WEXITSTATUS(status) - 1;
        assert!((0..16).contains(&idx), "child status {status}");
        let blk = BlockId { seg: 0, idx: idx as u8, gen: 0 };
        assert!(matches!(s.lent(blk).state().0, channels_core::lend::LentState::Owned(_)));
        // Take every other block of the segment; the next take sweeps the
        // dead child instead of growing the store.
        let (used, _) = s.usage();
        let others: Vec<_> = (0..15).map(|_| s.take(1 << 18).unwrap()).collect();
        assert!(others.iter().all(|b| b.seg == 0 && i32::from(b.idx) != idx));
        let swept = s.take(1 << 18).unwrap();
        assert_eq!((swept.seg, i32::from(swept.idx)), (0, idx));
        assert_eq!(s.usage().0, used, "no new segment");
        assert!(s.lent(swept).release(s.attachment(), swept.gen));
        assert_eq!(s.lent(blk).state().0, channels_core::lend::LentState::Free);
        drop(s);
        cleanup(&name);
    }
}

// ---- mappings of store segments ------------------------------------------------

/// A store segment mapped in this process: where, how long, its file, and
/// a number no other mapping of this process ever gets (so that a
/// registration made for one mapping is never taken for a later mapping at
/// the same address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMapping {
    /// First byte of the mapping.
    pub base: usize,
    /// Its length.
    pub len: usize,
    /// Unique within this process.
    pub id: u64,
    /// The segment's name (in `/dev/shm`).
    pub name: String,
}

static MAPPINGS: Mutex<std::collections::BTreeMap<usize, SegmentMapping>> =
    Mutex::new(std::collections::BTreeMap::new());
static MAPPING_IDS: LocalU64 = LocalU64::new(1);

fn note_mapping(base: usize, len: usize, name: &str) {
    // Relaxed: a counter handing out unique numbers.
    let id = MAPPING_IDS.fetch_add(1, LocalOrdering::Relaxed);
    let m = SegmentMapping { base, len, id, name: name.to_owned() };
    MAPPINGS.lock().unwrap_or_else(|e| e.into_inner()).insert(base, m);
}

fn forget_mapping(base: usize) {
    MAPPINGS.lock().unwrap_or_else(|e| e.into_inner()).remove(&base);
}

/// The store segment of this process that holds all of `len` bytes at
/// `addr`, if any: what an RDMA transport registers to send a block in
/// place. The mapping stays as long as the [`Store`] that made it (a
/// [`BlockView`] of one of its blocks keeps that store).
pub fn segment_mapping(addr: usize, len: usize) -> Option<SegmentMapping> {
    let maps = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
    let (_, m) = maps.range(..=addr).next_back()?;
    (addr.checked_add(len)? <= m.base + m.len).then(|| m.clone())
}

/// A received block message's payload read in place: the bytes of the
/// block, which goes back to the store when the view is dropped. Turned
/// into [`bytes::Bytes`] (with `Bytes::from_owner`), it is sent without a
/// copy; an RDMA transport finds its registered segment with
/// [`segment_mapping`].
pub struct BlockView {
    store: std::sync::Arc<Store>,
    block: BlockId,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the view reads memory that stays mapped while `store` lives and
// that nobody writes while the block is received by this process (the lend
// protocol: a block in a message is written by nobody until freed).
unsafe impl Send for BlockView {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for BlockView {}

impl std::fmt::Debug for BlockView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockView").field("block", &self.block).field("len", &self.len).finish()
    }
}

impl AsRef<[u8]> for BlockView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` bytes of the block (checked against its capacity),
        // mapped and unwritten while the view lives (see `Send`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for BlockView {
    fn drop(&mut self) {
        self.store.lent(self.block).release(self.store.attachment(), self.block.gen);
    }
}

// ---- block messages ----------------------------------------------------------

/// First byte of a *block message*: a message that names a block of the
/// run's store instead of carrying its payload.
pub const TAG_BLOCK: u8 = 0x03;

/// What a block message says: the tag its payload is reported with, the
/// store, the block and the payload's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMessage<'a> {
    /// The tag to report (the first byte the message would have had as a copy).
    pub kind: u8,
    /// The store's name.
    pub store: &'a str,
    /// The block.
    pub block: BlockId,
    /// Payload bytes in the block.
    pub len: usize,
}

impl<'a> BlockMessage<'a> {
    /// `[TAG_BLOCK][kind][segment][block][generation u32][length u64][store name]`.
    pub fn encode(kind: u8, store: &str, b: BlockId, len: usize) -> Vec<u8> {
        let mut d = Vec::with_capacity(16 + store.len());
        d.push(TAG_BLOCK);
        d.push(kind);
        d.push(b.seg);
        d.push(b.idx);
        d.extend_from_slice(&b.gen.to_le_bytes());
        d.extend_from_slice(&(len as u64).to_le_bytes());
        d.extend_from_slice(store.as_bytes());
        d
    }

    /// Parse what follows the tag byte.
    pub fn parse(after_tag: &'a [u8]) -> Option<BlockMessage<'a>> {
        let (&kind, p) = after_tag.split_first()?;
        if p.len() < 14 {
            return None;
        }
        let gen = u32::from_le_bytes(p[2..6].try_into().ok()?);
        let len = usize::try_from(u64::from_le_bytes(p[6..14].try_into().ok()?)).ok()?;
        let store = std::str::from_utf8(&p[14..]).ok()?;
        Some(BlockMessage { kind, store, block: BlockId { seg: p[0], idx: p[1], gen }, len })
    }
}

/// Stores opened by one process, by name (for services that receive block
/// messages on behalf of other nodes).
#[derive(Debug, Default)]
pub struct Stores {
    open: std::collections::HashMap<String, std::sync::Arc<Store>>,
}

impl Stores {
    fn get(&mut self, name: &str) -> Result<std::sync::Arc<Store>, String> {
        if let Some(s) = self.open.get(name) {
            return Ok(s.clone());
        }
        let s = Store::open_existing(name)
            .map_err(|e| format!("a message names block store {name:?}, which cannot be opened: {e}"))?;
        let s = std::sync::Arc::new(s);
        self.open.insert(name.to_owned(), s.clone());
        Ok(s)
    }

    /// The message a block message stands for, with its payload copied out
    /// of the block (which goes back to the store): what a receiver on
    /// another node gets, since it cannot map this node's pages. Other
    /// messages are returned unchanged.
    pub fn materialize(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let Some((tag, view)) = self.view(msg)? else { return Ok(None) };
        let mut out = Vec::with_capacity(view.len + usize::from(tag.is_some()));
        out.extend(tag);
        out.extend_from_slice(view.as_ref());
        Ok(Some(out))
    }

    /// [`Stores::materialize`] without the copy: the tag byte the message
    /// starts with as a copy (none for a pickle, which starts with its
    /// own), and a view of the block, which holds it until dropped.
    pub fn view(&mut self, msg: &[u8]) -> Result<Option<(Option<u8>, BlockView)>, String> {
        let Some((&TAG_BLOCK, rest)) = msg.split_first() else { return Ok(None) };
        let m = BlockMessage::parse(rest).ok_or("malformed block message")?;
        let store = self.get(m.store)?;
        let att = store.attachment();
        // The payload and its trailing byte fit the block's span (its class
        // size plus a page).
        let (ptr, span) = store.block(m.block).map_err(|e| format!("bad block message: {e}"))?;
        if m.len >= span {
            return Err(format!("bad block message: {} bytes in a block of {span}", m.len));
        }
        if !store.lent(m.block).receive(att, m.block.gen) {
            return Err("a message names a block it does not hold (stale, forged or already received)".into());
        }
        let tag = (m.kind != 0x80).then_some(m.kind);
        Ok(Some((tag, BlockView { store, block: m.block, ptr, len: m.len })))
    }
}
