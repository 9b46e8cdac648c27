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
//!
//! When the process is alone in its network namespace ([`IdleBenchConfig::private_netns`];
//! `wendy bench idle` arranges it with `unshare --net` when it runs as root), the kernel's own
//! counters are read too (UDP `OutDatagrams` in `/proc/net/snmp`, bytes sent on `lo` in
//! `/proc/net/dev`): they count every datagram the nodes sent, including those of links the
//! pool no longer holds, and then they are the headline figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

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
    /// The process is alone in its network namespace: read the kernel's UDP counters.
    pub private_netns: bool,
}

impl Default for IdleBenchConfig {
    /// 100 nodes and a window of [`DEFAULT_WINDOW`], so that `wendy bench all` fits in a
    /// quarter of an hour (see [`Self::with_window`]).
    fn default() -> Self {
        Self::with_window(DEFAULT_WINDOW)
    }
}

/// The default measurement window: every node's heartbeats and leaf-set probes many times
/// over, but (in expectation) only `window / maintenance_period` of a routing-table
/// maintenance round per node; a window of one maintenance period holds exactly one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(180);

impl IdleBenchConfig {
    /// 100 nodes and a measurement window of `window`. A window of at least one
    /// routing-table maintenance period opens half a period after the last join, so it holds
    /// exactly one maintenance round of every node (the first round comes 0.5 to 1.5 periods
    /// after a node starts, then one per period) and every heartbeat: the steady state, not a
    /// quiet stretch between rounds. A shorter one opens once the joins' own traffic (row
    /// refreshes, announcements, the hints' settling round and the links it opened) is over
    /// ([`super::join_traffic_ends`]).
    pub fn with_window(window: Duration) -> Self {
        let period = NodeConfig::default().pastry.maintenance_period;
        let warmup = if window >= period {
            period / 2 + Duration::from_secs(5)
        } else {
            super::join_traffic_ends()
        };
        Self {
            nodes: 100,
            warmup,
            window,
            seed: 1,
            private_netns: false,
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
            private_netns: false,
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
    /// Where the two headline figures come from: `kernel` (UDP counters of a private network
    /// namespace: everything sent) or `quic` (per-link QUIC statistics of pooled links).
    pub counted_by: String,
    /// UDP datagrams sent per node per second (kernel count when available, else QUIC's).
    pub control_msgs_per_node_per_s: f64,
    /// Bytes sent per node per second on the wire (kernel: bytes sent on `lo`; QUIC: UDP
    /// payload + 28 bytes of IPv4/UDP headers per datagram).
    pub control_bytes_per_node_per_s: f64,
    /// UDP datagrams per node per second from the kernel's counters (private namespace only).
    pub kernel_udp_datagrams_per_node_per_s: Option<f64>,
    /// Bytes per node per second sent on `lo` by the kernel's counters (private namespace only).
    pub kernel_lo_bytes_per_node_per_s: Option<f64>,
    /// UDP datagrams sent per node per second by QUIC's per-link statistics of pooled links.
    pub quic_datagrams_per_node_per_s: f64,
    /// The same in bytes (UDP payload + IPv4/UDP headers).
    pub quic_bytes_per_node_per_s: f64,
    /// UDP payload bytes (QUIC packets) sent per node per second.
    pub udp_payload_bytes_per_node_per_s: f64,
    /// Control messages the Pastry core sent per node per second (before QUIC).
    pub overlay_msgs_per_node_per_s: f64,
    /// Open links per node at the end of the window.
    pub links_per_node: f64,
    /// Links opened during the window, per node.
    pub links_opened_per_node: f64,
    /// Process CPU time (user + system) during the window, ms per node per second (Linux; `None`
    /// elsewhere): what the nodes' timers and upkeep cost a host that routes nothing. It
    /// includes the bench's own once-a-second look at every node's status.
    pub cpu_ms_per_node_per_s: Option<f64>,
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
    let mut cluster = super::cluster(config.seed);
    progress(&format!("idle: building {} nodes", config.nodes));
    super::grow(&mut cluster, config.nodes, progress).await?;
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
    let kernel_before = if config.private_netns {
        Some(KernelCounters::read()?)
    } else {
        None
    };
    let cpu_before = super::link::process_cpu_ticks();
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
    let kernel = match kernel_before {
        Some(before) => Some(KernelCounters::read()?.since(&before)),
        None => None,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ms = super::link::cpu_ms_per(cpu_before, config.nodes);
    cluster.shutdown().await;
    let per_node_s = (config.nodes as f64) * elapsed;
    let quic_datagrams = packets as f64 / per_node_s;
    let quic_bytes = (bytes + packets * IP_UDP_HEADER_BYTES) as f64 / per_node_s;
    let kernel_datagrams = kernel.map(|k| k.udp_out_datagrams as f64 / per_node_s);
    let kernel_bytes = kernel.map(|k| k.lo_tx_bytes as f64 / per_node_s);
    Ok(IdleBenchReport {
        nodes: config.nodes,
        window_s: elapsed,
        counted_by: if kernel.is_some() { "kernel" } else { "quic" }.into(),
        control_msgs_per_node_per_s: kernel_datagrams.unwrap_or(quic_datagrams),
        control_bytes_per_node_per_s: kernel_bytes.unwrap_or(quic_bytes),
        kernel_udp_datagrams_per_node_per_s: kernel_datagrams,
        kernel_lo_bytes_per_node_per_s: kernel_bytes,
        quic_datagrams_per_node_per_s: quic_datagrams,
        quic_bytes_per_node_per_s: quic_bytes,
        udp_payload_bytes_per_node_per_s: bytes as f64 / per_node_s,
        overlay_msgs_per_node_per_s: overlay_after.saturating_sub(overlay_before) as f64
            / per_node_s,
        links_per_node: links as f64 / config.nodes as f64,
        links_opened_per_node: opened as f64 / config.nodes as f64,
        cpu_ms_per_node_per_s: cpu_ms.map(|ms| ms / elapsed),
        mspastry_msgs_per_node_per_s: 0.5,
        bamboo_bytes_per_node_per_s: 900.0,
    })
}

/// The kernel's counters of this network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KernelCounters {
    udp_out_datagrams: u64,
    lo_tx_bytes: u64,
}

impl KernelCounters {
    fn read() -> Result<Self, BenchError> {
        let unreadable = |what: &str| BenchError::Invalid(format!("cannot read {what}"));
        let snmp =
            std::fs::read_to_string("/proc/net/snmp").map_err(|_| unreadable("/proc/net/snmp"))?;
        let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
        let (names, values) = udp
            .next()
            .zip(udp.next())
            .ok_or_else(|| unreadable("Udp in /proc/net/snmp"))?;
        let udp_out_datagrams = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "OutDatagrams")
            .and_then(|(_, value)| value.parse().ok())
            .ok_or_else(|| unreadable("OutDatagrams in /proc/net/snmp"))?;
        let dev =
            std::fs::read_to_string("/proc/net/dev").map_err(|_| unreadable("/proc/net/dev"))?;
        // `lo: rx_bytes rx_packets (6 more rx fields) tx_bytes ...`
        let lo_tx_bytes = dev
            .lines()
            .find_map(|line| line.trim_start().strip_prefix("lo:"))
            .and_then(|fields| fields.split_whitespace().nth(8))
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| unreadable("lo in /proc/net/dev"))?;
        Ok(Self {
            udp_out_datagrams,
            lo_tx_bytes,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            udp_out_datagrams: self
                .udp_out_datagrams
                .saturating_sub(before.udp_out_datagrams),
            lo_tx_bytes: self.lo_tx_bytes.saturating_sub(before.lo_tx_bytes),
        }
    }
}
