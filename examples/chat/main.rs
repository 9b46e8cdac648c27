//! A chat over a Wendy overlay: rooms with no server.
//!
//! ```text
//! cargo run --example chat -- --name alice                               # first user: a new overlay
//! cargo run --example chat -- --name bob --join 127.0.0.1:PORT           # PORT: printed by alice
//! cargo run --example chat -- --name carol --join 127.0.0.1:PORT --room lobby --key carol.key
//! ```
//!
//! Type a line to say it in the current room; messages show as `[room] name: text` and status
//! lines start with `***`. Commands: `/join ROOM`, `/leave`, `/who`, `/help`, `/quit` (also on end of
//! input or Ctrl-C). Plain stdin/stdout: it can be scripted and piped.
//!
//! # How it works
//!
//! - Every program is a Wendy node ([`wendy::node::Node`]). A room is a **topic**
//!   ([`wendy::topics`], `chat:ROOM`): members subscribe to it and publish their lines on it.
//!   The topic's root (the live node closest to the topic's key) orders and fans the lines out
//!   down a tree; any Wendy node serves as root or forwarder, a plain `wendy node` included.
//! - A newcomer first gets the lines the root still holds (the topic's replay), so it sees what
//!   was said just before it came. If the root dies or leaves, the next node in line takes over
//!   with those lines, and nobody has to do anything.
//! - Members announce themselves on the room every few seconds (`Presence`, with their display
//!   name); a member not heard from for a while is taken as gone. `/who` lists them and names
//!   the root.
//!
//! The sender shown is the topic message's publisher, verified by its signature; its display
//! name is whatever that node announced (two nodes announcing the same name are shown with a
//! short id, `alice#3fa2`). Display names are not unique or registered: this is a demo of the
//! overlay, not a secure messenger.
//!
//! Files: `protocol.rs` (the messages), `client.rs` (one user's program as a state machine)
//! and this file (the command line and the IO loop).

mod client;
mod protocol;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;
use wendy::identity::Identity;
use wendy::node::{Node, NodeConfig, NodeEvent};

use client::{Action, Client, Flow};
use protocol::{room_topic, topic_room};

/// How often the chat's timers run (presence announcements, expiry).
const TICK: Duration = Duration::from_millis(100);
/// On quit, how long to wait for the root to acknowledge our last messages before leaving
/// anyway.
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
        .config(chat_config())
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
        "*** others can join with: --join {}   (commands: /join ROOM, /leave, /who, /help, /quit)",
        node.addr()
    ));

    let mut client = Client::new(node.id(), args.name.clone());
    // The last sequence number published on each topic: what the root must acknowledge
    // before quitting.
    let mut published = HashMap::new();
    client.join(Instant::now().into_std(), &args.room);
    perform(&node, &mut client, &mut published).await;

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
        perform(&node, &mut client, &mut published).await;
    }

    // Quit: say goodbye to the rooms, give the root a few seconds to acknowledge what we
    // published, then leave the overlay gracefully (the topics hand over what this node
    // roots, and our tree neighbours and leaf-set neighbours are told at once).
    client.leave_all();
    perform(&node, &mut client, &mut published).await;
    let deadline = Instant::now() + QUIT_FLUSH;
    let unacknowledged = |published: &HashMap<String, u64>| {
        published
            .iter()
            .any(|(topic, seq)| node.topics().accepted(topic) < *seq)
    };
    while unacknowledged(&published) && Instant::now() < deadline {
        tokio::select! {
            // Topic messages keep arriving until the node leaves: take them, show nothing.
            event = events.recv() => if event.is_none() { break },
            _ = ticker.tick() => {}
        }
    }
    if unacknowledged(&published) {
        say("*** some messages were not delivered");
    }
    // Leaving fails only if the node has already stopped: nothing left to do then.
    let _ = node.leave().await;
    say("*** bye");
    Ok(())
}

/// The node's settings: the defaults, with topic timers halved so that a room whose root dies
/// carries on sooner (people notice a pause of a few seconds; the cost is a refresh every
/// 250 ms per room).
fn chat_config() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.topics.heartbeat = Duration::from_millis(250);
    config.topics.parent_timeout = Duration::from_millis(750);
    config.topics.retry = Duration::from_millis(500);
    config.topics.gap_wait = Duration::from_millis(250);
    config
}

/// Hands an overlay event to the client: the messages of the rooms' topics; the rest
/// (leaf-set changes, heartbeats, ...) is not the chat's business.
fn on_event(client: &mut Client, event: NodeEvent) {
    match event {
        NodeEvent::Topic(msg) => client.topic_message(Instant::now().into_std(), msg),
        other => debug!(?other, "overlay event"),
    }
}

/// Carries out the client's actions; `published` keeps the last sequence number published on
/// each topic.
async fn perform(node: &Node, client: &mut Client, published: &mut HashMap<String, u64>) {
    // Answering `/who` makes more actions (the answer to print): loop until none is left.
    loop {
        let actions = client.take_actions();
        if actions.is_empty() {
            return;
        }
        for action in actions {
            match action {
                Action::Print(line) => say(&line),
                Action::Subscribe(topic) => {
                    if let Err(error) = node.topics().subscribe(&topic).await {
                        let room = topic_room(&topic).unwrap_or(&topic);
                        say(&format!("*** error: cannot join {room}: {error}"));
                    }
                }
                Action::Unsubscribe(topic) => {
                    // Fails only for a bad name, which `subscribe` refused already.
                    if let Err(error) = node.topics().unsubscribe(&topic).await {
                        debug!(%error, "unsubscribe failed");
                    }
                }
                Action::Publish { topic, msg } => {
                    // Waits only while many of our messages wait for the root's
                    // acknowledgement; the topics send them again until it comes.
                    match node.topics().publish(&topic, msg.encode()).await {
                        Ok(seq) => {
                            published.insert(topic, seq);
                        }
                        Err(error) => {
                            let room = topic_room(&topic).unwrap_or(&topic);
                            say(&format!("*** error: could not send to {room}: {error}"));
                        }
                    }
                }
                Action::Who { room } => {
                    let root = node
                        .topics()
                        .place(&room_topic(&room))
                        .and_then(|place| place.root_node);
                    client.who(&room, root);
                }
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
