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
    // The hop died before its held receipt went out: the origin sent the message another way,
    // by a hedged copy if the hop had been silent lately, else on its ack timeout.
    let stats = net.nodes[from].stats();
    assert!(stats.reroutes + stats.hedges >= 1);
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
        payload: b"x".to_vec().into(),
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

/// A node at 0x50.. that has forwarded message 7 from `prev` (0x90..) to `root` (0x20..);
/// returns the node, `prev` and `root`.
fn forwarding_hop() -> (Pastry, PeerInfo, PeerInfo) {
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
    // Not delivered here, and the receipt is held back for the root's answer.
    assert_eq!(route_acks(&outputs.transmits), vec![]);
    (node, prev, root)
}

fn root_done(prev: PeerInfo) -> Message {
    Message::RouteAck {
        origin: prev.id,
        id: 7,
        done: true,
    }
}

#[test]
fn a_hop_whose_next_hop_delivered_at_once_releases_its_predecessor_with_one_ack() {
    let (mut node, prev, root) = forwarding_hop();
    // The root delivered at once and acks only `done: true`: the predecessor is released, and
    // gets no receipt before or after.
    let soon = Time::ZERO + Duration::from_millis(1);
    node.handle_message(soon, root, root_done(prev));
    assert_eq!(
        route_acks(&drain(&mut node).transmits),
        vec![(prev.id, true)]
    );
    node.handle_timeout(Time::ZERO + Config::default().ack_timeout);
    assert_eq!(route_acks(&drain(&mut node).transmits), vec![]);
}

#[test]
fn a_hop_whose_next_hop_is_slow_sends_its_receipt_well_within_the_senders_wait() {
    let (mut node, prev, root) = forwarding_hop();
    // The sender waits at least `timeout_slack` for it.
    let due = Time::ZERO + Config::default().timeout_slack / 4;
    node.handle_timeout(due);
    assert_eq!(
        route_acks(&drain(&mut node).transmits),
        vec![(prev.id, false)]
    );
    node.handle_message(due, root, root_done(prev));
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

/// `a` routes to a key whose root by its leaf set is `r`; `c` is the next closest. Returns the
/// node, `r`, `c`, the key, and the time `r`'s ack is due.
fn routed_to_a_silent_root() -> (Pastry, PeerInfo, PeerInfo, Key, Time) {
    let mut node = lone(0x10 << 120);
    let (r, c) = (peer(0x50 << 120), peer(0x60 << 120));
    meet(&mut node, r);
    meet(&mut node, c);
    let key = NodeId::from_u128(0x51 << 120).to_key();
    node.route(Time::ZERO, key, b"for r".to_vec());
    let sent = drain(&mut node).transmits;
    assert!(sent
        .iter()
        .any(|t| matches!(t, Transmit::Send { to, msg: Message::Route { .. } } if *to == r)));
    let due = Time::ZERO + Config::default().ack_timeout;
    (node, r, c, key, due)
}

fn routes_to(transmits: &[Transmit], who: PeerInfo) -> usize {
    transmits
        .iter()
        .filter(|t| matches!(t, Transmit::Send { to, msg: Message::Route { .. } } if *to == who))
        .count()
}

fn probes_to(transmits: &[Transmit], who: PeerInfo) -> Vec<u64> {
    transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg: Message::Probe { nonce, .. },
            } if *to == who => Some(*nonce),
            _ => None,
        })
        .collect()
}

