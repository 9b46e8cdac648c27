//! The messages Pastry nodes exchange. Encoded on the wire by [`crate::wire`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::{Key, NodeId};

/// A peer as other nodes learn it: its id and the address it accepts connections on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's node id (always verified against its certificate when dialled).
    pub id: NodeId,
    /// The address the peer listens on.
    pub addr: SocketAddr,
}

/// One Pastry protocol message. (Draft; the Pastry core owns and extends this.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A join request, routed towards the joiner's own id.
    Join {
        /// The joining node.
        joiner: PeerInfo,
        /// Hops taken so far.
        hops: u8,
    },
    /// Routing state sent to a joining node by a hop on its join route.
    JoinState {
        /// Routing table rows `(row index, entries)`.
        rows: Vec<(u8, Vec<PeerInfo>)>,
        /// The root's leaf set (present only from the root).
        leaf_set: Option<Vec<PeerInfo>>,
    },
    /// A leaf-set probe (heartbeat) carrying the sender's leaf set.
    Probe {
        /// Matches the reply to the probe.
        nonce: u64,
        /// The sender's leaf set.
        leaf_set: Vec<PeerInfo>,
    },
    /// The reply to a probe.
    ProbeReply {
        /// The probe's nonce.
        nonce: u64,
        /// The sender's leaf set.
        leaf_set: Vec<PeerInfo>,
    },
    /// An application message routed towards `key`.
    Route {
        /// Per-origin message id, for per-hop acks and duplicate suppression.
        id: u64,
        /// The destination key.
        key: Key,
        /// The node that first routed the message.
        origin: PeerInfo,
        /// Hops taken so far.
        hops: u8,
        /// The application payload.
        payload: Vec<u8>,
    },
    /// Per-hop acknowledgement of a [`Message::Route`].
    RouteAck {
        /// The acknowledged message's origin.
        origin: NodeId,
        /// The acknowledged message id.
        id: u64,
    },
    /// A graceful departure.
    Leave {
        /// The leaving node's leaf set, to help receivers repair.
        leaf_set: Vec<PeerInfo>,
    },
}
