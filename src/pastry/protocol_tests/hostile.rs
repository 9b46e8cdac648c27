//! Hostile peers: misshapen peer lists, lists of made-up ids, forged failure notices.

use super::*;
use crate::pastry::{FailureClaim, Misbehaviour};

/// A made-up peer at an address of the attacker's choosing.
fn made_up(n: u128) -> PeerInfo {
    PeerInfo {
        id: NodeId::from_u128(n),
        addr: "192.0.2.1:4000".parse().unwrap(),
    }
}

/// An active node alone, with proximity on (every candidate is measured before admission).
fn alone(id: u128) -> Pastry {
    let mut node = Pastry::new(peer(id), Config::default(), 1);
    node.bootstrap_alone(Time::ZERO);
    drain(&mut node);
    node
}

fn measured(out: &Drained) -> Vec<NodeId> {
    out.transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Measure { peer } => Some(peer.id),
            Transmit::Send { .. } => None,
        })
        .collect()
}

/// Probes sent to made-up peers' addresses.
fn probed(out: &Drained) -> Vec<NodeId> {
    let hostile = made_up(0).addr;
    out.transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg: Message::Probe { .. },
            } if to.addr == hostile => Some(to.id),
            _ => None,
        })
        .collect()
}

fn misbehaviours(out: &Drained) -> Vec<(NodeId, Misbehaviour)> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Misbehaved { peer, reason } => Some((*peer, reason.clone())),
            _ => None,
        })
        .collect()
}

/// Row `row` entries for a node whose id is all zero digits: digit `row` is 1..=15, the digits
/// before it zero, the rest `salt`.
fn row_of_made_up(row: usize, salt: u128) -> Vec<PeerInfo> {
    (1..16u8)
        .map(|column| {
            let shift = 4 * (31 - row);
            let low = if shift == 0 {
                0
            } else {
                salt & ((1u128 << shift) - 1)
            };
            made_up((u128::from(column) << shift) | low)
        })
        .collect()
}

#[test]
fn a_list_of_two_thousand_made_up_ids_is_refused_whole_and_reported() {
    let me = 1u128 << 100;
    let attacker = peer(me + 7);
    let ids: Vec<PeerInfo> = (0..2000u128).map(|i| made_up(me + 1000 + i)).collect();
    let lists = [
        Message::Heartbeat {
            leaf_set: ids.clone(),
        },
        Message::Probe {
            nonce: 9,
            active: true,
            leaf_set: ids.clone(),
            failed: vec![],
        },
        Message::RowReply {
            row: 0,
            entries: ids.clone(),
        },
        Message::NodeFailed {
            node: NodeId::from_u128(me + 3),
            leaf_set: ids.clone(),
        },
    ];
    for msg in lists {
        let kind = msg.kind();
        let mut node = alone(me);
        node.handle_message(Time::ZERO, attacker, msg);
        let out = drain(&mut node);
        let named = |id: &NodeId| ids.iter().any(|p| p.id == *id);
        assert!(
            !measured(&out).iter().any(named) && !probed(&out).iter().any(named),
            "{kind:?}: a made-up id was dialled"
        );
        assert_eq!(
            misbehaviours(&out),
            vec![(
                attacker.id,
                Misbehaviour::TooManyPeers {
                    kind,
                    len: 2000,
                    max: 16
                }
            )],
            "{kind:?}"
        );
        assert_eq!(node.stats().misbehaviours, 1);
        if kind == MessageKind::Probe {
            // The rest of the message still counts: the probe is answered.
            assert!(out.transmits.iter().any(|t| matches!(
                t,
                Transmit::Send { to, msg: Message::ProbeReply { .. } } if to.id == attacker.id
            )));
        }
    }
    // A heartbeat with a bad list still proves its sender alive.
    let mut node = alone(me);
    node.handle_message(Time::ZERO, attacker, Message::Heartbeat { leaf_set: ids });
    assert!(node.leaf_set().contains(attacker.id));
    assert!(format!("{:?}", drain(&mut node).events).contains("Misbehaved"));
}

