//! Authenticated origins over real QUIC on loopback: a delivery names the node that really
//! routed the message, over several hops, and a peer that claims another node's origin gets
//! nothing delivered while that node's own messages still are.

use std::collections::HashMap;
use std::time::Duration;

use wendy::id::{Key, NodeId};
use wendy::node::{NodeConfig, NodeEvent};
use wendy::pastry::{Message, PeerInfo};
use wendy::testing::{seq_of, Cluster, Via};
use wendy::wire::{envelope, Body, PayloadKind};

use crate::common::cluster::spread_keys;
use crate::common::{self, HANG_GUARD};

/// A small leaf set, so that a 16-node overlay routes over 2 and more hops.
fn config() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.pastry.leaf_set_size = 4;
    config
}

async fn cluster(nodes: usize, seed: u64) -> Cluster {
    let mut cluster = Cluster::new(seed).with_leaf_set_size(4);
    cluster
        .grow(nodes, &config(), Via::Random, &mut |_| {})
        .await
        .expect("grow");
    cluster.settle(HANG_GUARD).await.expect("settle");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_names_the_node_that_routed_it_over_several_hops() {
    let mut cluster = cluster(16, 31).await;
    let keys = spread_keys(160, 5);
    let mut sender: HashMap<u64, NodeId> = HashMap::new();
    for (seq, key) in keys.iter().enumerate() {
        let from = &cluster.nodes[seq % cluster.nodes.len()];
        from.route(*key, (seq as u64).to_be_bytes().to_vec())
            .await
            .expect("route");
        sender.insert(seq as u64, from.id());
    }
    let mut by_hops: HashMap<u8, usize> = HashMap::new();
    while !sender.is_empty() {
        let observed = cluster
            .next_event(HANG_GUARD)
            .await
            .unwrap_or_else(|| panic!("{} messages never delivered", sender.len()));
        match observed.event {
            NodeEvent::Deliver(delivery) => {
                let seq = seq_of(&delivery.payload).expect("a test payload");
                let from = sender.remove(&seq).expect("delivered once");
                assert_eq!(delivery.origin, from, "message {seq}: wrong origin");
                *by_hops.entry(delivery.hops).or_default() += 1;
            }
            NodeEvent::Error(error) => panic!("{error}"),
            _ => {}
        }
    }
    let multi_hop: usize = by_hops
        .iter()
        .filter(|(h, _)| **h >= 2)
        .map(|(_, n)| n)
        .sum();
    assert!(multi_hop > 0, "no route took 2 hops or more: {by_hops:?}");
    for node in &cluster.nodes {
        assert_eq!(node.stats().origins_rejected, 0);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_origin_is_never_delivered_and_the_real_origins_messages_all_are() {
    let mut cluster = cluster(6, 32).await;
    let root = cluster.nodes[0].clone();
    let victim = cluster.nodes[1].clone();
    let key = Key::from(root.id());
    // A peer outside the overlay connects to the root and hands it messages claiming the
    // victim's origin, with the ids of a counter (the next ids a per-origin counter would use).
    let hostile = common::Node::open().await;
    let hostile_id = hostile.id();
    let claimed = PeerInfo {
        id: victim.id(),
        addr: victim.addr(),
    };
    for id in 0..100u64 {
        let forged = Body::Pastry(Message::Route {
            id,
            key,
            origin: claimed,
            hops: 1,
            avoid: vec![],
            payload: envelope::wrap(PayloadKind::Application, b"forged"),
            proof: None,
        });
        hostile
            .transport
            .send(root.id(), root.addr(), &forged)
            .await
            .expect("send");
    }
    // Every forgery is reported, naming the hostile peer; none is delivered.
    let mut reported = 0;
    while reported < 100 {
        let observed = cluster
            .next_event(HANG_GUARD)
            .await
            .expect("forgeries never reported");
        match observed.event {
            NodeEvent::Deliver(delivery) => {
                panic!("delivered at {}: {delivery:?}", observed.at)
            }
            NodeEvent::Error(error) if observed.at == root.id() => {
                assert!(error.contains(&hostile_id.to_string()), "{error}");
                assert!(error.contains(&victim.id().to_string()), "{error}");
                reported += 1;
            }
            _ => {}
        }
    }
    assert_eq!(root.stats().origins_rejected, 100);
    // The victim's next 100 messages all arrive, from the victim.
    for seq in 0..100u64 {
        victim
            .route(key, seq.to_be_bytes().to_vec())
            .await
            .expect("route");
    }
    let mut delivered = [false; 100];
    while delivered.iter().any(|d| !d) {
        let observed = cluster
            .next_event(Duration::from_secs(30))
            .await
            .expect("the victim's messages were lost");
        if let NodeEvent::Deliver(delivery) = observed.event {
            assert_eq!(observed.at, root.id());
            assert_eq!(delivery.origin, victim.id());
            let seq = seq_of(&delivery.payload).expect("a test payload") as usize;
            assert!(!delivered[seq], "message {seq} delivered twice");
            delivered[seq] = true;
        }
    }
    assert_eq!(root.status().await.unwrap().duplicates_suppressed, 0);
    cluster.shutdown().await;
}
