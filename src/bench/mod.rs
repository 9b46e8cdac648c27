//! Benchmarks that compare Wendy against baselines in one run (ratios, never timed unit tests).
//!
//! One module per suite; each has a `Config` (with a `quick()` variant small enough for CI), a
//! serialisable report whose field names are a contract for tools, and an async `run`.
//!
//! | suite | measures | baseline in the same run |
//! |---|---|---|
//! | [`link`] | one-way 200-byte messages/s over one link | raw quinn, one uni stream per message |
//! | [`route`] | 1-hop and multi-hop routed latency, routed msgs/s per node | raw quinn request/response on a bi stream |
//! | [`join`] | time for a node to join settled clusters of 32 and 100 nodes | — |
//! | [`memory`] | RSS per idle node (100 nodes in one process) and per connection | — |
//! | [`idle`] | UDP datagrams and bytes per node per second in an idle cluster | MSPastry 0.5 msg/s, Bamboo 900 B/s |
//! | [`regions`] | route latency over direct latency, 48 nodes in three emulated regions, end to end | the direct one-way latency origin -> root |
//! | [`sim`] | the simulator at 100,000 nodes: hops, stretch, wall time | Pastry 2001: 3.98 / 5 / 1.3 |
//!
//! The suites report progress through a callback (the CLI prints it on stderr); the library
//! itself never prints. Run them with `wendy bench all` (release build).

pub mod idle;
pub mod join;
pub mod link;
pub mod memory;
pub mod mesh;
pub mod regions;
pub mod route;
pub mod sim;

/// Sets what the `wendy` binary sets on top of the library's limits: its nodes give the heap
/// freed by closed links back to the operating system
/// ([`Limits::release_freed_memory`](crate::transport::Limits::release_freed_memory)), so the
/// suites measure the program that ships (the `memory` figures depend on it).
pub(crate) fn as_shipped(limits: &mut crate::transport::Limits) {
    limits.release_freed_memory = true;
}

/// The node configuration the `wendy` binary runs: the defaults, [`as_shipped`].
pub(crate) fn node_config() -> crate::node::NodeConfig {
    let mut config = crate::node::NodeConfig::default();
    as_shipped(&mut config.limits);
    config
}

/// How long after a cluster's last join its join traffic is over, as the shipped configuration
/// makes it: once the overlay stops growing, every node asks its sparse rows' entries for their
/// leaf sets once more (the hints' settling round: due two probe periods after the last
/// growth, run on the next heartbeat tick, one probe period apart; see `pastry::hints`), which
/// opens links that the pool closes after the idle-link timeout; then the heap those links
/// held is trimmed (within a few seconds). A node measured sooner is still joining, not idle.
pub fn join_traffic_ends() -> std::time::Duration {
    let config = node_config();
    let settled = config.pastry.probe_period * 3;
    settled + config.limits.idle_link_timeout + std::time::Duration::from_secs(10)
}

/// Where a suite reports its progress (one short line at a time).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Why a benchmark suite could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A node failed to start, join or answer.
    #[error("node: {0}")]
    Node(#[from] crate::node::NodeError),
    /// The in-process cluster failed (a node did not start or join, leaf sets did not settle).
    #[error("cluster: {0}")]
    Cluster(#[from] crate::testing::ClusterError),
    /// The transport could not start.
    #[error("transport: {0}")]
    Bind(#[from] crate::transport::BindError),
    /// A quinn config for the baseline could not be built.
    #[error("transport: {0}")]
    Config(#[from] crate::transport::ConfigError),
    /// A link could not be set up.
    #[error("transport: {0}")]
    Connect(#[from] crate::transport::ConnectError),
    /// A certificate could not be made.
    #[error("certificate: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// The raw quinn baseline failed.
    #[error("raw quinn: {0}")]
    Quinn(String),
    /// A measurement did not complete (lost messages, a cluster that did not settle, ...).
    #[error("{0}")]
    Incomplete(String),
    /// The configuration makes no sense.
    #[error("invalid benchmark: {0}")]
    Invalid(String),
}

/// Latency percentiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Samples taken.
    pub samples: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

impl Latency {
    /// Percentiles (nearest rank) of `samples_ms`; all zero when there are none.
    pub fn of(samples_ms: &mut [f64]) -> Self {
        if samples_ms.is_empty() {
            return Self::default();
        }
        samples_ms.sort_by(f64::total_cmp);
        Self {
            samples: samples_ms.len(),
            p50_ms: percentile_sorted(samples_ms, 0.5),
            p99_ms: percentile_sorted(samples_ms, 0.99),
            mean_ms: samples_ms.iter().sum::<f64>() / samples_ms.len() as f64,
        }
    }
}

/// An empty in-process cluster that keeps only the events a suite times (deliveries and direct
/// messages): the others are dropped as they come, so they cost no memory while nobody reads them.
pub(crate) fn cluster(seed: u64) -> crate::testing::Cluster {
    crate::testing::Cluster::new(seed).with_event_filter(|event| {
        matches!(
            event,
            crate::node::NodeEvent::Deliver(_) | crate::node::NodeEvent::Direct { .. }
        )
    })
}

/// Grows `cluster` to `size` nodes with the shipped configuration, each joining through a
/// random member; returns their join times in ms (the first node's excluded) and reports
/// progress about once a second.
pub(crate) async fn grow(
    cluster: &mut crate::testing::Cluster,
    size: usize,
    progress: Progress<'_>,
) -> Result<Vec<f64>, BenchError> {
    let mut last = std::time::Instant::now();
    let config = node_config();
    let joins = cluster
        .grow(size, &config, crate::testing::Via::Random, &mut |joined| {
            if last.elapsed() > std::time::Duration::from_secs(1) || joined == size {
                progress(&format!("  joined {joined}/{size} nodes"));
                last = std::time::Instant::now();
            }
        })
        .await?;
    Ok(joins.iter().map(|d| d.as_secs_f64() * 1e3).collect())
}

/// A duration in milliseconds.
pub(crate) fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A payload of `size` bytes that starts with `seq`.
pub(crate) fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut payload = vec![0x5a; size.max(8)];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The `q` quantile (nearest rank) of sorted, non-empty `values`.
pub(crate) fn percentile_sorted(values: &[f64], q: f64) -> f64 {
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// The median of `values` (nearest rank), 0 when empty.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    percentile_sorted(values, 0.5)
}

/// The resident set size of this process (`VmRSS` in `/proc/self/status`), in KiB (Linux).
pub fn rss_kib() -> Option<u64> {
    crate::sim::proc_status_kib("VmRSS")
}

/// Asks the C allocator to give the memory it holds free back to the operating system
/// (glibc `malloc_trim(0)`); returns whether it could (glibc on Linux only).
///
/// glibc keeps freed memory inside its arenas: after a burst (a join opens and closes dozens of
/// links), `VmRSS` stays at the burst's peak although the program no longer uses it. Reading
/// `VmRSS` after a trim shows what the program really holds.
pub fn release_free_memory() -> bool {
    crate::transport::heap::release()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let latency = Latency::of(&mut samples);
        assert_eq!(latency.samples, 100);
        assert_eq!(latency.p50_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.mean_ms, 50.5);
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kib().is_some_and(|kib| kib > 0));
        }
    }
}
