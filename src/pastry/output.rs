//! What the core hands its driver, on two queues (as quinn-proto's `poll_transmit` and `poll`):
//! [`Transmit`]s for the network ([`Pastry::poll_transmit`]) and [`Event`]s for the
//! application ([`Pastry::poll_event`]).

use bytes::Bytes;
use std::time::Duration;

use crate::id::{Key, NodeId};

use super::{Message, Misbehaviour, PeerInfo, ProofError};

#[cfg(doc)]
use super::{Config, Pastry, Stats};

/// Network work for the driver, in the order the core asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Deliver `msg` to `to` (the driver dials it if needed).
    Send {
        /// The destination peer.
        to: PeerInfo,
        /// The message.
        msg: Message,
    },
    /// Measure the round-trip time to `peer`, then call [`Pastry::handle_proximity`]. If the
    /// peer cannot be reached (the dial fails), call [`Pastry::handle_link_down`]: a peer that
    /// cannot be dialled is suspected like one whose link died.
    Measure {
        /// The peer to measure.
        peer: PeerInfo,
    },
}

/// The application's answer to [`Event::Forward`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardVerdict {
    /// Forward the message with this payload, the one [`Event::Forward`] handed out.
    Continue(Bytes),
    /// Forward the message with this payload, which the application changed. With an
    /// authenticator ([`Pastry::set_origin_auth`]) the origin's signature no longer covers it,
    /// so this node routes it on as its own message (it becomes the origin, with a fresh id);
    /// without one it is [`Self::Continue`].
    Modified(Bytes),
    /// Drop the message.
    Drop,
}

/// Something for the application: a message delivered here or about to be forwarded, or a
/// change it may want to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node is the root of `key`: hand the message to the application.
    Deliver {
        /// The destination key.
        key: Key,
        /// The node that routed the message.
        origin: NodeId,
        /// The origin's message id.
        id: u64,
        /// Overlay hops the message took.
        hops: u8,
        /// The application payload.
        payload: Bytes,
    },
    /// (Only with [`Config::intercept_forwards`].) The message is about to be forwarded to
    /// `next_hop`; answer with [`Pastry::resume_forward`] and this `token`.
    Forward {
        /// Identifies the held message.
        token: u64,
        /// The destination key.
        key: Key,
        /// The node that routed the message.
        origin: NodeId,
        /// The chosen next hop.
        next_hop: NodeId,
        /// Hops taken so far.
        hops: u8,
        /// The application payload (hand it back, possibly modified).
        payload: Bytes,
    },
    /// This node became active: its leaf set is confirmed and it may deliver as root.
    Joined,
    /// The leaf set's membership changed.
    LeafSetChanged,
    /// A node entered this node's state (leaf set, routing table or neighbourhood set).
    NodeJoined(NodeId),
    /// A node left this node's leaf set because it died or left gracefully.
    NodeLeft(NodeId),
    /// `peer` sent a message that breaks the protocol's rules (a peer list longer than the
    /// structure it describes, a repeated or misplaced id, a row entry in the wrong row). The
    /// offending part was not used; see [`Misbehaviour`] for what else was still handled.
    Misbehaved {
        /// The authenticated sender.
        peer: NodeId,
        /// What was wrong.
        reason: Misbehaviour,
    },
    /// A routed message was dropped on arrival because its origin could not be verified
    /// (forged, tampered with, or without a proof from a node other than its origin). Nothing
    /// was delivered or taken into custody; `from` was released so that it does not route it
    /// again.
    OriginRejected {
        /// The previous hop, which sent it here.
        from: NodeId,
        /// The origin the message claimed.
        origin: NodeId,
        /// The claimed origin's message id.
        id: u64,
        /// Why the proof was refused.
        reason: ProofError,
    },
    /// A message this node originated was given up (here) after
    /// [`Config::max_route_attempts`] attempts or [`Config::max_hops`] hops. Messages of other
    /// origins given up here are only counted ([`Stats::routes_failed`]).
    RouteFailed {
        /// The origin's message id.
        id: u64,
        /// The destination key.
        key: Key,
    },
    /// The root of a message this node originated answered ([`Message::RootAnswer`]):
    /// `elapsed` is the time from sending it to the answer, the route plus one direct hop
    /// back.
    RouteAnswered {
        /// The origin's message id.
        id: u64,
        /// The destination key.
        key: Key,
        /// The node that answered as root.
        root: NodeId,
        /// From the first send to the answer.
        elapsed: Duration,
    },
}
