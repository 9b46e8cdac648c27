//! Shared helpers for the cluster tests: start nodes, collect their events in one channel, wait
//! for leaf sets to match the oracle, route batches and check where they land.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use wendy::id::{Key, NodeId};
use wendy::node::{Events, Node, NodeBuilder, NodeEvent};
use wendy::pastry::ideal_leaf_set;

use super::HANG_GUARD;

/// Half the default leaf set (L = 16).
pub const HALF_LEAF_SET: usize = 8;

/// One event, where and when it was seen.
#[derive(Debug)]
pub struct Observed {
    /// The node that emitted it.
    pub at: NodeId,
    /// When the test's collector received it.
    pub when: Instant,
    /// The event.
    pub event: NodeEvent,
}

/// Every node's events, merged into one channel.
#[derive(Debug)]
pub struct Observations {
    rx: mpsc::UnboundedReceiver<Observed>,
    tx: mpsc::UnboundedSender<Observed>,
}

impl Observations {
    /// An empty channel.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { rx, tx }
    }

    /// Merges `node`'s events into this channel.
    pub fn watch(&self, node: &Node, events: Events) {
        observe(node.id(), events, self.tx.clone());
    }

    /// The next event (hang-guarded).
    pub async fn next(&mut self) -> Observed {
        tokio::time::timeout(HANG_GUARD, self.rx.recv())
            .await
            .expect("no event came (hang guard)")
            .expect("channel open")
    }

    /// The next event before `deadline`, if any.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<Observed> {
        tokio::time::timeout_at(deadline, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Forwards `events` of node `at` into `tx` until the node stops.
pub fn observe(at: NodeId, mut events: Events, tx: mpsc::UnboundedSender<Observed>) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let observed = Observed {
                at,
                when: Instant::now(),
                event,
            };
            if tx.send(observed).is_err() {
                break;
            }
        }
    });
}

/// Spawns every builder, starts an overlay at the first and joins the others one by one
/// through it. Returns the nodes (in order) and their merged events.
pub async fn start(builders: Vec<NodeBuilder>) -> (Vec<Node>, Observations) {
    start_via(builders, |_| 0).await
}

/// Like [`start`], but node `i` joins through node `bootstrap(i)` (which must be `< i`).
pub async fn start_via(
    builders: Vec<NodeBuilder>,
    bootstrap: impl Fn(usize) -> usize,
) -> (Vec<Node>, Observations) {
    let observations = Observations::new();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, builder) in builders.into_iter().enumerate() {
        let (node, events) = builder.spawn().await.expect("spawn node");
        observations.watch(&node, events);
        if i == 0 {
            node.join(&[]).await.expect("first node starts the overlay");
        } else {
            let via = nodes[bootstrap(i)].addr();
            node.join(&[via]).await.expect("join through a member");
        }
        nodes.push(node);
    }
    (nodes, observations)
}

/// The nodes whose leaf set differs from the oracle's over `population`, with what they hold.
pub async fn leaf_mismatches(
    nodes: &[Node],
    population: &[NodeId],
) -> Vec<(NodeId, Vec<NodeId>, Vec<NodeId>)> {
    let mut mismatched = Vec::new();
    for node in nodes {
        let mut leaf_set = node.status().await.expect("status").leaf_set;
        leaf_set.sort();
        let ideal = ideal_leaf_set(node.id(), population.iter().copied(), HALF_LEAF_SET);
        if leaf_set != ideal {
            mismatched.push((node.id(), leaf_set, ideal));
        }
    }
    mismatched
}

/// Polls `check` every 20 ms until it holds; the only limit is the hang guard (a slow machine
/// just takes longer).
pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + HANG_GUARD;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (hang guard)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls (hang-guarded) until every leaf set equals the oracle's over `population`.
pub async fn converge(nodes: &[Node], population: &[NodeId]) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let mismatched = leaf_mismatches(nodes, population).await;
        if mismatched.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leaf sets never matched the oracle (hang guard): {mismatched:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count` keys spread over the ring, different for each `salt`.
pub fn spread_keys(count: u64, salt: u64) -> Vec<Key> {
    (0..count)
        .map(|i| {
            let x = u128::from(i ^ (salt << 32)).wrapping_add(u128::from(salt));
            Key::from_u128(x.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
        })
        .collect()
}

/// A routed message the test sent and expects to see delivered.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Test sequence number (the first 8 payload bytes).
    pub seq: u64,
    /// Its key.
    pub key: Key,
    /// When `route` was called.
    pub at: Instant,
    /// The sender.
    pub from: NodeId,
}

/// Routes one message per key, from the nodes in turn; the payload starts with `first_seq + i`.
pub async fn route_all(nodes: &[Node], keys: &[Key], first_seq: u64) -> Vec<Sent> {
    let mut sent = Vec::new();
    for (i, &key) in keys.iter().enumerate() {
        let seq = first_seq + i as u64;
        let from = &nodes[(i * 7) % nodes.len()];
        let at = Instant::now();
        from.route(key, seq.to_be_bytes().to_vec())
            .await
            .expect("route");
        sent.push(Sent {
            seq,
            key,
            at,
            from: from.id(),
        });
    }
    sent
}

/// A delivery seen by the test.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The node that delivered it.
    pub at: NodeId,
    /// When.
    pub when: Instant,
    /// Overlay hops.
    pub hops: u8,
}

/// Waits (hang-guarded) until every message of `sent` is delivered; asserts none is delivered
/// twice and each at the oracle root over `live`. Other events are handed to `other`.
pub async fn expect_deliveries(
    observations: &mut Observations,
    sent: &[Sent],
    live: &[NodeId],
    mut other: impl FnMut(Observed),
) -> HashMap<u64, Arrival> {
    let by_seq: HashMap<u64, &Sent> = sent.iter().map(|s| (s.seq, s)).collect();
    let mut arrived: HashMap<u64, Arrival> = HashMap::new();
    let deadline = Instant::now() + HANG_GUARD;
    while arrived.len() < sent.len() {
        let missing = || {
            let got: HashSet<u64> = arrived.keys().copied().collect();
            by_seq
                .keys()
                .filter(|s| !got.contains(s))
                .copied()
                .collect::<Vec<_>>()
        };
        let observed = observations
            .next_before(deadline)
            .await
            .unwrap_or_else(|| panic!("messages lost (hang guard): {:?}", missing()));
        let NodeEvent::Deliver(delivery) = &observed.event else {
            other(observed);
            continue;
        };
        let Some(seq) = delivery
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        let Some(message) = by_seq.get(&seq) else {
            continue;
        };
        let root = message
            .key
            .closest(live.iter().copied())
            .expect("live nodes");
        assert_eq!(
            observed.at, root,
            "message {seq} (key {}) delivered at {} instead of the live root {root}",
            message.key, observed.at
        );
        let previous = arrived.insert(
            seq,
            Arrival {
                at: observed.at,
                when: observed.when,
                hops: delivery.hops,
            },
        );
        assert!(previous.is_none(), "message {seq} delivered twice");
    }
    arrived
}
