//! The regions benchmark: route latency over real nodes in three emulated regions, end to end,
//! against the direct latency between the route's origin and its root.
//!
//! - **Network**: every node is bound through a [`DelaySocket`] on
//!   [`RegionMap::three_regions`] (1 ms round trip inside a region, 25 ms between regions 0 and
//!   1, 80 ms to region 2), an equal share of the nodes per region. Each node joins through a
//!   member of its own region (Pastry's nearby bootstrap) with the shipped configuration.
//! - **Settling**: leaf sets must match the oracle's; then the routing tables are read once a
//!   second until they stop changing for [`RegionsBenchConfig::stable_for`] or
//!   [`RegionsBenchConfig::settle_max`] passes (the report says which).
//! - **Loopback floor**: each node sends a plain direct message to a peer it already has a link
//!   to; the measured time minus the pair's emulated one-way delay is what this process adds to
//!   any one-way message (QUIC, the runtime, the event hand-over). Its median is reported.
//! - **Routes**: seeded keys, each from a seeded origin that is not the key's root, one message
//!   in flight at a time. `first`: the origin's first message to the key. `repeat`: later
//!   messages from the same origin to the same key, sent after every first route was delivered
//!   (so the root's answer that fills the route cache has arrived). Each is timed from the
//!   origin's [`Node::route`] call until the root's application reads the delivery (one
//!   process, one clock) and divided by the direct one-way latency: half the emulated round
//!   trip between the two regions (`stretch`), and that plus the loopback floor
//!   (`..._with_floor`). A forward hook records every hop, so each route's emulated delay
//!   along the hops it took is known too (`path_ratio_of_means`: the overlay's choice of hops,
//!   independent of this machine's load; `excess`: what the measured time adds to it). Before
//!   each route the suite notes which pairs of nodes have a pooled link (a lookup, no
//!   message): a route with a hop between two nodes without one paid a QUIC handshake first
//!   (`first_contact_routes`), and `ratio_of_means_over_links` leaves those routes out.
//! - **Measured direct baseline**: right after each route, when its origin already holds a
//!   link to the root, the origin sends the root a plain direct message over the same nodes
//!   and sockets, timed exactly like the route (the send call until the root's application
//!   reads it). Only over an existing link, because a new link would change the routes that
//!   follow (a root answers, and a route cache sends, only over links). After the last round,
//!   a pair still without a sample gets an untimed direct message first (its handshake) and
//!   then a timed one (`measured_direct_warmed_pairs`). Each pair's baseline is the median of
//!   its samples, and `..._vs_measured_direct` divides by it: direct and routed messages pay
//!   the same per-message cost of this process, so the ratio is the overlay's alone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{ms, payload, BenchError, Progress};
use crate::id::{Key, NodeId};
use crate::identity::Identity;
use crate::node::{ForwardAction, Node, NodeEvent};
use crate::testing::{seq_of, Cluster, DelaySocket, Observed, RegionMap, Via};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionsBenchConfig {
    /// Nodes, spread evenly over the three regions.
    pub nodes: usize,
    /// Keys routed to (one origin each).
    pub keys: usize,
    /// Messages per key after the first, from the same origin.
    pub repeats: usize,
    /// Payload bytes.
    pub size: usize,
    /// Seed of identities, origins and keys.
    pub seed: u64,
    /// Routing tables count as settled once unchanged for this long.
    pub stable_for: Duration,
    /// The longest the routing tables are given to settle.
    pub settle_max: Duration,
}

impl Default for RegionsBenchConfig {
    fn default() -> Self {
        Self {
            nodes: 48,
            keys: 120,
            repeats: 3,
            size: 200,
            seed: 1,
            stable_for: Duration::from_secs(5),
            settle_max: Duration::from_secs(30),
        }
    }
}

impl RegionsBenchConfig {
    /// Small sizes for a smoke run (`--quick`).
    pub fn quick() -> Self {
        Self {
            nodes: 12,
            keys: 12,
            repeats: 2,
            size: 200,
            seed: 1,
            stable_for: Duration::from_secs(1),
            settle_max: Duration::from_secs(5),
        }
    }
}

