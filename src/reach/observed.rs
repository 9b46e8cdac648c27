//! The addresses peers report seeing this node at, bounded and believed only when two or more
//! distinct peers agree.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// The reports of peers on this node's address: each peer vouches for at most one address (its
/// latest report), so one peer, whatever it claims, holds at most one entry; the number of
/// reporters kept is bounded, the least recently heard dropped first.
#[derive(Debug)]
pub struct ObservedAddrs {
    reports: HashMap<NodeId, (SocketAddr, Instant)>,
    max_reporters: usize,
    max_age: Duration,
}

/// How many distinct peers must report an address before it is believed.
pub const CONFIRMATIONS: usize = 2;

impl ObservedAddrs {
    /// An empty set keeping at most `max_reporters` reports, each for at most `max_age`.
    pub fn new(max_reporters: usize, max_age: Duration) -> Self {
        Self {
            reports: HashMap::new(),
            max_reporters: max_reporters.max(CONFIRMATIONS),
            max_age,
        }
    }

    /// Records that `reporter` sees this node at `addr` (replacing its earlier report). A
    /// synthetic address (the one peers linked through a relay see) is no address of this
    /// node's network, whoever reports it: it is not recorded.
    pub fn report(&mut self, reporter: NodeId, addr: SocketAddr, now: Instant) {
        if crate::relay::is_synthetic(addr) {
            return;
        }
        self.expire(now);
        if !self.reports.contains_key(&reporter) && self.reports.len() >= self.max_reporters {
            let oldest = self
                .reports
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.reports.remove(&oldest);
            }
        }
        self.reports.insert(reporter, (addr, now));
    }

    /// Drops reports older than the maximum age.
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.max_age;
        self.reports
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= max_age);
    }

    /// The addresses reported by at least [`CONFIRMATIONS`] distinct peers, sorted.
    pub fn confirmed(&self) -> Vec<SocketAddr> {
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for (addr, _) in self.reports.values() {
            *counts.entry(*addr).or_default() += 1;
        }
        let mut confirmed: Vec<SocketAddr> = counts
            .into_iter()
            .filter(|(_, n)| *n >= CONFIRMATIONS)
            .map(|(addr, _)| addr)
            .collect();
        confirmed.sort();
        confirmed
    }

    /// How many peers' reports are held.
    pub fn reporters(&self) -> usize {
        self.reports.len()
    }
}

/// A per-peer rate limit: at most `per_window` requests per peer in each `window`, for at most
/// `max_peers` peers at once (past it, a new peer is refused until windows expire), so neither
/// the requests served nor the limiter's memory grows with what peers send.
#[derive(Debug)]
pub struct RateLimiter {
    windows: HashMap<NodeId, (Instant, u32)>,
    per_window: u32,
    window: Duration,
    max_peers: usize,
    refused: u64,
}

impl RateLimiter {
    /// A limiter of `per_window` requests per peer per `window`, tracking `max_peers` peers.
    pub fn new(per_window: u32, window: Duration, max_peers: usize) -> Self {
        Self {
            windows: HashMap::new(),
            per_window,
            window,
            max_peers,
            refused: 0,
        }
    }

    /// Whether `peer` may make one more request now (counting it if so).
    pub fn allow(&mut self, peer: NodeId, now: Instant) -> bool {
        let window = self.window;
        if self.windows.len() >= self.max_peers {
            self.windows
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        let room = self.windows.len() < self.max_peers && self.per_window > 0;
        let allowed = match self.windows.get_mut(&peer) {
            Some((start, count)) => {
                if now.saturating_duration_since(*start) >= window {
                    *start = now;
                    *count = 0;
                }
                if *count < self.per_window {
                    *count += 1;
                    true
                } else {
                    false
                }
            }
            None if room => {
                self.windows.insert(peer, (now, 1));
                true
            }
            None => false,
        };
        if !allowed {
            self.refused += 1;
        }
        allowed
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], port))
    }

    #[test]
    fn one_peer_alone_is_not_believed_whatever_it_repeats() {
        let now = Instant::now();
        let mut set = ObservedAddrs::new(16, Duration::from_secs(600));
        for _ in 0..100 {
            set.report(NodeId::from_u128(1), addr(4000), now);
        }
        assert!(set.confirmed().is_empty());
        set.report(NodeId::from_u128(2), addr(4000), now);
        assert_eq!(set.confirmed(), vec![addr(4000)]);
    }

    #[test]
    fn a_synthetic_address_is_not_believed_however_many_relayed_peers_report_it() {
        let now = Instant::now();
        let mut set = ObservedAddrs::new(16, Duration::from_secs(600));
        let me = crate::relay::synthetic_addr(NodeId::from_u128(9));
        for n in 0..4 {
            set.report(NodeId::from_u128(n), me, now);
        }
        assert!(set.confirmed().is_empty());
        assert_eq!(set.reporters(), 0);
    }

    #[test]
    fn a_peer_that_changes_its_claim_takes_back_the_old_one() {
        let now = Instant::now();
        let mut set = ObservedAddrs::new(16, Duration::from_secs(600));
        set.report(NodeId::from_u128(1), addr(4000), now);
        set.report(NodeId::from_u128(2), addr(4000), now);
        set.report(NodeId::from_u128(2), addr(5000), now);
        assert!(set.confirmed().is_empty());
    }

    #[test]
    fn reports_are_bounded_and_expire() {
        let start = Instant::now();
        let mut set = ObservedAddrs::new(8, Duration::from_secs(60));
        for n in 0..1000u16 {
            set.report(
                NodeId::from_u128(u128::from(n)),
                addr(n),
                start + Duration::from_millis(u64::from(n)),
            );
        }
        assert_eq!(set.reporters(), 8);
        set.expire(start + Duration::from_secs(120));
        assert_eq!(set.reporters(), 0);
    }

    #[test]
    fn a_flooding_peer_is_limited_and_others_are_not() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(3, Duration::from_secs(60), 4);
        let flooder = NodeId::from_u128(7);
        let allowed = (0..100).filter(|_| limiter.allow(flooder, now)).count();
        assert_eq!(allowed, 3);
        assert_eq!(limiter.refused(), 97);
        assert!(limiter.allow(NodeId::from_u128(8), now));
        // A new window gives the flooder its budget again.
        assert!(limiter.allow(flooder, now + Duration::from_secs(61)));
    }

    #[test]
    fn the_limiter_tracks_a_bounded_number_of_peers() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(1, Duration::from_secs(60), 4);
        let admitted = (0..100u128)
            .filter(|n| limiter.allow(NodeId::from_u128(*n), now))
            .count();
        assert_eq!(admitted, 4);
        assert!(limiter.windows.len() <= 4);
    }
}
