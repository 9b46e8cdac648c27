//! Hedged hops: a copy to the next-best hop when a next hop silent lately does not acknowledge
//! a message within about two round trips.

use super::*;
use crate::pastry::harness::Delivered;

/// An overlay idle for longer than a probe period, and a lookup from `from` for `key` whose
/// first hop `hop` is not the key's root, has a known RTT, was not heard from within a probe
/// period, and lies outside `from`'s leaf-set range: a hop the origin may hedge.
fn silent_first_hop(seed: u64) -> (Net, usize, Key, usize) {
    let config = Config::default();
    let mut net = Net::build(config.clone(), 80, seed);
    net.run_for(config.probe_period + Duration::from_secs(5));
    for _ in 0..10_000 {
        let from = net.random_live();
        let key = net.random_key();
        let node = &net.nodes[from];
        let Some(next) = node.next_hop(key) else {
            continue;
        };
        if next.id != net.oracle_root(key)
            && !node.leaf_set().covers(key)
            && node.rtt_of(next.id).is_some()
            && !node.heard_within(net.now, next.id, config.probe_period)
        {
            let hop = net.index_of(next.id);
            return (net, from, key, hop);
        }
    }
    panic!("no lookup with a silent first hop");
}

fn deliveries(net: &Net, from: usize, id: u64) -> Vec<Delivered> {
    let origin = net.nodes[from].id();
    net.delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .cloned()
        .collect()
}

#[test]
fn a_message_to_a_dead_silent_hop_arrives_before_the_hops_ack_timeout() {
    let (mut net, from, key, hop) = silent_first_hop(21);
    let hop_id = net.nodes[hop].id();
    let ack_due = net.now + net.nodes[from].hop_timeout(hop_id, Config::default().ack_timeout);
    net.kill(hop);
    let id = net.route(from, key, b"hedged".to_vec());
    net.run_for(Duration::from_secs(10));
    let got = deliveries(&net, from, id);
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    assert!(got[0].correct, "misdelivered");
    assert!(
        got[0].time < ack_due,
        "delivered at {:?}, after the dead hop's ack timeout ({ack_due:?}): no copy went ahead",
        got[0].time
    );
    assert_eq!(net.nodes[from].stats().hedges, 1);
}

#[test]
fn a_slow_hop_and_its_hedged_copy_give_one_delivery() {
    let (mut net, from, key, hop) = silent_first_hop(22);
    // The hop is alive and passes the message on, but its acknowledgements never reach the
    // origin: the origin sends a copy another way, and the root gets both.
    net.drop_if = Some(Box::new(move |sender, to, m| {
        sender == hop && to == from && matches!(m, Message::RouteAck { .. })
    }));
    let id = net.route(from, key, b"twice".to_vec());
    net.run_for(Duration::from_secs(20));
    let got = deliveries(&net, from, id);
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    assert!(got[0].correct, "misdelivered");
    let root = got[0].at;
    assert_eq!(net.nodes[root].stats().duplicates_suppressed, 1);
    // One copy, and no re-route a third way when the hop's ack timed out.
    let stats = net.nodes[from].stats();
    assert_eq!((stats.hedges, stats.reroutes), (1, 0));
}

/// A node at 0x10.. with a full leaf set of near peers and two far routing-table entries,
/// `a` (0x80..) and `b` (0x90..), none heard from since time zero. A key next to `a` goes to
/// `a`; without `a`, to `b`.
fn node_with_far_entries() -> (Pastry, PeerInfo, PeerInfo, Key) {
    let base = 0x10u128 << 120;
    let mut node = lone(base);
    for i in 1..=8u128 {
        meet(&mut node, peer(base + i * (1 << 100)));
        meet(&mut node, peer(base - i * (1 << 100)));
    }
    let (a, b) = (peer(0x80 << 120), peer(0x90 << 120));
    meet(&mut node, a);
    meet(&mut node, b);
    let key = NodeId::from_u128((0x81 << 120) + 5).to_key();
    assert!(!node.leaf_set().covers(key));
    assert_eq!(node.next_hop(key), Some(a));
    (node, a, b, key)
}

