//! The route cache: repeated keys take one hop, stale entries and false answers cost a detour
//! and never a wrong delivery.

use super::*;

/// Routes `key` from `from` and runs the network until it settles; returns the delivery's
/// node and hops.
fn route_once(net: &mut Net, from: usize, key: Key) -> (NodeId, u8) {
    let origin = net.nodes[from].id();
    let id = net.route(from, key, b"cached".to_vec());
    net.run_for(Duration::from_secs(10));
    let got: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .collect();
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    (net.nodes[got[0].at].id(), got[0].hops)
}

/// A node and a key its leaf set does not cover, whose route takes more than one hop.
fn far_key(net: &mut Net) -> (usize, Key) {
    loop {
        let from = net.random_live();
        let key = net.random_key();
        if !net.nodes[from].leaf_set().covers(key)
            && net.nodes[from].next_hop(key).map(|p| p.id) != Some(net.oracle_root(key))
        {
            return (from, key);
        }
    }
}

#[test]
fn a_repeated_key_goes_straight_to_its_root_after_the_first_answer() {
    let mut net = Net::build(Config::default(), 80, 3);
    let (from, key) = far_key(&mut net);
    let root = net.oracle_root(key);
    let (at, hops) = route_once(&mut net, from, key);
    assert_eq!(at, root);
    assert!(hops > 1);
    assert_eq!(net.nodes[from].route_cache_len(), 1);
    let answered = net.events.iter().any(|(i, e, _)| {
        *i == from
            && matches!(e, Event::RouteAnswered { key: k, root: r, .. } if *k == key && *r == root)
    });
    assert!(answered, "the origin timed its route");

    let (at, hops) = route_once(&mut net, from, key);
    assert_eq!((at, hops), (root, 1), "the second route takes one hop");
    assert_eq!(net.nodes[from].stats().route_cache_hits, 1);
    assert_eq!(net.nodes[from].stats().route_cache_stale, 0);
}

/// Links to every peer but one.
#[derive(Debug)]
struct AllBut(NodeId);

impl crate::pastry::LinkView for AllBut {
    fn is_linked(&self, peer: NodeId) -> bool {
        peer != self.0
    }
}

#[test]
fn the_cache_sends_only_to_a_member_this_node_is_linked_to() {
    let mut net = Net::build(Config::default(), 80, 3);
    let (from, key) = far_key(&mut net);
    let root = net.oracle_root(key);
    route_once(&mut net, from, key);
    assert_eq!(net.nodes[from].route_cache_len(), 1);
    net.nodes[from].set_link_view(Box::new(AllBut(root)));

    // A new key in the cached range (next to the first, so with the same root) is not a key
    // used again: it goes through the table, and no link is asked for.
    let near = Key::from_u128(key.as_u128().wrapping_add(1));
    assert_eq!(net.oracle_root(near), root);
    assert_eq!(route_once(&mut net, from, near).0, root);
    let stats = net.nodes[from].stats();
    assert_eq!(
        (
            stats.route_cache_unlinked,
            stats.route_cache_links_requested
        ),
        (1, 0),
        "a new key in a cached range dials nobody"
    );

    let (at, hops) = route_once(&mut net, from, key);
    assert_eq!(at, root, "delivered to the root all the same");
    assert!(
        hops > 1,
        "through the routing table, not straight to the unlinked root"
    );
    let stats = net.nodes[from].stats();
    assert_eq!((stats.route_cache_hits, stats.route_cache_unlinked), (0, 2));
    assert_eq!(
        stats.route_cache_links_requested, 1,
        "the origin asked for a link to the cached root of a key it routed again"
    );

    // Asked once: a key routed again soon does not dial again.
    route_once(&mut net, from, key);
    let stats = net.nodes[from].stats();
    assert_eq!(
        (
            stats.route_cache_unlinked,
            stats.route_cache_links_requested
        ),
        (3, 1)
    );

    // Once the link is up, the key goes straight to its root.
    net.nodes[from].set_link_view(Box::new(AllLinked));
    assert_eq!(route_once(&mut net, from, key), (root, 1));
}

/// Links to every peer (a link view that changes no decision, but lets the node remember the
/// messages it forwards for relayed answers).
#[derive(Debug)]
struct AllLinked;

impl crate::pastry::LinkView for AllLinked {
    fn is_linked(&self, _: NodeId) -> bool {
        true
    }
}

