//! The scenarios on top of the network: the build by joins, the lookup windows, the silent
//! failure and churn, and the check of every delivery against the oracle.

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::engine::{Phase, Simulation, NOBODY, SECOND};
use super::node::SimNode;
use super::{KeyPopularity, Scenario};
use crate::id::{Key, NodeId};

/// The simulation's own events, queued on the network beside messages and timers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ev {
    /// Build: create and join the next node.
    JoinNext,
    /// Build: give up waiting for this joiner.
    JoinTimeout(u32),
    /// Build done: switch to model delays and schedule the scenario.
    StartScenario,
    /// Issue lookup `k` of lookup segment `segment`.
    Lookup {
        segment: u8,
        k: u32,
    },
    /// Snapshot the traffic counters into mark `i`.
    Mark(u8),
    /// Failure scenario: the nodes fail.
    Fail,
    /// Churn: start / a node arrives / a node departs / stop.
    ChurnStart,
    Arrival,
    Departure(u32),
    ChurnEnd,
    /// The run is over.
    End,
}

/// The build's progress.
#[derive(Debug, Default)]
pub(super) struct BuildState {
    /// Nodes created by the build so far.
    pub(super) created: usize,
    /// The joiner the build waits for.
    pub(super) current_joiner: Option<u32>,
    /// Joins that timed out.
    pub(super) join_failures: u64,
    /// Nodes when the scenario started.
    pub(super) nodes: usize,
}

/// Churn's counters.
#[derive(Debug, Default)]
pub(super) struct ChurnState {
    pub(super) on: bool,
    /// Joins completed while churn was on, and their total time.
    pub(super) joins: u64,
    pub(super) join_us: u64,
    pub(super) arrivals: u64,
    pub(super) departures: u64,
}

/// The failure scenario's figures.
#[derive(Debug, Default)]
pub(super) struct FailureState {
    /// Control messages per live node-µs in the repair window of the same run without the
    /// failure.
    pub(super) twin_rate: Option<f64>,
    pub(super) failed_nodes: usize,
    pub(super) dead_leaf_after_repair: u64,
}

/// One lookup and what became of it.
pub(super) struct LookupRec {
    pub(super) key: Key,
    pub(super) origin: u32,
    pub(super) issued: u64,
    pub(super) root_at_issue: NodeId,
    pub(super) root_at_delivery: NodeId,
    pub(super) delivered_at: u64,
    /// Lookup window: 0, or the failure scenario's before (0), during (1) and after (2).
    pub(super) phase: u8,
    pub(super) delivered_by: u32,
    pub(super) hops: u8,
    pub(super) correct: bool,
    pub(super) failed: bool,
    /// Another live node received a copy of it.
    pub(super) left_origin: bool,
    /// Its origin routed to this key before.
    pub(super) repeat: bool,
}

/// Lookups spread evenly over a window.
struct Segment {
    start: u64,
    len: u64,
    count: u32,
    phase: u8,
}

/// Every lookup issued, and the delays of the delivered ones.
pub(super) struct Lookups {
    pub(super) recs: Vec<LookupRec>,
    /// `(origin, message id)` to lookup index, for `RouteFailed`.
    route_ids: HashMap<(u32, u64), u32>,
    segments: Vec<Segment>,
    /// Route delay over direct delay, per delivered lookup with at least one hop.
    pub(super) stretches: Vec<f32>,
    /// The same, split by whether the lookup repeated its origin's earlier key.
    pub(super) first_sum: f64,
    pub(super) first_count: u64,
    pub(super) repeat_sum: f64,
    pub(super) repeat_count: u64,
    /// The keys of a Zipf popularity, by rank, and the cumulative weights of the ranks.
    popular: Vec<Key>,
    cumulative: Vec<f64>,
    /// `(origin, key)` pairs looked up so far.
    seen: HashSet<(u32, u128)>,
    pub(super) route_us: u64,
    pub(super) direct_us: u64,
    /// With `trace_routes`: every lookup hop `(lookup, from, to, sent at)`.
    pub(super) paths: Vec<(u32, u32, u32, u64)>,
    /// With `trace_routes`: (direct one-way delay in µs, stretch) of every delivered lookup.
    pub(super) stretch_by_direct: Vec<(u64, f64)>,
    pub(super) duplicates: u64,
}

