//! The bounds on peers that have not authenticated yet, for any server of
//! the run's secret (the agent, the node services).
//!
//! Anyone who can reach a listening port can connect, so a connection that
//! has not authenticated holds little, for a short time: a deadline from
//! accept to a valid proof, and caps on such connections open at once,
//! over all and per source address. Beyond a cap the *oldest*
//! unauthenticated connection is closed, not the new one: the oldest of the
//! same address for the per-address cap, the oldest of the address holding
//! the most for the overall cap. An honest peer needs one round trip to
//! authenticate, so a stalled or hostile one makes way for it, and a flood
//! from one address mostly closes its own connections. Authenticated
//! connections never count.

use mio::Token;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Time a new connection has to complete the handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Most connections open at once that have not authenticated yet.
pub const MAX_UNAUTHENTICATED: usize = 512;
/// Most connections open at once from one source address that have not
/// authenticated yet (a node starting many processes at once connects
/// them all from its one address).
pub const MAX_UNAUTHENTICATED_PER_ADDR: usize = 128;
/// Largest frame accepted before authentication (the PROOF frame is 73 bytes).
pub const MAX_UNAUTHENTICATED_FRAME: usize = 1024;

/// Bounds on peers that have not authenticated (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time from accept to a valid PROOF; then the connection is closed.
    pub handshake_deadline: Duration,
    /// Unauthenticated connections open at once (at least 1).
    pub max_unauthenticated: usize,
    /// Unauthenticated connections open at once from one address (at least 1).
    pub max_unauthenticated_per_addr: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_deadline: HANDSHAKE_DEADLINE,
            max_unauthenticated: MAX_UNAUTHENTICATED,
            max_unauthenticated_per_addr: MAX_UNAUTHENTICATED_PER_ADDR,
        }
    }
}

/// Why a connection is to be closed.
pub const CLOSED_FOR_ADDR: &str = "too many connections from this address are authenticating; closed the oldest";
/// See [`CLOSED_FOR_ADDR`].
pub const CLOSED_FOR_ALL: &str = "too many connections are authenticating; closed the oldest of the busiest address";
/// See [`CLOSED_FOR_ADDR`].
pub const CLOSED_LATE: &str = "no valid proof of the run's secret in time";

/// The unauthenticated connections of one server.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    /// Oldest first (so also by deadline): token, address, deadline.
    pending: VecDeque<(Token, IpAddr, Instant)>,
    per_addr: HashMap<IpAddr, usize>,
}

impl Gate {
    /// No connection yet.
    pub fn new(limits: Limits) -> Gate {
        let limits = Limits {
            max_unauthenticated: limits.max_unauthenticated.max(1),
            max_unauthenticated_per_addr: limits.max_unauthenticated_per_addr.max(1),
            ..limits
        };
        Gate { limits, pending: VecDeque::new(), per_addr: HashMap::new() }
    }

    fn held(&self, a: &IpAddr) -> usize {
        self.per_addr.get(a).copied().unwrap_or(0)
    }

    /// Before accepting a connection from `peer`: the connections to close
    /// first (with why) if a cap is reached. The caller closes them (and
    /// calls [`Gate::gone`] for each).
    pub fn make_room(&self, peer: IpAddr) -> Vec<(Token, &'static str)> {
        let mut out = Vec::new();
        if self.held(&peer) >= self.limits.max_unauthenticated_per_addr {
            if let Some(&(t, _, _)) = self.pending.iter().find(|(_, a, _)| *a == peer) {
                out.push((t, CLOSED_FOR_ADDR));
            }
        }
        if self.pending.len() - out.len() >= self.limits.max_unauthenticated {
            let most = self.per_addr.values().copied().max().unwrap_or(0);
            if let Some(&(t, _, _)) =
                self.pending.iter().find(|(t, a, _)| self.held(a) == most && !out.iter().any(|(o, _)| o == t))
            {
                out.push((t, CLOSED_FOR_ALL));
            }
        }
        out
    }

    /// A new unauthenticated connection `t` from `peer`.
    pub fn admit(&mut self, t: Token, peer: IpAddr) {
        self.pending.push_back((t, peer, Instant::now() + self.limits.handshake_deadline));
        *self.per_addr.entry(peer).or_insert(0) += 1;
    }

    /// `t` authenticated or closed: it no longer counts.
    pub fn gone(&mut self, t: Token) {
        let Some(i) = self.pending.iter().position(|(p, _, _)| *p == t) else { return };
        let (_, peer, _) = self.pending.remove(i).expect("found");
        if let Some(n) = self.per_addr.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&peer);
            }
        }
    }

    /// The connections whose deadline has passed (the caller closes them,
    /// with [`CLOSED_LATE`], and calls [`Gate::gone`]).
    pub fn expired(&self, now: Instant) -> Vec<Token> {
        self.pending.iter().take_while(|(_, _, d)| *d <= now).map(|(t, _, _)| *t).collect()
    }

    /// When the next deadline passes, if any connection is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.front().map(|(_, _, d)| *d)
    }

    /// Unauthenticated connections open.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_close_the_oldest_and_deadlines_expire() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut g = Gate::new(Limits {
            handshake_deadline: Duration::from_secs(3600),
            max_unauthenticated: 3,
            max_unauthenticated_per_addr: 2,
        });
        g.admit(Token(1), a);
        g.admit(Token(2), a);
        assert_eq!(g.make_room(a), vec![(Token(1), CLOSED_FOR_ADDR)]);
        g.gone(Token(1));
        g.admit(Token(3), a);
        g.admit(Token(4), b);
        // Three open: the busiest address (a) loses its oldest.
        assert_eq!(g.make_room(b), vec![(Token(2), CLOSED_FOR_ALL)]);
        g.gone(Token(2));
        assert_eq!(g.len(), 2);
        assert!(g.expired(Instant::now()).is_empty());
        assert_eq!(g.expired(Instant::now() + Duration::from_secs(3601)), vec![Token(3), Token(4)]);
        g.gone(Token(3));
        g.gone(Token(4));
        assert!(g.is_empty() && g.next_deadline().is_none());
    }
}
