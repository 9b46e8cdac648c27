//! Proximity over real QUIC: 24 nodes in three emulated regions (a [`DelaySocket`] per node
//! holds each outgoing datagram for half the region pair's round-trip time: 1 ms inside a
//! region, 25 ms between regions 0 and 1, 80 ms to region 2). Nothing tells the nodes where
//! anyone is: QUIC's measured RTT alone must make routing tables prefer near peers and keep
//! routes short in time.

use std::time::Duration;

use wendy::id::NodeId;
use wendy::identity::Identity;
use wendy::node::{Node, NodeConfig};
use wendy::testing::{DelaySocket, RegionMap};

mod common;
use common::cluster;

const NODES: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_prefers_near_peers_and_routes_stay_short_in_time() {
    let map = RegionMap::three_regions();
    let mut builders = Vec::new();
    for i in 0..NODES {
        let seed = 200 + i as u8;
        let socket = DelaySocket::bind("127.0.0.1:0".parse().unwrap(), &map, i % 3).unwrap();
        let mut config = NodeConfig::default();
        // Let periodic maintenance (ask a row, measure its candidates) run a few rounds.
        config.pastry.maintenance_period = Duration::from_millis(500);
        builders.push(
            Node::builder(Identity::from_seed([seed; 32]))
                .seed(u64::from(seed))
                .config(config)
                .socket(socket),
        );
    }
    let started = tokio::time::Instant::now();
    // Each node joins through a member of its own region, as Pastry prescribes (the first
    // three nodes, one per region, through node 0).
    let (nodes, mut observations) =
        cluster::start_via(builders, |i| if i < 3 { 0 } else { i % 3 }).await;
    let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    cluster::converge(&nodes, &ids).await;
    eprintln!(
        "{NODES} nodes in 3 regions joined and converged in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let region = |addr| map.region_of(addr).expect("every node has a region");

    // Routing-table entries: how often the chosen peer is in the node's own region, against
    // what picking any of the slot's candidates at random would give.
    let mut entries = 0usize;
    let mut same_region = 0usize;
    let mut random_same_region = 0.0f64;
    let mut choosable = 0usize; // slots with a same-region candidate and a farther one
    let mut choosable_same = 0usize;
    for node in &nodes {
        let status = node.status().await.unwrap();
        let mine = region(status.addr);
        for entry in &status.routing_table {
            let row = node.id().shared_prefix_len(entry.id);
            let digit = entry.id.digit(row);
            let candidates: Vec<&Node> = nodes
                .iter()
                .filter(|n| {
                    node.id().shared_prefix_len(n.id()) == row && n.id().digit(row) == digit
                })
                .collect();
            let near = candidates
                .iter()
                .filter(|n| region(n.addr()) == mine)
                .count();
            let is_near = region(entry.addr) == mine;
            entries += 1;
            same_region += usize::from(is_near);
            random_same_region += near as f64 / candidates.len() as f64;
            if near > 0 && near < candidates.len() {
                choosable += 1;
                choosable_same += usize::from(is_near);
            }
        }
    }
    let fraction = same_region as f64 / entries as f64;
    let random_fraction = random_same_region / entries as f64;
    eprintln!(
        "routing-table entries in the node's own region: {same_region}/{entries} = {fraction:.2} \
         (random choice: {random_fraction:.2}); where a near and a far candidate existed: \
         {choosable_same}/{choosable}"
    );
    assert!(choosable > 0, "no slot offered a choice: test is too weak");
    assert!(
        choosable_same * 10 >= choosable * 9,
        "where a near peer was available, only {choosable_same}/{choosable} slots hold one"
    );
    assert!(
        fraction > random_fraction,
        "routing tables do not prefer near peers: {fraction:.2} vs random {random_fraction:.2}"
    );

    // Route latency end to end against the direct one-way delay from sender to root. One
    // message in flight at a time: the latency of a route, not of a queue on a 2-core machine.
    let keys = cluster::spread_keys(120, 3);
    let addr_of = |id: NodeId| nodes.iter().find(|n| n.id() == id).unwrap().addr();
    let mut route_total = Duration::ZERO;
    let mut direct_total = Duration::ZERO;
    for (i, &key) in keys.iter().enumerate() {
        let from = std::slice::from_ref(&nodes[(i * 7) % NODES]);
        let sent = cluster::route_all(from, &[key], i as u64).await;
        let arrived = cluster::expect_deliveries(&mut observations, &sent, &ids, |_| {}).await;
        let (message, arrival) = (&sent[0], &arrived[&sent[0].seq]);
        route_total += arrival.when - message.at;
        direct_total += map.rtt_between(addr_of(message.from), addr_of(arrival.at)) / 2;
    }
    let ratio = route_total.as_secs_f64() / direct_total.as_secs_f64();
    eprintln!(
        "mean route latency {:.1} ms, mean direct one-way delay to the root {:.1} ms: ratio {ratio:.2}",
        route_total.as_secs_f64() * 1e3 / keys.len() as f64,
        direct_total.as_secs_f64() * 1e3 / keys.len() as f64,
    );
    assert!(
        ratio <= 1.5,
        "routes take {ratio:.2}x the direct latency (more than 1.5x)"
    );
}
