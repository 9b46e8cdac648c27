//! The messages Pastry nodes exchange. Encoded on the wire by `crate::wire`.
//!
//! The sender of every message is the authenticated peer the transport hands to
//! [`Pastry::handle_message`](super::Pastry::handle_message); messages never name their sender.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{Key, NodeId};

use super::origin::OriginProof;

/// A peer as other nodes learn it: its id and the address it accepts connections on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's node id (always verified against its certificate when dialled).
    pub id: NodeId,
    /// The address the peer listens on.
    pub addr: SocketAddr,
}

/// A node's word, passed on in a probe or its reply, that `node` failed: the sender found it
/// dead itself (`witness` is the sender), or `witness` told the sender so in a
/// [`Message::NodeFailed`] that the sender has not confirmed yet. A receiver believes a failure
/// only from two accounts that share no node (see the core's `witness` module), so that one
/// lying peer cannot evict a live node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FailureClaim {
    /// The node said to have failed.
    pub node: NodeId,
    /// Who found it dead.
    pub witness: NodeId,
}

/// Most [`FailureClaim`]s a [`Message::Probe`] or [`Message::ProbeReply`] carries.
pub const MAX_CLAIMS: usize = 4;

/// One Pastry protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A join request, routed towards the joiner's own id. Each hop acknowledges it with
    /// [`Message::RouteAck`] (`origin` = the joiner, `id` = this `id`) and answers the joiner
    /// with [`Message::JoinState`].
    Join {
        /// The joiner's attempt number, for per-hop acks.
        id: u64,
        /// The joining node.
        joiner: PeerInfo,
        /// The first routing-table row the joiner still needs (earlier hops sent the others).
        next_row: u8,
        /// Hops taken so far.
        hops: u8,
    },
    /// Routing state sent to a joining node by a hop on its join route.
    JoinState {
        /// Routing table rows `(row index, entries)` the joiner needs from this hop.
        rows: Vec<(u8, Vec<PeerInfo>)>,
        /// The first hop's neighbourhood set (it is near the joiner); empty from later hops.
        neighbourhood: Vec<PeerInfo>,
        /// The root's leaf set (present only from the root).
        leaf_set: Option<Vec<PeerInfo>>,
    },
    /// A newly active node announces itself to the nodes in its state.
    Announce {
        /// The announcer's leaf set (sent to leaf-set members only; empty otherwise), so that
        /// receivers can tell it about nodes it is missing.
        leaf_set: Vec<PeerInfo>,
    },
    /// A liveness probe: answered by [`Message::ProbeReply`]. Confirms a joiner's leaf set,
    /// checks a suspected node and verifies a leaf-set candidate learned second hand.
    Probe {
        /// Matches the reply to the probe.
        nonce: u64,
        /// Whether the sender is active (an inactive joiner must not be added to leaf sets).
        active: bool,
        /// The sender's leaf set.
        leaf_set: Vec<PeerInfo>,
        /// Failures the sender found or was told of lately (at most [`MAX_CLAIMS`]).
        failed: Vec<FailureClaim>,
    },
    /// The reply to a probe.
    ProbeReply {
        /// The probe's nonce.
        nonce: u64,
        /// Whether the sender is active.
        active: bool,
        /// The sender's leaf set.
        leaf_set: Vec<PeerInfo>,
        /// Failures the sender found or was told of lately (at most [`MAX_CLAIMS`]).
        failed: Vec<FailureClaim>,
    },
    /// A one-way leaf-set heartbeat to an immediate neighbour, carrying the sender's leaf set.
    Heartbeat {
        /// The sender's leaf set.
        leaf_set: Vec<PeerInfo>,
    },
    /// The sender holds `node` dead: one of its neighbours tells the members on its own side
    /// that hold it and the failed node's other neighbour; a node that found it dead otherwise
    /// tells its two neighbours; a node that believed it from two accounts tells the peers whose
    /// account named another witness. Not believed on its own (see [`FailureClaim`]).
    NodeFailed {
        /// The failed node.
        node: NodeId,
        /// The sender's leaf set after removing `node` (candidates to fill the hole); empty
        /// from a sender that is not the failed node's neighbour.
        leaf_set: Vec<PeerInfo>,
    },
    /// Asks for one routing-table row (lazy repair and periodic proximity maintenance).
    RowRequest {
        /// The row wanted.
        row: u8,
    },
    /// The answer to [`Message::RowRequest`].
    RowReply {
        /// The row index.
        row: u8,
        /// The row's entries.
        entries: Vec<PeerInfo>,
    },
    /// An application message routed towards `key`.
    Route {
        /// The origin's message id (random), for per-hop acks and duplicate suppression.
        id: u64,
        /// The destination key.
        key: Key,
        /// The node that first routed the message.
        origin: PeerInfo,
        /// Hops taken so far.
        hops: u8,
        /// Nodes the sender found unresponsive while routing this message (at most
        /// [`MAX_AVOID`]): the receiver does not route it to them either.
        avoid: Vec<NodeId>,
        /// The application payload (shared, not copied, by the hops it crosses: see
        /// [`crate::wire::shared`]).
        #[serde(with = "crate::wire::shared")]
        payload: Bytes,
        /// The origin's proof that it sent this `id`, `key` and `payload` (see
        /// [`super::origin`]); `None` only from a node running without an authenticator (the
        /// simulator), which nodes with one accept only from the origin itself.
        proof: Option<Box<OriginProof>>,
    },
    /// Per-hop acknowledgement of a [`Message::Route`] or a [`Message::Join`].
    RouteAck {
        /// The acknowledged message's origin (the joiner for a join).
        origin: NodeId,
        /// The acknowledged message id.
        id: u64,
        /// `false`: received (the sender keeps its copy until `true` or a custody timeout);
        /// `true`: passed on (delivered, or forwarded and received by the next hop), so the
        /// sender may forget it. A hop that delivers at once sends only `true`; a `true` that
        /// arrives without (or before) a `false` also counts as the receipt, so its receiver
        /// releases its own predecessor. Joins are acknowledged with `true` at once.
        done: bool,
    },
    /// A graceful departure, sent to the leaf set.
    Leave {
        /// The leaving node's leaf set, to help receivers repair.
        leaf_set: Vec<PeerInfo>,
    },
    /// The answer to a [`Message::Route`] its origin sent without a proof (believing the
    /// receiver to be the key's root) that the receiver must pass on: the origin signs it and
    /// sends it again (see [`super::origin`]). Nothing else was done with the message.
    ProofWanted {
        /// The message's id (its origin is the receiver of this answer).
        id: u64,
    },
    /// The root of a [`Message::Route`] tells its origin that it delivered it, so that the
    /// origin can time the route and send later messages for keys in the sender's range
    /// straight to it (see the core's route cache).
    RootAnswer {
        /// The delivered message's id.
        id: u64,
        /// Its key.
        key: Key,
        /// The sender's leaf set (at most the leaf-set size, without the sender); empty when
        /// the message came straight from its origin.
        leaf_set: Vec<PeerInfo>,
    },
    /// A [`Message::RootAnswer`] from a root that holds no link to the message's origin, passed
    /// back along the message's route: each hop passes it to the node it received the message
    /// from, and only for a message it forwarded lately to the relay's sender, once (see the
    /// core's route cache). The origin checks it like a root's own answer.
    RootAnswerRelay {
        /// The delivered message's origin (the last receiver of the relay).
        origin: NodeId,
        /// The delivered message's id.
        id: u64,
        /// Its key.
        key: Key,
        /// The root that delivered it, as it names itself.
        root: PeerInfo,
        /// The root's leaf set (at most the leaf-set size, without the root).
        leaf_set: Vec<PeerInfo>,
    },
}

