//! Topics: publish/subscribe served by every node, on Scribe-style trees (Castro et al.
//! 2002).
//!
//! This module owns topic trees, the retained windows of their roots and the delivery of topic
//! messages. It uses the node through a crate-internal port (next hop, leaf set, routed and
//! direct payloads of kind [`PayloadKind::Topic`](crate::wire::PayloadKind::Topic)) and must
//! not reach into `pastry/` or `transport/`. Every [`Node`](crate::node::Node) runs it, whatever
//! the application: a plain `wendy node` forwards, roots and replicates topics it never
//! subscribes to.
//!
//! Files: this one holds the [`Topics`] API, its configuration and errors, and the task that
//! carries out what the state asks; `tree` is each node's place in each tree (joins,
//! refreshes, repairs, the bound on children); `flow` is what flows along the trees
//! (publishes, acknowledgements, fan-out, replays); `message` is the wire format and the
//! publisher's signature.
//!
//! # Trees
//! A topic's key is [`topic_key`]`(name)`; its **root** is the live node closest to it. To
//! subscribe, a node sends a join to its next hop towards the key; that node takes it as a
//! child and, unless it is in the tree already, joins its own next hop, and so on: the joins
//! follow the route to the root and leave **forwarders** on the way. A node takes at most
//! [`TopicsConfig::max_children`] children (default 16): past that, a new child is pushed
//! down to one of its children in turn (Scribe's "bottleneck remover"), at most 8 levels.
//!
//! Children refresh their join every [`TopicsConfig::heartbeat`]; a parent silent for
//! [`TopicsConfig::parent_timeout`], one the overlay reports gone, or one that says it leaves
//! (a graceful [`Node::leave`](crate::node::Node::leave) tells children and parent at once) is
//! replaced by joining again through routing. A tree with a loop (routing changed under it)
//! is cut where the loop is found, from the path to the root each parent sends.
//!
//! # Delivery semantics
//! A publisher numbers its messages per topic (a random session per start, sequence numbers
//! from 1) and signs each with its node key; the message is routed to the root. The root
//! accepts each publisher's messages in order, keeps the last [`TopicsConfig::max_retained`]
//! and those younger than [`TopicsConfig::repair_window`] (within
//! [`TopicsConfig::max_retained_bytes`]), copies each to the two leaf-set members next in
//! line to be root, sends it down the tree and acknowledges the publisher (routed to the
//! publisher's id). A publisher sends again what is not acknowledged within
//! [`TopicsConfig::retry`], with at most [`TopicsConfig::max_in_flight`] unacknowledged
//! ([`Topics::publish`] waits for room).
//!
//! A subscriber delivers each publisher's messages **exactly once and in order**: it keeps a
//! cursor per publisher stream, drops second copies, holds messages past a gap, and fetches
//! from the root what it missed (after a repair, or when a gap or a head it heard of stays
//! open for [`TopicsConfig::gap_wait`]). So every live subscriber gets every message the
//! publisher was told was accepted, as long as the root's window still holds it when the
//! subscriber asks; a new subscriber gets the window first ("replay"). The root's copies make
//! a new root take over with the window when the root dies or leaves.
//!
//! The sender a subscriber sees ([`TopicMessage::from`]) is the publisher's node id, checked
//! against the publisher's signature by every node that handles the message: a forwarder can
//! drop a message (the subscriber then fetches it from the root) but cannot change one or make
//! one up in another node's name. What a lying peer costs is bounded: a signature check per
//! message, and bounded state ([`TopicsConfig`]).
//!
//! ```no_run
//! use wendy::identity::Identity;
//! use wendy::node::{Node, NodeEvent};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (node, mut events) = Node::builder(Identity::generate()).spawn().await?;
//! node.join(&["127.0.0.1:4000".parse()?]).await?;
//! node.topics().subscribe("news").await?;
//! node.topics().publish("news", b"hello".to_vec()).await?;
//! while let Some(event) = events.recv().await {
//!     if let NodeEvent::Topic(msg) = event {
//!         println!("{} #{} from {}", msg.topic, msg.seq, msg.from);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod flow;
#[cfg(any(test, feature = "sim"))]
pub(crate) mod harness;
mod message;
mod service;
mod tree;

#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use message::{check_name, topic_key, TopicNameError, MAX_TOPIC_NAME};
pub use service::Topics;
pub(crate) use service::{spawn, Port};
pub use tree::TopicStats;

use crate::id::NodeId;

/// How many nodes next in line to be a topic's root hold a copy of its window.
pub(crate) const REPLICAS: usize = 2;

