//! Liveness: failure detection and repair, graceful leave, lost links and failed dials.

use super::*;

#[test]
fn silent_failures_are_detected_repaired_and_reported() {
    let mut net = Net::build(Config::default(), 100, 4);
    net.run_for(Duration::from_secs(30));
    // Ten nodes, including runs of ring neighbours (so that some notices have no live sender
    // next to the dead node and far leaf-set members must find out by themselves).
    let mut by_id: Vec<usize> = (0..net.nodes.len()).collect();
    by_id.sort_by_key(|&i| net.nodes[i].id());
    let victims: Vec<usize> = [5, 6, 30, 31, 32, 60, 61, 75, 88, 95]
        .iter()
        .map(|&r| by_id[r])
        .collect();
    // Who had each victim in its leaf set when it died.
    let mut watchers = Vec::new();
    for &v in &victims {
        let id = net.nodes[v].id();
        for i in 0..net.nodes.len() {
            if !victims.contains(&i) && net.nodes[i].leaf_set().contains(id) {
                watchers.push((i, id));
            }
        }
        net.kill(v);
    }
    let killed_at = net.now;
    let sum =
        |net: &Net, f: fn(&Stats) -> u64| -> u64 { net.nodes.iter().map(|n| f(n.stats())).sum() };
    let before = [
        sum(&net, |s| s.suspect_probes),
        sum(&net, |s| s.candidate_probes),
        sum(&net, |s| s.sent_of(MessageKind::NodeFailed).msgs),
        sum(&net, |s| s.control().msgs),
    ];
    // Lookups during the repair are re-routed, not lost.
    check_lookups(&mut net, 100);
    net.run_for(Duration::from_secs(120));
    let wrong: Vec<String> = net
        .wrong_leaf_sets()
        .into_iter()
        .map(|i| net.leaf_diff(i))
        .collect();
    assert_eq!(wrong, Vec::<String>::new(), "after repair");
    for (i, id) in watchers {
        assert!(
            net.events
                .iter()
                .any(|(at, e, t)| *at == i && *e == Event::NodeLeft(id) && *t >= killed_at),
            "node {i} never reported NodeLeft for {id}"
        );
        assert!(!net.nodes[i].knows(id), "node {i} still holds dead {id}");
    }
    let hops = check_lookups(&mut net, 300);
    eprintln!(
        "after 10% failures: mean hops {:.2}; per failed node: suspect probes {}, candidate probes {}, node_failed {}, control msgs {}",
        mean(&hops),
        (sum(&net, |s| s.suspect_probes) - before[0]) / 10,
        (sum(&net, |s| s.candidate_probes) - before[1]) / 10,
        (sum(&net, |s| s.sent_of(MessageKind::NodeFailed).msgs) - before[2]) / 10,
        (sum(&net, |s| s.control().msgs) - before[3]) / 10,
    );
}

/// A small overlay (25 nodes, 5 fail: 20 survivors, barely more than L = 16): a side's L/2
/// nearest may reach past half the ring, and repair must still converge to the oracle's leaf
/// sets and go quiet (no probing of the same far members forever).
#[test]
fn failures_in_a_small_overlay_converge_and_go_quiet() {
    for seed in [1, 2, 3] {
        let mut net = Net::build(Config::default(), 25, 30 + seed);
        net.run_for(Duration::from_secs(30));
        for _ in 0..5 {
            let victim = net.random_live();
            net.kill(victim);
        }
        net.run_for(Duration::from_secs(120));
        let wrong: Vec<String> = net
            .wrong_leaf_sets()
            .into_iter()
            .map(|i| net.leaf_diff(i))
            .collect();
        assert_eq!(wrong, Vec::<String>::new(), "seed {seed}: after repair");
        let control =
            |net: &Net| -> u64 { net.nodes.iter().map(|n| n.stats().control().msgs).sum() };
        let before = control(&net);
        let window = Duration::from_secs(300);
        net.run_for(window);
        let per_node_s = (control(&net) - before) as f64 / 20.0 / window.as_secs_f64();
        assert!(
            per_node_s < 0.5,
            "seed {seed}: {per_node_s:.2} control msgs/s per node after repair"
        );
        check_lookups(&mut net, 100);
    }
}