/// Route latency over direct latency for one kind of route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stretch {
    /// Routes measured.
    pub samples: usize,
    /// Mean of the per-route ratios (measured / emulated direct one-way).
    pub mean: f64,
    /// Median of the per-route ratios.
    pub median: f64,
    /// 95th percentile of the per-route ratios.
    pub p95: f64,
    /// Mean measured latency over mean emulated direct one-way latency.
    pub ratio_of_means: f64,
    /// Mean measured latency over the mean of (emulated direct one-way + loopback floor).
    pub ratio_of_means_with_floor: f64,
    /// Mean of the per-route ratios against emulated direct one-way + loopback floor.
    pub mean_with_floor: f64,
    /// Mean emulated delay along the hops taken over mean emulated direct one-way (the
    /// overlay's choice of hops alone).
    pub path_ratio_of_means: f64,
    /// Mean measured latency, ms.
    pub latency_mean_ms: f64,
    /// Mean emulated direct one-way latency, ms.
    pub direct_mean_ms: f64,
    /// Mean emulated delay along the hops taken, ms.
    pub path_mean_ms: f64,
    /// Measured minus emulated path delay: median, ms.
    pub excess_p50_ms: f64,
    /// Measured minus emulated path delay: 95th percentile, ms.
    pub excess_p95_ms: f64,
    /// Measured minus emulated path delay: maximum, ms.
    pub excess_max_ms: f64,
    /// Mean overlay hops.
    pub mean_hops: f64,
    /// Most overlay hops.
    pub max_hops: u8,
    /// Routes by hop count.
    pub by_hops: std::collections::BTreeMap<u8, usize>,
    /// Routes with a hop between two nodes that had no link when the route was sent (the
    /// hop's node dialled first: a QUIC handshake before the message could go).
    pub first_contact_routes: usize,
    /// Measured minus emulated path delay of those routes: median, ms.
    pub first_contact_excess_p50_ms: f64,
    /// Ratio of means over the routes whose every hop had a link.
    pub ratio_of_means_over_links: f64,
    /// Ratio of means over those routes, against emulated direct one-way + loopback floor.
    pub ratio_of_means_over_links_with_floor: f64,
    /// Routes whose recorded hops do not chain from origin to root (a hop re-routed after a
    /// missing ack, which the forward hook does not see): their path figures are left out.
    pub incomplete_paths: usize,
    /// Mean of the routes' measured direct baselines (their pair's median direct message,
    /// end to end), ms.
    pub measured_direct_mean_ms: f64,
    /// Mean measured latency over `measured_direct_mean_ms`.
    pub ratio_of_means_vs_measured_direct: f64,
    /// Mean of the per-route ratios against the pair's measured direct baseline.
    pub mean_vs_measured_direct: f64,
    /// Median of the per-route ratios against the pair's measured direct baseline.
    pub median_vs_measured_direct: f64,
    /// 95th percentile of the per-route ratios against the pair's measured direct baseline.
    pub p95_vs_measured_direct: f64,
}

