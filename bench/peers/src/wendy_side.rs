//! The Wendy cluster: real nodes on loopback, started and settled by `wendy::testing::Cluster`,
//! every node at `NodeConfig::default()`.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wendy::id::{Key, NodeId};
use wendy::identity::Identity;
use wendy::node::{Node, NodeConfig, NodeEvent};
use wendy::testing::{Cluster, Via};

use crate::measure::{
    baseline_rss, cpu_time, idle_rss, payload, per_node_mib, progress, quantile_ms, seq_of, Detail,
    Figures, RunConfig, Wire, WireFigures,
};

const NAME: &str = "wendy";
/// How long a lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster may take to settle after the build and between timed joins.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Sums over every node of the counters a lookup moves.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    hops: u64,
    reroutes: u64,
    control: u64,
}

async fn counts(nodes: &[Node]) -> Result<Counts, String> {
    let mut sum = Counts::default();
    for node in nodes {
        let status = node.status().await.map_err(|e| e.to_string())?;
        sum.hops += status.stats.delivered_hops_sum;
        sum.reroutes += status.reroutes;
        sum.control += status.control_msgs_sent;
    }
    Ok(sum)
}

/// Builds the cluster, then measures memory, idle traffic, lookups and joins, in that order.
pub async fn run(config: RunConfig) -> Result<Figures, String> {
    let rss_before = baseline_rss()?;
    let node_config = NodeConfig::default();
    // Only deliveries are read by the benchmark; other events are dropped as they come.
    let mut cluster =
        Cluster::new(config.seed).with_event_filter(|event| matches!(event, NodeEvent::Deliver(_)));
    progress(NAME, &format!("building {} nodes", config.nodes));
    let build_joins = cluster
        .grow(config.nodes, &node_config, Via::Random, &mut |_| {})
        .await
        .map_err(|e| format!("build: {e}"))?;
    let settle = cluster
        .settle(SETTLE_TIMEOUT)
        .await
        .map_err(|e| format!("settle: {e}"))?;
    progress(NAME, &format!("settled in {settle:?}; warming up"));
    tokio::time::sleep(config.warmup).await;

    progress(NAME, &format!("idle window of {:?}", config.idle_window));
    let idle_counts_before = counts(&cluster.nodes).await?;
    let idle_wire_before = Wire::read();
    tokio::time::sleep(config.idle_window).await;
    let idle_wire = Wire::read()
        .zip(idle_wire_before)
        .map(|(after, before)| after.since(before));
    let (rss_idle, rss_idle_trimmed) = idle_rss()?;
    let idle_counts = counts(&cluster.nodes).await?;
    let idle_control = idle_counts.control - idle_counts_before.control;

    progress(NAME, &format!("{} lookups", config.lookups));
    let ids: Vec<NodeId> = cluster.ids();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut latencies = Vec::with_capacity(config.lookups);
    let (mut correct, mut failed, mut local) = (0, 0, 0);
    let before = counts(&cluster.nodes).await?;
    let wire_before = Wire::read();
    let cpu_before = cpu_time();
    let phase_started = Instant::now();
    for seq in 0..config.lookups as u64 {
        let origin = rng.gen_range(0..cluster.nodes.len());
        let key = Key::from_u128(rng.gen());
        let truly_closest = key.closest(ids.iter().copied());
        let started = Instant::now();
        if cluster.nodes[origin]
            .route(key, payload(seq))
            .await
            .is_err()
        {
            failed += 1;
            continue;
        }
        let mut reached = None;
        while let Some(observed) = cluster.next_event(LOOKUP_TIMEOUT).await {
            if let NodeEvent::Deliver(delivery) = &observed.event {
                if seq_of(&delivery.payload) == Some(seq) {
                    reached = Some((observed.at, observed.when - started));
                    break;
                }
            }
        }
        match reached {
            Some((at, took)) => {
                latencies.push(took);
                if Some(at) == truly_closest {
                    correct += 1;
                }
                if at == ids[origin] {
                    local += 1;
                }
            }
            None => failed += 1,
        }
    }
    let phase = phase_started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let busy_wire = Wire::read()
        .zip(wire_before)
        .map(|(after, before)| after.since(before));
    let after = counts(&cluster.nodes).await?;
    let hops = after.hops - before.hops;
    let reroutes = after.reroutes - before.reroutes;
    // Each hop is one Route message and its per-hop RouteAck; a re-route sends the message
    // once more.
    let msgs = 2 * hops + reroutes;
    let control_background =
        idle_control as f64 / config.idle_window.as_secs_f64() * phase.as_secs_f64();
    let control = (after.control - before.control) as f64 - control_background;

    progress(NAME, &format!("{} timed joins", config.joins));
    let mut joins = Vec::with_capacity(config.joins);
    let mut joins_failed = 0;
    for _ in 0..config.joins {
        if let Err(e) = cluster.settle(SETTLE_TIMEOUT).await {
            progress(NAME, &format!("not settled before a join: {e}"));
        }
        let builder = Node::builder(Identity::generate()).config(node_config.clone());
        match cluster.add(builder, Via::Random).await {
            Ok(took) => joins.push(took),
            Err(e) => {
                progress(NAME, &format!("join failed: {e}"));
                joins_failed += 1;
            }
        }
    }
    cluster.shutdown().await;

    let lookups = config.lookups.max(1) as f64;
    let wire = WireFigures::new(
        config.nodes,
        idle_wire,
        config.idle_window,
        busy_wire,
        phase,
        config.lookups,
    );
    Ok(Figures {
        join_ms_p50: quantile_ms(&joins, 0.5),
        lookup_ms_p50: quantile_ms(&latencies, 0.5),
        lookup_ms_p99: quantile_ms(&latencies, 0.99),
        msgs_per_lookup: msgs as f64 / lookups,
        cpu_ms_per_lookup: cpu.as_secs_f64() * 1e3 / lookups,
        rss_mib_per_node: per_node_mib(rss_idle_trimmed, rss_before, config.nodes),
        idle_bytes_per_node_per_s: wire.idle_bytes_per_node_per_s,
        correct_fraction: correct as f64 / lookups,
        detail: Detail {
            nodes: config.nodes,
            build_join_ms_p50: quantile_ms(&build_joins, 0.5),
            settle_ms: settle.as_secs_f64() * 1e3,
            rss_mib_per_node_untrimmed: per_node_mib(rss_idle, rss_before, config.nodes),
            idle_window_s: config.idle_window.as_secs_f64(),
            idle_datagrams_per_node_per_s: wire.idle_datagrams_per_node_per_s,
            lookups: config.lookups,
            lookups_failed: failed,
            lookups_local: local,
            datagrams_per_lookup: wire.datagrams_per_lookup,
            bytes_per_lookup: wire.bytes_per_lookup,
            hops_or_requests_per_lookup: hops as f64 / lookups,
            side_msgs_per_lookup: control / lookups,
            lookup_phase_s: phase.as_secs_f64(),
            joins: config.joins,
            joins_failed,
            own_netns: config.own_netns,
        },
    })
}
