//! The simulation: nodes on the [network](super::net), the event loop, and what a node's calls
//! and effects do to the run's state. The scenarios live in `scenario.rs`, the diagnostics in
//! `diagnostics.rs`, the report in `summary.rs`.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::latency::{Grid, LatencyModel};
use super::net::{LinkOptions, NetEvent, Network, TimerOrder};
use super::node::{Effect, SimNode};
use super::report::{peak_rss_mib, Report};
use super::scenario::{BuildState, ChurnState, Ev, FailureState, Lookups};
use super::summary::Tally;
use super::{ModelSpec, Scenario, SimConfig};
use crate::id::NodeId;
use crate::pastry::{Event, Message, Pastry};

pub(super) const SECOND: f64 = 1_000_000.0;
/// "Never" for the times a node records (`died_at`, `active_at`).
pub(super) const NEVER: u64 = u64::MAX;
pub(super) const NOBODY: u32 = u32::MAX;
/// Sample size for the bootstrap choice of the matrix model (no spatial index there).
const MATRIX_BOOTSTRAP_SAMPLE: usize = 256;
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

/// A node's protocol state and the times the reports need (its id, liveness and timer are
/// the network's).
pub(super) struct Slot<P> {
    /// Dropped when the node fails.
    pub(super) proto: Option<P>,
    /// When the node failed (`NEVER` while alive).
    pub(super) died_at: u64,
    /// When the node was created.
    pub(super) created_at: u64,
    /// When the node became active (`NEVER` before).
    pub(super) active_at: u64,
    /// Position in `live_active` (valid while active and alive).
    live_pos: u32,
}