/// The regions benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionsBenchReport {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Emulated regions.
    pub regions: usize,
    /// Round-trip times between regions, ms.
    pub region_rtt_ms: Vec<Vec<f64>>,
    /// Payload bytes.
    pub size: usize,
    /// Keys routed to.
    pub keys: usize,
    /// Messages per key after the first.
    pub repeats: usize,
    /// What "direct latency" means in `stretch` (and in `..._with_floor`).
    pub direct_is: String,
    /// Time for every leaf set to match the oracle's after the last join, ms.
    pub leaf_sets_settled_ms: f64,
    /// Time until the routing tables stopped changing (or the bound), ms.
    pub tables_settled_ms: f64,
    /// Whether the routing tables stopped changing before the bound.
    pub tables_stable: bool,
    /// Routing-table entries, all nodes, when routing began.
    pub table_entries: usize,
    /// Of those, the ones in the holder's own region.
    pub table_entries_same_region: usize,
    /// Median of (measured direct message - emulated one-way) over existing links, ms.
    pub loopback_floor_ms: f64,
    /// Direct messages behind `loopback_floor_ms`.
    pub loopback_floor_samples: usize,
    /// First route from an origin to a key.
    pub stretch_first: Stretch,
    /// Later routes from the same origin to the same key.
    pub stretch_repeat: Stretch,
    /// Routes sent (first and repeated).
    pub routes: usize,
    /// Routes delivered at the key's true root (the closest live id), exactly once.
    pub delivered_at_root: usize,
    /// What the measured direct baseline (`..._vs_measured_direct`) is.
    pub measured_direct_is: String,
    /// Timed direct messages behind the measured direct baselines.
    pub measured_direct_samples: usize,
    /// Pairs whose only sample was taken after the routes, behind an untimed first message
    /// (the pair had no link during any round).
    pub measured_direct_warmed_pairs: usize,
    /// Median of (measured direct message - emulated one-way) over the pairs' samples, ms:
    /// this process's cost per one-way message, on the routes' own pairs.
    pub measured_direct_floor_ms: f64,
    /// Messages sent straight to a cached root (all nodes, status counters).
    pub route_cache_hits: u64,
    /// Of those, the ones another node answered for.
    pub route_cache_stale: u64,
    /// Own messages whose cached root had no link, sent through the routing table instead.
    pub route_cache_unlinked: u64,
    /// Links asked for to such roots, in the background (all nodes).
    pub route_cache_links_requested: u64,
    /// Roots' answers sent back along the route, the root holding no link to the origin.
    pub root_answers_relayed: u64,
}

/// How long any single message may take before the run is declared broken (a hang guard).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The hops each message took: sequence number -> (forwarding node, next hop), in order.
type Paths = Arc<Mutex<HashMap<u64, Vec<(NodeId, NodeId)>>>>;

/// One measured route.
struct Sample {
    latency_ms: f64,
    direct_ms: f64,
    /// Emulated delay along the recorded hops, if they chain from origin to root.
    path_ms: Option<f64>,
    hops: u8,
    /// Whether a recorded hop had no link when the route was sent.
    first_contact: bool,
    /// The route's (origin, root) pair: an index into the suite's pairs.
    pair: usize,
}

