//! Error types of channel operations.
//!
//! Like crossbeam-channel's, a failed send gives the message back. Every
//! enum is small and `#[non_exhaustive]`; `Display` says what happened.

use crate::alloc::AllocError;
use crate::backing::BackingError;
use shm_primitives::handle::HandleError;
use std::fmt;

/// Why creating or attaching to a channel failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The options are not acceptable.
    InvalidOptions(String),
    /// The handle could not be parsed or is not a channel handle.
    Handle(HandleError),
    /// The channel's memory does not exist (never created, or destroyed).
    NotFound(String),
    /// The memory is not a channel (or is damaged).
    NotAChannel(String),
    /// The channel was made by a build with another memory layout.
    LayoutVersion { found: u32, expected: u32 },
    /// The handle names an earlier channel that had the same name.
    Stale { segment: String },
    /// The channel was destroyed.
    Destroyed,
    /// Every attachment row is taken.
    TooManyAttachments { max: u32 },
    /// The memory could not be provided.
    Backing(BackingError),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::InvalidOptions(m) => write!(f, "invalid channel options: {m}"),
            ChannelError::Handle(e) => write!(f, "bad channel handle: {e}"),
            ChannelError::NotFound(m) => {
                write!(f, "channel {m} does not exist (it was destroyed, or its creator's run has ended)")
            }
            ChannelError::NotAChannel(m) => write!(f, "not a channel: {m}"),
            ChannelError::LayoutVersion { found, expected } => write!(
                f,
                "channel memory layout version {found} is not supported by this build (expects {expected}); \
                 all processes must use the same build"
            ),
            ChannelError::Stale { segment } => {
                write!(f, "stale channel handle: {segment} now holds a different channel (the original was destroyed)")
            }
            ChannelError::Destroyed => write!(f, "the channel was destroyed"),
            ChannelError::TooManyAttachments { max } => {
                write!(f, "the channel already has its maximum of {max} attached processes")
            }
            ChannelError::Backing(e) => write!(f, "channel memory: {e}"),
        }
    }
}

impl std::error::Error for ChannelError {}

impl From<HandleError> for ChannelError {
    fn from(e: HandleError) -> Self {
        ChannelError::Handle(e)
    }
}

impl From<BackingError> for ChannelError {
    fn from(e: BackingError) -> Self {
        match e {
            BackingError::NotFound(m) => ChannelError::NotFound(m),
            e => ChannelError::Backing(e),
        }
    }
}

macro_rules! msg_debug {
    ($ty:ident { $($var:ident),* } $(, $alloc:ident)?) => {
        impl<M> fmt::Debug for $ty<M> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($ty::$var(_) => write!(f, concat!(stringify!($ty), "::", stringify!($var), "(..)")),)*
                    $($ty::$alloc(_, e) => write!(f, concat!(stringify!($ty), "::", stringify!($alloc), "(.., {:?})"), e),)?
                }
            }
        }
    };
}

/// A blocking send failed; the message is given back.
#[non_exhaustive]
pub enum SendError<M> {
    /// The channel is closed, or (in pipe mode) has no receivers left.
    Disconnected(M),
    /// The channel was destroyed.
    Destroyed(M),
    /// No memory for a message this large.
    Alloc(M, AllocError),
}

/// A non-blocking send failed; the message is given back.
#[non_exhaustive]
pub enum TrySendError<M> {
    /// Every slot is taken.
    Full(M),
    /// The channel is closed, or (in pipe mode) has no receivers left.
    Disconnected(M),
    /// The channel was destroyed.
    Destroyed(M),
    /// No memory for a message this large.
    Alloc(M, AllocError),
}

/// A send with a timeout failed; the message is given back.
#[non_exhaustive]
pub enum SendTimeoutError<M> {
    /// The channel stayed full until the timeout.
    Timeout(M),
    /// The channel is closed, or (in pipe mode) has no receivers left.
    Disconnected(M),
    /// The channel was destroyed.
    Destroyed(M),
    /// The interrupt hook asked to stop waiting.
    Interrupted(M),
    /// No memory for a message this large.
    Alloc(M, AllocError),
}

