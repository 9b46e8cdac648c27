//! The simulator suite: the deterministic simulator ([`crate::sim`]) at 100,000 nodes, run in
//! this process, against the Pastry 2001 paper's figures (b = 4, L = 16).
//!
//! Steady scenario on the plane latency model, seed 1: the overlay is built by joins, then the
//! lookups are routed to random keys from random nodes and each delivery checked against the
//! oracle. Hops and stretch (route delay / direct delay) are the simulator's own report fields.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Progress;
use crate::sim::{Phase, SimConfig, Simulation};

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimBenchConfig {
    /// Nodes in the overlay.
    pub nodes: usize,
    /// Lookups routed.
    pub lookups: usize,
    /// The simulator's seed.
    pub seed: u64,
}

impl Default for SimBenchConfig {
    fn default() -> Self {
        Self {
            nodes: 100_000,
            lookups: 100_000,
            seed: 1,
        }
    }
}

impl SimBenchConfig {
    /// Small sizes for a smoke run (`--quick`).
    pub fn quick() -> Self {
        Self {
            nodes: 1_000,
            lookups: 2_000,
            seed: 1,
        }
    }
}

/// The simulator suite's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimBenchReport {
    /// Nodes in the overlay.
    pub nodes: usize,
    /// Lookups routed.
    pub lookups: usize,
    /// Lookups delivered to the right node.
    pub delivered_correct: u64,
    /// Mean hops of delivered lookups.
    pub mean_hops: f64,
    /// Most hops of a delivered lookup.
    pub max_hops: u32,
    /// Mean route delay / direct delay over lookups with at least one hop.
    pub stretch_mean: f64,
    /// Median of the same ratio.
    pub stretch_median: f64,
    /// Control messages per node per second in the simulated steady state.
    pub sim_control_msgs_per_node_per_s: f64,
    /// Wall-clock time of the simulation, s.
    pub wall_seconds: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// Pastry 2001's mean hops at 100,000 nodes.
    pub paper_mean_hops: f64,
    /// Pastry 2001's max hops at 100,000 nodes.
    pub paper_max_hops: u32,
    /// Pastry 2001's stretch (low end of 1.3-1.4).
    pub paper_stretch: f64,
}

/// Runs the simulation (CPU-bound, synchronous: call it outside async code or in
/// `spawn_blocking`).
pub fn run(config: SimBenchConfig, progress: Progress<'_>) -> SimBenchReport {
    let sim_config = SimConfig {
        nodes: config.nodes,
        lookups: config.lookups,
        seed: config.seed,
        ..SimConfig::default()
    };
    progress(&format!(
        "sim: {} nodes, {} lookups (seed {})",
        config.nodes, config.lookups, config.seed
    ));
    let started = Instant::now();
    let mut last = started;
    let report = Simulation::new(sim_config).run(&mut |p| {
        if last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            let phase = match p.phase {
                Phase::Build => "build",
                Phase::Scenario => "lookups",
            };
            progress(&format!(
                "  [{:5.0} s] {phase}: {} nodes active, {} lookups issued",
                started.elapsed().as_secs_f64(),
                p.live_active,
                p.lookups_issued
            ));
        }
    });
    SimBenchReport {
        nodes: report.nodes,
        lookups: report.lookups,
        delivered_correct: report.delivered_correct,
        mean_hops: report.mean_hops,
        max_hops: report.max_hops,
        stretch_mean: report.stretch_mean,
        stretch_median: report.stretch_median,
        sim_control_msgs_per_node_per_s: report.control_msgs_per_node_per_s,
        wall_seconds: report.wall_seconds,
        peak_rss_mib: report.peak_rss_mib,
        paper_mean_hops: 3.98,
        paper_max_hops: 5,
        paper_stretch: 1.3,
    }
}
