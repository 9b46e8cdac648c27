//! Authenticated origins: forged, tampered and replayed routed messages against a node with an
//! authenticator (the cheap deterministic [`FakeAuth`]; real ed25519 runs in the node runtime's
//! tests), and whole overlays that sign and check every message.

use super::*;
use crate::pastry::origin::{route_digest, FakeAuth};
use crate::pastry::{OriginAuth, OriginProof, ProofError};

/// A node alone (the root of every key) that checks origins.
fn checking_root() -> Pastry {
    let mut node = Pastry::new(peer(100), Config::default(), 1);
    node.set_origin_auth(Box::new(FakeAuth { me: peer(100).id }));
    node.bootstrap_alone(Time::ZERO);
    drain(&mut node);
    node
}

/// A message claiming `origin`, with `origin`'s valid proof.
fn signed(origin: u128, id: u64, key: u128, payload: &[u8]) -> Message {
    let digest = route_digest(peer(origin).id, id, Key::from_u128(key), payload);
    Message::Route {
        id,
        key: Key::from_u128(key),
        origin: peer(origin),
        hops: 1,
        avoid: vec![],
        payload: payload.to_vec().into(),
        proof: Some(Box::new(FakeAuth::proof_of(peer(origin).id, &digest))),
    }
}

fn delivered_ids(outputs: &Drained, origin: u128) -> Vec<u64> {
    outputs
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Deliver { origin: o, id, .. } if *o == peer(origin).id => Some(*id),
            _ => None,
        })
        .collect()
}

