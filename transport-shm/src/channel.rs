//! Channels in named shared-memory segments.
//!
//! A channel's main segment is named in the current run
//! (`RunId::current().segment_name("ch")`); extension segment `i` of its
//! block allocator is `<main name>-x<i>`, created lazily by whichever
//! process first needs it. All are `0600` and reserved with `fallocate`.
//! [`Channel::destroy`] unlinks them all; [`crate::segment::cleanup_run`]
//! removes everything of a run.
//!
//! ```no_run
//! use transport_shm::channel::{self, ChannelOptions};
//! let ch = channel::create(&ChannelOptions::new()).unwrap();
//! let text = ch.handle().to_text(); // give this to another process
//! let peer = channel::attach_text(&text).unwrap();
//! peer.send(b"hello").unwrap();
//! assert_eq!(&*ch.recv().unwrap(), b"hello");
//! ch.destroy();
//! ```

use crate::segment::{self, RunId, Segment, SegmentError};
use channels_core::{Backing, BackingError, ChannelError};
use shm_primitives::region::Region;
use shm_primitives::{Handle, Kind};
use std::sync::Arc;

pub use channels_core::{Channel, ChannelOptions, Roles};

/// Extension segments in shared memory, named after the main segment.
#[derive(Debug, Clone)]
pub struct ShmBacking {
    name: String,
}

impl ShmBacking {
    /// The backing of the channel whose main segment is `name`.
    pub fn new(name: &str) -> ShmBacking {
        ShmBacking { name: name.to_owned() }
    }

    /// Name of extension segment `index`.
    pub fn extension_name(&self, index: u32) -> String {
        format!("{}-x{index}", self.name)
    }
}

fn backing_error(e: SegmentError) -> BackingError {
    match e {
        SegmentError::NotFound(_) => BackingError::NotFound(e.to_string()),
        SegmentError::NoSpace { .. } => BackingError::NoSpace(e.to_string()),
        e => BackingError::Other(e.to_string()),
    }
}

impl Backing for ShmBacking {
    fn extension(&self, index: u32, len: usize, create: bool) -> Result<Box<dyn Region>, BackingError> {
        let name = self.extension_name(index);
        if create {
            // The allocator's CREATING claim makes us the only creator; a
            // file left by a creator that died is replaced.
            segment::unlink(&name).map_err(backing_error)?;
            Ok(Box::new(Segment::create(&name, len).map_err(backing_error)?))
        } else {
            Ok(Box::new(Segment::open(&name).map_err(backing_error)?))
        }
    }

    fn remove_extension(&self, index: u32) {
        let _ = segment::unlink(&self.extension_name(index));
    }

    fn remove_main(&self) {
        let _ = segment::unlink(&self.name);
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn clone_backing(&self) -> Box<dyn Backing> {
        Box::new(self.clone())
    }
}

fn channel_error(e: SegmentError) -> ChannelError {
    match e {
        SegmentError::NotFound(n) => ChannelError::NotFound(n),
        SegmentError::NoSpace { .. } => ChannelError::Backing(BackingError::NoSpace(e.to_string())),
        e => ChannelError::Backing(BackingError::Other(e.to_string())),
    }
}

/// Create a channel in a new shared-memory segment of the current run; this
/// process is attached with `opts`' roles.
pub fn create(opts: &ChannelOptions) -> Result<Channel, ChannelError> {
    create_named(&RunId::current().segment_name("ch"), opts)
}

/// Create a channel in a new segment called `name` (which must not exist).
pub fn create_named(name: &str, opts: &ChannelOptions) -> Result<Channel, ChannelError> {
    let seg = Segment::create(name, opts.region_len()?).map_err(channel_error)?;
    Channel::create_in(Arc::new(seg), Box::new(ShmBacking::new(name)), opts).inspect_err(|_| {
        let _ = segment::unlink(name);
    })
}

/// Attach to the channel `handle` names, sending and receiving.
pub fn attach(handle: &Handle) -> Result<Channel, ChannelError> {
    attach_with(handle, Roles::BOTH)
}

/// Attach with the given roles (they count for pipe-mode disconnection).
pub fn attach_with(handle: &Handle, roles: Roles) -> Result<Channel, ChannelError> {
    if handle.kind != Kind::Channel {
        return Err(ChannelError::Handle(shm_primitives::HandleError::WrongKind {
            expected: Kind::Channel,
            found: handle.kind,
        }));
    }
    if !handle.address.is_empty() {
        return Err(ChannelError::NotFound(format!(
            "{} lives on node {} ({}); it is not reachable through shared memory",
            handle.segment, handle.node, handle.address
        )));
    }
    let seg = Segment::open(&handle.segment).map_err(channel_error)?;
    Channel::attach_in(Arc::new(seg), Box::new(ShmBacking::new(&handle.segment)), handle, roles)
}

/// Attach by the handle's byte form.
pub fn attach_bytes(bytes: &[u8]) -> Result<Channel, ChannelError> {
    attach(&Handle::from_bytes(bytes)?)
}

/// Attach by the handle's text form.
pub fn attach_text(text: &str) -> Result<Channel, ChannelError> {
    attach(&Handle::from_text(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_of(name: &str) -> Vec<String> {
        std::fs::read_dir(segment::SHM_DIR)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|f| f == name || f.starts_with(&format!("{name}-x")))
            .collect()
    }

    #[test]
    fn create_attach_send_large_destroy_leaves_nothing() {
        let ch = create(&ChannelOptions::new().capacity(4)).unwrap();
        let name = ch.handle().segment.clone();
        let peer = attach_text(&ch.handle().to_text()).unwrap();
        peer.send(vec![7u8; 3 << 20]).unwrap();
        let m = ch.recv().unwrap();
        assert!(m.is_zero_copy() && m.len() == 3 << 20 && m.iter().all(|&b| b == 7));
        assert!(files_of(&name).len() >= 2, "main and one extension");
        drop(m);
        ch.destroy();
        assert_eq!(files_of(&name), Vec::<String>::new());
        assert!(matches!(peer.try_send(b"x"), Err(channels_core::TrySendError::Destroyed(_))));
        assert!(matches!(attach(&ch.handle()), Err(ChannelError::NotFound(_))));
    }

    #[test]
    fn a_256_mib_message_round_trips_without_a_receive_copy() {
        let ch = create(&ChannelOptions::new().capacity(2)).unwrap();
        let peer = attach(&ch.handle()).unwrap();
        let len = 256 << 20;
        peer.send_with(len, |buf| {
            for (i, chunk) in buf.chunks_mut(4096).enumerate() {
                chunk.fill(i as u8);
            }
        })
        .unwrap();
        let m = ch.recv().unwrap();
        assert!(m.is_zero_copy());
        assert_eq!(m.len(), len);
        assert!(m.chunks(4096).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        drop(m);
        let st = ch.alloc_stats().unwrap();
        assert_eq!((st.free, st.owned, st.in_ring), (st.blocks, 0, 0));
        ch.destroy();
    }

    #[test]
    fn segments_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let ch = create(&ChannelOptions::new()).unwrap();
        ch.send(vec![0u8; 5000]).unwrap();
        let name = ch.handle().segment.clone();
        for f in files_of(&name) {
            let mode = std::fs::metadata(format!("{}/{f}", segment::SHM_DIR)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        ch.destroy();
    }
}