/// Runs the benchmark (needs a multi-threaded tokio runtime).
pub async fn run(
    config: RegionsBenchConfig,
    progress: Progress<'_>,
) -> Result<RegionsBenchReport, BenchError> {
    let map = RegionMap::three_regions();
    let regions = map.region_count();
    if config.nodes < 2 * regions || config.keys == 0 || config.size < 8 {
        return Err(BenchError::Invalid(format!(
            "need at least {} nodes, 1 key and 8 payload bytes",
            2 * regions
        )));
    }
    let paths: Paths = Arc::default();
    let mut cluster = super::cluster(config.seed);
    progress(&format!(
        "regions: building {} nodes in {regions} regions",
        config.nodes
    ));
    let node_config = super::node_config();
    let mut last = Instant::now();
    for i in 0..config.nodes {
        let region = i % regions;
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&config.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        let identity = Identity::from_seed(seed);
        let me = identity.node_id();
        let socket = DelaySocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &map, region)
            .map_err(|e| BenchError::Incomplete(format!("cannot bind a delaying socket: {e}")))?;
        let record = paths.clone();
        let builder = Node::builder(identity)
            .seed(config.seed ^ ((i as u64) << 16))
            .config(node_config.clone())
            .socket(socket)
            .on_forward(move |forwarded, payload| {
                if let Some(seq) = seq_of(payload) {
                    record
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(seq)
                        .or_default()
                        .push((me, forwarded.next_hop));
                }
                ForwardAction::Continue
            });
        // Each node joins through a member of its own region (the first one of each region
        // through node 0).
        let via = if i < regions { 0 } else { region };
        cluster.add(builder, Via::Member(via)).await?;
        if last.elapsed() > Duration::from_secs(1) || i + 1 == config.nodes {
            progress(&format!("  joined {}/{}", i + 1, config.nodes));
            last = Instant::now();
        }
    }
    let leaf_sets_settled = cluster.settle(Duration::from_secs(60)).await?;
    progress("regions: waiting for routing tables to stop changing");
    let (tables_settled, tables_stable) = settle_tables(&cluster, &config).await?;

    let ids = cluster.ids();
    let addr_of: HashMap<NodeId, SocketAddr> =
        cluster.nodes.iter().map(|n| (n.id(), n.addr())).collect();
    let one_way_ms = |a: NodeId, b: NodeId| match (addr_of.get(&a), addr_of.get(&b)) {
        (Some(&a), Some(&b)) => ms(map.rtt_between(a, b)) / 2.0,
        _ => 0.0,
    };
    let (mut table_entries, mut same_region) = (0, 0);
    for node in &cluster.nodes {
        let status = node.status().await?;
        for entry in &status.routing_table {
            table_entries += 1;
            same_region += usize::from(map.region_of(entry.addr) == map.region_of(status.addr));
        }
    }

    progress("regions: loopback floor (direct messages over existing links)");
    let mut seq = 0u64;
    let mut floor = Vec::new();
    for i in 0..cluster.nodes.len() {
        let node = cluster.nodes[i].clone();
        let status = node.status().await?;
        let Some(peer) = status
            .connections
            .iter()
            .map(|c| c.id)
            .find(|id| addr_of.contains_key(id))
        else {
            continue;
        };
        seq += 1;
        let started = timed(&node, Send::Direct(peer), payload(seq, config.size)).await?;
        let arrived = await_event(&mut cluster, seq, false).await?.2;
        floor.push(ms(arrived - started) - one_way_ms(node.id(), peer));
    }
    let loopback_floor_samples = floor.len();
    let loopback_floor_ms = super::median(&mut floor);

    // Seeded keys, each with a seeded origin that is not its root.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let mut pairs = Vec::with_capacity(config.keys);
    while pairs.len() < config.keys {
        let key = Key::from_u128(rng.gen());
        let origin = rng.gen_range(0..cluster.nodes.len());
        let Some(root) = key.closest(ids.iter().copied()) else {
            break;
        };
        if root != ids[origin] {
            pairs.push((key, origin, root));
        }
    }

    let mut routes = 0;
    let mut delivered_at_root = 0;
    let mut first = Vec::new();
    let mut repeat = Vec::new();
    // Timed direct messages, per pair, and their excess over the emulated one-way delay.
    let mut direct: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    let mut direct_excess = Vec::new();
    for round in 0..=config.repeats {
        progress(&format!(
            "regions: {} routes ({})",
            pairs.len(),
            if round == 0 {
                "first to each key".to_string()
            } else {
                format!("repeat {round} of {}", config.repeats)
            }
        ));
        for (pair, &(key, origin, root)) in pairs.iter().enumerate() {
            seq += 1;
            routes += 1;
            let node = cluster.nodes[origin].clone();
            // Which pairs have a link now (a pool lookup each, no message).
            let linked: HashSet<(NodeId, NodeId)> = cluster
                .nodes
                .iter()
                .flat_map(|a| ids.iter().map(move |&b| (a, b)))
                .filter(|(a, b)| a.rtt(*b).is_some())
                .map(|(a, b)| (a.id(), b))
                .collect();
            let started = timed(&node, Send::Route(key), payload(seq, config.size)).await?;
            let (at, hops, arrived) = await_event(&mut cluster, seq, true).await?;
            delivered_at_root += usize::from(at == root);
            let recorded = paths
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&seq)
                .unwrap_or_default();
            let chained = recorded.len() == usize::from(hops)
                && recorded.windows(2).all(|w| w[0].1 == w[1].0)
                && recorded.first().is_some_and(|hop| hop.0 == node.id())
                && recorded.last().is_some_and(|hop| hop.1 == at);
            let sample = Sample {
                latency_ms: ms(arrived - started),
                direct_ms: one_way_ms(node.id(), at),
                path_ms: chained.then(|| recorded.iter().map(|&(a, b)| one_way_ms(a, b)).sum()),
                hops,
                first_contact: recorded
                    .iter()
                    .any(|&(a, b)| !linked.contains(&(a, b)) && !linked.contains(&(b, a))),
                pair,
            };
            if round == 0 {
                first.push(sample);
            } else {
                repeat.push(sample);
            }
            // The pair's measured direct baseline, interleaved with the routes: only over a
            // link the origin holds already (a new one would change the routes that follow).
            if node.rtt(root).is_some() {
                seq += 1;
                let ms_taken = timed_direct(&mut cluster, &node, root, seq, config.size).await?;
                direct[pair].push(ms_taken);
                direct_excess.push(ms_taken - one_way_ms(node.id(), root));
            }
        }
        // Let the last roots' answers (which fill the route cache) arrive before the next
        // round: the farthest one-way delay is half the largest round trip.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pairs never linked during the rounds: a first message for the handshake, then the
    // timed one.
    let mut measured_direct_warmed_pairs = 0;
    for (pair, &(_, origin, root)) in pairs.iter().enumerate() {
        if !direct[pair].is_empty() {
            continue;
        }
        measured_direct_warmed_pairs += 1;
        let node = cluster.nodes[origin].clone();
        seq += 1;
        timed_direct(&mut cluster, &node, root, seq, config.size).await?;
        seq += 1;
        let ms_taken = timed_direct(&mut cluster, &node, root, seq, config.size).await?;
        direct[pair].push(ms_taken);
        direct_excess.push(ms_taken - one_way_ms(node.id(), root));
    }
    let measured_direct_samples = direct.iter().map(Vec::len).sum();
    let measured: Vec<f64> = direct.iter_mut().map(|d| super::median(d)).collect();

    let (mut route_cache_hits, mut route_cache_stale) = (0, 0);
    let (mut route_cache_unlinked, mut route_cache_links_requested, mut root_answers_relayed) =
        (0, 0, 0);
    for node in &cluster.nodes {
        let status = node.status().await?;
        route_cache_hits += status.route_cache_hits;
        route_cache_stale += status.route_cache_stale;
        route_cache_unlinked += status.route_cache_unlinked;
        route_cache_links_requested += status.route_cache_links_requested;
        root_answers_relayed += status.root_answers_relayed;
    }
    let nodes = cluster.nodes.len();
    cluster.shutdown().await;
    Ok(RegionsBenchReport {
        nodes,
        regions,
        region_rtt_ms: (0..regions)
            .map(|a| (0..regions).map(|b| ms(map.rtt(a, b))).collect())
            .collect(),
        size: config.size,
        keys: pairs.len(),
        repeats: config.repeats,
        direct_is: "half the emulated round trip between the origin's and the root's regions; \
                    ..._with_floor adds loopback_floor_ms"
            .into(),
        leaf_sets_settled_ms: ms(leaf_sets_settled),
        tables_settled_ms: ms(tables_settled),
        tables_stable,
        table_entries,
        table_entries_same_region: same_region,
        loopback_floor_ms,
        loopback_floor_samples,
        stretch_first: stretch(&first, loopback_floor_ms, &measured),
        stretch_repeat: stretch(&repeat, loopback_floor_ms, &measured),
        measured_direct_is: "per (origin, root) pair, the median of plain direct messages from \
                             the origin to the root over the same nodes and sockets, timed like \
                             a route (send call to the root application's read)"
            .into(),
        measured_direct_samples,
        measured_direct_warmed_pairs,
        measured_direct_floor_ms: super::median(&mut direct_excess),
        routes,
        delivered_at_root,
        route_cache_hits,
        route_cache_stale,
        route_cache_unlinked,
        route_cache_links_requested,
        root_answers_relayed,
    })
}