/// Most node ids a [`Message::Route`] carries in `avoid`.
pub const MAX_AVOID: usize = 8;

/// The kind of a [`Message`], for counting traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// [`Message::Join`]
    Join,
    /// [`Message::JoinState`]
    JoinState,
    /// [`Message::Announce`]
    Announce,
    /// [`Message::Probe`]
    Probe,
    /// [`Message::ProbeReply`]
    ProbeReply,
    /// [`Message::Heartbeat`]
    Heartbeat,
    /// [`Message::NodeFailed`]
    NodeFailed,
    /// [`Message::RowRequest`]
    RowRequest,
    /// [`Message::RowReply`]
    RowReply,
    /// [`Message::Route`]
    Route,
    /// [`Message::RouteAck`]
    RouteAck,
    /// [`Message::Leave`]
    Leave,
    /// [`Message::ProofWanted`]
    ProofWanted,
    /// [`Message::RootAnswer`]
    RootAnswer,
    /// [`Message::RootAnswerRelay`]
    RootAnswerRelay,
}

impl MessageKind {
    /// Number of kinds.
    pub const COUNT: usize = 15;

    /// Every kind, in declaration order (`kind as usize` indexes this array).
    pub const ALL: [Self; Self::COUNT] = [
        Self::Join,
        Self::JoinState,
        Self::Announce,
        Self::Probe,
        Self::ProbeReply,
        Self::Heartbeat,
        Self::NodeFailed,
        Self::RowRequest,
        Self::RowReply,
        Self::Route,
        Self::RouteAck,
        Self::Leave,
        Self::ProofWanted,
        Self::RootAnswer,
        Self::RootAnswerRelay,
    ];