#[test]
fn misshapen_rows_and_lists_are_named_precisely() {
    let me = 0u128;
    let sender = peer(5 << 124); // shares no digit with us
    let mut node = alone(me);
    let send = |node: &mut Pastry, msg: Message| {
        node.handle_message(Time::ZERO, sender, msg);
        misbehaviours(&drain(node))
    };
    // Row 0 of the sender: an entry sharing its first digit is in no row 0 of its table.
    let wrong = made_up((5 << 124) | 1);
    assert_eq!(
        send(
            &mut node,
            Message::RowReply {
                row: 0,
                entries: vec![wrong]
            }
        ),
        vec![(
            sender.id,
            Misbehaviour::WrongRow {
                kind: MessageKind::RowReply,
                row: 0,
                id: wrong.id
            }
        )]
    );
    // Two entries in one column.
    let (a, b) = (made_up(7 << 124), made_up((7 << 124) | 1));
    assert!(matches!(
        send(
            &mut node,
            Message::RowReply {
                row: 0,
                entries: vec![a, b]
            }
        )[..],
        [(_, Misbehaviour::WrongRow { .. })]
    ));
    // Our own id where the sender leaves us out; a repeated id; the sender in its own leaf set.
    assert!(matches!(
        send(
            &mut node,
            Message::RowReply {
                row: 0,
                entries: vec![peer(me)]
            }
        )[..],
        [(_, Misbehaviour::MisplacedPeer { .. })]
    ));
    assert!(matches!(
        send(
            &mut node,
            Message::Heartbeat {
                leaf_set: vec![a, a]
            }
        )[..],
        [(_, Misbehaviour::DuplicatePeer { .. })]
    ));
    assert!(matches!(
        send(
            &mut node,
            Message::Heartbeat {
                leaf_set: vec![sender]
            }
        )[..],
        [(_, Misbehaviour::MisplacedPeer { .. })]
    ));
    // A row past the table.
    assert!(matches!(
        send(
            &mut node,
            Message::RowReply {
                row: 32,
                entries: vec![]
            }
        )[..],
        [(_, Misbehaviour::BadRow { row: 32, .. })]
    ));
    // A notice whose leaf set still holds the node it reports dead.
    let dead = made_up(9 << 124);
    assert!(matches!(
        send(
            &mut node,
            Message::NodeFailed {
                node: dead.id,
                leaf_set: vec![dead]
            }
        )[..],
        [(_, Misbehaviour::MisplacedPeer { .. })]
    ));
    // Well-shaped lists are not reported: a row 0 of distinct columns, our leaf set with us.
    assert!(send(
        &mut node,
        Message::RowReply {
            row: 0,
            entries: vec![a]
        }
    )
    .is_empty());
    assert!(send(
        &mut node,
        Message::Heartbeat {
            leaf_set: vec![a, peer(me)]
        }
    )
    .is_empty());
    let reason = Misbehaviour::TooManyPeers {
        kind: MessageKind::Heartbeat,
        len: 2000,
        max: 16,
    };
    assert_eq!(
        reason.to_string(),
        "heartbeat lists 2000 peers, more than the 16 its structure holds"
    );
}

#[test]
fn a_joiner_drops_a_join_state_with_rows_it_cannot_be_sent() {
    let me = 0u128;
    let mut node = Pastry::new(peer(me), Config::default(), 1);
    let hop = peer(3 << 124); // shares no digit: it can send row 0 only
    node.join(Time::ZERO, hop);
    drain(&mut node);
    let rows = (0..32u8)
        .map(|r| (r, row_of_made_up(usize::from(r), 99)))
        .collect();
    node.handle_message(
        Time::ZERO,
        hop,
        Message::JoinState {
            rows,
            neighbourhood: vec![],
            leaf_set: None,
        },
    );
    let out = drain(&mut node);
    assert_eq!(misbehaviours(&out).len(), 1);
    assert!(measured(&out).is_empty(), "nothing of it is measured");
}

