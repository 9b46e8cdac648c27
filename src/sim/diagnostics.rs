//! Checks and diagnostics of the nodes' state against the oracle: wrong leaf sets, dead
//! entries, the longest routes, routing-table holes and proximity quality, and the
//! `oracle_tables` experiment.

use std::collections::HashMap;

use super::engine::{Simulation, NOBODY, SECOND};
use super::net::index_of;
use super::node::SimNode;
use super::report::{RouteTrace, StretchBucket, TableReport};
use crate::id::NodeId;

/// A lost lookup whose origin failed within this long of issuing it is counted in
/// `lost_origin_died`.
pub(super) const ORIGIN_DEATH_WINDOW_US: u64 = 10_000_000;

impl<P: SimNode> Simulation<P> {
    /// Whether `index` names a node that is alive.
    fn is_live_index(&self, index: u32) -> bool {
        (index as usize) < self.nodes.len() && self.net.is_alive(index)
    }

    /// Whether `index` names a node that has died.
    fn is_dead_index(&self, index: u32) -> bool {
        (index as usize) < self.nodes.len() && !self.net.is_alive(index)
    }

    /// See [`super::SimConfig::oracle_tables`]: rows 1 and deeper (row 0 slots have N/16
    /// candidates each, too many to scan at 100k nodes, and are near-ideal already).
    pub(super) fn force_oracle_tables(&mut self) {
        let mut by_id: Vec<(u128, u32)> = self
            .live_active
            .iter()
            .map(|&i| (self.id(i).as_u128(), i))
            .collect();
        by_id.sort_unstable();
        for &i in &self.live_active.clone() {
            let Some(proto) = self.nodes[i as usize].proto.as_ref() else {
                continue;
            };
            let me = self.id(i);
            let mut forced = Vec::new();
            for peer in proto.table_peers() {
                let row = me.shared_prefix_len(peer.id);
                if row == 0 || row >= crate::id::DIGITS {
                    continue;
                }
                let (lo, hi) = prefix_range(peer.id.as_u128(), row + 1);
                let from = by_id.partition_point(|&(x, _)| x < lo);
                let to = by_id.partition_point(|&(x, _)| x <= hi);
                let best = by_id[from..to]
                    .iter()
                    .map(|&(_, j)| (self.net.latency().one_way_us(i as usize, j as usize), j))
                    .min();
                if let Some((one_way, j)) = best {
                    forced.push((self.net.peer(j), 2 * one_way));
                }
            }
            if let Some(proto) = self.nodes[i as usize].proto.as_mut() {
                for (peer, rtt) in forced {
                    proto.replace_table_entry(peer, rtt);
                }
            }
        }
    }

