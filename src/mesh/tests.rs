//! The mesh's message handlers fed hostile input directly (a real node, not joined: nothing
//! here needs the network, only the handlers' decisions).

use std::time::Duration;

use super::*;
use crate::id::Key;

async fn lone_mesh(seed: u8) -> (Mesh, Events) {
    lone_mesh_with(seed, MeshConfig::default()).await
}

async fn lone_mesh_with(seed: u8, config: MeshConfig) -> (Mesh, Events) {
    let identity = Identity::from_seed([seed; 32]);
    let (node, events) = Node::builder(identity.clone())
        .spawn()
        .await
        .expect("spawn node");
    Mesh::new(node, identity, events, config).expect("mesh")
}

fn record(seed: u8, name: &str, expires: u64) -> SignedRecord {
    let id = Identity::from_seed([seed; 32]);
    ServiceRecord::new(&id, name, "127.0.0.1:1".parse().unwrap(), expires, 1)
        .unwrap()
        .sign(&id)
        .unwrap()
}

fn soon() -> u64 {
    unix_ms_now() + 60_000
}

#[tokio::test]
async fn replications_for_names_this_node_does_not_hold_are_refused() {
    let (mesh, _events) = lone_mesh(1).await;
    let me = mesh.node().id();
    let key = service_key("web");
    // Three leaf-set members all closer to the key than this node: it is no replica.
    let closer: Vec<NodeId> = (1..=3u128)
        .map(|d| NodeId::from_u128(key.as_u128().wrapping_add(d)))
        .filter(|id| key.is_closer(*id, me))
        .collect();
    assert_eq!(
        closer.len(),
        3,
        "the ids next to the key are closer than a random id"
    );
    mesh.inner.lock().leaf_set = closer;
    let flood: Vec<SignedRecord> = (10..60).map(|seed| record(seed, "web", soon())).collect();
    mesh.inner.on_direct(
        NodeId::from_u128(7),
        MeshMessage::Replicate { records: flood },
    );
    let status = mesh.status();
    assert_eq!(status.records_held, 0);
    // Kept aside only in case this node's leaf set catches up (a bounded, expiring buffer).
    assert_eq!(mesh.inner.lock().deferred.len(), 1);
    let leaf_set = mesh.inner.lock().leaf_set.clone();
    mesh.inner.on_leaf_set(leaf_set);
    assert_eq!(
        mesh.status().records_held,
        0,
        "still no replica: still not stored"
    );
}

#[tokio::test]
async fn oversized_or_mixed_replications_are_refused_whole() {
    let (mesh, _events) = lone_mesh(2).await;
    let from = NodeId::from_u128(7);
    let too_many: Vec<SignedRecord> = (0..=64).map(|seed| record(seed, "web", soon())).collect();
    mesh.inner
        .on_direct(from, MeshMessage::Replicate { records: too_many });
    assert_eq!(mesh.status().records_held, 0);
    let mixed = vec![record(1, "web", soon()), record(2, "db", soon())];
    mesh.inner
        .on_direct(from, MeshMessage::Replicate { records: mixed });
    assert_eq!(mesh.status().records_held, 0);
    // The same node does keep a well-formed replication of a name it holds (alone, it holds all).
    let good = vec![record(1, "web", soon()), record(2, "web", soon())];
    mesh.inner
        .on_direct(from, MeshMessage::Replicate { records: good });
    assert_eq!(mesh.status().records_held, 2);
}

#[tokio::test]
async fn bad_records_are_refused_and_the_node_keeps_serving() {
    let (mesh, _events) = lone_mesh(3).await;
    let from = NodeId::from_u128(7);
    let mut forged = record(1, "web", soon());
    forged.record.addr = "10.0.0.1:22".parse().unwrap();
    let mut wrong_key = record(2, "web", soon());
    wrong_key.record.provider = NodeId::from_u128(99);
    let never_expires = record(3, "web", u64::MAX);
    let expired = record(4, "web", unix_ms_now() - 1);
    for bad in [forged, wrong_key, never_expires, expired] {
        mesh.inner
            .on_direct(from, MeshMessage::Replicate { records: vec![bad] });
    }
    let status = mesh.status();
    assert_eq!(status.records_held, 0);
    assert_eq!(
        status.records_refused, 3,
        "the expired one is a withdrawal, not an error"
    );
    // Still serving: a good record is kept.
    mesh.inner.on_direct(
        from,
        MeshMessage::Replicate {
            records: vec![record(5, "web", soon())],
        },
    );
    assert_eq!(mesh.status().records_held, 1);
}

#[tokio::test]
async fn a_publication_routed_to_another_key_is_not_stored() {
    let (mesh, _events) = lone_mesh(4).await;
    let me = mesh.node().id();
    // Signed by this node itself, so it needs no reachability probe: only the key is wrong.
    let identity = Identity::from_seed([4; 32]);
    let own = ServiceRecord::new(&identity, "web", mesh.node().addr(), soon(), 1)
        .unwrap()
        .sign(&identity)
        .unwrap();
    let publish = |record: SignedRecord| MeshMessage::Publish {
        request: 1,
        reply_addr: mesh.node().addr(),
        record,
    };
    mesh.inner
        .on_routed(me, Key::from_name("room:lobby"), publish(own.clone()));
    assert_eq!(mesh.status().records_held, 0);
    assert_eq!(mesh.status().records_refused, 1);
    mesh.inner.on_routed(me, service_key("web"), publish(own));
    assert_eq!(mesh.status().records_held, 1);
}