#[test]
fn well_shaped_lists_of_made_up_ids_yield_bounded_measurements() {
    // Our id is all zeros: row r entries of an attacker sharing 31 digits with us fill our
    // empty slots of row r.
    let attacker = peer(1);
    let mut node = alone(0);
    let mut total = 0;
    for row in 0..20 {
        node.handle_message(
            Time::ZERO,
            attacker,
            Message::RowReply {
                row: row as u8,
                entries: row_of_made_up(row, 77),
            },
        );
        let got = measured(&drain(&mut node)).len();
        assert!(got <= 8, "row {row}: {got} measurements from one message");
        total += got;
    }
    // None answered: the attacker's share of measurements in flight (its own included) is 8.
    assert_eq!(total, 8);
    // Unanswered measurements free their places after their timeout; the queue (32 per
    // source) refills them, never more than 8 at a time, and the rest was dropped.
    let mut later = 0;
    for step in 1..=20 {
        node.handle_timeout(Time::from_millis(step * 7_000));
        let got = measured(&drain(&mut node)).len();
        assert!(got <= 8);
        later += got;
    }
    assert_eq!(later, 32, "the queued candidates, then nothing");
    assert!(node.stats().candidates_dropped > 0);

    // Many sources: 32 measurements in flight node-wide.
    let mut node = alone(0);
    let mut total = 0;
    for source in 0..10u128 {
        let from = peer(source + 1);
        for row in 0..3 {
            node.handle_message(
                Time::ZERO,
                from,
                Message::RowReply {
                    row: row as u8,
                    entries: row_of_made_up(row, source * 1000 + 5),
                },
            );
            total += measured(&drain(&mut node)).len();
        }
    }
    assert_eq!(total, 32);
}

#[test]
fn leaf_sets_of_made_up_ids_yield_bounded_probes() {
    let me = 1u128 << 100;
    let mut node = alone(me);
    let mut probes = 0;
    // Every heartbeat names 16 ids nearer to us than the last one's.
    for round in 0..20u128 {
        let from = peer(me + (1 << 90) + round);
        let gap = 1u128 << (80 - round);
        let leaf_set: Vec<PeerInfo> = (1..=8u128)
            .flat_map(|i| [made_up(me + i * gap), made_up(me - i * gap)])
            .collect();
        node.handle_message(Time::ZERO, from, Message::Heartbeat { leaf_set });
        let out = drain(&mut node);
        let got = probed(&out).len();
        assert!(got <= 16, "round {round}: {got} probes from one heartbeat");
        probes += got;
        assert!(measured(&out).len() <= 8 + 1);
    }
    assert_eq!(probes, 32, "candidate probes in flight are capped at 2L");
}

#[test]
fn legitimate_joins_drop_no_candidate_and_fill_tables() {
    let mut net = Net::build(Config::default(), 120, 21);
    net.run_for(Duration::from_secs(30));
    let dropped: u64 = net.nodes.iter().map(|n| n.stats().candidates_dropped).sum();
    let misbehaved: u64 = net.nodes.iter().map(|n| n.stats().misbehaviours).sum();
    assert_eq!((dropped, misbehaved), (0, 0));
    // With 120 nodes row 0 (16 columns, one ours) is nearly full everywhere.
    let row0: usize = net
        .nodes
        .iter()
        .map(|n| n.routing_table().row(0).len())
        .sum();
    assert!(
        row0 as f64 / 120.0 >= 14.0,
        "mean row 0 fill {}",
        row0 as f64 / 120.0
    );
    check_lookups(&mut net, 100);
}

