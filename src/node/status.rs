//! The snapshot [`Node::status`](super::Node::status) returns: routing state, links and the
//! node's counters.

use std::net::SocketAddr;

use super::NodeStats;
use crate::id::NodeId;
use crate::reach::Reachability;

/// A peer in a [`Status`] snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerStatus {
    /// The peer's id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// The proximity (RTT) the routing state holds for it, in milliseconds, if measured.
    pub rtt_ms: Option<f64>,
}

/// A link in a [`Status`] snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnectionStatus {
    /// The peer's id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// QUIC smoothed RTT in milliseconds.
    pub rtt_ms: f64,
    /// Whether the peer dialled us.
    pub inbound: bool,
    /// UDP bytes sent on the link.
    pub bytes_sent: u64,
    /// UDP bytes received on the link.
    pub bytes_received: u64,
    /// UDP datagrams sent.
    pub packets_sent: u64,
    /// UDP datagrams received.
    pub packets_received: u64,
    /// Milliseconds since the link last carried a stream (noticed at the pool's periodic
    /// looks, so it may lag by a fraction of the idle-link timeout).
    pub idle_ms: u64,
    /// How the link's datagrams travel: straight to the peer, or through a relay.
    pub path: LinkPath,
    /// The relay carrying a relayed link now (`None` for a direct link, or while a relayed
    /// link moves to another relay).
    pub via: Option<NodeId>,
}

/// How a link's datagrams travel (`"direct"` or `"relay"` in the status JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkPath {
    /// Straight between the two nodes' sockets.
    Direct,
    /// Through a relay, end-to-end encrypted (see [`crate::relay`]).
    Relay,
}

/// A snapshot of a node's routing state and links.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Whether it is part of an overlay.
    pub active: bool,
    /// The leaf set, counter-clockwise side first.
    pub leaf_set: Vec<NodeId>,
    /// Routing-table entries.
    pub routing_table: Vec<PeerStatus>,
    /// Neighbourhood set (nearest by RTT).
    pub neighbourhood: Vec<PeerStatus>,
    /// Open QUIC links.
    pub connections: Vec<ConnectionStatus>,
    /// The relays this node is homed on (empty unless the node is private).
    pub relays: Vec<NodeId>,
    /// What this node carries as a relay (`None` unless it serves as one).
    pub relay: Option<crate::relay::RelayServerStatus>,
    /// Runtime counters.
    pub stats: NodeStats,
    /// Control messages sent by the Pastry core (all kinds but routed payloads).
    pub control_msgs_sent: u64,
    /// Estimated bytes of those control messages.
    pub control_bytes_sent: u64,
    /// Routed messages this node sent again another way because a next hop did not
    /// acknowledge in time (0 in a healthy overlay).
    pub reroutes: u64,
    /// Copies of routed messages this node sent on to a second next hop because the first, not
    /// heard from lately, had not acknowledged within twice its round trip (hedged hops).
    pub hedges: u64,
    /// Own messages that used up their attempts and were routed afresh instead of failing.
    pub fresh_rounds: u64,
    /// Second copies of routed messages this node received as root and did not deliver again.
    pub duplicates_suppressed: u64,
    /// Routed messages this node passed on and holds until the next hop acknowledges that it
    /// passed them on in turn (0 once an idle overlay has settled).
    pub in_custody: usize,
    /// Roots held in the route cache.
    pub route_cache_roots: usize,
    /// Own messages sent straight to a cached root.
    pub route_cache_hits: u64,
    /// Of those, the ones another node answered for (the entry was stale; the message took a
    /// detour, never a wrong delivery).
    pub route_cache_stale: u64,
    /// Own messages a cached root's member would have taken had this node held a link to it:
    /// they went through the routing table's links instead of opening one (a handshake).
    pub route_cache_unlinked: u64,
    /// Links this node asked for to such members, in the background, so that later messages
    /// go to them straight.
    pub route_cache_links_requested: u64,
    /// Roots' answers this node sent back along the route, holding no link to the origin.
    pub root_answers_relayed: u64,
    /// Relayed answers this node passed on towards their origin, as a hop of the route.
    pub root_answer_relays: u64,
    /// Leaf sets this node holds of nodes in its sparse routing-table rows' slots (the slots'
    /// entries and the extensions towards the slots' ends), so that a route through one of
    /// those slots can skip its final hops (see [`crate::pastry`]'s hints).
    pub hints_held: usize,
    /// Probes this node sent to such entries for their neighbours.
    pub hint_probes: u64,
    /// Answers to those probes kept as hints.
    pub hints_learned: u64,
    /// Answers refused because the listed neighbours spanned more than this node's own leaf
    /// set.
    pub hints_refused: u64,
    /// Whether nodes this node never sent to can dial it (see [`crate::reach`]); serialised
    /// as `"public"` or `"private"` (unknown counts as private).
    #[serde(serialize_with = "serialize_reachability")]
    pub reachability: Reachability,
    /// Addresses at least two distinct peers see this node at.
    pub observed_addrs: Vec<SocketAddr>,
    /// Hole punching: direct links, attempts, successes, time to direct, fallbacks.
    pub punch: crate::punch::PunchStatus,
}

fn serialize_reachability<S: serde::Serializer>(
    reachability: &Reachability,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(reachability.as_str())
}