    fn leaf_indices(&self, index: usize) -> Vec<u32> {
        self.nodes[index]
            .proto
            .as_ref()
            .map(|p| {
                p.leaf_peers()
                    .iter()
                    .filter_map(|peer| index_of(peer.addr))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn dead_leaf_entries(&self) -> u64 {
        self.live_active
            .iter()
            .map(|&i| {
                self.leaf_indices(i as usize)
                    .iter()
                    .filter(|&&j| !self.is_live_index(j))
                    .count() as u64
            })
            .sum()
    }

    /// Live active nodes whose leaf set is not the `L/2` nearest live active ids on each side.
    pub(super) fn wrong_leaf_sets(&self) -> u64 {
        let half = self.config.protocol.leaf_set_size / 2;
        let mut wrong = 0;
        for &i in &self.live_active {
            let me = self.id(i).as_u128();
            let truth = self.net.oracle().leaf_set(self.id(i), half);
            let Some(proto) = self.nodes[i as usize].proto.as_ref() else {
                continue;
            };
            let mut actual: Vec<u128> = proto
                .leaf_peers()
                .iter()
                .map(|p| p.id.as_u128())
                .filter(|&id| id != me)
                .collect();
            actual.sort_unstable();
            actual.dedup();
            if actual != truth {
                wrong += 1;
            }
        }
        wrong
    }

    pub(super) fn long_routes(&self) -> Vec<RouteTrace> {
        if !self.config.trace_routes {
            return Vec::new();
        }
        let mut bound = 0u8;
        let mut reach = 1usize;
        while reach < self.build.nodes {
            reach = reach.saturating_mul(16);
            bound += 1;
        }
        let recs = &self.lookups.recs;
        let long = (0..recs.len() as u32).filter(|&l| {
            let rec = &recs[l as usize];
            rec.delivered_by != NOBODY && rec.hops > bound
        });
        let lost = (0..recs.len() as u32).filter(|&l| recs[l as usize].delivered_by == NOBODY);
        let wrong = (0..recs.len() as u32).filter(|&l| {
            let rec = &recs[l as usize];
            rec.delivered_by != NOBODY && !rec.correct
        });
        let chosen: Vec<u32> = long
            .take(10)
            .chain(lost.take(10))
            .chain(wrong.take(10))
            .collect();
        let by_id: HashMap<NodeId, usize> = (0..self.nodes.len() as u32)
            .map(|i| (self.id(i), i as usize))
            .collect();
        let state = |id: NodeId, at: u64| -> String {
            let Some(slot) = by_id.get(&id).map(|&i| &self.nodes[i]) else {
                return "unknown".to_string();
            };
            let ms = |t: u64| (at as f64 - t as f64) / 1000.0;
            if slot.died_at <= at {
                format!("dead for {:.0} ms", ms(slot.died_at))
            } else if slot.active_at <= at {
                format!("active for {:.0} ms", ms(slot.active_at))
            } else {
                format!("joining for {:.0} ms", ms(slot.created_at))
            }
        };
        chosen
            .iter()
            .map(|&l| {
                let rec = &recs[l as usize];
                let hop = |node: u32, sent: u64, prev: Option<u32>| {
                    let slot = &self.nodes[node as usize];
                    let delay = prev.map_or(0, |p| {
                        self.net.latency().one_way_us(p as usize, node as usize)
                    });
                    let arrival = sent + delay;
                    let dead = if slot.died_at <= arrival {
                        " DEAD".to_string()
                    } else if slot.died_at - arrival <= ORIGIN_DEATH_WINDOW_US {
                        format!(
                            " (dies {:.0} ms later)",
                            (slot.died_at - arrival) as f64 / 1000.0
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "{}/{}/+{:.0}ms{dead}",
                        self.id(node),
                        rec.key.shared_prefix_len(self.id(node)),
                        (arrival - rec.issued) as f64 / 1000.0
                    )
                };
                let mut path = vec![hop(rec.origin, rec.issued, None)];
                for &(_, from, to, sent) in self.lookups.paths.iter().filter(|p| p.0 == l) {
                    path.push(hop(to, sent, Some(from)));
                }
                let outcome = match (rec.delivered_by, rec.failed) {
                    (NOBODY, true) => "lost (the origin reported RouteFailed)".to_string(),
                    (NOBODY, false) => "lost".to_string(),
                    _ if !rec.correct => format!(
                        "MISDELIVERED in {} hops at {} ({}) +{:.0}ms; root then {} ({})",
                        rec.hops,
                        self.id(rec.delivered_by),
                        state(self.id(rec.delivered_by), rec.delivered_at),
                        (rec.delivered_at - rec.issued) as f64 / 1000.0,
                        rec.root_at_delivery,
                        state(rec.root_at_delivery, rec.delivered_at),
                    ),
                    _ => format!("delivered in {} hops", rec.hops),
                };
                RouteTrace {
                    key: rec.key.to_string(),
                    root: rec.root_at_issue.to_string(),
                    outcome,
                    path,
                }
            })
            .collect()
    }

    /// Routing-table holes, dead entries and proximity quality (only with `trace_routes`).
    pub(super) fn tables(&self) -> Option<TableReport> {
        if !self.config.trace_routes {
            return None;
        }
        let mut report = TableReport::default();
        let ids: Vec<u128> = self.net.oracle().ids().collect();
        // Live active nodes whose id starts with the first `row` digits of `id` then `digit`.
        let qualifying = |id: NodeId, row: usize, digit: u8| -> (usize, usize) {
            let (lo, hi) = prefix_range(id.with_digit(row, digit).as_u128(), row + 1);
            (
                ids.partition_point(|&x| x < lo),
                ids.partition_point(|&x| x <= hi),
            )
        };
        let mut ratio_sums: Vec<(f64, u64)> = Vec::new();
        let by_id: HashMap<u128, u32> = self
            .live_active
            .iter()
            .map(|&i| (self.id(i).as_u128(), i))
            .collect();
        for (n, &i) in self.live_active.iter().enumerate() {
            let Some(proto) = self.nodes[i as usize].proto.as_ref() else {
                continue;
            };
            let me = self.id(i);
            let mut filled: HashMap<(usize, u8), u32> = HashMap::new();
            for peer in proto.table_peers() {
                report.filled += 1;
                let Some(j) = index_of(peer.addr) else {
                    continue;
                };
                if !self.net.is_alive(j) {
                    report.dead_entries += 1;
                }
                let row = me.shared_prefix_len(peer.id);
                if row < crate::id::DIGITS {
                    filled.insert((row, peer.id.digit(row)), j);
                }
            }
            let sample = n % 97 == 0;
            for row in 0..crate::id::DIGITS {
                let mut any = false;
                for digit in 0..16u8 {
                    if digit == me.digit(row) {
                        continue;
                    }
                    let (lo, hi) = qualifying(me, row, digit);
                    if lo == hi {
                        continue;
                    }
                    any = true;
                    match filled.get(&(row, digit)) {
                        None => {
                            if report.holes_by_row.len() <= row {
                                report.holes_by_row.resize(row + 1, 0);
                            }
                            report.holes_by_row[row] += 1;
                        }
                        Some(&entry) if sample && row < 4 => {
                            let best = ids[lo..hi]
                                .iter()
                                .filter_map(|id| by_id.get(id))
                                .map(|&c| self.net.latency().one_way_us(i as usize, c as usize))
                                .min()
                                .unwrap_or(1)
                                .max(1);
                            let actual = self.net.latency().one_way_us(i as usize, entry as usize);
                            if ratio_sums.len() <= row {
                                ratio_sums.resize(row + 1, (0.0, 0));
                            }
                            ratio_sums[row].0 += actual as f64 / best as f64;
                            ratio_sums[row].1 += 1;
                        }
                        Some(_) => {}
                    }
                }
                if !any {
                    break;
                }
            }
        }
        for &i in &self.live_active {
            if report.dead_leaf_examples.len() >= 10 {
                break;
            }
            let Some(proto) = self.nodes[i as usize].proto.as_ref() else {
                continue;
            };
            let me = self.id(i);
            let leaves = proto.leaf_peers();
            for peer in &leaves {
                let dead = index_of(peer.addr).is_some_and(|j| self.is_dead_index(j));
                if !dead {
                    continue;
                }
                let clockwise = me.precedes(peer.id);
                let rank = leaves
                    .iter()
                    .filter(|p| me.precedes(p.id) == clockwise)
                    .filter(|p| me.ring_distance(p.id) <= me.ring_distance(peer.id))
                    .count();
                let died = index_of(peer.addr)
                    .and_then(|j| self.nodes.get(j as usize))
                    .map_or(0.0, |slot| {
                        (self.now().saturating_sub(slot.died_at)) as f64 / SECOND
                    });
                report.dead_leaf_examples.push(format!(
                    "{me}: {} ({} side, rank {rank}, dead for {died:.0} s), leaf set of {}",
                    peer.id,
                    if clockwise {
                        "clockwise"
                    } else {
                        "counter-clockwise"
                    },
                    leaves.len()
                ));
            }
        }
        let mut per_lookup: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
        for &(lookup, from, to, _) in &self.lookups.paths {
            per_lookup.entry(lookup).or_default().push((from, to));
        }
        let (mut hop_sums, mut direct_sum, mut direct_n) = (Vec::<(f64, u64)>::new(), 0.0, 0u64);
        for (lookup, rec) in self.lookups.recs.iter().enumerate() {
            let Some(path) = per_lookup.get(&(lookup as u32)) else {
                continue;
            };
            if rec.delivered_by == NOBODY || path.len() != usize::from(rec.hops) {
                continue; // undelivered or re-routed
            }
            for (k, &(from, to)) in path.iter().enumerate() {
                if hop_sums.len() <= k {
                    hop_sums.resize(k + 1, (0.0, 0));
                }
                hop_sums[k].0 +=
                    self.net.latency().one_way_us(from as usize, to as usize) as f64 / 1000.0;
                hop_sums[k].1 += 1;
            }
            direct_sum += self
                .net
                .latency()
                .one_way_us(rec.origin as usize, rec.delivered_by as usize)
                as f64
                / 1000.0;
            direct_n += 1;
        }
        report.hop_ms_by_index = hop_sums
            .iter()
            .map(|&(sum, n)| sum / n.max(1) as f64)
            .collect();
        report.direct_ms_mean = direct_sum / direct_n.max(1) as f64;
        report.holes_at_start_by_row = self.holes_at_start.clone();
        let total = self.lookups.stretch_by_direct.len().max(1) as f64;
        let mut lower = 0;
        for upper_ms in [5, 10, 20, 40, 80, u64::MAX / 1000] {
            let upper = upper_ms * 1000;
            let (n, sum) = self
                .lookups
                .stretch_by_direct
                .iter()
                .filter(|&&(d, _)| d >= lower && d < upper)
                .fold((0u64, 0.0), |(n, sum), &(_, r)| (n + 1, sum + r));
            report.stretch_by_direct_ms.push(StretchBucket {
                below_ms: upper_ms.min(1_000_000),
                share: n as f64 / total,
                mean: sum / n.max(1) as f64,
            });
            lower = upper;
        }
        report.proximity_ratio_by_row = ratio_sums
            .iter()
            .map(|&(sum, n)| if n == 0 { 0.0 } else { sum / n as f64 })
            .collect();
        Some(report)
    }
}

/// The ids that share the first `digits` digits of `id`, as an inclusive range `(lo, hi)`.
pub(super) fn prefix_range(id: u128, digits: usize) -> (u128, u128) {
    let free_bits = 128u32.saturating_sub(4 * digits as u32);
    // Digits below the prefix: all zero in `lo`, all one in `hi`.
    let below = u128::MAX.checked_shr(128 - free_bits).unwrap_or(0);
    (id & !below, id | below)
}
