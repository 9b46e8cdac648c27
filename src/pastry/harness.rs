//! In-memory test harness: N [`Pastry`] states on the simulator's network
//! ([`crate::sim::net`]) with a virtual clock, like quinn's `Pair`. Nodes sit at random points
//! on a plane; one-way latency grows with distance. [`Net::run_for`] advances virtual time event
//! by event (messages, measurements, timers); at equal times messages go before timers.
//!
//! `Net` is a facade for the protocol tests: the network carries the messages, keeps the clock,
//! the timers and the oracle; `Net` keeps the nodes, what they delivered and reported, and the
//! tests' knobs (`drop_if`, `kill`, `leave`).

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::id::{Key, NodeId};
use crate::sim::net::{Latency, LinkOptions, NetEvent, Network, TimerOrder};
use crate::sim::{Effect, SimNode};

use super::{Config, Event, ForwardVerdict, LeafSet, Message, Pastry, PeerInfo, Time};

/// A message delivered to an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) at: usize,
    pub(crate) key: Key,
    pub(crate) origin: NodeId,
    pub(crate) id: u64,
    pub(crate) hops: u8,
    pub(crate) payload: Bytes,
    pub(crate) time: Time,
    /// Whether `at` was the oracle's root when the message arrived.
    pub(crate) correct: bool,
}

/// An [`Event::Forward`] the application was asked about.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) at: usize,
    pub(crate) token: u64,
    pub(crate) payload: Bytes,
}

/// Decides whether a message from node `from` to node `to` is lost (`from`, `to`, message).
pub(crate) type DropRule = Box<dyn Fn(usize, usize, &Message) -> bool>;

/// The harness's latency: points of a 1000 × 1000 plane, 1 ms plus 50 µs per unit of
/// distance (at most about 72 ms one way).
#[derive(Debug, Default)]
struct Plane {
    points: Vec<(f64, f64)>,
}

impl Latency for Plane {
    fn one_way_us(&self, a: usize, b: usize) -> u64 {
        let (ax, ay) = self.points[a];
        let (bx, by) = self.points[b];
        let d = ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt();
        1000 + (d * 50.0) as u64
    }
}

pub(crate) struct Net {
    pub(crate) nodes: Vec<Pastry>,
    pub(crate) alive: Vec<bool>,
    network: Network<Plane, Infallible>,
    index: HashMap<NodeId, usize>,
    /// The network's clock.
    pub(crate) now: Time,
    rng: ChaCha8Rng,
    config: Config,
    pub(crate) delivered: Vec<Delivered>,
    pub(crate) events: Vec<(usize, Event, Time)>,
    pub(crate) held: Vec<Held>,
    /// Messages lost on purpose.
    pub(crate) drop_if: Option<DropRule>,
}

impl Net {
    pub(crate) fn new(config: Config, seed: u64) -> Self {
        let links = LinkOptions {
            jitter: 0.0,
            loss: 0.0,
        };
        // No jitter and no loss: the network never draws from its RNG.
        let network = Network::new(
            Plane::default(),
            links,
            ChaCha8Rng::seed_from_u64(0),
            TimerOrder::AfterMessages,
        );
        Self {
            nodes: Vec::new(),
            alive: Vec::new(),
            network,
            index: HashMap::new(),
            now: Time::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            delivered: Vec::new(),
            events: Vec::new(),
            held: Vec::new(),
            drop_if: None,
        }
    }

    /// Adds a node (not yet joined) with a random id unless `id` is given.
    pub(crate) fn add(&mut self, id: Option<NodeId>) -> usize {
        let i = self.nodes.len();
        let id = id.unwrap_or_else(|| NodeId::from_u128(self.rng.gen()));
        let seed = self.rng.gen();
        let index = self.network.add_node(id);
        debug_assert_eq!(index as usize, i);
        let me = self.network.peer(index);
        self.nodes.push(Pastry::new(me, self.config.clone(), seed));
        self.alive.push(true);
        let point = (
            self.rng.gen_range(0.0..1000.0),
            self.rng.gen_range(0.0..1000.0),
        );
        self.network.latency_mut().points.push(point);
        self.index.insert(id, i);
        i
    }

    pub(crate) fn peer(&self, i: usize) -> PeerInfo {
        self.nodes[i].me()
    }

    pub(crate) fn latency(&self, a: usize, b: usize) -> Duration {
        Duration::from_micros(self.network.latency().one_way_us(a, b))
    }

