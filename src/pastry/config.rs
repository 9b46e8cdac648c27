//! The core's tunables.

use std::time::Duration;

#[cfg(doc)]
use super::{Event, Message, Pastry};

/// Tunables. [`Config::default`] gives the paper's structure sizes (b = 4, L = 16, M = 32) and
/// timers chosen to keep steady-state control traffic well under 0.5 messages per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Leaf-set size L (L/2 each side). Default 16.
    pub leaf_set_size: usize,
    /// Neighbourhood-set size M. Default 32.
    pub neighbourhood_size: usize,
    /// Use measured round-trip times to choose routing-table entries (proximity neighbour
    /// selection). When false no measurements are requested and the first peer found for a
    /// slot keeps it. Default true.
    pub proximity: bool,
    /// A slot is replaced only if the newcomer's RTT is below `old * (1 - h)`. Default 0.1.
    pub proximity_hysteresis: f64,
    /// Period of the leaf-set heartbeat each node sends its two immediate neighbours, and of
    /// leaf-set repair checks. Default 15 s.
    pub probe_period: Duration,
    /// How long to wait for a probe reply (and the slack after a missed heartbeat before the
    /// neighbour is probed). Default 3 s.
    pub probe_timeout: Duration,
    /// Probe retransmissions before a silent node is declared dead. Default 1.
    pub probe_retries: u8,
    /// Per-hop acknowledgement timeout for routed messages and joins when the next hop's RTT
    /// is unknown, and the cap otherwise (see [`Config::timeout_slack`]). Default 1 s.
    pub ack_timeout: Duration,
    /// Acks and probes to a peer with a measured RTT time out after `3 * rtt + slack` (capped
    /// by [`Config::ack_timeout`] / [`Config::probe_timeout`]). Default 50 ms.
    pub timeout_slack: Duration,
    /// How long a hop keeps a copy of a message its next hop acknowledged, waiting for that
    /// hop to pass it on ([`Message::RouteAck`] `done`), before routing it again another way
    /// (the next hop may have died holding it). Default 5 s.
    pub custody_timeout: Duration,
    /// Attempts (first try plus re-routes) per hop before a message is given up. Default 16
    /// (with RTT-based ack timeouts a dead hop costs about three RTTs).
    pub max_route_attempts: u8,
    /// Messages that have taken more hops than this are dropped (loop guard). Default 40.
    pub max_hops: u8,
    /// Period of routing-table maintenance: ask a random entry of one row for its row and
    /// measure the candidates. Default 60 s.
    pub maintenance_period: Duration,
    /// Emit [`Event::Forward`] before forwarding and wait for [`Pastry::resume_forward`].
    /// Default false.
    pub intercept_forwards: bool,
    /// A join not complete after this long is restarted. Default 20 s.
    pub join_timeout: Duration,
    /// After joining, ask this many of the nearest entries of each routing-table row for their
    /// row and measure the candidates (only with proximity). Default 3.
    pub join_row_refresh: usize,
    /// How many recently delivered `(origin, id)` pairs are remembered to drop duplicates.
    /// Default 128.
    pub dedup_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            leaf_set_size: 16,
            neighbourhood_size: 32,
            proximity: true,
            proximity_hysteresis: 0.1,
            probe_period: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(3),
            probe_retries: 1,
            ack_timeout: Duration::from_secs(1),
            timeout_slack: Duration::from_millis(50),
            custody_timeout: Duration::from_secs(5),
            max_route_attempts: 16,
            max_hops: 40,
            maintenance_period: Duration::from_secs(60),
            intercept_forwards: false,
            join_timeout: Duration::from_secs(20),
            join_row_refresh: 3,
            dedup_capacity: 128,
        }
    }
}
