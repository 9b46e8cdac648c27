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

#[cfg(test)]
pub(crate) mod strategy {
    //! Proptest strategies for Pastry messages. Keep [`any_message`] covering every variant of
    //! [`Message`]: the wire format's round-trip property tests rely on it.
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::{Message, PeerInfo};
    use crate::id::{Key, NodeId};

    /// Any node id.
    pub(crate) fn any_node_id() -> impl Strategy<Value = NodeId> {
        any::<u128>().prop_map(NodeId::from_u128)
    }

    /// Any key.
    pub(crate) fn any_key() -> impl Strategy<Value = Key> {
        any::<u128>().prop_map(Key::from_u128)
    }

    /// Any socket address, IPv4 or IPv6.
    pub(crate) fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
            (any::<u128>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
        ]
    }

    /// Any peer.
    pub(crate) fn any_peer() -> impl Strategy<Value = PeerInfo> {
        (any_node_id(), any_addr()).prop_map(|(id, addr)| PeerInfo { id, addr })
    }

    fn peers(max: usize) -> impl Strategy<Value = Vec<PeerInfo>> {
        proptest::collection::vec(any_peer(), 0..max)
    }

    /// Any Pastry message, covering every variant.
    pub(crate) fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any_peer(), any::<u8>()).prop_map(|(joiner, hops)| Message::Join { joiner, hops }),
            (
                proptest::collection::vec((any::<u8>(), peers(16)), 0..4),
                proptest::option::of(peers(16))
            )
                .prop_map(|(rows, leaf_set)| Message::JoinState { rows, leaf_set }),
            (any::<u64>(), peers(16))
                .prop_map(|(nonce, leaf_set)| Message::Probe { nonce, leaf_set }),
            (any::<u64>(), peers(16))
                .prop_map(|(nonce, leaf_set)| Message::ProbeReply { nonce, leaf_set }),
            (
                any::<u64>(),
                any_key(),
                any_peer(),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..256)
            )
                .prop_map(|(id, key, origin, hops, payload)| Message::Route {
                    id,
                    key,
                    origin,
                    hops,
                    payload
                }),
            (any_node_id(), any::<u64>()).prop_map(|(origin, id)| Message::RouteAck { origin, id }),
            peers(16).prop_map(|leaf_set| Message::Leave { leaf_set }),
        ]
    }
}
