//! Handles of queues and pipe ends: what another process attaches by.
//!
//! A handle is text (so it fits an environment variable or a command
//! line): `dq1`, the kind, the mode, the bound, then the handles of the
//! objects it is made of in their own text form (URL-safe base64), all
//! separated by `:`. Attaching checks every part, so a garbage or forged
//! handle is a clear [`QueueError::Handle`].

use crate::error::QueueError;
use shm_primitives::{Handle, Kind};
use std::fmt;
use std::str::FromStr;

const VERSION: &str = "dq1";

/// How a queue bounds its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// A ring of exactly `maxsize` slots (`0 < maxsize <= EXACT_MAX`).
    Exact,
    /// No bound: a put never waits (a local buffer and a feeder thread
    /// take over while the ring is full).
    Unbounded,
    /// An unbounded ring plus a shared semaphore of `maxsize` permits
    /// (bounds above `EXACT_MAX`).
    Semaphore,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Unbounded => "unbounded",
            Mode::Semaphore => "semaphore",
        }
    }
}

/// What kind of object a handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueKind {
    /// A [`crate::Queue`].
    Queue,
    /// A [`crate::JoinableQueue`].
    Joinable,
    /// A [`crate::SimpleQueue`].
    Simple,
    /// A [`crate::Connection`] (pipe end).
    Connection,
}

impl QueueKind {
    fn word(self) -> &'static str {
        match self {
            QueueKind::Queue => "queue",
            QueueKind::Joinable => "joinable",
            QueueKind::Simple => "simple",
            QueueKind::Connection => "connection",
        }
    }
}

/// The handle of a queue or pipe end. Its text form ([`fmt::Display`],
/// [`FromStr`]) travels between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueHandle {
    pub(crate) kind: QueueKind,
    pub(crate) mode: Mode,
    pub(crate) maxsize: u64,
    /// The queue's channel; a connection's sending channel.
    pub(crate) channel: Option<Handle>,
    /// A connection's receiving channel.
    pub(crate) recv: Option<Handle>,
    /// The bounding semaphore (semaphore mode).
    pub(crate) sem: Option<Handle>,
    /// A joinable queue's unfinished-task semaphore, condition and lock.
    pub(crate) tasks: Option<[Handle; 3]>,
}

impl QueueHandle {
    /// What the handle names.
    pub fn kind(&self) -> QueueKind {
        self.kind
    }

    /// The queue's mode (connections: [`Mode::Unbounded`]).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The queue's bound (`0` for none).
    pub fn maxsize(&self) -> u64 {
        self.maxsize
    }

    /// Check the kind; `want` names what the caller attaches as.
    pub(crate) fn expect(&self, kind: QueueKind, want: &str) -> Result<(), QueueError> {
        if self.kind != kind {
            return Err(QueueError::Handle(format!(
                "the handle names a {}, not a {want}; attach it as what it is",
                self.kind.word()
            )));
        }
        Ok(())
    }
}

fn opt(h: &Option<Handle>) -> String {
    h.as_ref().map_or_else(|| "-".to_owned(), Handle::to_text)
}

impl fmt::Display for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERSION}:{}:{}:{}:{}:{}:{}",
            self.kind.word(),
            self.mode.word(),
            self.maxsize,
            opt(&self.channel),
            opt(&self.recv),
            opt(&self.sem)
        )?;
        for h in self.tasks.iter().flatten() {
            write!(f, ":{}", h.to_text())?;
        }
        Ok(())
    }
}

fn parse_handle(text: &str, kind: Kind, what: &str) -> Result<Option<Handle>, QueueError> {
    if text == "-" {
        return Ok(None);
    }
    let h = Handle::from_text(text).map_err(|e| QueueError::Handle(format!("{what}: {e}")))?;
    if h.kind != kind {
        return Err(QueueError::Handle(format!("{what}: names a {:?}, not a {kind:?}", h.kind)));
    }
    Ok(Some(h))
}

impl FromStr for QueueHandle {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<QueueHandle, QueueError> {
        let bad = |m: &str| QueueError::Handle(format!("{m} (in {:?})", s.chars().take(80).collect::<String>()));
        let parts: Vec<&str> = s.split(':').collect();
        if parts.first() != Some(&VERSION) {
            return Err(bad("not a queue handle of this version (it must start with \"dq1:\")"));
        }
        if parts.len() != 7 && parts.len() != 10 {
            return Err(bad("wrong number of fields"));
        }
        let kind = match parts[1] {
            "queue" => QueueKind::Queue,
            "joinable" => QueueKind::Joinable,
            "simple" => QueueKind::Simple,
            "connection" => QueueKind::Connection,
            _ => return Err(bad("unknown kind")),
        };
        let mode = match parts[2] {
            "exact" => Mode::Exact,
            "unbounded" => Mode::Unbounded,
            "semaphore" => Mode::Semaphore,
            _ => return Err(bad("unknown mode")),
        };
        let maxsize = parts[3].parse::<u64>().map_err(|_| bad("bad bound"))?;
        let channel = parse_handle(parts[4], Kind::Channel, "channel")?;
        let recv = parse_handle(parts[5], Kind::Channel, "receiving channel")?;
        let sem = parse_handle(parts[6], Kind::Semaphore, "semaphore")?;
        let tasks = if parts.len() == 10 {
            let need = |t: &str, k: Kind, w: &str| parse_handle(t, k, w)?.ok_or_else(|| bad("missing task object"));
            Some([
                need(parts[7], Kind::Semaphore, "task counter")?,
                need(parts[8], Kind::Condition, "task condition")?,
                need(parts[9], Kind::Lock, "task lock")?,
            ])
        } else {
            None
        };
        let h = QueueHandle { kind, mode, maxsize, channel, recv, sem, tasks };
        let consistent = match kind {
            QueueKind::Connection => h.sem.is_none() && h.tasks.is_none() && (h.channel.is_some() || h.recv.is_some()),
            _ => {
                h.channel.is_some()
                    && h.recv.is_none()
                    && (h.sem.is_some() == (mode == Mode::Semaphore))
                    && (h.tasks.is_some() == (kind == QueueKind::Joinable))
                    && (mode == Mode::Unbounded || h.maxsize > 0)
            }
        };
        if !consistent {
            return Err(bad("its parts do not fit together"));
        }
        Ok(h)
    }
}
