//! Topics over real QUIC on loopback (in-process nodes): a tree of 60 subscribers among 64
//! nodes delivers every message of a publisher to each, once and in order, with no node
//! sending a message to more than 16 children; killing the root and two forwarders in the
//! middle of the stream loses no message the publisher was told was accepted.
//!
//! Scale knobs for larger runs: `WENDY_TOPICS_NODES` (default 64), `WENDY_TOPICS_SUBSCRIBERS`
//! (60), `WENDY_TOPICS_MESSAGES` (1000); `WENDY_TOPICS_LOG` (a tracing filter, e.g.
//! `wendy::topics=debug`) logs the nodes to stderr. The figures are printed (`--nocapture`) and kept in
//! BENCHMARKS.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wendy::id::NodeId;
use wendy::node::{Node, NodeConfig, NodeEvent};
use wendy::testing::{Cluster, Via};
use wendy::topics::{topic_key, TopicMessage};

use crate::common::HANG_GUARD;

const TOPIC: &str = "bench";

/// The two 64-node tests take turns: side by side on two cores, each measures the other's
/// load more than its own overlay.
static SCALE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    cluster: Cluster,
    publisher: Node,
    subscribers: Vec<NodeId>,
    epoch: Instant,
}

async fn setup(seed: u64) -> Setup {
    // `WENDY_TOPICS_LOG=wendy::topics=debug` (a tracing filter) logs the nodes to stderr.
    if let Ok(filter) = std::env::var("WENDY_TOPICS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let nodes = knob("WENDY_TOPICS_NODES", 64);
    let subscribers = knob("WENDY_TOPICS_SUBSCRIBERS", 60).min(nodes - 2);
    let mut cluster = Cluster::new(seed).with_event_filter(|e| matches!(e, NodeEvent::Topic(_)));
    cluster
        .grow(nodes, &NodeConfig::default(), Via::Random, &mut |_| {})
        .await
        .expect("grow");
    cluster.settle(HANG_GUARD).await.expect("settle");
    // The subscribers are the first nodes; the publisher the last one that is not the topic's
    // root (ids are random, so the root may be any node; the kill test kills the root and must
    // keep the publisher).
    let root = topic_key(TOPIC)
        .closest(cluster.nodes.iter().map(Node::id))
        .expect("nodes");
    let publisher = cluster.nodes[subscribers..]
        .iter()
        .rev()
        .find(|n| n.id() != root)
        .expect("a non-subscriber that is not the root")
        .clone();
    let mut ids = Vec::new();
    for node in &cluster.nodes[..subscribers] {
        node.topics().subscribe(TOPIC).await.expect("subscribe");
        ids.push(node.id());
    }
    // Every subscriber attached (a parent, or the root).
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let attached = cluster.nodes[..subscribers]
            .iter()
            .filter(|n| {
                n.topics()
                    .place(TOPIC)
                    .is_some_and(|p| p.root || p.parent.is_some())
            })
            .count();
        if attached == subscribers {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{attached}/{subscribers} attached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("set up: {nodes} nodes, {subscribers} subscribers attached");
    Setup {
        cluster,
        publisher,
        subscribers: ids,
        epoch: Instant::now(),
    }
}

fn payload(seq: u64, epoch: Instant) -> Vec<u8> {
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
    bytes
}

fn sent_at(msg: &TopicMessage, epoch: Instant) -> Instant {
    let micros = u64::from_be_bytes(msg.payload[8..16].try_into().expect("16-byte payload"));
    epoch + Duration::from_micros(micros)
}

/// Per subscriber: the sequence numbers delivered, in order, and when.
type Log = HashMap<NodeId, Vec<(u64, Instant)>>;

/// Reads topic events until every subscriber in `expect` has `count` messages.
async fn collect(
    cluster: &mut Cluster,
    log: &mut Log,
    expect: &[NodeId],
    count: u64,
    epoch: Instant,
    latencies: &mut Vec<Duration>,
) {
    let done = |log: &Log| {
        expect
            .iter()
            .all(|id| log.get(id).map_or(0, Vec::len) as u64 >= count)
    };
    // Events that trickle in must not keep a stuck tree waiting for ever.
    let deadline = Instant::now() + 3 * HANG_GUARD;
    while !done(log) {
        let wait = HANG_GUARD.min(deadline.saturating_duration_since(Instant::now()));
        let Some(observed) = cluster.next_event(wait).await else {
            let short: Vec<_> = expect
                .iter()
                .map(|id| log.get(id).map_or(0, Vec::len))
                .filter(|n| (*n as u64) < count)
                .collect();
            panic!(
                "subscribers still short of {count}: {short:?}\n{}",
                tree_dump(cluster, log)
            );
        };
        if let NodeEvent::Topic(msg) = observed.event {
            assert_eq!(msg.topic, TOPIC);
            latencies.push(
                observed
                    .when
                    .saturating_duration_since(sent_at(&msg, epoch)),
            );
            log.entry(observed.at)
                .or_default()
                .push((msg.seq, observed.when));
        }
    }
    eprintln!("every subscriber has {count} messages");
}

/// Every node's place in the tree and counters, for a failure message.
fn tree_dump(cluster: &Cluster, log: &Log) -> String {
    let mut out = String::new();
    for node in &cluster.nodes {
        let got = log.get(&node.id()).map_or(0, Vec::len);
        let stats = node.topics().stats();
        let place = node.topics().place(TOPIC);
        out.push_str(&format!(
            "{} got {got} place {place:?} fetches {} repairs {} joins {} refused {} dup {} \
             dropped {} sends_dropped {} accepted_as_root {} published_and_accepted {}\n",
            node.id(),
            stats.fetches,
            stats.repairs,
            stats.joins,
            stats.refused,
            stats.duplicates,
            stats.dropped,
            stats.sends_dropped,
            stats.accepted_as_root,
            node.topics().accepted(TOPIC),
        ));
    }
    out
}

fn assert_exactly_once_in_order(log: &Log, expect: &[NodeId], count: u64) {
    for id in expect {
        let seqs: Vec<u64> = log[id].iter().map(|(s, _)| *s).collect();
        let want: Vec<u64> = (1..=count).collect();
        assert_eq!(
            seqs, want,
            "subscriber {id}: not each message once, in order"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_once_in_order_and_no_node_sends_to_more_than_16() {
    let _turn = SCALE.lock().await;
    let Setup {
        mut cluster,
        publisher,
        subscribers,
        epoch,
    } = setup(181).await;
    let messages = knob("WENDY_TOPICS_MESSAGES", 1000) as u64;
    let started = Instant::now();
    let sender = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for seq in 1..=messages {
                let got = publisher
                    .topics()
                    .publish(TOPIC, payload(seq, epoch))
                    .await
                    .expect("publish");
                assert_eq!(got, seq);
            }
        })
    };
    let mut log = Log::new();
    let mut latencies = Vec::new();
    collect(
        &mut cluster,
        &mut log,
        &subscribers,
        messages,
        epoch,
        &mut latencies,
    )
    .await;
    let took = started.elapsed();
    sender.await.expect("publisher");
    assert_exactly_once_in_order(&log, &subscribers, messages);

    let mut max_fanout = 0;
    let mut sends = 0;
    let mut depth = 0;
    for node in &cluster.nodes {
        let stats = node.topics().stats();
        max_fanout = max_fanout.max(stats.max_fanout);
        sends += stats.data_sent;
        if let Some(place) = node.topics().place(TOPIC) {
            depth = depth.max(place.depth);
            assert!(place.children.len() <= 16);
        }
    }
    assert!(
        max_fanout <= 16,
        "a node sent one message to {max_fanout} children"
    );
    latencies.sort();
    println!(
        "topics: {} nodes, {} subscribers, {messages} messages in {took:.2?}; delivery latency \
         p50 {:.2?} p99 {:.2?}; most children one node sent a message to: {max_fanout}; tree \
         sends per message: {:.1}; deepest subscriber: {depth} hops below the root",
        cluster.nodes.len(),
        subscribers.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        sends as f64 / messages as f64,
    );
    tokio::time::timeout(HANG_GUARD, cluster.shutdown())
        .await
        .expect("every node stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_root_and_two_forwarders_mid_stream_loses_no_accepted_message() {
    let _turn = SCALE.lock().await;
    let Setup {
        mut cluster,
        publisher,
        subscribers,
        epoch,
    } = setup(182).await;
    let messages = knob("WENDY_TOPICS_MESSAGES", 1000) as u64;
    let root = cluster
        .nodes
        .iter()
        .find(|n| n.topics().place(TOPIC).is_some_and(|p| p.root))
        .expect("a root")
        .clone();
    let forwarders: Vec<Node> = cluster
        .nodes
        .iter()
        .filter(|n| n.id() != publisher.id() && n.id() != root.id())
        .filter(|n| {
            n.topics()
                .place(TOPIC)
                .is_some_and(|p| !p.root && !p.children.is_empty())
        })
        .take(2)
        .cloned()
        .collect();
    assert_eq!(
        forwarders.len(),
        2,
        "the tree has two forwarders below the root"
    );
    let killed: Vec<NodeId> = std::iter::once(root.id())
        .chain(forwarders.iter().map(Node::id))
        .collect();
    assert_ne!(
        root.id(),
        publisher.id(),
        "the publisher is not the root (pick another seed)"
    );

    let (kill_at, killed_tx) = (messages / 2, tokio::sync::oneshot::channel::<Instant>());
    let (killed_tx, killed_rx) = killed_tx;
    let sender = {
        let publisher = publisher.clone();
        let victims: Vec<Node> = std::iter::once(root.clone()).chain(forwarders).collect();
        tokio::spawn(async move {
            let mut killed_tx = Some(killed_tx);
            for seq in 1..=messages {
                publisher
                    .topics()
                    .publish(TOPIC, payload(seq, epoch))
                    .await
                    .expect("publish");
                if seq == kill_at {
                    // Killed at once, all three (a shutdown may take a while to close its
                    // links; the publisher does not wait for it).
                    for victim in &victims {
                        let victim = victim.clone();
                        tokio::spawn(async move { victim.shutdown().await });
                    }
                    if let Some(tx) = killed_tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
            // Every message is accepted in the end: the publisher retries until the (new)
            // root acknowledges.
            let deadline = Instant::now() + HANG_GUARD;
            while publisher.topics().accepted(TOPIC) < messages {
                assert!(Instant::now() < deadline, "not every message was accepted");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let live: Vec<NodeId> = subscribers
        .iter()
        .copied()
        .filter(|id| !killed.contains(id))
        .collect();
    let mut log = Log::new();
    let mut latencies = Vec::new();
    collect(
        &mut cluster,
        &mut log,
        &live,
        messages,
        epoch,
        &mut latencies,
    )
    .await;
    sender.await.expect("publisher");
    assert_eq!(publisher.topics().accepted(TOPIC), messages);
    assert_exactly_once_in_order(&log, &live, messages);

    // Recovery: from the kill until every live subscriber had the first message published
    // after it.
    let killed_at = killed_rx.await.expect("kill time");
    let recovery = live
        .iter()
        .filter_map(|id| {
            log[id]
                .iter()
                .find(|(s, _)| *s == kill_at + 1)
                .map(|(_, t)| *t)
        })
        .max()
        .map(|t| t.saturating_duration_since(killed_at))
        .unwrap_or_default();
    let repairs: u64 = cluster
        .nodes
        .iter()
        .filter(|n| !killed.contains(&n.id()))
        .map(|n| n.topics().stats().repairs)
        .sum();
    println!(
        "topics, root and two forwarders killed after message {kill_at} of {messages}: {} live \
         subscribers got all, once, in order; recovery {recovery:.2?}; {repairs} re-joins",
        live.len()
    );
    tokio::time::timeout(HANG_GUARD, cluster.shutdown())
        .await
        .expect("every node stops");
}
