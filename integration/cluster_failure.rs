//! Abrupt failures over real QUIC on loopback: 20% of the nodes go silent at once (their UDP
//! sockets drop everything: no QUIC close, no leave notice), so only the failure detector
//! (probes, per-hop acks) can tell. Messages routed right after the kill must still all arrive,
//! at the live root; `node_left` must fire at the dead nodes' leaf-set neighbours; leaf sets
//! must converge to the survivors' oracle.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use std::time::Instant;
use wendy::id::NodeId;
use wendy::identity::Identity;
use wendy::node::{Node, NodeConfig, NodeEvent};
use wendy::testing::{DelaySocket, RegionMap};

use crate::common;
use common::cluster::{self, Observed};

// 25 nodes, 5 killed: 20 survivors is barely more than a leaf set (L = 16), the hardest case
// for leaf-set repair (the sides reach around most of the ring).
const NODES: usize = 25;
const KILLED: [usize; 5] = [3, 8, 13, 18, 23]; // 20%

/// Fast failure detection for a loopback test: leaf-set heartbeats every 200 ms, a silent
/// neighbour probed and declared dead after a further ~2 x 300 ms. Per-hop acks keep the
/// runtime's default timeout (3 x RTT + 250 ms: shorter ones mistake a loaded machine for dead
/// peers). QUIC's own idle timeout stays at its default (15 s), so it is Pastry's detector that
/// finds the dead nodes.
fn fast_detection() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.pastry.probe_period = Duration::from_millis(200);
    config.pastry.probe_timeout = Duration::from_millis(300);
    config.pastry.custody_timeout = Duration::from_secs(1);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_failure_of_a_fifth_is_detected_and_routed_around() {
    // One region, no delay: the sockets are there to be silenced.
    let map = RegionMap::new(vec![vec![Duration::ZERO]]);
    let mut sockets = Vec::new();
    let mut builders = Vec::new();
    for i in 0..NODES {
        let seed = 60 + i as u8;
        let socket = DelaySocket::bind("127.0.0.1:0".parse().unwrap(), &map, 0).unwrap();
        sockets.push(socket.clone());
        builders.push(
            Node::builder(Identity::from_seed([seed; 32]))
                .seed(u64::from(seed))
                .config(fast_detection())
                .socket(socket),
        );
    }
    let (nodes, mut observations) = cluster::start(builders).await;
    let all: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    cluster::converge(&nodes, &all).await;

    let dead: HashSet<NodeId> = KILLED.iter().map(|&i| all[i]).collect();
    let survivors: Vec<Node> = (0..NODES)
        .filter(|i| !KILLED.contains(i))
        .map(|i| nodes[i].clone())
        .collect();
    let live: Vec<NodeId> = survivors.iter().map(Node::id).collect();
    // Who must see whom leave: each survivor, for the dead nodes in its leaf set.
    let mut must_see: HashSet<(NodeId, NodeId)> = HashSet::new();
    for node in &survivors {
        for leaf in node.status().await.unwrap().leaf_set {
            if dead.contains(&leaf) {
                must_see.insert((node.id(), leaf));
            }
        }
    }
    assert!(!must_see.is_empty());

    let killed_at = Instant::now();
    for &i in &KILLED {
        sockets[i].silence();
    }

    // Right after the kill, before anyone can know: 300 messages from the survivors.
    let keys = cluster::spread_keys(300, 1);
    let sent = cluster::route_all(&survivors, &keys, 0).await;
    // Messages whose old root is dead reach a node that does not know it yet, which hands them
    // to the dead node: only the per-hop ack timeout and a re-route can save them.
    let orphaned = keys
        .iter()
        .filter(|key| dead.contains(&key.closest(all.iter().copied()).unwrap()))
        .count();
    assert!(
        orphaned > 0,
        "no message was sent to a dead root: test is too weak"
    );
    let mut node_left: HashMap<(NodeId, NodeId), Instant> = HashMap::new();
    let mut others = Vec::new();
    let arrived =
        cluster::expect_deliveries(&mut observations, &sent, &live, |o| others.push(o)).await;
    let last_delivery = arrived.values().map(|a| a.when).max().unwrap();
    let record = |observed: Observed, node_left: &mut HashMap<_, _>| {
        if let NodeEvent::NodeLeft(id) = observed.event {
            node_left.entry((observed.at, id)).or_insert(observed.when);
        }
    };
    for observed in others {
        record(observed, &mut node_left);
    }
    while !must_see.iter().all(|pair| node_left.contains_key(pair)) {
        record(observations.next().await, &mut node_left);
    }
    let detected = must_see.iter().map(|pair| node_left[pair]).max().unwrap();
    let wrongly_left: Vec<_> = node_left
        .keys()
        .filter(|(at, id)| live.contains(at) && !dead.contains(id))
        .collect();
    assert!(
        wrongly_left.is_empty(),
        "live nodes reported as left: {wrongly_left:?}"
    );
    eprintln!(
        "killed {} of {NODES} silently: node_left at all {} leaf-set neighbours after {:.0} ms; \
         the {} messages routed right after the kill ({orphaned} of them to keys a dead node \
         owned) all arrived within {:.0} ms",
        KILLED.len(),
        must_see.len(),
        (detected - killed_at).as_secs_f64() * 1e3,
        sent.len(),
        (last_delivery - killed_at).as_secs_f64() * 1e3,
    );

    // The survivors repair their leaf sets to exactly the oracle's, and routing is correct.
    cluster::converge(&survivors, &live).await;
    eprintln!(
        "leaf sets equal the survivors' oracle {:.0} ms after the kill",
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    let keys = cluster::spread_keys(300, 2);
    let sent = cluster::route_all(&survivors, &keys, 1000).await;
    cluster::expect_deliveries(&mut observations, &sent, &live, |_| {}).await;
}