/// Routes a message for `key` at `start` and runs the node's timers as they fall due until
/// `until`; returns when (if ever) a `Route` went to `to`.
fn first_route_to(
    node: &mut Pastry,
    key: Key,
    start: Time,
    until: Time,
    to: PeerInfo,
) -> Option<Time> {
    node.handle_timeout(start);
    drain(node);
    node.route(start, key, b"x".to_vec());
    drain(node);
    while let Some(now) = node.poll_timeout().filter(|t| *t <= until) {
        node.handle_timeout(now);
        if routes_sent_to(&drain(node).transmits, to) > 0 {
            return Some(now);
        }
    }
    None
}

fn routes_sent_to(transmits: &[Transmit], who: PeerInfo) -> usize {
    transmits
        .iter()
        .filter(|t| matches!(t, Transmit::Send { to, msg: Message::Route { .. } } if *to == who))
        .count()
}

#[test]
fn only_a_silent_hop_with_a_known_rtt_is_hedged() {
    let config = Config::default();
    let start = Time::ZERO + config.probe_period + Duration::from_secs(1);
    let rtt = Duration::from_millis(20);
    let hedge_due = start + rtt * 2 + config.timeout_slack / 4;
    let ack_due = start + rtt * 3 + config.timeout_slack;

    // Known RTT: the copy goes to `b` at two round trips and a quarter of the slack.
    let (mut node, a, b, key) = node_with_far_entries();
    node.handle_proximity(Time::ZERO, a, rtt);
    let sent = first_route_to(&mut node, key, start, ack_due, b);
    assert_eq!(sent, Some(hedge_due));
    assert_eq!(node.stats().hedges, 1);

    // Unknown RTT: no copy; `b` gets the message only when `a`'s whole timeout has passed.
    let (mut node, _a, b, key) = node_with_far_entries();
    let until = start + (config.ack_timeout - Duration::from_millis(1));
    assert_eq!(first_route_to(&mut node, key, start, until, b), None);
    assert_eq!(node.stats().hedges, 0);

    // Heard from within a probe period: no copy before `a`'s ack timeout either.
    let (mut node, a, b, key) = node_with_far_entries();
    node.handle_proximity(Time::ZERO, a, rtt);
    let early = Time::ZERO + (config.probe_period - Duration::from_secs(1));
    let until = early + (rtt * 3 + config.timeout_slack - Duration::from_millis(1));
    assert_eq!(first_route_to(&mut node, key, early, until, b), None);
    assert_eq!(node.stats().hedges, 0);
}

#[test]
fn an_origin_whose_attempts_run_out_routes_its_message_afresh_rather_than_give_it_up() {
    let config = Config {
        proximity: false,
        max_route_attempts: 2,
        ..Config::default()
    };
    let base = 0x10u128 << 120;
    let mut node = Pastry::new(peer(base), config.clone(), 1);
    node.bootstrap_alone(Time::ZERO);
    for i in 1..=8u128 {
        meet(&mut node, peer(base + i * (1 << 100)));
        meet(&mut node, peer(base - i * (1 << 100)));
    }
    // `a` holds the key's slot; without it `b` is the closest known node, then `c`.
    let (a, b, c) = (peer(0x80 << 120), peer(0x90 << 120), peer(0x70 << 120));
    for p in [a, b, c] {
        meet(&mut node, p);
    }
    let key = NodeId::from_u128((0x81 << 120) + 5).to_key();
    let start = Time::ZERO + Duration::from_secs(1);
    node.handle_timeout(start);
    drain(&mut node);
    node.route(start, key, b"keep".to_vec());
    assert_eq!(routes_sent_to(&drain(&mut node).transmits, a), 1);
    // `a` and `b` never answer: two attempts, the configured most, are used up.
    let (mut to_b, mut to_c, mut failed) = (0, 0, false);
    let until = start + config.ack_timeout * 2 + Duration::from_millis(500);
    while let Some(now) = node.poll_timeout().filter(|t| *t <= until) {
        node.handle_timeout(now);
        let out = drain(&mut node);
        to_b += routes_sent_to(&out.transmits, b);
        to_c += routes_sent_to(&out.transmits, c);
        failed |= out
            .events
            .iter()
            .any(|e| matches!(e, Event::RouteFailed { .. }));
    }
    assert_eq!(to_b, 1, "the second attempt goes to b");
    assert!(!failed, "the origin gave its own message up");
    assert_eq!(to_c, 1, "a fresh round goes to c");
    assert_eq!(node.stats().fresh_rounds, 1);
}
