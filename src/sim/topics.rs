//! The topics figure: one topic with many subscribers among the simulator's Pastry nodes, its
//! tree built and fed by the topics code the runtime ships ([`crate::topics`]'s handlers, on
//! the in-memory network of `topics::harness`), routed by each node's own [`Pastry`] state.
//!
//! The overlay is built as the simulator builds it (joins one at a time through the nearest
//! active node, in compressed time, on the plane model), then maintenance runs for a warm-up
//! in model delays. Then the subscribers subscribe (spread over two seconds), the tree settles,
//! and one publisher sends a few messages. The figure: the tree's depth and fan-out, the
//! messages one publish costs across the overlay, and what sending to each subscriber
//! directly (one routed message each) would cost instead.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::latency::{Grid, LatencyModel};
use super::net::{addr_of, LinkOptions, NetEvent, Network, TimerOrder};
use super::node::{ProtocolOptions, SimNode};
use super::report::peak_rss_mib;
use super::ModelSpec;
use crate::id::{Key, NodeId};
use crate::identity::Identity;
use crate::pastry::{Pastry, PeerInfo, Time, Transmit};
use crate::topics::harness::{Routing, TopicNet, Traffic};
use crate::topics::TopicsConfig;

const SECOND: u64 = 1_000_000;
const TOPIC: &str = "figure";

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFigureConfig {
    /// Nodes in the overlay.
    pub nodes: usize,
    /// Subscribers of the topic (distinct random nodes, not the publisher).
    pub subscribers: usize,
    /// Messages the publisher sends once the tree is built.
    pub messages: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

/// The figure ([`topic_figure`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicFigure {
    /// Nodes in the overlay.
    pub nodes: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Messages published.
    pub messages: usize,
    /// Subscribers that got every message, once and in order.
    pub complete_subscribers: usize,
    /// Nodes in the tree (root, forwarders, subscribers).
    pub tree_nodes: usize,
    /// Nodes in the tree that do not subscribe (forwarders only).
    pub pure_forwarders: usize,
    /// Hops from the root to a subscriber: the deepest and the mean.
    pub max_depth: usize,
    /// Mean hops from the root to a subscriber.
    pub mean_depth: f64,
    /// The most children of one node.
    pub max_children: usize,
    /// Mean children of a node with children.
    pub mean_children: f64,
    /// The most children one node sent one message to (`TopicStats::max_fanout`).
    pub max_fanout: u64,
    /// Sends across the overlay per publish, all told (routed hops of the publish and its
    /// acknowledgement, sends down the tree, copies to the nodes next in line to be root).
    pub sends_per_publish: f64,
    /// Of which: sends down the tree.
    pub tree_sends_per_publish: f64,
    /// Of which: hops of the publish to the root.
    pub publish_hops_per_publish: f64,
    /// Of which: hops of the acknowledgement back to the publisher.
    pub ack_hops_per_publish: f64,
    /// Of which: copies to the root's successors.
    pub replica_sends_per_publish: f64,
    /// Sending to each subscriber directly instead: routed messages the origin sends.
    pub direct_messages: usize,
    /// ... and the sends across the overlay (the sum of the routes' hops).
    pub direct_sends: u64,
    /// Mean hops of a direct route.
    pub direct_mean_hops: f64,
    /// Tree upkeep: refreshes and their answers per second, over the whole tree.
    pub upkeep_sends_per_s: f64,
    /// Joins, answers and redirects that built the tree.
    pub build_sends: u64,
    /// Wall-clock seconds, and peak resident memory (MiB).
    pub wall_seconds: f64,
    /// Peak resident set size in MiB.
    pub peak_rss_mib: f64,
}

