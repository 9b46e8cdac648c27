//! Join: leaf sets after joins, join latency, concurrent joins, and the consistent-join guarantees.

use super::*;

/// Per-node join events and the leaf sets the moment the last join completes; that lookups
/// then reach the root within the hop bound, and that proximity shortens routes, is checked on
/// the simulator's steady runs (`integration/sim.rs`).
#[test]
fn every_joiner_reports_joined_once_and_leaf_sets_equal_the_oracle_right_after_joins() {
    let net = Net::build(Config::default(), 150, 1);
    let mut joined: Vec<usize> = net
        .events
        .iter()
        .filter(|(_, e, _)| *e == Event::Joined)
        .map(|(i, _, _)| *i)
        .collect();
    joined.sort_unstable();
    // Node 0 bootstrapped alone; every node, it included, reported Joined exactly once.
    assert_eq!(joined, (0..150).collect::<Vec<_>>());
    assert_eq!(
        net.wrong_leaf_sets(),
        Vec::<usize>::new(),
        "right after joins"
    );
}

#[test]
fn join_completes_in_a_few_round_trips_without_sleeps() {
    let mut net = Net::build(Config::default(), 40, 2);
    let i = net.add(None);
    let start = net.now;
    net.join(i);
    let took = net.now - start;
    // Latencies here are at most ~72 ms one way; a join is a route plus a probe round.
    assert!(took < Duration::from_secs(2), "join took {took:?}");
    assert_eq!(net.wrong_leaf_sets(), Vec::<usize>::new());
}

#[test]
fn concurrent_joins_converge_to_the_oracle() {
    let mut net = Net::build(Config::default(), 30, 3);
    // Ten nodes join at once through random members.
    let new: Vec<usize> = (0..10).map(|_| net.add(None)).collect();
    for &i in &new {
        let via = net.random_live();
        net.start_join(i, via);
    }
    net.run_for(Duration::from_secs(60));
    for &i in &new {
        assert!(net.nodes[i].is_active(), "node {i} did not join");
    }
    assert_eq!(net.wrong_leaf_sets(), Vec::<usize>::new());
    check_lookups(&mut net, 200);
}

#[test]
fn an_inactive_joiner_never_delivers_as_root() {
    let mut net = Net::build(Config::default(), 20, 9);
    let i = net.add(None);
    let joiner_id = net.nodes[i].id();
    // Hold back the joiner's probes so it stays inactive.
    net.drop_if = Some(Box::new(move |_, _, m| {
        matches!(m, Message::Probe { active: false, .. })
    }));
    net.start_join(i, 0);
    net.run_for(Duration::from_secs(2));
    assert!(!net.nodes[i].is_active());
    // A message for exactly the joiner's id, handed to it directly: it holds the message.
    let msg = Message::Route {
        id: 1,
        key: joiner_id.to_key(),
        origin: net.peer(0),
        hops: 1,
        avoid: vec![],
        payload: b"early".to_vec().into(),
        proof: None,
    };
    let from = net.peer(0);
    let now = net.now;
    net.nodes[i].handle_message(now, from, msg);
    net.flush(i);
    net.run_for(Duration::from_secs(5));
    assert!(
        net.delivered.is_empty(),
        "delivered before the joiner was active"
    );
    // Let the probes through: the join completes, then the message goes to the root.
    net.drop_if = None;
    net.run_for(Duration::from_secs(40));
    assert!(net.nodes[i].is_active());
    assert_eq!(net.delivered.len(), 1);
    assert!(net.delivered[0].correct);
    assert_eq!(net.delivered[0].payload, b"early".to_vec());
}

/// MSPastry's consistent join: the moment a joiner reports `Joined`, every member of its leaf
/// set already routes its keys to it, so a lookup for a key the joiner now owns, issued from any
/// node at that instant (its leaf-set members included), is delivered at the joiner.
#[test]
fn right_after_joined_the_joiners_keys_are_delivered_at_the_joiner() {
    let mut net = Net::build(Config::default(), 60, 21);
    for round in 0..5 {
        let i = net.add(None);
        net.join_until_active(i);
        let joiner = net.nodes[i].id();
        assert!(
            net.events.last().is_some_and(|(at, _, _)| *at == i),
            "the joiner's Joined event is the last thing that happened"
        );
        // Keys the joiner owns: its id and points part-way to its ring neighbours.
        let mut keys = vec![joiner.to_key()];
        let me = joiner.as_u128();
        for side in [Side::Left, Side::Right] {
            if let Some(n) = net.nodes[i].leaf_set().neighbour(side) {
                let gap = match side {
                    Side::Left => me.wrapping_sub(n.peer.id.as_u128()),
                    Side::Right => n.peer.id.as_u128().wrapping_sub(me),
                };
                for fraction in [3u128, 5, 9] {
                    let key = match side {
                        Side::Left => me.wrapping_sub(gap / fraction),
                        Side::Right => me.wrapping_add(gap / fraction),
                    };
                    keys.push(Key::from_u128(key));
                }
            }
        }
        for &key in &keys {
            assert_eq!(net.oracle_root(key), joiner);
        }
        // From every member of the joiner's leaf set and a few other nodes, at once.
        let mut origins: Vec<usize> = net.nodes[i]
            .leaf_set()
            .iter()
            .map(|s| net.index_of(s.peer.id))
            .collect();
        for _ in 0..5 {
            let other = net.random_live();
            if other != i {
                origins.push(other);
            }
        }
        let start = net.delivered.len();
        let mut sent = 0;
        for &from in &origins {
            for &key in &keys {
                net.route(from, key, b"new root".to_vec());
                sent += 1;
            }
        }
        net.run_for(Duration::from_secs(5));
        let got = &net.delivered[start..];
        assert_eq!(
            got.len(),
            sent,
            "round {round}: every lookup delivered once"
        );
        for d in got {
            assert_eq!(
                net.nodes[d.at].id(),
                joiner,
                "round {round}: key {} delivered at {} instead of the new root {joiner}",
                d.key,
                net.nodes[d.at].id()
            );
        }
    }
}
