//! Many nodes' topics state ([`Tree`]) on an in-memory network in virtual time: the real
//! handlers, fed their messages encoded and decoded as on the wire, with the routing decisions
//! of a [`Routing`] (the simulator's Pastry nodes for the large figures, a small model for the
//! unit tests). Deterministic: events at equal times run in the order they were scheduled.
//!
//! It stands in for `service.rs` (the task that carries out a node's actions): a send goes to
//! its peer after the one-way delay, or comes back as a failed send if the peer is dead; a
//! routed message goes hop by hop along the routing's next hops and is delivered where the
//! routing says the node is the key's root; every node ticks as often as the runtime does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::TopicWire;
use super::tree::{Action, Tree, View};
use super::{TopicMessage, TopicsConfig};
use crate::id::{Key, NodeId};
use crate::identity::OriginSigner;
use crate::pastry::PeerInfo;

/// A routed message gives up after this many hops (a routing loop while tables repair).
const MAX_HOPS: u32 = 64;

/// The overlay as the topics layer of node `at` sees it.
pub(crate) trait Routing {
    /// `at`'s next hop towards `key` at virtual time `now_us` (`Some(None)`: `at` is the root).
    fn next_hop(&self, at: usize, key: Key, now_us: u64) -> Option<Option<PeerInfo>>;
    /// Up to `n` of `at`'s leaf-set members, closest to `key` first.
    fn closest_leaves(&self, at: usize, key: Key, n: usize, now_us: u64) -> Vec<PeerInfo>;
    /// The node with `id`.
    fn index_of(&self, id: NodeId) -> Option<usize>;
    /// Node `index`'s address.
    fn address(&self, index: usize) -> SocketAddr;
    /// One-way delay from `from` to `to`, in µs.
    fn delay_us(&self, from: usize, to: usize) -> u64;
    /// `at` found `peer` unreachable: it routes around it from now on.
    fn link_down(&mut self, at: usize, peer: NodeId, now_us: u64);
}

struct NodeView<'a, R> {
    routing: &'a R,
    at: usize,
    now_us: u64,
}

impl<R: Routing> View for NodeView<'_, R> {
    fn next_hop(&self, key: Key) -> Option<Option<PeerInfo>> {
        self.routing.next_hop(self.at, key, self.now_us)
    }
    fn closest_leaves(&self, key: Key, n: usize) -> Vec<PeerInfo> {
        self.routing.closest_leaves(self.at, key, n, self.now_us)
    }
    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.routing.index_of(id).map(|i| self.routing.address(i))
    }
}

enum Event {
    Direct {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Routed {
        at: usize,
        origin: NodeId,
        key: Key,
        bytes: Vec<u8>,
        hops: u32,
    },
    /// `at`'s send to `peer` failed (the peer is dead).
    Failed {
        at: usize,
        peer: NodeId,
    },
    Tick(usize),
}

/// Messages sent, by what they are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Traffic {
    /// Direct sends of messages down a tree.
    pub(crate) data: u64,
    /// Direct sends of window copies to the nodes next in line to be root.
    pub(crate) replica: u64,
    /// Direct sends that build and keep the trees (joins, answers, redirects, leaves).
    pub(crate) tree: u64,
    /// Hops of routed publishes, acknowledgements, fetches and replays.
    pub(crate) publish_hops: u64,
    pub(crate) ack_hops: u64,
    pub(crate) fetch_hops: u64,
    pub(crate) replay_hops: u64,
    /// Routed messages lost (a dead hop on the way, or too many hops).
    pub(crate) routes_lost: u64,
}

/// The nodes, the routing and the messages in flight.
pub(crate) struct TopicNet<R> {
    pub(crate) routing: R,
    pub(crate) trees: Vec<Tree>,
    pub(crate) alive: Vec<bool>,
    /// What each node delivered to its application, in order.
    pub(crate) delivered: Vec<Vec<TopicMessage>>,
    pub(crate) traffic: Traffic,
    start: Instant,
    now_us: u64,
    tick_us: u64,
    queue: BTreeMap<(u64, u64), Event>,
    next_seq: u64,
}

