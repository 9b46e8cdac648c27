//! Custody: per-hop acks, re-routing around dead hops, custody of a message until it is passed on.

use super::*;

#[test]
fn ack_timeout_reroutes_around_a_dead_hop() {
    let mut net = Net::build(Config::default(), 80, 6);
    // Pick a lookup whose first hop is not the root, then kill that hop.
    let (from, key, hop) = loop {
        let from = net.random_live();
        let key = net.random_key();
        let root = net.oracle_root(key);
        if let Some(next) = net.nodes[from].next_hop(key) {
            if next.id != root {
                break (from, key, net.index_of(next.id));
            }
        }
    };
    net.kill(hop);
    let reroutes_before = net.nodes[from].stats().reroutes;
    let id = net.route(from, key, vec![1, 2, 3]);
    net.run_for(Duration::from_secs(10));
    let origin = net.nodes[from].id();
    let got: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(net.nodes[got[0].at].id(), net.oracle_root(key));
    assert_eq!(got[0].payload, vec![1, 2, 3]);
    assert!(net.nodes[from].stats().reroutes > reroutes_before);
}

#[test]
fn a_lost_ack_causes_a_duplicate_that_the_root_suppresses() {
    let mut net = Net::build(Config::default(), 60, 7);
    // A lookup whose first hop is not the root.
    let (from, key) = loop {
        let from = net.random_live();
        let key = net.random_key();
        if net.nodes[from]
            .next_hop(key)
            .is_some_and(|p| p.id != net.oracle_root(key))
        {
            break (from, key);
        }
    };
    // Lose the first hop's acks (received and passed on): the origin re-routes around it and
    // the root gets two copies.
    let dropped = std::rc::Rc::new(std::cell::Cell::new(0u8));
    let count = dropped.clone();
    net.drop_if = Some(Box::new(move |_, to, m| {
        let drop = to == from && matches!(m, Message::RouteAck { .. }) && count.get() < 2;
        if drop {
            count.set(count.get() + 1);
        }
        drop
    }));
    let id = net.route(from, key, vec![]);
    net.run_for(Duration::from_secs(20));
    assert_eq!(dropped.get(), 2);
    let origin = net.nodes[from].id();
    let deliveries: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .collect();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(net.nodes[deliveries[0].at].id(), net.oracle_root(key));
    assert!(net.nodes[from].stats().reroutes >= 1);
    let root = deliveries[0].at;
    assert_eq!(net.nodes[root].stats().duplicates_suppressed, 1);
}

#[test]
fn a_hop_that_dies_holding_a_message_does_not_lose_it() {
    let mut net = Net::build(Config::default(), 50, 14);
    let (from, key, hop) = loop {
        let from = net.random_live();
        let key = net.random_key();
        if let Some(next) = net.nodes[from].next_hop(key) {
            if next.id != net.oracle_root(key) {
                break (from, key, net.index_of(next.id));
            }
        }
    };
    let origin = net.nodes[from].id();
    // The hop receives and acknowledges the message, but its forward is lost and it dies.
    let lost = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = lost.clone();
    net.drop_if = Some(Box::new(move |_, to, m| {
        let drop = !flag.get()
            && to != hop
            && matches!(m, Message::Route { origin: o, .. } if o.id == origin);
        if drop {
            flag.set(true);
        }
        drop
    }));
    let id = net.route(from, key, b"precious".to_vec());
    let arrival = net.latency(from, hop) + Duration::from_micros(1);
    net.run_for(arrival);
    assert!(lost.get(), "the hop did not forward");
    net.kill(hop);
    net.run_for(Duration::from_secs(10));
    let got: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .collect();
    assert_eq!(got.len(), 1, "lost with the hop");
    assert!(got[0].correct);
    assert!(net.nodes[from].stats().reroutes >= 1);
}

/// The `RouteAck`s among `transmits`: (to, done).
fn route_acks(transmits: &[Transmit]) -> Vec<(NodeId, bool)> {
    transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg: Message::RouteAck { done, .. },
            } => Some((to.id, *done)),
            _ => None,
        })
        .collect()
}

fn route_msg(origin: PeerInfo, id: u64, key: Key) -> Message {
    Message::Route {
        id,
        key,
        origin,
        hops: 1,
        avoid: vec![],
        payload: b"x".to_vec(),
        proof: None,
    }
}

#[test]
fn a_root_acknowledges_a_message_it_delivers_at_once_with_one_ack() {
    let me = hex("50000000000000000000000000000000");
    let mut node = lone(me);
    let prev = peer(hex("90000000000000000000000000000000"));
    meet(&mut node, prev);
    let key = NodeId::from_u128(me + 5).to_key();
    node.handle_message(Time::ZERO, prev, route_msg(prev, 7, key));
    let outputs = drain(&mut node);
    assert!(outputs
        .events
        .iter()
        .any(|e| matches!(e, Event::Deliver { .. })));
    assert_eq!(route_acks(&outputs.transmits), vec![(prev.id, true)]);
}

#[test]
fn a_hop_whose_next_hop_delivered_at_once_releases_its_predecessor() {
    let me = hex("50000000000000000000000000000000");
    let mut node = lone(me);
    let prev = peer(hex("90000000000000000000000000000000"));
    let root = peer(hex("20000000000000000000000000000000"));
    meet(&mut node, prev);
    meet(&mut node, root);
    let key = NodeId::from_u128(root.id.as_u128() + 5).to_key();
    node.handle_message(Time::ZERO, prev, route_msg(prev, 7, key));
    let outputs = drain(&mut node);
    let forwarded = outputs.transmits.iter().any(
        |t| matches!(t, Transmit::Send { to, msg: Message::Route { .. } } if to.id == root.id),
    );
    assert!(forwarded);
    // Not delivered here: the predecessor gets a receipt only.
    assert_eq!(route_acks(&outputs.transmits), vec![(prev.id, false)]);
    // The root delivered at once and acks only `done: true`: the predecessor is released.
    node.handle_message(
        Time::ZERO,
        root,
        Message::RouteAck {
            origin: prev.id,
            id: 7,
            done: true,
        },
    );
    assert_eq!(
        route_acks(&drain(&mut node).transmits),
        vec![(prev.id, true)]
    );
}

#[test]
fn a_message_over_the_hop_limit_is_dropped_and_its_sender_released() {
    let me = hex("50000000000000000000000000000000");
    let mut node = lone(me);
    let prev = peer(hex("90000000000000000000000000000000"));
    meet(&mut node, prev);
    let key = NodeId::from_u128(me + 5).to_key();
    let Message::Route {
        id,
        key,
        origin,
        avoid,
        payload,
        ..
    } = route_msg(prev, 7, key)
    else {
        unreachable!("route_msg builds a Route")
    };
    let hops = Config::default().max_hops + 1;
    let looping = Message::Route {
        id,
        key,
        origin,
        hops,
        avoid,
        payload,
        proof: None,
    };
    node.handle_message(Time::ZERO, prev, looping);
    let outputs = drain(&mut node);
    // Not delivered although this node is the key's root: the message had looped too long.
    assert!(!outputs
        .events
        .iter()
        .any(|e| matches!(e, Event::Deliver { .. })));
    // Given up and counted here, but reported to nobody: the message is another origin's.
    assert_eq!(node.stats().routes_failed, 1);
    assert!(!outputs
        .events
        .iter()
        .any(|e| matches!(e, Event::RouteFailed { .. })));
    // `done`, not a receipt: the sender must not keep custody and route it again.
    assert_eq!(route_acks(&outputs.transmits), vec![(prev.id, true)]);
}
