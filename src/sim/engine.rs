//! The event loop: nodes, messages in flight, timers, scenarios and the delivery oracle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::latency::{Grid, LatencyModel};
use super::node::{Effect, SimNode};
use super::queue::EventQueue;
use super::report::{
    peak_rss_mib, ChurnReport, FailureReport, KindCount, Report, RouteTrace, StretchBucket,
    TableReport,
};
use super::{ModelSpec, Scenario, SimConfig};
use crate::id::{Key, NodeId};
use crate::pastry::{Message, MessageKind, Pastry, PeerInfo};

const SECOND: f64 = 1_000_000.0;
const NO_TIMER: u64 = u64::MAX;
const NOBODY: u32 = u32::MAX;
/// Per-hop delay while the overlay is built in compressed time.
const BUILD_HOP_US: u64 = 1;
/// Sample size for the bootstrap choice of the matrix model (no spatial index there).
const MATRIX_BOOTSTRAP_SAMPLE: usize = 256;
/// First port of the fake node addresses.
const BASE_PORT: u16 = 7000;
/// A lost lookup whose origin failed within this long of issuing it is counted in
/// `lost_origin_died`.
const ORIGIN_DEATH_WINDOW_US: u64 = 10_000_000;
/// Progress is reported every this many events.
const PROGRESS_EVERY: u64 = 1 << 18;

/// Where a run is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nodes are joining one at a time.
    Build,
    /// The scenario (warm-up, lookups, failure or churn, drain) is running.
    Scenario,
}

/// A progress snapshot handed to the callback of [`Simulation::run`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Virtual time in seconds.
    pub virtual_s: f64,
    /// Nodes created so far.
    pub nodes_created: usize,
    /// Nodes alive and joined.
    pub live_active: usize,
    /// Lookups issued so far.
    pub lookups_issued: usize,
    /// Events processed so far.
    pub events: u64,
    /// Events queued (including stale timers).
    pub queued: usize,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// A message in `inflight[slot]` arrives.
    Deliver(u32),
    /// A node's timer (stale unless it equals the node's `timer_at`).
    Timer(u32),
    /// An RTT measurement result for `node`.
    Proximity {
        node: u32,
        peer: u32,
        rtt_us: u32,
    },
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
    /// Snapshot the traffic counters into `marks[i]`.
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

struct Slot<P> {
    proto: Option<P>,
    id: NodeId,
    timer_at: u64,
    /// When the node failed (`NO_TIMER` while alive).
    died_at: u64,
    /// When the node was created.
    created_at: u64,
    /// When the node became active (`NO_TIMER` before).
    active_at: u64,
    alive: bool,
    active: bool,
    /// Position in `live_active` (valid while active and alive).
    live_pos: u32,
}

struct InFlight {
    from: u32,
    to: u32,
    msg: Message,
}

struct LookupRec {
    key: Key,
    origin: u32,
    issued: u64,
    root_at_issue: NodeId,
    root_at_delivery: NodeId,
    delivered_at: u64,
    phase: u8,
    delivered_by: u32,
    hops: u8,
    correct: bool,
    failed: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    all_msgs: u64,
    control_msgs: u64,
    control_bytes: u64,
    acks: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    time: u64,
    traffic: Traffic,
    /// Integral of live nodes over time, in node-microseconds.
    node_us: f64,
    /// Per-kind counters (`kind as usize`, then measurements).
    kinds: [KindCount; MessageKind::COUNT + 1],
}

struct Segment {
    start: u64,
    len: u64,
    count: u32,
    phase: u8,
}

/// A simulation run: build an overlay of [`SimNode`]s (by default [`Pastry`]) and play a
/// [`Scenario`] on it.
///
/// The overlay is built by joins one at a time, each through the nearest active node (see
/// [`SimConfig::bootstrap_sample`]), starting the next join when the previous joiner becomes
/// active. Unless [`SimConfig::realtime_build`] is set, the build runs in compressed time:
/// messages take 1 µs while RTT measurements still report the model's RTT, so 100,000 joins
/// take a few virtual seconds and periodic maintenance barely runs during the build (the
/// paper's simulations also build the overlay before measuring). After the build every
/// message takes the model's delay (plus jitter and loss).
///
/// Nodes get fake addresses `10.a.b.c:port` derived from their index; no socket is opened.
/// A failed node is silent: messages to it are dropped and RTT measurements of it never
/// answer. Determinism: every random choice comes from ChaCha streams of [`SimConfig::seed`]
/// and events at equal times run in the order they were scheduled.
pub struct Simulation<P: SimNode = Pastry> {
    config: SimConfig,
    protocol: P::Config,
    nodes: Vec<Slot<P>>,
    model: LatencyModel,
    queue: EventQueue<Ev>,
    inflight: Vec<Option<InFlight>>,
    free_slots: Vec<u32>,
    now: u64,
    realtime: bool,
    phase: Phase,
    rng_place: ChaCha8Rng,
    rng_ids: ChaCha8Rng,
    rng_net: ChaCha8Rng,
    rng_lookup: ChaCha8Rng,
    rng_churn: ChaCha8Rng,
    rng_boot: ChaCha8Rng,
    oracle: BTreeSet<u128>,
    live_active: Vec<u32>,
    /// Live active nodes by position, for exact nearest-bootstrap queries (point models).
    grid: Option<Grid>,
    alive: usize,
    node_us: f64,
    node_us_at: u64,
    build_created: usize,
    current_joiner: Option<u32>,
    join_failures: u64,
    build_traffic: Traffic,
    build_nodes: usize,
    traffic: Traffic,
    /// Per message kind (`kind as usize`), plus RTT measurements at the end.
    kind_counts: [KindCount; MessageKind::COUNT + 1],
    lookups: Vec<LookupRec>,
    route_ids: HashMap<(u32, u64), u32>,
    segments: Vec<Segment>,
    stretches: Vec<f32>,
    route_us: u64,
    direct_us: u64,
    /// With `trace_routes`: every lookup hop `(lookup, from, to)`.
    paths: Vec<(u32, u32, u32, u64)>,
    marks: [Option<Mark>; 3],
    /// Failure scenario: control messages per live node-µs in the repair window of the same
    /// run without the failure.
    twin_rate: Option<f64>,
    /// With `trace_routes`: routing-table holes by row when the first lookup was issued.
    holes_at_start: Vec<u64>,
    /// With `trace_routes`: (direct one-way delay in µs, stretch) of every delivered lookup.
    stretch_by_direct: Vec<(u64, f64)>,
    duplicates: u64,
    failed_nodes: usize,
    dead_leaf_after_repair: u64,
    churn_on: bool,
    churn_joins: u64,
    churn_join_us: u64,
    arrivals: u64,
    departures: u64,
    events: u64,
    done: bool,
}

