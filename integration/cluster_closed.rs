//! Closed meshes over real QUIC: with `ca` admission (certificates signed by the mesh CA) or an
//! allow-list, a node that is not admitted cannot join, cannot route, cannot be routed to or
//! through, and never enters anybody's routing state, even when a member advertises it.

use std::collections::HashSet;

use wendy::id::{Key, NodeId};
use wendy::identity::{Identity, MeshCa, Validity};
use wendy::node::{Node, NodeError, NodeEvent};
use wendy::pastry::{Message, PeerInfo};
use wendy::transport::{Admission, Transport, TransportConfig};
use wendy::wire::Body;

use crate::common;
use common::cluster::{self, Observations};

const MEMBERS: u8 = 6;

/// An outsider: open admission itself (it would talk to anyone), self-signed or wrongly signed.
struct Outsider {
    node: Node,
    events: wendy::node::Events,
}

/// Starts the members, then checks everything an outsider must not be able to do.
async fn assert_outsiders_shut_out(
    members: Vec<wendy::node::NodeBuilder>,
    outsiders: Vec<Outsider>,
    // A transport that the mesh admits (a member's credentials), used to advertise outsiders.
    insider: TransportConfig,
) {
    let (nodes, mut observations) = cluster::start(members).await;
    let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    cluster::converge(&nodes, &ids).await;

    for Outsider { node, mut events } in outsiders {
        // It cannot join through any member.
        let joined = node.join(&[nodes[1].addr(), nodes[2].addr()]).await;
        assert!(
            matches!(joined, Err(NodeError::NoBootstrapReachable { .. })),
            "an outsider joined a closed mesh: {joined:?}"
        );
        // The member it dialled says why.
        let refused = expect_refusal(&mut observations, nodes[1].id()).await;
        assert!(refused.contains("refused"), "unexpected error: {refused}");
        // It cannot route.
        let routed = node.route(Key::from_name("secret"), b"x".to_vec()).await;
        assert!(
            matches!(routed, Err(NodeError::NotJoined)),
            "an outsider routed: {routed:?}"
        );
        // Its direct messages are refused in the handshake...
        let sent = node
            .send_to(nodes[0].id(), nodes[0].addr(), b"let me in".to_vec())
            .await;
        assert!(sent.is_err(), "a member accepted an outsider's message");

        // A member (or a compromised insider) advertises the outsider as a leaf-set neighbour.
        let (gossip, _gossip_events) = Transport::bind(insider.clone()).await.unwrap();
        let advert = Message::Heartbeat {
            leaf_set: vec![PeerInfo {
                id: node.id(),
                addr: node.addr(),
            }],
        };
        for member in &nodes {
            gossip
                .send(member.id(), member.addr(), &Body::Pastry(advert.clone()))
                .await
                .expect("the insider is admitted");
        }
        gossip.shutdown().await;
        // The members take the advert seriously enough to dial the outsider (the first to
        // fail tells the others, so maybe only one tries), and refuse it in the handshake: the
        // outsider sees that.
        tokio::time::timeout(common::HANG_GUARD, async {
            loop {
                match events.recv().await {
                    Some(NodeEvent::Error(message))
                        if nodes
                            .iter()
                            .any(|n| message.contains(&format!("{} refused a link", n.addr()))) =>
                    {
                        return
                    }
                    Some(_) => {}
                    None => panic!("outsider stopped"),
                }
            }
        })
        .await
        .expect("no member tried the advertised outsider (hang guard)");
        // No member can reach it on purpose either, given its id and address.
        let reached = nodes[0]
            .send_to(node.id(), node.addr(), b"hello?".to_vec())
            .await;
        assert!(reached.is_err(), "a member connected to an outsider");

        // Messages for the outsider's own id (it would be their root if admitted) arrive at the
        // member closest to it, from every member.
        let keys = vec![Key::from_u128(node.id().as_u128()); nodes.len() * 4];
        let sent = cluster::route_all(&nodes, &keys, 0).await;
        cluster::expect_deliveries(&mut observations, &sent, &ids, |_| {}).await;
        while let Some(event) = events.try_recv() {
            assert!(
                !matches!(event, NodeEvent::Deliver(_)),
                "an outsider got a routed message"
            );
        }

        // It is in nobody's leaf set, routing table, neighbourhood or links, and the leaf sets
        // are still exactly the members' oracle.
        for member in &nodes {
            let status = member.status().await.unwrap();
            let known: HashSet<NodeId> = status
                .leaf_set
                .iter()
                .copied()
                .chain(status.routing_table.iter().map(|p| p.id))
                .chain(status.neighbourhood.iter().map(|p| p.id))
                .chain(status.connections.iter().map(|c| c.id))
                .collect();
            assert!(
                !known.contains(&node.id()),
                "member {} holds the outsider",
                member.id()
            );
        }
        node.shutdown().await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// The next `Error` event of `member` (hang-guarded).
async fn expect_refusal(observations: &mut Observations, member: NodeId) -> String {
    loop {
        let observed = observations.next().await;
        if observed.at == member {
            if let NodeEvent::Error(message) = observed.event {
                return message;
            }
        }
    }
}

async fn outsider(identity: Identity, certificate: wendy::identity::Certificate) -> Outsider {
    let (node, events) = Node::builder(identity)
        .certificate(certificate)
        .spawn()
        .await
        .unwrap();
    Outsider { node, events }
}

fn validity() -> Validity {
    Validity::days_from_now(30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_mesh_shuts_out_self_signed_and_foreign_certificates() {
    let mesh = MeshCa::generate("mesh", validity()).unwrap();
    let foreign = MeshCa::generate("another mesh", validity()).unwrap();
    let admission = || Admission::Ca {
        roots: vec![mesh.certificate().der().clone()],
    };
    let members = (1..=MEMBERS)
        .map(|seed| {
            let identity = Identity::from_seed([seed; 32]);
            let certificate = mesh.issue(&identity.public_key(), validity()).unwrap();
            Node::builder(identity)
                .certificate(certificate)
                .admission(admission())
        })
        .collect();
    let self_signed = Identity::from_seed([101; 32]);
    let self_signed_cert = self_signed.self_signed_certificate(validity()).unwrap();
    let foreign_signed = Identity::from_seed([102; 32]);
    let foreign_cert = foreign
        .issue(&foreign_signed.public_key(), validity())
        .unwrap();
    let outsiders = vec![
        outsider(self_signed, self_signed_cert).await,
        outsider(foreign_signed, foreign_cert).await,
    ];
    let insider = Identity::from_seed([100; 32]);
    let insider_cert = mesh.issue(&insider.public_key(), validity()).unwrap();
    let insider = TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        insider,
        insider_cert,
        admission(),
    );
    assert_outsiders_shut_out(members, outsiders, insider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_mesh_shuts_out_unlisted_nodes() {
    let listed: Vec<Identity> = (11..=10 + MEMBERS + 1)
        .map(|seed| Identity::from_seed([seed; 32]))
        .collect();
    let allowed: HashSet<NodeId> = listed.iter().map(Identity::node_id).collect();
    let mut listed = listed.into_iter();
    let insider = listed.next().unwrap();
    let members = listed
        .map(|identity| Node::builder(identity).admission(Admission::AllowList(allowed.clone())))
        .collect();
    let unlisted = Identity::from_seed([111; 32]);
    let unlisted_cert = unlisted.self_signed_certificate(validity()).unwrap();
    let outsiders = vec![outsider(unlisted, unlisted_cert).await];
    let insider_cert = insider.self_signed_certificate(validity()).unwrap();
    let insider = TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        insider,
        insider_cert,
        Admission::AllowList(allowed),
    );
    assert_outsiders_shut_out(members, outsiders, insider).await;
}