impl fmt::Display for TopicFigure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "topics: {} nodes, {} subscribers of one topic, {} messages",
            self.nodes, self.subscribers, self.messages
        )?;
        writeln!(
            f,
            "  delivered: {}/{} subscribers got every message once, in order",
            self.complete_subscribers, self.subscribers
        )?;
        writeln!(
            f,
            "  tree: {} nodes ({} forwarders that do not subscribe); depth max {} mean {:.2}; \
             children max {} mean {:.2}; most children sent one message: {}",
            self.tree_nodes,
            self.pure_forwarders,
            self.max_depth,
            self.mean_depth,
            self.max_children,
            self.mean_children,
            self.max_fanout
        )?;
        writeln!(
            f,
            "  per publish: {:.1} sends across the overlay ({:.1} down the tree, {:.1} publish \
             hops, {:.1} ack hops, {:.1} copies to the next roots)",
            self.sends_per_publish,
            self.tree_sends_per_publish,
            self.publish_hops_per_publish,
            self.ack_hops_per_publish,
            self.replica_sends_per_publish
        )?;
        writeln!(
            f,
            "  sending to each subscriber directly: {} routed messages from the origin, {} \
             sends across the overlay ({:.2} hops each)",
            self.direct_messages, self.direct_sends, self.direct_mean_hops
        )?;
        writeln!(
            f,
            "  tree upkeep {:.0} sends/s; tree build {} sends",
            self.upkeep_sends_per_s, self.build_sends
        )?;
        write!(
            f,
            "  wall {:.1} s, peak RSS {:.0} MiB",
            self.wall_seconds, self.peak_rss_mib
        )
    }
}

/// Each node's own Pastry state answers the topics layer's questions.
struct PastryRouting {
    nodes: Vec<Pastry>,
    index: HashMap<NodeId, usize>,
    /// The network the overlay was built on, for its delays.
    net: Network<LatencyModel, ()>,
}

impl Routing for PastryRouting {
    fn next_hop(&self, at: usize, key: Key, _now_us: u64) -> Option<Option<PeerInfo>> {
        let node = &self.nodes[at];
        node.is_active().then(|| node.next_hop(key))
    }

    fn closest_leaves(&self, at: usize, key: Key, n: usize, _now_us: u64) -> Vec<PeerInfo> {
        // As the runtime answers it (the node driver): the leaf set, closest to the key first.
        let mut leaves = self.nodes[at].leaf_set().peers();
        leaves.sort_by(|a, b| key.cmp_closeness(a.id, b.id));
        leaves.truncate(n);
        leaves
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    fn address(&self, index: usize) -> SocketAddr {
        addr_of(index as u32)
    }

    fn delay_us(&self, from: usize, to: usize) -> u64 {
        self.net.latency().one_way_us(from, to)
    }

    fn link_down(&mut self, _at: usize, _peer: NodeId, _now_us: u64) {}
}

/// Builds the overlay of `ids` (joins one at a time through the nearest active node, in
/// compressed time), then runs maintenance for `warmup_us` in model delays.
fn build_overlay(ids: &[NodeId], seed: u64, warmup_us: u64) -> PastryRouting {
    let stream = |n: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(n);
        rng
    };
    let mut place = stream(1);
    let mut model = LatencyModel::new(&ModelSpec::Plane, &mut place);
    for _ in ids {
        model.place(&mut place);
    }
    let links = LinkOptions {
        jitter: 0.0,
        loss: 0.0,
    };
    let mut net: Network<LatencyModel, ()> =
        Network::new(model, links, stream(3), TimerOrder::Armed);
    net.reserve(ids.len());
    net.set_compressed(true);
    let mut grid = Grid::new(ids.len());
    let config = <Pastry as SimNode>::protocol_config(&ProtocolOptions::default());
    let mut nodes: Vec<Pastry> = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let index = net.add_node(*id);
        let node_seed = seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        nodes.push(Pastry::new(net.peer(index), config.clone(), node_seed));
        let now = Time::from_micros(net.now());
        let via = net.latency().point(i).and_then(|point| {
            let model = net.latency();
            grid.nearest(point, |c| model.one_way_us(i, c as usize), grid.cell_us())
        });
        match via {
            Some(via) => {
                let via = net.peer(via);
                nodes[i].join(now, via);
            }
            None => nodes[i].bootstrap_alone(now),
        }
        drain(&mut net, &mut nodes, index, false);
        // Until the joiner is active (a minute of virtual time at most).
        let give_up = net.now() + 60 * SECOND;
        while !nodes[i].is_active() {
            let Some(event) = net.pop(give_up) else {
                break;
            };
            step(&mut net, &mut nodes, event);
        }
        if nodes[i].is_active() && net.activate(index) {
            if let Some(point) = net.latency().point(i) {
                grid.insert(index, point);
            }
        }
    }
    net.set_compressed(false);
    let until = net.now() + warmup_us;
    while let Some(event) = net.pop(until) {
        step(&mut net, &mut nodes, event);
    }
    let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    PastryRouting { nodes, index, net }
}