impl<R: Routing> TopicNet<R> {
    /// One node per signer (node `i` is the routing's node `i`), each ticking every quarter
    /// heartbeat as the runtime does, at a phase of its own.
    pub(crate) fn new(routing: R, signers: Vec<OriginSigner>, config: &TopicsConfig) -> Self {
        let n = signers.len();
        let tick_us = (config.heartbeat / 4)
            .max(Duration::from_millis(10))
            .as_micros() as u64;
        let trees = signers
            .into_iter()
            .enumerate()
            .map(|(i, signer)| Tree::new(config.clone(), signer, (i as u64 + 1) << 32))
            .collect();
        let mut net = Self {
            routing,
            trees,
            alive: vec![true; n],
            delivered: vec![Vec::new(); n],
            traffic: Traffic::default(),
            start: Instant::now(),
            now_us: 0,
            tick_us,
            queue: BTreeMap::new(),
            next_seq: 0,
        };
        for i in 0..n {
            let phase = (i as u64).wrapping_mul(7919) % tick_us;
            net.schedule(phase, Event::Tick(i));
        }
        net
    }

    /// Node `at`'s id.
    pub(crate) fn id(&self, at: usize) -> NodeId {
        self.trees[at].me
    }

    /// Virtual time, in µs.
    pub(crate) fn now_us(&self) -> u64 {
        self.now_us
    }

    fn instant(&self) -> Instant {
        self.start + Duration::from_micros(self.now_us)
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.queue.insert((at_us, self.next_seq), event);
        self.next_seq += 1;
    }

    /// Runs `f` on node `at`'s state and carries out what it asked.
    pub(crate) fn with<T>(
        &mut self,
        at: usize,
        f: impl FnOnce(&mut Tree, &dyn View, Instant) -> T,
    ) -> T {
        let now = self.instant();
        let view = NodeView {
            routing: &self.routing,
            at,
            now_us: self.now_us,
        };
        let tree = &mut self.trees[at];
        let result = f(tree, &view, now);
        let actions = std::mem::take(&mut tree.out);
        self.delivered[at].extend(tree.delivered.drain(..));
        for action in actions {
            self.carry_out(at, action);
        }
        result
    }

    /// Node `at` subscribes to `name`.
    pub(crate) fn subscribe(&mut self, at: usize, name: &str) -> bool {
        self.with(at, |t, v, now| t.subscribe(now, name, v))
    }

    /// Node `at` publishes on `name` if it has room for one more unacknowledged message.
    pub(crate) fn publish(&mut self, at: usize, name: &str, payload: Vec<u8>) -> Option<u64> {
        self.with(at, |t, _, now| match t.can_publish(name) {
            Some(true) => t.publish(now, name, payload),
            _ => None,
        })
    }

    /// Node `at` stops, without a word (a crash).
    #[cfg_attr(not(test), allow(dead_code))] // the figure kills nobody
    pub(crate) fn kill(&mut self, at: usize) {
        self.alive[at] = false;
    }

