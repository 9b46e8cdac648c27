//! Address discovery and reachability on loopback: nodes learn they are public once another
//! node dials them back, and the protocol's bounds hold against a peer that floods or lies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wendy::identity::Identity;
use wendy::node::Node;
use wendy::reach::{
    ReachMessage, ReachStatus, Reachability, CHECKS_PER_MINUTE, DIAL_BACKS_PER_MINUTE,
};
use wendy::transport::TransportEvent;
use wendy::wire::{Body, ErrorCode};

use crate::common::cluster::{poll_until, start};
use crate::common::{self, eventually};

async fn three_nodes() -> Vec<Node> {
    let builders = (0..3)
        .map(|_| Node::builder(Identity::generate()))
        .collect();
    start(builders).await.0
}

async fn wait_for(node: &Node, what: &str, pred: impl Fn(&ReachStatus) -> bool) -> ReachStatus {
    let mut reach: watch::Receiver<ReachStatus> = node.reachability();
    let found = tokio::time::timeout(common::HANG_GUARD, async {
        loop {
            let now = reach.borrow_and_update().clone();
            if pred(&now) {
                return now;
            }
            reach.changed().await.expect("node stopped");
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("hang guard: {what}; last: {:?}", reach.borrow()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_nodes_are_dialled_back_and_report_public_with_their_address() {
    let nodes = three_nodes().await;
    for node in &nodes {
        let status = wait_for(node, "public", |s| {
            s.reachability == Reachability::Public && !s.observed_addrs.is_empty()
        })
        .await;
        assert_eq!(status.observed_addrs, vec![node.addr()], "{status:?}");
        let shown = node.status().await.unwrap();
        assert_eq!(shown.reachability, Reachability::Public);
        assert_eq!(shown.observed_addrs, vec![node.addr()]);
    }
    let dial_backs: u64 = nodes
        .iter()
        .map(|n| n.reachability().borrow().dial_backs)
        .sum();
    assert!(dial_backs >= 3, "each node was dialled back: {dial_backs}");
}

/// A peer that answers every reachability request with a lie: "you are at 203.0.113.9:9" and
/// "you are reachable".
fn liar(mut peer: common::Node, answered: Arc<AtomicU64>) -> wendy::transport::Transport {
    let transport = peer.transport.clone();
    tokio::spawn(async move {
        while let Some(event) = peer.events.recv().await {
            if let TransportEvent::Request { body, reply, .. } = event {
                let lie: SocketAddr = "203.0.113.9:9".parse().unwrap();
                let answer = match body {
                    Body::Reach(ReachMessage::Observe) => {
                        Body::Reach(ReachMessage::Observed { addr: lie })
                    }
                    Body::Reach(ReachMessage::Check) => Body::Reach(ReachMessage::CheckResult {
                        reachable: true,
                        addr: lie,
                    }),
                    _ => Body::Pong { nonce: 0 },
                };
                answered.fetch_add(1, Ordering::Relaxed);
                let _ = reply.reply(&answer).await;
            }
        }
    });
    transport
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lying_peer_makes_a_node_believe_neither_an_address_nor_that_it_is_public() {
    let (node, _events) = Node::builder(Identity::generate()).spawn().await.unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let transport = liar(common::Node::open().await, answered.clone());
    // The node's only link: every observation and check it makes goes to the liar.
    transport
        .request(node.id(), node.addr(), &Body::Ping { nonce: 1 })
        .await
        .unwrap();
    eventually(|| answered.load(Ordering::Relaxed) >= 6).await;
    let status = node.reachability().borrow().clone();
    assert_eq!(status.reachability, Reachability::Unknown, "{status:?}");
    assert!(status.observed_addrs.is_empty(), "{status:?}");
    let shown = node.status().await.unwrap();
    assert_eq!(shown.reachability.as_str(), "private");
    assert!(shown.observed_addrs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_reachability_requests_is_rate_limited() {
    let nodes = three_nodes().await;
    let target = &nodes[0];
    let flooder = common::Node::open().await;
    let ask = |body: Body| {
        let transport = flooder.transport.clone();
        let (id, addr) = (target.id(), target.addr());
        async move { transport.request(id, addr, &body).await.unwrap() }
    };
    let refused = |answer: &Body| matches!(answer, Body::Error { code, .. } if *code == ErrorCode::Refused as u16);

    // Checks: each would make the target ask another node for a dial-back.
    let mut served = 0;
    for _ in 0..20 {
        if !refused(&ask(Body::Reach(ReachMessage::Check)).await) {
            served += 1;
        }
    }
    assert_eq!(served, CHECKS_PER_MINUTE, "checks served in one minute");

    // Dial-backs: each would make the target dial; it dials at most its budget.
    let before = target.reachability().borrow().dial_backs;
    let victim = &nodes[1];
    let mut dialled = 0;
    for _ in 0..20 {
        let answer = ask(Body::Reach(ReachMessage::DialBack {
            peer: victim.id(),
            addr: victim.addr(),
        }))
        .await;
        if !refused(&answer) {
            dialled += 1;
        }
    }
    assert_eq!(dialled, DIAL_BACKS_PER_MINUTE);
    poll_until("the refusals are counted", || async {
        let status = target.reachability().borrow().clone();
        status.refused >= u64::from(40 - CHECKS_PER_MINUTE - DIAL_BACKS_PER_MINUTE)
            && status.dial_backs - before == u64::from(DIAL_BACKS_PER_MINUTE)
    })
    .await;

    // Everyone else is still served.
    let good = common::Node::open().await;
    let answer = good
        .transport
        .request(
            target.id(),
            target.addr(),
            &Body::Reach(ReachMessage::Observe),
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        Body::Reach(ReachMessage::Observed { addr: good.addr() })
    );
}

/// How long a node that drops unsolicited datagrams (forced private, as behind a NAT) takes to
/// learn it is private, when the nodes that dial it back give up after `dial_back_timeout`.
async fn learns_private_after(dial_back_timeout: Duration) -> Duration {
    let config = || wendy::node::NodeConfig {
        limits: wendy::transport::Limits {
            dial_back_timeout,
            ..wendy::transport::Limits::default()
        },
        ..wendy::node::NodeConfig::default()
    };
    let builders = (0..3)
        .map(|_| Node::builder(Identity::generate()).config(config()))
        .collect();
    let (nodes, _) = start(builders).await;
    let (private, _events) = Node::builder(Identity::generate())
        .config(config())
        .relay(wendy::relay::RelayConfig {
            private: true,
            ..wendy::relay::RelayConfig::default()
        })
        .spawn()
        .await
        .unwrap();
    // One link out, as a node behind a NAT has after dialling its bootstrap.
    private
        .send_to(nodes[0].id(), nodes[0].addr(), b"hello".to_vec())
        .await
        .unwrap();
    let status = wait_for(&private, "private", |s| {
        s.reachability == Reachability::Private
    })
    .await;
    status.learned_after.expect("known, so timed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_nat_learns_it_is_private_once_the_dial_back_gives_up() {
    let connect_timeout = wendy::transport::Limits::default().connect_timeout;
    let slow = learns_private_after(connect_timeout).await;
    let fast = learns_private_after(wendy::transport::Limits::default().dial_back_timeout).await;
    println!(
        "reach: a private node learned it is private after {fast:?} (dial-back timeout {:?}); \
         {slow:?} with the connect timeout ({connect_timeout:?})",
        wendy::transport::Limits::default().dial_back_timeout
    );
    assert!(fast < slow, "{fast:?} vs {slow:?}");
}
