//! The pool's messages, byte for byte those of `dragon/_pool_part.py` (its
//! `struct` formats are in brackets), so Python and Rust agree:
//!
//! ```text
//!  task    'T' seq:i64 job:i64 index:i64 kind:u8 flen:u32   ("<cqqqBI", 30 bytes)
//!          then flen bytes naming the function, then the arguments
//!  result  'R' seq:i64 job:i64 index:i64                    ("<cqqq", 25 bytes)
//!          then the result
//!  lost    'L' seq:i64 count:i64 pid:i64 exit_code:i64      ("<cqqqq", 33 bytes)
//!  end     'N'
//! ```
//!
//! All integers are little-endian. A *lost* notice says that tasks
//! `seq .. seq + count - 1` died with a worker: `pid` is the worker's
//! ([`GAP_PID`] when a taker died before recording which task it took,
//! [`NOT_RUN_PID`] when the pool is broken and the task was never run);
//! `exit_code` is the worker's exit code, or minus the signal that ended it.
//! The *end* marker ends the result stream (the standard pool's `None`).
//! What follows a task or result header (the function's name and the
//! arguments; the result) is the user's: Python puts pickles there, the Rust
//! [`Pool`](crate::Pool) its own bytes.
use std::fmt;

/// First byte of a task message.
pub const TASK: u8 = b'T';
/// First byte of a result message.
pub const RESULT: u8 = b'R';
/// First byte of a lost-task notice.
pub const LOST: u8 = b'L';
/// The end-of-results marker (the whole message).
pub const END: u8 = b'N';

/// Bytes of a task header.
pub const TASK_HEADER: usize = 30;
/// Bytes of a result header.
pub const RESULT_HEADER: usize = 25;
/// Bytes of a lost-task notice.
pub const LOST_LEN: usize = 33;

/// `pid` of a lost notice for tasks taken by a worker that died before it
/// recorded them (which worker is not known).
pub const GAP_PID: i64 = -1;
/// `pid` of a lost notice for a task failed, unrun, because the pool is
/// broken (its workers die before they start).
pub const NOT_RUN_PID: i64 = -2;

/// What a task asks a worker to do (`kind` in the header). The numbers are
/// `_pool_part.py`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Call the function with the arguments (Python: `func(*args)`).
    Call,
    /// Python: `func(*args, **kwds)`.
    CallKw,
    /// Python: a chunk of `map`.
    Map,
    /// Python: a chunk of `starmap`.
    Starmap,
    /// No task: the worker that takes it exits.
    Stop,
}

impl Kind {
    /// The header's byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Kind::Call => 0,
            Kind::CallKw => 1,
            Kind::Map => 2,
            Kind::Starmap => 3,
            Kind::Stop => 4,
        }
    }

    /// The kind a header byte names.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Call,
            1 => Kind::CallKw,
            2 => Kind::Map,
            3 => Kind::Starmap,
            4 => Kind::Stop,
            _ => return None,
        })
    }
}

/// A message that is not what its reader expected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header (or than the header says).
    Short {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        got: usize,
    },
    /// The first byte is not the expected message type.
    WrongType {
        /// What was being decoded.
        what: &'static str,
        /// The first byte found.
        found: u8,
    },
    /// A task kind this build does not know.
    BadKind(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { what, need, got } => {
                write!(f, "malformed pool message: a {what} needs {need} bytes, got {got}")
            }
            DecodeError::WrongType { what, found } => {
                write!(f, "malformed pool message: expected a {what}, found type byte {found:#04x}")
            }
            DecodeError::BadKind(k) => write!(f, "malformed pool message: unknown task kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn check(b: &[u8], what: &'static str, ty: u8, need: usize) -> Result<(), DecodeError> {
    if b.len() < need {
        return Err(DecodeError::Short { what, need, got: b.len() });
    }
    if b[0] != ty {
        return Err(DecodeError::WrongType { what, found: b[0] });
    }
    Ok(())
}

/// A task message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskHeader {
    /// The task's sequence number (the order of sending).
    pub seq: i64,
    /// The job (one `map` or `submit` call) it belongs to.
    pub job: i64,
    /// Its index in the job.
    pub index: i64,
    /// What to do.
    pub kind: Kind,
    /// Bytes naming the function, right after the header.
    pub function_len: u32,
}

impl TaskHeader {
    /// The 30 header bytes.
    pub fn encode(&self) -> [u8; TASK_HEADER] {
        let mut b = [0u8; TASK_HEADER];
        b[0] = TASK;
        b[1..9].copy_from_slice(&self.seq.to_le_bytes());
        b[9..17].copy_from_slice(&self.job.to_le_bytes());
        b[17..25].copy_from_slice(&self.index.to_le_bytes());
        b[25] = self.kind.to_u8();
        b[26..30].copy_from_slice(&self.function_len.to_le_bytes());
        b
    }

    /// A whole task message: header, function bytes, arguments.
    pub fn message(seq: i64, job: i64, index: i64, kind: Kind, function: &[u8], args: &[u8]) -> Vec<u8> {
        let function_len = u32::try_from(function.len()).expect("a function name of less than 4 GiB");
        let head = TaskHeader { seq, job, index, kind, function_len };
        let mut m = Vec::with_capacity(TASK_HEADER + function.len() + args.len());
        m.extend_from_slice(&head.encode());
        m.extend_from_slice(function);
        m.extend_from_slice(args);
        m
    }

    /// The stop message with sequence number `seq`.
    pub fn stop(seq: i64) -> Vec<u8> {
        TaskHeader { seq, job: -1, index: -1, kind: Kind::Stop, function_len: 0 }.encode().to_vec()
    }