    /// A short lower-case name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::JoinState => "join_state",
            Self::Announce => "announce",
            Self::Probe => "probe",
            Self::ProbeReply => "probe_reply",
            Self::Heartbeat => "heartbeat",
            Self::NodeFailed => "node_failed",
            Self::RowRequest => "row_request",
            Self::RowReply => "row_reply",
            Self::Route => "route",
            Self::RouteAck => "route_ack",
            Self::Leave => "leave",
            Self::ProofWanted => "proof_wanted",
            Self::RootAnswer => "root_answer",
            Self::RootAnswerRelay => "root_answer_relay",
        }
    }

    /// Whether this is overlay maintenance traffic, as opposed to carrying application
    /// messages (`Route`, its per-hop `RouteAck`, `ProofWanted` and the root's `RootAnswer`,
    /// relayed or not).
    pub const fn is_control(self) -> bool {
        !matches!(
            self,
            Self::Route
                | Self::RouteAck
                | Self::ProofWanted
                | Self::RootAnswer
                | Self::RootAnswerRelay
        )
    }
}

impl Message {
    /// This message's kind.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Self::Join { .. } => MessageKind::Join,
            Self::JoinState { .. } => MessageKind::JoinState,
            Self::Announce { .. } => MessageKind::Announce,
            Self::Probe { .. } => MessageKind::Probe,
            Self::ProbeReply { .. } => MessageKind::ProbeReply,
            Self::Heartbeat { .. } => MessageKind::Heartbeat,
            Self::NodeFailed { .. } => MessageKind::NodeFailed,
            Self::RowRequest { .. } => MessageKind::RowRequest,
            Self::RowReply { .. } => MessageKind::RowReply,
            Self::Route { .. } => MessageKind::Route,
            Self::RouteAck { .. } => MessageKind::RouteAck,
            Self::Leave { .. } => MessageKind::Leave,
            Self::ProofWanted { .. } => MessageKind::ProofWanted,
            Self::RootAnswer { .. } => MessageKind::RootAnswer,
            Self::RootAnswerRelay { .. } => MessageKind::RootAnswerRelay,
        }
    }

    /// The exact length of this message's postcard encoding, measured by postcard itself
    /// without writing the bytes (counted for every message sent, so it must stay cheap: the
    /// measuring flavor only adds up lengths, and payloads are counted, never copied).
    pub fn encoded_len(&self) -> usize {
        // Measuring cannot fail: the `Size` flavor never runs out of room, and serialising
        // these plain-data types has no error path.
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
}

