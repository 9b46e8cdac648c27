//! Neighbour hints: a sparse row's entry's neighbours send a first route straight to the key's
//! root, and a stale hint costs a detour, never a wrong delivery.

use super::*;

/// Of `samples` random (origin, key) pairs, those where the routing table alone would not reach
/// the root in one hop (the key outside the origin's leaf set, its entry not the root), and how
/// many of them the origin sends straight to the root.
fn far_keys_routed_straight(net: &mut Net, samples: usize) -> (usize, usize) {
    let (mut far, mut straight) = (0, 0);
    for _ in 0..samples {
        let from = net.random_live();
        let key = net.random_key();
        let node = &net.nodes[from];
        let row = node.id().shared_prefix_len(key);
        if node.leaf_set().covers(key) || row >= crate::id::DIGITS {
            continue;
        }
        let Some(entry) = node.routing_table().get(row, usize::from(key.digit(row))) else {
            continue;
        };
        let root = net.oracle_root(key);
        if entry.peer.id == root {
            continue;
        }
        far += 1;
        if node.next_hop(key).map(|p| p.id) == Some(root) {
            straight += 1;
        }
    }
    (far, straight)
}

#[test]
fn hints_send_first_routes_straight_to_the_root() {
    // Route cache off: only the hints can skip hops here.
    let config = Config {
        route_cache_size: 0,
        ..Config::default()
    };
    let mut net = Net::build(config, 300, 7);
    net.run_for(Duration::from_secs(30));
    let learned: u64 = (0..net.nodes.len())
        .map(|i| net.nodes[i].stats().hints_learned)
        .sum();
    assert!(learned > 0, "no hint was learned");
    let (far, straight) = far_keys_routed_straight(&mut net, 400);
    assert!(far > 50, "too few far keys: {far}");
    assert!(
        straight * 2 > far,
        "only {straight} of {far} far keys went straight to their root"
    );
}

#[test]
fn hints_cover_slots_wider_than_one_leaf_set_and_name_later_joiners() {
    // 400 nodes: row 0's slots hold about 25 nodes each, more than the 17 an entry's leaf set
    // names, so only the extensions towards the slot's ends cover the rest; and the overlay
    // grew after most hints were learned, so only the settling round names the nodes that
    // joined since.
    let config = Config {
        route_cache_size: 0,
        ..Config::default()
    };
    let mut net = Net::build(config, 400, 3);
    net.run_for(Duration::from_secs(120));
    let (far, straight) = far_keys_routed_straight(&mut net, 600);
    assert!(far > 200, "too few far keys: {far}");
    assert!(
        straight * 10 >= far * 9,
        "only {straight} of {far} far keys went straight to their root"
    );
}

/// Links to every peer but the listed ones.
#[derive(Debug)]
struct AllBut(Vec<NodeId>);

impl crate::pastry::LinkView for AllBut {
    fn is_linked(&self, peer: NodeId) -> bool {
        !self.0.contains(&peer)
    }
}

#[test]
fn a_hinted_root_without_a_link_waits_until_its_entry_has_none_either() {
    let config = Config {
        route_cache_size: 0,
        ..Config::default()
    };
    let mut net = Net::build(config, 300, 7);
    net.run_for(Duration::from_secs(30));
    let mut checked = 0;
    for _ in 0..2000 {
        let from = net.random_live();
        let key = net.random_key();
        let root = net.oracle_root(key);
        let node = &net.nodes[from];
        let row = node.id().shared_prefix_len(key);
        if node.leaf_set().covers(key) || row >= crate::id::DIGITS {
            continue;
        }
        let Some(entry) = node.routing_table().get(row, usize::from(key.digit(row))) else {
            continue;
        };
        let entry = entry.peer.id;
        if entry == root || node.next_hop(key).map(|p| p.id) != Some(root) {
            continue;
        }
        // Hinted straight to the root; without a link to it, the message takes the entry's.
        net.nodes[from].set_link_view(Box::new(AllBut(vec![root])));
        assert_eq!(net.nodes[from].next_hop(key).map(|p| p.id), Some(entry));
        // Neither linked: the root it is (one handshake either way, and one hop fewer).
        net.nodes[from].set_link_view(Box::new(AllBut(vec![root, entry])));
        assert_eq!(net.nodes[from].next_hop(key).map(|p| p.id), Some(root));
        checked += 1;
        if checked == 20 {
            break;
        }
    }
    assert!(
        checked >= 5,
        "too few keys routed straight to a hinted root: {checked}"
    );
}

