//! The result of a simulation run, as a readable summary and as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Everything a run measured. Serialises to the JSON object `wendy sim --json` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// `steady`, `failure` or `churn`.
    pub scenario: String,
    /// Latency model name (`plane`, `regions`, `matrix`).
    pub model: String,
    /// The seed.
    pub seed: u64,
    /// Whether proximity-aware routing tables were enabled.
    pub proximity: bool,
    /// Nodes in the built overlay.
    pub nodes: usize,
    /// Lookups issued.
    pub lookups: usize,
    /// Lookups delivered (first delivery) to the right node: the live active node closest to
    /// the key when the lookup was delivered or when it was issued.
    pub delivered_correct: u64,
    /// Lookups never delivered (including those the origin gave up on).
    pub lost: u64,
    /// Lookups whose first delivery was at a wrong node.
    pub misdelivered: u64,
    /// Deliveries of an already delivered lookup.
    pub duplicates: u64,
    /// Lookups the origin reported as failed (`RouteFailed`); counted in `lost` unless delivered.
    pub route_failed: u64,
    /// Lost lookups whose origin failed within 10 s of issuing them (also in `lost`).
    pub lost_origin_died: u64,
    /// Lost lookups that never left their origin: no other live node received a copy (also in
    /// `lost`). The rest were lost on the way.
    pub lost_at_origin: u64,
    /// Mean hops of delivered lookups.
    pub mean_hops: f64,
    /// Largest hop count of a delivered lookup.
    pub max_hops: u32,
    /// `hops_histogram[h]` = delivered lookups that took `h` hops.
    pub hops_histogram: Vec<u64>,
    /// Mean of route latency / direct latency (origin to deliverer), over lookups with >= 1 hop.
    pub stretch_mean: f64,
    /// Median of the same ratio.
    pub stretch_median: f64,
    /// Messages (every kind, plus RTT measurements as pairs) sent while building the overlay,
    /// per joined node.
    pub join_msgs_per_node: f64,
    /// Joins that did not complete within the join timeout.
    pub join_failures: u64,
    /// Failure scenario: control messages caused by the failure, per failed node: the repair
    /// window's control messages minus those of the same window in a twin run without the
    /// failure (scaled to this run's live node-seconds).
    pub repair_msgs_per_failed_node: Option<f64>,
    /// Control messages (everything but lookups and their per-hop acks) per live node per
    /// second of virtual time, over the measurement window.
    pub control_msgs_per_node_per_s: f64,
    /// Control bytes (encoded message + per-message transport overhead) per node per second.
    pub control_bytes_per_node_per_s: f64,
    /// Per-hop route acknowledgements per live node per second over the same window.
    pub ack_msgs_per_node_per_s: f64,
    /// Messages per live node per second over the measurement window, by kind (RouteAck and
    /// Route included, for comparison).
    pub control_by_kind_per_node_per_s: BTreeMap<String, f64>,
    /// Failure scenario details.
    pub failure: Option<FailureReport>,
    /// Churn scenario details.
    pub churn: Option<ChurnReport>,
    /// Live active nodes whose leaf set differs from the true one at the end of the run.
    pub leaf_sets_wrong: u64,
    /// Leaf-set entries at live nodes that point at dead nodes at the end of the run.
    pub dead_leaf_entries: u64,
    /// Sum of route latencies over sum of direct latencies (lookups with >= 1 hop): the stretch
    /// of the average route, which tiny direct distances cannot dominate.
    pub stretch_of_means: f64,
    /// The same figure as `stretch_of_means`, under the name the other stretch fields share.
    pub stretch_ratio_of_means: f64,
    /// 95th percentile of the per-lookup stretch.
    pub stretch_p95: f64,
    /// Mean stretch of the lookups that were the first from their origin to their key.
    pub stretch_first_mean: f64,
    /// Mean stretch of the later ones (0 without any: uniform keys are rarely repeated).
    pub stretch_repeat_mean: f64,
    /// Lookups that repeated an earlier one's origin and key.
    pub repeat_lookups: u64,
    /// With a measured latency matrix: the fraction of lookups whose route was faster than the
    /// direct delay (the matrix violates the triangle inequality).
    pub stretch_below_one_fraction: Option<f64>,
    /// How the lookups' keys were drawn (`uniform`, or `zipf` with `keys` and `zipf_s`).
    pub key_popularity: String,
    /// With `trace_routes`: up to 10 each of the routes longer than `ceil(log16 N)` hops, the
    /// lost lookups and the misdelivered ones.
    pub long_routes: Vec<RouteTrace>,
    /// With `trace_routes`: routing-table diagnostics at the end of the run.
    pub tables: Option<TableReport>,
    /// Messages and bytes sent, by message kind, over the whole run.
    pub msgs_by_kind: BTreeMap<String, KindCount>,
    /// Virtual time simulated, in seconds.
    pub virtual_seconds: f64,
    /// Events processed.
    pub events: u64,
    /// Wall-clock time of the run, in seconds (not deterministic).
    pub wall_seconds: f64,
    /// Peak resident set size of the process (VmHWM), in MiB (not deterministic).
    pub peak_rss_mib: f64,
}

