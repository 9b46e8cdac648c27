//! What a run counts (messages and bytes by kind, live node-time, snapshots at the
//! measurement marks) and the [`Report`] it adds up to.

use std::collections::BTreeMap;

use super::diagnostics::ORIGIN_DEATH_WINDOW_US;
use super::engine::{Simulation, NEVER, NOBODY, SECOND};
use super::node::SimNode;
use super::report::{ChurnReport, FailureReport, KindCount, Report};
use super::{KeyPopularity, ModelSpec, Scenario};
use crate::pastry::{Message, MessageKind};

/// Message counters.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Traffic {
    pub(super) all_msgs: u64,
    pub(super) control_msgs: u64,
    pub(super) control_bytes: u64,
    pub(super) acks: u64,
}

/// The counters at a point of the run.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Mark {
    pub(super) time: u64,
    pub(super) traffic: Traffic,
    /// Integral of live nodes over time, in node-microseconds.
    pub(super) node_us: f64,
    /// Per-kind counters (`kind as usize`, then measurements).
    pub(super) kinds: [KindCount; MessageKind::COUNT + 1],
}

/// Everything counted while the run goes.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) traffic: Traffic,
    /// Per message kind (`kind as usize`), plus RTT measurements at the end.
    pub(super) kind_counts: [KindCount; MessageKind::COUNT + 1],
    /// The traffic when the build ended.
    pub(super) build_traffic: Traffic,
    /// Live nodes.
    pub(super) alive: usize,
    /// Integral of live nodes over time up to `node_us_at`, in node-microseconds.
    node_us: f64,
    node_us_at: u64,
    /// Snapshots: start of the lookups, failure (or end of the window), end of the repair
    /// window.
    pub(super) marks: [Option<Mark>; 3],
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            traffic: Traffic::default(),
            kind_counts: [KindCount::default(); MessageKind::COUNT + 1],
            build_traffic: Traffic::default(),
            alive: 0,
            node_us: 0.0,
            node_us_at: 0,
            marks: [None; 3],
        }
    }
}

impl Tally {
    /// A message sent (`overhead` bytes of transport added to its encoding).
    pub(super) fn count(&mut self, msg: &Message, overhead: u64) {
        let kind = msg.kind();
        let bytes = msg.encoded_len() as u64 + overhead;
        self.traffic.all_msgs += 1;
        if kind == MessageKind::RouteAck {
            self.traffic.acks += 1;
        }
        if kind.is_control() {
            self.traffic.control_msgs += 1;
            self.traffic.control_bytes += bytes;
        }
        let count = &mut self.kind_counts[kind as usize];
        count.msgs += 1;
        count.bytes += bytes;
    }

    /// An RTT measurement: a request and, if `answered`, a reply, `overhead` bytes each.
    pub(super) fn count_measure(&mut self, answered: bool, overhead: u64) {
        let msgs = if answered { 2 } else { 1 };
        self.traffic.all_msgs += msgs;
        self.traffic.control_msgs += msgs;
        self.traffic.control_bytes += msgs * overhead;
        let count = &mut self.kind_counts[MessageKind::COUNT];
        count.msgs += msgs;
        count.bytes += msgs * overhead;
    }

    /// Adds the live node-time up to `now` (call before the number of live nodes changes).
    pub(super) fn update_area(&mut self, now: u64) {
        self.node_us += self.alive as f64 * (now - self.node_us_at) as f64;
        self.node_us_at = now;
    }

    /// Snapshots the counters into mark `i`.
    pub(super) fn mark(&mut self, i: usize, now: u64) {
        self.update_area(now);
        self.marks[i] = Some(Mark {
            time: now,
            traffic: self.traffic,
            node_us: self.node_us,
            kinds: self.kind_counts,
        });
    }

    /// The build is over: its traffic is set aside.
    pub(super) fn end_build(&mut self) {
        self.build_traffic = self.traffic;
    }

    /// Control messages per live node-µs between marks `a` and `b`, if both were taken.
    pub(super) fn control_rate(&self, a: usize, b: usize) -> Option<f64> {
        let (Some(a), Some(b)) = (self.marks[a], self.marks[b]) else {
            return None;
        };
        Some(
            (b.traffic.control_msgs - a.traffic.control_msgs) as f64
                / (b.node_us - a.node_us).max(1.0),
        )
    }
}

