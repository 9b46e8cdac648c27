//! On the NAT testbed: a relay is killed (SIGKILL, so nobody hears a goodbye). The private
//! nodes homed on it re-home on the remaining relays (two again within 10 s), routing is
//! correct again within 10 s, and routes sent meanwhile to keys whose roots are those private
//! nodes still reach them (a session through the dead relay moves to the root's other relay
//! before the root is taken for dead, and a hop that cannot reach the root meanwhile holds
//! the message rather than pass it to the next closest node).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wendy::id::{Key, NodeId};

use super::overlay::{Member, Overlay};
use super::testbed::{Nat, Spec, Testbed};
use crate::netns_or_skip;

/// What a batch of routes is expected to do: (origin id, msg_id) -> (true root, sent at).
type Expected = HashMap<(String, u64), (NodeId, Instant)>;

/// Sends a route for each `(origin index, key)` and records its true root among `live`.
fn send_routes(
    members: &mut [Member],
    live: &[NodeId],
    routes: &[(usize, Key)],
    tag: &str,
) -> Expected {
    let mut expected = Expected::new();
    for (i, (origin, key)) in routes.iter().enumerate() {
        let member = &mut members[*origin];
        member.proc.command(&format!("route {key} {tag}-{i}"));
        let routed = member.proc.next_event("routed");
        let msg_id = routed["msg_id"].as_u64().unwrap();
        expected.insert(
            (member.id.to_string(), msg_id),
            (Overlay::root_of(live, *key), Instant::now()),
        );
    }
    expected
}

/// What became of a batch by now.
#[derive(Debug, Default)]
struct Outcome {
    at_root: usize,
    wrong: Vec<String>,
    failed: usize,
}