/// The next closest node does not suspect the root, so it would deliver the message as root:
/// a hop whose root went silent waits for the root's probe instead, and sends the message to
/// the root again when the probe is answered.
#[test]
fn a_hop_whose_root_is_silent_waits_for_its_probe_rather_than_pass_the_key_on() {
    let (mut node, r, c, _key, due) = routed_to_a_silent_root();
    node.handle_timeout(due);
    let out = drain(&mut node).transmits;
    let nonces = probes_to(&out, r);
    assert_eq!(nonces.len(), 1, "the silent root is probed: {out:?}");
    assert_eq!(
        routes_to(&out, c),
        0,
        "passed on to the next closest: {out:?}"
    );
    // The root answers: the message goes to it again, not to `c`.
    let later = due + Duration::from_millis(500);
    node.handle_message(
        later,
        r,
        Message::ProbeReply {
            nonce: nonces[0],
            active: true,
            leaf_set: vec![],
            failed: vec![],
        },
    );
    node.handle_timeout(later);
    let out = drain(&mut node).transmits;
    assert_eq!(routes_to(&out, r), 1, "{out:?}");
    assert_eq!(routes_to(&out, c), 0, "{out:?}");
}

/// A root that stays silent through its probe is dead: the message then goes to the next
/// closest node, the key's root without it.
#[test]
fn a_message_parked_on_a_root_that_dies_goes_to_the_next_closest() {
    let (mut node, r, c, _key, due) = routed_to_a_silent_root();
    let mut now = due;
    let mut to_c = 0;
    while now < due + Duration::from_secs(30) && to_c == 0 {
        node.handle_timeout(now);
        let out = drain(&mut node).transmits;
        to_c += routes_to(&out, c);
        if to_c == 0 {
            assert!(
                node.leaf_set().contains(r.id),
                "passed on before r was found dead"
            );
        }
        now += Duration::from_millis(100);
    }
    assert_eq!(to_c, 1);
    assert!(!node.leaf_set().contains(r.id));
}

/// A relayed link moving to another relay: the root's probe gets its whole timeout again from
/// the move, so no retry (and no verdict) is due at the time it would have been.
#[test]
fn a_path_change_gives_the_probes_of_its_peer_their_time_again() {
    let (mut node, r, _c, _key, due) = routed_to_a_silent_root();
    node.handle_timeout(due);
    assert_eq!(probes_to(&drain(&mut node).transmits, r).len(), 1);
    let probe_due = due + Config::default().probe_timeout;
    let moved = due + (Config::default().probe_timeout - Duration::from_millis(100));
    node.handle_path_change(moved, r.id);
    node.handle_timeout(probe_due);
    assert!(probes_to(&drain(&mut node).transmits, r).is_empty());
    node.handle_timeout(moved + Config::default().probe_timeout);
    assert_eq!(
        probes_to(&drain(&mut node).transmits, r).len(),
        1,
        "retried later"
    );
}

/// The root's ack was only late: it arrives while the root's probe runs, which proves the root
/// alive, so the message parked on it goes to it again at once (it drops a copy it delivered),
/// not at whatever timer comes next.
#[test]
fn a_late_ack_from_a_suspected_root_sends_the_messages_parked_on_it_at_once() {
    let mut node = lone(0x10 << 120);
    let (r, c) = (peer(0x50 << 120), peer(0x60 << 120));
    meet(&mut node, r);
    meet(&mut node, c);
    let key = NodeId::from_u128(0x51 << 120).to_key();
    let id = node.route(Time::ZERO, key, b"for r".to_vec());
    assert_eq!(routes_to(&drain(&mut node).transmits, r), 1);
    let due = Time::ZERO + Config::default().ack_timeout;
    node.handle_timeout(due);
    let out = drain(&mut node).transmits;
    assert_eq!(
        probes_to(&out, r).len(),
        1,
        "the silent root is probed: {out:?}"
    );
    assert_eq!(
        routes_to(&out, c),
        0,
        "passed on to the next closest: {out:?}"
    );
    let late = due + Duration::from_millis(10);
    node.handle_message(
        late,
        r,
        Message::RouteAck {
            origin: node.id(),
            id,
            done: true,
        },
    );
    let out = drain(&mut node).transmits;
    assert_eq!(routes_to(&out, r), 1, "still parked: {out:?}");
    assert_eq!(routes_to(&out, c), 0, "{out:?}");
}