impl<P: SimNode> Simulation<P> {
    /// The run's report (its wall time and memory fields left at zero).
    pub(super) fn report(&self) -> Report {
        let mut histogram: Vec<u64> = Vec::new();
        let (mut correct, mut lost, mut misdelivered, mut route_failed) = (0, 0, 0, 0);
        let (mut lost_origin_died, mut lost_at_origin) = (0, 0);
        let mut hops_by_phase = [(0u64, 0u64); 3];
        let mut lost_by_phase = [0u64; 3];
        let mut mis_by_phase = [0u64; 3];
        for rec in &self.lookups.recs {
            let phase = usize::from(rec.phase.min(2));
            if rec.failed {
                route_failed += 1;
            }
            if rec.delivered_by == NOBODY {
                lost += 1;
                let origin_died = self
                    .nodes
                    .get(rec.origin as usize)
                    .map_or(NEVER, |n| n.died_at);
                if origin_died.saturating_sub(rec.issued) <= ORIGIN_DEATH_WINDOW_US {
                    lost_origin_died += 1;
                }
                if !rec.left_origin {
                    lost_at_origin += 1;
                }
                lost_by_phase[phase] += 1;
                continue;
            }
            if rec.correct {
                correct += 1;
            } else {
                misdelivered += 1;
                mis_by_phase[phase] += 1;
            }
            let h = usize::from(rec.hops);
            if histogram.len() <= h {
                histogram.resize(h + 1, 0);
            }
            histogram[h] += 1;
            hops_by_phase[phase].0 += u64::from(rec.hops);
            hops_by_phase[phase].1 += 1;
        }
        let delivered: u64 = histogram.iter().sum();
        let total_hops: u64 = histogram
            .iter()
            .enumerate()
            .map(|(h, &n)| h as u64 * n)
            .sum();
        let mean = |(sum, n): (u64, u64)| if n == 0 { 0.0 } else { sum as f64 / n as f64 };
        let mut stretches = self.lookups.stretches.clone();
        stretches.sort_unstable_by(f32::total_cmp);
        let stretch_mean = if stretches.is_empty() {
            0.0
        } else {
            stretches.iter().map(|&s| f64::from(s)).sum::<f64>() / stretches.len() as f64
        };
        let ratio_of_means = if self.lookups.direct_us == 0 {
            0.0
        } else {
            self.lookups.route_us as f64 / self.lookups.direct_us as f64
        };
        let stretch_median = stretches
            .get(stretches.len() / 2)
            .map_or(0.0, |&s| f64::from(s));

        let rate = |a: Option<Mark>, b: Option<Mark>| -> (f64, f64, f64) {
            match (a, b) {
                (Some(a), Some(b)) if b.node_us > a.node_us => {
                    let node_s = (b.node_us - a.node_us) / SECOND;
                    (
                        (b.traffic.control_msgs - a.traffic.control_msgs) as f64 / node_s,
                        (b.traffic.control_bytes - a.traffic.control_bytes) as f64 / node_s,
                        (b.traffic.acks - a.traffic.acks) as f64 / node_s,
                    )
                }
                _ => (0.0, 0.0, 0.0),
            }
        };
        let (control_msgs, control_bytes, acks) = rate(self.tally.marks[0], self.tally.marks[1]);
        let control_by_kind = match (self.tally.marks[0], self.tally.marks[1]) {
            (Some(a), Some(b)) if b.node_us > a.node_us => kind_names()
                .zip(a.kinds.iter().zip(b.kinds))
                .filter(|(_, (x, y))| y.msgs > x.msgs)
                .map(|(name, (x, y))| {
                    (
                        name.to_string(),
                        (y.msgs - x.msgs) as f64 / ((b.node_us - a.node_us) / SECOND),
                    )
                })
                .collect(),
            _ => BTreeMap::new(),
        };

        let mut failure = None;
        let mut repair_per_node = None;
        if let (Scenario::Failure { .. }, Some(m0), Some(m1), Some(m2)) = (
            self.config.scenario,
            self.tally.marks[0],
            self.tally.marks[1],
            self.tally.marks[2],
        ) {
            // Baseline: the per-node rate of the twin run without failure in the same window
            // (else the rate before the failure), times this window's live node-time (fewer
            // nodes send fewer heartbeats).
            let baseline_per_node_us = self.failure.twin_rate.unwrap_or(
                (m1.traffic.control_msgs - m0.traffic.control_msgs) as f64
                    / (m1.node_us - m0.node_us).max(1.0),
            );
            let window_msgs = m2.traffic.control_msgs - m1.traffic.control_msgs;
            let baseline = baseline_per_node_us * (m2.node_us - m1.node_us);
            let per_node =
                (window_msgs as f64 - baseline) / self.failure.failed_nodes.max(1) as f64;
            repair_per_node = Some(per_node);
            let before = mean(hops_by_phase[0]);
            let after = mean(hops_by_phase[2]);
            failure = Some(FailureReport {
                failed: self.failure.failed_nodes,
                mean_hops_before: before,
                mean_hops_during: mean(hops_by_phase[1]),
                mean_hops_after: after,
                hops_change: if before > 0.0 {
                    (after - before) / before
                } else {
                    0.0
                },
                lost_by_phase,
                misdelivered_by_phase: mis_by_phase,
                repair_window_control_msgs: window_msgs,
                baseline_control_msgs: baseline,
                repair_window_s: (m2.time - m1.time) as f64 / SECOND,
                dead_leaf_entries_after_repair: self.failure.dead_leaf_after_repair,
                repair_window_msgs_by_kind: kind_names()
                    .zip(m1.kinds.iter().zip(m2.kinds))
                    .filter(|(_, (a, b))| b.msgs > a.msgs)
                    .map(|(name, (a, b))| (name.to_string(), b.msgs - a.msgs))
                    .collect(),
            });
        }

        let churn = match (
            self.config.scenario,
            self.tally.marks[0],
            self.tally.marks[1],
        ) {
            (
                Scenario::Churn {
                    median_session_s,
                    duration_s,
                },
                Some(m0),
                Some(m1),
            ) => Some(ChurnReport {
                median_session_s,
                duration_s,
                arrivals: self.churn.arrivals,
                departures: self.churn.departures,
                joins_completed: self.churn.joins,
                mean_join_s: self.churn.join_us as f64 / SECOND / self.churn.joins.max(1) as f64,
                mean_live_nodes: (m1.node_us - m0.node_us) / (m1.time - m0.time).max(1) as f64,
                correct_fraction: correct as f64 / self.lookups.len().max(1) as f64,
                misdelivered_fraction: misdelivered as f64 / self.lookups.len().max(1) as f64,
                correct_fraction_live_origins: correct as f64
                    / (self.lookups.len() as u64 - lost_origin_died).max(1) as f64,
            }),
            _ => None,
        };

        let joined = self.build.nodes.saturating_sub(1).max(1);
        Report {
            scenario: self.config.scenario.name().to_string(),
            model: self.config.model.name().to_string(),
            seed: self.config.seed,
            proximity: self.config.protocol.proximity,
            nodes: self.build.nodes,
            lookups: self.lookups.len(),
            delivered_correct: correct,
            lost,
            misdelivered,
            duplicates: self.lookups.duplicates,
            route_failed,
            lost_origin_died,
            lost_at_origin,
            mean_hops: mean((total_hops, delivered)),
            max_hops: histogram.len().saturating_sub(1) as u32,
            hops_histogram: histogram,
            stretch_mean,
            stretch_median,
            stretch_of_means: ratio_of_means,
            stretch_ratio_of_means: ratio_of_means,
            stretch_p95: stretches
                .get((stretches.len() * 95 / 100).min(stretches.len().saturating_sub(1)))
                .map_or(0.0, |&s| f64::from(s)),
            stretch_first_mean: self.lookups.first_sum / self.lookups.first_count.max(1) as f64,
            stretch_repeat_mean: self.lookups.repeat_sum / self.lookups.repeat_count.max(1) as f64,
            repeat_lookups: self.lookups.recs.iter().filter(|r| r.repeat).count() as u64,
            stretch_below_one_fraction: matches!(self.config.model, ModelSpec::Matrix(_)).then(
                || {
                    stretches.iter().filter(|&&s| s < 1.0).count() as f64
                        / stretches.len().max(1) as f64
                },
            ),
            key_popularity: match self.config.key_popularity {
                KeyPopularity::Uniform => "uniform".to_string(),
                KeyPopularity::Zipf { keys, s } => format!("zipf keys={keys} s={s}"),
            },
            long_routes: self.long_routes(),
            tables: self.tables(),
            join_msgs_per_node: self.tally.build_traffic.all_msgs as f64 / joined as f64,
            join_failures: self.build.join_failures,
            repair_msgs_per_failed_node: repair_per_node,
            control_msgs_per_node_per_s: control_msgs,
            control_bytes_per_node_per_s: control_bytes,
            ack_msgs_per_node_per_s: acks,
            control_by_kind_per_node_per_s: control_by_kind,
            failure,
            churn,
            leaf_sets_wrong: self.wrong_leaf_sets(),
            dead_leaf_entries: self.dead_leaf_entries(),
            msgs_by_kind: kind_names()
                .zip(self.tally.kind_counts)
                .filter(|(_, count)| count.msgs > 0)
                .map(|(name, count)| (name.to_string(), count))
                .collect::<BTreeMap<_, _>>(),
            virtual_seconds: self.now() as f64 / SECOND,
            events: self.net.popped(),
            wall_seconds: 0.0,
            peak_rss_mib: 0.0,
        }
    }
}

/// Names of the per-kind counters, in counter order.
fn kind_names() -> impl Iterator<Item = &'static str> {
    MessageKind::ALL
        .iter()
        .map(|kind| kind.name())
        .chain(["measure"])
}
