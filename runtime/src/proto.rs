//! The node services' requests, beyond the channel requests of
//! `transport_tcp::proto`. Frames as `transport_tcp::frame`; integers
//! little endian.
//!
//! Between node services (TCP, after authentication with the run's secret):
//!
//! ```text
//!   JOIN     secondary -> primary   NodeInfo (table.rs)
//!   TABLE    primary -> node        every NodeInfo, once all have joined
//!   PEER     connecting -> accepting service, first frame of a link that
//!            is not a join: node index u32
//!   CANCEL   end the waiting request whose id the frame carries
//!   FABRIC   RDMA or TCP for this link: the set-up of `crate::fabric`
//!   LAUNCH   prep_len u32, prep, nflags u16, (len u16, flag)*,
//!            ntethers u16, tether id u64 * ntethers, start data
//!                                   -> OK: pid i64, launch id u64
//!            (the top bit of ntethers, LIFELINE: the first tether is
//!            the requester's lifeline, whose end is the process's
//!            parent's sentinel; the process gets no descriptor for it,
//!            it asks its service for the sentinel with PARENT)
//!   TETHER   origin node u32, tether id u64[, 1u8]: that end of a tether
//!            closed (with the 1: broken, shut the other end down too)
//!   SIGNAL   launch u64, signal i32 -> OK
//!   RELEASE  launch u64             -> OK (the requester lets go)
//!   EXITED   (id 0) launch u64, exit code i64 (negative: signal)
//!   channel requests (transport_tcp::proto) on the served node's channels
//! ```
//!
//! From a process to its own node's service (unix socket, same user):
//! every request but NODES starts with the node it is for, `node u32`,
//! followed by the payload above (channel requests, LAUNCH, SIGNAL,
//! RELEASE) or what follows. A LAUNCH from a process carries its tethers'
//! descriptors (`SCM_RIGHTS`, with the request's bytes) and zeros for
//! their ids; the service gives them ids.
//!
//! ```text
//!   NODES                            -> OK: the node table as JSON
//!   TRANSPORTS                       -> OK: RDMA here, and what is used
//!                                       to each peer so far, as JSON
//!                                       (`fabric::Fabric::report`)
//!   PROCS    node u32                -> OK: the run's processes on that
//!                                       node, as JSON (`cleanup::status_json`)
//!   WATCH    node u32, launch u64    the connection then receives, once,
//!                                    the raw 8-byte exit code, and closes
//!   PARENT   node u32 (this node), pid u32
//!                                    -> OK; the connection then receives
//!                                    nothing and is closed when the
//!                                    lifeline of process `pid`'s parent
//!                                    ends (at once if it has ended or
//!                                    `pid` has none): the sentinel of the
//!                                    parent of a process started here for
//!                                    another node, asked for on first use
//! ```

/// A secondary joins the run.
pub const JOIN: u8 = 0x10;
/// The node table.
pub const TABLE: u8 = 0x11;
/// First frame of a link between two services that is not a join.
pub const PEER: u8 = 0x12;
/// Cancel a waiting request.
pub const CANCEL: u8 = transport_tcp::proto::CANCEL;
/// The fabric set-up of a link (`crate::fabric`).
pub const FABRIC: u8 = 0x14;
/// Start a process.
pub const LAUNCH: u8 = 0x20;
/// One end of a tether closed.
pub const TETHER: u8 = 0x25;
/// Signal a started process.
pub const SIGNAL: u8 = 0x21;
/// The requester lets go of a started process.
pub const RELEASE: u8 = 0x22;
/// A started process exited.
pub const EXITED: u8 = 0x23;
/// Be told when a started process exits.
pub const WATCH: u8 = 0x24;
/// A connection that closes when a process's parent (on another node) ends.
pub const PARENT: u8 = 0x26;
/// The node table, as JSON.
pub const NODES: u8 = 0x30;
/// An operation on a synchronisation object of the serving node
/// (`syncserve.rs` has the payload).
pub const SYNC: u8 = 0x40;
/// An operation on a DDict of the serving node (`ddictserve.rs` has the
/// payload).
pub const DDICT: u8 = 0x41;
/// A local process's request whose payload ends with a block message of
/// this node's store (`transport_shm::blocks`, tag kind 0x80: no tag
/// byte): `[request kind u8][block message length u32][node u32][payload]`.
/// The service handles or carries request `kind` with the block's bytes in
/// place of the block message (a DDict value sent from a block instead of
/// through the process's connection).
pub const BLOCK_TAIL: u8 = 0x42;
/// What this node uses to reach each peer, as JSON.
pub const TRANSPORTS: u8 = 0x31;
/// The run's processes on a node, as JSON (for `dragon top`).
pub const PROCS: u8 = 0x32;

