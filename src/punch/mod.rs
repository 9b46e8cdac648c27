//! Hole punching: a link to or from a private node that runs through a relay moves to a direct
//! path when both NATs allow it, falls back to the relay when that path stops answering, and
//! follows a NAT that changes its external port.
//!
//! # The protocol
//! - **Offer.** For each relayed link, the end with the lower id sends
//!   [`PunchMessage::Offer`] on the relayed link (a request on a bi stream): a fresh random
//!   token, its advertised address and its candidate addresses (where a public peer sees it
//!   now, and the addresses reachability confirmed). The other end answers
//!   [`PunchMessage::Ready`] with its own. The frames travel inside the end-to-end encrypted
//!   connection, so only the two nodes learn the tokens.
//! - **Probes.** Both ends then send pings (`probe.rs`) from the node's own UDP socket, the one
//!   quinn uses, to each other's candidates every 100 ms for up to 3 s. Behind
//!   endpoint-independent NATs the first ping of each side opens its own NAT for the other's
//!   address, so a later ping gets through. A ping carries the receiver's token; the receiver
//!   answers a pong to the ping's source. A pong proves the path both ways: the socket then
//!   carries the peer's datagrams on it ([`socket::PunchSocket`]), under the same QUIC
//!   connection.
//! - **Public peers.** If one end is public (its advertised address is real), the private end
//!   dials it there instead; the direct link replaces the relayed one (`transport/endpoint/links.rs`).
//! - **Health.** On a direct path each end pings every 200 ms; 700 ms without a pong and the
//!   peer's datagrams go through the relay again (a fallback), and punching is tried again.
//!   That is shorter than the core's probe timeout on a fast link, so a peer behind a path
//!   that just died is not declared dead before the relay takes over.
//! - **Rebinding.** A NAT that changes the external port breaks the direct path: the ends fall
//!   back, then punch again with the address a public peer sees now. A ping that arrives
//!   from a new address with a valid token is answered, and its pong moves the path there.
//! - **Bounds.** At most [`MAX_PUNCHING`] punches at once per node, at most
//!   [`MAX_ATTEMPTS`] failed attempts per link (the pause between them doubles from 1 s up to
//!   [`MAX_BACKOFF`]), offers from one peer at most one per second, at most [`MAX_ADDRS`]
//!   candidates per frame. A probe is 25 bytes; an attempt sends at most 30 per candidate.
//!
//! The protocol's decisions live in a state machine with no IO and no clock (`machine.rs`);
//! the service task (`service.rs`) feeds it and carries out its effects.
//!
//! This module owns the protocol's state and the socket layer that moves datagrams; it reaches
//! the network through the node's [`Transport`](crate::transport::Transport) (requests on the
//! relayed link, dials) and the socket, and knows nothing of Pastry.

mod machine;
pub mod message;
mod probe;
mod service;
pub(crate) mod socket;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use message::{PunchError, PunchMessage, MAX_ADDRS};
pub use socket::PunchSocket;

use crate::id::NodeId;
use crate::transport::Responder;

/// Punches in progress at once, per node.
pub const MAX_PUNCHING: usize = 16;
/// Failed attempts per link before it stays relayed (until it is linked again).
pub const MAX_ATTEMPTS: u32 = 12;
/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Hole punching's counters ([`Status::punch`](crate::node::Status::punch)).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PunchStatus {
    /// Relayed links whose datagrams take a punched direct path now.
    pub direct_links: usize,
    /// Links being punched now.
    pub punching: usize,
    /// Punch attempts started (this end probing).
    pub attempts: u64,
    /// Attempts that found a direct path.
    pub successes: u64,
    /// Attempts that did not (the link stays relayed).
    pub failures: u64,
    /// Direct paths that stopped answering (the link went back to the relay).
    pub fallbacks: u64,
    /// Relayed links to public peers that this node replaced by dialling the peer directly.
    pub dialled_public: u64,
    /// From a relayed link's first sight to its first direct path, the latest (ms).
    pub last_time_to_direct_ms: Option<u64>,
    /// The median of the latest 64 such times (ms).
    pub median_time_to_direct_ms: Option<u64>,
    /// The latest 64 such times (ms), oldest first.
    pub recent_times_to_direct_ms: Vec<u64>,
    /// Probes dropped (a full queue or socket).
    pub probes_dropped: u64,
}

/// A punch frame from a peer, handed over by the node's runtime.
pub(crate) struct Request {
    pub(crate) from: NodeId,
    pub(crate) from_addr: SocketAddr,
    pub(crate) message: PunchMessage,
    pub(crate) reply: Responder,
}

/// Requests waiting for the service; past it, new ones are dropped (reset unanswered).
pub(crate) const REQUEST_QUEUE: usize = 64;

/// What the node handle reads: the counters and which peers are direct now.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    status: Mutex<PunchStatus>,
    direct: Mutex<std::collections::HashSet<NodeId>>,
}

impl Shared {
    /// The counters now.
    pub(crate) fn status(&self) -> PunchStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `peer`'s relayed link takes a punched direct path now.
    pub(crate) fn is_direct(&self, peer: NodeId) -> bool {
        self.direct
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&peer)
    }
}

/// Starts the punch service of a node whose advertised address is `advertised` (it changes
/// when the node turns private or public).
pub(crate) fn spawn(
    transport: crate::transport::Transport,
    directs: Arc<socket::Directs>,
    probes: tokio::sync::mpsc::Receiver<socket::Received>,
    me: NodeId,
    advertised: tokio::sync::watch::Receiver<SocketAddr>,
    reach: tokio::sync::watch::Receiver<crate::reach::ReachStatus>,
) -> (tokio::sync::mpsc::Sender<Request>, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let (requests, requests_rx) = tokio::sync::mpsc::channel(REQUEST_QUEUE);
    let service = service::Service::new(transport, directs, me, advertised, reach, shared.clone());
    tokio::spawn(service.run(requests_rx, probes));
    (requests, shared)
}
