//! Hole punching on the NAT testbed: private nodes behind endpoint-independent NATs end up
//! with direct paths, a symmetric NAT keeps its links on the relay, a cut direct path falls
//! back to the relay and returns, and a NAT that forgets its mappings loses no node.
//!
//! Every router here also runs the input firewall a home router has (unsolicited packets
//! addressed to the router itself are dropped before conntrack confirms them; see
//! `docs/hole-punching.md` for why a bare `masquerade` router defeats simultaneous sends).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use wendy::id::NodeId;

use super::overlay::{Member, Overlay};
use super::testbed::{Host, Nat, Router, Spec, Testbed};
use crate::netns_or_skip;

/// Drops packets addressed to the router itself unless they belong to a flow it knows, as a
/// home router's firewall does.
pub(super) fn home_firewall(router: &Router) {
    let rules = "table inet wendy_home {\n\
                   chain input { type filter hook input priority filter; policy drop;\n\
                     ct state established,related accept\n\
                     iifname { \"lo\", \"br0\" } accept\n\
                   }\n\
                 }\n";
    router
        .nft(rules)
        .unwrap_or_else(|e| panic!("nft refused the firewall: {e}"));
}

pub(super) fn testbed(spec: &Spec) -> Testbed {
    let bed = Testbed::new(spec).unwrap();
    for lan in &bed.lans {
        home_firewall(&lan.router);
    }
    bed
}

/// Starts the overlay and waits for every node's join.
pub(super) fn overlay(bed: &Testbed) -> Overlay {
    overlay_with(bed, |_| Vec::new())
}

/// [`overlay`], with `extra(host)` added to the arguments of the node on `host`.
pub(super) fn overlay_with(bed: &Testbed, extra: impl Fn(&Host) -> Vec<String>) -> Overlay {
    let mut overlay = Overlay::start_with(bed, Duration::from_secs(30), extra);
    overlay.all_joined_by(Instant::now() + Duration::from_secs(30));
    overlay
}

/// The connection to `peer` in a status, if any.
pub(super) fn link_to(status: &Value, peer: NodeId) -> Option<&Value> {
    status["connections"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == peer.to_string())
}

pub(super) fn is_direct(status: &Value, peer: NodeId) -> bool {
    link_to(status, peer).is_some_and(|c| c["path"] == "direct")
}