#[test]
fn graceful_leave_notifies_the_leaf_set_at_once() {
    let mut net = Net::build(Config::default(), 60, 5);
    let leaver = 17;
    let id = net.nodes[leaver].id();
    let members: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| i != leaver && net.nodes[i].leaf_set().contains(id))
        .collect();
    assert!(!members.is_empty());
    let left_at = net.now;
    net.leave(leaver);
    // One message latency (at most ~72 ms here), no probing needed.
    net.run_for(Duration::from_millis(200));
    for &i in &members {
        assert!(
            net.events
                .iter()
                .any(|(at, e, t)| *at == i && *e == Event::NodeLeft(id) && *t >= left_at),
            "member {i} did not report NodeLeft at once"
        );
    }
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.wrong_leaf_sets(), Vec::<usize>::new());
    check_lookups(&mut net, 100);
}

/// A node that leaves right after joining is already held by peers it has not yet admitted
/// (they heard its announcement while it was still probing them): they are told too, and
/// drop it at once rather than after a probe timeout.
#[test]
fn a_node_that_leaves_right_after_joining_is_dropped_by_every_holder_at_once() {
    let mut net = Net::build(Config::default(), 40, 9);
    let mut lingering = Vec::new();
    for _ in 0..5 {
        let leaver = net.add(None);
        net.join_until_active(leaver);
        let id = net.nodes[leaver].id();
        net.leave(leaver);
        // Far less than a probe timeout: only a notice can have removed it by then.
        net.run_for(Duration::from_millis(500));
        for i in 0..net.nodes.len() {
            let node = &net.nodes[i];
            if i != leaver
                && net.alive[i]
                && (node.leaf_set().contains(id) || node.routing_table().contains(id))
            {
                lingering.push((i, id));
            }
        }
        net.run_for(Duration::from_secs(30));
    }
    assert_eq!(
        lingering,
        Vec::new(),
        "(holder, leaver) pairs still holding the leaver"
    );
    assert_eq!(net.wrong_leaf_sets(), Vec::<usize>::new());
}

/// `Transmit::Measure` whose dial fails: the driver calls `handle_link_down`. A candidate we were
/// only measuring is not admitted (a late sample is ignored) nor measured again for a while; a
/// peer in our state is probed (suspected).
#[test]
fn a_measure_that_cannot_dial_suspects_the_peer() {
    let mut node = Pastry::new(peer(1 << 120), Config::default(), 1);
    node.bootstrap_alone(Time::ZERO);
    drain(&mut node);
    let holder = peer(0xf << 124);
    node.handle_proximity(Time::ZERO, holder, Duration::from_millis(40));
    let offer = |node: &mut Pastry, entries: Vec<PeerInfo>| {
        node.handle_message(Time::ZERO, holder, Message::RowReply { row: 0, entries });
        drain(node)
    };
    let candidate = peer(0xe << 124);
    assert!(offer(&mut node, vec![candidate])
        .transmits
        .contains(&Transmit::Measure { peer: candidate }));
    node.handle_link_down(Time::ZERO, candidate.id);
    drain(&mut node);
    // Late measurement: ignored; offered again: not measured again.
    node.handle_proximity(Time::ZERO, candidate, Duration::from_millis(5));
    assert!(!node.knows(candidate.id));
    assert!(!offer(&mut node, vec![candidate])
        .transmits
        .contains(&Transmit::Measure { peer: candidate }));
    // A peer already in our state is probed at once.
    meet(&mut node, holder);
    node.handle_link_down(Time::ZERO, holder.id);
    let probed = drain(&mut node).transmits.into_iter().any(
        |t| matches!(t, Transmit::Send { to, msg: Message::Probe { .. } } if to.id == holder.id),
    );
    assert!(probed, "the undialable member is probed");
}

#[test]
fn link_down_suspects_the_peer_and_reroutes_at_once() {
    let mut net = Net::build(Config::default(), 40, 13);
    let (from, key, hop) = loop {
        let from = net.random_live();
        let key = net.random_key();
        if let Some(next) = net.nodes[from].next_hop(key) {
            if next.id != net.oracle_root(key) {
                break (from, key, net.index_of(next.id));
            }
        }
    };
    net.kill(hop);
    let id = net.route(from, key, vec![]);
    // The transport notices at once: the message is re-routed without waiting for the ack.
    let dead = net.nodes[hop].id();
    let now = net.now;
    net.nodes[from].handle_link_down(now, dead);
    net.flush(from);
    net.run_for(Duration::from_millis(1));
    assert_eq!(net.nodes[from].stats().reroutes, 1);
    assert!(net.nodes[from].next_hop(key).map_or(true, |p| p.id != dead));
    net.run_for(Duration::from_secs(2));
    let origin = net.nodes[from].id();
    let got: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .collect();
    assert_eq!(got.len(), 1);
    assert!(got[0].correct);
}

