//! A chat over a Wendy overlay: rooms with no server.
//!
//! ```text
//! cargo run --example chat -- --name alice                               # first user: a new overlay
//! cargo run --example chat -- --name bob --join 127.0.0.1:PORT           # PORT: printed by alice
//! cargo run --example chat -- --name carol --join 127.0.0.1:PORT --room lobby --key carol.key
//! ```
//!
//! Type a line to say it in the current room; messages show as `[room] name: text` and status
//! lines start with `***`. Commands: `/join ROOM`, `/leave`, `/who`, `/quit` (also on end of
//! input or Ctrl-C). Plain stdin/stdout: it can be scripted and piped.
//!
//! # How it works
//!
//! - Every program is a Wendy node ([`wendy::node::Node`]). A room has no fixed server: its
//!   rendezvous is the **root** of `Key::from_name("room:NAME")`, the live node whose id is
//!   closest to that key. Any node can be a room's root, including one not in the room.
//! - Members **route** a subscription to the room's key every two seconds (soft state: the root
//!   forgets members it stops hearing from). Writers route their messages to the key too.
//! - The root **sends** each message directly to every member, collects their
//!   acknowledgements, then acknowledges the message to its writer, who repeats it until then.
//! - The root copies the room (members, recent messages) to the next closest node. If the root
//!   dies, the overlay routes to that node, which carries on as the root at once; members'
//!   re-subscriptions reach it within a refresh anyway, and nobody has to do anything.
//!
//! Display names are not authenticated: the overlay authenticates nodes, and any node can
//! claim any name, so this is a demo of the overlay, not a secure messenger.
//!
//! Files: `protocol.rs` (the messages), `room.rs` (a room as its root keeps it), `client.rs`
//! (one user's program as a state machine) and this file (the command line and the IO loop).

mod client;
mod protocol;
mod room;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;
use wendy::identity::Identity;
use wendy::node::{Node, NodeError, NodeEvent};

use client::{Action, Client, Flow};
use protocol::Wire;

/// How often the chat's timers run (subscription refresh, retries, expiry).
const TICK: Duration = Duration::from_millis(100);
/// On quit, how long to wait for unacknowledged posts before leaving anyway.
const QUIT_FLUSH: Duration = Duration::from_secs(5);

/// A chat over a Wendy overlay.
#[derive(Debug, Parser)]
#[command(name = "chat")]
struct Args {
    /// Your display name.
    #[arg(long)]
    name: String,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address (HOST:PORT) of any node already in the overlay (repeat for fallbacks). Without
    /// it, this node starts a new overlay.
    #[arg(long, value_name = "ADDR")]
    join: Vec<String>,
    /// The room to start in.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Node key file (`wendy keygen --out FILE`); default: a new key for this run.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr and are off unless asked for (RUST_LOG=wendy=debug), so that stdout
    // carries only the chat.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.name.trim().is_empty() || args.name.len() > protocol::MAX_NAME {
        return Err(format!(
            "--name must be 1 to {} bytes, not blank",
            protocol::MAX_NAME
        ));
    }
    let identity = match &args.key {
        Some(path) => Identity::load(path)
            .map_err(|e| format!("cannot use key file {}: {e}", path.display()))?,
        None => Identity::generate(),
    };
    let (node, mut events) = Node::builder(identity)
        .listen(args.listen)
        .spawn()
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    say(&format!(
        "*** {} is node {} listening on {}",
        args.name,
        node.id(),
        node.addr()
    ));
    let mut bootstrap = Vec::new();
    for addr in &args.join {
        let found = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|e| format!("--join {addr}: {e} (expected HOST:PORT)"))?;
        bootstrap.extend(found);
    }
    node.join(&bootstrap)
        .await
        .map_err(|e| format!("cannot join the overlay: {e}"))?;
    match args.join.is_empty() {
        true => say("*** started a new overlay"),
        false => say("*** joined the overlay"),
    }
    say(&format!(
        "*** others can join with: --join {}   (commands: /join ROOM, /leave, /who, /quit)",
        node.addr()
    ));

    let mut client = Client::new(node.id(), args.name.clone(), rand::random());
    client.join(Instant::now().into_std(), &args.room);
    perform(&node, &mut client).await;

    let mut lines = stdin_lines();
    let mut ticker = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    if client.typed(Instant::now().into_std(), &line) == Flow::Quit {
                        break;
                    }
                }
                None => break, // end of input: quit like /quit
            },
            event = events.recv() => match event {
                Some(event) => on_event(&mut client, event),
                None => {
                    say("*** the node stopped");
                    return Ok(());
                }
            },
            _ = ticker.tick() => client.tick(Instant::now().into_std()),
            _ = &mut ctrl_c => break,
        }
        perform(&node, &mut client).await;
    }

    // Quit: say goodbye to the rooms, give unacknowledged posts a few seconds, then leave the
    // overlay gracefully (our leaf-set neighbours are told at once).
    client.leave_all();
    perform(&node, &mut client).await;
    let deadline = Instant::now() + QUIT_FLUSH;
    while client.has_unsent_posts() && Instant::now() < deadline {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => on_event(&mut client, event),
                None => break,
            },
            _ = ticker.tick() => client.tick(Instant::now().into_std()),
        }
        perform(&node, &mut client).await;
    }
    if client.has_unsent_posts() {
        say("*** some messages were not delivered");
    }
    // Leaving fails only if the node has already stopped: nothing left to do then.
    let _ = node.leave().await;
    say("*** bye");
    Ok(())
}