    /// Drains node `i`'s effects into the network and re-arms its timer.
    pub(crate) fn flush(&mut self, i: usize) {
        let index = i as u32;
        self.sync_activity(i);
        while let Some(effect) = SimNode::poll_effect(&mut self.nodes[i]) {
            match effect {
                Effect::Send { to, msg } => {
                    let Some(j) = self.network.resolve(&to) else {
                        continue;
                    };
                    if self
                        .drop_if
                        .as_ref()
                        .is_some_and(|f| f(i, j as usize, &msg))
                    {
                        continue;
                    }
                    // A message to a dead node is lost, as on a real network.
                    self.network.send(index, j, msg);
                }
                Effect::Measure { peer } => {
                    if let Some(j) = self.network.resolve(&peer) {
                        self.network.measure(index, j);
                    }
                }
                Effect::Deliver {
                    key,
                    origin,
                    id,
                    hops,
                    payload,
                } => {
                    let correct = self.network.oracle().root(key) == Some(self.nodes[i].id());
                    self.delivered.push(Delivered {
                        at: i,
                        key,
                        origin,
                        id,
                        hops,
                        payload,
                        time: self.now,
                        correct,
                    });
                }
                Effect::Forward { token, payload } => self.held.push(Held {
                    at: i,
                    token,
                    payload,
                }),
                Effect::Event(e) => self.events.push((i, e, self.now)),
            }
        }
        let deadline = SimNode::poll_timeout(&self.nodes[i]);
        self.network.arm_timer(index, deadline, false);
    }

    /// Tells the network (and so the oracle) whether live node `i` is active, before the
    /// effects of the call that changed it: a joiner delivers the messages it held right
    /// after it becomes active.
    fn sync_activity(&mut self, i: usize) {
        let index = i as u32;
        if !self.network.is_alive(index) {
            return;
        }
        let active = self.nodes[i].is_active();
        if active && !self.network.is_active(index) {
            self.network.activate(index);
        } else if !active && self.network.is_active(index) {
            self.network.deactivate(index);
        }
    }

    fn now_us(&self) -> u64 {
        self.now.as_micros()
    }

    /// Processes the next event if it is due by `until`; returns false when none is.
    fn step(&mut self, until: Time) -> bool {
        let Some(event) = self.network.pop(until.as_micros()) else {
            return false;
        };
        self.now = Time::from_micros(self.network.now());
        let now = self.now_us();
        match event {
            NetEvent::Message { from, to, msg } => {
                let to = to as usize;
                if !self.alive[to] {
                    return true;
                }
                let from = self.network.peer(from);
                SimNode::handle_message(&mut self.nodes[to], now, from, msg);
                self.flush(to);
            }
            NetEvent::Proximity { node, peer, rtt_us } => {
                let node = node as usize;
                if !self.alive[node] {
                    return true;
                }
                let peer = self.network.peer(peer);
                SimNode::handle_proximity(&mut self.nodes[node], now, peer, rtt_us);
                self.flush(node);
            }
            NetEvent::Timer(index) => {
                let i = index as usize;
                let deadline = SimNode::poll_timeout(&self.nodes[i]);
                if self.network.timer_due(index, deadline) {
                    SimNode::handle_timeout(&mut self.nodes[i], now);
                    self.flush(i);
                }
            }
            NetEvent::Owner(never) => match never {},
        }
        true
    }