/// One network event, to its node.
fn step(net: &mut Network<LatencyModel, ()>, nodes: &mut [Pastry], event: NetEvent<()>) {
    match event {
        NetEvent::Message { from, to, msg } => {
            let now = Time::from_micros(net.now());
            let from = net.peer(from);
            nodes[to as usize].handle_message(now, from, msg);
            drain(net, nodes, to, false);
        }
        NetEvent::Timer(node) => {
            let deadline = nodes[node as usize].poll_timeout().map(Time::as_micros);
            if net.timer_due(node, deadline) {
                let now = Time::from_micros(net.now());
                nodes[node as usize].handle_timeout(now);
                drain(net, nodes, node, true);
            }
        }
        NetEvent::Proximity { node, peer, rtt_us } => {
            let now = Time::from_micros(net.now());
            let peer = net.peer(peer);
            let rtt = std::time::Duration::from_micros(rtt_us);
            nodes[node as usize].handle_proximity(now, peer, rtt);
            drain(net, nodes, node, false);
        }
        NetEvent::Owner(()) => {}
    }
}

/// Carries out node `index`'s sends and measurements and re-arms its timer.
fn drain(net: &mut Network<LatencyModel, ()>, nodes: &mut [Pastry], index: u32, fired: bool) {
    let node = &mut nodes[index as usize];
    while let Some(transmit) = node.poll_transmit() {
        match transmit {
            Transmit::Send { to, msg } => {
                if let Some(to) = net.resolve(&to) {
                    net.send(index, to, msg);
                }
            }
            Transmit::Measure { peer } => {
                if let Some(peer) = net.resolve(&peer) {
                    net.measure(index, peer);
                }
            }
        }
    }
    // Events (deliveries, membership changes) matter to nobody here.
    while node.poll_event().is_some() {}
    let deadline = node.poll_timeout().map(Time::as_micros);
    net.arm_timer(index, deadline, fired);
}

/// Hops from `node` up to the root along the parents (`None` for a loop or a detached node).
fn depth(net: &TopicNet<PastryRouting>, node: usize) -> Option<usize> {
    let mut at = node;
    for hops in 0..64 {
        let place = net.trees[at].place(TOPIC)?;
        if place.root {
            return Some(hops);
        }
        at = net.routing.index_of(place.parent?)?;
    }
    None
}