impl Lookups {
    pub(super) fn new(lookups: usize, popularity: KeyPopularity, seed: u64) -> Self {
        let (mut popular, mut cumulative) = (Vec::new(), Vec::new());
        if let KeyPopularity::Zipf { keys, s } = popularity {
            // A stream of its own: the key set does not depend on anything else drawn.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(7);
            let mut total = 0.0;
            for rank in 1..=keys.max(1) {
                popular.push(Key::from_u128(rng.gen()));
                total += 1.0 / (rank as f64).powf(s);
                cumulative.push(total);
            }
        }
        Self {
            recs: Vec::with_capacity(lookups),
            route_ids: HashMap::new(),
            segments: Vec::new(),
            stretches: Vec::with_capacity(lookups),
            first_sum: 0.0,
            first_count: 0,
            repeat_sum: 0.0,
            repeat_count: 0,
            popular,
            cumulative,
            seen: HashSet::new(),
            route_us: 0,
            direct_us: 0,
            paths: Vec::new(),
            stretch_by_direct: Vec::new(),
            duplicates: 0,
        }
    }

    /// The key of the next lookup.
    fn draw_key(&self, rng: &mut ChaCha8Rng) -> Key {
        match self.cumulative.last() {
            None => Key::from_u128(rng.gen()),
            Some(&total) => {
                let u = rng.gen::<f64>() * total;
                let rank = self.cumulative.partition_point(|&c| c <= u);
                self.popular[rank.min(self.popular.len() - 1)]
            }
        }
    }

    /// Lookups issued so far.
    pub(super) fn len(&self) -> usize {
        self.recs.len()
    }

    /// Node `origin` gave up its message `id`.
    pub(super) fn route_failed(&mut self, origin: u32, id: u64) {
        if let Some(&lookup) = self.route_ids.get(&(origin, id)) {
            self.recs[lookup as usize].failed = true;
        }
    }
}

impl<P: SimNode> Simulation<P> {
    pub(super) fn handle_scenario(&mut self, event: Ev) {
        match event {
            Ev::JoinNext => self.join_next(),
            Ev::JoinTimeout(node) => {
                if self.build.current_joiner == Some(node) {
                    tracing::warn!(node, "join did not complete in time");
                    self.build.join_failures += 1;
                    self.build.current_joiner = None;
                    self.net.schedule(self.now(), Ev::JoinNext);
                }
            }
            Ev::StartScenario => self.start_scenario(),
            Ev::Lookup { segment, k } => self.issue_lookup(segment, k),
            Ev::Mark(i) => {
                self.tally.mark(usize::from(i), self.now());
                if i == 2 {
                    self.failure.dead_leaf_after_repair = self.dead_leaf_entries();
                }
                if i == 0 {
                    if let Some(tables) = self.tables() {
                        self.holes_at_start = tables.holes_by_row;
                    }
                }
            }
            Ev::Fail => self.fail_nodes(),
            Ev::ChurnStart => self.churn_start(),
            Ev::Arrival => self.arrival(),
            Ev::Departure(node) => {
                if self.churn.on && self.net.is_alive(node) {
                    self.churn.departures += 1;
                    self.kill(node);
                }
            }
            Ev::ChurnEnd => self.churn.on = false,
            Ev::End => self.done = true,
        }
    }

    // ---- build ----------------------------------------------------------------------------

    fn join_next(&mut self) {
        if self.phase != Phase::Build || self.build.current_joiner.is_some() {
            return;
        }
        let now = self.now();
        if self.build.created >= self.config.nodes {
            self.net.schedule(now, Ev::StartScenario);
            return;
        }
        self.build.created += 1;
        let joiner = self.start_join();
        if !self.net.is_active(joiner) {
            self.build.current_joiner = Some(joiner);
            let timeout = (self.config.join_timeout_s * SECOND) as u64;
            self.net.schedule(now + timeout, Ev::JoinTimeout(joiner));
        } else {
            self.net.schedule(now, Ev::JoinNext);
        }
    }

