//! Outbound dial bounds: a node-wide cap on dials in flight, and a negative cache of addresses
//! whose dial failed.
//!
//! Every dial sends QUIC Initial packets to an address a peer may have named, until the
//! handshake completes or times out, so what peers say must not decide how many dials run: a
//! message naming 2,000 made-up ids at one address must cost a handful of dials, not 2,000.
//! - At most [`Limits::max_dials_in_flight`](super::Limits::max_dials_in_flight) dials run at
//!   once; one beyond them waits for a slot for at most the connect timeout (dials to live
//!   peers take a few round trips), then fails with [`DialRefused::Limit`]. The transport's
//!   semaphore does the waiting; this table's count is the backstop.
//! - One dial per address at a time (an address holds one node): the transport makes a second
//!   dial to the same address wait for the first (see `endpoint/dial.rs`).
//! - An address whose dial failed (timed out, refused, failed the handshake, or presented
//!   another id than the one dialled) is not dialled again for a back-off, doubling on each
//!   further failure up to a ceiling; [`DialRefused::BackingOff`] meanwhile. An address that
//!   presented a valid key for another id is remembered as that node's: dials to that node
//!   there still go ahead. A link from the address, either way, clears its entry.
//!
//! Plain data behind a mutex, like the pool: no IO, and the caller passes the time in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// How many failed addresses are remembered; past it the entry closest to expiry goes.
pub(crate) const MAX_FAILED_ADDRESSES: usize = 4096;

/// Why a dial was not attempted (this node's own limit, not a sign the peer failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialRefused {
    /// As many dials as allowed are in flight already.
    #[error("{max} dials already in flight")]
    Limit {
        /// [`Limits::max_dials_in_flight`](super::Limits::max_dials_in_flight).
        max: usize,
    },
    /// A dial to this address failed recently; it is not dialled again before the back-off
    /// ends.
    #[error("a dial to {addr} failed recently; not dialling it again for {retry_in:?}")]
    BackingOff {
        /// The address.
        addr: SocketAddr,
        /// Time left of the back-off.
        retry_in: Duration,
    },
}

#[derive(Debug, Clone)]
struct Failed {
    until: Instant,
    backoff: Duration,
    /// The node whose valid key the address presented, if it was another than the one dialled.
    holder: Option<NodeId>,
}

/// The dials of one node.
#[derive(Debug)]
pub(crate) struct Dials {
    max_in_flight: usize,
    base: Duration,
    ceiling: Duration,
    in_flight: usize,
    failed: HashMap<SocketAddr, Failed>,
}

/// How a dial ended, for the negative cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A link came up.
    Linked,
    /// The address failed (no answer, refused, bad handshake).
    Failed,
    /// The address presented a valid key for this other node.
    HeldBy(NodeId),
    /// The dial ended for a reason that says nothing about the address (a local error).
    Neutral,
}

impl Dials {
    pub(crate) fn new(max_in_flight: usize, base: Duration, ceiling: Duration) -> Self {
        Self {
            max_in_flight,
            base,
            ceiling: ceiling.max(base),
            in_flight: 0,
            failed: HashMap::new(),
        }
    }

    /// Dials in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Starts a dial to `addr` (for `expected`, if known) at `now`, or says why not. Every
    /// started dial must be [`Self::end`]ed. A dial by address alone (a bootstrap address the
    /// operator gave) is not held back by the address's back-off, only by the cap.
    pub(crate) fn begin(
        &mut self,
        addr: SocketAddr,
        expected: Option<NodeId>,
        now: Instant,
    ) -> Result<(), DialRefused> {
        let addr = canonical(addr);
        if let Some(failed) = self.failed.get(&addr) {
            let excused =
                expected.is_none() || (failed.holder.is_some() && failed.holder == expected);
            if now < failed.until && !excused {
                return Err(DialRefused::BackingOff {
                    addr,
                    retry_in: failed.until - now,
                });
            }
        }
        if self.in_flight >= self.max_in_flight {
            return Err(DialRefused::Limit {
                max: self.max_in_flight,
            });
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Ends a dial [`Self::begin`] started.
    pub(crate) fn end(&mut self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let addr = canonical(addr);
        let holder = match outcome {
            Outcome::Linked => {
                self.failed.remove(&addr);
                return;
            }
            Outcome::Neutral => return,
            Outcome::Failed => None,
            Outcome::HeldBy(node) => Some(node),
        };
        let backoff = match self.failed.get(&addr) {
            Some(previous) => (previous.backoff * 2).min(self.ceiling),
            None => self.base,
        };
        if !self.failed.contains_key(&addr) && self.failed.len() >= MAX_FAILED_ADDRESSES {
            self.evict(now);
        }
        self.failed.insert(
            addr,
            Failed {
                until: now + backoff,
                backoff,
                holder,
            },
        );
    }

    /// Ends the back-off of every address that failed (this node's network changed, so the
    /// failures say nothing of the addresses now). An address known to hold another node
    /// stays known: a change on this side does not change who answers there.
    pub(crate) fn forget_failures(&mut self) {
        self.failed.retain(|_, failed| failed.holder.is_some());
    }

    /// A link from `addr` came up: whoever is there answers.
    pub(crate) fn link_up(&mut self, addr: SocketAddr) {
        self.failed.remove(&canonical(addr));
    }

    /// Makes room for one entry: expired entries go, else the one closest to expiry.
    fn evict(&mut self, now: Instant) {
        self.failed.retain(|_, failed| failed.until > now);
        if self.failed.len() < MAX_FAILED_ADDRESSES {
            return;
        }
        let first = self
            .failed
            .iter()
            .min_by_key(|(_, failed)| failed.until)
            .map(|(addr, _)| *addr);
        if let Some(addr) = first {
            self.failed.remove(&addr);
        }
    }
}

/// The address as one form: an IPv4-mapped IPv6 address is its IPv4 address.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(30);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn id(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 16])
    }