/// A forged failure notice: a peer tells a live node's neighbours it failed.
#[test]
fn a_forged_failure_notice_for_a_live_node_removes_nothing_and_misdelivers_nothing() {
    let mut net = Net::build(Config::default(), 60, 8);
    net.run_for(Duration::from_secs(20));
    let victim = 11;
    let c = net.nodes[victim].id();
    let holders: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| i != victim && net.nodes[i].leaf_set().contains(c))
        .collect();
    let liar = (0..net.nodes.len())
        .find(|&i| i != victim && !holders.contains(&i))
        .unwrap();
    let liar_info = net.peer(liar);
    let forged_at = net.now;
    // Half the holders just heard from C (it routes to each), half did not.
    for (n, &i) in holders.iter().enumerate() {
        if n % 2 == 0 {
            net.run_for(Duration::from_secs(16));
        }
        let now = net.now;
        net.nodes[i].handle_message(
            now,
            liar_info,
            Message::NodeFailed {
                node: c,
                leaf_set: vec![],
            },
        );
        net.flush(i);
        // Routes to C's keys from everywhere while the notices are being checked.
        for k in 0..3u128 {
            let from = net.random_live();
            net.route(from, Key::from_u128(c.as_u128() + k), b"to c".to_vec());
        }
        net.run_for(Duration::from_millis(30));
    }
    net.run_for(Duration::from_secs(30));
    let left: Vec<_> = net
        .events
        .iter()
        .filter(|(_, e, t)| *e == Event::NodeLeft(c) && *t >= forged_at)
        .collect();
    assert!(left.is_empty(), "NodeLeft for the live node: {left:?}");
    for &i in &holders {
        assert!(net.nodes[i].leaf_set().contains(c), "node {i} dropped C");
    }
    let to_c: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.payload == b"to c"[..])
        .collect();
    assert_eq!(to_c.len(), 3 * holders.len());
    assert!(
        to_c.iter().all(|d| d.at == victim && d.correct),
        "misdelivered"
    );
    let (verified, contradicted): (u64, u64) = holders.iter().fold((0, 0), |(v, c), &i| {
        let s = net.nodes[i].stats();
        (v + s.notices_verified, c + s.notices_contradicted)
    });
    assert_eq!(verified + contradicted, holders.len() as u64);
    assert!(verified > 0, "some holders had to probe C");
}

/// A true notice still works: the holders confirm it with their own probe and drop the node.
#[test]
fn a_true_failure_notice_is_confirmed_and_acted_on() {
    let mut net = Net::build(Config::default(), 60, 9);
    net.run_for(Duration::from_secs(20));
    let victim = 23;
    let c = net.nodes[victim].id();
    let holders: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| i != victim && net.nodes[i].leaf_set().contains(c))
        .collect();
    net.kill(victim);
    let killed_at = net.now;
    let teller = net.peer(holders[0]);
    for &i in &holders[1..] {
        let now = net.now;
        net.nodes[i].handle_message(
            now,
            teller,
            Message::NodeFailed {
                node: c,
                leaf_set: vec![],
            },
        );
        net.flush(i);
    }
    // One account each (the teller's) and no replacement to bring a second: their own probes,
    // after two probe timeouts' wait for another account, settle it.
    net.run_for(Duration::from_secs(10));
    for &i in &holders[1..] {
        assert!(!net.nodes[i].knows(c), "node {i} still holds the dead node");
        assert!(net
            .events
            .iter()
            .any(|(at, e, t)| *at == i && *e == Event::NodeLeft(c) && *t >= killed_at));
    }
}

