//! Shared helpers for the cluster tests, on the library's in-process cluster
//! ([`wendy::testing::Cluster`]): start nodes, read their merged events, wait for leaf sets to
//! match the oracle, route batches and check where they land.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use wendy::id::{Key, NodeId};
use wendy::node::{Events, Node, NodeBuilder, NodeEvent};
use wendy::testing::{seq_of, Cluster, Via};

pub use wendy::testing::Observed;

use super::HANG_GUARD;

/// Half the default leaf set (L = 16).
pub const HALF_LEAF_SET: usize = 8;

/// Every node's events, merged into one channel.
#[derive(Debug)]
pub struct Observations {
    /// A cluster whose members were handed to the test: it keeps reading their events.
    cluster: Cluster,
}

impl Observations {
    /// Merges `node`'s events into this channel.
    pub fn watch(&self, node: &Node, events: Events) {
        self.cluster.watch(node, events);
    }

    /// The next event (hang-guarded).
    pub async fn next(&mut self) -> Observed {
        self.cluster
            .next_event(HANG_GUARD)
            .await
            .expect("no event came (hang guard)")
    }

    /// The next event before `deadline`, if any.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<Observed> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.cluster.next_event(left).await
    }
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
    let mut cluster = Cluster::new(0);
    for (i, builder) in builders.into_iter().enumerate() {
        cluster
            .add(builder, Via::Member(bootstrap(i)))
            .await
            .unwrap_or_else(|e| panic!("node {i} did not start and join: {e}"));
    }
    let nodes = std::mem::take(&mut cluster.nodes);
    (nodes, Observations { cluster })
}

/// The nodes whose leaf set differs from the oracle's over `population`, with what they hold.
pub async fn leaf_mismatches(
    nodes: &[Node],
    population: &[NodeId],
) -> Vec<wendy::testing::LeafMismatch> {
    wendy::testing::leaf_mismatches(nodes, population, HALF_LEAF_SET)
        .await
        .expect("status")
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
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls (hang-guarded) until every leaf set equals the oracle's over `population`.
pub async fn converge(nodes: &[Node], population: &[NodeId]) {
    if wendy::testing::settle(nodes, population, HALF_LEAF_SET, HANG_GUARD)
        .await
        .is_err()
    {
        let mismatched = leaf_mismatches(nodes, population).await;
        panic!("leaf sets never matched the oracle (hang guard): {mismatched:#?}");
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
        let Some(seq) = seq_of(&delivery.payload) else {
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