    /// Runs every event up to virtual time `until_us`.
    pub(crate) fn run_until(&mut self, until_us: u64) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until_us {
                break;
            }
            let ((time, _), event) = entry.remove_entry();
            self.now_us = self.now_us.max(time);
            self.handle(event);
        }
        self.now_us = self.now_us.max(until_us);
    }

    fn carry_out(&mut self, from: usize, action: Action) {
        match action {
            Action::Send { to, msg } => {
                match msg {
                    TopicWire::Data { .. } => self.traffic.data += 1,
                    TopicWire::Replica { .. } => self.traffic.replica += 1,
                    _ => self.traffic.tree += 1,
                }
                let bytes = msg.encode();
                match self.routing.index_of(to.id) {
                    Some(index) if self.alive[index] => {
                        let at = self.now_us + self.routing.delay_us(from, index);
                        self.schedule(
                            at,
                            Event::Direct {
                                from,
                                to: index,
                                bytes,
                            },
                        );
                    }
                    // Dead or unknown: the send fails after a connection attempt's time.
                    other => {
                        let delay = other.map_or(0, |i| 2 * self.routing.delay_us(from, i));
                        let peer = to.id;
                        self.schedule(self.now_us + delay, Event::Failed { at: from, peer });
                    }
                }
            }
            Action::Route { key, msg } => {
                let origin = self.trees[from].me;
                let bytes = msg.encode();
                self.route_step(from, origin, key, bytes, 0);
            }
            Action::Suspect(peer) => {
                let now = self.now_us;
                self.routing.link_down(from, peer, now);
            }
        }
    }

    fn route_step(&mut self, at: usize, origin: NodeId, key: Key, bytes: Vec<u8>, hops: u32) {
        let event = Event::Routed {
            at,
            origin,
            key,
            bytes,
            hops,
        };
        self.schedule(self.now_us, event);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(at) => {
                if !self.alive[at] {
                    return;
                }
                self.with(at, |t, v, now| {
                    t.tick_tree(now, v);
                    t.tick_flow(now);
                });
                let next = self.now_us + self.tick_us;
                self.schedule(next, Event::Tick(at));
            }
            Event::Failed { at, peer } => {
                if self.alive[at] {
                    let now = self.now_us;
                    self.routing.link_down(at, peer, now);
                    self.with(at, |t, v, now| t.send_failed(now, peer, v));
                }
            }
            Event::Direct { from, to, bytes } => {
                if !self.alive[to] {
                    return;
                }
                let Ok(msg) = TopicWire::decode(&bytes) else {
                    return;
                };
                let from_id = self.trees[from].me;
                self.with(to, |t, v, now| match msg {
                    TopicWire::Data { msg } => t.on_data(now, from_id, msg, v),
                    TopicWire::Replica { topic, msgs, heads } => {
                        t.on_replica(now, &topic, msgs, &heads);
                    }
                    other => t.on_tree(now, from_id, other, v),
                });
            }
            Event::Routed {
                at,
                origin,
                key,
                bytes,
                hops,
            } => self.on_routed(at, origin, key, bytes, hops),
        }
    }

    fn on_routed(&mut self, at: usize, origin: NodeId, key: Key, bytes: Vec<u8>, hops: u32) {
        if !self.alive[at] || hops > MAX_HOPS {
            self.traffic.routes_lost += 1;
            return;
        }
        let Some(hop) = self.routing.next_hop(at, key, self.now_us) else {
            self.traffic.routes_lost += 1;
            return;
        };
        let Some(next) = hop else {
            let Ok(msg) = TopicWire::decode(&bytes) else {
                return;
            };
            self.with(at, |t, v, now| t.on_routed(now, origin, key, msg, v));
            return;
        };
        let Some(index) = self.routing.index_of(next.id) else {
            self.traffic.routes_lost += 1;
            return;
        };
        if !self.alive[index] {
            // The overlay notices the dead hop and routes around it, as Pastry does.
            let now = self.now_us;
            self.routing.link_down(at, next.id, now);
            let retry = self.now_us + 2 * self.routing.delay_us(at, index);
            let event = Event::Routed {
                at,
                origin,
                key,
                bytes,
                hops: hops + 1,
            };
            self.schedule(retry, event);
            return;
        }
        let counter = match TopicWire::decode(&bytes) {
            Ok(TopicWire::Publish { .. }) => &mut self.traffic.publish_hops,
            Ok(TopicWire::Ack { .. }) => &mut self.traffic.ack_hops,
            Ok(TopicWire::Fetch { .. }) => &mut self.traffic.fetch_hops,
            _ => &mut self.traffic.replay_hops,
        };
        *counter += 1;
        let arrive = self.now_us + self.routing.delay_us(at, index);
        let event = Event::Routed {
            at: index,
            origin,
            key,
            bytes,
            hops: hops + 1,
        };
        self.schedule(arrive, event);
    }

    /// How many hops a message routed from `from` to `key` takes now (`None`: lost).
    pub(crate) fn route_hops(&self, from: usize, key: Key) -> Option<u32> {
        let mut at = from;
        for hops in 0..MAX_HOPS {
            match self.routing.next_hop(at, key, self.now_us)? {
                None => return Some(hops),
                Some(peer) => at = self.routing.index_of(peer.id)?,
            }
        }
        None
    }
}