/// The strongest one liar can do with accounts: it tells every holder of a live node that the
/// node failed, and passes on in probes that another holder (an honest node that said nothing)
/// told it so. Every account rests on the liar: nothing is believed, nothing is evicted.
#[test]
fn a_liar_that_also_names_honest_witnesses_evicts_nothing() {
    let mut net = Net::build(Config::default(), 60, 8);
    net.run_for(Duration::from_secs(20));
    let victim = 17;
    let c = net.nodes[victim].id();
    let holders: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| i != victim && net.nodes[i].leaf_set().contains(c))
        .collect();
    let liar = (0..net.nodes.len())
        .find(|&i| i != victim && !holders.contains(&i))
        .unwrap();
    let liar_info = net.peer(liar);
    let forged_at = net.now;
    for (n, &i) in holders.iter().enumerate() {
        let witness = net.peer(holders[(n + 1) % holders.len()]).id;
        let now = net.now;
        net.nodes[i].handle_message(
            now,
            liar_info,
            Message::NodeFailed {
                node: c,
                leaf_set: vec![],
            },
        );
        net.nodes[i].handle_message(
            now,
            liar_info,
            Message::Probe {
                nonce: 77,
                active: true,
                leaf_set: vec![],
                failed: vec![
                    FailureClaim { node: c, witness },
                    FailureClaim {
                        node: c,
                        witness: liar_info.id,
                    },
                ],
            },
        );
        net.flush(i);
        for k in 0..3u128 {
            let from = net.random_live();
            net.route(from, Key::from_u128(c.as_u128() + k), b"to c".to_vec());
        }
        net.run_for(Duration::from_millis(30));
    }
    net.run_for(Duration::from_secs(30));
    let left: Vec<_> = net
        .events
        .iter()
        .filter(|(_, e, t)| *e == Event::NodeLeft(c) && *t >= forged_at)
        .collect();
    assert!(left.is_empty(), "NodeLeft for the live node: {left:?}");
    for &i in &holders {
        assert!(net.nodes[i].leaf_set().contains(c), "node {i} dropped C");
        assert_eq!(net.nodes[i].stats().failures_believed, 0, "node {i}");
    }
    let to_c: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.payload == b"to c"[..])
        .collect();
    assert_eq!(to_c.len(), 3 * holders.len());
    assert!(
        to_c.iter().all(|d| d.at == victim && d.correct),
        "misdelivered"
    );
}

/// A dead node's holder told by one node (a notice) and by another that passes on a third's
/// word (a probe's claim): the two accounts share no node, so it drops the dead node at once,
/// without a probe of its own. Either account alone is not enough.
#[test]
fn two_accounts_that_share_no_node_are_believed_without_a_probe() {
    let mut net = Net::build(Config::default(), 60, 9);
    net.run_for(Duration::from_secs(20));
    let victim = 23;
    let c = net.nodes[victim].id();
    let holders: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| i != victim && net.nodes[i].leaf_set().contains(c))
        .collect();
    assert!(holders.len() >= 4);
    net.kill(victim);
    let (h, a, b, d) = (holders[0], holders[1], holders[2], holders[3]);
    let (pa, pb, pd, ph) = (net.peer(a), net.peer(b), net.peer(d), net.peer(h));
    let now = net.now;
    let probe = |witness: NodeId| Message::Probe {
        nonce: 5,
        active: true,
        leaf_set: vec![],
        failed: vec![FailureClaim { node: c, witness }],
    };
    // B passing on A's word shares A with A's own notice: not believed.
    net.nodes[h].handle_message(
        now,
        pa,
        Message::NodeFailed {
            node: c,
            leaf_set: vec![],
        },
    );
    net.nodes[h].handle_message(now, pb, probe(pa.id));
    let first = drain(&mut net.nodes[h]);
    assert!(net.nodes[h].leaf_set().contains(c));
    let probed_c = |out: &Drained| {
        out.transmits
            .iter()
            .any(|t| matches!(t, Transmit::Send { to, msg: Message::Probe { .. } } if to.id == c))
    };
    // A suspect that is not our neighbour waits for a second account before probing.
    if !net.nodes[h]
        .leaf_set()
        .neighbour(Side::Left)
        .is_some_and(|s| s.peer.id == c)
        && !net.nodes[h]
            .leaf_set()
            .neighbour(Side::Right)
            .is_some_and(|s| s.peer.id == c)
    {
        assert!(!probed_c(&first), "probed at once");
    }
    // D passing on B's word shares nothing with A's notice: believed at once.
    net.nodes[h].handle_message(now, pd, probe(pb.id));
    let second = drain(&mut net.nodes[h]);
    assert!(!net.nodes[h].knows(c), "still holds the dead node");
    assert!(second.events.contains(&Event::NodeLeft(c)));
    assert!(!probed_c(&second));
    assert_eq!(net.nodes[h].stats().failures_believed, 1);
    // Its reply to D says it now holds C dead itself.
    assert!(second.transmits.iter().any(|t| matches!(
        t,
        Transmit::Send { to, msg: Message::ProbeReply { failed, .. } }
            if to.id == pd.id && failed.contains(&FailureClaim { node: c, witness: ph.id })
    )));
}
