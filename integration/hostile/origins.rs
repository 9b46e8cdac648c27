//! Origins of routed messages: a message claiming another node's origin is never delivered as
//! from it, and cannot fill the duplicate filter with that node's message ids; a message
//! dropped at its hop limit is reported (`route_failed`) only by its origin.

use std::time::{Duration, Instant};

use super::{assert_within_bounds, runtime, sharing};
use crate::common::hostile::{join_all, route_message, send_pastry, Attacker, ProcCluster};

const REAL: u64 = 100;
/// Forged messages sent straight to the destination (one per id the real origin uses next),
/// and through another member.
const FORGED_DIRECT: u64 = REAL;
const FORGED_RELAYED: u64 = 5;

#[test]
fn a_forged_origin_is_never_delivered_and_does_not_poison_the_duplicate_filter() {
    let _serial = sharing();
    let rt = runtime();
    let mut cluster = ProcCluster::start(3);
    let (relay, dest, origin) = (0, 1, 2);
    let dest_key = cluster.members[dest].key();
    let origin_peer = cluster.members[origin].peer();
    let origin_hex = origin_peer.id.to_string();

    // One real message shows the ids the origin uses.
    let first = cluster.members[origin].route(dest_key, "first real");
    assert!(cluster.members[dest]
        .proc
        .wait_for(Instant::now() + Duration::from_secs(10), |v| {
            v["event"] == "deliver" && v["payload"] == "first real"
        }));

    // Forged (origin, id) pairs for the ids that follow, to the destination and through the
    // relay.
    let attacker = rt.block_on(async { Attacker::new() });
    let attacker_hex = attacker.id().to_string();
    let links = rt.block_on(async {
        let to_dest = attacker.connect(&cluster.members[dest]).await;
        let to_relay = attacker.connect(&cluster.members[relay]).await;
        let forged = (1..=FORGED_DIRECT + FORGED_RELAYED).map(|n| {
            let link = if n <= FORGED_DIRECT {
                to_dest.clone()
            } else {
                to_relay.clone()
            };
            let id = first.wrapping_add(n);
            let msg = route_message(
                &attacker.identity,
                origin_peer,
                id,
                dest_key,
                0,
                &format!("forged {n}"),
            );
            async move { send_pastry(&link, msg).await }
        });
        join_all(forged).await;
        (to_dest, to_relay)
    });

    // The real origin's next messages.
    let real: Vec<String> = (0..REAL).map(|n| format!("real {n}")).collect();
    for text in &real {
        cluster.members[origin].route(dest_key, text);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let arrived = real
        .iter()
        .filter(|text| {
            cluster.members[dest].proc.wait_for(deadline, |v| {
                v["event"] == "deliver" && v["payload"] == **text && v["from"] == origin_hex
            })
        })
        .count();
    cluster.gather_until(Instant::now() + Duration::from_secs(1));

    let forged_delivered: Vec<(&str, String)> = cluster
        .events("deliver")
        .into_iter()
        .filter(|(_, v)| {
            v["payload"]
                .as_str()
                .is_some_and(|p| p.starts_with("forged"))
        })
        .map(|(name, v)| (name, v["from"].as_str().unwrap_or("").to_owned()))
        .collect();
    let as_from_origin = forged_delivered
        .iter()
        .filter(|(_, from)| *from == origin_hex)
        .count();
    let errors_naming_attacker = cluster
        .events("error")
        .into_iter()
        .filter(|(_, v)| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains(&attacker_hex))
        })
        .count();
    println!(
        "hostile forged_origin: forged={} forged_delivered={} as_from_origin={as_from_origin} \
         errors_naming_attacker={errors_naming_attacker} real={REAL} real_delivered={arrived}",
        FORGED_DIRECT + FORGED_RELAYED,
        forged_delivered.len(),
    );
    let mut broken = Vec::new();
    if !forged_delivered.is_empty() {
        broken.push(format!(
            "{} forged messages delivered ({as_from_origin} as from the claimed origin)",
            forged_delivered.len()
        ));
    }
    if arrived as u64 != REAL {
        broken.push(format!(
            "{arrived} of the origin's next {REAL} messages delivered"
        ));
    }
    if errors_naming_attacker == 0 {
        broken.push("no error event names the peer that sent the forgeries".to_owned());
    }
    drop(links);
    assert_within_bounds("forged origin", &broken);
}

#[test]
fn a_route_dropped_at_its_hop_limit_is_reported_only_by_its_origin() {
    let _serial = sharing();
    let rt = runtime();
    let mut cluster = ProcCluster::start(2);
    let (a, b) = (0, 1);
    let a_peer = cluster.members[a].peer();
    let (a_key, b_key) = (cluster.members[a].key(), cluster.members[b].key());

    let attacker = rt.block_on(async { Attacker::new() });
    let link = rt.block_on(async {
        let link = attacker.connect(&cluster.members[a]).await;
        let me = attacker.peer();
        // Over the hop limit: one claiming the attacker's own origin, one claiming the
        // dropping node's; then a marker that is delivered, so the node has seen both.
        let over = [
            route_message(&attacker.identity, me, 1, a_key, u8::MAX, "over (own)"),
            route_message(&attacker.identity, a_peer, 2, b_key, u8::MAX, "over (as a)"),
            route_message(&attacker.identity, me, 3, a_key, 0, "marker"),
        ];
        for msg in over {
            send_pastry(&link, msg).await;
        }
        link
    });
    let marker = cluster.members[a]
        .proc
        .wait_for(Instant::now() + Duration::from_secs(10), |v| {
            v["event"] == "deliver" && v["payload"] == "marker"
        });
    cluster.gather_until(Instant::now() + Duration::from_secs(1));

    let route_failed = cluster.events("route_failed");
    let over_delivered = cluster
        .events("deliver")
        .into_iter()
        .filter(|(_, v)| v["payload"].as_str().is_some_and(|p| p.starts_with("over")))
        .count();
    println!(
        "hostile hop_limit: dropped=2 route_failed={} over_limit_delivered={over_delivered} \
         marker_delivered={marker}",
        route_failed.len()
    );
    assert!(
        marker,
        "the marker after the dropped messages never arrived"
    );
    let mut broken = Vec::new();
    if !route_failed.is_empty() {
        broken.push(format!(
            "route_failed for messages this node never sent: {route_failed:?}"
        ));
    }
    if over_delivered != 0 {
        broken.push(format!(
            "{over_delivered} messages over the hop limit were delivered"
        ));
    }
    drop(link);
    assert_within_bounds("hop limit", &broken);
}