/// A leaf set with a hole (a member found dead, not yet replaced) still estimates the overlay's
/// size from the members it has: the estimate must not fall to the leaf set's own size, which
/// would make every routing-table row look sparse and start a probe of each entry.
#[test]
fn a_leaf_set_with_a_hole_keeps_the_size_estimate() {
    let mut net = Net::build(Config::default(), 120, 21);
    net.run_for(Duration::from_secs(20));
    let node = 7;
    let before = net.nodes[node].estimated_size();
    let member = net.nodes[node].leaf_set().side_slots(Side::Left)[2].peer.id;
    assert!(net.nodes[node].leaf_set.remove(member));
    let with_hole = net.nodes[node].estimated_size();
    assert!(
        with_hole > before * 0.6 && with_hole < before * 1.4,
        "estimate {before:.0} became {with_hole:.0} with one member missing"
    );
}

/// A failure notice from a node that found the failed node silent is confirmed by one
/// unanswered probe of each holder's own, not a try and a retry.
#[test]
fn a_true_failure_notice_costs_each_holder_one_probe() {
    use std::cell::Cell;
    use std::rc::Rc;
    let mut net = Net::build(Config::default(), 60, 9);
    net.run_for(Duration::from_secs(20));
    let victim = 23;
    let c = net.nodes[victim].id();
    let holders: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| i != victim && net.nodes[i].leaf_set().contains(c))
        .collect();
    net.kill(victim);
    let probes = Rc::new(Cell::new(0usize));
    let seen = Rc::clone(&probes);
    net.drop_if = Some(Box::new(move |_, to, m| {
        if to == victim && matches!(m, Message::Probe { .. }) {
            seen.set(seen.get() + 1);
        }
        false
    }));
    let teller = net.peer(holders[0]);
    for &i in &holders[1..] {
        let now = net.now;
        net.nodes[i].handle_message(
            now,
            teller,
            Message::NodeFailed {
                node: c,
                leaf_set: vec![],
            },
        );
        net.flush(i);
    }
    net.run_for(Duration::from_secs(7));
    for &i in &holders[1..] {
        assert!(!net.nodes[i].knows(c), "node {i} still holds the dead node");
    }
    // One probe per told holder, plus at most a try and a retry from each of the dead node's
    // two neighbours if their heartbeat watch fires meanwhile.
    let told = holders.len() - 1;
    assert!(
        probes.get() <= told + 4,
        "{} probes of the dead node for {told} told holders",
        probes.get()
    );
}

/// Two members that cannot reach each other (each behind a NAT the other cannot get through,
/// say) while everyone else reaches both: their leaf sets then disagree with everyone's for
/// good. Checking a neighbour's leaf set against ours must not turn that into a probe loop
/// (a member missing from one reply is probed, its reply lacks the other, which is probed...).
#[test]
fn two_members_that_cannot_reach_each_other_cost_bounded_probes() {
    let mut net = Net::build(Config::default(), 11, 5);
    net.run_for(Duration::from_secs(30));
    // A newcomer that member 3 and it can never reach each other.
    let (a, b) = (3, net.add(None));
    net.drop_if = Some(Box::new(move |from, to, _| {
        (from, to) == (a, b) || (from, to) == (b, a)
    }));
    net.start_join(b, 0);
    net.run_for(Duration::from_secs(30));
    assert!(net.nodes[b].is_active());
    assert!(!net.nodes[a].leaf_set().contains(net.nodes[b].id()));
    let probes = |net: &Net| -> u64 {
        net.nodes
            .iter()
            .map(|n| n.stats().suspect_probes + n.stats().candidate_probes)
            .sum()
    };
    let before = probes(&net);
    net.run_for(Duration::from_secs(300));
    let spent = probes(&net) - before;
    println!("probes in 300 s with one pair cut: {spent}");
    // With each reply starting the next probe this would be 19,961.
    assert!(spent < 600, "{spent} probes in 300 s");
}