/// Runs the figure. `progress` hears what the run is doing.
pub fn topic_figure(config: &TopicFigureConfig, progress: &mut dyn FnMut(&str)) -> TopicFigure {
    let started = std::time::Instant::now();
    let n = config.nodes.max(2);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(9);
    let signers: Vec<_> = (0..n)
        .map(|_| Identity::from_seed(rng.gen()).origin_signer())
        .collect();
    let ids: Vec<NodeId> = signers.iter().map(|s| s.node_id()).collect();
    progress(&format!("building an overlay of {n} nodes"));
    let routing = build_overlay(&ids, config.seed, 10 * SECOND);
    let mut net = TopicNet::new(routing, signers, &TopicsConfig::default());
    let subscribers = config.subscribers.min(n - 1);
    let chosen = sample(&mut rng, n, subscribers + 1).into_vec();
    let (publisher, subs) = (chosen[0], &chosen[1..]);
    progress(&format!("{subscribers} subscribers join the tree"));
    // Evenly over two seconds from now: each subscriber's time counts from the same start.
    let spread = 2 * SECOND / subscribers.max(1) as u64;
    let first = net.now_us();
    for (k, s) in subs.iter().enumerate() {
        net.run_until(first + spread * k as u64);
        net.subscribe(*s, TOPIC);
    }
    let built_at = net.now_us() + 5 * SECOND;
    net.run_until(built_at);
    let build_sends = net.traffic.tree;

    // The tree as it stands.
    let mut tree_nodes = 0;
    let mut pure_forwarders = 0;
    let (mut max_children, mut parents, mut children_total) = (0, 0, 0);
    for t in &net.trees {
        if let Some(place) = t.place(TOPIC) {
            if place.root || place.parent.is_some() {
                tree_nodes += 1;
                if !place.subscribed {
                    pure_forwarders += 1;
                }
            }
            max_children = max_children.max(place.children.len());
            if !place.children.is_empty() {
                parents += 1;
                children_total += place.children.len();
            }
        }
    }
    let depths: Vec<usize> = subs.iter().filter_map(|s| depth(&net, *s)).collect();
    let max_depth = depths.iter().copied().max().unwrap_or(0);
    let mean_depth = depths.iter().sum::<usize>() as f64 / depths.len().max(1) as f64;

    // Upkeep over one second with nothing published.
    let before = net.traffic;
    let second = net.now_us() + SECOND;
    net.run_until(second);
    let upkeep = (net.traffic.tree - before.tree) as f64;

    progress(&format!("publishing {} messages", config.messages));
    let before = net.traffic;
    for k in 0..config.messages {
        net.publish(publisher, TOPIC, (k as u64).to_be_bytes().to_vec());
        let next = net.now_us() + SECOND / 10;
        net.run_until(next);
    }
    let end = net.now_us() + 3 * SECOND;
    net.run_until(end);
    let after: Traffic = net.traffic;
    let m = config.messages.max(1) as f64;
    let per = |a: u64, b: u64| (a - b) as f64 / m;
    let tree_sends = per(after.data, before.data);
    let replica = per(after.replica, before.replica);
    let publish_hops = per(after.publish_hops, before.publish_hops);
    let ack_hops = per(after.ack_hops, before.ack_hops);

    let want: Vec<u64> = (1..=config.messages as u64).collect();
    let complete_subscribers = subs
        .iter()
        .filter(|s| {
            net.delivered[**s]
                .iter()
                .map(|m| m.seq)
                .eq(want.iter().copied())
        })
        .count();
    let max_fanout = net
        .trees
        .iter()
        .map(|t| t.stats.max_fanout)
        .max()
        .unwrap_or(0);

    // Sending to each subscriber directly: one routed message each, from the publisher.
    let mut direct_sends = 0;
    let mut routed = 0;
    for s in subs {
        if let Some(hops) = net.route_hops(publisher, Key::from(net.id(*s))) {
            direct_sends += u64::from(hops);
            routed += 1;
        }
    }
    TopicFigure {
        nodes: n,
        subscribers,
        messages: config.messages,
        complete_subscribers,
        tree_nodes,
        pure_forwarders,
        max_depth,
        mean_depth,
        max_children,
        mean_children: children_total as f64 / parents.max(1) as f64,
        max_fanout,
        sends_per_publish: tree_sends + replica + publish_hops + ack_hops,
        tree_sends_per_publish: tree_sends,
        publish_hops_per_publish: publish_hops,
        ack_hops_per_publish: ack_hops,
        replica_sends_per_publish: replica,
        direct_messages: subscribers,
        direct_sends,
        direct_mean_hops: direct_sends as f64 / routed.max(1) as f64,
        upkeep_sends_per_s: upkeep,
        build_sends,
        wall_seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_figure_delivers_everything_and_builds_its_tree_in_the_time_it_says() {
        let config = TopicFigureConfig {
            nodes: 300,
            subscribers: 30,
            messages: 3,
            seed: 5,
        };
        let figure = topic_figure(&config, &mut |_| {});
        assert_eq!(figure.complete_subscribers, 30, "{figure}");
        assert!(figure.max_fanout <= 16, "{figure}");
        // Subscribing (2 s) and settling (5 s) take 7 s of virtual time: each node in the
        // tree refreshes its join every heartbeat (500 ms) and is answered, 28 sends at most.
        // Twice that leaves room for the joins and redirects; a subscribing phase that ran
        // longer than it says (each subscriber's start counted from the one before) is far
        // past it.
        let refreshes = figure.tree_nodes as u64 * 28;
        assert!(
            figure.build_sends <= 2 * refreshes,
            "{} sends to build a tree of {} nodes",
            figure.build_sends,
            figure.tree_nodes
        );
    }
}
