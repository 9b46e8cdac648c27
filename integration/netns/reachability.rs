//! On the NAT testbed: public nodes learn they are public, nodes behind either NAT that they
//! are private, and how long each took.

use std::time::{Duration, Instant};

use super::overlay::{Overlay, PORT};
use super::testbed::{Nat, Spec, Testbed};
use crate::netns_or_skip;

#[test]
fn nodes_behind_nat_report_private_and_public_nodes_public() {
    netns_or_skip!("nodes_behind_nat_report_private_and_public_nodes_public");
    let bed = Testbed::new(&Spec {
        public_hosts: 3,
        lans: vec![(Nat::EndpointIndependent, 3), (Nat::Symmetric, 3)],
    })
    .unwrap();
    // Private nodes keep trying to join for a minute, so that one whose join fails is still
    // there to report its reachability.
    let mut overlay = Overlay::start(&bed, Duration::from_secs(60));

    let mut learned = Vec::new();
    for member in &mut overlay.members {
        let line = member.proc.saw_event("reachability", |_| true);
        let expected = if member.private { "private" } else { "public" };
        assert_eq!(
            line["reachability"],
            expected,
            "{}: {line}\n{}",
            member.host.name,
            member.proc.context()
        );
        let learned_ms = line["learned_after_ms"].as_u64().unwrap();
        learned.push((member.host.name.clone(), learned_ms));
        if !member.private {
            // A public node's peers all see it at its own address.
            let status = member.proc.status_until("its observed address", |s| {
                s["observed_addrs"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            });
            assert_eq!(status["reachability"], "public");
            assert_eq!(
                status["observed_addrs"][0],
                member.host.v4(PORT).to_string(),
                "{status}"
            );
        }
    }
    let wall = overlay.members[3..]
        .iter()
        .map(|m| m.started.elapsed())
        .max()
        .unwrap_or_default();
    println!("netns reachability: learned after (ms, from the node's start): {learned:?}");

    // How many private nodes joined by now (the test below asserts that all do).
    let joined = overlay.joined_by(Instant::now() + Duration::from_secs(12).saturating_sub(wall));
    let private_joined: Vec<&String> = joined
        .iter()
        .filter(|name| name.starts_with("lan"))
        .collect();
    println!(
        "netns reachability: private nodes joined: {} of 6 {private_joined:?}",
        private_joined.len()
    );
    for lan in &bed.lans {
        // The routers really translated (the testbed is what it claims to be).
        let mappings = lan.router.conntrack().unwrap();
        assert!(
            mappings.contains(&format!("dst={}", lan.router.public_ipv4)),
            "no mapping to {} in:\n{mappings}",
            lan.router.public_ipv4
        );
    }
}

/// The goal on the testbed: every node joins and 1,000 routes land at their true roots,
/// private roots included: the public nodes are relays, and each private node, finding its
/// own address unroutable, homes on them and is reached through them.
#[test]
fn every_node_joins_and_routes_reach_their_true_roots_across_nat() {
    netns_or_skip!("every_node_joins_and_routes_reach_their_true_roots_across_nat");
    let bed = Testbed::new(&Spec {
        public_hosts: 3,
        lans: vec![(Nat::EndpointIndependent, 3), (Nat::Symmetric, 3)],
    })
    .unwrap();
    let mut overlay = Overlay::start(&bed, Duration::from_secs(30));
    overlay.all_joined_by(Instant::now() + Duration::from_secs(30));
    // At most this long from the first private node's start until every node had joined
    // (the lines are read after the fact, so this bounds the time from above).
    let all_joined = overlay.members[3].started.elapsed();
    // Nine nodes: each leaf set (eight a side) holds every other node once the joins settle.
    let settling = Instant::now();
    overlay.wait_full_leaf_sets();
    println!(
        "netns overlay: all 9 joined within {} ms of the first private node's start",
        all_joined.as_millis()
    );
    println!(
        "netns overlay: leaf sets complete {} ms after the last join",
        settling.elapsed().as_millis()
    );
    let (at_root, wrong, lost) = overlay.route_and_check(1000, 15);
    assert_eq!((at_root, wrong, lost), (1000, 0, 0));
}
