//! What `wendy node` prints on stdout: events as JSON lines (a contract other tools parse) or
//! as human-readable lines.
//!
//! The JSON names and fields are fixed: new events and fields may be added, existing ones are
//! never renamed or removed. Every line is flushed at once, so a tool reading a pipe sees each
//! event as it happens. Logs never go to stdout.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

use wendy::id::{Key, NodeId};
use wendy::mesh::{ExposedStatus, ForwardStatus, MeshStatus};
use wendy::node::{LinkPath, NodeEvent, PeerStatus, Status};

use super::config::EventFormat;

impl Out {
    /// The `mode` event for a mode change.
    pub(crate) fn mode(status: &wendy::node::ModeStatus) -> Self {
        Self::Mode {
            mode: if status.private { "private" } else { "public" },
            addr: status.addr.to_string(),
            relays: status.relays.iter().map(ToString::to_string).collect(),
            switches: status.switches,
            took_ms: status
                .switch_took
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The `reachability` event for a reachability status.
    pub(crate) fn reachability(status: &wendy::reach::ReachStatus) -> Self {
        Self::Reachability {
            reachability: status.reachability.as_str(),
            observed_addrs: status
                .observed_addrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            learned_after_ms: status
                .learned_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// One line of output. `event` is the JSON tag; the field names are the contract.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Out {
    /// The node is bound and reachable at `addr`.
    Listening { id: String, addr: String },
    /// The node is part of an overlay.
    Joined { id: String, leaf_set: Vec<String> },
    /// A routed message arrived here, at the root of its key.
    Deliver {
        key: String,
        from: String,
        hops: u8,
        payload: String,
        msg_id: u64,
    },
    /// A message sent to this node with `send`.
    Direct { from: String, payload: String },
    /// A node entered this node's routing state.
    NodeJoined { id: String },
    /// A node left this node's leaf set (failed or left gracefully).
    NodeLeft { id: String },
    /// The leaf set changed.
    LeafSetChanged { leaf_set: Vec<String> },
    /// A leaf-set neighbour's heartbeat.
    Heartbeat { from: String },
    /// A message routed from here was given up.
    RouteFailed { key: String, msg_id: u64 },
    /// A `route` command was accepted.
    Routed { key: String, msg_id: u64 },
    /// A `send` command was carried out.
    Sent { to: String },
    /// A service is published to the mesh as `name`, tunnelled to `target`.
    Exposed { name: String, target: String },
    /// Connections to `listen` are tunnelled to a provider of `name`.
    Forwarding { listen: String, name: String },
    /// This node left the overlay and is exiting.
    Left { id: String },
    /// Something went wrong; unless `fatal`, the node keeps running.
    Error {
        message: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        fatal: bool,
        /// Reported by the node (a refused peer, a bad frame), not an answer to a command:
        /// the node is fine, so the text line is a warning.
        #[serde(skip)]
        from_node: bool,
    },
    /// The answer to `status`.
    Status(Box<StatusOut>),
    /// The admin endpoint (`--admin`) serves at `addr`.
    Admin { addr: String },
    /// The answer to `services`: the service names this node knows of, sorted.
    Services { names: Vec<String> },
    /// This node's reachability became known or changed (`public` or `private`), with the
    /// addresses peers see it at and how long after start it was first known.
    Reachability {
        reachability: &'static str,
        observed_addrs: Vec<String>,
        learned_after_ms: Option<u64>,
    },
    /// This node turned private (homed on relays, advertising its synthetic address) or public
    /// (advertising its own address, its relay record withdrawn) because the reachability
    /// verdict changed.
    Mode {
        mode: &'static str,
        addr: String,
        relays: Vec<String>,
        switches: u64,
        took_ms: Option<u64>,
    },
    /// A message of a topic this node subscribes to: the publisher (`from`, verified by its
    /// signature) and its sequence number (per publisher, each once and in order).
    TopicMessage {
        topic: String,
        from: String,
        seq: u64,
        text: String,
    },
    /// A `subscribe` command was carried out.
    Subscribed { topic: String },
    /// An `unsubscribe` command was carried out.
    Unsubscribed { topic: String },
    /// A `publish` command was accepted (numbered `seq`; the root acknowledges it later).
    Published { topic: String, seq: u64 },
}

/// The `status` object: `id`, `addr`, `leaf_set`, `routing_table`, `connections`, and more.
#[derive(Debug, Serialize)]
pub(crate) struct StatusOut {
    id: String,
    addr: String,
    active: bool,
    leaf_set: Vec<String>,
    routing_table: Vec<RouteEntryOut>,
    neighbourhood: Vec<PeerOut>,
    connections: Vec<ConnectionOut>,
    /// The relays this node is homed on (empty unless it is private).
    relays: Vec<String>,
    /// What this node carries as a relay (null unless it serves as one).
    relay: Option<wendy::relay::RelayServerStatus>,
    stats: wendy::node::NodeStats,
    control_msgs_sent: u64,
    control_bytes_sent: u64,
    /// Services this node exposes (service mesh).
    exposed: Vec<ExposedStatus>,
    /// Services this node forwards (service mesh).
    forwarded: Vec<ForwardStatus>,
    /// Service records this node holds as a registry root or replica.
    records_held: usize,
    /// The service names this node knows of (service mesh), sorted.
    services: Vec<String>,
    /// `public` (another node dialled this one back) or `private`.
    reachability: &'static str,
    /// The addresses at least two peers see this node at (`ip:port`).
    observed_addrs: Vec<String>,
    /// Hole punching: direct links, attempts, successes, time to direct, fallbacks.
    punch: wendy::punch::PunchStatus,
}

#[derive(Debug, Serialize)]
struct RouteEntryOut {
    id: String,
    addr: String,
    rtt_ms: Option<f64>,
    row: usize,
    col: u8,
}

#[derive(Debug, Serialize)]
struct PeerOut {
    id: String,
    addr: String,
    rtt_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ConnectionOut {
    id: String,
    addr: String,
    rtt_ms: f64,
    inbound: bool,
    bytes_sent: u64,
    bytes_received: u64,
    /// `direct` or `relay`.
    path: LinkPath,
    /// The relay carrying a relayed link, or null.
    via: Option<String>,
}

fn hex(id: NodeId) -> String {
    id.to_string()
}

fn hexes(ids: &[NodeId]) -> Vec<String> {
    ids.iter().copied().map(hex).collect()
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

impl StatusOut {
    pub(crate) fn new(status: &Status) -> Self {
        let me = status.id;
        let peer = |p: &PeerStatus| PeerOut {
            id: hex(p.id),
            addr: p.addr.to_string(),
            rtt_ms: p.rtt_ms,
        };
        Self {
            id: hex(me),
            addr: status.addr.to_string(),
            active: status.active,
            leaf_set: hexes(&status.leaf_set),
            routing_table: status
                .routing_table
                .iter()
                // The core never lists this node itself; skip it anyway rather than index
                // digit 32 below.
                .filter(|p| p.id != me)
                .map(|p| {
                    // The slot of an entry: row = digits shared with this node's id, column =
                    // the entry's next digit.
                    let row = me.shared_prefix_len(p.id);
                    RouteEntryOut {
                        id: hex(p.id),
                        addr: p.addr.to_string(),
                        rtt_ms: p.rtt_ms,
                        row,
                        col: p.id.digit(row),
                    }
                })
                .collect(),
            neighbourhood: status.neighbourhood.iter().map(peer).collect(),
            connections: status
                .connections
                .iter()
                .map(|c| ConnectionOut {
                    id: hex(c.id),
                    addr: c.addr.to_string(),
                    rtt_ms: (c.rtt_ms * 1e3).round() / 1e3,
                    inbound: c.inbound,
                    bytes_sent: c.bytes_sent,
                    bytes_received: c.bytes_received,
                    path: c.path,
                    via: c.via.map(hex),
                })
                .collect(),
            relays: hexes(&status.relays),
            relay: status.relay,
            stats: status.stats,
            control_msgs_sent: status.control_msgs_sent,
            control_bytes_sent: status.control_bytes_sent,
            exposed: Vec::new(),
            forwarded: Vec::new(),
            records_held: 0,
            services: Vec::new(),
            reachability: status.reachability.as_str(),
            observed_addrs: status
                .observed_addrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            punch: status.punch.clone(),
        }
    }

    /// Adds the service mesh's part.
    pub(crate) fn with_mesh(mut self, mesh: MeshStatus) -> Self {
        self.exposed = mesh.exposed;
        self.forwarded = mesh.forwarded;
        self.records_held = mesh.records_held;
        self.services = mesh.services;
        self
    }
}

impl Out {
    /// The line for a node event, or `None` for events `wendy node` does not print (raw streams,
    /// which the service mesh consumes).
    pub(crate) fn from_event(me: NodeId, event: &NodeEvent) -> Option<Self> {
        Some(match event {
            NodeEvent::Joined { leaf_set } => Self::Joined {
                id: hex(me),
                leaf_set: hexes(leaf_set),
            },
            NodeEvent::Deliver(d) => Self::Deliver {
                key: key_hex(d.key),
                from: hex(d.origin),
                hops: d.hops,
                payload: text(&d.payload),
                msg_id: d.id,
            },
            NodeEvent::Direct { from, payload } => Self::Direct {
                from: hex(*from),
                payload: text(payload),
            },
            NodeEvent::LeafSetChanged { leaf_set } => Self::LeafSetChanged {
                leaf_set: hexes(leaf_set),
            },
            NodeEvent::NodeJoined(id) => Self::NodeJoined { id: hex(*id) },
            NodeEvent::NodeLeft(id) => Self::NodeLeft { id: hex(*id) },
            NodeEvent::Heartbeat { from } => Self::Heartbeat { from: hex(*from) },
            NodeEvent::RouteFailed { id, key } => Self::RouteFailed {
                key: key_hex(*key),
                msg_id: *id,
            },
            NodeEvent::Error(message) => Self::Error {
                message: message.clone(),
                fatal: false,
                from_node: true,
            },
            NodeEvent::Topic(msg) => Self::TopicMessage {
                topic: msg.topic.clone(),
                from: hex(msg.from),
                seq: msg.seq,
                text: text(&msg.payload),
            },
            // Raw streams are consumed by the service mesh; `NodeEvent` is
            // non-exhaustive, so future events are skipped until they get a line here.
            _ => return None,
        })
    }

    /// A non-fatal error event.
    pub(crate) fn error(message: String) -> Self {
        Self::Error {
            message,
            fatal: false,
            from_node: false,
        }
    }

    /// The human-readable line; `None` for events too noisy for a terminal.
    fn human(&self) -> Option<String> {
        Some(match self {
            Self::Listening { id, addr } => format!("listening as {id} on {addr}"),
            Self::Joined { id, leaf_set } => format!(
                "joined the overlay as {id}; leaf set: {}",
                list_or_none(leaf_set)
            ),
            Self::Deliver {
                key,
                from,
                hops,
                payload,
                ..
            } => format!(
                "deliver key {key} from {from} after {hops} hop{}: {payload}",
                if *hops == 1 { "" } else { "s" }
            ),
            Self::Direct { from, payload } => format!("direct from {from}: {payload}"),
            Self::NodeJoined { id } => format!("node joined: {id}"),
            Self::NodeLeft { id } => format!("node left: {id}"),
            Self::LeafSetChanged { leaf_set } => {
                format!("leaf set changed: {}", list_or_none(leaf_set))
            }
            Self::Heartbeat { .. } => return None,
            Self::RouteFailed { key, msg_id } => {
                format!("route failed: message {msg_id} to key {key} was given up")
            }
            Self::Routed { key, msg_id } => format!("routing message {msg_id} to key {key}"),
            Self::Sent { to } => format!("sent to {to}"),
            Self::Exposed { name, target } => format!("exposing {target} as service {name:?}"),
            Self::Forwarding { listen, name } => {
                format!("forwarding {listen} to service {name:?}")
            }
            Self::Left { id } => format!("left the overlay ({id}); exiting"),
            Self::Admin { addr } => format!("admin endpoint on http://{addr}/"),
            Self::Services { names } if names.is_empty() => {
                "services known to this node: none".to_owned()
            }
            Self::Services { names } => {
                format!("services known to this node: {}", names.join(" "))
            }
            Self::Reachability {
                reachability,
                observed_addrs,
                ..
            } => format!(
                "reachability: {reachability}; observed at: {}",
                list_or_none(observed_addrs)
            ),
            Self::Mode {
                mode, addr, relays, ..
            } => format!("mode: {mode} at {addr}; relays: {}", list_or_none(relays)),
            Self::TopicMessage {
                topic,
                from,
                seq,
                text,
            } => format!("topic {topic} #{seq} from {from}: {text}"),
            Self::Subscribed { topic } => format!("subscribed to topic {topic}"),
            Self::Unsubscribed { topic } => format!("unsubscribed from topic {topic}"),
            Self::Published { topic, seq } => format!("published #{seq} on topic {topic}"),
            Self::Error {
                message,
                fatal: false,
                from_node: true,
            } => format!("warning: {message}"),
            Self::Error { message, .. } => format!("error: {message}"),
            // `status` is JSON in both formats: it is meant for tools and `jq`.
            Self::Status(_) => return serde_json::to_string(self).ok(),
        })
    }
}

fn key_hex(key: Key) -> String {
    key.to_string()
}

fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "(empty)".to_owned()
    } else {
        ids.join(" ")
    }
}

/// Lines waiting for the writer thread; past this, new lines are dropped and counted.
const QUEUE_LINES: usize = 4096;

/// How long [`Printer::flush`] waits for the queued lines to reach stdout before exiting anyway.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Line {
    Text(String),
    Flush(SyncSender<()>),
}

/// The writer thread's queue, made by the first [`Printer::new`].
static WRITER: OnceLock<SyncSender<Line>> = OnceLock::new();
/// Lines dropped because stdout was not drained fast enough.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Writes output lines in the chosen format, one flushed line each.
///
/// The writing happens on a thread of its own behind a bounded queue: a reader that stops
/// draining stdout (a full pipe) never blocks the node's loop, so `leave`, SIGTERM and the
/// protocol keep working. When the queue is full, lines are dropped and counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printer {
    format: EventFormat,
}

impl Printer {
    pub(crate) fn new(format: EventFormat) -> Self {
        WRITER.get_or_init(|| {
            let (sender, receiver) = sync_channel::<Line>(QUEUE_LINES);
            std::thread::spawn(move || {
                let stdout = std::io::stdout();
                for line in receiver {
                    match line {
                        Line::Text(text) => {
                            let mut out = stdout.lock();
                            // A closed stdout (the reader went away) must not stop the node:
                            // the overlay keeps working and stdin commands still act.
                            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                                tracing::debug!("stdout is closed; output dropped");
                            }
                        }
                        Line::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
            sender
        });
        Self { format }
    }

    pub(crate) fn print(&self, out: &Out) {
        let line = match self.format {
            EventFormat::Json => match serde_json::to_string(out) {
                Ok(line) => line,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an event");
                    return;
                }
            },
            EventFormat::Text => match out.human() {
                // Payloads come from peers: never let them drive the operator's terminal.
                Some(line) => without_control_chars(&line),
                None => return,
            },
        };
        let Some(writer) = WRITER.get() else {
            return;
        };
        if let Err(TrySendError::Full(_)) = writer.try_send(Line::Text(line)) {
            if DROPPED.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("stdout is not being read: output lines are dropped from now on");
            }
        }
    }

    /// Waits (at most [`FLUSH_WAIT`]) until every queued line is on stdout; call before exit.
    pub(crate) fn flush(&self) {
        let Some(writer) = WRITER.get() else {
            return;
        };
        let (done, wait) = sync_channel(1);
        if writer.try_send(Line::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "output lines were dropped because stdout was not read"
            );
        }
    }
}

/// Output lines dropped so far because stdout was not read.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Replaces control characters (escape sequences, carriage returns, ...) with U+FFFD.
fn without_control_chars(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_the_contract_names() {
        let id: NodeId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let line = serde_json::to_string(&Out::Listening {
            id: hex(id),
            addr: "127.0.0.1:4000".into(),
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"listening","id":"0123456789abcdef0123456789abcdef","addr":"127.0.0.1:4000"}"#
        );
        let line = serde_json::to_string(&Out::error("bad".into())).unwrap();
        assert_eq!(line, r#"{"event":"error","message":"bad"}"#);
        let topic = Out::TopicMessage {
            topic: "lobby".into(),
            from: "ab".into(),
            seq: 3,
            text: "hi".into(),
        };
        assert_eq!(
            serde_json::to_string(&topic).unwrap(),
            r#"{"event":"topic_message","topic":"lobby","from":"ab","seq":3,"text":"hi"}"#
        );
        let line = serde_json::to_string(&Out::NodeLeft { id: hex(id) }).unwrap();
        assert_eq!(
            line,
            r#"{"event":"node_left","id":"0123456789abcdef0123456789abcdef"}"#
        );
    }

    #[test]
    fn text_lines_cannot_carry_terminal_escapes() {
        let line = without_control_chars("hi \u{1b}]0;owned\u{7}\r\x1b[2J there");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("hi ") && line.ends_with(" there"));
    }
}