    pub(crate) fn run_until(&mut self, until: Time) {
        while self.step(until) {}
        self.network.advance_to(until.as_micros());
        self.now = Time::from_micros(self.network.now());
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub(crate) fn bootstrap(&mut self, i: usize) {
        let now = self.now_us();
        SimNode::bootstrap_alone(&mut self.nodes[i], now);
        self.flush(i);
    }

    /// Starts node `i`'s join through `via`.
    pub(crate) fn start_join(&mut self, i: usize, via: usize) {
        let via = self.peer(via);
        let now = self.now_us();
        SimNode::join(&mut self.nodes[i], now, via);
        self.flush(i);
    }

    /// Starts node `i`'s join through the active node nearest to it and processes events only
    /// until it reports [`Event::Joined`] (nothing after: its own last outputs are in flight).
    pub(crate) fn join_until_active(&mut self, i: usize) {
        self.start_join_near(i);
        self.run_until_active(i);
    }

    /// Processes events until node `i` is active (at most two virtual minutes).
    fn run_until_active(&mut self, i: usize) {
        let deadline = self.now + Duration::from_secs(120);
        while !self.nodes[i].is_active() && self.now < deadline {
            if !self.step(deadline) {
                break;
            }
        }
        assert!(self.nodes[i].is_active(), "node {i} did not join");
    }

    /// Joins node `i` through the active node nearest to it and runs until it is active.
    pub(crate) fn join(&mut self, i: usize) {
        self.join_until_active(i);
        // Let its announcements land (one message latency).
        self.run_for(Duration::from_millis(500));
    }

    /// A network of `n` nodes built by joining one at a time.
    pub(crate) fn build(config: Config, n: usize, seed: u64) -> Self {
        let mut net = Self::new(config, seed);
        net.add(None);
        net.bootstrap(0);
        for _ in 1..n {
            let i = net.add(None);
            net.join(i);
        }
        net
    }

    pub(crate) fn route(&mut self, from: usize, key: Key, payload: Vec<u8>) -> u64 {
        let now = self.now_us();
        let id = SimNode::route(&mut self.nodes[from], now, key, payload);
        self.flush(from);
        id
    }

    pub(crate) fn resume(&mut self, held: &Held, verdict: ForwardVerdict) {
        self.nodes[held.at].resume_forward(self.now, held.token, verdict);
        self.flush(held.at);
    }

    /// Node `i` fails silently.
    pub(crate) fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        self.network.kill(i as u32);
    }

    /// Node `i` leaves gracefully (its notices are sent), then is gone.
    pub(crate) fn leave(&mut self, i: usize) {
        self.nodes[i].leave(self.now);
        self.flush(i);
        self.kill(i);
    }

    pub(crate) fn live_ids(&self) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| self.alive[i] && self.nodes[i].is_active())
            .map(|i| self.nodes[i].id())
            .collect()
    }

    pub(crate) fn index_of(&self, id: NodeId) -> usize {
        self.index[&id]
    }

    /// The oracle's root of `key`: the live active node closest to it.
    pub(crate) fn oracle_root(&self, key: Key) -> NodeId {
        self.network.oracle().root(key).expect("a live node")
    }

    /// The oracle's leaf set of node `i`: the L/2 nearest live ids each way round the ring.
    pub(crate) fn oracle_leaf_set(&self, i: usize) -> HashSet<NodeId> {
        let half = self.config.leaf_set_size / 2;
        self.network
            .oracle()
            .leaf_set(self.nodes[i].id(), half)
            .into_iter()
            .map(NodeId::from_u128)
            .collect()
    }

    pub(crate) fn leaf_ids(set: &LeafSet) -> HashSet<NodeId> {
        set.iter().map(|s| s.peer.id).collect()
    }

    /// Indices of live nodes whose leaf set differs from the oracle's.
    pub(crate) fn wrong_leaf_sets(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.alive[i] && self.nodes[i].is_active())
            .filter(|&i| Self::leaf_ids(self.nodes[i].leaf_set()) != self.oracle_leaf_set(i))
            .collect()
    }

    /// For failure messages: what node `i` is missing and holds in excess.
    pub(crate) fn leaf_diff(&self, i: usize) -> String {
        let have = Self::leaf_ids(self.nodes[i].leaf_set());
        let want = self.oracle_leaf_set(i);
        let missing: Vec<_> = want.difference(&have).collect();
        let extra: Vec<_> = have.difference(&want).collect();
        format!(
            "node {i} ({:?}): missing {missing:?}, extra {extra:?}",
            self.nodes[i].id()
        )
    }

    pub(crate) fn random_live(&mut self) -> usize {
        loop {
            let i = self.rng.gen_range(0..self.nodes.len());
            if self.alive[i] && self.nodes[i].is_active() {
                return i;
            }
        }
    }

    /// Joins node `i` through the active node nearest to it without waiting.
    pub(crate) fn start_join_near(&mut self, i: usize) {
        let via = (0..self.nodes.len())
            .filter(|&j| j != i && self.alive[j] && self.nodes[j].is_active())
            .min_by_key(|&j| self.latency(i, j))
            .expect("an active node to join through");
        self.start_join(i, via);
    }

    pub(crate) fn random_key(&mut self) -> Key {
        Key::from_u128(self.rng.gen())
    }
}

/// `ceil(log16 n) + 1`, the hop bound the tests hold routing to.
pub(crate) fn hop_bound(n: usize) -> u8 {
    let mut digits = 0u8;
    let mut reach = 1usize;
    while reach < n {
        reach = reach.saturating_mul(16);
        digits += 1;
    }
    digits + 1
}