#[test]
fn a_root_without_a_link_to_the_origin_answers_it_back_along_the_route() {
    let mut net = Net::build(Config::default(), 80, 3);
    let (from, key) = far_key(&mut net);
    let (origin, root) = (net.nodes[from].id(), net.oracle_root(key));
    let at = net.index_of(root);
    for (i, node) in net.nodes.iter_mut().enumerate() {
        if i == at {
            node.set_link_view(Box::new(AllBut(origin)));
        } else {
            node.set_link_view(Box::new(AllLinked));
        }
    }

    let (delivered_at, hops) = route_once(&mut net, from, key);
    assert_eq!(delivered_at, root);
    assert!(hops > 1);
    let root_stats = net.nodes[at].stats();
    assert_eq!(root_stats.root_answers_unlinked, 1);
    assert_eq!(
        root_stats.sent_of(MessageKind::RootAnswer).msgs,
        0,
        "no direct answer (it would open a connection)"
    );
    let relays: u64 = net
        .nodes
        .iter()
        .map(|n| n.stats().sent_of(MessageKind::RootAnswerRelay).msgs)
        .sum();
    assert_eq!(
        relays,
        u64::from(hops),
        "one relay per hop, back to the origin"
    );
    assert_eq!(net.nodes[from].stats().root_answers, 1);
    assert_eq!(
        net.nodes[from].route_cache_len(),
        1,
        "the origin learned the root"
    );
    let answered = net.events.iter().any(|(i, e, _)| {
        *i == from
            && matches!(e, Event::RouteAnswered { key: k, root: r, .. } if *k == key && *r == root)
    });
    assert!(answered, "the origin timed its route");

    // The origin holds a link to the root: the repeated key takes one hop.
    assert_eq!(route_once(&mut net, from, key), (root, 1));
}

#[test]
fn a_relayed_answer_from_anyone_but_the_next_hop_or_for_no_forwarded_message_is_ignored() {
    let mut net = Net::build(Config::default(), 80, 7);
    for node in &mut net.nodes {
        node.set_link_view(Box::new(AllLinked));
    }
    let (from, key) = far_key(&mut net);
    let (origin, root) = (net.nodes[from].id(), net.oracle_root(key));
    let root_index = net.index_of(root);
    let first_hop = net.nodes[from].next_hop(key).map(|p| p.id);
    let id = net.route(from, key, b"x".to_vec());
    // Neither the origin, nor the node it sent the message to, nor the root.
    let Some(liar) = (0..net.nodes.len())
        .find(|&i| i != from && i != root_index && Some(net.nodes[i].id()) != first_hop)
    else {
        panic!("no bystander");
    };
    let relay = Message::RootAnswerRelay {
        origin,
        id,
        key,
        root: net.peer(root_index),
        leaf_set: net.nodes[root_index].leaf_set().peers(),
    };
    let (now, liar_peer, root_peer) = (net.now, net.peer(liar), net.peer(root_index));
    // At the origin, from a node it did not send the message to: an honest-looking claim.
    net.nodes[from].handle_message(now, liar_peer, relay.clone());
    // At a node that never forwarded the message: it is not passed on.
    net.nodes[liar].handle_message(now, root_peer, relay);
    net.flush(from);
    net.flush(liar);
    let stats = net.nodes[from].stats();
    assert_eq!(
        (stats.root_answer_relays_rejected, stats.root_answers),
        (1, 0)
    );
    assert_eq!(net.nodes[from].route_cache_len(), 0, "nothing believed");
    let stats = net.nodes[liar].stats();
    assert_eq!(stats.root_answer_relays_rejected, 1);
    assert_eq!(stats.sent_of(MessageKind::RootAnswerRelay).msgs, 0);

    // The root's own answer (it holds a link to the origin) is still taken.
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.nodes[from].stats().root_answers, 1);
    assert_eq!(net.nodes[from].route_cache_len(), 1);
}

#[test]
fn with_the_cache_off_roots_do_not_answer_and_routes_are_unchanged() {
    let config = Config {
        route_cache_size: 0,
        ..Config::default()
    };
    let mut net = Net::build(config, 60, 4);
    let (from, key) = far_key(&mut net);
    route_once(&mut net, from, key);
    route_once(&mut net, from, key);
    let answers: u64 = net
        .nodes
        .iter()
        .map(|n| n.stats().sent_of(MessageKind::RootAnswer).msgs)
        .sum();
    assert_eq!(answers, 0);
    assert_eq!(net.nodes[from].stats().route_cache_hits, 0);
}

