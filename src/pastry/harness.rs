//! In-memory test harness: N [`Pastry`] states wired together with a virtual clock, like
//! quinn's `Pair`. Nodes sit at random points on a plane; one-way latency grows with distance.
//! [`Net::run_for`] advances virtual time event by event (messages, measurements, timers).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::id::{Key, NodeId};

use super::{Config, Event, ForwardVerdict, LeafSet, Message, Pastry, PeerInfo, Time, Transmit};

/// Something scheduled for delivery to node `to`.
#[derive(Debug)]
enum Delivery {
    Msg { from: PeerInfo, msg: Message },
    Rtt { peer: PeerInfo, rtt: Duration },
}

/// A message delivered to an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) at: usize,
    pub(crate) key: Key,
    pub(crate) origin: NodeId,
    pub(crate) id: u64,
    pub(crate) hops: u8,
    pub(crate) payload: Vec<u8>,
    pub(crate) time: Time,
    /// Whether `at` was the oracle's root when the message arrived.
    pub(crate) correct: bool,
}

/// An [`Event::Forward`] the application was asked about.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) at: usize,
    pub(crate) token: u64,
    pub(crate) payload: Vec<u8>,
}

/// Decides whether a message to node `to` is lost.
pub(crate) type DropRule = Box<dyn Fn(usize, &Message) -> bool>;

pub(crate) struct Net {
    pub(crate) nodes: Vec<Pastry>,
    pub(crate) alive: Vec<bool>,
    pos: Vec<(f64, f64)>,
    index: HashMap<NodeId, usize>,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    pending: HashMap<u64, Delivery>,
    timers: BinaryHeap<Reverse<(Time, usize)>>,
    seq: u64,
    pub(crate) now: Time,
    rng: ChaCha8Rng,
    config: Config,
    pub(crate) delivered: Vec<Delivered>,
    pub(crate) events: Vec<(usize, Event, Time)>,
    pub(crate) held: Vec<Held>,
    /// Messages lost on purpose.
    pub(crate) drop_if: Option<DropRule>,
    /// Route messages that arrived at a dead node.
    pub(crate) routes_to_dead: u64,
}

impl Net {
    pub(crate) fn new(config: Config, seed: u64) -> Self {
        Self {
            nodes: Vec::new(),
            alive: Vec::new(),
            pos: Vec::new(),
            index: HashMap::new(),
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            now: Time::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            delivered: Vec::new(),
            events: Vec::new(),
            held: Vec::new(),
            drop_if: None,
            routes_to_dead: 0,
        }
    }

    /// Adds a node (not yet joined) with a random id unless `id` is given.
    pub(crate) fn add(&mut self, id: Option<NodeId>) -> usize {
        let i = self.nodes.len();
        let id = id.unwrap_or_else(|| NodeId::from_u128(self.rng.gen()));
        let addr = SocketAddr::from((
            Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
            4000,
        ));
        let seed = self.rng.gen();
        self.nodes.push(Pastry::new(
            PeerInfo { id, addr },
            self.config.clone(),
            seed,
        ));
        self.alive.push(true);
        self.pos.push((
            self.rng.gen_range(0.0..1000.0),
            self.rng.gen_range(0.0..1000.0),
        ));
        self.index.insert(id, i);
        i
    }

    pub(crate) fn peer(&self, i: usize) -> PeerInfo {
        self.nodes[i].me()
    }

    pub(crate) fn latency(&self, a: usize, b: usize) -> Duration {
        let (ax, ay) = self.pos[a];
        let (bx, by) = self.pos[b];
        let d = ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt();
        Duration::from_micros(1000 + (d * 50.0) as u64)
    }

    fn schedule(&mut self, at: Time, to: usize, what: Delivery) {
        self.seq += 1;
        self.pending.insert(self.seq, what);
        self.queue.push(Reverse((at, self.seq, to)));
    }