    fn start_scenario(&mut self) {
        if self.phase != Phase::Build {
            return;
        }
        self.phase = Phase::Scenario;
        self.net.set_compressed(false);
        if self.config.oracle_tables {
            self.force_oracle_tables();
        }
        self.tally.end_build();
        self.build.nodes = self.nodes.len();
        let secs = |s: f64| (s * SECOND) as u64;
        let t0 = self.now() + secs(self.config.warmup_s);
        let window = secs(self.config.lookup_window_s).max(1);
        let drain = secs(self.config.drain_s);
        let lookups = self.config.lookups as u32;
        let segments = &mut self.lookups.segments;
        let net = &mut self.net;
        let end = match self.config.scenario {
            Scenario::Steady => {
                segments.push(Segment {
                    start: t0,
                    len: window,
                    count: lookups,
                    phase: 0,
                });
                net.schedule(t0, Ev::Mark(0));
                net.schedule(t0 + window, Ev::Mark(1));
                t0 + window + drain
            }
            Scenario::Failure { .. } => {
                let t1 = t0 + window;
                let t2 = t1 + secs(self.config.repair_window_s).max(1);
                let third = lookups / 3;
                for (start, len, count, phase) in [
                    (t0, window, third, 0),
                    (t1, t2 - t1, third, 1),
                    (t2, window, lookups - 2 * third, 2),
                ] {
                    segments.push(Segment {
                        start,
                        len,
                        count,
                        phase,
                    });
                }
                net.schedule(t0, Ev::Mark(0));
                net.schedule(t1, Ev::Mark(1));
                net.schedule(t1, Ev::Fail);
                net.schedule(t2, Ev::Mark(2));
                t2 + window + drain
            }
            Scenario::Churn { duration_s, .. } => {
                let duration = secs(duration_s).max(1);
                segments.push(Segment {
                    start: t0,
                    len: duration,
                    count: lookups,
                    phase: 0,
                });
                net.schedule(t0, Ev::Mark(0));
                net.schedule(t0, Ev::ChurnStart);
                net.schedule(t0 + duration, Ev::ChurnEnd);
                net.schedule(t0 + duration, Ev::Mark(1));
                t0 + duration + drain
            }
        };
        for (index, segment) in segments.iter().enumerate() {
            if segment.count > 0 {
                net.schedule(
                    segment.start,
                    Ev::Lookup {
                        segment: index as u8,
                        k: 0,
                    },
                );
            }
        }
        net.schedule(end, Ev::End);
    }

    // ---- lookups --------------------------------------------------------------------------

    fn issue_lookup(&mut self, segment: u8, k: u32) {
        let now = self.now();
        let seg = &self.lookups.segments[segment as usize];
        let phase = seg.phase;
        if k + 1 < seg.count {
            let at = seg.start + seg.len * u64::from(k + 1) / u64::from(seg.count);
            self.net.schedule(at, Ev::Lookup { segment, k: k + 1 });
        }
        let key = self.lookups.draw_key(&mut self.rng.lookup);
        let count = self.live_active.len();
        let index = self.lookups.len() as u32;
        let origin = if count == 0 {
            NOBODY
        } else {
            self.live_active[self.rng.lookup.gen_range(0..count)]
        };
        let root_at_issue = self.net.oracle().root(key).unwrap_or(NodeId::from_u128(0));
        let repeat = origin != NOBODY && !self.lookups.seen.insert((origin, key.as_u128()));
        self.lookups.recs.push(LookupRec {
            repeat,
            key,
            origin,
            issued: now,
            root_at_issue,
            root_at_delivery: NodeId::from_u128(0),
            delivered_at: 0,
            phase,
            delivered_by: NOBODY,
            hops: 0,
            correct: false,
            failed: false,
            left_origin: false,
        });
        if origin == NOBODY {
            return;
        }
        let payload = u64::from(index).to_le_bytes().to_vec();
        let mut message_id = 0;
        self.call(origin, false, |p, now| {
            message_id = p.route(now, key, payload);
        });
        self.lookups.route_ids.insert((origin, message_id), index);
    }