/// Messages and bytes of one message kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindCount {
    /// Messages sent.
    pub msgs: u64,
    /// Bytes sent (encoded size plus transport overhead).
    pub bytes: u64,
}

/// The path of one lookup.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteTrace {
    /// The key (32 hex digits).
    pub key: String,
    /// The oracle's root when the lookup was issued.
    pub root: String,
    /// `delivered in N hops`, `lost` or `lost (the origin reported RouteFailed)`.
    pub outcome: String,
    /// Each send of the message, origin first: `id/shared-prefix-with-key/+ms-since-issue`,
    /// with ` DEAD` when the node had failed before the message arrived and `(dies N ms later)`
    /// when it failed within 10 s after.
    pub path: Vec<String>,
}

/// Routing-table quality at the end of a run (diagnostics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableReport {
    /// Filled slots, over all live active nodes.
    pub filled: u64,
    /// Empty slots for which some live active node would qualify, by row.
    pub holes_by_row: Vec<u64>,
    /// The same when the first lookup was issued (after the warm-up; later lookups fill holes
    /// as they meet them).
    pub holes_at_start_by_row: Vec<u64>,
    /// Slots pointing at dead nodes.
    pub dead_entries: u64,
    /// For lookups delivered without re-routing: mean one-way delay of the k-th hop, in ms
    /// (where stretch comes from).
    pub hop_ms_by_index: Vec<f64>,
    /// Mean direct one-way delay origin to root of the same lookups, in ms.
    pub direct_ms_mean: f64,
    /// Up to 10 live nodes with a dead leaf-set entry: `node: dead entry (rank on its side,
    /// 1 = immediate neighbour), leaf-set size`.
    pub dead_leaf_examples: Vec<String>,
    /// For a sample of nodes: mean of (entry's delay / delay of the nearest node that qualifies
    /// for the slot), by row. 1.0 = perfect proximity neighbour selection.
    pub proximity_ratio_by_row: Vec<f64>,
    /// Stretch by direct one-way delay (origin to root): where the mean of ratios comes from.
    pub stretch_by_direct_ms: Vec<StretchBucket>,
}

/// The lookups whose direct one-way delay falls below `below_ms` (and above the previous
/// bucket's bound).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StretchBucket {
    /// Upper bound of the bucket's direct one-way delay, in ms.
    pub below_ms: u64,
    /// Share of the delivered lookups in the bucket.
    pub share: f64,
    /// Mean stretch of those lookups.
    pub mean: f64,
}

/// What happened around the silent failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailureReport {
    /// Nodes that failed.
    pub failed: usize,
    /// Mean hops of lookups issued before the failure.
    pub mean_hops_before: f64,
    /// Mean hops of lookups issued during the repair window.
    pub mean_hops_during: f64,
    /// Mean hops of lookups issued after the repair window.
    pub mean_hops_after: f64,
    /// `(after - before) / before`.
    pub hops_change: f64,
    /// Lookups lost, per phase `[before, during, after]`.
    pub lost_by_phase: [u64; 3],
    /// Lookups misdelivered, per phase.
    pub misdelivered_by_phase: [u64; 3],
    /// Control messages in the repair window.
    pub repair_window_control_msgs: u64,
    /// Control messages expected in the same window without failure: the steady per-node rate
    /// before the failure times the window's live node-seconds.
    pub baseline_control_msgs: f64,
    /// Seconds of virtual time in the repair window.
    pub repair_window_s: f64,
    /// Leaf-set entries pointing at dead nodes at the end of the repair window.
    pub dead_leaf_entries_after_repair: u64,
    /// Messages sent in the repair window, by kind.
    pub repair_window_msgs_by_kind: BTreeMap<String, u64>,
}