msg_debug!(SendError { Disconnected, Destroyed }, Alloc);
msg_debug!(TrySendError { Full, Disconnected, Destroyed }, Alloc);
msg_debug!(SendTimeoutError { Timeout, Disconnected, Destroyed, Interrupted }, Alloc);

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Disconnected(m) | SendError::Destroyed(m) | SendError::Alloc(m, _) => m,
        }
    }
}

impl<M> TrySendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            TrySendError::Full(m)
            | TrySendError::Disconnected(m)
            | TrySendError::Destroyed(m)
            | TrySendError::Alloc(m, _) => m,
        }
    }
    /// Whether the channel was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
}

impl<M> SendTimeoutError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendTimeoutError::Timeout(m)
            | SendTimeoutError::Disconnected(m)
            | SendTimeoutError::Destroyed(m)
            | SendTimeoutError::Interrupted(m)
            | SendTimeoutError::Alloc(m, _) => m,
        }
    }
    /// Whether the timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
}

const CLOSED: &str = "sending on a closed channel (closed, or no receiver is attached any more)";
const DESTROYED: &str = "the channel was destroyed";

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str(CLOSED),
            SendError::Destroyed(_) => f.write_str(DESTROYED),
            SendError::Alloc(_, e) => write!(f, "{e}"),
        }
    }
}

impl<M> fmt::Display for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("sending on a full channel"),
            TrySendError::Disconnected(_) => f.write_str(CLOSED),
            TrySendError::Destroyed(_) => f.write_str(DESTROYED),
            TrySendError::Alloc(_, e) => write!(f, "{e}"),
        }
    }
}

impl<M> fmt::Display for SendTimeoutError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out sending on a full channel"),
            SendTimeoutError::Disconnected(_) => f.write_str(CLOSED),
            SendTimeoutError::Destroyed(_) => f.write_str(DESTROYED),
            SendTimeoutError::Interrupted(_) => f.write_str("interrupted while waiting to send"),
            SendTimeoutError::Alloc(_, e) => write!(f, "{e}"),
        }
    }
}

impl<M> std::error::Error for SendError<M> {}
impl<M> std::error::Error for TrySendError<M> {}
impl<M> std::error::Error for SendTimeoutError<M> {}

/// A blocking receive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// Closed (or, in pipe mode, no sender left) and drained.
    Disconnected,
    /// The channel was destroyed.
    Destroyed,
}

/// A non-blocking receive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing to receive right now.
    Empty,
    /// Closed (or, in pipe mode, no sender left) and drained.
    Disconnected,
    /// The channel was destroyed.
    Destroyed,
}

/// A receive with a timeout failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout.
    Timeout,
    /// Closed (or, in pipe mode, no sender left) and drained.
    Disconnected,
    /// The channel was destroyed.
    Destroyed,
    /// The interrupt hook asked to stop waiting.
    Interrupted,
}

const DRAINED: &str = "receiving on a closed and empty channel (closed, or no sender is attached any more)";

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str(DRAINED),
            RecvError::Destroyed => f.write_str(DESTROYED),
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => f.write_str(DRAINED),
            TryRecvError::Destroyed => f.write_str(DESTROYED),
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on an empty channel"),
            RecvTimeoutError::Disconnected => f.write_str(DRAINED),
            RecvTimeoutError::Destroyed => f.write_str(DESTROYED),
            RecvTimeoutError::Interrupted => f.write_str("interrupted while waiting to receive"),
        }
    }
}

impl std::error::Error for RecvError {}
impl std::error::Error for TryRecvError {}
impl std::error::Error for RecvTimeoutError {}

/// Waiting on several channels failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectError {
    /// None became ready before the timeout.
    Timeout,
    /// The interrupt hook asked to stop waiting.
    Interrupted,
    /// No channels were given and there is no timeout.
    NoChannels,
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::Timeout => f.write_str("timed out waiting for any channel to become ready"),
            SelectError::Interrupted => f.write_str("interrupted while waiting for channels"),
            SelectError::NoChannels => f.write_str("waiting on no channels without a timeout would never end"),
        }
    }
}

impl std::error::Error for SelectError {}