#[test]
fn a_false_claim_costs_a_detour_and_never_a_wrong_delivery() {
    let mut net = Net::build(Config::default(), 60, 5);
    let (from, key) = far_key(&mut net);
    let root = net.oracle_root(key);
    // A live node that is not the root answers first, claiming a leaf set of made-up ids all
    // farther from the key than itself (it leaves the true root out).
    let liar = (0..net.nodes.len())
        .filter(|&i| i != from && net.nodes[i].id() != root)
        .min_by_key(|&i| key.to_node_id().ring_distance(net.nodes[i].id()))
        .expect("a node other than the root");
    let gap = key.to_node_id().ring_distance(net.nodes[liar].id()).max(1);
    let made_up: Vec<PeerInfo> = (1..=8u128)
        .flat_map(|i| {
            let k = key.as_u128();
            [k.wrapping_add(gap * (i + 1)), k.wrapping_sub(gap * (i + 1))]
        })
        .map(peer)
        .collect();
    let origin = net.nodes[from].id();
    let id = net.route(from, key, b"first".to_vec());
    let (now, liar_peer) = (net.now, net.peer(liar));
    net.nodes[from].handle_message(
        now,
        liar_peer,
        Message::RootAnswer {
            id,
            key,
            leaf_set: made_up,
        },
    );
    net.flush(from);
    net.run_for(Duration::from_secs(10));
    assert_eq!(
        net.nodes[from].stats().root_answers,
        1,
        "the lie was believed"
    );
    assert_eq!(
        net.nodes[from].stats().root_answers_rejected,
        1,
        "the true answer came late"
    );
    let first: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.origin == origin && d.id == id)
        .collect();
    assert_eq!(first.len(), 1);
    assert_eq!(net.nodes[first[0].at].id(), root);

    // The cache now sends the key to the liar, which routes it on to the true root.
    let (at, hops) = route_once(&mut net, from, key);
    assert_eq!(at, root, "misdelivered");
    assert_eq!(hops, 2, "one hop of detour");
    assert_eq!(net.nodes[from].stats().route_cache_stale, 1);
}

#[test]
fn answers_for_no_message_of_ours_or_with_a_closer_member_are_ignored() {
    let mut net = Net::build(Config::default(), 60, 6);
    let (from, key) = far_key(&mut net);
    let root = net.oracle_root(key);
    let root_index = net.index_of(root);
    let not_root = (0..net.nodes.len())
        .find(|&i| i != from && i != root_index)
        .expect("another node");
    // Unsolicited: nothing was routed.
    let honest_leaf_set = net.nodes[root_index].leaf_set().peers();
    let (now, root_peer) = (net.now, net.peer(root_index));
    net.nodes[from].handle_message(
        now,
        root_peer,
        Message::RootAnswer {
            id: 77,
            key,
            leaf_set: honest_leaf_set,
        },
    );
    // A real leaf set that holds a node closer to the key than its sender.
    let id = net.route(from, key, b"x".to_vec());
    let claim = net.nodes[not_root].leaf_set().peers();
    let mut with_root = claim.clone();
    if !with_root.iter().any(|p| p.id == root) {
        with_root.pop();
        with_root.push(net.peer(root_index));
    }
    let (now, not_root_peer) = (net.now, net.peer(not_root));
    net.nodes[from].handle_message(
        now,
        not_root_peer,
        Message::RootAnswer {
            id,
            key,
            leaf_set: with_root,
        },
    );
    net.flush(from);
    let stats = net.nodes[from].stats();
    assert_eq!(stats.root_answers_rejected, 2);
    assert_eq!(stats.root_answers, 0);
    assert_eq!(net.nodes[from].route_cache_len(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Warm caches, then change who the roots are (silent failures and joins of nodes whose
    /// ids are the cached keys): every lookup is still delivered once, at the oracle's root.
    /// Without neighbour hints: at these sizes they send nearly every first route straight to
    /// its root, whose answer then caches nothing, and the cache would go untested.
    #[test]
    fn cached_routes_never_misdeliver(n in 30usize..70, seed in any::<u64>()) {
        let config = Config { neighbour_hints: false, ..Config::default() };
        let mut net = Net::build(config, n, seed);
        let newcomers: Vec<usize> = (0..3).map(|_| net.add(None)).collect();
        let mut keys: Vec<Key> = newcomers.iter().map(|&i| net.nodes[i].id().to_key()).collect();
        for _ in 0..5 {
            keys.push(net.random_key());
        }
        let origins: Vec<usize> = (0..8).map(|_| net.random_live()).collect();
        let mut sent = Vec::new();
        let route_all = |net: &mut Net, sent: &mut Vec<(NodeId, u64, Key)>| {
            for &from in &origins {
                if !net.alive[from] {
                    continue;
                }
                for &key in &keys {
                    let id = net.route(from, key, b"p".to_vec());
                    sent.push((net.nodes[from].id(), id, key));
                }
            }
            net.run_for(Duration::from_secs(30));
        };
        route_all(&mut net, &mut sent);
        for &i in &newcomers {
            net.join(i);
        }
        for _ in 0..2 {
            let victim = net.random_live();
            if !origins.contains(&victim) {
                net.kill(victim);
            }
        }
        net.run_for(Duration::from_secs(60));
        let check_from = sent.len();
        route_all(&mut net, &mut sent);
        route_all(&mut net, &mut sent);
        let hits: u64 = origins.iter().map(|&i| net.nodes[i].stats().route_cache_hits).sum();
        prop_assert!(hits > 0, "the cache was never used");
        for &(origin, id, key) in &sent[check_from..] {
            let got: Vec<_> = net.delivered.iter().filter(|d| d.origin == origin && d.id == id).collect();
            prop_assert_eq!(got.len(), 1, "lookup for {} delivered {} times", key, got.len());
            prop_assert_eq!(net.nodes[got[0].at].id(), net.oracle_root(key), "lookup for {} misdelivered", key);
        }
    }
}
