//! Many nodes' topics on the in-memory network ([`TopicNet`]) with a small routing model:
//! trees that lose their root and forwarders in the middle of a stream repair, and every live
//! subscriber ends up with every accepted message, once and in order.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::harness::{Routing, TopicNet};
use super::TopicsConfig;
use crate::id::{Key, NodeId};
use crate::identity::Identity;
use crate::pastry::PeerInfo;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Prefix routing over the whole membership (as Pastry's tables and leaf set would give it):
/// a node routes to a node sharing a longer prefix with the key (its "table entry", fixed per
/// pair), else to the node closest to the key. A dead node is routed around once the node
/// found it unreachable, or after a repair time of its own (the overlay's repair, which
/// reaches the nodes at different times).
struct Model {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
    died: Vec<Option<u64>>,
    known_dead: HashSet<(usize, NodeId)>,
    repair_us: u64,
    seed: u64,
    /// Draws of the per-message delay jitter.
    draws: Cell<u64>,
}

impl Model {
    fn new(ids: Vec<NodeId>, seed: u64, repair_us: u64) -> Self {
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let n = ids.len();
        Self {
            ids,
            index,
            died: vec![None; n],
            known_dead: HashSet::new(),
            repair_us,
            seed,
            draws: Cell::new(seed),
        }
    }

    fn usable(&self, at: usize, c: usize, now_us: u64) -> bool {
        if c == at || self.known_dead.contains(&(at, self.ids[c])) {
            return false;
        }
        let repair = self.repair_us + mix(self.seed ^ at as u64) % self.repair_us.max(1);
        !self.died[c].is_some_and(|d| now_us >= d + repair)
    }
}

impl Routing for Model {
    fn next_hop(&self, at: usize, key: Key, now_us: u64) -> Option<Option<PeerInfo>> {
        let me = self.ids[at];
        let candidates: Vec<usize> = (0..self.ids.len())
            .filter(|c| self.usable(at, *c, now_us))
            .collect();
        let closest = candidates
            .iter()
            .copied()
            .min_by(|a, b| key.cmp_closeness(self.ids[*a], self.ids[*b]))?;
        if key.cmp_closeness(me, self.ids[closest]).is_le() {
            return Some(None);
        }
        let mine = key.shared_prefix_len(me);
        let entry = candidates
            .iter()
            .copied()
            .filter(|c| key.shared_prefix_len(self.ids[*c]) > mine)
            .min_by_key(|c| mix(self.seed ^ ((at as u64) << 32) ^ *c as u64));
        let to = entry.unwrap_or(closest);
        Some(Some(PeerInfo {
            id: self.ids[to],
            addr: self.address(to),
        }))
    }

    fn closest_leaves(&self, at: usize, key: Key, n: usize, now_us: u64) -> Vec<PeerInfo> {
        let mut leaves: Vec<usize> = (0..self.ids.len())
            .filter(|c| self.usable(at, *c, now_us))
            .collect();
        leaves.sort_by(|a, b| key.cmp_closeness(self.ids[*a], self.ids[*b]));
        leaves
            .into_iter()
            .take(n)
            .map(|c| PeerInfo {
                id: self.ids[c],
                addr: self.address(c),
            })
            .collect()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    fn address(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (index >> 8) as u8, index as u8], 7000))
    }

    fn delay_us(&self, from: usize, to: usize) -> u64 {
        let draw = mix(self.draws.get());
        self.draws.set(draw);
        let base =
            500 + mix(self.seed ^ ((from.min(to) as u64) << 32) ^ from.max(to) as u64) % 5000;
        // Jitter up to 4x: a loaded machine delivers out of order, and late.
        base + draw % (3 * base)
    }

    fn link_down(&mut self, at: usize, peer: NodeId, _now_us: u64) {
        if self
            .index
            .get(&peer)
            .is_some_and(|p| self.died[*p].is_some())
        {
            self.known_dead.insert((at, peer));
        }
    }
}

const TOPIC: &str = "bench";
const MS: u64 = 1000;

/// `n` nodes, the first `subscribers` subscribed, the last one publishing.
fn net(n: usize, seed: u64, repair_us: u64) -> TopicNet<Model> {
    let signers: Vec<_> = (0..n)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&mix(seed ^ i as u64).to_le_bytes());
            secret[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            Identity::from_seed(secret).origin_signer()
        })
        .collect();
    let ids = signers.iter().map(|s| s.node_id()).collect();
    TopicNet::new(
        Model::new(ids, seed, repair_us),
        signers,
        &TopicsConfig::default(),
    )
}