/// Hands an overlay event to the client: routed deliveries and direct messages carry chat
/// messages; the rest (leaf-set changes, heartbeats, ...) is not the chat's business.
fn on_event(client: &mut Client, event: NodeEvent) {
    let now = Instant::now().into_std();
    match event {
        NodeEvent::Deliver(delivery) => match Wire::decode(&delivery.payload) {
            Some(msg) => client.routed(now, delivery.key, delivery.origin, msg),
            None => debug!(origin = %delivery.origin, "ignored a routed message that is not chat"),
        },
        NodeEvent::Direct { from, payload } => match Wire::decode(&payload) {
            Some(msg) => client.direct(now, from, msg),
            None => debug!(%from, "ignored a direct message that is not chat"),
        },
        NodeEvent::Joined { leaf_set } | NodeEvent::LeafSetChanged { leaf_set } => {
            client.leaf_set_changed(leaf_set);
        }
        other => debug!(?other, "overlay event"),
    }
}

/// Carries out the client's actions.
async fn perform(node: &Node, client: &mut Client) {
    for action in client.take_actions(Instant::now().into_std()) {
        match action {
            Action::Print(line) => say(&line),
            Action::Route { key, msg } => {
                // Hands the message to the node's routing loop; it fails only once the node
                // has stopped, which the event loop notices.
                if let Err(error) = node.route(key, msg.encode()).await {
                    debug!(%error, "route failed");
                }
            }
            Action::Send { to, msg } => {
                // Sending may dial the peer: do it in the background so that a slow or dead
                // peer never holds up the chat. Lost sends are repeated by the chat's own
                // acknowledgements and refreshes.
                let node = node.clone();
                tokio::spawn(async move {
                    let payload = msg.encode();
                    match node.send(to, payload.clone()).await {
                        Ok(()) => {}
                        // `send` needs an address; a node that is in none of our tables (in
                        // a large overlay, most members of a big room) is reached by routing
                        // to its id instead: the live node closest to an id is that node.
                        Err(NodeError::UnknownPeer(_)) => {
                            if let Err(error) = node.route(to.to_key(), payload).await {
                                debug!(%to, %error, "route to node failed");
                            }
                        }
                        Err(error) => debug!(%to, %error, "send failed"),
                    }
                });
            }
        }
    }
}

/// Prints a line to stdout (line-buffered, so a pipe sees every line as it is printed). A
/// closed stdout (the reader of the pipe went away) is not worth crashing the node for.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Lines typed on stdin. A plain thread reads them: a blocking read cannot be cancelled, and
/// a thread, unlike tokio's stdin, does not keep the program from exiting after `/quit`.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