    #[test]
    fn dials_beyond_the_cap_are_refused_until_one_ends() {
        let now = Instant::now();
        let mut dials = Dials::new(2, BASE, BASE * 8);
        dials.begin(addr(1), None, now).unwrap();
        dials.begin(addr(2), None, now).unwrap();
        assert_eq!(
            dials.begin(addr(3), None, now),
            Err(DialRefused::Limit { max: 2 })
        );
        dials.end(addr(1), Outcome::Linked, now);
        dials.begin(addr(3), None, now).unwrap();
        assert_eq!(dials.in_flight(), 2);
    }

    #[test]
    fn a_failed_address_backs_off_doubling_to_the_ceiling_and_a_link_clears_it() {
        let mut now = Instant::now();
        let mut dials = Dials::new(4, BASE, BASE * 4);
        let mut expected = Vec::new();
        for _ in 0..4 {
            dials.begin(addr(1), Some(id(1)), now).unwrap();
            dials.end(addr(1), Outcome::Failed, now);
            let Err(DialRefused::BackingOff { retry_in, .. }) =
                dials.begin(addr(1), Some(id(2)), now)
            else {
                panic!("a failed address is dialled again at once");
            };
            expected.push(retry_in);
            now += retry_in;
        }
        assert_eq!(expected, [BASE, BASE * 2, BASE * 4, BASE * 4]);
        dials.link_up(addr(1));
        dials.begin(addr(1), Some(id(3)), now).unwrap();
        // Other addresses were never affected, and a neutral end leaves no entry.
        dials.end(addr(1), Outcome::Neutral, now);
        dials.begin(addr(1), None, now).unwrap();
    }

    #[test]
    fn a_change_of_network_ends_the_back_offs_but_not_what_an_address_holds() {
        let now = Instant::now();
        let mut dials = Dials::new(4, BASE, BASE);
        dials.begin(addr(1), Some(id(1)), now).unwrap();
        dials.end(addr(1), Outcome::Failed, now);
        dials.begin(addr(2), Some(id(9)), now).unwrap();
        dials.end(addr(2), Outcome::HeldBy(id(2)), now);
        assert!(dials.begin(addr(1), Some(id(1)), now).is_err());
        dials.forget_failures();
        dials.begin(addr(1), Some(id(1)), now).unwrap();
        assert!(dials.begin(addr(2), Some(id(9)), now).is_err());
        dials.begin(addr(2), Some(id(2)), now).unwrap();
    }

    #[test]
    fn an_address_held_by_another_node_still_takes_dials_to_that_node() {
        let now = Instant::now();
        let mut dials = Dials::new(4, BASE, BASE);
        dials.begin(addr(1), Some(id(9)), now).unwrap();
        dials.end(addr(1), Outcome::HeldBy(id(1)), now);
        assert!(dials.begin(addr(1), Some(id(8)), now).is_err());
        dials.begin(addr(1), Some(id(1)), now).unwrap();
        // The operator's bootstrap address is always tried.
        dials.begin(addr(1), None, now).unwrap();
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_address() {
        let now = Instant::now();
        let mut dials = Dials::new(4, BASE, BASE);
        let v4: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7000".parse().unwrap();
        dials.begin(mapped, Some(id(1)), now).unwrap();
        dials.end(mapped, Outcome::Failed, now);
        assert!(dials.begin(v4, Some(id(1)), now).is_err());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let now = Instant::now();
        let mut dials = Dials::new(1, BASE, BASE);
        for i in 0..(MAX_FAILED_ADDRESSES + 100) {
            let a = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1 + (i >> 16) as u16));
            dials.begin(a, None, now).unwrap();
            dials.end(a, Outcome::Failed, now);
        }
        assert_eq!(dials.failed.len(), MAX_FAILED_ADDRESSES);
    }
}