/// What happened under churn.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChurnReport {
    /// Median session time, seconds.
    pub median_session_s: f64,
    /// Churn duration, seconds.
    pub duration_s: f64,
    /// Nodes that arrived during churn.
    pub arrivals: u64,
    /// Nodes that failed during churn.
    pub departures: u64,
    /// Joins completed during churn (a node that fails before its join completes never does).
    pub joins_completed: u64,
    /// Mean time from a node's arrival to its join completing, seconds.
    pub mean_join_s: f64,
    /// Mean number of live nodes during churn.
    pub mean_live_nodes: f64,
    /// `delivered_correct / lookups`.
    pub correct_fraction: f64,
    /// `misdelivered / lookups`.
    pub misdelivered_fraction: f64,
    /// `delivered_correct / (lookups - lost_origin_died)`: lookups whose origin itself failed
    /// within 10 s of issuing them (and that were lost) left out, since no protocol can save
    /// a message whose only holder fails.
    pub correct_fraction_live_origins: f64,
}

impl Report {
    /// The report with the non-deterministic fields (wall time, memory) zeroed.
    pub fn deterministic_part(&self) -> Self {
        Self {
            wall_seconds: 0.0,
            peak_rss_mib: 0.0,
            ..self.clone()
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {} | model {} | seed {} | proximity {} | {} nodes",
            self.scenario,
            self.model,
            self.seed,
            if self.proximity { "on" } else { "off" },
            self.nodes
        )?;
        writeln!(
            f,
            "lookups {}: correct {}, lost {} ({} of them with a failed origin, {} never left \
             their origin, {} given up), misdelivered {}, duplicates {}",
            self.lookups,
            self.delivered_correct,
            self.lost,
            self.lost_origin_died,
            self.lost_at_origin,
            self.route_failed,
            self.misdelivered,
            self.duplicates
        )?;
        let delivered: u64 = self.hops_histogram.iter().sum();
        if delivered == 0 {
            writeln!(f, "hops: no lookup delivered")?;
        } else {
            let histogram = self
                .hops_histogram
                .iter()
                .enumerate()
                .map(|(hops, count)| format!("{hops}: {count}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "hops: mean {:.3}, max {}; lookups by hops {{{histogram}}}",
                self.mean_hops, self.max_hops
            )?;
        }
        // Stretch is at least 1 wherever it was measured: 0 means no sample.
        if self.stretch_mean > 0.0 {
            writeln!(
                f,
                "stretch: mean {:.3}, median {:.3}, of means {:.3}, p95 {:.3}",
                self.stretch_mean, self.stretch_median, self.stretch_of_means, self.stretch_p95
            )?;
            writeln!(
                f,
                "stretch by key ({}): first routes {:.3}, repeated {:.3} ({} lookups)",
                self.key_popularity,
                self.stretch_first_mean,
                self.stretch_repeat_mean,
                self.repeat_lookups
            )?;
            if let Some(below) = self.stretch_below_one_fraction {
                writeln!(
                    f,
                    "stretch below 1 (triangle inequality violated): {below:.4}"
                )?;
            }
        } else {
            writeln!(f, "stretch: no sample (no lookup took a hop)")?;
        }
        writeln!(
            f,
            "join: {:.1} msgs per node ({} failed joins)",
            self.join_msgs_per_node, self.join_failures
        )?;
        writeln!(
            f,
            "control: {:.3} msgs/s and {:.1} B/s per node (acks {:.3} msgs/s)",
            self.control_msgs_per_node_per_s,
            self.control_bytes_per_node_per_s,
            self.ack_msgs_per_node_per_s
        )?;
        if let Some(failure) = &self.failure {
            writeln!(
                f,
                "failure: {} failed; hops before {}, during {}, after {} ({:+.2}%); \
                 lost {:?} (before, during, after); repair msgs per failed node {}",
                failure.failed,
                mean_or_dash(failure.mean_hops_before),
                mean_or_dash(failure.mean_hops_during),
                mean_or_dash(failure.mean_hops_after),
                failure.hops_change * 100.0,
                failure.lost_by_phase,
                self.repair_msgs_per_failed_node
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
            )?;
        }
        if let Some(churn) = &self.churn {
            writeln!(
                f,
                "churn: {} arrivals ({} joins completed, {:.2} s on average), {} departures, \
                 {:.0} live on average; correct {:.5} ({:.5} of lookups whose origin lived), \
                 misdelivered {:.2e}",
                churn.arrivals,
                churn.joins_completed,
                churn.mean_join_s,
                churn.departures,
                churn.mean_live_nodes,
                churn.correct_fraction,
                churn.correct_fraction_live_origins,
                churn.misdelivered_fraction
            )?;
        }
        writeln!(
            f,
            "state at end: {} wrong leaf sets, {} dead leaf entries",
            self.leaf_sets_wrong, self.dead_leaf_entries
        )?;
        if let Some(tables) = &self.tables {
            writeln!(
                f,
                "tables: {} filled, holes by row {:?} (at the first lookup {:?}), {} dead entries, proximity ratio by row {:.2?}",
                tables.filled,
                tables.holes_by_row,
                tables.holes_at_start_by_row,
                tables.dead_entries,
                tables.proximity_ratio_by_row
            )?;
        }
        if let Some(tables) = &self.tables {
            writeln!(
                f,
                "hop delays (ms) by hop index {:.1?}, direct {:.1} ms",
                tables.hop_ms_by_index, tables.direct_ms_mean
            )?;
            let buckets: Vec<String> = tables
                .stretch_by_direct_ms
                .iter()
                .map(|b| format!("<{} ms: {:.1}% x{:.2}", b.below_ms, 100.0 * b.share, b.mean))
                .collect();
            writeln!(f, "stretch by direct delay: {}", buckets.join(", "))?;
            for example in &tables.dead_leaf_examples {
                writeln!(f, "dead leaf entry: {example}")?;
            }
        }
        for trace in &self.long_routes {
            writeln!(
                f,
                "route to {} (root {}), {}: {}",
                trace.key,
                trace.root,
                trace.outcome,
                trace.path.join(" -> ")
            )?;
        }
        write!(
            f,
            "{:.1} s virtual, {} events, {:.1} s wall, peak RSS {:.0} MiB",
            self.virtual_seconds, self.events, self.wall_seconds, self.peak_rss_mib
        )
    }
}

/// Peak resident set size of this process in MiB (`VmHWM` from `/proc/self/status`), or 0 where
/// that file does not exist.
pub fn peak_rss_mib() -> f64 {
    proc_status_kib("VmHWM").map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`, ...), where that file exists.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A mean of hops with three decimals, or `-` for a phase without samples (a mean of exactly 0
/// hops is a phase where nothing was routed: every lookup takes a hop unless its origin is its
/// root, which a phase of many lookups never has for all of them).
fn mean_or_dash(mean: f64) -> String {
    if mean > 0.0 {
        format!("{mean:.3}")
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_proc() {
        // Other tests in this process allocate and free concurrently, so the peak before this
        // test is unknown; what holds regardless is that 64 MiB written and still live are
        // resident, and the peak is at least the current resident size.
        let big = vec![1u8; 64 << 20];
        assert!(big.iter().map(|&b| u64::from(b)).sum::<u64>() > 0);
        let rss = proc_status_kib("VmRSS").map_or(0.0, |kib| kib as f64 / 1024.0);
        let peak = peak_rss_mib();
        assert!(rss >= 64.0, "resident {rss} MiB with 64 MiB live");
        assert!(peak >= rss, "peak {peak} MiB below resident {rss} MiB");
    }
}