/// Publishes `messages` from the last node as fast as the root acknowledges them, kills the
/// root and `forwarders` forwarders after `kill_at`, and returns the net once every message
/// is accepted and things settled.
fn stream_with_kills(
    seed: u64,
    messages: u64,
    kill_at: u64,
    forwarders: usize,
) -> (TopicNet<Model>, Vec<usize>, Vec<usize>) {
    let (n, subscribers) = (64, 60);
    let mut net = net(n, seed, 2_000 * MS);
    let publisher = n - 1;
    for i in 0..subscribers {
        assert!(net.subscribe(i, TOPIC));
    }
    net.run_until(3_000 * MS);
    let root = (0..n)
        .find(|i| net.trees[*i].place(TOPIC).is_some_and(|p| p.root))
        .expect("a root");
    assert_ne!(root, publisher, "seed {seed}: the publisher is the root");
    let mut with_children: Vec<usize> = (0..n)
        .filter(|i| *i != root && *i != publisher)
        .filter(|i| {
            net.trees[*i]
                .place(TOPIC)
                .is_some_and(|p| !p.children.is_empty())
        })
        .collect();
    // A different pick of forwarders for each seed.
    with_children.sort_by_key(|i| mix(seed ^ *i as u64));
    let mut killed = vec![root];
    killed.extend(with_children.into_iter().take(forwarders));
    let mut seq = 0;
    let deadline = net.now_us() + 120_000 * MS;
    while net.trees[publisher].accepted(TOPIC) < messages {
        if net.now_us() >= deadline {
            panic!(
                "seed {seed}: not every message accepted (killed {killed:?})\n{}",
                roots_dump(&net)
            );
        }
        while seq < messages {
            match net.publish(publisher, TOPIC, seq.to_be_bytes().to_vec()) {
                Some(s) => seq = s,
                None => break,
            }
            if seq == kill_at {
                for k in &killed {
                    net.kill(*k);
                    // The overlay's repair starts now: routing goes around it from here.
                    let now = net.now_us();
                    net.routing.died[*k] = Some(now);
                }
            }
        }
        let next = net.now_us() + MS;
        net.run_until(next);
    }
    let settle = net.now_us() + 20_000 * MS;
    net.run_until(settle);
    let live = (0..subscribers).filter(|i| !killed.contains(i)).collect();
    (net, live, killed)
}

/// The nodes that hold a window of the topic (root, copies): where a stream stands there.
fn roots_dump(net: &TopicNet<Model>) -> String {
    let mut out = String::new();
    for (i, tree) in net.trees.iter().enumerate() {
        let Some(t) = tree.topics.get(TOPIC) else {
            continue;
        };
        if t.root || !t.window.is_empty() {
            let hop = net.routing.next_hop(i, t.key, net.now_us());
            out += &format!(
                "node {i} alive {} root {} heads {:?} window {:?}..{:?} next hop {:?}\n",
                net.alive[i],
                t.root,
                t.heads.values().collect::<Vec<_>>(),
                t.window.front().map(|m| m.seq),
                t.window.back().map(|m| m.seq),
                hop.map(|h| h.and_then(|p| net.routing.index_of(p.id))),
            );
        }
    }
    out
}

fn assert_all_delivered(net: &TopicNet<Model>, live: &[usize], messages: u64, seed: u64) {
    let want: Vec<u64> = (1..=messages).collect();
    for i in live {
        let got: Vec<u64> = net.delivered[*i].iter().map(|m| m.seq).collect();
        if got != want {
            let place = net.trees[*i].place(TOPIC);
            let last = got.last().copied().unwrap_or(0);
            panic!(
                "seed {seed}: subscriber {i} has {} messages, the last {last} (place {place:?}, \
                 stats {:?})",
                got.len(),
                net.trees[*i].stats
            );
        }
    }
}

#[test]
fn a_stream_without_failures_reaches_every_subscriber_once_in_order() {
    let (net, live, _) = stream_with_kills(1, 300, u64::MAX, 0);
    assert_all_delivered(&net, &live, 300, 1);
    let most = net.trees.iter().map(|t| t.stats.max_fanout).max();
    assert!(most.is_some_and(|m| m <= 16), "{most:?}");
}

#[test]
fn killing_the_root_and_two_forwarders_mid_stream_loses_no_accepted_message() {
    // As the integration test: 1,000 messages, the kills after the 500th. The publisher goes
    // much faster than the repair (detection takes the parent timeout, routing a few seconds),
    // so the subtrees of the dead forwarders fall far behind before they fetch.
    for seed in 1..=8 {
        let (net, live, killed) = stream_with_kills(seed, 1000, 500, 2);
        assert_eq!(killed.len(), 3, "seed {seed}: a root and two forwarders");
        assert_all_delivered(&net, &live, 1000, seed);
    }
}
