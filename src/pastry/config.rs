//! The core's tunables.

use std::time::Duration;

#[cfg(doc)]
use super::{Event, Message, Pastry};

/// Tunables. [`Config::default`] gives the paper's structure sizes (b = 4, L = 16, M = 32) and
/// timers chosen to keep steady-state control traffic well under 0.5 messages per second.
///
/// It is the one source of defaults: the node runtime ships it unchanged
/// (`NodeConfig::default().pastry`) and the simulator runs it, so simulated figures describe the
/// configuration users get. [`Config::validate`] checks a configuration before use.
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
    /// by [`Config::ack_timeout`] / [`Config::probe_timeout`]). Default 250 ms: on a real host
    /// acks and probe replies are late by the OS's scheduling jitter (tens of ms on a loaded
    /// machine), not only by the RTT, and a tighter slack makes live peers look dead and
    /// re-routes messages that were on their way.
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
    /// measure the candidates. Default 1,200 s, MSPastry's period: over QUIC, measuring a
    /// candidate without a link is a handshake (a few KB both ways), so frequent rounds would be
    /// most of an idle node's traffic, and the join already fills the table with near entries.
    pub maintenance_period: Duration,
    /// Emit [`Event::Forward`] before forwarding and wait for [`Pastry::resume_forward`].
    /// Default false. The node runtime turns it on when the application installed a forward
    /// hook (`NodeBuilder::on_forward`); without one, the core forwards without asking.
    pub intercept_forwards: bool,
    /// A join not complete after this long is restarted; the node runtime's `Node::join` gives
    /// up after the same time. Default 10 s.
    pub join_timeout: Duration,
    /// After joining, ask this many of the nearest entries of each routing-table row for their
    /// row and measure the candidates (only with proximity). Default 3.
    pub join_row_refresh: usize,
    /// How many recently delivered `(origin, id)` pairs are remembered to drop duplicates.
    /// Default 128.
    pub dedup_capacity: usize,
    /// Roots (with their leaf sets) remembered from their answers, so that later messages for
    /// keys in their ranges go straight to the root; least recently used first out. 0 turns
    /// the route cache off (and roots no longer answer). Default 128.
    pub route_cache_size: usize,
    /// A cached root is forgotten this long after its answer (or a confirmation). Default
    /// 120 s.
    pub route_cache_ttl: Duration,
    /// Whether to learn the neighbourhoods of sparse routing-table rows' slots (neighbour
    /// hints: a few probes per slot per maintenance period), so first routes to a key skip
    /// their final hops. Off, a first route takes the table's hops and the leaf-set hop, and
    /// only the route cache shortens later ones. Default true.
    pub neighbour_hints: bool,
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
            timeout_slack: Duration::from_millis(250),
            custody_timeout: Duration::from_secs(5),
            max_route_attempts: 16,
            max_hops: 40,
            maintenance_period: Duration::from_secs(1200),
            intercept_forwards: false,
            join_timeout: Duration::from_secs(10),
            join_row_refresh: 3,
            dedup_capacity: 128,
            route_cache_size: 128,
            route_cache_ttl: Duration::from_secs(120),
            neighbour_hints: true,
        }
    }
}

/// Why a [`Config`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The leaf set needs the same number of members on each side, at least one.
    #[error("leaf_set_size must be even and at least 2 (got {0})")]
    LeafSetSize(usize),
    /// A size, count or period that must be positive is zero.
    #[error("{0} must be above zero")]
    Zero(&'static str),
    /// The hysteresis is a fraction of the old RTT.
    #[error("proximity_hysteresis must be at least 0 and below 1 (got {0})")]
    Hysteresis(f64),
}

impl Config {
    /// Checks that every field is usable: an even leaf-set size of at least 2, positive sizes,
    /// periods and timeouts, at least one route attempt and hop, a hysteresis in `[0, 1)`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.leaf_set_size < 2 || self.leaf_set_size % 2 != 0 {
            return Err(ConfigError::LeafSetSize(self.leaf_set_size));
        }
        if !(0.0..1.0).contains(&self.proximity_hysteresis) {
            return Err(ConfigError::Hysteresis(self.proximity_hysteresis));
        }
        let positive = [
            ("neighbourhood_size", self.neighbourhood_size > 0),
            ("probe_period", !self.probe_period.is_zero()),
            ("probe_timeout", !self.probe_timeout.is_zero()),
            ("ack_timeout", !self.ack_timeout.is_zero()),
            ("custody_timeout", !self.custody_timeout.is_zero()),
            ("max_route_attempts", self.max_route_attempts > 0),
            ("max_hops", self.max_hops > 0),
            ("maintenance_period", !self.maintenance_period.is_zero()),
            ("join_timeout", !self.join_timeout.is_zero()),
            ("dedup_capacity", self.dedup_capacity > 0),
            ("route_cache_ttl", !self.route_cache_ttl.is_zero()),
        ];
        match positive.into_iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(ConfigError::Zero(field)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_bad_values_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        for size in [0, 1, 7] {
            let config = Config {
                leaf_set_size: size,
                ..Config::default()
            };
            assert_eq!(config.validate(), Err(ConfigError::LeafSetSize(size)));
        }
        let config = Config {
            probe_period: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::Zero("probe_period")));
        let config = Config {
            proximity_hysteresis: 1.0,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::Hysteresis(1.0)));
        assert!(ConfigError::Zero("max_hops")
            .to_string()
            .contains("max_hops"));
    }
}
