//! A forged failure notice: a peer tells a live node's neighbours that it failed. They must
//! not believe it on its word: no `node_left` for it anywhere, and the routes to its id keep
//! arriving at it.

use std::time::{Duration, Instant};

use wendy::pastry::Message;

use super::{assert_within_bounds, runtime, sharing};
use crate::common::hostile::{join_all, send_pastry, Attacker, ProcCluster};

const ROUTES_EACH: usize = 3;

#[test]
fn a_forged_failure_notice_for_a_live_node_is_not_believed() {
    let _serial = sharing();
    let rt = runtime();
    let mut cluster = ProcCluster::start(4);
    let victim = 2;
    let victim_id = cluster.members[victim].id;
    let victim_key = cluster.members[victim].key();

    let attacker = rt.block_on(async { Attacker::new() });
    let links = rt.block_on(async {
        let mut links = Vec::new();
        for (i, member) in cluster.members.iter().enumerate() {
            if i != victim {
                links.push(attacker.connect(member).await);
            }
        }
        let notices = links.iter().map(|link| {
            let link = link.clone();
            let notice = Message::NodeFailed {
                node: victim_id,
                leaf_set: Vec::new(),
            };
            async move { send_pastry(&link, notice).await }
        });
        join_all(notices).await;
        links
    });

    // At once, every other member routes to the victim's id.
    let mut sent = Vec::new();
    for i in (0..cluster.members.len()).filter(|&i| i != victim) {
        for n in 0..ROUTES_EACH {
            let text = format!("to the victim from {} {n}", cluster.members[i].name);
            cluster.members[i].route(victim_key, &text);
            sent.push(text);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let arrived = sent
        .iter()
        .filter(|text| {
            cluster.members[victim].proc.wait_for(deadline, |v| {
                v["event"] == "deliver" && v["payload"] == **text
            })
        })
        .count();
    // A few more seconds for a belated node_left or a misdelivery.
    cluster.gather_until(Instant::now() + Duration::from_secs(3));

    let victim_hex = victim_id.to_string();
    let node_left: Vec<&str> = cluster
        .events("node_left")
        .into_iter()
        .filter(|(_, v)| v["id"] == victim_hex.as_str())
        .map(|(name, _)| name)
        .collect();
    let victim_name = cluster.members[victim].name;
    let misdelivered: Vec<&str> = cluster
        .events("deliver")
        .into_iter()
        .filter(|(name, v)| {
            *name != victim_name
                && v["payload"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("to the victim"))
        })
        .map(|(name, _)| name)
        .collect();
    println!(
        "hostile forged_node_failed: nodes={} notices={} node_left={} routes={} \
         delivered_at_victim={arrived} misdelivered={}",
        cluster.members.len(),
        links.len(),
        node_left.len(),
        sent.len(),
        misdelivered.len(),
    );
    let mut broken = Vec::new();
    if !node_left.is_empty() {
        broken.push(format!(
            "node_left for the live node at {node_left:?} (expected none)"
        ));
    }
    if !misdelivered.is_empty() {
        broken.push(format!(
            "{} routes to the live node's id delivered at {misdelivered:?}",
            misdelivered.len()
        ));
    }
    if arrived != sent.len() {
        broken.push(format!(
            "{arrived} of {} routes reached the live node",
            sent.len()
        ));
    }
    assert_within_bounds("forged failure notice", &broken);
}