impl Simulation<Pastry> {
    /// A simulation of [`Pastry`] nodes.
    pub fn new(config: SimConfig) -> Self {
        let protocol = <Pastry as SimNode>::protocol_config(&config.protocol);
        Self::with_protocol(config, protocol)
    }
}

impl<P: SimNode> Simulation<P> {
    /// A simulation of nodes of type `P` built with `protocol`.
    pub fn with_protocol(config: SimConfig, protocol: P::Config) -> Self {
        let stream = |n: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            rng.set_stream(n);
            rng
        };
        let mut rng_place = stream(1);
        let model = LatencyModel::new(&config.model, &mut rng_place);
        let grid = (config.bootstrap_sample == 0 && !matches!(config.model, ModelSpec::Matrix(_)))
            .then(|| Grid::new(config.nodes));
        Self {
            grid,
            protocol,
            nodes: Vec::with_capacity(config.nodes),
            model,
            queue: EventQueue::new(),
            inflight: Vec::new(),
            free_slots: Vec::new(),
            now: 0,
            realtime: config.realtime_build,
            phase: Phase::Build,
            rng_place,
            rng_ids: stream(2),
            rng_net: stream(3),
            rng_lookup: stream(4),
            rng_churn: stream(5),
            rng_boot: stream(6),
            oracle: BTreeSet::new(),
            live_active: Vec::with_capacity(config.nodes),
            alive: 0,
            node_us: 0.0,
            node_us_at: 0,
            build_created: 0,
            current_joiner: None,
            join_failures: 0,
            build_traffic: Traffic::default(),
            build_nodes: 0,
            traffic: Traffic::default(),
            kind_counts: [KindCount::default(); MessageKind::COUNT + 1],
            lookups: Vec::with_capacity(config.lookups),
            route_ids: HashMap::new(),
            segments: Vec::new(),
            stretches: Vec::with_capacity(config.lookups),
            route_us: 0,
            direct_us: 0,
            paths: Vec::new(),
            marks: [None; 3],
            twin_rate: None,
            holes_at_start: Vec::new(),
            stretch_by_direct: Vec::new(),
            duplicates: 0,
            failed_nodes: 0,
            dead_leaf_after_repair: 0,
            churn_on: false,
            churn_joins: 0,
            churn_join_us: 0,
            arrivals: 0,
            departures: 0,
            events: 0,
            done: false,
            config,
        }
    }

    /// Runs the whole scenario and returns its report. `progress` is called every few hundred
    /// thousand events (the CLI prints it on stderr).
    ///
    /// A failure scenario first runs its twin without the failure (same seed, so the same
    /// overlay and traffic up to the failure) to measure the control traffic the repair window
    /// would have seen anyway; repair messages are the difference.
    pub fn run(mut self, progress: &mut dyn FnMut(&Progress)) -> Report {
        let started = Instant::now();
        if let Scenario::Failure { fraction } = self.config.scenario {
            if fraction > 0.0 {
                let config = SimConfig {
                    scenario: Scenario::Failure { fraction: 0.0 },
                    trace_routes: false,
                    ..self.config.clone()
                };
                let protocol = P::protocol_config(&config.protocol);
                let mut twin = Self::with_protocol(config, protocol);
                twin.simulate(progress);
                if let (Some(m1), Some(m2)) = (twin.marks[1], twin.marks[2]) {
                    self.twin_rate = Some(
                        (m2.traffic.control_msgs - m1.traffic.control_msgs) as f64
                            / (m2.node_us - m1.node_us).max(1.0),
                    );
                }
            }
        }
        self.simulate(progress);
        let mut report = self.report();
        report.wall_seconds = started.elapsed().as_secs_f64();
        report.peak_rss_mib = peak_rss_mib();
        report
    }

    fn simulate(&mut self, progress: &mut dyn FnMut(&Progress)) {
        if self.config.nodes > 0 {
            let first = self.create_node();
            self.call(first, false, |p, now| p.bootstrap_alone(now));
            self.build_created = 1;
            self.queue.push(0, Ev::JoinNext);
        }
        while let Some((time, ev)) = self.queue.pop() {
            self.now = time;
            self.events += 1;
            if self.events % PROGRESS_EVERY == 0 {
                progress(&self.progress());
            }
            self.handle(ev);
            if self.done {
                break;
            }
        }
        progress(&self.progress());
    }

    fn progress(&self) -> Progress {
        Progress {
            phase: self.phase,
            virtual_s: self.now as f64 / SECOND,
            nodes_created: self.nodes.len(),
            live_active: self.live_active.len(),
            lookups_issued: self.lookups.len(),
            events: self.events,
            queued: self.queue.len(),
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver(slot) => {
                let Some(InFlight { from, to, msg }) = self.inflight[slot as usize].take() else {
                    return;
                };
                self.free_slots.push(slot);
                let from = self.peer_info(from);
                self.call(to, false, |p, now| p.handle_message(now, from, msg));
            }
            Ev::Timer(node) => {
                let now = self.now;
                let slot = &mut self.nodes[node as usize];
                if slot.timer_at != now {
                    return; // stale: an earlier event replaced it
                }
                slot.timer_at = NO_TIMER;
                let Some(proto) = slot.proto.as_ref() else {
                    return;
                };
                match proto.poll_timeout() {
                    Some(at) if at <= now => {
                        self.call(node, true, |p, now| p.handle_timeout(now));
                    }
                    // The node's timer moved later since this event was queued: re-arm.
                    Some(at) => {
                        slot.timer_at = at;
                        self.queue.push(at, Ev::Timer(node));
                    }
                    None => {}
                }
            }
            Ev::Proximity { node, peer, rtt_us } => {
                let peer = self.peer_info(peer);
                self.call(node, false, |p, now| {
                    p.handle_proximity(now, peer, u64::from(rtt_us));
                });
            }
            Ev::JoinNext => self.join_next(),
            Ev::JoinTimeout(node) => {
                if self.current_joiner == Some(node) {
                    tracing::warn!(node, "join did not complete in time");
                    self.join_failures += 1;
                    self.current_joiner = None;
                    self.queue.push(self.now, Ev::JoinNext);
                }
            }
            Ev::StartScenario => self.start_scenario(),
            Ev::Lookup { segment, k } => self.issue_lookup(segment, k),
            Ev::Mark(i) => {
                self.update_area();
                self.marks[i as usize] = Some(Mark {
                    time: self.now,
                    traffic: self.traffic,
                    node_us: self.node_us,
                    kinds: self.kind_counts,
                });
                if i == 2 {
                    self.dead_leaf_after_repair = self.dead_leaf_entries();
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
                if self.churn_on && self.nodes[node as usize].alive {
                    self.departures += 1;
                    self.kill(node);
                }
            }
            Ev::ChurnEnd => self.churn_on = false,
            Ev::End => self.done = true,
        }
    }

    // ---- nodes ----------------------------------------------------------------------------

    fn create_node(&mut self) -> u32 {
        let index = self.nodes.len() as u32;
        self.model.place(&mut self.rng_place);
        let id = NodeId::from_u128(self.rng_ids.gen());
        let me = PeerInfo {
            id,
            addr: addr_of(index),
        };
        let seed = splitmix(self.config.seed ^ splitmix(u64::from(index)));
        let proto = P::create(me, &self.protocol, seed);
        self.update_area();
        self.alive += 1;
        self.nodes.push(Slot {
            proto: Some(proto),
            id,
            timer_at: NO_TIMER,
            died_at: NO_TIMER,
            created_at: self.now,
            active_at: NO_TIMER,
            alive: true,
            active: false,
            live_pos: NOBODY,
        });
        index
    }

    fn peer_info(&self, index: u32) -> PeerInfo {
        PeerInfo {
            id: self.nodes[index as usize].id,
            addr: addr_of(index),
        }
    }

    /// The node a peer description names, if it names one (its id must match the address).
    fn index_of(&self, peer: &PeerInfo) -> Option<u32> {
        let index = index_of(peer.addr)?;
        let slot = self.nodes.get(index as usize)?;
        (slot.id == peer.id).then_some(index)
    }

    /// Calls into node `index` (if alive), carries out its effects and re-arms its timer.
    fn call(&mut self, index: u32, timer_fired: bool, f: impl FnOnce(&mut P, u64)) {
        let now = self.now;
        let Some(proto) = self.nodes[index as usize].proto.as_mut() else {
            return;
        };
        f(proto, now);
        // A node that became active during this call did so before the outputs it produced
        // (e.g. delivering the messages it held while joining): the oracle must count it.
        if !self.nodes[index as usize].active
            && self.nodes[index as usize]
                .proto
                .as_ref()
                .is_some_and(|p| p.is_active())
        {
            self.activate(index);
        }
        loop {
            let Some(proto) = self.nodes[index as usize].proto.as_mut() else {
                return;
            };
            let Some(effect) = proto.poll_effect() else {
                break;
            };
            self.apply(index, effect);
        }
        let slot = &mut self.nodes[index as usize];
        let Some(proto) = slot.proto.as_ref() else {
            return;
        };
        // One queued timer event per node at most, at its earliest known deadline: a later
        // deadline needs no event now (the queued one re-arms when it finds nothing due), an
        // earlier one replaces it (the old one becomes stale).
        if let Some(at) = proto.poll_timeout() {
            // A timer due now right after firing is re-armed 1 µs later, so a protocol that
            // keeps asking for "now" cannot stall virtual time.
            let earliest = if timer_fired { now + 1 } else { now };
            let at = at.max(earliest);
            if at < slot.timer_at {
                slot.timer_at = at;
                self.queue.push(at, Ev::Timer(index));
            }
        }
    }

    fn apply(&mut self, from: u32, effect: Effect) {
        match effect {
            Effect::Send { to, msg } => {
                self.account(&msg);
                let Some(to) = self.index_of(&to) else {
                    tracing::warn!(?to, "send to an unknown peer");
                    return;
                };
                if self.config.trace_routes {
                    if let Message::Route { payload, .. } = &msg {
                        if let Ok(bytes) = <[u8; 8]>::try_from(payload.as_slice()) {
                            let lookup = u64::from_le_bytes(bytes) as u32;
                            self.paths.push((lookup, from, to, self.now));
                        }
                    }
                }
                if !self.nodes[to as usize].alive {
                    return;
                }
                if self.realtime
                    && self.config.loss > 0.0
                    && self.rng_net.gen_bool(self.config.loss)
                {
                    return;
                }
                let delay = self.delay(from, to);
                let slot = match self.free_slots.pop() {
                    Some(slot) => slot,
                    None => {
                        self.inflight.push(None);
                        (self.inflight.len() - 1) as u32
                    }
                };
                self.inflight[slot as usize] = Some(InFlight { from, to, msg });
                self.queue.push(self.now + delay, Ev::Deliver(slot));
            }
            Effect::Measure { peer } => {
                // An RTT sample costs a request and, from a live peer, a reply. A dead peer
                // never answers and the node is told nothing (as the real transport would).
                let Some(peer) = self.index_of(&peer) else {
                    return;
                };
                let alive = self.nodes[peer as usize].alive;
                let msgs = if alive { 2 } else { 1 };
                self.traffic.all_msgs += msgs;
                self.traffic.control_msgs += msgs;
                self.traffic.control_bytes += msgs * self.config.overhead_bytes;
                let count = &mut self.kind_counts[MessageKind::COUNT];
                count.msgs += msgs;
                count.bytes += msgs * self.config.overhead_bytes;
                if alive {
                    let rtt_us = self.model.rtt_us(from as usize, peer as usize);
                    let after = if self.realtime { rtt_us } else { BUILD_HOP_US };
                    self.queue.push(
                        self.now + after,
                        Ev::Proximity {
                            node: from,
                            peer,
                            // RTTs are far below 2^32 µs (71 minutes).
                            rtt_us: rtt_us.min(u64::from(u32::MAX)) as u32,
                        },
                    );
                }
            }
            Effect::Deliver {
                key, hops, payload, ..
            } => self.delivered(from, key, hops, &payload),
            Effect::RouteFailed { id } => {
                if let Some(&lookup) = self.route_ids.get(&(from, id)) {
                    self.lookups[lookup as usize].failed = true;
                }
            }
            Effect::Other => {}
        }
    }

    fn delay(&mut self, from: u32, to: u32) -> u64 {
        if !self.realtime {
            return BUILD_HOP_US;
        }
        let base = self.model.one_way_us(from as usize, to as usize);
        if self.config.jitter > 0.0 {
            let factor = 1.0 + self.rng_net.gen::<f64>() * self.config.jitter;
            (base as f64 * factor) as u64
        } else {
            base
        }
    }

    fn account(&mut self, msg: &Message) {
        let kind = msg.kind();
        let bytes = msg.encoded_len() as u64 + self.config.overhead_bytes;
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

    fn activate(&mut self, index: u32) {
        let slot = &mut self.nodes[index as usize];
        if !slot.alive || slot.active {
            return;
        }
        slot.active = true;
        slot.active_at = self.now;
        if self.churn_on {
            self.churn_joins += 1;
            self.churn_join_us += self.now - slot.created_at;
        }
        slot.live_pos = self.live_active.len() as u32;
        self.live_active.push(index);
        self.oracle.insert(slot.id.as_u128());
        if let (Some(grid), Some(point)) = (self.grid.as_mut(), self.model.point(index as usize)) {
            grid.insert(index, point);
        }
        if self.current_joiner == Some(index) {
            self.current_joiner = None;
            self.queue.push(self.now, Ev::JoinNext);
        }
    }

    /// Silent failure: the node stops answering and its state is dropped.
    fn kill(&mut self, index: u32) {
        self.update_area();
        let slot = &mut self.nodes[index as usize];
        if !slot.alive {
            return;
        }
        slot.alive = false;
        slot.died_at = self.now;
        slot.proto = None;
        slot.timer_at = NO_TIMER;
        self.alive -= 1;
        if slot.active {
            self.oracle.remove(&slot.id.as_u128());
            let pos = slot.live_pos as usize;
            self.live_active.swap_remove(pos);
            if let Some(&moved) = self.live_active.get(pos) {
                self.nodes[moved as usize].live_pos = pos as u32;
            }
            if let (Some(grid), Some(point)) =
                (self.grid.as_mut(), self.model.point(index as usize))
            {
                grid.remove(index, point);
            }
        }
    }

    fn update_area(&mut self) {
        self.node_us += self.alive as f64 * (self.now - self.node_us_at) as f64;
        self.node_us_at = self.now;
    }

    /// The nearest active node (by the model), or the nearest of a random sample of them.
    fn pick_bootstrap(&mut self, joiner: u32) -> Option<u32> {
        let candidates = self.live_active.len();
        if candidates == 0 {
            return None;
        }
        if let (Some(grid), Some(point)) = (self.grid.as_ref(), self.model.point(joiner as usize)) {
            let model = &self.model;
            return grid.nearest(
                point,
                |c| model.one_way_us(joiner as usize, c as usize),
                grid.cell_us(),
            );
        }
        let sample = match self.config.bootstrap_sample {
            0 => MATRIX_BOOTSTRAP_SAMPLE,
            n => n,
        };
        let mut best: Option<(u64, u32)> = None;
        let mut consider = |model: &LatencyModel, c: u32| {
            let d = model.one_way_us(joiner as usize, c as usize);
            if best.map_or(true, |b| (d, c) < b) {
                best = Some((d, c));
            }
        };
        if candidates <= sample {
            for &c in &self.live_active {
                consider(&self.model, c);
            }
        } else {
            for _ in 0..sample {
                let c = self.live_active[self.rng_boot.gen_range(0..candidates)];
                consider(&self.model, c);
            }
        }
        best.map(|(_, c)| c)
    }

    /// Creates a node and joins it through a nearby active node (or bootstraps it alone).
    fn start_join(&mut self) -> u32 {
        let joiner = self.create_node();
        match self.pick_bootstrap(joiner) {
            Some(via) => {
                let via = self.peer_info(via);
                self.call(joiner, false, |p, now| p.join(now, via));
            }
            None => self.call(joiner, false, |p, now| p.bootstrap_alone(now)),
        }
        joiner
    }

    // ---- scenario -------------------------------------------------------------------------

    fn join_next(&mut self) {
        if self.phase != Phase::Build || self.current_joiner.is_some() {
            return;
        }
        if self.build_created >= self.config.nodes {
            self.queue.push(self.now, Ev::StartScenario);
            return;
        }
        self.build_created += 1;
        let joiner = self.start_join();
        if !self.nodes[joiner as usize].active {
            self.current_joiner = Some(joiner);
            let timeout = (self.config.join_timeout_s * SECOND) as u64;
            self.queue.push(self.now + timeout, Ev::JoinTimeout(joiner));
        } else {
            self.queue.push(self.now, Ev::JoinNext);
        }
    }

    fn start_scenario(&mut self) {
        if self.phase != Phase::Build {
            return;
        }
        self.phase = Phase::Scenario;
        self.realtime = true;
        if self.config.oracle_tables {
            self.force_oracle_tables();
        }
        self.build_traffic = self.traffic;
        self.build_nodes = self.nodes.len();
        let secs = |s: f64| (s * SECOND) as u64;
        let t0 = self.now + secs(self.config.warmup_s);
        let window = secs(self.config.lookup_window_s).max(1);
        let drain = secs(self.config.drain_s);
        let lookups = self.config.lookups as u32;
        let end = match self.config.scenario {
            Scenario::Steady => {
                self.segments.push(Segment {
                    start: t0,
                    len: window,
                    count: lookups,
                    phase: 0,
                });
                self.queue.push(t0, Ev::Mark(0));
                self.queue.push(t0 + window, Ev::Mark(1));
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
                    self.segments.push(Segment {
                        start,
                        len,
                        count,
                        phase,
                    });
                }
                self.queue.push(t0, Ev::Mark(0));
                self.queue.push(t1, Ev::Mark(1));
                self.queue.push(t1, Ev::Fail);
                self.queue.push(t2, Ev::Mark(2));
                t2 + window + drain
            }
            Scenario::Churn { duration_s, .. } => {
                let duration = secs(duration_s).max(1);
                self.segments.push(Segment {
                    start: t0,
                    len: duration,
                    count: lookups,
                    phase: 0,
                });
                self.queue.push(t0, Ev::Mark(0));
                self.queue.push(t0, Ev::ChurnStart);
                self.queue.push(t0 + duration, Ev::ChurnEnd);
                self.queue.push(t0 + duration, Ev::Mark(1));
                t0 + duration + drain
            }
        };
        for (index, segment) in self.segments.iter().enumerate() {
            if segment.count > 0 {
                self.queue.push(
                    segment.start,
                    Ev::Lookup {
                        segment: index as u8,
                        k: 0,
                    },
                );
            }
        }
        self.queue.push(end, Ev::End);
    }

    /// See [`SimConfig::oracle_tables`]: rows 1 and deeper (row 0 slots have N/16
    /// candidates each, too many to scan at 100k nodes, and are near-ideal already).
    fn force_oracle_tables(&mut self) {
        let mut by_id: Vec<(u128, u32)> = self
            .live_active
            .iter()
            .map(|&i| (self.nodes[i as usize].id.as_u128(), i))
            .collect();
        by_id.sort_unstable();
        for &i in &self.live_active.clone() {
            let Some(proto) = self.nodes[i as usize].proto.as_ref() else {
                continue;
            };
            let me = self.nodes[i as usize].id;
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
                    .map(|&(_, j)| (self.model.one_way_us(i as usize, j as usize), j))
                    .min();
                if let Some((one_way, j)) = best {
                    forced.push((self.peer_info(j), 2 * one_way));
                }
            }
            if let Some(proto) = self.nodes[i as usize].proto.as_mut() {
                for (peer, rtt) in forced {
                    proto.force_table_entry(peer, rtt);
                }
            }
        }
    }

    fn issue_lookup(&mut self, segment: u8, k: u32) {
        let seg = &self.segments[segment as usize];
        let phase = seg.phase;
        if k + 1 < seg.count {
            let at = seg.start + seg.len * u64::from(k + 1) / u64::from(seg.count);
            self.queue.push(at, Ev::Lookup { segment, k: k + 1 });
        }
        let key = Key::from_u128(self.rng_lookup.gen());
        let count = self.live_active.len();
        let index = self.lookups.len() as u32;
        let origin = if count == 0 {
            NOBODY
        } else {
            self.live_active[self.rng_lookup.gen_range(0..count)]
        };
        self.lookups.push(LookupRec {
            key,
            origin,
            issued: self.now,
            root_at_issue: self.root(key).unwrap_or(NodeId::from_u128(0)),
            root_at_delivery: NodeId::from_u128(0),
            delivered_at: 0,
            phase,
            delivered_by: NOBODY,
            hops: 0,
            correct: false,
            failed: false,
        });
        if origin == NOBODY {
            return;
        }
        let payload = u64::from(index).to_le_bytes().to_vec();
        let mut message_id = 0;
        self.call(origin, false, |p, now| {
            message_id = p.route(now, key, payload);
        });
        self.route_ids.insert((origin, message_id), index);
    }

    fn delivered(&mut self, at: u32, key: Key, hops: u8, payload: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let index = u64::from_le_bytes(bytes) as usize;
        let now_root = self.root(key);
        let at_id = self.nodes[at as usize].id;
        let Some(rec) = self.lookups.get_mut(index) else {
            return;
        };
        if rec.key != key {
            tracing::warn!(index, "delivery for a lookup with a different key");
            return;
        }
        if rec.delivered_by != NOBODY {
            self.duplicates += 1;
            return;
        }
        rec.delivered_by = at;
        rec.delivered_at = self.now;
        rec.root_at_delivery = now_root.unwrap_or(NodeId::from_u128(0));
        rec.hops = hops;
        rec.correct = now_root == Some(at_id) || rec.root_at_issue == at_id;
        if at != rec.origin {
            let direct = self.model.one_way_us(rec.origin as usize, at as usize);
            let route = self.now - rec.issued;
            self.route_us += route;
            self.direct_us += direct;
            self.stretches.push((route as f64 / direct as f64) as f32);
            if self.config.trace_routes {
                self.stretch_by_direct
                    .push((direct, route as f64 / direct as f64));
            }
        }
    }

    /// The oracle: the live active node closest to `key` (the id module's tie rule).
    fn root(&self, key: Key) -> Option<NodeId> {
        let k = key.as_u128();
        let successor = self
            .oracle
            .range(k..)
            .next()
            .or_else(|| self.oracle.iter().next());
        let predecessor = self
            .oracle
            .range(..k)
            .next_back()
            .or_else(|| self.oracle.iter().next_back());
        key.closest(
            [successor, predecessor]
                .into_iter()
                .flatten()
                .map(|&id| NodeId::from_u128(id)),
        )
    }

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
            let victim = self.live_active[self.rng_churn.gen_range(0..n)];
            self.kill(victim);
            self.failed_nodes += 1;
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
        let u: f64 = self.rng_churn.gen();
        (-mean_us * (1.0 - u).ln()) as u64
    }

    fn churn_start(&mut self) {
        self.churn_on = true;
        let mean = self.mean_session_us();
        for index in 0..self.nodes.len() as u32 {
            if self.nodes[index as usize].alive {
                let session = self.exponential(mean);
                self.queue.push(self.now + session, Ev::Departure(index));
            }
        }
        self.schedule_arrival();
    }

    fn schedule_arrival(&mut self) {
        // Arrival rate N / mean session keeps the population near N.
        let mean_gap = self.mean_session_us() / self.config.nodes.max(1) as f64;
        let gap = self.exponential(mean_gap);
        self.queue.push(self.now + gap, Ev::Arrival);
    }

    fn arrival(&mut self) {
        if !self.churn_on {
            return;
        }
        self.arrivals += 1;
        let joiner = self.start_join();
        let session = self.exponential(self.mean_session_us());
        self.queue.push(self.now + session, Ev::Departure(joiner));
        self.schedule_arrival();
    }

    // ---- report ---------------------------------------------------------------------------

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

    fn dead_leaf_entries(&self) -> u64 {
        self.live_active
            .iter()
            .map(|&i| {
                self.leaf_indices(i as usize)
                    .iter()
                    .filter(|&&j| !self.nodes.get(j as usize).is_some_and(|s| s.alive))
                    .count() as u64
            })
            .sum()
    }

    /// Live active nodes whose leaf set is not the `L/2` nearest live active ids on each side.
    fn wrong_leaf_sets(&self) -> u64 {
        let half = self.config.protocol.leaf_set_size / 2;
        let mut wrong = 0;
        for &i in &self.live_active {
            let me = self.nodes[i as usize].id.as_u128();
            let mut truth: Vec<u128> = self
                .oracle
                .range(me + 1..)
                .chain(self.oracle.range(..me))
                .take(half)
                .chain(
                    self.oracle
                        .range(..me)
                        .rev()
                        .chain(self.oracle.range(me + 1..).rev())
                        .take(half),
                )
                .copied()
                .collect();
            truth.sort_unstable();
            truth.dedup();
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

    fn long_routes(&self) -> Vec<RouteTrace> {
        if !self.config.trace_routes {
            return Vec::new();
        }
        let mut bound = 0u8;
        let mut reach = 1usize;
        while reach < self.build_nodes {
            reach = reach.saturating_mul(16);
            bound += 1;
        }
        let long = (0..self.lookups.len() as u32).filter(|&l| {
            let rec = &self.lookups[l as usize];
            rec.delivered_by != NOBODY && rec.hops > bound
        });
        let lost = (0..self.lookups.len() as u32)
            .filter(|&l| self.lookups[l as usize].delivered_by == NOBODY);
        let wrong = (0..self.lookups.len() as u32).filter(|&l| {
            let rec = &self.lookups[l as usize];
            rec.delivered_by != NOBODY && !rec.correct
        });
        let chosen: Vec<u32> = long
            .take(10)
            .chain(lost.take(10))
            .chain(wrong.take(10))
            .collect();
        let by_id: HashMap<NodeId, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, slot)| (slot.id, i))
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
                let rec = &self.lookups[l as usize];
                let hop = |node: u32, sent: u64, prev: Option<u32>| {
                    let slot = &self.nodes[node as usize];
                    let delay =
                        prev.map_or(0, |p| self.model.one_way_us(p as usize, node as usize));
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
                        slot.id,
                        rec.key.shared_prefix_len(slot.id),
                        (arrival - rec.issued) as f64 / 1000.0
                    )
                };
                let mut path = vec![hop(rec.origin, rec.issued, None)];
                for &(_, from, to, sent) in self.paths.iter().filter(|p| p.0 == l) {
                    path.push(hop(to, sent, Some(from)));
                }
                let outcome = match (rec.delivered_by, rec.failed) {
                    (NOBODY, true) => "lost (the origin reported RouteFailed)".to_string(),
                    (NOBODY, false) => "lost".to_string(),
                    _ if !rec.correct => format!(
                        "MISDELIVERED in {} hops at {} ({}) +{:.0}ms; root then {} ({})",
                        rec.hops,
                        self.nodes[rec.delivered_by as usize].id,
                        state(self.nodes[rec.delivered_by as usize].id, rec.delivered_at),
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
    fn tables(&self) -> Option<TableReport> {
        if !self.config.trace_routes {
            return None;
        }
        let mut report = TableReport::default();
        let ids: Vec<u128> = self.oracle.iter().copied().collect();
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
            .map(|&i| (self.nodes[i as usize].id.as_u128(), i))
            .collect();
        for (n, &i) in self.live_active.iter().enumerate() {
            let Some(proto) = self.nodes[i as usize].proto.as_ref() else {
                continue;
            };
            let me = self.nodes[i as usize].id;
            let mut filled: HashMap<(usize, u8), u32> = HashMap::new();
            for peer in proto.table_peers() {
                report.filled += 1;
                let Some(j) = index_of(peer.addr) else {
                    continue;
                };
                if !self.nodes[j as usize].alive {
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
                                .map(|&c| self.model.one_way_us(i as usize, c as usize))
                                .min()
                                .unwrap_or(1)
                                .max(1);
                            let actual = self.model.one_way_us(i as usize, entry as usize);
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
            let me = self.nodes[i as usize].id;
            let leaves = proto.leaf_peers();
            for peer in &leaves {
                let dead = index_of(peer.addr)
                    .and_then(|j| self.nodes.get(j as usize))
                    .is_some_and(|slot| !slot.alive);
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
                        (self.now.saturating_sub(slot.died_at)) as f64 / SECOND
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
        for &(lookup, from, to, _) in &self.paths {
            per_lookup.entry(lookup).or_default().push((from, to));
        }
        let (mut hop_sums, mut direct_sum, mut direct_n) = (Vec::<(f64, u64)>::new(), 0.0, 0u64);
        for (lookup, rec) in self.lookups.iter().enumerate() {
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
                hop_sums[k].0 += self.model.one_way_us(from as usize, to as usize) as f64 / 1000.0;
                hop_sums[k].1 += 1;
            }
            direct_sum += self
                .model
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
        let total = self.stretch_by_direct.len().max(1) as f64;
        let mut lower = 0;
        for upper_ms in [5, 10, 20, 40, 80, u64::MAX / 1000] {
            let upper = upper_ms * 1000;
            let (n, sum) = self
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

    fn report(&self) -> Report {
        let mut histogram: Vec<u64> = Vec::new();
        let (mut correct, mut lost, mut misdelivered, mut route_failed) = (0, 0, 0, 0);
        let mut lost_origin_died = 0;
        let mut hops_by_phase = [(0u64, 0u64); 3];
        let mut lost_by_phase = [0u64; 3];
        let mut mis_by_phase = [0u64; 3];
        for rec in &self.lookups {
            let phase = usize::from(rec.phase.min(2));
            if rec.failed {
                route_failed += 1;
            }
            if rec.delivered_by == NOBODY {
                lost += 1;
                let origin_died = self
                    .nodes
                    .get(rec.origin as usize)
                    .map_or(NO_TIMER, |n| n.died_at);
                if origin_died.saturating_sub(rec.issued) <= ORIGIN_DEATH_WINDOW_US {
                    lost_origin_died += 1;
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
        let mut stretches = self.stretches.clone();
        stretches.sort_unstable_by(f32::total_cmp);
        let stretch_mean = if stretches.is_empty() {
            0.0
        } else {
            stretches.iter().map(|&s| f64::from(s)).sum::<f64>() / stretches.len() as f64
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
        let (control_msgs, control_bytes, acks) = rate(self.marks[0], self.marks[1]);
        let control_by_kind = match (self.marks[0], self.marks[1]) {
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
            self.marks[0],
            self.marks[1],
            self.marks[2],
        ) {
            // Baseline: the per-node rate of the twin run without failure in the same window
            // (else the rate before the failure), times this window's live node-time (fewer
            // nodes send fewer heartbeats).
            let baseline_per_node_us = self.twin_rate.unwrap_or(
                (m1.traffic.control_msgs - m0.traffic.control_msgs) as f64
                    / (m1.node_us - m0.node_us).max(1.0),
            );
            let window_msgs = m2.traffic.control_msgs - m1.traffic.control_msgs;
            let baseline = baseline_per_node_us * (m2.node_us - m1.node_us);
            let per_node = (window_msgs as f64 - baseline) / self.failed_nodes.max(1) as f64;
            repair_per_node = Some(per_node);
            let before = mean(hops_by_phase[0]);
            let after = mean(hops_by_phase[2]);
            failure = Some(FailureReport {
                failed: self.failed_nodes,
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
                dead_leaf_entries_after_repair: self.dead_leaf_after_repair,
                repair_window_msgs_by_kind: kind_names()
                    .zip(m1.kinds.iter().zip(m2.kinds))
                    .filter(|(_, (a, b))| b.msgs > a.msgs)
                    .map(|(name, (a, b))| (name.to_string(), b.msgs - a.msgs))
                    .collect(),
            });
        }

        let churn = match (self.config.scenario, self.marks[0], self.marks[1]) {
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
                arrivals: self.arrivals,
                departures: self.departures,
                joins_completed: self.churn_joins,
                mean_join_s: self.churn_join_us as f64 / SECOND / self.churn_joins.max(1) as f64,
                mean_live_nodes: (m1.node_us - m0.node_us) / (m1.time - m0.time).max(1) as f64,
                correct_fraction: correct as f64 / self.lookups.len().max(1) as f64,
                misdelivered_fraction: misdelivered as f64 / self.lookups.len().max(1) as f64,
                correct_fraction_live_origins: correct as f64
                    / (self.lookups.len() as u64 - lost_origin_died).max(1) as f64,
            }),
            _ => None,
        };

        let joined = self.build_nodes.saturating_sub(1).max(1);
        Report {
            scenario: self.config.scenario.name().to_string(),
            model: self.config.model.name().to_string(),
            seed: self.config.seed,
            proximity: self.config.protocol.proximity,
            nodes: self.build_nodes,
            lookups: self.lookups.len(),
            delivered_correct: correct,
            lost,
            misdelivered,
            duplicates: self.duplicates,
            route_failed,
            lost_origin_died,
            mean_hops: mean((total_hops, delivered)),
            max_hops: histogram.len().saturating_sub(1) as u32,
            hops_histogram: histogram,
            stretch_mean,
            stretch_median,
            stretch_of_means: if self.direct_us == 0 {
                0.0
            } else {
                self.route_us as f64 / self.direct_us as f64
            },
            long_routes: self.long_routes(),
            tables: self.tables(),
            join_msgs_per_node: self.build_traffic.all_msgs as f64 / joined as f64,
            join_failures: self.join_failures,
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
                .zip(self.kind_counts)
                .filter(|(_, count)| count.msgs > 0)
                .map(|(name, count)| (name.to_string(), count))
                .collect::<BTreeMap<_, _>>(),
            virtual_seconds: self.now as f64 / SECOND,
            events: self.events,
            wall_seconds: 0.0,
            peak_rss_mib: 0.0,
        }
    }
}

/// The fake address of node `index`: `10.a.b.c:port`, the low 24 bits of the index in the IP
/// and the rest in the port. No socket is ever opened.
pub(crate) fn addr_of(index: u32) -> SocketAddr {
    let [hi, a, b, c] = index.to_be_bytes();
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, a, b, c)),
        BASE_PORT + u16::from(hi),
    )
}

/// The inverse of [`addr_of`].
pub(crate) fn index_of(addr: SocketAddr) -> Option<u32> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let [ten, a, b, c] = ip.octets();
    let hi = addr.port().checked_sub(BASE_PORT)?;
    if ten != 10 || hi > 255 {
        return None;
    }
    Some(u32::from_be_bytes([hi as u8, a, b, c]))
}

/// Names of the per-kind counters, in counter order.
fn kind_names() -> impl Iterator<Item = &'static str> {
    MessageKind::ALL
        .iter()
        .map(|kind| kind.name())
        .chain(["measure"])
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The ids that share the first `digits` digits of `id`, as an inclusive range `(lo, hi)`.
fn prefix_range(id: u128, digits: usize) -> (u128, u128) {
    let free_bits = 128u32.saturating_sub(4 * digits as u32);
    // Digits below the prefix: all zero in `lo`, all one in `hi`.
    let below = u128::MAX.checked_shr(128 - free_bits).unwrap_or(0);
    (id & !below, id | below)
}
