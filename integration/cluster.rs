//! Real nodes over real QUIC on loopback: joins, routing, failures, leave.

use std::time::Duration;

use wendy::id::{Key, NodeId};
use wendy::identity::Identity;
use wendy::node::{Events, ForwardAction, Node, NodeConfig, NodeError, NodeEvent};

use crate::common;
use common::cluster;

async fn spawn(seed: u8) -> (Node, Events) {
    Node::builder(Identity::from_seed([seed; 32]))
        .seed(u64::from(seed))
        .spawn()
        .await
        .expect("spawn node")
}

async fn wait_for<T>(events: &mut Events, mut pick: impl FnMut(&NodeEvent) -> Option<T>) -> T {
    let wait = async {
        loop {
            let event = events.recv().await.expect("node stopped");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("event did not arrive (hang guard)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_know_each_other() {
    let (a, _ea) = spawn(1).await;
    let (b, _eb) = spawn(2).await;
    a.join(&[]).await.unwrap();
    b.join(&[a.addr()]).await.unwrap();
    // Allow the announce to land at a (a admits b to its leaf set on b's join probe, to its
    // routing table once b announces itself as active and a has measured it), and b's
    // measurement of a to reach b's core (its link's handshake, an event of its own).
    cluster::poll_until(
        "a and b never held each other in both leaf set and routing table",
        || async {
            let sa = a.status().await.unwrap();
            let sb = b.status().await.unwrap();
            sa.leaf_set.contains(&b.id())
                && sa.routing_table.iter().any(|p| p.id == b.id())
                && sb.leaf_set.contains(&a.id())
                && sb.routing_table.iter().any(|p| p.id == a.id())
        },
    )
    .await;
    let sa = a.status().await.unwrap();
    let sb = b.status().await.unwrap();
    assert!(sa.leaf_set.contains(&b.id()), "a's leaf set lacks b");
    assert!(sb.leaf_set.contains(&a.id()), "b's leaf set lacks a");
    assert!(
        sa.routing_table.iter().any(|p| p.id == b.id()),
        "a's table lacks b"
    );
    assert!(
        sb.routing_table.iter().any(|p| p.id == a.id()),
        "b's table lacks a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_message_reaches_closest() {
    let mut nodes = Vec::new();
    for seed in 1..=5u8 {
        nodes.push(spawn(seed).await);
    }
    nodes[0].0.join(&[]).await.unwrap();
    let first = nodes[0].0.addr();
    for (node, _) in &nodes[1..] {
        node.join(&[first]).await.unwrap();
    }
    let ids: Vec<NodeId> = nodes.iter().map(|(n, _)| n.id()).collect();
    let key = Key::from_name("hello");
    let root = key.closest(ids.iter().copied()).unwrap();
    nodes[1].0.route(key, b"hi".to_vec()).await.unwrap();
    let (_, events) = nodes.iter_mut().find(|(n, _)| n.id() == root).unwrap();
    let d = wait_for(events, |e| match e {
        NodeEvent::Deliver(d) => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(d.payload, &b"hi"[..]);
    assert_eq!(d.key, key);
}

#[test]
fn demo_command_routes_every_message_to_the_oracle_root() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wendy"))
        .args(["demo", "--nodes", "8", "--messages", "300", "--json"])
        .output()
        .expect("run wendy demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("demo --json prints one JSON object");
    assert_eq!(report["nodes"], 8);
    assert_eq!(report["messages"], 300);
    assert_eq!(report["delivered_correct"], 300);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["misdelivered"], 0);
    for field in ["mean_hops", "join_ms_p50", "route_ms_p50", "route_ms_p99"] {
        assert!(report[field].is_number(), "missing {field}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_by_the_leaf_set() {
    // Failure detection is pushed an hour away (probes and QUIC idle timeout), so only the leave
    // notice itself can make `a` see `c` go within the test's hang guard.
    async fn spawn_slow_detection(seed: u8) -> (Node, Events) {
        let mut config = NodeConfig::default();
        config.pastry.probe_period = Duration::from_secs(3600);
        config.pastry.probe_timeout = Duration::from_secs(3600);
        config.limits.max_idle_timeout = Duration::from_secs(3600);
        Node::builder(Identity::from_seed([seed; 32]))
            .config(config)
            .spawn()
            .await
            .expect("spawn node")
    }
    let (a, mut ea) = spawn_slow_detection(11).await;
    let (b, _eb) = spawn_slow_detection(12).await;
    let (c, mut ec) = spawn_slow_detection(13).await;
    a.join(&[]).await.unwrap();
    b.join(&[a.addr()]).await.unwrap();
    c.join(&[b.addr()]).await.unwrap();
    let leaver = c.id();
    // `c` is active once its own leaf set is confirmed; `a` learns of it when c's announcement
    // lands. Leave only once `a` holds `c`, so the notice has someone to tell.
    cluster::poll_until("a never learned of c", || async {
        a.status().await.unwrap().leaf_set.contains(&leaver)
    })
    .await;
    c.leave().await.unwrap();
    let left = wait_for(&mut ea, |e| match e {
        NodeEvent::NodeLeft(id) if *id == leaver => Some(*id),
        _ => None,
    })
    .await;
    assert_eq!(left, leaver);
    let status = a.status().await.unwrap();
    assert!(
        !status.leaf_set.contains(&leaver),
        "a still holds the leaver"
    );
    assert_stopped(&c, &mut ec).await;
}

/// A stopped node refuses calls with `Closed`, and its application's event stream ends.
async fn assert_stopped(node: &Node, events: &mut Events) {
    let routed = node.route(Key::from_name("after"), b"x".to_vec()).await;
    assert!(matches!(routed, Err(NodeError::Closed)), "{routed:?}");
    assert!(matches!(node.status().await, Err(NodeError::Closed)));
    let sent = node.send(NodeId::from_u128(1), b"x".to_vec()).await;
    assert!(matches!(sent, Err(NodeError::Closed)), "{sent:?}");
    let drained = async { while events.recv().await.is_some() {} };
    tokio::time::timeout(Duration::from_secs(30), drained)
        .await
        .expect("the stopped node's events never ended (hang guard)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_node_refuses_calls_and_ends_its_events() {
    let (a, mut ea) = spawn(14).await;
    a.join(&[]).await.unwrap();
    a.route(Key::from_name("before"), b"x".to_vec())
        .await
        .expect("an active node routes");
    a.shutdown().await;
    assert_stopped(&a, &mut ea).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_nodes_match_the_oracle() {
    common::log_from_env();
    let mut nodes = Vec::new();
    for seed in 100..132u8 {
        nodes.push(spawn(seed).await);
    }
    nodes[0].0.join(&[]).await.unwrap();
    let first = nodes[0].0.addr();
    for (node, _) in &nodes[1..] {
        node.join(&[first]).await.unwrap();
    }
    let ids: Vec<NodeId> = nodes.iter().map(|(n, _)| n.id()).collect();
    // Leaf sets converge as announcements land; poll (hang-guarded) until they equal the
    // oracle's exactly.
    let just_nodes: Vec<Node> = nodes.iter().map(|(n, _)| n.clone()).collect();
    cluster::converge(&just_nodes, &ids).await;

    // 1,000 routed messages, each delivered once at the true closest node within the bound.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (nodes, all_events): (Vec<Node>, Vec<Events>) = nodes.into_iter().unzip();
    for (node, mut events) in nodes.iter().zip(all_events) {
        let at = node.id();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let NodeEvent::Deliver(d) = event {
                    let _ = tx.send((at, d));
                }
            }
        });
    }
    let bound = 3; // ceil(log16 32) + 1
    let mut expected = std::collections::HashMap::new();
    for i in 0..1000u64 {
        let key =
            Key::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        let from = &nodes[(i as usize * 7) % nodes.len()];
        from.route(key, i.to_be_bytes().to_vec()).await.unwrap();
        expected.insert(i, (key.closest(ids.iter().copied()).unwrap(), from.id()));
    }
    // Where and how each message arrived, to tell a second copy's story if one comes.
    let mut seen: std::collections::HashMap<u64, (NodeId, u8)> = std::collections::HashMap::new();
    while seen.len() < 1000 {
        let (at, d) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a routed message was lost (hang guard)")
            .expect("channel open");
        let seq = u64::from_be_bytes(d.payload[..8].try_into().unwrap());
        let (root, from) = expected[&seq];
        if let Some(&(first_at, first_hops)) = seen.get(&seq) {
            let mut counters = Vec::new();
            for node in &nodes {
                let status = node.status().await.unwrap();
                if status.reroutes > 0 || status.duplicates_suppressed > 0 {
                    counters.push(format!(
                        "{}: {} re-routed, {} duplicates suppressed",
                        node.id(),
                        status.reroutes,
                        status.duplicates_suppressed
                    ));
                }
            }
            panic!(
                "message {seq} (id {} of {}) delivered twice: to the root {root}, first at \
                 {first_at} after {first_hops} hops ({}), again at {at} after {} hops ({}); \
                 nodes that re-routed or suppressed: {counters:#?}",
                d.id,
                d.origin,
                if first_at == root {
                    "the root"
                } else {
                    "NOT the root"
                },
                d.hops,
                if at == root {
                    "the root"
                } else {
                    "NOT the root"
                },
            );
        }
        seen.insert(seq, (at, d.hops));
        assert_eq!(
            at, root,
            "message {seq} from {from} delivered at the wrong node after {} hops",
            d.hops
        );
        assert!(d.hops <= bound, "message {seq} took {} hops", d.hops);
    }
    // Every hop hands its custody on: once all acks are in, the messages were carried on their
    // first try (a hop whose acks never came would have re-routed every message it forwarded).
    // A rare late ack on a loaded machine may cost a re-route, not one in ten.
    cluster::poll_until("every hop handed its custody on", || async {
        for node in &nodes {
            if node.status().await.unwrap().in_custody > 0 {
                return false;
            }
        }
        true
    })
    .await;
    let mut reroutes = 0;
    for node in &nodes {
        reroutes += node.status().await.unwrap().reroutes;
    }
    assert!(reroutes < 100, "{reroutes} of 1000 messages were re-routed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_33_joins_consistently_and_owns_its_keys() {
    let builders = (140..172u8)
        .map(|seed| Node::builder(Identity::from_seed([seed; 32])).seed(u64::from(seed)))
        .collect();
    let (mut nodes, mut observations) = cluster::start(builders).await;
    let mut ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    cluster::converge(&nodes, &ids).await;

    let (newcomer, events) = Node::builder(Identity::from_seed([172; 32]))
        .seed(172)
        .spawn()
        .await
        .unwrap();
    observations.watch(&newcomer, events);
    let started = tokio::time::Instant::now();
    newcomer.join(&[nodes[7].addr()]).await.unwrap();
    let join_time = started.elapsed();
    eprintln!(
        "node 33 joined a 32-node cluster in {:.1} ms",
        join_time.as_secs_f64() * 1e3
    );
    ids.push(newcomer.id());
    nodes.push(newcomer.clone());

    // No waiting: once `join` has resolved, the newcomer's two ring neighbours (the members
    // that would otherwise deliver its keys) hold it, and it holds them.
    let me = newcomer.id().as_u128();
    let others: Vec<NodeId> = ids[..32].to_vec();
    let right_neighbour = *others
        .iter()
        .min_by_key(|id| id.as_u128().wrapping_sub(me))
        .unwrap();
    let left_neighbour = *others
        .iter()
        .min_by_key(|id| me.wrapping_sub(id.as_u128()))
        .unwrap();
    let own_leaf_set = newcomer.status().await.unwrap().leaf_set;
    for neighbour in [left_neighbour, right_neighbour] {
        let node = nodes.iter().find(|n| n.id() == neighbour).unwrap();
        assert!(
            node.status()
                .await
                .unwrap()
                .leaf_set
                .contains(&newcomer.id()),
            "right after the join, neighbour {neighbour} does not know the newcomer"
        );
        assert!(
            own_leaf_set.contains(&neighbour),
            "right after the join, the newcomer lacks its neighbour {neighbour}"
        );
    }

    // Right away too: keys the newcomer owns (its id and the ring around it up to half-way to
    // its neighbours), each routed from every old member, arrive at the newcomer.
    let right = right_neighbour.as_u128().wrapping_sub(me);
    let left = me.wrapping_sub(left_neighbour.as_u128());
    let mut keys = vec![Key::from_u128(me)];
    for step in 1..4u128 {
        keys.push(Key::from_u128(me.wrapping_add(right / 2 * step / 4)));
        keys.push(Key::from_u128(me.wrapping_sub(left / 2 * step / 4)));
    }
    // Each key from each of the 32 old members (`route_all` takes senders in a cycle of 32).
    let senders = &nodes[..32];
    let batch: Vec<Key> = keys
        .iter()
        .flat_map(|&key| std::iter::repeat(key).take(senders.len()))
        .collect();
    let sent = cluster::route_all(senders, &batch, 0).await;
    let arrived = cluster::expect_deliveries(&mut observations, &sent, &ids, |_| {}).await;
    assert!(arrived.values().all(|a| a.at == newcomer.id()));

    // The rest of the leaf sets (farther members learn of the newcomer from its announcement
    // and their neighbours) then settle to exactly the oracle's.
    cluster::converge(&nodes, &ids).await;
    eprintln!(
        "all 33 leaf sets equal the oracle {:.1} ms after the join started",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(arrived.values().all(|a| a.at == newcomer.id()));
}

/// Polls `future` to completion on this thread, outside any tokio runtime (as an application
/// with another executor would).
fn block_on_plain_thread<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_called_from_outside_tokio_are_delivered() {
    let (a, _ea) = spawn(15).await;
    let (b, mut eb) = spawn(16).await;
    a.join(&[]).await.unwrap();
    b.join(&[a.addr()]).await.unwrap();
    let target = Key::from(b.id());
    let caller = a.clone();
    let routed = std::thread::spawn(move || {
        block_on_plain_thread(caller.route(target, b"from a plain thread".to_vec()))
    })
    .join()
    .expect("the routing thread panicked");
    routed.expect("route from a plain thread");
    let payload = wait_for(&mut eb, |e| match e {
        NodeEvent::Deliver(d) => Some(d.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(payload, &b"from a plain thread"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_forward_hook_drops_only_its_message() {
    let (a, mut ea) = Node::builder(Identity::from_seed([17; 32]))
        .seed(17)
        .on_forward(|_, payload| {
            assert!(payload.as_slice() != b"boom", "the hook fails on this one");
            ForwardAction::Continue
        })
        .spawn()
        .await
        .expect("spawn node");
    let (b, mut eb) = spawn(18).await;
    a.join(&[]).await.unwrap();
    b.join(&[a.addr()]).await.unwrap();
    cluster::poll_until("a never held b in its leaf set", || async {
        a.status().await.unwrap().leaf_set.contains(&b.id())
    })
    .await;
    a.route(Key::from(b.id()), b"boom".to_vec()).await.unwrap();
    let error = wait_for(&mut ea, |e| match e {
        NodeEvent::Error(message) => Some(message.clone()),
        _ => None,
    })
    .await;
    assert!(error.contains("forward hook panicked"), "{error}");
    // The node and its links carry on: the next message goes through.
    a.route(Key::from(b.id()), b"fine".to_vec()).await.unwrap();
    let payload = wait_for(&mut eb, |e| match e {
        NodeEvent::Deliver(d) => Some(d.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(payload, &b"fine"[..], "the vetoed message was delivered");
}
