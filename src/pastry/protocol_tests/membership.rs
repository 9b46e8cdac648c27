//! Membership: admission to the structures, measurement before admission, and passing newcomers on.

use super::*;

#[test]
fn removal_clears_every_structure() {
    // Go Wendy regression: removing a peer stopped at the first structure holding it.
    let mut node = Pastry::new(peer(1 << 100), Config::default(), 1);
    node.bootstrap_alone(Time::ZERO);
    let p = peer((1 << 100) + 5);
    meet(&mut node, p);
    node.handle_proximity(Time::ZERO, p, Duration::from_millis(3));
    drain(&mut node);
    assert!(node.leaf_set().contains(p.id));
    assert!(node.routing_table().contains(p.id));
    assert!(node.neighbourhood().contains(p.id));
    node.handle_message(Time::ZERO, p, Message::Leave { leaf_set: vec![] });
    let outputs = drain(&mut node);
    assert!(!node.knows(p.id));
    assert!(!node.leaf_set().contains(p.id));
    assert!(!node.routing_table().contains(p.id));
    assert!(!node.neighbourhood().contains(p.id));
    assert!(outputs.events.contains(&Event::NodeLeft(p.id)));
}

#[test]
fn measured_candidates_enter_the_table_only_after_measurement() {
    let mut node = Pastry::new(peer(1 << 120), Config::default(), 1);
    node.bootstrap_alone(Time::ZERO);
    drain(&mut node);
    let far = peer(0xf << 124);
    node.handle_message(
        Time::ZERO,
        far,
        Message::RowReply {
            row: 0,
            entries: vec![],
        },
    );
    let outputs = drain(&mut node);
    assert!(outputs.transmits.contains(&Transmit::Measure { peer: far }));
    assert!(!node.routing_table().contains(far.id));
    node.handle_proximity(Time::ZERO, far, Duration::from_millis(40));
    assert!(node.routing_table().contains(far.id));
    // A nearer peer for the same slot (beyond hysteresis) replaces it; a farther one does not.
    let nearer = peer((0xf << 124) + 1);
    let farther = peer((0xf << 124) + 2);
    // An unsolicited candidate for a taken slot is not worth a measurement...
    let other = peer((0xf << 124) + 3);
    node.handle_message(
        Time::ZERO,
        far,
        Message::RowReply {
            row: 0,
            entries: vec![other],
        },
    );
    assert!(!drain(&mut node)
        .transmits
        .contains(&Transmit::Measure { peer: other }));
    // ...but a newly announced node is (it may be nearer than the holder).
    for p in [nearer, farther] {
        node.handle_message(Time::ZERO, p, Message::Announce { leaf_set: vec![] });
    }
    let outputs = drain(&mut node);
    assert!(outputs
        .transmits
        .contains(&Transmit::Measure { peer: nearer }));
    node.handle_proximity(Time::ZERO, nearer, Duration::from_millis(10));
    node.handle_proximity(Time::ZERO, farther, Duration::from_millis(50));
    assert_eq!(node.routing_table().get(0, 0xf).unwrap().peer, nearer);
    // Unsolicited measurements of strangers are ignored.
    let stranger = peer(0xe << 124);
    node.handle_proximity(Time::ZERO, stranger, Duration::from_millis(1));
    assert!(!node.knows(stranger.id));
}

/// A newcomer that announces itself and fills an empty slot of a deep row (which the overlay's
/// size says should be populated) is passed on to that row's other entries: they share the
/// prefix and probably lack it too. A slot that was taken is not news.
#[test]
fn a_newcomer_filling_a_deep_hole_is_passed_on_to_the_row() {
    let me = 0xab58_u128 << 112;
    let mut node = lone(me);
    // A dense leaf set: the estimated overlay is far larger than 16^3.
    for i in 1..=8u128 {
        meet(&mut node, peer(me + i));
        meet(&mut node, peer(me - i));
    }
    let row_mates = [peer(0xab10_u128 << 112), peer(0xab20_u128 << 112)];
    for p in row_mates {
        meet(&mut node, p);
    }
    assert_eq!(node.routing_table().row(2).len(), 2);
    let newcomer = peer(0xab90_u128 << 112);
    node.handle_message(Time::ZERO, newcomer, Message::Announce { leaf_set: vec![] });
    let passed_on: Vec<NodeId> = drain(&mut node)
        .transmits
        .into_iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg: Message::RowReply { row: 2, entries },
            } if entries == vec![newcomer] => Some(to.id),
            _ => None,
        })
        .collect();
    assert_eq!(passed_on, row_mates.map(|p| p.id).to_vec());
    // Another announcer for a taken slot of that row is not passed on.
    let second = peer((0xab90_u128 << 112) + (1 << 100));
    node.handle_message(Time::ZERO, second, Message::Announce { leaf_set: vec![] });
    assert!(!drain(&mut node).transmits.iter().any(|t| matches!(
        t,
        Transmit::Send {
            msg: Message::RowReply { .. },
            ..
        }
    )));
}