/// The seeded random streams, one per concern so that changing one scenario's draws leaves
/// the others alone.
pub(super) struct Streams {
    place: ChaCha8Rng,
    ids: ChaCha8Rng,
    pub(super) lookup: ChaCha8Rng,
    pub(super) churn: ChaCha8Rng,
    boot: ChaCha8Rng,
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
    pub(super) config: SimConfig,
    protocol: P::Config,
    pub(super) net: Network<LatencyModel, Ev>,
    pub(super) nodes: Vec<Slot<P>>,
    pub(super) phase: Phase,
    pub(super) rng: Streams,
    /// Live active nodes, for random picks (lookup origins, failure victims, bootstraps).
    pub(super) live_active: Vec<u32>,
    /// Live active nodes by position, for exact nearest-bootstrap queries (point models).
    grid: Option<Grid>,
    /// Messages, bytes and live node-time, for the traffic figures.
    pub(super) tally: Tally,
    pub(super) build: BuildState,
    pub(super) lookups: Lookups,
    pub(super) failure: FailureState,
    pub(super) churn: ChurnState,
    /// With `trace_routes`: routing-table holes by row when the first lookup was issued.
    pub(super) holes_at_start: Vec<u64>,
    pub(super) done: bool,
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
        let mut place = stream(1);
        let model = LatencyModel::new(&config.model, &mut place);
        let grid = (config.bootstrap_sample == 0 && !matches!(config.model, ModelSpec::Matrix(_)))
            .then(|| Grid::new(config.nodes));
        let links = LinkOptions {
            jitter: config.jitter,
            loss: config.loss,
        };
        let mut net = Network::new(model, links, stream(3), TimerOrder::Armed);
        net.reserve(config.nodes);
        net.set_compressed(!config.realtime_build);
        Self {
            grid,
            protocol,
            net,
            nodes: Vec::with_capacity(config.nodes),
            phase: Phase::Build,
            rng: Streams {
                place,
                ids: stream(2),
                lookup: stream(4),
                churn: stream(5),
                boot: stream(6),
            },
            live_active: Vec::with_capacity(config.nodes),
            tally: Tally::default(),
            build: BuildState::default(),
            lookups: Lookups::new(config.lookups, config.key_popularity, config.seed),
            failure: FailureState::default(),
            churn: ChurnState::default(),
            holes_at_start: Vec::new(),
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
                self.failure.twin_rate = twin.tally.control_rate(1, 2);
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
            self.build.created = 1;
            self.net.schedule(0, Ev::JoinNext);
        }
        let mut next_progress = PROGRESS_EVERY;
        while let Some(event) = self.net.pop(u64::MAX) {
            if self.net.popped() >= next_progress {
                next_progress += PROGRESS_EVERY;
                progress(&self.progress());
            }
            self.handle(event);
            if self.done {
                break;
            }
        }
        progress(&self.progress());
    }

    fn progress(&self) -> Progress {
        Progress {
            phase: self.phase,
            virtual_s: self.net.now() as f64 / SECOND,
            nodes_created: self.nodes.len(),
            live_active: self.live_active.len(),
            lookups_issued: self.lookups.len(),
            events: self.net.popped(),
            queued: self.net.queued(),
        }
    }

    fn handle(&mut self, event: NetEvent<Ev>) {
        match event {
            NetEvent::Message { from, to, msg } => {
                if let Message::Route { payload, .. } = &msg {
                    self.lookup_arrived(to, payload);
                }
                let from = self.net.peer(from);
                self.call(to, false, |p, now| p.handle_message(now, from, msg));
            }
            NetEvent::Timer(node) => {
                let Some(proto) = self.nodes[node as usize].proto.as_ref() else {
                    return;
                };
                if self.net.timer_due(node, proto.poll_timeout()) {
                    self.call(node, true, |p, now| p.handle_timeout(now));
                }
            }
            NetEvent::Proximity { node, peer, rtt_us } => {
                let peer = self.net.peer(peer);
                self.call(node, false, |p, now| p.handle_proximity(now, peer, rtt_us));
            }
            NetEvent::Owner(event) => self.handle_scenario(event),
        }
    }

    // ---- nodes ----------------------------------------------------------------------------

    pub(super) fn now(&self) -> u64 {
        self.net.now()
    }

    pub(super) fn id(&self, index: u32) -> NodeId {
        self.net.id(index)
    }

    pub(super) fn create_node(&mut self) -> u32 {
        let now = self.now();
        self.net.latency_mut().place(&mut self.rng.place);
        let id = NodeId::from_u128(self.rng.ids.gen());
        let index = self.net.add_node(id);
        let seed = splitmix(self.config.seed ^ splitmix(u64::from(index)));
        let proto = P::create(self.net.peer(index), &self.protocol, seed);
        self.tally.update_area(now);
        self.tally.alive += 1;
        self.nodes.push(Slot {
            proto: Some(proto),
            died_at: NEVER,
            created_at: now,
            active_at: NEVER,
            live_pos: NOBODY,
        });
        index
    }

    /// Calls into node `index` (if alive), carries out its effects and re-arms its timer.
    pub(super) fn call(&mut self, index: u32, timer_fired: bool, f: impl FnOnce(&mut P, u64)) {
        let now = self.now();
        let Some(proto) = self.nodes[index as usize].proto.as_mut() else {
            return;
        };
        f(proto, now);
        // A node that became active during this call did so before the outputs it produced
        // (e.g. delivering the messages it held while joining): the oracle must count it.
        if !self.net.is_active(index)
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
        let Some(proto) = self.nodes[index as usize].proto.as_ref() else {
            return;
        };
        let deadline = proto.poll_timeout();
        self.net.arm_timer(index, deadline, timer_fired);
    }

    fn apply(&mut self, from: u32, effect: Effect) {
        match effect {
            Effect::Send { to, msg } => {
                self.tally.count(&msg, self.config.overhead_bytes);
                let Some(to) = self.net.resolve(&to) else {
                    tracing::warn!(?to, "send to an unknown peer");
                    return;
                };
                if self.config.trace_routes {
                    if let Message::Route { payload, .. } = &msg {
                        if let Ok(bytes) = <[u8; 8]>::try_from(&payload[..]) {
                            let lookup = u64::from_le_bytes(bytes) as u32;
                            let now = self.now();
                            self.lookups.paths.push((lookup, from, to, now));
                        }
                    }
                }
                self.net.send(from, to, msg);
            }
            Effect::Measure { peer } => {
                // An RTT sample costs a request and, from a live peer, a reply.
                let Some(peer) = self.net.resolve(&peer) else {
                    return;
                };
                let answered = self.net.measure(from, peer);
                self.tally
                    .count_measure(answered, self.config.overhead_bytes);
            }
            Effect::Deliver {
                key, hops, payload, ..
            } => self.delivered(from, key, hops, &payload),
            Effect::Event(Event::RouteFailed { id, .. }) => self.lookups.route_failed(from, id),
            Effect::Forward { .. } | Effect::Event(_) => {}
        }
    }

    fn activate(&mut self, index: u32) {
        if !self.net.activate(index) {
            return;
        }
        let now = self.now();
        let slot = &mut self.nodes[index as usize];
        slot.active_at = now;
        if self.churn.on {
            self.churn.joins += 1;
            self.churn.join_us += now - slot.created_at;
        }
        slot.live_pos = self.live_active.len() as u32;
        self.live_active.push(index);
        if let (Some(grid), Some(point)) =
            (self.grid.as_mut(), self.net.latency().point(index as usize))
        {
            grid.insert(index, point);
        }
        if self.build.current_joiner == Some(index) {
            self.build.current_joiner = None;
            self.net.schedule(now, Ev::JoinNext);
        }
    }

    /// Silent failure: the node stops answering and its state is dropped.
    pub(super) fn kill(&mut self, index: u32) {
        let now = self.now();
        self.tally.update_area(now);
        if !self.net.kill(index) {
            return;
        }
        let slot = &mut self.nodes[index as usize];
        slot.died_at = now;
        slot.proto = None;
        self.tally.alive -= 1;
        if self.net.is_active(index) {
            let pos = slot.live_pos as usize;
            self.live_active.swap_remove(pos);
            if let Some(&moved) = self.live_active.get(pos) {
                self.nodes[moved as usize].live_pos = pos as u32;
            }
            if let (Some(grid), Some(point)) =
                (self.grid.as_mut(), self.net.latency().point(index as usize))
            {
                grid.remove(index, point);
            }
        }
    }

    /// The nearest active node (by the model), or the nearest of a random sample of them.
    fn pick_bootstrap(&mut self, joiner: u32) -> Option<u32> {
        let candidates = self.live_active.len();
        if candidates == 0 {
            return None;
        }
        let model = self.net.latency();
        if let (Some(grid), Some(point)) = (self.grid.as_ref(), model.point(joiner as usize)) {
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
        let mut consider = |c: u32| {
            let d = model.one_way_us(joiner as usize, c as usize);
            if best.map_or(true, |b| (d, c) < b) {
                best = Some((d, c));
            }
        };
        if candidates <= sample {
            for &c in &self.live_active {
                consider(c);
            }
        } else {
            for _ in 0..sample {
                let c = self.live_active[self.rng.boot.gen_range(0..candidates)];
                consider(c);
            }
        }
        best.map(|(_, c)| c)
    }

    /// Creates a node and joins it through a nearby active node (or bootstraps it alone).
    pub(super) fn start_join(&mut self) -> u32 {
        let joiner = self.create_node();
        match self.pick_bootstrap(joiner) {
            Some(via) => {
                let via = self.net.peer(via);
                self.call(joiner, false, |p, now| p.join(now, via));
            }
            None => self.call(joiner, false, |p, now| p.bootstrap_alone(now)),
        }
        joiner
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