    /// Drains node `i`'s outputs into the network and re-arms its timer.
    pub(crate) fn flush(&mut self, i: usize) {
        while let Some(transmit) = self.nodes[i].poll_transmit() {
            match transmit {
                Transmit::Send { to, msg } => {
                    let Some(&j) = self.index.get(&to.id) else {
                        continue;
                    };
                    if self.drop_if.as_ref().is_some_and(|f| f(j, &msg)) {
                        continue;
                    }
                    let at = self.now + self.latency(i, j);
                    let from = self.peer(i);
                    self.schedule(at, j, Delivery::Msg { from, msg });
                }
                Transmit::Measure { peer } => {
                    let Some(&j) = self.index.get(&peer.id) else {
                        continue;
                    };
                    if self.alive[j] {
                        let rtt = self.latency(i, j) * 2;
                        self.schedule(self.now + rtt, i, Delivery::Rtt { peer, rtt });
                    }
                }
            }
        }
        while let Some(event) = self.nodes[i].poll_event() {
            match event {
                Event::Deliver {
                    key,
                    origin,
                    id,
                    hops,
                    payload,
                } => {
                    let correct = self.oracle_root(key) == self.nodes[i].id();
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
                Event::Forward { token, payload, .. } => self.held.push(Held {
                    at: i,
                    token,
                    payload,
                }),
                other => self.events.push((i, other, self.now)),
            }
        }
        if let Some(t) = self.nodes[i].poll_timeout() {
            self.timers.push(Reverse((t, i)));
        }
    }

    /// Processes the next event if it is due by `until`; returns false when none is.
    fn step(&mut self, until: Time) -> bool {
        // Discard stale timer entries.
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if self.alive[i] && self.nodes[i].poll_timeout() == Some(t) {
                break;
            }
            self.timers.pop();
        }
        let next_msg = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let take_msg = match (next_msg, next_timer) {
            (None, None) => return false,
            (Some(m), Some(t)) => m <= t,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_msg {
            let Some(Reverse((t, seq, to))) = self.queue.peek().copied() else {
                return false;
            };
            if t > until {
                return false;
            }
            self.queue.pop();
            self.now = self.now.max(t);
            let what = self.pending.remove(&seq).expect("scheduled delivery");
            if !self.alive[to] {
                if let Delivery::Msg {
                    msg: Message::Route { .. } | Message::Join { .. },
                    ..
                } = what
                {
                    self.routes_to_dead += 1;
                }
                return true;
            }
            match what {
                Delivery::Msg { from, msg } => self.nodes[to].handle_message(self.now, from, msg),
                Delivery::Rtt { peer, rtt } => self.nodes[to].handle_proximity(self.now, peer, rtt),
            }
            self.flush(to);
        } else {
            let Some(Reverse((t, i))) = self.timers.pop() else {
                return false;
            };
            if t > until {
                self.timers.push(Reverse((t, i)));
                return false;
            }
            self.now = self.now.max(t);
            self.nodes[i].handle_timeout(self.now);
            self.flush(i);
        }
        true
    }

    pub(crate) fn run_until(&mut self, until: Time) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub(crate) fn bootstrap(&mut self, i: usize) {
        self.nodes[i].bootstrap_alone(self.now);
        self.flush(i);
    }

    /// Starts node `i`'s join through `via`.
    pub(crate) fn start_join(&mut self, i: usize, via: usize) {
        let via = self.peer(via);
        self.nodes[i].join(self.now, via);
        self.flush(i);
    }

    /// Starts node `i`'s join through the active node nearest to it and processes events only
    /// until it reports [`Event::Joined`] (nothing after: its own last outputs are in flight).
    pub(crate) fn join_until_active(&mut self, i: usize) {
        self.start_join_near(i);
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
        let via = (0..self.nodes.len())
            .filter(|&j| j != i && self.alive[j] && self.nodes[j].is_active())
            .min_by_key(|&j| self.latency(i, j))
            .expect("an active node to join through");
        self.start_join(i, via);
        let deadline = self.now + Duration::from_secs(120);
        while !self.nodes[i].is_active() && self.now < deadline {
            if !self.step(deadline) {
                break;
            }
        }
        assert!(self.nodes[i].is_active(), "node {i} did not join");
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
        let id = self.nodes[from].route(self.now, key, payload);
        self.flush(from);
        id
    }

    pub(crate) fn resume(&mut self, held: &Held, verdict: ForwardVerdict) {
        self.nodes[held.at].resume_forward(self.now, held.token, verdict);
        self.flush(held.at);
    }

    pub(crate) fn kill(&mut self, i: usize) {
        self.alive[i] = false;
    }

    pub(crate) fn leave(&mut self, i: usize) {
        self.nodes[i].leave(self.now);
        self.flush(i);
        self.alive[i] = false;
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
        key.closest(self.live_ids()).expect("a live node")
    }

    /// The oracle's leaf set of node `i`: the L/2 nearest live ids each way round the ring.
    pub(crate) fn oracle_leaf_set(&self, i: usize) -> HashSet<NodeId> {
        let half = self.config.leaf_set_size / 2;
        super::ideal_leaf_set(self.nodes[i].id(), self.live_ids(), half)
            .into_iter()
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

    pub(crate) fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
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