#[tokio::test]
async fn a_publication_whose_provider_does_not_answer_is_refused() {
    let config = MeshConfig {
        connect_timeout: Duration::from_millis(300),
        ..MeshConfig::default()
    };
    let (mesh, _events) = lone_mesh_with(5, config).await;
    // A provider at an address where nobody listens (a fresh key: nobody holds it).
    let nobody = record(60, "web", soon());
    let request: u64 = 42;
    let (waiter, answer) = oneshot::channel();
    mesh.inner.lock().pending.insert(request, waiter);
    let me = mesh.node().id();
    mesh.inner.on_routed(
        me,
        service_key("web"),
        MeshMessage::Publish {
            request,
            reply_addr: mesh.node().addr(),
            record: nobody,
        },
    );
    let answer = tokio::time::timeout(Duration::from_secs(60), answer)
        .await
        .expect("hang guard")
        .unwrap();
    assert!(
        matches!(&answer, MeshMessage::Refused { reason, .. } if reason.contains("provider")),
        "{answer:?}"
    );
    assert_eq!(mesh.status().records_held, 0);
}

#[tokio::test]
async fn application_payloads_are_passed_on_whatever_their_bytes_and_mesh_garbage_is_dropped() {
    let (mesh, _events) = lone_mesh(6).await;
    let (app, mut app_events) = mpsc::channel(8);
    // An in-band mesh tag followed by a valid mesh message: an application's payload stays the
    // application's whatever its bytes, since the kind travels outside the payload.
    let mut old_magic = vec![0xFF, b'w', b'm', b'e', b's', b'h', b'/', b'1'];
    old_magic.extend_from_slice(&MeshMessage::Probe.encode());
    let from = NodeId::from_u128(7);
    mesh.inner.on_event(
        NodeEvent::Direct {
            from,
            payload: old_magic.clone().into(),
        },
        &app,
    );
    match app_events.try_recv() {
        Ok(NodeEvent::Direct { payload, .. }) => assert_eq!(payload, old_magic),
        other => panic!("expected the payload passed on, got {other:?}"),
    }
    // A mesh payload that does not decode is dropped, not handed to the application.
    mesh.inner.on_message(NodeEvent::Direct {
        from,
        payload: vec![0xEE; 16].into(),
    });
    assert!(app_events.try_recv().is_err());
    // An answer nobody asked for changes nothing and panics nothing.
    mesh.inner.on_direct(
        from,
        MeshMessage::Found {
            request: 12345,
            records: vec![record(1, "web", soon())],
        },
    );
    assert!(mesh.inner.lock().pending.is_empty());
    assert_eq!(mesh.status().records_held, 0);
}

#[tokio::test]
async fn an_application_cannot_publish_a_record_by_routing_a_mesh_message() {
    let (mesh, mut events) = lone_mesh(8).await;
    let node = mesh.node().clone();
    node.join(&[]).await.unwrap();
    let key = service_key("web");
    let publish = MeshMessage::Publish {
        request: 1,
        reply_addr: node.addr(),
        record: record(8, "web", soon()),
    }
    .encode();
    let old_tag = [0xFF, b'w', b'm', b'e', b's', b'h', b'/', b'1'];
    for forged in [[old_tag.as_slice(), &publish].concat(), publish.clone()] {
        node.route(key, forged.clone()).await.unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match events.recv().await {
                    Some(NodeEvent::Deliver(delivery)) => return delivery.payload,
                    Some(_) => {}
                    None => panic!("events ended"),
                }
            }
        })
        .await
        .expect("hang guard");
        assert_eq!(delivered, forged);
    }
    assert_eq!(mesh.status().records_held, 0);
    // Sent as the mesh's own kind, the same message is stored.
    node.route_kind(key, PayloadKind::Mesh, &publish)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while mesh.status().records_held == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("hang guard");
}

#[tokio::test]
async fn a_hand_over_that_arrives_early_is_taken_once_the_leaf_set_agrees_and_the_wait_is_bounded()
{
    let (mesh, _events) = lone_mesh(6).await;
    let key = service_key("web").as_u128();
    // Three peers closer to the name's key than anyone else: this node is no replica of it.
    let closer: Vec<NodeId> = (0..3u128)
        .map(|i| NodeId::from_u128(key.wrapping_add(i)))
        .collect();
    mesh.inner.on_leaf_set(closer.clone());
    let from = closer[0];
    mesh.inner.on_direct(
        from,
        MeshMessage::Replicate {
            records: vec![record(1, "web", soon())],
        },
    );
    assert_eq!(mesh.status().records_held, 0, "not a replica yet");
    // More early hand-overs than are kept: the oldest go, counted as refused.
    for seed in 2..=(super::holder::DEFERRED_HANDOVERS as u8 + 1) {
        mesh.inner.on_direct(
            from,
            MeshMessage::Replicate {
                records: vec![record(seed, "web", soon())],
            },
        );
    }
    assert_eq!(mesh.status().records_refused, 1);
    // One of the closer peers is found dead: this node is now among the closest and takes
    // what was handed to it early.
    mesh.inner.on_leaf_set(closer[1..].to_vec());
    assert_eq!(
        mesh.status().records_held,
        super::holder::DEFERRED_HANDOVERS
    );
}