    /// Decode a task message's header, checking that the function bytes
    /// it announces are there.
    pub fn decode(b: &[u8]) -> Result<TaskHeader, DecodeError> {
        check(b, "task", TASK, TASK_HEADER)?;
        let kind = Kind::from_u8(b[25]).ok_or(DecodeError::BadKind(b[25]))?;
        let function_len = u32::from_le_bytes(b[26..30].try_into().expect("4 bytes"));
        let need = TASK_HEADER + function_len as usize;
        if b.len() < need {
            return Err(DecodeError::Short { what: "task", need, got: b.len() });
        }
        Ok(TaskHeader { seq: i64_at(b, 1), job: i64_at(b, 9), index: i64_at(b, 17), kind, function_len })
    }

    /// `(function bytes, arguments)` of the message this header was
    /// decoded from.
    pub fn split<'a>(&self, b: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let end = TASK_HEADER + self.function_len as usize;
        (&b[TASK_HEADER..end], &b[end..])
    }
}

/// The sequence number of a task message (bytes 1..9), without decoding
/// the rest: what a taker needs under the lock.
pub fn task_seq(b: &[u8]) -> Result<i64, DecodeError> {
    check(b, "task", TASK, 9)?;
    Ok(i64_at(b, 1))
}

/// A result message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultHeader {
    /// The task's sequence number.
    pub seq: i64,
    /// Its job.
    pub job: i64,
    /// Its index in the job.
    pub index: i64,
}

impl ResultHeader {
    /// The 25 header bytes.
    pub fn encode(&self) -> [u8; RESULT_HEADER] {
        let mut b = [0u8; RESULT_HEADER];
        b[0] = RESULT;
        b[1..9].copy_from_slice(&self.seq.to_le_bytes());
        b[9..17].copy_from_slice(&self.job.to_le_bytes());
        b[17..25].copy_from_slice(&self.index.to_le_bytes());
        b
    }

    /// Decode a result message's header; the result is `&b[RESULT_HEADER..]`.
    pub fn decode(b: &[u8]) -> Result<ResultHeader, DecodeError> {
        check(b, "result", RESULT, RESULT_HEADER)?;
        Ok(ResultHeader { seq: i64_at(b, 1), job: i64_at(b, 9), index: i64_at(b, 17) })
    }
}

/// A lost-task notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// The first lost task.
    pub seq: i64,
    /// How many consecutive tasks from `seq`.
    pub count: i64,
    /// The worker's pid, [`GAP_PID`] or [`NOT_RUN_PID`].
    pub pid: i64,
    /// The worker's exit code, or minus the signal that ended it.
    pub exit_code: i64,
}

impl Lost {
    /// The 33 bytes.
    pub fn encode(&self) -> [u8; LOST_LEN] {
        let mut b = [0u8; LOST_LEN];
        b[0] = LOST;
        b[1..9].copy_from_slice(&self.seq.to_le_bytes());
        b[9..17].copy_from_slice(&self.count.to_le_bytes());
        b[17..25].copy_from_slice(&self.pid.to_le_bytes());
        b[25..33].copy_from_slice(&self.exit_code.to_le_bytes());
        b
    }

    /// Decode a lost-task notice.
    pub fn decode(b: &[u8]) -> Result<Lost, DecodeError> {
        check(b, "lost-task notice", LOST, LOST_LEN)?;
        Ok(Lost { seq: i64_at(b, 1), count: i64_at(b, 9), pid: i64_at(b, 17), exit_code: i64_at(b, 25) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trips_and_matches_pythons_layout() {
        let m = TaskHeader::message(5, 2, 1, Kind::Map, b"f", b"args");
        // struct.pack("<cqqqBI", b"T", 5, 2, 1, 2, 1) + b"f" + b"args"
        let mut want = vec![b'T'];
        for v in [5i64, 2, 1] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.push(2);
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"fargs");
        assert_eq!(m, want);
        let h = TaskHeader::decode(&m).unwrap();
        assert_eq!((h.seq, h.job, h.index, h.kind, h.function_len), (5, 2, 1, Kind::Map, 1));
        assert_eq!(h.split(&m), (&b"f"[..], &b"args"[..]));
        assert_eq!(task_seq(&m), Ok(5));
        let stop = TaskHeader::decode(&TaskHeader::stop(9)).unwrap();
        assert_eq!((stop.seq, stop.kind), (9, Kind::Stop));
    }

    #[test]
    fn result_and_lost_round_trip() {
        let r = ResultHeader { seq: -1, job: 7, index: 3 };
        assert_eq!(ResultHeader::decode(&r.encode()), Ok(r));
        let l = Lost { seq: 4, count: 2, pid: GAP_PID, exit_code: -9 };
        assert_eq!(Lost::decode(&l.encode()), Ok(l));
    }

    #[test]
    fn bad_messages_are_errors() {
        assert!(matches!(TaskHeader::decode(b"T12"), Err(DecodeError::Short { .. })));
        assert!(matches!(ResultHeader::decode(&[b'X'; 30]), Err(DecodeError::WrongType { found: b'X', .. })));
        let mut m = TaskHeader::message(0, 0, 0, Kind::Call, b"abc", b"");
        m[25] = 9;
        assert_eq!(TaskHeader::decode(&m), Err(DecodeError::BadKind(9)));
        let mut m = TaskHeader::message(0, 0, 0, Kind::Call, b"abc", b"");
        m.truncate(31);
        assert!(matches!(TaskHeader::decode(&m), Err(DecodeError::Short { need: 33, .. })));
        assert!(task_seq(b"").is_err());
        assert!(Lost::decode(&[b'L'; 10]).is_err());
    }
}