/// A topic's settings and bounds on the state one node keeps. Every bound has a default that
/// suits a chat or a service mesh's notices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicsConfig {
    /// The most topics one node holds state for (subscribed, forwarding, root, replica or
    /// publishing). A join past it is refused; [`Topics::subscribe`] and [`Topics::publish`]
    /// fail with [`TopicError::TooManyTopics`]. Default 1024.
    pub max_topics: usize,
    /// The most children a node sends each message to; more joins are pushed down the tree.
    /// Default 16.
    pub max_children: usize,
    /// Messages a root keeps for replay (per topic); more while they are younger than
    /// `repair_window`. Default 256.
    pub max_retained: usize,
    /// Bytes a root keeps for replay (per topic). Default 1 MiB.
    pub max_retained_bytes: usize,
    /// A root keeps every message at least this long (within `max_retained_bytes`), even past
    /// `max_retained`: a subtree cut off by a failed forwarder fetches what it missed from the
    /// window once it is attached again, however fast the publisher went meanwhile. Default 30 s.
    pub repair_window: Duration,
    /// The largest payload of one message ([`TopicError::PayloadTooLarge`]). Default 64 KiB.
    pub max_payload: usize,
    /// A publisher's unacknowledged messages per topic; also the most a root holds past a gap
    /// in one stream. Default 64.
    pub max_in_flight: usize,
    /// Publisher streams one topic tracks (at a root, and at a subscriber). Default 256.
    pub max_publishers: usize,
    /// How often a child refreshes its join (its parent answers). Default 500 ms.
    pub heartbeat: Duration,
    /// A parent silent this long is replaced. Default 1.5 s.
    pub parent_timeout: Duration,
    /// A publish not acknowledged this long is sent again. Default 1 s.
    pub retry: Duration,
    /// A gap (or a head ahead of a subscriber's cursor) open this long makes the subscriber
    /// fetch from the root. Default 500 ms.
    pub gap_wait: Duration,
    /// How long a window nobody subscribes to is kept after its last message. Default 10 min.
    pub retain_for: Duration,
    /// Topic messages waiting for the application to take them from the node's events; past
    /// it the newest are dropped and counted ([`TopicStats::dropped`]). Default 4096.
    pub delivery_queue: usize,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            max_topics: 1024,
            max_children: 16,
            max_retained: 256,
            max_retained_bytes: 1 << 20,
            repair_window: Duration::from_secs(30),
            max_payload: 64 * 1024,
            max_in_flight: 64,
            max_publishers: 256,
            heartbeat: Duration::from_millis(500),
            parent_timeout: Duration::from_millis(1500),
            retry: Duration::from_secs(1),
            gap_wait: Duration::from_millis(500),
            retain_for: Duration::from_secs(600),
            delivery_queue: 4096,
        }
    }
}

impl TopicsConfig {
    /// Checks the settings ([`NodeConfig::validate`](crate::node::NodeConfig::validate) does).
    pub fn validate(&self) -> Result<(), TopicsConfigError> {
        let positive = [
            ("max_topics", self.max_topics),
            ("max_children", self.max_children),
            ("max_retained", self.max_retained),
            ("max_retained_bytes", self.max_retained_bytes),
            ("max_payload", self.max_payload),
            ("max_in_flight", self.max_in_flight),
            ("max_publishers", self.max_publishers),
            ("delivery_queue", self.delivery_queue),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(TopicsConfigError::Zero(name));
            }
        }
        if self.heartbeat.is_zero() || self.parent_timeout <= self.heartbeat {
            return Err(TopicsConfigError::Timers);
        }
        if self.retry.is_zero() || self.gap_wait.is_zero() {
            return Err(TopicsConfigError::Zero("retry and gap_wait"));
        }
        Ok(())
    }
}

/// Why a [`TopicsConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicsConfigError {
    /// A bound is zero.
    #[error("topics: {0} must be above zero")]
    Zero(&'static str),
    /// The parent timeout must be longer than the heartbeat.
    #[error("topics: heartbeat must be above zero and parent_timeout above heartbeat")]
    Timers,
}

/// Why a topic operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic name is unusable.
    #[error(transparent)]
    Name(#[from] TopicNameError),
    /// This node holds state for [`TopicsConfig::max_topics`] topics already.
    #[error("this node holds {max} topics already (topics.max_topics)")]
    TooManyTopics {
        /// The bound.
        max: usize,
    },
    /// The payload is larger than [`TopicsConfig::max_payload`].
    #[error("a topic message is at most {max} bytes (got {len}; topics.max_payload)")]
    PayloadTooLarge {
        /// The payload's size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The node is not part of an overlay yet.
    #[error("the node has not joined an overlay")]
    NotJoined,
    /// The node has been shut down.
    #[error("the node is shut down")]
    Closed,
}

/// A message of a topic this node subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// The topic's name.
    pub topic: String,
    /// The publisher, verified by its signature.
    pub from: NodeId,
    /// The publisher's sequence number (from 1 in each publisher run; per publisher, messages
    /// arrive in this order, each once).
    pub seq: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A node's place in one topic's tree ([`Topics::place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlace {
    /// Whether the node subscribes.
    pub subscribed: bool,
    /// Whether it is the root.
    pub root: bool,
    /// Its parent, if attached.
    pub parent: Option<NodeId>,
    /// Its children.
    pub children: Vec<NodeId>,
    /// Hops from the root (as its parent last said).
    pub depth: usize,
    /// The root: this node if it is the root, else the first node of the path its parent last
    /// sent (`None` while detached).
    pub root_node: Option<NodeId>,
}