#[test]
fn a_hinted_root_reported_unreachable_is_no_longer_chosen() {
    // A layer above (topics' direct sends) finds a key's root unreachable, where this node
    // knows the root only from an entry's hint: nothing probes it, and until the hint was
    // refreshed every `next_hop` chose it again.
    let config = Config {
        route_cache_size: 0,
        ..Config::default()
    };
    let mut net = Net::build(config, 300, 7);
    net.run_for(Duration::from_secs(30));
    let mut checked = 0;
    for _ in 0..2000 {
        let from = net.random_live();
        let key = net.random_key();
        let root = net.oracle_root(key);
        let node = &net.nodes[from];
        let known = node.leaf_set().contains(root)
            || node.routing_table().find(root).is_some()
            || root == node.id();
        if known || node.next_hop(key).map(|p| p.id) != Some(root) {
            continue;
        }
        let now = net.now;
        net.nodes[from].handle_link_down(now, root);
        assert_ne!(
            net.nodes[from].next_hop(key).map(|p| p.id),
            Some(root),
            "the next hop is still the root reported unreachable"
        );
        checked += 1;
        if checked == 20 {
            break;
        }
    }
    assert!(
        checked >= 5,
        "too few keys routed straight to a hinted root: {checked}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Learn hints, then change who the roots are (joins of nodes whose ids are the keys, and
    /// silent failures) so that hints are stale: every lookup is still delivered once, at the
    /// oracle's root.
    #[test]
    fn hinted_routes_never_misdeliver(n in 40usize..90, seed in any::<u64>()) {
        let config = Config { route_cache_size: 0, ..Config::default() };
        let mut net = Net::build(config, n, seed);
        net.run_for(Duration::from_secs(30));
        let newcomers: Vec<usize> = (0..4).map(|_| net.add(None)).collect();
        let mut keys: Vec<Key> = newcomers.iter().map(|&i| net.nodes[i].id().to_key()).collect();
        for _ in 0..6 {
            keys.push(net.random_key());
        }
        for &i in &newcomers {
            net.join(i);
        }
        let origins: Vec<usize> = (0..8).map(|_| net.random_live()).collect();
        for _ in 0..3 {
            let victim = net.random_live();
            if !origins.contains(&victim) && !newcomers.contains(&victim) {
                net.kill(victim);
            }
        }
        net.run_for(Duration::from_secs(60));
        let learned: u64 = (0..net.nodes.len()).map(|i| net.nodes[i].stats().hints_learned).sum();
        prop_assert!(learned > 0, "no hint was learned");
        let mut sent = Vec::new();
        for &from in &origins {
            if !net.alive[from] {
                continue;
            }
            for &key in &keys {
                let id = net.route(from, key, b"h".to_vec());
                sent.push((net.nodes[from].id(), id, key));
            }
        }
        net.run_for(Duration::from_secs(30));
        for &(origin, id, key) in &sent {
            let got: Vec<_> = net.delivered.iter().filter(|d| d.origin == origin && d.id == id).collect();
            prop_assert_eq!(got.len(), 1, "lookup for {} delivered {} times", key, got.len());
            prop_assert_eq!(net.nodes[got[0].at].id(), net.oracle_root(key), "lookup for {} misdelivered", key);
        }
    }
}

/// Hint probes in the 60 s after `kills` silent failures in a 300-node overlay, less those of
/// the same 60 s without them.
fn hint_probes_caused_by_failures(kills: usize) -> i64 {
    let probes = |net: &Net| -> i64 {
        (0..net.nodes.len())
            .filter(|&i| net.alive[i])
            .map(|i| net.nodes[i].stats().hint_probes as i64)
            .sum()
    };
    let mut counts = Vec::new();
    for kill in [0, kills] {
        let mut net = Net::build(Config::default(), 300, 11);
        net.run_for(Duration::from_secs(30));
        let killed: Vec<usize> = (0..kill).map(|k| 10 + 7 * k).collect();
        let before: i64 = probes(&net)
            - killed
                .iter()
                .map(|&i| net.nodes[i].stats().hint_probes as i64)
                .sum::<i64>();
        for &i in &killed {
            net.kill(i);
        }
        net.run_for(Duration::from_secs(60));
        counts.push(probes(&net) - before);
    }
    counts[1] - counts[0]
}

#[test]
fn failures_cost_few_hint_probes() {
    // A failure changes about 16 leaf sets and a few dozen routing tables: the entries that
    // replace the dead one are asked for hints, and no entry is asked again because a leaf set
    // changed (one whose reply gave no hint waits for the next maintenance round).
    let kills = 15;
    let extra = hint_probes_caused_by_failures(kills);
    println!("hint probes caused by {kills} failures: {extra}");
    // Asking again on every leaf-set change would cost 36 here.
    assert!(
        extra <= kills as i64,
        "{extra} hint probes for {kills} failures"
    );
}
