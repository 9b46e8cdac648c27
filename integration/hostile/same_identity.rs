//! One identity, one node: a second process started with a live member's key must not join,
//! must say which address already holds the identity, and the live member keeps its place.

use std::time::{Duration, Instant};

use super::{assert_within_bounds, sharing};
use crate::common::hostile::{id_list, ProcCluster};
use crate::common::process::NodeProc;
use crate::common::HANG_GUARD;

/// How the second process's join ended.
#[derive(Debug)]
enum Outcome {
    Joined,
    Refused(String),
    Ended,
}

#[test]
fn a_second_process_with_a_live_members_key_is_refused_and_the_member_keeps_its_place() {
    let _serial = sharing();
    let mut cluster = ProcCluster::start(3);
    let (bootstrap, live) = (0, 1);
    let live_hex = cluster.members[live].id.to_string();
    let live_addr = cluster.members[live].addr.to_string();
    let key = cluster.members[live].key.to_str().unwrap().to_owned();
    let join = cluster.members[bootstrap].addr.to_string();

    let mut twin = NodeProc::start(
        "twin",
        ["--listen", "127.0.0.1:0", "--key", &key, "--join", &join],
    );
    let deadline = Instant::now() + HANG_GUARD;
    let outcome = loop {
        match twin.try_receive(deadline) {
            Some(v) if v["event"] == "joined" => break Outcome::Joined,
            Some(v) if v["event"] == "error" && v["fatal"] == true => {
                break Outcome::Refused(v["message"].as_str().unwrap_or("").to_owned())
            }
            Some(_) => {}
            None => break Outcome::Ended,
        }
    };
    if matches!(outcome, Outcome::Joined) {
        // What a twin costs the live member when it goes away again.
        twin.command("leave");
    }
    let status = twin.wait_exit();
    let stderr_names_addr = twin.context().contains(&live_addr);
    cluster.gather_until(Instant::now() + Duration::from_secs(4));

    let node_left: Vec<&str> = cluster
        .events("node_left")
        .into_iter()
        .filter(|(_, v)| v["id"] == live_hex.as_str())
        .map(|(name, _)| name)
        .collect();
    let mut keeps_place = Vec::new();
    for i in (0..cluster.members.len()).filter(|&i| i != live) {
        let leaf = id_list(&cluster.members[i].proc.status()["leaf_set"]);
        if !leaf.contains(&live_hex) {
            keeps_place.push(cluster.members[i].name);
        }
    }
    println!(
        "hostile same_identity: outcome={outcome:?} exit_success={} names_live_addr={} \
         node_left={} dropped_from_leaf_sets={}",
        status.success(),
        stderr_names_addr,
        node_left.len(),
        keeps_place.len(),
    );
    let mut broken = Vec::new();
    match &outcome {
        Outcome::Refused(message) if !message.contains(&live_addr) => broken.push(format!(
            "the refusal does not name the live member's address {live_addr}: {message:?}"
        )),
        Outcome::Refused(_) => {}
        other => broken.push(format!(
            "the second process was not refused with an error event: {other:?}"
        )),
    }
    if status.success() {
        broken.push("the second process exited successfully".to_owned());
    }
    if !node_left.is_empty() {
        broken.push(format!("node_left for the live member at {node_left:?}"));
    }
    if !keeps_place.is_empty() {
        broken.push(format!(
            "the live member is missing from the leaf sets of {keeps_place:?}"
        ));
    }
    assert_within_bounds("same identity", &broken);
}