/// Polls `member`'s status until `pred` holds or `within` passes; the last status and whether
/// it held.
pub(super) fn status_within(
    member: &mut Member,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (Value, bool) {
    let until = Instant::now() + within;
    loop {
        let status = member.proc.status();
        if pred(&status) {
            return (status, true);
        }
        if Instant::now() >= until {
            return (status, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages from `sender` that `receiver` printed as `direct` events with `prefix`.
pub(super) fn received(receiver: &mut Member, prefix: &str, until: Instant) -> HashSet<String> {
    receiver.proc.gather(until);
    receiver
        .proc
        .seen
        .iter()
        .filter(|v| v["event"] == "direct")
        .filter_map(|v| v["payload"].as_str())
        .filter(|p| p.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

pub(super) fn median(values: &mut [u64]) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

pub(super) fn left_events(member: &Member) -> Vec<String> {
    member
        .proc
        .seen
        .iter()
        .filter(|v| v["event"] == "node_left")
        .map(Value::to_string)
        .collect()
}

#[test]
fn nodes_behind_two_endpoint_independent_nats_go_direct() {
    netns_or_skip!("nodes_behind_two_endpoint_independent_nats_go_direct");
    // 5 x 8 private nodes: 40 cross pairs, each its own punch.
    let bed = testbed(&Spec {
        public_hosts: 2,
        lans: vec![(Nat::EndpointIndependent, 5), (Nat::EndpointIndependent, 8)],
    });
    let mut overlay = overlay(&bed);
    let lan0: Vec<usize> = (2..7).collect();
    let lan1: Vec<usize> = (7..15).collect();
    let lan1_ids: Vec<NodeId> = lan1.iter().map(|&i| overlay.members[i].id).collect();
    // First contact for every pair (most are linked already through the leaf sets).
    for &a in &lan0 {
        for id in &lan1_ids {
            overlay.members[a].proc.command(&format!("send {id} hello"));
        }
    }
    let mut direct_pairs = 0;
    let mut times = Vec::new();
    let mut attempts = 0;
    for &a in &lan0 {
        let member = &mut overlay.members[a];
        let (status, _) = status_within(member, Duration::from_secs(15), |s| {
            lan1_ids.iter().all(|id| is_direct(s, *id))
        });
        direct_pairs += lan1_ids
            .iter()
            .filter(|id| is_direct(&status, **id))
            .count();
        attempts += status["punch"]["attempts"].as_u64().unwrap_or(0);
        times.extend(
            status["punch"]["recent_times_to_direct_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64),
        );
    }
    let slowest = times.iter().max().copied();
    let within_2s = times.iter().filter(|t| **t <= 2000).count();
    println!(
        "netns punch EI-EI: {direct_pairs} of 40 pairs direct; times to direct (ms, from the \
         relayed link's first sight, at the LAN-0 end): median {:?}, max {slowest:?}, {within_2s} \
         of {} within 2 s; {attempts} attempts at the LAN-0 ends (same-LAN pairs included)",
        median(&mut times),
        times.len()
    );
    assert!(
        direct_pairs >= 38,
        "only {direct_pairs} of 40 pairs went direct"
    );
    // Data still flows on the direct paths.
    let b = lan1[0];
    let b_id = overlay.members[b].id;
    overlay.members[lan0[0]]
        .proc
        .command(&format!("send {b_id} after-punch"));
    let got = received(
        &mut overlay.members[b],
        "after-punch",
        Instant::now() + Duration::from_secs(5),
    );
    assert_eq!(got.len(), 1, "{}", overlay.members[b].proc.context());
}

#[test]
fn a_private_node_and_a_public_node_end_up_direct() {
    netns_or_skip!("a_private_node_and_a_public_node_end_up_direct");
    let bed = testbed(&Spec {
        public_hosts: 3,
        lans: vec![(Nat::EndpointIndependent, 1)],
    });
    let mut overlay = overlay(&bed);
    let (public, private) = (2, 3);
    let private_id = overlay.members[private].id;
    let public_id = overlay.members[public].id;
    // The public node reaches the private one first (through a relay).
    overlay.members[public]
        .proc
        .command(&format!("send {private_id} hi"));
    let started = Instant::now();
    let (status, direct) =
        status_within(&mut overlay.members[public], Duration::from_secs(10), |s| {
            link_to(s, private_id).is_some_and(|c| {
                c["path"] == "direct" && !c["addr"].as_str().unwrap_or("").starts_with("24")
            })
        });
    println!(
        "netns punch public-A: direct after {} ms (status polled every 100 ms)",
        started.elapsed().as_millis()
    );
    assert!(direct, "public-private link not direct: {status}");
    let (status, direct) =
        status_within(&mut overlay.members[private], Duration::from_secs(5), |s| {
            is_direct(s, public_id)
        });
    assert!(direct, "private-public link not direct: {status}");
}

#[test]
fn links_across_a_symmetric_nat_all_connect_through_the_relay() {
    netns_or_skip!("links_across_a_symmetric_nat_all_connect_through_the_relay");
    let bed = testbed(&Spec {
        public_hosts: 2,
        lans: vec![(Nat::EndpointIndependent, 2), (Nat::Symmetric, 2)],
    });
    let mut overlay = overlay(&bed);
    // Six nodes: wait until each leaf set holds every other node, so that each send names a
    // node its sender already knows.
    overlay.wait_full_leaf_sets();
    // A-C pairs (2 x 2) and the C-C pair.
    let pairs = [(2, 4), (2, 5), (3, 4), (3, 5), (4, 5)];
    for (n, &(from, to)) in pairs.iter().enumerate() {
        let to_id = overlay.members[to].id;
        overlay.members[from]
            .proc
            .command(&format!("send {to_id} sym-{n}"));
    }
    let until = Instant::now() + Duration::from_secs(10);
    let mut delivered = 0;
    let mut missing = Vec::new();
    for (n, &(from, to)) in pairs.iter().enumerate() {
        if received(&mut overlay.members[to], &format!("sym-{n}"), until).len() == 1 {
            delivered += 1;
        } else {
            let errors: Vec<String> = overlay.members[from]
                .proc
                .seen
                .iter()
                .filter(|v| v["event"] == "error")
                .map(Value::to_string)
                .collect();
            let to_id = overlay.members[to].id;
            let status = overlay.members[from].proc.status();
            let link = link_to(&status, to_id).map(ToString::to_string);
            let sent: Vec<String> = overlay.members[from]
                .proc
                .seen
                .iter()
                .filter(|v| v["payload"].as_str().is_some_and(|p| p.starts_with("sym-")))
                .map(Value::to_string)
                .collect();
            missing.push(format!(
                "sym-{n} {from}->{to}: sender's errors {errors:?}, link {link:?}, punch {}, seen {sent:?}",
                status["punch"]
            ));
        }
    }
    // Let punching run its first attempts, then read the paths.
    std::thread::sleep(Duration::from_secs(5));
    let mut direct = 0;
    for &(from, to) in &pairs {
        let to_id = overlay.members[to].id;
        let status = overlay.members[from].proc.status();
        if is_direct(&status, to_id) {
            direct += 1;
        }
        assert!(link_to(&status, to_id).is_some(), "no link: {status}");
    }
    println!(
        "netns punch symmetric: {delivered} of {} messages delivered; {direct} of {} links direct",
        pairs.len(),
        pairs.len()
    );
    assert_eq!(delivered, pairs.len(), "{missing:#?}");
}

/// Two private nodes (one per endpoint-independent LAN), direct to each other.
pub(super) fn direct_pair() -> (Testbed, Overlay, usize, usize) {
    let bed = testbed(&Spec {
        public_hosts: 2,
        lans: vec![(Nat::EndpointIndependent, 1), (Nat::EndpointIndependent, 1)],
    });
    let mut overlay = overlay(&bed);
    let (a, b) = (2, 3);
    let b_id = overlay.members[b].id;
    overlay.members[a]
        .proc
        .command(&format!("send {b_id} first"));
    let (status, direct) = status_within(&mut overlay.members[a], Duration::from_secs(10), |s| {
        is_direct(s, b_id)
    });
    assert!(direct, "A-B never went direct: {status}");
    (bed, overlay, a, b)
}

/// Sends `count` messages from `a` to `b`, one every `gap`, calling `during(i)` before each.
pub(super) fn stream(
    overlay: &mut Overlay,
    a: usize,
    b: usize,
    prefix: &str,
    count: usize,
    gap: Duration,
) {
    let b_id = overlay.members[b].id;
    for i in 0..count {
        overlay.members[a]
            .proc
            .command(&format!("send {b_id} {prefix}-{i}"));
        std::thread::sleep(gap);
    }
}

#[test]
fn a_cut_direct_path_falls_back_to_the_relay_and_returns() {
    netns_or_skip!("a_cut_direct_path_falls_back_to_the_relay_and_returns");
    let (bed, mut overlay, a, b) = direct_pair();
    let b_id = overlay.members[b].id;
    let router_b = bed.lans[1].router.public_ipv4;
    let router_a = &bed.lans[0].router;
    // Cut A's router off B's (the relays stay reachable).
    router_a.drop(&format!("ip daddr {router_b}")).unwrap();
    router_a.drop(&format!("ip saddr {router_b}")).unwrap();
    let cut = Instant::now();
    stream(&mut overlay, a, b, "cut", 60, Duration::from_millis(50));
    let (status, relayed) = status_within(&mut overlay.members[a], Duration::from_secs(10), |s| {
        link_to(s, b_id).is_some_and(|c| c["path"] == "relay")
    });
    assert!(relayed, "A never fell back to the relay: {status}");
    let fell_back = cut.elapsed();
    router_a.clear_drops().unwrap();
    let lifted = Instant::now();
    let (status, direct) = status_within(&mut overlay.members[a], Duration::from_secs(20), |s| {
        is_direct(s, b_id)
    });
    let back = lifted.elapsed();
    let got = received(
        &mut overlay.members[b],
        "cut-",
        Instant::now() + Duration::from_secs(5),
    );
    println!(
        "netns punch cut: relay path in use {} ms after the drop rule (status polled; 60 \
         messages sent over 3 s meanwhile), direct again {} ms after the rule was lifted; \
         {} of 60 messages delivered; fallbacks counted at A: {}",
        fell_back.as_millis(),
        back.as_millis(),
        got.len(),
        status["punch"]["fallbacks"]
    );
    assert_eq!(got.len(), 60, "lost messages during the cut");
    assert!(direct, "A-B never returned to direct: {status}");
    for member in [a, b] {
        let left = left_events(&overlay.members[member]);
        assert!(left.is_empty(), "node_left during the cut: {left:?}");
    }
}

#[test]
fn a_nat_that_forgets_its_mappings_loses_no_node() {
    netns_or_skip!("a_nat_that_forgets_its_mappings_loses_no_node");
    let (bed, mut overlay, a, b) = direct_pair();
    let b_id = overlay.members[b].id;
    stream(&mut overlay, a, b, "pre", 20, Duration::from_millis(50));
    bed.lans[0].router.flush_conntrack().unwrap();
    let flushed = Instant::now();
    stream(&mut overlay, a, b, "post", 100, Duration::from_millis(50));
    let (status, direct) = status_within(&mut overlay.members[a], Duration::from_secs(20), |s| {
        is_direct(s, b_id)
    });
    let got = received(
        &mut overlay.members[b],
        "p",
        Instant::now() + Duration::from_secs(5),
    );
    println!(
        "netns punch rebinding: A's router conntrack flushed during traffic; {} of 120 \
         messages delivered; direct again {} ms after the flush ({direct}); fallbacks at A: {}",
        got.len(),
        flushed.elapsed().as_millis(),
        status["punch"]["fallbacks"]
    );
    assert_eq!(got.len(), 120, "lost messages across the flush");
    for member in &overlay.members {
        let left = left_events(member);
        assert!(left.is_empty(), "{}: node_left: {left:?}", member.host.name);
    }
    assert!(direct, "A-B never went direct again: {status}");
}