fn rejections(outputs: &Drained) -> Vec<(NodeId, NodeId, ProofError)> {
    outputs
        .events
        .iter()
        .filter_map(|e| match e {
            Event::OriginRejected {
                from,
                origin,
                reason,
                ..
            } => Some((*from, *origin, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_forged_origin_is_never_delivered_and_cannot_block_the_real_origins_ids() {
    let mut root = checking_root();
    // Peer 8 forges 100 messages claiming origin 7, with exactly the ids 7 will use next:
    // without a proof, with 8's own (valid) proof, and with 7's key but a made-up signature.
    for id in 0..100u64 {
        let Message::Route {
            key,
            hops,
            avoid,
            payload,
            ..
        } = signed(7, id, 5, b"forged")
        else {
            unreachable!()
        };
        let digest = route_digest(peer(7).id, id, key, &payload);
        let proofs = [
            None,
            Some(Box::new(FakeAuth::proof_of(peer(8).id, &digest))),
            Some(Box::new(OriginProof {
                public_key: FakeAuth::public_key_of(peer(7).id),
                signature: [id as u8; 64],
            })),
        ];
        for proof in proofs {
            let forged = Message::Route {
                id,
                key,
                origin: peer(7),
                hops,
                avoid: avoid.clone(),
                payload: payload.clone(),
                proof,
            };
            root.handle_message(Time::ZERO, peer(8), forged);
        }
    }
    let outputs = drain(&mut root);
    assert!(
        delivered_ids(&outputs, 7).is_empty(),
        "a forgery was delivered"
    );
    let rejected = rejections(&outputs);
    assert_eq!(rejected.len(), 300);
    assert!(rejected
        .iter()
        .all(|(from, origin, _)| *from == peer(8).id && *origin == peer(7).id));
    let reasons: HashSet<ProofError> = rejected.iter().map(|r| r.2).collect();
    assert_eq!(
        reasons,
        HashSet::from([
            ProofError::Missing,
            ProofError::KeyMismatch,
            ProofError::BadSignature
        ])
    );
    assert_eq!(root.stats().origins_rejected, 300);
    // Every forgery released its sender and nothing was kept.
    let released = outputs
        .transmits
        .iter()
        .filter(|t| {
            matches!(t, Transmit::Send { to, msg: Message::RouteAck { done: true, .. } }
                if to.id == peer(8).id)
        })
        .count();
    assert_eq!(released, 300);
    assert_eq!(root.in_custody(), 0);

    // The real origin's next 100 messages (relayed by peer 9) are all delivered.
    for id in 0..100u64 {
        root.handle_message(Time::ZERO, peer(9), signed(7, id, 5, b"real"));
    }
    let outputs = drain(&mut root);
    assert_eq!(delivered_ids(&outputs, 7), (0..100).collect::<Vec<_>>());
    assert!(rejections(&outputs).is_empty());
    assert_eq!(root.stats().duplicates_suppressed, 0);
}

#[test]
fn a_tampered_id_key_or_payload_breaks_the_proof() {
    let mut root = checking_root();
    let genuine = signed(7, 40, 5, b"pay me 10");
    let tampered = |f: &dyn Fn(&mut u64, &mut Key, &mut Vec<u8>)| {
        let mut msg = genuine.clone();
        if let Message::Route {
            id, key, payload, ..
        } = &mut msg
        {
            let mut bytes = payload.to_vec();
            f(id, key, &mut bytes);
            *payload = bytes.into();
        }
        msg
    };
    let variants = [
        tampered(&|id, _, _| *id = 41),
        tampered(&|_, key, _| *key = Key::from_u128(6)),
        tampered(&|_, _, payload| payload[7] = b'9'),
        tampered(&|_, _, payload| payload.push(b'0')),
    ];
    for msg in variants {
        root.handle_message(Time::ZERO, peer(8), msg);
    }
    let outputs = drain(&mut root);
    assert!(delivered_ids(&outputs, 7).is_empty());
    let rejected = rejections(&outputs);
    assert_eq!(rejected.len(), 4);
    assert!(rejected
        .iter()
        .all(|r| *r == (peer(8).id, peer(7).id, ProofError::BadSignature)));
    // The untampered message still goes through (no forged pair was recorded).
    root.handle_message(Time::ZERO, peer(8), genuine);
    assert_eq!(delivered_ids(&drain(&mut root), 7), vec![40]);
}

#[test]
fn a_replayed_message_with_a_valid_proof_is_suppressed_as_a_duplicate() {
    let mut root = checking_root();
    let msg = signed(7, 3, 5, b"once");
    root.handle_message(Time::ZERO, peer(8), msg.clone());
    // Replayed by another peer, and by the same one.
    root.handle_message(Time::ZERO, peer(9), msg.clone());
    root.handle_message(Time::ZERO, peer(8), msg);
    let outputs = drain(&mut root);
    assert_eq!(delivered_ids(&outputs, 7), vec![3]);
    assert!(rejections(&outputs).is_empty());
    assert_eq!(root.stats().duplicates_suppressed, 2);
}

#[test]
fn the_origin_itself_needs_no_proof_but_nobody_else_may_omit_it() {
    let mut root = checking_root();
    let Message::Route {
        id,
        key,
        origin,
        hops,
        avoid,
        payload,
        ..
    } = signed(7, 1, 5, b"direct")
    else {
        unreachable!()
    };
    let unsigned = Message::Route {
        id,
        key,
        origin,
        hops,
        avoid,
        payload,
        proof: None,
    };
    // From 7 itself: its link proves it.
    root.handle_message(Time::ZERO, peer(7), unsigned.clone());
    let outputs = drain(&mut root);
    assert_eq!(delivered_ids(&outputs, 7), vec![1]);
    assert_eq!(root.stats().origins_verified, 0, "no signature checked");
    // The same bytes relayed by 8 (and a new id, so that it is not a duplicate).
    let Message::Route {
        key,
        origin,
        hops,
        avoid,
        payload,
        ..
    } = unsigned
    else {
        unreachable!()
    };
    let relayed = Message::Route {
        id: 2,
        key,
        origin,
        hops,
        avoid,
        payload,
        proof: None,
    };
    root.handle_message(Time::ZERO, peer(8), relayed.clone());
    let outputs = drain(&mut root);
    assert!(delivered_ids(&outputs, 7).is_empty());
    assert_eq!(
        rejections(&outputs),
        vec![(peer(8).id, peer(7).id, ProofError::Missing)]
    );

    // A node without an authenticator (the simulator's mode) believes it.
    let mut trusting = Pastry::new(peer(100), Config::default(), 1);
    trusting.bootstrap_alone(Time::ZERO);
    drain(&mut trusting);
    trusting.handle_message(Time::ZERO, peer(8), relayed);
    assert_eq!(delivered_ids(&drain(&mut trusting), 7), vec![2]);
}

#[test]
fn route_ids_are_random_and_the_same_seed_draws_the_same_ones() {
    let ids = |seed| {
        let mut node = Pastry::new(peer(100), Config::default(), seed);
        node.bootstrap_alone(Time::ZERO);
        (0..50)
            .map(|_| node.route(Time::ZERO, Key::from_u128(5), vec![]))
            .collect::<Vec<u64>>()
    };
    let a = ids(1);
    assert_eq!(a, ids(1));
    assert_ne!(a, ids(2));
    // Not a counter: no id follows its predecessor.
    assert!(a.windows(2).all(|w| w[1] != w[0].wrapping_add(1)));
    assert_eq!(a.iter().collect::<HashSet<_>>().len(), a.len());
}

/// Installs the fake authenticator at every node of `net`.
fn authenticate_all(net: &mut Net) {
    for node in &mut net.nodes {
        let me = node.id();
        node.set_origin_auth(Box::new(FakeAuth { me }));
    }
}

#[test]
fn an_overlay_that_checks_origins_delivers_every_message_with_its_real_origin() {
    let mut net = Net::build(Config::default(), 60, 21);
    authenticate_all(&mut net);
    let hops = check_lookups(&mut net, 300);
    assert!(hops.iter().any(|h| *h >= 2), "no multi-hop route: {hops:?}");
    let verified: u64 = net.nodes.iter().map(|n| n.stats().origins_verified).sum();
    let rejected: u64 = net.nodes.iter().map(|n| n.stats().origins_rejected).sum();
    // Every hop after the first checked a signature, and none failed.
    let expected: u64 = hops.iter().map(|h| u64::from(h.saturating_sub(1))).sum();
    assert_eq!(verified, expected);
    assert_eq!(rejected, 0);
}

#[test]
fn a_forward_hook_that_changes_the_payload_makes_its_node_the_origin() {
    let config = Config {
        intercept_forwards: true,
        ..Config::default()
    };
    let mut net = Net::build(config, 30, 8);
    authenticate_all(&mut net);
    let (from, key) = loop {
        let from = net.random_live();
        let key = net.random_key();
        if net.nodes[from].next_hop(key).is_some() {
            break (from, key);
        }
    };
    net.route(from, key, b"a".to_vec());
    // Every forwarding node appends a byte; the last one to do so is the origin delivered.
    let mut last_modifier = None;
    for _ in 0..20 {
        net.run_for(Duration::from_millis(500));
        for h in std::mem::take(&mut net.held) {
            let mut payload = h.payload.to_vec();
            payload.push(b'+');
            last_modifier = Some(net.nodes[h.at].id());
            net.resume(&h, ForwardVerdict::Modified(payload.into()));
        }
    }
    let got: Vec<_> = net
        .delivered
        .iter()
        .filter(|d| d.payload.starts_with(b"a+"))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(Some(got[0].origin), last_modifier);
    assert_eq!(got[0].payload.len() - 1, usize::from(got[0].hops));
    let rejected: u64 = net.nodes.iter().map(|n| n.stats().origins_rejected).sum();
    assert_eq!(rejected, 0);
    // Nobody kept a copy: the modifiers released their predecessors.
    net.run_for(Duration::from_secs(5));
    assert!(net.nodes.iter().all(|n| n.in_custody() == 0));
}

#[test]
fn an_unsigned_first_hop_that_is_not_the_root_gets_the_proof_when_it_asks() {
    let mut net = Net::build(Config::default(), 2, 4);
    authenticate_all(&mut net);
    net.run_for(Duration::from_secs(1));
    let (o, h) = (0, 1);
    let (origin, first) = (net.peer(o), net.peer(h));
    let key = first.id.to_key();
    let now = net.now;
    let id = net.nodes[o].route(now, key, b"x".to_vec());
    let sent: Vec<Option<Box<OriginProof>>> = drain(&mut net.nodes[o])
        .transmits
        .into_iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg: Message::Route { id: got, proof, .. },
            } if to.id == first.id && got == id => Some(proof),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        vec![None],
        "sent to the root by its leaf set, unsigned"
    );
    // The first hop turns out to need the proof.
    net.nodes[o].handle_message(now, first, Message::ProofWanted { id });
    let resent: Vec<(Key, Vec<u8>, Option<Box<OriginProof>>)> = drain(&mut net.nodes[o])
        .transmits
        .into_iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg:
                    Message::Route {
                        id: got,
                        key,
                        payload,
                        proof,
                        ..
                    },
            } if to.id == first.id && got == id => Some((key, payload.to_vec(), proof)),
            _ => None,
        })
        .collect();
    assert_eq!(resent.len(), 1);
    let (key, payload, proof) = &resent[0];
    let digest = route_digest(origin.id, id, *key, payload);
    let mut checker = FakeAuth { me: first.id };
    assert_eq!(
        checker.verify(origin.id, &digest, proof.as_ref().expect("signed now")),
        Ok(())
    );
    assert_eq!(net.nodes[o].stats().proofs_wanted, 1);
    assert_eq!(
        net.nodes[o].in_custody(),
        1,
        "still held until acknowledged"
    );
    // Asked again (or for a message it never sent): nothing more is sent.
    net.nodes[o].handle_message(now, first, Message::ProofWanted { id });
    net.nodes[o].handle_message(now, first, Message::ProofWanted { id: id ^ 1 });
    let again = drain(&mut net.nodes[o]);
    assert!(
        !again.transmits.iter().any(|t| matches!(
            t,
            Transmit::Send {
                msg: Message::Route { .. },
                ..
            }
        )),
        "{again:?}"
    );
}

