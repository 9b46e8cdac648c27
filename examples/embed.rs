//! Embedding Wendy in your own program: a complete, small tour of the library.
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! It starts five nodes in this one process (each a real QUIC endpoint on loopback, as they
//! would be on five machines), joins them into one overlay, and then:
//! 1. routes a message to each node's id: a node id is also a key, so it arrives at that node;
//! 2. routes a message to an application key (`Key::from_name`): it arrives at whichever live
//!    node is closest to the key, which the program checks;
//! 3. routes a message that the forward hook vetoes: it never leaves its first node;
//! 4. makes one node leave and watches the others notice;
//!
//! then shuts everything down and exits (0 if all went as described, 1 otherwise).
//!
//! The application hooks are the [`Events`] stream of each node (deliver, node joined, node
//! left, ...; read here by one task per node) and the [`NodeBuilder::on_forward`] callback,
//! which sees every routed message before it leaves a node and may change it or veto it.
//!
//! [`NodeBuilder::on_forward`]: wendy::node::NodeBuilder::on_forward

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wendy::id::{Key, NodeId};
use wendy::identity::Identity;
use wendy::node::{Events, ForwardAction, Forwarded, Node, NodeEvent};

/// How many nodes to run.
const NODES: usize = 5;
/// How long to wait for something the overlay should do in well under a second here.
const PATIENCE: Duration = Duration::from_secs(20);

type Error = Box<dyn std::error::Error>;

/// What the event-watching tasks report back to `main`.
#[derive(Debug)]
enum Seen {
    /// `at` got a routed message.
    Delivered { at: NodeId, text: String },
    /// Some node noticed that `who` left.
    Left { who: NodeId },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    // Identities first, so that every node can be given a readable name in what it prints.
    let identities: Vec<Identity> = (0..NODES).map(|_| Identity::generate()).collect();
    let names: Arc<HashMap<NodeId, String>> = Arc::new(
        identities
            .iter()
            .enumerate()
            .map(|(i, identity)| (identity.node_id(), format!("node{i}")))
            .collect(),
    );
    let name = {
        let names = names.clone();
        move |id: NodeId| names.get(&id).cloned().unwrap_or_else(|| id.to_string())
    };

    // Build and start the nodes. Each gets a forward hook (runs inside the node, must be quick)
    // and a task that reads its events.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut nodes: Vec<Node> = Vec::new();
    let mut watchers = Vec::new();
    for identity in identities {
        let me = name(identity.node_id());
        let hook_name = me.clone();
        let next_name = name.clone();
        let (node, events) = Node::builder(identity)
            .listen("127.0.0.1:0".parse()?)
            .on_forward(move |msg: &Forwarded, payload: &mut Vec<u8>| {
                // The application's policy: nothing marked "forbidden" crosses this node.
                if payload.starts_with(b"forbidden") {
                    println!(
                        "{hook_name} vetoed a message for {} (its next hop was {})",
                        msg.key,
                        next_name(msg.next_hop)
                    );
                    return ForwardAction::Veto;
                }
                // A hook may also change the message: stamp it with the node it passed.
                payload.extend_from_slice(format!(" [forwarded by {hook_name}]").as_bytes());
                ForwardAction::Continue
            })
            .spawn()
            .await?;
        println!("{me} is {} on {}", node.id(), node.addr());
        watchers.push(tokio::spawn(watch(
            node.id(),
            events,
            name.clone(),
            seen_tx.clone(),
        )));
        nodes.push(node);
    }

    // Join: the first node starts the overlay, the others join through it. `join` returns
    // once the node's leaf set has confirmed it, so anyone can route to it at once.
    nodes[0].join(&[]).await?;
    for node in &nodes[1..] {
        node.join(&[nodes[0].addr()]).await?;
    }
    println!("all {NODES} nodes joined");

    // 1. A node id is a key: a message routed to it arrives at that node.
    for target in &nodes[1..] {
        let text = format!("hello {}", name(target.id()));
        nodes[0]
            .route(target.id().to_key(), text.into_bytes())
            .await?;
    }
    for _ in 1..NODES {
        let (at, text) = next_delivery(&mut seen).await?;
        if !text.starts_with(&format!("hello {} ", name(at))) {
            return Err(format!("{} got a message for someone else: {text}", name(at)).into());
        }
    }

    // 2. An application key: the message arrives at the live node closest to it.
    let key = Key::from_name("app:greetings");
    let expected = key.closest(nodes.iter().map(Node::id));
    // Route it from a node that is not the closest, so that it travels.
    let origin = nodes
        .iter()
        .find(|node| Some(node.id()) != expected)
        .ok_or("no nodes")?;
    origin.route(key, b"who is closest?".to_vec()).await?;
    let (at, _) = next_delivery(&mut seen).await?;
    if Some(at) != expected {
        return Err(format!("{key} arrived at {} instead of the closest node", name(at)).into());
    }
    println!("{key} arrived at {}, the closest node to it", name(at));

    // 3. The forward hook vetoes this one before it leaves node1 (routing to node2's id
    // needs at least one hop).
    nodes[1]
        .route(nodes[2].id().to_key(), b"forbidden fruit".to_vec())
        .await?;
    let vetoed = wait_until(|| nodes[1].stats().vetoed == 1).await;
    if !vetoed {
        return Err("the forward hook never vetoed the forbidden message".into());
    }
    println!("node1 counts {} vetoed message", nodes[1].stats().vetoed);

    // 4. A graceful leave: the leaf sets are told at once, and the others see `NodeLeft`.
    let leaver = nodes.pop().ok_or("no nodes")?;
    let leaver_id = leaver.id();
    leaver.leave().await?;
    println!("{} left", name(leaver_id));
    loop {
        match tokio::time::timeout(PATIENCE, seen.recv()).await {
            Ok(Some(Seen::Left { who, .. })) if who == leaver_id => break,
            Ok(Some(Seen::Delivered { at, text })) => {
                // Only the vetoed message could still be travelling: it must never arrive.
                return Err(format!("unexpected delivery at {}: {text}", name(at)).into());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err("nobody noticed the node leave".into()),
        }
    }

    // Stop listening first (the nodes would see each other go), then stop the nodes.
    for watcher in watchers {
        watcher.abort();
    }
    for node in &nodes {
        node.shutdown().await;
    }
    println!("done");
    Ok(())
}

/// Reads one node's events for as long as it runs: prints what happens and reports
/// deliveries and departures to `main`.
async fn watch(
    me: NodeId,
    mut events: Events,
    name: impl Fn(NodeId) -> String,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let who = name(me);
    while let Some(event) = events.recv().await {
        match event {
            NodeEvent::Joined { leaf_set } => {
                println!(
                    "{who} joined; its leaf set holds {} node(s)",
                    leaf_set.len()
                );
            }
            NodeEvent::NodeJoined(id) => println!("{who} sees {} join", name(id)),
            NodeEvent::NodeLeft(id) => {
                println!("{who} sees {} leave", name(id));
                let _ = seen.send(Seen::Left { who: id });
            }
            NodeEvent::Deliver(delivery) => {
                let text = String::from_utf8_lossy(&delivery.payload).into_owned();
                println!(
                    "{who} delivered {text:?} from {} after {} hop(s)",
                    name(delivery.origin),
                    delivery.hops
                );
                let _ = seen.send(Seen::Delivered { at: me, text });
            }
            NodeEvent::RouteFailed { key, .. } => println!("{who}: a message for {key} was lost"),
            NodeEvent::Error(error) => println!("{who}: {error}"),
            // Leaf-set changes, heartbeats, direct messages and streams: not used here.
            _ => {}
        }
    }
}

/// The next routed message delivered anywhere: where, and its text.
async fn next_delivery(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) -> Result<(NodeId, String), Error> {
    loop {
        match tokio::time::timeout(PATIENCE, seen.recv()).await {
            Ok(Some(Seen::Delivered { at, text })) => return Ok((at, text)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err("a routed message never arrived".into()),
        }
    }
}

/// Polls `condition` until it holds or [`PATIENCE`] runs out; returns whether it held.
async fn wait_until(condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