/// Reads the live members' output until every route of `expected` was delivered (or until
/// `until`), and says where each went.
fn collect(members: &mut [Member], live: &[usize], expected: &Expected, until: Instant) -> Outcome {
    loop {
        for &i in live {
            members[i].proc.gather(Instant::now());
        }
        let mut outcome = Outcome::default();
        let mut seen = std::collections::HashSet::new();
        for &i in live {
            let member = &members[i];
            for line in &member.proc.seen {
                let from = line["from"].as_str().unwrap_or("").to_owned();
                let msg_id = line["msg_id"].as_u64().unwrap_or(0);
                if line["event"] == "route_failed" {
                    if expected.contains_key(&(member.id.to_string(), msg_id)) {
                        outcome.failed += 1;
                    }
                    continue;
                }
                if line["event"] != "deliver" {
                    continue;
                }
                let Some((root, _)) = expected.get(&(from.clone(), msg_id)) else {
                    continue;
                };
                if !seen.insert((from.clone(), msg_id)) {
                    // A copy (a hop's retry): the first delivery counts.
                    continue;
                }
                if *root == member.id {
                    outcome.at_root += 1;
                } else {
                    outcome.wrong.push(format!(
                        "{from}/{msg_id} delivered at {} instead of {root}",
                        member.host.name
                    ));
                }
            }
        }
        if seen.len() >= expected.len() || Instant::now() >= until {
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn relays_of(status: &serde_json::Value) -> Vec<String> {
    status["relays"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asks `member` for its status every 50 ms until `pred` holds; `None` at `until`.
fn poll_status(
    member: &mut Member,
    until: Instant,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    loop {
        let status = member.proc.status();
        if pred(&status) {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn private_nodes_rehome_when_their_relay_is_killed_and_routes_still_reach_them() {
    netns_or_skip!("private_nodes_rehome_when_their_relay_is_killed_and_routes_still_reach_them");
    let bed = Testbed::new(&Spec {
        public_hosts: 3,
        lans: vec![(Nat::EndpointIndependent, 3), (Nat::Symmetric, 3)],
    })
    .unwrap();
    let mut overlay = Overlay::start(&bed, Duration::from_secs(30));
    let joined = overlay.joined_by(Instant::now() + Duration::from_secs(30));
    assert_eq!(joined.len(), 9, "joined: {joined:?}");
    let others = overlay.members.len() - 1;
    let settled = Instant::now() + Duration::from_secs(20);
    for member in &mut overlay.members {
        let full = |s: &serde_json::Value| s["leaf_set"].as_array().map(Vec::len) == Some(others);
        if poll_status(member, settled, full).is_none() {
            panic!(
                "{}: the leaf set never held every other node\n{}",
                member.host.name,
                member.proc.context()
            );
        }
    }
    eprintln!("netns relay kill: leaf sets complete");
    // Every private node homed on two relays (a node with a single relay is unreachable while
    // it re-homes, and that is no test of re-routing); the victim is the relay most of them
    // use.
    let mut homes: HashMap<String, Vec<String>> = HashMap::new();
    for member in overlay.members.iter_mut().filter(|m| m.private) {
        let until = Instant::now() + Duration::from_secs(10);
        let status = poll_status(member, until, |s| relays_of(s).len() >= 2).unwrap_or_else(|| {
            panic!(
                "{} never homed on two relays\n{}",
                member.host.name,
                member.proc.context()
            )
        });
        homes.insert(member.id.to_string(), relays_of(&status));
    }
    let victim = (0..3)
        .max_by_key(|&i| {
            let id = overlay.members[i].id.to_string();
            homes.values().filter(|r| r.contains(&id)).count()
        })
        .unwrap();
    let victim_id = overlay.members[victim].id.to_string();
    let affected: Vec<usize> = (3..overlay.members.len())
        .filter(|&i| homes[&overlay.members[i].id.to_string()].contains(&victim_id))
        .collect();
    assert!(
        !affected.is_empty(),
        "no private node homed on {victim_id}: {homes:?}"
    );

    let live: Vec<usize> = (0..overlay.members.len())
        .filter(|&i| i != victim)
        .collect();
    let live_ids: Vec<NodeId> = live.iter().map(|&i| overlay.members[i].id).collect();
    let all_ids: Vec<NodeId> = overlay.members.iter().map(|m| m.id).collect();
    let affected_ids: Vec<NodeId> = affected.iter().map(|&i| overlay.members[i].id).collect();
    // Keys whose root is a private node homed on the victim (with or without the victim).
    let keys: Vec<Key> = crate::common::cluster::spread_keys(4000, 16)
        .into_iter()
        .filter(|k| affected_ids.contains(&Overlay::root_of(&all_ids, *k)))
        .take(60)
        .collect();
    assert_eq!(keys.len(), 60);

    eprintln!(
        "netns relay kill: killing {}",
        overlay.members[victim].host.name
    );
    overlay.members[victim].proc.child.kill().unwrap();
    let killed = Instant::now();
    // Routes sent while the private nodes re-home: three rounds of 20 from live nodes in turn,
    // a second apart.
    let mut meanwhile = Expected::new();
    for round in 0..3 {
        let routes: Vec<(usize, Key)> = keys[round * 20..(round + 1) * 20]
            .iter()
            .enumerate()
            .map(|(i, k)| (live[(i + round) % live.len()], *k))
            .collect();
        meanwhile.extend(send_routes(
            &mut overlay.members,
            &live_ids,
            &routes,
            &format!("meanwhile{round}"),
        ));
        let next = killed + Duration::from_secs(round as u64 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }

    // Re-homing: each affected node's relays no longer name the victim (the node is reached
    // through the others); and, a moment later, number two again.
    let mut rehomed = Vec::new();
    let mut two_again = Vec::new();
    for &i in &affected {
        let member = &mut overlay.members[i];
        let until = killed + Duration::from_secs(15);
        let status = poll_status(member, until, |s| {
            let relays = relays_of(s);
            !relays.is_empty() && !relays.contains(&victim_id)
        })
        .unwrap_or_else(|| panic!("{} still homed on the killed relay", member.host.name));
        rehomed.push((member.host.name.clone(), killed.elapsed().as_millis()));
        if relays_of(&status).len() >= 2 {
            two_again.push(member.host.name.clone());
        }
    }
    let rehome_all = killed.elapsed();
    for &i in &affected {
        let member = &mut overlay.members[i];
        if !two_again.contains(&member.host.name)
            && poll_status(member, killed + Duration::from_secs(10), |s| {
                relays_of(s).len() >= 2
            })
            .is_some()
        {
            two_again.push(member.host.name.clone());
        }
    }
    println!(
        "netns relay kill: homes before the kill: {homes:?}; on two relays again within 10 s: {two_again:?}"
    );

    eprintln!("netns relay kill: re-homed");
    // Routing correct again: rounds of 100 routes from live nodes to spread keys, until a
    // whole round lands at the true roots among the live nodes. A route whose next hop was
    // the killed relay waits until its link is found dead, so a round may take seconds to
    // complete: both when it was sent and when it completed are reported.
    let mut correct = None;
    for round in 0..10u64 {
        let routes: Vec<(usize, Key)> = crate::common::cluster::spread_keys(100, 100 + round)
            .into_iter()
            .enumerate()
            .map(|(i, k)| (live[i % live.len()], k))
            .collect();
        let sent = killed.elapsed();
        let expected = send_routes(
            &mut overlay.members,
            &live_ids,
            &routes,
            &format!("after{round}"),
        );
        let outcome = collect(
            &mut overlay.members,
            &live,
            &expected,
            Instant::now() + Duration::from_secs(15),
        );
        if outcome.at_root == expected.len() {
            correct = Some((sent, killed.elapsed()));
            break;
        }
        println!("netns relay kill: round {round} sent {sent:?} after the kill: {outcome:?}");
        if killed.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let (correct_sent, correct_done) = correct.expect("routing never became correct again");

    let outcome = collect(
        &mut overlay.members,
        &live,
        &meanwhile,
        Instant::now() + Duration::from_secs(15),
    );
    println!(
        "netns relay kill: killed {} (home of {} of 6 private nodes); off it after (ms) {rehomed:?} \
         (all within {} ms); a round of 100 routes sent {} ms after the kill all at their true \
         roots, the last delivered {} ms after the kill; \
         routes sent in the first 3 s: {} of {} at their root, {} failed, {} elsewhere",
        overlay.members[victim].host.name,
        affected.len(),
        rehome_all.as_millis(),
        correct_sent.as_millis(),
        correct_done.as_millis(),
        outcome.at_root,
        meanwhile.len(),
        outcome.failed,
        outcome.wrong.len(),
    );
    assert!(
        correct_sent <= Duration::from_secs(10),
        "routing correct only for routes sent {correct_sent:?} after the kill"
    );
    assert!(
        rehome_all <= Duration::from_secs(10),
        "re-homed only {rehome_all:?} after the kill"
    );
    assert_eq!(
        two_again.len(),
        affected.len(),
        "on two relays again within 10 s: only {two_again:?}"
    );
    if (outcome.at_root, outcome.failed, outcome.wrong.len()) != (meanwhile.len(), 0, 0) {
        // Where each node stood (its events and, with WENDY_NODE_LOG, its logs) says why.
        let nodes: Vec<String> = live
            .iter()
            .map(|&i| overlay.members[i].proc.context())
            .collect();
        panic!(
            "routes sent in the first 3 s: {} of {} at their root, {} failed, elsewhere: {:?}\n{}",
            outcome.at_root,
            meanwhile.len(),
            outcome.failed,
            outcome.wrong,
            nodes.join("\n")
        );
    }
}
