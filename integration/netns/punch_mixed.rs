//! A mixed overlay on the NAT testbed: 4 public nodes, 4 behind endpoint-independent NATs and
//! 4 behind symmetric NATs (one node per NAT). Routes land at their true roots whatever the
//! path of each link, and the links that can be direct are.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::punch::{link_to, overlay, testbed};
use super::testbed::{Nat, Spec};
use crate::netns_or_skip;

/// What kind of host a member is on, by its index (public first, then the LANs in order).
fn class(index: usize) -> &'static str {
    match index {
        0..=3 => "public",
        4..=7 => "EI",
        _ => "sym",
    }
}

/// `(class pair, path)` of every linked pair, read from the lower index's status (or the other
/// end's, if only it holds the link).
fn pair_paths(statuses: &[Value], ids: &[wendy::id::NodeId]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            let link = link_to(&statuses[i], ids[j]).or_else(|| link_to(&statuses[j], ids[i]));
            if let Some(link) = link {
                let path = link["path"].as_str().unwrap_or("?").to_owned();
                out.push((format!("{}-{}", class(i), class(j)), path));
            }
        }
    }
    out
}

#[test]
fn a_mixed_overlay_routes_to_true_roots_and_goes_direct_where_it_can() {
    netns_or_skip!("a_mixed_overlay_routes_to_true_roots_and_goes_direct_where_it_can");
    let mut lans = vec![(Nat::EndpointIndependent, 1); 4];
    lans.extend([(Nat::Symmetric, 1); 4]);
    let bed = testbed(&Spec {
        public_hosts: 4,
        lans,
    });
    let mut overlay = overlay(&bed);
    let settling = Instant::now();
    overlay.wait_full_leaf_sets();
    let settled = settling.elapsed();
    let (at_root, wrong, lost) = overlay.route_and_check(1000, 18);
    let ids: Vec<_> = overlay.members.iter().map(|m| m.id).collect();
    // Every EI-EI link direct, or 15 s (punches start within 250 ms of a link's sight and
    // retry with back-off).
    let until = Instant::now() + Duration::from_secs(15);
    let pairs = loop {
        let statuses: Vec<Value> = overlay
            .members
            .iter_mut()
            .map(|m| m.proc.status())
            .collect();
        let pairs = pair_paths(&statuses, &ids);
        let ei_relayed = pairs
            .iter()
            .any(|(class, path)| class == "EI-EI" && path != "direct");
        if !ei_relayed || Instant::now() >= until {
            break pairs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut by_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (class, path) in &pairs {
        let entry = by_class.entry(class.as_str()).or_default();
        entry.1 += 1;
        if path == "direct" {
            entry.0 += 1;
        }
    }
    let direct = pairs.iter().filter(|(_, path)| path == "direct").count();
    println!(
        "netns punch mixed (4 public, 4 EI, 4 symmetric): leaf sets full {} ms after the joins; \
         routes {at_root} at the root, {wrong} elsewhere, {lost} lost of 1000; {direct} of {} \
         linked pairs direct ({:.0}%); by class (direct, linked): {by_class:?}",
        settled.as_millis(),
        pairs.len(),
        100.0 * direct as f64 / pairs.len().max(1) as f64
    );
    assert_eq!((at_root, wrong, lost), (1000, 0, 0));
    let (ei_direct, ei_linked) = by_class.get("EI-EI").copied().unwrap_or_default();
    assert_eq!(ei_direct, ei_linked, "EI-EI links left on the relay");
    for class in ["public-public", "public-EI", "public-sym"] {
        let (direct, linked) = by_class.get(class).copied().unwrap_or_default();
        assert_eq!(direct, linked, "{class} links on a relay");
    }
}
