//! The mesh's settings.

use std::time::Duration;

use super::MeshError;

/// Settings of a [`Mesh`](super::Mesh). `Default` suits a LAN or the internet.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// How many nodes hold each name's records: the root and the next closest. Default 3.
    pub replicas: usize,
    /// How long a published record is valid. Default 60 s.
    pub record_ttl: Duration,
    /// How often providers republish (and holders drop expired records). Default 20 s
    /// (a third of the TTL, so two republications may be lost before a record expires).
    pub republish_interval: Duration,
    /// How long a registry request (publish or lookup) waits for the answer. Default 3 s.
    pub request_timeout: Duration,
    /// How many times a registry request is sent before giving up. Default 3.
    pub request_attempts: u32,
    /// How long opening a tunnel to one provider may take (QUIC dial, stream, the provider's
    /// connection to its service). Default 5 s.
    pub connect_timeout: Duration,
    /// How long a lookup's result is reused for new connections. Default 10 s.
    pub lookup_cache: Duration,
    /// How long a provider that failed is tried after the others. Default 30 s.
    pub failure_memory: Duration,
    /// Capacity of the [`Events`](crate::node::Events) channel handed back to the application; when it is full the
    /// newest event is dropped and counted in [`MeshStatus::events_dropped`](super::MeshStatus::events_dropped). Default 4096.
    pub event_capacity: usize,
    /// The longest record lifetime this node stores or believes (records expiring later are
    /// refused with [`RecordError::TooFarInFuture`](super::RecordError::TooFarInFuture)). Default twice the TTL, at least 1 h.
    pub max_record_ttl: Duration,
    /// The most providers this node stores per name for others. Default 64.
    pub max_providers_per_name: usize,
    /// The most names this node stores records for. Default 10,000.
    pub max_names_held: usize,
    /// The most providers one connection tries before it is closed. Default 4.
    pub max_tunnel_attempts: usize,
    /// The longest one connection spends trying providers, all attempts together (each one is
    /// also bounded by [`MeshConfig::connect_timeout`]); when it is spent the connection fails
    /// with [`MeshError::Unreachable`] even if untried providers remain. Registry lookups are
    /// not counted (they have their own timeout and attempts). `Duration::MAX` means no
    /// deadline. Default 8 s.
    pub connect_deadline: Duration,
    /// The most registry answers and replications in flight at once; beyond it they are
    /// dropped (and counted in [`MeshStatus::sends_dropped`](super::MeshStatus::sends_dropped)). Default 64.
    pub max_pending_sends: usize,
    /// The most tunnels this node serves at once as a provider (each holds a TCP connection to
    /// its target); beyond it new tunnels are refused as unavailable. Default 1024.
    pub max_provider_tunnels: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self::with_ttl(Duration::from_secs(60))
    }
}

impl MeshConfig {
    /// The default settings with this record TTL, republished every third of it.
    pub fn with_ttl(record_ttl: Duration) -> Self {
        Self {
            replicas: 3,
            record_ttl,
            republish_interval: record_ttl / 3,
            request_timeout: Duration::from_secs(3),
            request_attempts: 3,
            connect_timeout: Duration::from_secs(5),
            lookup_cache: Duration::from_secs(10),
            failure_memory: Duration::from_secs(30),
            event_capacity: 4096,
            max_record_ttl: record_ttl.saturating_mul(2).max(Duration::from_secs(3600)),
            max_providers_per_name: 64,
            max_names_held: 10_000,
            max_tunnel_attempts: 4,
            connect_deadline: Duration::from_secs(8),
            max_pending_sends: 64,
            max_provider_tunnels: 1024,
        }
    }
}

/// Checks that `target` looks like `HOST:PORT` with a non-zero port (the host is resolved at
/// each tunnel, so a name like `localhost` is fine).
pub fn validate_target(target: &str) -> Result<(), MeshError> {
    let ok = target
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(MeshError::BadTarget(target.to_owned()))
    }
}