    /// A copy of a lookup (its payload) reached node `at`: if `at` is alive and not the
    /// lookup's origin, the lookup left its origin.
    pub(super) fn lookup_arrived(&mut self, at: u32, payload: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let alive = self
            .nodes
            .get(at as usize)
            .is_some_and(|n| n.proto.is_some());
        let index = u64::from_le_bytes(bytes) as usize;
        if let Some(rec) = self.lookups.recs.get_mut(index) {
            if alive && rec.origin != at {
                rec.left_origin = true;
            }
        }
    }

    /// Node `at` delivered a lookup: checks it against the oracle and records its delay.
    pub(super) fn delivered(&mut self, at: u32, key: Key, hops: u8, payload: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let index = u64::from_le_bytes(bytes) as usize;
        let now = self.now();
        let now_root = self.net.oracle().root(key);
        let at_id = self.id(at);
        let lookups = &mut self.lookups;
        let Some(rec) = lookups.recs.get_mut(index) else {
            return;
        };
        if rec.key != key {
            tracing::warn!(index, "delivery for a lookup with a different key");
            return;
        }
        if rec.delivered_by != NOBODY {
            lookups.duplicates += 1;
            return;
        }
        rec.delivered_by = at;
        rec.delivered_at = now;
        rec.root_at_delivery = now_root.unwrap_or(NodeId::from_u128(0));
        rec.hops = hops;
        rec.correct = now_root == Some(at_id) || rec.root_at_issue == at_id;
        if at != rec.origin {
            let direct = self
                .net
                .latency()
                .one_way_us(rec.origin as usize, at as usize);
            let route = now - rec.issued;
            lookups.route_us += route;
            lookups.direct_us += direct;
            let stretch = route as f64 / direct as f64;
            lookups.stretches.push(stretch as f32);
            if rec.repeat {
                lookups.repeat_sum += stretch;
                lookups.repeat_count += 1;
            } else {
                lookups.first_sum += stretch;
                lookups.first_count += 1;
            }
            if self.config.trace_routes {
                lookups
                    .stretch_by_direct
                    .push((direct, route as f64 / direct as f64));
            }
        }
    }

    // ---- failure and churn ----------------------------------------------------------------

    fn fail_nodes(&mut self) {
        let Scenario::Failure { fraction } = self.config.scenario else {
            return;
        };
        let count = ((self.live_active.len() as f64) * fraction).round() as usize;
        for _ in 0..count {
            let n = self.live_active.len();
            if n <= 1 {
                break;
            }
            let victim = self.live_active[self.rng.churn.gen_range(0..n)];
            self.kill(victim);
            self.failure.failed_nodes += 1;
        }
    }

    fn mean_session_us(&self) -> f64 {
        match self.config.scenario {
            Scenario::Churn {
                median_session_s, ..
            } => median_session_s / std::f64::consts::LN_2 * SECOND,
            _ => f64::INFINITY,
        }
    }

    fn exponential(&mut self, mean_us: f64) -> u64 {
        let u: f64 = self.rng.churn.gen();
        (-mean_us * (1.0 - u).ln()) as u64
    }

    fn churn_start(&mut self) {
        self.churn.on = true;
        let mean = self.mean_session_us();
        for index in 0..self.nodes.len() as u32 {
            if self.net.is_alive(index) {
                let session = self.exponential(mean);
                self.net
                    .schedule(self.now() + session, Ev::Departure(index));
            }
        }
        self.schedule_arrival();
    }

    fn schedule_arrival(&mut self) {
        // Arrival rate N / mean session keeps the population near N.
        let mean_gap = self.mean_session_us() / self.config.nodes.max(1) as f64;
        let gap = self.exponential(mean_gap);
        self.net.schedule(self.now() + gap, Ev::Arrival);
    }

    fn arrival(&mut self) {
        if !self.churn.on {
            return;
        }
        self.churn.arrivals += 1;
        let joiner = self.start_join();
        let session = self.exponential(self.mean_session_us());
        self.net
            .schedule(self.now() + session, Ev::Departure(joiner));
        self.schedule_arrival();
    }
}