/// Exit code reported for a process whose node was lost (as if killed).
pub const LOST_EXIT: i64 = -(libc::SIGKILL as i64);

/// What a node service writes on its standard output for the launcher:
/// `kind u8, length u32, payload`.
pub mod out {
    /// The service listens: `host:port` (text).
    pub const LISTENING: u8 = 1;
    /// Every node joined: the node table as JSON.
    pub const READY: u8 = 2;
    /// The service failed and is stopping: why (text).
    pub const ERROR: u8 = 3;
    /// A process's output: stream u8 (1 stdout, 2 stderr), pid u32, bytes.
    pub const OUTPUT: u8 = 4;
    /// A note for the user (text), e.g. a node lost.
    pub const LOG: u8 = 5;
    /// The node is clean and the service exits: a summary (text).
    pub const STOPPED: u8 = 6;
    /// A node is lost: its index u32, then why (text).
    pub const LOST: u8 = 7;
}

/// The bit of a LAUNCH's tether count that marks the first tether as the
/// requester's lifeline ([`Launch::lifeline`]).
pub const LIFELINE: u16 = 0x8000;

/// A LAUNCH request's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch<'a> {
    /// The preparation data for the node's template (a pickle).
    pub prep: &'a [u8],
    /// Interpreter flags for the node's template.
    pub flags: Vec<String>,
    /// Tether ids: one per lifetime socket the process refers to.
    pub tethers: Vec<u64>,
    /// The first tether is the requester's lifeline: the process's
    /// parent's sentinel, which the process asks for ([`PARENT`]) rather
    /// than gets.
    pub lifeline: bool,
    /// The start data (two pickles).
    pub data: &'a [u8],
}

impl<'a> Launch<'a> {
    /// Decode a LAUNCH payload.
    pub fn parse(p: &'a [u8]) -> Option<Launch<'a>> {
        let (n, rest) = p.split_at_checked(4)?;
        let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
        let (prep, mut rest) = rest.split_at_checked(n)?;
        let (c, r) = rest.split_at_checked(2)?;
        rest = r;
        let mut flags = Vec::new();
        for _ in 0..u16::from_le_bytes(c.try_into().ok()?) {
            let (l, r) = rest.split_at_checked(2)?;
            let (f, r) = r.split_at_checked(u16::from_le_bytes(l.try_into().ok()?) as usize)?;
            flags.push(String::from_utf8(f.to_vec()).ok()?);
            rest = r;
        }
        let (c, r) = rest.split_at_checked(2)?;
        rest = r;
        let c = u16::from_le_bytes(c.try_into().ok()?);
        let lifeline = c & LIFELINE != 0;
        let mut tethers = Vec::new();
        for _ in 0..c & !LIFELINE {
            let (id, r) = rest.split_at_checked(8)?;
            tethers.push(u64::from_le_bytes(id.try_into().ok()?));
            rest = r;
        }
        if lifeline && tethers.is_empty() {
            return None;
        }
        Some(Launch { prep, flags, tethers, lifeline, data: rest })
    }

    /// Encode it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = (self.prep.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(self.prep);
        p.extend_from_slice(&(self.flags.len() as u16).to_le_bytes());
        for f in &self.flags {
            p.extend_from_slice(&(f.len() as u16).to_le_bytes());
            p.extend_from_slice(f.as_bytes());
        }
        let lifeline = if self.lifeline { LIFELINE } else { 0 };
        p.extend_from_slice(&(self.tethers.len() as u16 | lifeline).to_le_bytes());
        for t in &self.tethers {
            p.extend_from_slice(&t.to_le_bytes());
        }
        p.extend_from_slice(self.data);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_payloads_round_trip_and_short_ones_fail() {
        let l = Launch {
            prep: b"prep",
            flags: vec!["-O".to_owned(), "-Xdev".to_owned()],
            tethers: vec![7, 1 << 40],
            lifeline: false,
            data: b"data",
        };
        let p = l.encode();
        assert_eq!(Launch::parse(&p).unwrap(), l);
        for cut in 0..p.len() - 4 {
            assert!(Launch::parse(&p[..cut]).is_none(), "{cut}");
        }
        let l = Launch { lifeline: true, ..l };
        assert_eq!(Launch::parse(&l.encode()).unwrap(), l);
        // A lifeline is a tether: a count of none with the bit is malformed.
        let none = Launch { tethers: vec![], ..l };
        assert!(Launch::parse(&none.encode()).is_none());
    }
}