/// Reads every routing table once a second until none changed for `stable_for`, or
/// `settle_max` passed; returns the time taken and whether they became stable.
async fn settle_tables(
    cluster: &Cluster,
    config: &RegionsBenchConfig,
) -> Result<(Duration, bool), BenchError> {
    let started = Instant::now();
    let mut previous = Vec::new();
    let mut unchanged_since = Instant::now();
    loop {
        let mut tables = Vec::with_capacity(cluster.nodes.len());
        for node in &cluster.nodes {
            let mut table: Vec<NodeId> = node
                .status()
                .await?
                .routing_table
                .iter()
                .map(|e| e.id)
                .collect();
            table.sort();
            tables.push(table);
        }
        if tables != previous {
            previous = tables;
            unchanged_since = Instant::now();
        } else if unchanged_since.elapsed() >= config.stable_for {
            return Ok((started.elapsed(), true));
        }
        if started.elapsed() >= config.settle_max {
            return Ok((started.elapsed(), false));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `measured`: each pair's measured direct baseline, ms.
fn stretch(samples: &[Sample], floor_ms: f64, measured: &[f64]) -> Stretch {
    if samples.is_empty() {
        return Stretch::default();
    }
    let n = samples.len() as f64;
    let mean = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let mut ratios: Vec<f64> = samples
        .iter()
        .map(|s| s.latency_ms / s.direct_ms.max(1e-9))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let latency_mean_ms = mean(&|s| s.latency_ms);
    let direct_mean_ms = mean(&|s| s.direct_ms);
    let pathed: Vec<&Sample> = samples.iter().filter(|s| s.path_ms.is_some()).collect();
    let path_of = |s: &Sample| s.path_ms.unwrap_or_default();
    let path_sum: f64 = pathed.iter().map(|s| path_of(s)).sum();
    let pathed_direct_sum: f64 = pathed.iter().map(|s| s.direct_ms).sum();
    let mut excess: Vec<f64> = pathed.iter().map(|s| s.latency_ms - path_of(s)).collect();
    excess.sort_by(f64::total_cmp);
    let quantile = |v: &[f64], q: f64| {
        if v.is_empty() {
            0.0
        } else {
            super::percentile_sorted(v, q)
        }
    };
    let linked: Vec<&Sample> = samples.iter().filter(|s| !s.first_contact).collect();
    let linked_latency: f64 = linked.iter().map(|s| s.latency_ms).sum();
    let linked_direct: f64 = linked.iter().map(|s| s.direct_ms).sum();
    let mut contact_excess: Vec<f64> = pathed
        .iter()
        .filter(|s| s.first_contact)
        .map(|s| s.latency_ms - path_of(s))
        .collect();
    contact_excess.sort_by(f64::total_cmp);
    let measured_of = |s: &Sample| measured.get(s.pair).copied().unwrap_or_default();
    let measured_direct_mean_ms = mean(&measured_of);
    let mut vs_measured: Vec<f64> = samples
        .iter()
        .map(|s| s.latency_ms / measured_of(s).max(1e-9))
        .collect();
    vs_measured.sort_by(f64::total_cmp);
    let mut by_hops = std::collections::BTreeMap::new();
    for s in samples {
        *by_hops.entry(s.hops).or_insert(0) += 1;
    }
    Stretch {
        samples: samples.len(),
        mean: ratios.iter().sum::<f64>() / n,
        median: quantile(&ratios, 0.5),
        p95: quantile(&ratios, 0.95),
        ratio_of_means: latency_mean_ms / direct_mean_ms.max(1e-9),
        ratio_of_means_with_floor: latency_mean_ms / (direct_mean_ms + floor_ms).max(1e-9),
        mean_with_floor: mean(&|s| s.latency_ms / (s.direct_ms + floor_ms).max(1e-9)),
        path_ratio_of_means: path_sum / pathed_direct_sum.max(1e-9),
        latency_mean_ms,
        direct_mean_ms,
        path_mean_ms: path_sum / pathed.len().max(1) as f64,
        excess_p50_ms: quantile(&excess, 0.5),
        excess_p95_ms: quantile(&excess, 0.95),
        excess_max_ms: excess.last().copied().unwrap_or_default(),
        mean_hops: mean(&|s| f64::from(s.hops)),
        max_hops: samples.iter().map(|s| s.hops).max().unwrap_or_default(),
        by_hops,
        first_contact_routes: samples.len() - linked.len(),
        first_contact_excess_p50_ms: quantile(&contact_excess, 0.5),
        ratio_of_means_over_links: linked_latency / linked_direct.max(1e-9),
        ratio_of_means_over_links_with_floor: linked_latency
            / (linked_direct + floor_ms * linked.len() as f64).max(1e-9),
        incomplete_paths: samples.len() - pathed.len(),
        measured_direct_mean_ms,
        ratio_of_means_vs_measured_direct: latency_mean_ms / measured_direct_mean_ms.max(1e-9),
        mean_vs_measured_direct: vs_measured.iter().sum::<f64>() / n,
        median_vs_measured_direct: quantile(&vs_measured, 0.5),
        p95_vs_measured_direct: quantile(&vs_measured, 0.95),
    }
}

/// What a timed message is.
enum Send {
    /// Routed to a key.
    Route(Key),
    /// Sent straight to a node.
    Direct(NodeId),
}

/// Sends from a runtime worker, as an application's task would, and returns when the call
/// was made.
async fn timed(node: &Node, send: Send, payload: Vec<u8>) -> Result<Instant, BenchError> {
    let node = node.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        match send {
            Send::Route(key) => drop(node.route(key, payload).await?),
            Send::Direct(to) => node.send(to, payload).await?,
        }
        Ok(started)
    })
    .await
    .map_err(|e| BenchError::Incomplete(format!("the sending task failed: {e}")))?
}

/// Sends message `seq` from `node` straight to `to` and returns the time from the send call
/// until `to`'s application read it, ms.
async fn timed_direct(
    cluster: &mut Cluster,
    node: &Node,
    to: NodeId,
    seq: u64,
    size: usize,
) -> Result<f64, BenchError> {
    let started = timed(node, Send::Direct(to), payload(seq, size)).await?;
    let arrived = await_event(cluster, seq, false).await?.2;
    Ok(ms(arrived - started))
}

/// Waits for message `seq` (a delivery if `routed`, else a direct message): where, in how
/// many hops, when it was read.
async fn await_event(
    cluster: &mut Cluster,
    seq: u64,
    routed: bool,
) -> Result<(NodeId, u8, Instant), BenchError> {
    loop {
        match cluster.next_event(MESSAGE_TIMEOUT).await {
            Some(Observed {
                at,
                when,
                event: NodeEvent::Deliver(delivery),
            }) if routed && seq_of(&delivery.payload) == Some(seq) => {
                return Ok((at, delivery.hops, when))
            }
            Some(Observed {
                at,
                when,
                event: NodeEvent::Direct { payload, .. },
            }) if !routed && seq_of(&payload) == Some(seq) => return Ok((at, 0, when)),
            Some(_) => {}
            None => {
                return Err(BenchError::Incomplete(format!(
                    "message {seq} did not arrive within {MESSAGE_TIMEOUT:?}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_route_in_three_regions_is_delivered_once_at_the_true_root() {
        let config = RegionsBenchConfig::quick();
        let report = run(config.clone(), &|_| {}).await.unwrap();
        assert_eq!(report.nodes, config.nodes);
        assert_eq!(report.keys, config.keys);
        assert_eq!(report.routes, config.keys * (1 + config.repeats));
        assert_eq!(report.delivered_at_root, report.routes);
        assert_eq!(report.stretch_first.samples, config.keys);
        assert_eq!(report.stretch_repeat.samples, config.keys * config.repeats);
        // Every origin differs from its key's root, so every route takes a hop, and every
        // hop is one of the emulated links (the direct latency is never zero).
        assert!(report.stretch_first.max_hops >= 1);
        assert!(report.stretch_first.direct_mean_ms >= 0.5);
        assert!(report.loopback_floor_samples > 0);
        // Every pair has a measured direct baseline, and a direct message is never faster
        // than the emulated delay it crosses.
        assert!(report.measured_direct_samples >= config.keys);
        assert!(report.measured_direct_floor_ms > 0.0);
        for s in [&report.stretch_first, &report.stretch_repeat] {
            assert!(s.measured_direct_mean_ms >= s.direct_mean_ms);
        }
        let json = serde_json::to_value(&report).unwrap();
        for kind in ["stretch_first", "stretch_repeat"] {
            for field in [
                "mean",
                "median",
                "ratio_of_means",
                "p95",
                "mean_hops",
                "measured_direct_mean_ms",
                "ratio_of_means_vs_measured_direct",
                "median_vs_measured_direct",
            ] {
                let value = json[kind][field].as_f64();
                assert!(
                    value.is_some_and(|v| v.is_finite() && v > 0.0),
                    "{kind}.{field} = {value:?}"
                );
            }
        }
    }
}
