//! The memory benchmark: resident memory per idle node, with many nodes in one process.
//!
//! First, per connection: `links_endpoints` bare transports are bound and every pair of them
//! linked; the increase of `VmRSS` divided by the connection states (two per link) is the cost
//! of one connection. They stay open (idle) to the end, so the memory they hold is not reused
//! by what follows. Then, per node: `VmRSS` is read before any node exists, after `nodes` nodes
//! are started (bound, not joined), and after they have all joined one overlay, settled and
//! idled for a while; per node = the whole increase divided by the node count. Run it in a
//! fresh process (as `wendy bench` does) so memory freed by earlier work does not hide new
//! allocations.

use std::time::Duration;

use serde::Serialize;

use super::{rss_kib, BenchError, Progress};
use crate::identity::{Identity, Validity};
use crate::node::Node;
use crate::testing::Via;
use crate::transport::{Admission, Transport, TransportConfig};

fn bare_transport_config(links: usize) -> Result<TransportConfig, BenchError> {
    let identity = Identity::generate();
    let certificate = identity.self_signed_certificate(Validity::days_from_now(1))?;
    let mut config = TransportConfig::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        identity,
        certificate,
        Admission::Open,
    );
    // Every link stays open to the end, idle, so the memory it holds is not reused by the
    // nodes measured after it.
    config.limits.max_idle_links = links;
    super::as_shipped(&mut config.limits);
    Ok(config)
}

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBenchConfig {
    /// Nodes in the process.
    pub nodes: usize,
    /// How long the settled cluster idles before the last reading. Default: until the join
    /// traffic is over ([`super::join_traffic_ends`], 75 s), so the links a build and its
    /// settling round opened once have closed and an idle node is measured, not one still
    /// holding its join's links.
    pub idle: Duration,
    /// Seed of the bootstrap choices.
    pub seed: u64,
    /// Bare transports linked pairwise to measure the cost of one connection.
    pub links_endpoints: usize,
}

impl Default for MemoryBenchConfig {
    fn default() -> Self {
        Self {
            nodes: 100,
            idle: super::join_traffic_ends(),
            seed: 1,
            links_endpoints: 20,
        }
    }
}

impl MemoryBenchConfig {
    /// Small sizes for a smoke run (`--quick`).
    pub fn quick() -> Self {
        Self {
            nodes: 16,
            idle: Duration::from_secs(1),
            seed: 1,
            links_endpoints: 6,
        }
    }
}

/// The memory benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryBenchReport {
    /// Nodes in the process.
    pub nodes: usize,
    /// Resident memory before any node existed, MiB.
    pub rss_mib_before: f64,
    /// Resident memory with every node joined and idle, MiB.
    pub rss_mib_after: f64,
    /// `(after - before) / nodes`, MiB: what one idle overlay node costs.
    pub rss_mib_per_node: f64,
    /// `rss_mib_per_node` after the allocator returned its free memory to the OS (glibc
    /// `malloc_trim`; `None` elsewhere): what the idle nodes really hold. The difference is
    /// memory freed after the join's peak that glibc keeps.
    pub rss_mib_per_node_after_trim: Option<f64>,
    /// The same for started but not yet joined nodes (socket, endpoint, tasks), MiB.
    pub rss_mib_per_node_unjoined: f64,
    /// QUIC links open at the end, per node.
    pub connections_per_node: f64,
    /// Memory of one connection state (one end of a link: QUIC, TLS, the link's tasks), KiB,
    /// measured with bare transports linked pairwise.
    pub rss_kib_per_connection: f64,
    /// Connection states measured for `rss_kib_per_connection`.
    pub connections_measured: usize,
    /// The goal, MiB per node.
    pub goal_mib_per_node: f64,
}

/// Runs the benchmark (needs a multi-threaded tokio runtime).
pub async fn run(
    config: MemoryBenchConfig,
    progress: Progress<'_>,
) -> Result<MemoryBenchReport, BenchError> {
    if config.nodes < 2 {
        return Err(BenchError::Invalid("need at least 2 nodes".into()));
    }
    let read = || {
        rss_kib().ok_or_else(|| BenchError::Invalid("VmRSS is not available (Linux only)".into()))
    };
    progress(&format!(
        "memory: linking {} bare transports pairwise",
        config.links_endpoints
    ));
    let mut transports = Vec::with_capacity(config.links_endpoints);
    for _ in 0..config.links_endpoints {
        transports.push(Transport::bind(bare_transport_config(config.links_endpoints)?).await?);
    }
    let before_links = read()?;
    for (i, (a, _)) in transports.iter().enumerate() {
        for (b, _) in &transports[i + 1..] {
            a.connect(b.local_addr(), Some(b.local_id())).await?;
        }
    }
    // Let the handshakes' last packets (HANDSHAKE_DONE, tickets) settle on both ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connection_states = transports
        .iter()
        .map(|(transport, _)| transport.links().len())
        .sum::<usize>();
    let after_links = read()?;
    let before = read()?;
    let mut cluster = super::cluster(config.seed);
    progress(&format!("memory: starting {} nodes", config.nodes));
    let mut spawned = Vec::with_capacity(config.nodes);
    for _ in 0..config.nodes {
        let builder = Node::builder(Identity::generate()).config(super::node_config());
        spawned.push(cluster.spawn(builder).await?);
    }
    let unjoined = read()?;
    progress(&format!("memory: joining {} nodes", config.nodes));
    for (i, node) in spawned.into_iter().enumerate() {
        cluster.join(node, Via::Random).await?;
        if (i + 1) % 25 == 0 {
            progress(&format!("  joined {}/{}", i + 1, config.nodes));
        }
    }
    cluster.settle(Duration::from_secs(60)).await?;
    progress(&format!("memory: idling {:?}", config.idle));
    tokio::time::sleep(config.idle).await;
    let after = read()?;
    let after_trim = if super::release_free_memory() {
        Some(read()?)
    } else {
        None
    };
    let mut connections = 0usize;
    for node in &cluster.nodes {
        connections += node.status().await?.connections.len();
    }
    cluster.shutdown().await;
    for (transport, _) in transports {
        transport.shutdown().await;
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let nodes = config.nodes as f64;
    Ok(MemoryBenchReport {
        nodes: config.nodes,
        rss_mib_before: mib(before),
        rss_mib_after: mib(after),
        rss_mib_per_node: mib(after.saturating_sub(before)) / nodes,
        rss_mib_per_node_after_trim: after_trim
            .map(|trimmed| mib(trimmed.saturating_sub(before)) / nodes),
        rss_mib_per_node_unjoined: mib(unjoined.saturating_sub(before)) / nodes,
        connections_per_node: connections as f64 / nodes,
        rss_kib_per_connection: after_links.saturating_sub(before_links) as f64
            / connection_states.max(1) as f64,
        connections_measured: connection_states,
        goal_mib_per_node: 2.0,
    })
}