#[test]
fn a_first_hop_asks_for_the_proof_instead_of_passing_an_unsigned_message_on() {
    let mut net = Net::build(Config::default(), 12, 5);
    authenticate_all(&mut net);
    net.run_for(Duration::from_secs(1));
    // A key that node h would pass on, from an origin o that is neither h nor the next hop.
    let (h, key, next) = loop {
        let h = net.random_live();
        let key = net.random_key();
        if let Some(next) = net.nodes[h].next_hop(key) {
            break (h, key, next);
        }
    };
    let o = (0..net.nodes.len())
        .find(|&i| i != h && net.peer(i).id != next.id)
        .unwrap();
    let origin = net.peer(o);
    let custody = net.nodes[h].in_custody();
    let unsigned = Message::Route {
        id: 77,
        key,
        origin,
        hops: 0,
        avoid: vec![],
        payload: b"x".to_vec().into(),
        proof: None,
    };
    net.nodes[h].handle_message(net.now, origin, unsigned);
    let out = drain(&mut net.nodes[h]);
    let sends: Vec<&Transmit> = out
        .transmits
        .iter()
        .filter(|t| {
            matches!(
                t,
                Transmit::Send {
                    msg: Message::Route { .. }
                        | Message::RouteAck { .. }
                        | Message::ProofWanted { .. },
                    ..
                }
            )
        })
        .collect();
    assert_eq!(
        sends,
        vec![&Transmit::Send {
            to: origin,
            msg: Message::ProofWanted { id: 77 }
        }]
    );
    assert_eq!(net.nodes[h].in_custody(), custody);
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, Event::Deliver { .. })));
}