/// Serde helpers that encode a `Vec<u8>` as a byte string.
///
/// postcard writes a byte string exactly as it writes a sequence of `u8` (a varint length, then
/// the bytes), so this changes no encoding; it only copies the bytes in one go instead of one
/// element at a time, and lets [`Message::encoded_len`] count a payload without visiting its
/// bytes. Use with `#[serde(with = "crate::wire::byte_buf")]` on payload fields.
pub mod byte_buf {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    /// Serialises `bytes` as a byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Deserialises a byte string (or a sequence of `u8`, for self-describing formats).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ByteBufVisitor)
    }

    struct ByteBufVisitor;

    impl<'de> Visitor<'de> for ByteBufVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Self::Value, E> {
            Ok(bytes)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

/// Proptest strategies covering every [`Message`] variant (for codec tests).
#[cfg(test)]
pub(crate) mod strategy {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Any node id.
    pub(crate) fn node_id() -> impl Strategy<Value = NodeId> {
        any::<u128>().prop_map(NodeId::from_u128)
    }

    /// Any peer, IPv4 or IPv6.
    pub(crate) fn peer_info() -> impl Strategy<Value = PeerInfo> {
        // Built from (ip, port): serde does not encode IPv6 flow info or scope id.
        (node_id(), any::<std::net::IpAddr>(), any::<u16>()).prop_map(|(id, ip, port)| PeerInfo {
            id,
            addr: SocketAddr::new(ip, port),
        })
    }

    fn peers() -> impl Strategy<Value = Vec<PeerInfo>> {
        vec(peer_info(), 0..20)
    }

    fn claims() -> impl Strategy<Value = Vec<FailureClaim>> {
        vec(
            (node_id(), node_id()).prop_map(|(node, witness)| FailureClaim { node, witness }),
            0..=MAX_CLAIMS,
        )
    }

    /// Any message, every variant.
    pub(crate) fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), peer_info(), any::<u8>(), any::<u8>()).prop_map(
                |(id, joiner, next_row, hops)| Message::Join {
                    id,
                    joiner,
                    next_row,
                    hops
                }
            ),
            (
                vec((any::<u8>(), peers()), 0..5),
                peers(),
                proptest::option::of(peers())
            )
                .prop_map(|(rows, neighbourhood, leaf_set)| Message::JoinState {
                    rows,
                    neighbourhood,
                    leaf_set
                }),
            peers().prop_map(|leaf_set| Message::Announce { leaf_set }),
            (any::<u64>(), any::<bool>(), peers(), claims()).prop_map(
                |(nonce, active, leaf_set, failed)| Message::Probe {
                    nonce,
                    active,
                    leaf_set,
                    failed,
                }
            ),
            (any::<u64>(), any::<bool>(), peers(), claims()).prop_map(
                |(nonce, active, leaf_set, failed)| Message::ProbeReply {
                    nonce,
                    active,
                    leaf_set,
                    failed,
                }
            ),
            peers().prop_map(|leaf_set| Message::Heartbeat { leaf_set }),
            (node_id(), peers())
                .prop_map(|(node, leaf_set)| Message::NodeFailed { node, leaf_set }),
            any::<u8>().prop_map(|row| Message::RowRequest { row }),
            (any::<u8>(), peers()).prop_map(|(row, entries)| Message::RowReply { row, entries }),
            (
                any::<u64>(),
                any::<u128>(),
                peer_info(),
                any::<u8>(),
                vec(node_id(), 0..=MAX_AVOID),
                vec(any::<u8>(), 0..300),
                proptest::option::of((any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>()))
            )
                .prop_map(|(id, key, origin, hops, avoid, payload, proof)| {
                    let proof = proof.map(|(public_key, r, s)| {
                        let mut signature = [0u8; 64];
                        signature[..32].copy_from_slice(&r);
                        signature[32..].copy_from_slice(&s);
                        Box::new(OriginProof {
                            public_key,
                            signature,
                        })
                    });
                    Message::Route {
                        id,
                        key: Key::from_u128(key),
                        origin,
                        hops,
                        avoid,
                        payload: payload.into(),
                        proof,
                    }
                }),
            (node_id(), any::<u64>(), any::<bool>())
                .prop_map(|(origin, id, done)| Message::RouteAck { origin, id, done }),
            peers().prop_map(|leaf_set| Message::Leave { leaf_set }),
            any::<u64>().prop_map(|id| Message::ProofWanted { id }),
            (any::<u64>(), any::<u128>(), peers()).prop_map(|(id, key, leaf_set)| {
                Message::RootAnswer {
                    id,
                    key: Key::from_u128(key),
                    leaf_set,
                }
            }),
            (node_id(), any::<u64>(), any::<u128>(), peer_info(), peers()).prop_map(
                |(origin, id, key, root, leaf_set)| Message::RootAnswerRelay {
                    origin,
                    id,
                    key: Key::from_u128(key),
                    root,
                    leaf_set,
                }
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_index_their_table() {
        for (index, kind) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index);
        }
        assert!(!MessageKind::Route.is_control());
        assert!(MessageKind::Heartbeat.is_control());
    }

    proptest! {
        #[test]
        fn encoded_len_is_exact(msg in strategy::message()) {
            let bytes = postcard::to_allocvec(&msg).unwrap();
            prop_assert_eq!(msg.encoded_len(), bytes.len());
            let back: Message = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, msg);
        }
    }
}
