//! The idle benchmark: control traffic per node per second in an idle cluster, on the wire.
//!
//! A cluster is built and settled, left to idle for a warm-up, and then for a measurement
//! window nobody routes anything: whatever the nodes send is the overlay's upkeep (heartbeats,
//! probes, maintenance, RTT measurements, their QUIC handshakes and acknowledgements, QUIC
//! keep-alives). It is counted from QUIC's own per-connection UDP statistics, read from every
//! node's [`Status::connections`](crate::node::Status::connections) once per second and summed
//! as deltas per link (a link seen for the first time counts from zero, so new links' handshakes
//! are included; a link closed between two readings loses only what it sent since the last
//! one). Bytes on the wire add the 28 bytes of IPv4 and UDP headers to each datagram's payload.
//! The Pastry core's own count of control messages is reported beside it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cluster::Cluster;
use super::{BenchError, Progress};
use crate::id::NodeId;
use crate::node::NodeConfig;

/// IPv4 (20) + UDP (8) header bytes per datagram.
const IP_UDP_HEADER_BYTES: u64 = 28;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleBenchConfig {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Idle time after the cluster settled, before the window opens.
    pub warmup: Duration,
    /// The measurement window.
    pub window: Duration,
    /// Seed of the bootstrap choices.
    pub seed: u64,
}

impl Default for IdleBenchConfig {
    fn default() -> Self {
        Self {
            nodes: 100,
            warmup: Duration::from_secs(30),
            window: Duration::from_secs(120),
            seed: 1,
        }
    }
}

impl IdleBenchConfig {
    /// Small sizes for a smoke run (`--quick`).
    pub fn quick() -> Self {
        Self {
            nodes: 12,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(3),
            seed: 1,
        }
    }
}

/// The idle benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleBenchReport {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Length of the window, s.
    pub window_s: f64,
    /// UDP datagrams sent per node per second.
    pub control_msgs_per_node_per_s: f64,
    /// Bytes sent per node per second on the wire (UDP payload + IPv4/UDP headers).
    pub control_bytes_per_node_per_s: f64,
    /// UDP payload bytes (QUIC packets) sent per node per second.
    pub udp_payload_bytes_per_node_per_s: f64,
    /// Control messages the Pastry core sent per node per second (before QUIC).
    pub overlay_msgs_per_node_per_s: f64,
    /// Open links per node at the end of the window.
    pub links_per_node: f64,
    /// Links opened during the window, per node.
    pub links_opened_per_node: f64,
    /// MSPastry's control traffic, msgs per node per second (the anchor to stay below).
    pub mspastry_msgs_per_node_per_s: f64,
    /// Bamboo's control traffic, bytes per node per second (the anchor to stay below).
    pub bamboo_bytes_per_node_per_s: f64,
}

/// Per node: the last counters seen per peer link.
type LinkCounters = HashMap<NodeId, (u64, u64)>;

/// Runs the benchmark (needs a multi-threaded tokio runtime).
pub async fn run(
    config: IdleBenchConfig,
    progress: Progress<'_>,
) -> Result<IdleBenchReport, BenchError> {
    if config.nodes < 2 || config.window.is_zero() {
        return Err(BenchError::Invalid(
            "need at least 2 nodes and a non-empty window".into(),
        ));
    }
    let mut cluster = Cluster::new(NodeConfig::default(), config.seed);
    progress(&format!("idle: building {} nodes", config.nodes));
    cluster.grow(config.nodes, progress).await?;
    cluster.settle(Duration::from_secs(60)).await?;
    progress(&format!("idle: warming up for {:?}", config.warmup));
    tokio::time::sleep(config.warmup).await;

    let mut last: Vec<LinkCounters> = vec![HashMap::new(); cluster.nodes.len()];
    let (mut packets, mut bytes, mut opened) = (0u64, 0u64, 0u64);
    let mut overlay_before = 0u64;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let status = node.status().await?;
        overlay_before += status.control_msgs_sent;
        for link in status.connections {
            last[i].insert(link.id, (link.packets_sent, link.bytes_sent));
        }
    }
    progress(&format!("idle: measuring for {:?}", config.window));
    let started = Instant::now();
    let end = started + config.window;
    let (overlay_after, links) = loop {
        let now = Instant::now();
        let last_round = now >= end;
        if !last_round {
            tokio::time::sleep((end - now).min(Duration::from_secs(1))).await;
        }
        let (mut overlay_after, mut links) = (0u64, 0usize);
        for (i, node) in cluster.nodes.iter().enumerate() {
            let status = node.status().await?;
            overlay_after += status.control_msgs_sent;
            links += status.connections.len();
            let mut seen = HashMap::with_capacity(status.connections.len());
            for link in status.connections {
                let now = (link.packets_sent, link.bytes_sent);
                let before = match last[i].get(&link.id) {
                    // The same link, or a newer one to the same peer whose counters restarted.
                    Some(&(p, b)) if now.0 >= p && now.1 >= b => (p, b),
                    _ => {
                        opened += 1;
                        (0, 0)
                    }
                };
                packets += now.0 - before.0;
                bytes += now.1 - before.1;
                seen.insert(link.id, now);
            }
            last[i] = seen;
        }
        if last_round {
            break (overlay_after, links);
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    cluster.shutdown().await;
    let per_node_s = (config.nodes as f64) * elapsed;
    Ok(IdleBenchReport {
        nodes: config.nodes,
        window_s: elapsed,
        control_msgs_per_node_per_s: packets as f64 / per_node_s,
        control_bytes_per_node_per_s: (bytes + packets * IP_UDP_HEADER_BYTES) as f64 / per_node_s,
        udp_payload_bytes_per_node_per_s: bytes as f64 / per_node_s,
        overlay_msgs_per_node_per_s: overlay_after.saturating_sub(overlay_before) as f64
            / per_node_s,
        links_per_node: links as f64 / config.nodes as f64,
        links_opened_per_node: opened as f64 / config.nodes as f64,
        mspastry_msgs_per_node_per_s: 0.5,
        bamboo_bytes_per_node_per_s: 900.0,
    })
}
