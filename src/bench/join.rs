//! The join benchmark: how long a fresh node takes to join a settled cluster of real nodes.
//!
//! A cluster is grown one node at a time (each joining through a random member) to the small
//! size (32), left to settle (every leaf set equal to the oracle's), and then `samples` times a
//! fresh node joins through a random member, is timed from [`Node::join`](crate::node::Node::join)
//! until it resolves (the node is active, its leaf set confirmed), leaves gracefully, and the
//! cluster settles again, so every sample joins a settled cluster of exactly that size. The same
//! at the large size (100). The figure is the median; the build's own join times are reported
//! beside it.

use std::time::Duration;

use serde::Serialize;

use super::{median, BenchError, Progress};
use crate::identity::Identity;
use crate::node::Node;
use crate::testing::{Cluster, Via};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinBenchConfig {
    /// The smaller cluster size (reported as `..._n32`).
    pub small: usize,
    /// The larger cluster size (reported as `..._n100`).
    pub large: usize,
    /// Timed joins at each size.
    pub samples: usize,
    /// Seed of the bootstrap choices.
    pub seed: u64,
}

impl Default for JoinBenchConfig {
    fn default() -> Self {
        Self {
            small: 32,
            large: 100,
            samples: 11,
            seed: 1,
        }
    }
}

impl JoinBenchConfig {
    /// Small sizes for a smoke run (`--quick`): the figures are not comparable to the goal.
    pub fn quick() -> Self {
        Self {
            small: 8,
            large: 16,
            samples: 3,
            seed: 1,
        }
    }
}

/// The join benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JoinBenchReport {
    /// The smaller cluster's size.
    pub nodes_small: usize,
    /// The larger cluster's size.
    pub nodes_large: usize,
    /// Timed joins at each size.
    pub samples: usize,
    /// Median join time into the smaller cluster, ms.
    pub join_ms_p50_n32: f64,
    /// Slowest join into the smaller cluster, ms.
    pub join_ms_max_n32: f64,
    /// Median join time into the larger cluster, ms.
    pub join_ms_p50_n100: f64,
    /// Slowest join into the larger cluster, ms.
    pub join_ms_max_n100: f64,
    /// Median join time while the cluster was being built (into 1 to `large - 1` nodes), ms.
    pub build_join_ms_p50: f64,
    /// How long the large cluster took to settle after its build, ms.
    pub settle_ms_after_build: f64,
    /// The goal: a join into 100 nodes in under this many ms.
    pub goal_ms: f64,
}

/// Runs the benchmark (needs a multi-threaded tokio runtime).
pub async fn run(
    config: JoinBenchConfig,
    progress: Progress<'_>,
) -> Result<JoinBenchReport, BenchError> {
    if config.small < 2 || config.large < config.small || config.samples == 0 {
        return Err(BenchError::Invalid(
            "need 2 <= small <= large and at least one sample".into(),
        ));
    }
    let mut cluster = super::cluster(config.seed);
    progress(&format!("join: building {} nodes", config.small));
    let mut build_ms = super::grow(&mut cluster, config.small, progress).await?;
    let small = timed_joins(&mut cluster, config.samples, progress).await?;
    progress(&format!("join: growing to {} nodes", config.large));
    build_ms.extend(super::grow(&mut cluster, config.large, progress).await?);
    let settle = cluster.settle(Duration::from_secs(60)).await?;
    let large = timed_joins(&mut cluster, config.samples, progress).await?;
    cluster.shutdown().await;
    let max = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    Ok(JoinBenchReport {
        nodes_small: config.small,
        nodes_large: config.large,
        samples: config.samples,
        join_ms_p50_n32: median(&mut small.clone()),
        join_ms_max_n32: max(&small),
        join_ms_p50_n100: median(&mut large.clone()),
        join_ms_max_n100: max(&large),
        build_join_ms_p50: median(&mut build_ms),
        settle_ms_after_build: settle.as_secs_f64() * 1e3,
        goal_ms: 1000.0,
    })
}

/// `samples` joins into the cluster as it is, each followed by a graceful leave and a settle.
async fn timed_joins(
    cluster: &mut Cluster,
    samples: usize,
    progress: Progress<'_>,
) -> Result<Vec<f64>, BenchError> {
    let size = cluster.nodes.len();
    let mut times = Vec::with_capacity(samples);
    for sample in 0..samples {
        cluster.settle(Duration::from_secs(60)).await?;
        let builder = Node::builder(Identity::generate()).config(super::node_config());
        let ms = cluster.add(builder, Via::Random).await?.as_secs_f64() * 1e3;
        times.push(ms);
        progress(&format!(
            "  join {}/{samples} into {size} nodes: {ms:.1} ms",
            sample + 1
        ));
        if let Some(joined) = cluster.nodes.pop() {
            joined.leave().await?;
        }
    }
    cluster.settle(Duration::from_secs(60)).await?;
    Ok(times)
}
