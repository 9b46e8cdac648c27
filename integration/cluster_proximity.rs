//! Proximity over real QUIC: 24 nodes in three emulated regions (a [`DelaySocket`] per node
//! holds each outgoing datagram for half the region pair's round-trip time: 1 ms inside a
//! region, 25 ms between regions 0 and 1, 80 ms to region 2). Nothing tells the nodes where
//! anyone is: QUIC's measured RTT alone must make routing tables prefer near peers and keep
//! routes short in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wendy::id::NodeId;
use wendy::identity::Identity;
use wendy::node::{ForwardAction, Node, NodeConfig};
use wendy::testing::{DelaySocket, RegionMap};

use crate::common;
use common::cluster;

const NODES: usize = 24;

/// The hops each test message took: sequence number -> (forwarding node, next hop) in order.
type Paths = Arc<Mutex<HashMap<u64, Vec<(NodeId, NodeId)>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_prefers_near_peers_and_routes_stay_short_in_time() {
    let map = RegionMap::three_regions();
    let paths: Paths = Arc::default();
    let mut builders = Vec::new();
    for i in 0..NODES {
        let seed = 200 + i as u8;
        let identity = Identity::from_seed([seed; 32]);
        let me = identity.node_id();
        let record = paths.clone();
        let socket = DelaySocket::bind("127.0.0.1:0".parse().unwrap(), &map, i % 3).unwrap();
        let mut config = NodeConfig::default();
        // Let periodic maintenance (ask a row, measure its candidates) run a few rounds.
        config.pastry.maintenance_period = Duration::from_millis(500);
        builders.push(
            Node::builder(identity)
                .seed(u64::from(seed))
                .config(config)
                .socket(socket)
                // Record each hop's choice (the forward interceptor sees every first attempt).
                .on_forward(move |forwarded, payload| {
                    if let Some(seq) = payload.get(..8).and_then(|b| b.try_into().ok()) {
                        let mut paths = record.lock().unwrap();
                        let path = paths.entry(u64::from_be_bytes(seq)).or_default();
                        path.push((me, forwarded.next_hop));
                    }
                    ForwardAction::Continue
                }),
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

    // Route latency against the direct one-way delay from sender to root. Structurally: the
    // emulated delays of the hops each message took (from the forward interceptor), which does
    // not depend on this machine's load; and as measured end to end, which does (printed, not
    // asserted: it adds every hop's processing on a shared 2-core host). One message in flight
    // at a time.
    let keys = cluster::spread_keys(120, 3);
    let addr_of = |id: NodeId| nodes.iter().find(|n| n.id() == id).unwrap().addr();
    let one_way = |a: NodeId, b: NodeId| map.rtt_between(addr_of(a), addr_of(b)) / 2;
    let mut measured_total = Duration::ZERO;
    let mut path_total = Duration::ZERO;
    let mut direct_total = Duration::ZERO;
    let mut rerouted = 0;
    for (i, &key) in keys.iter().enumerate() {
        let from = std::slice::from_ref(&nodes[(i * 7) % NODES]);
        let sent = cluster::route_all(from, &[key], i as u64).await;
        let arrived = cluster::expect_deliveries(&mut observations, &sent, &ids, |_| {}).await;
        let (message, arrival) = (&sent[0], &arrived[&sent[0].seq]);
        let path = paths
            .lock()
            .unwrap()
            .remove(&message.seq)
            .unwrap_or_default();
        let complete = path.len() == usize::from(arrival.hops)
            && path.windows(2).all(|w| w[0].1 == w[1].0)
            && path.first().map_or(true, |hop| hop.0 == message.from)
            && path.last().map_or(true, |hop| hop.1 == arrival.at);
        if !complete {
            // A hop timed out and re-routed (re-routes are not shown to the interceptor).
            rerouted += 1;
            continue;
        }
        measured_total += arrival.when - message.at;
        path_total += path.iter().map(|&(a, b)| one_way(a, b)).sum::<Duration>();
        direct_total += one_way(message.from, arrival.at);
    }
    let counted = keys.len() - rerouted;
    assert!(
        counted * 10 >= keys.len() * 9,
        "{rerouted} of {} routes were re-routed",
        keys.len()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / counted as f64;
    let path_ratio = path_total.as_secs_f64() / direct_total.as_secs_f64();
    let measured_ratio = measured_total.as_secs_f64() / direct_total.as_secs_f64();
    eprintln!(
        "{counted} routes ({rerouted} re-routed, left out): mean direct one-way delay to the root \
         {:.1} ms; along the hops taken {:.1} ms (ratio {path_ratio:.2}); measured end to end \
         {:.1} ms (ratio {measured_ratio:.2})",
        ms(direct_total),
        ms(path_total),
        ms(measured_total),
    );
    assert!(
        path_ratio <= 1.5,
        "routes take {path_ratio:.2}x the direct latency (more than 1.5x)"
    );
}
