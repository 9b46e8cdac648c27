//! The memory benchmark: resident memory per idle node, with many nodes in one process.
//!
//! `VmRSS` of this process is read before any node exists, after `nodes` nodes are started
//! (bound, not joined), and after they have all joined one overlay, settled and idled for a
//! while. Per node = the whole increase divided by the node count; per connection = the
//! increase from joining divided by the QUIC links open at the end (each endpoint of a link
//! counted once, as each holds its own connection state). Run it in a fresh process (as
//! `wendy bench` does) so memory freed by earlier work does not hide new allocations.

use std::time::Duration;

use serde::Serialize;

use super::cluster::Cluster;
use super::{rss_kib, BenchError, Progress};
use crate::node::NodeConfig;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBenchConfig {
    /// Nodes in the process.
    pub nodes: usize,
    /// How long the settled cluster idles before the last reading.
    pub idle: Duration,
    /// Seed of the bootstrap choices.
    pub seed: u64,
}

impl Default for MemoryBenchConfig {
    fn default() -> Self {
        Self {
            nodes: 100,
            idle: Duration::from_secs(30),
            seed: 1,
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
    /// The same for started but not yet joined nodes (socket, endpoint, tasks), MiB.
    pub rss_mib_per_node_unjoined: f64,
    /// QUIC links open at the end, per node.
    pub connections_per_node: f64,
    /// Memory added by joining, per open link, KiB.
    pub rss_kib_per_connection: f64,
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
    let before = read()?;
    let mut cluster = Cluster::new(NodeConfig::default(), config.seed);
    progress(&format!("memory: starting {} nodes", config.nodes));
    let mut spawned = Vec::with_capacity(config.nodes);
    for _ in 0..config.nodes {
        spawned.push(cluster.spawn_node().await?);
    }
    let unjoined = read()?;
    progress(&format!("memory: joining {} nodes", config.nodes));
    for (i, node) in spawned.into_iter().enumerate() {
        cluster.join(node).await?;
        if (i + 1) % 25 == 0 {
            progress(&format!("  joined {}/{}", i + 1, config.nodes));
        }
    }
    cluster.settle(Duration::from_secs(60)).await?;
    progress(&format!("memory: idling {:?}", config.idle));
    tokio::time::sleep(config.idle).await;
    let after = read()?;
    let mut connections = 0usize;
    for node in &cluster.nodes {
        connections += node.status().await?.connections.len();
    }
    cluster.shutdown().await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let nodes = config.nodes as f64;
    Ok(MemoryBenchReport {
        nodes: config.nodes,
        rss_mib_before: mib(before),
        rss_mib_after: mib(after),
        rss_mib_per_node: mib(after.saturating_sub(before)) / nodes,
        rss_mib_per_node_unjoined: mib(unjoined.saturating_sub(before)) / nodes,
        connections_per_node: connections as f64 / nodes,
        rss_kib_per_connection: after.saturating_sub(unjoined) as f64 / connections.max(1) as f64,
        goal_mib_per_node: 2.0,
    })
}
