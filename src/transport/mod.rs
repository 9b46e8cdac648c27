//! Authenticated QUIC links between Wendy nodes.
//!
//! This module owns all of quinn and rustls: one quinn endpoint per node (one UDP socket, both
//! client and server), the rustls configuration ([`tls`]), the certificate verifiers that bind a
//! peer's certificate key to its [`NodeId`] (`verifier.rs`), the admission policy
//! ([`Admission`]), the connection pool (`pool.rs`) and the one-frame-per-stream protocol
//! (`stream.rs`). It knows nothing of Pastry routing: it moves [`Body`] frames between verified
//! peers and reports what happens as [`TransportEvent`]s.
//!
//! # Streams
//! - One-way message ([`Transport::send`]): a fresh uni stream carrying one frame, to its end.
//! - Request ([`Transport::request`]): a bi stream; the request frame is length-prefixed
//!   (4 bytes, big-endian) and the stream's send side is then finished; the answer is one frame,
//!   to the end of the other direction.
//! - Raw stream ([`Transport::open_stream`]): a bi stream whose length-prefixed header frame is
//!   a [`Body::Tunnel`]; after it, both directions carry the application's bytes.
//!
//! Every read is bounded by [`Limits::max_message_size`]. A bad frame (malformed, truncated,
//! oversized, unknown version or kind) stops or resets only that stream with a
//! [`StreamErrorCode`], is logged once and reported as [`TransportEvent::StreamRejected`]; the
//! connection and its other streams continue.
//!
//! # Read budgets
//! A frame is copied out of QUIC only once its bytes are charged to its link's budget
//! ([`Limits::link_read_budget`]) and the node's ([`Limits::node_read_budget`]), so unfinished
//! streams cost at most those plus QUIC's receive windows, which then flow-control the peer.
//! A frame's first 16 KiB come from the link's small-frame pool; a longer frame waits for the
//! link's one large-frame slot with its data unread. A frame that cannot be charged, or cannot
//! wait without risking the link's flow control (too many large frames at once, see
//! `budget.rs`), is reset with [`StreamErrorCode::Overloaded`]; one that holds the slot longer
//! than [`Limits::stream_read_timeout`] with [`StreamErrorCode::Timeout`].
//!
//! # Events and backpressure
//! Events go out on a bounded channel of [`Limits::event_capacity`]. A stream reader first
//! reserves a slot in that channel and only then reads its stream, so when the consumer falls
//! behind, unread data stays in QUIC's flow-control windows and the sending peers slow down:
//! memory stays bounded (by the receive windows and the channel), never grows with the backlog.
//!
//! ```no_run
//! use wendy::identity::{Identity, Validity};
//! use wendy::transport::{Admission, Transport, TransportConfig, TransportEvent};
//! use wendy::wire::Body;
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::generate();
//! let certificate = identity.self_signed_certificate(Validity::days_from_now(365))?;
//! let config = TransportConfig::new("127.0.0.1:0".parse()?, identity, certificate, Admission::Open);
//! let (transport, mut events) = Transport::bind(config).await?;
//! let peer_addr = "127.0.0.1:4000".parse()?;
//! let peer = transport.connect(peer_addr, None).await?;
//! transport.send(peer, peer_addr, &Body::Direct { payload: b"hello".to_vec().into() }).await?;
//! while let Some(event) = events.recv().await {
//!     if let TransportEvent::Message { from, body, .. } = event {
//!         println!("{from}: {body:?}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod admission;
mod budget;
mod dials;
mod endpoint;
mod error;
pub(crate) mod heap;
mod pool;
mod stream;
pub mod tls;
mod verifier;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use admission::{Admission, AuthError};
pub use dials::DialRefused;
pub(crate) use endpoint::RelayedDialHook;
pub use endpoint::{DialBackError, Transport};
pub use error::{
    BindError, ConfigError, ConnectError, ReplyError, RequestError, SendError, StreamError,
};
pub use stream::{RawStream, RawStreamError, Responder};

pub use tls::{TlsError, ALPN};

use crate::id::NodeId;
use crate::identity::{Certificate, Identity};
use crate::wire::{self, Body, WireError};

/// Everything [`Transport::bind`] needs.
#[derive(Clone)]
pub struct TransportConfig {
    /// The UDP address to bind (IPv4 or IPv6; port 0 picks a free port).
    pub listen: SocketAddr,
    /// This node's key; its [`NodeId`] is derived from it.
    pub identity: Identity,
    /// This node's certificate chain, end-entity first (its key must be `identity`'s), followed by
    /// any intermediates. The mesh CA itself need not be included.
    pub certificate_chain: Vec<Certificate>,
    /// Which peers may connect and be connected to.
    pub admission: Admission,
    /// Transport limits and timeouts.
    pub limits: Limits,
    /// A ready-made socket to run on instead of binding `listen` (then ignored), e.g. a
    /// `wendy::testing::DelaySocket` (feature `testing`) that emulates network distance. Default
    /// `None`: bind a plain UDP socket at `listen`.
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
}

impl TransportConfig {
    /// A config with one certificate and the default [`Limits`].
    pub fn new(
        listen: SocketAddr,
        identity: Identity,
        certificate: Certificate,
        admission: Admission,
    ) -> Self {
        Self {
            listen,
            identity,
            certificate_chain: vec![certificate],
            admission,
            limits: Limits::default(),
            socket: None,
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TransportConfig")
            .field("listen", &self.listen)
            .field("node_id", &self.identity.node_id())
            .field("admission", &self.admission)
            .field("limits", &self.limits)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Every limit and timeout of the transport, set explicitly (quinn's defaults are never relied
/// on by accident). The defaults suit a Pastry node with a few hundred links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame accepted or sent (version byte included). Bounds the memory one stream
    /// can make us hold. Default 1 MiB ([`wire::DEFAULT_MAX_FRAME_SIZE`]).
    pub max_message_size: usize,
    /// The most links in the pool. A full pool evicts its least recently used idle link; when
    /// every link is busy, new links fail with [`ConnectError::TooManyConnections`]. Default
    /// 1024: a Pastry node's state (32 x 15 routing entries, leaf set, neighbourhood) is at most
    /// ~530 peers, so this leaves room for clients.
    pub max_connections: usize,
    /// The most incoming handshakes quinn holds before refusing new ones (quinn `max_incoming`):
    /// bounds the memory a connection flood can take. Default 256.
    pub max_incoming: usize,
    /// The most incoming handshakes in progress at once; beyond it new ones are refused, and
    /// past half of it a client whose address is not validated yet is asked for a stateless
    /// retry first (so a flood from spoofed addresses costs no handshake state). Default 128:
    /// a node that many others join through at once (a cluster's bootstrap) still takes them.
    pub max_handshakes: usize,
    /// The most links to peers the node's routing state does not hold (see
    /// [`Transport::protect`]): past it, a new link evicts the least recently used idle
    /// unprotected link, or is refused if every one is busy. Links to protected peers (leaf
    /// set, routing table) never count against it and are evicted last. Default 256.
    pub max_unprotected_links: usize,
    /// How many uni streams (one-way messages) a peer may have open at once on one busy link
    /// (quinn `max_concurrent_uni_streams`). High enough for one RTT of small messages at full
    /// speed; the peer waits for credit beyond it. Default 256: quinn keeps a slot for every
    /// stream a peer may open, on every link, so this is paid per connection in memory
    /// (BENCHMARKS.md, `memory`), and on loopback 256 already gives raw quinn's one-way rate
    /// (`wendy bench link`). A link starts with [`Self::initial_concurrent_uni_streams`] and
    /// gets this once it carries a flow.
    pub max_concurrent_uni_streams: u32,
    /// How many uni streams a peer may have open at once on a new link. When the peer has
    /// opened this many within one second, the link's credit grows to
    /// [`Self::max_concurrent_uni_streams`] (and stays). Default 256, the full credit: a
    /// smaller one (e.g. 16) saves memory per link end (`rss_kib_per_connection`,
    /// BENCHMARKS.md) on nodes that keep many links carrying a few control messages each, but
    /// its cost on routed latency is not known, so it is a choice left to the operator.
    pub initial_concurrent_uni_streams: u32,
    /// How many bi streams (requests, tunnels) a peer may have open at once on one link (quinn
    /// `max_concurrent_bidi_streams`). Default 64 (see [`Self::max_concurrent_uni_streams`]).
    pub max_concurrent_bi_streams: u32,
    /// Unread bytes a peer may send on one stream (quinn `stream_receive_window`). Default 1 MiB,
    /// so a maximum-size message never waits for a window update.
    pub stream_receive_window: u32,
    /// Unread bytes a peer may send on one link, all streams together (quinn `receive_window`).
    /// Bounds the memory one link takes while the consumer is behind, and what a peer that
    /// never finishes its streams costs beyond [`Self::link_read_budget`]. Default 4 MiB: one
    /// link then carries at most 4 MiB per round trip (about 40 MiB/s at 100 ms, far more than
    /// Pastry's messages need), and up to three large frames may wait for the link's
    /// large-frame slot (see the module docs on read budgets); a bulk-transfer deployment may
    /// raise it, with that much more memory per link.
    pub connection_receive_window: u32,
    /// Unacknowledged bytes we buffer for one link (quinn `send_window`). Default 8 MiB.
    pub send_window: u64,
    /// How often an otherwise quiet link sends a keep-alive (quinn `keep_alive_interval`), so a
    /// live peer never hits [`Self::max_idle_timeout`] and NAT bindings stay open. Default 25 s:
    /// longer than the Pastry heartbeat period (15 s), so links that carry heartbeats never
    /// need one, and longer than [`Self::idle_link_timeout`], so an unused link is closed before
    /// it sends any; within the 30 s UDP timeout of common NATs. Every keep-alive is a
    /// datagram and its acknowledgement, on every link, so a short period makes keep-alives
    /// most of an idle node's traffic (BENCHMARKS.md, suite `idle`).
    pub keep_alive: Duration,
    /// How long a link may receive nothing at all before it is declared dead (quinn
    /// `max_idle_timeout`): with keep-alives on, this is the failure detection time of a silent
    /// peer ([`LinkLostReason::TimedOut`]). Default 60 s (more than two missed keep-alives;
    /// Pastry's own probes detect a silent leaf-set neighbour sooner).
    pub max_idle_timeout: Duration,
    /// How long a link may go unused (no streams either way) before the pool closes it.
    /// Default 20 s: longer than the Pastry heartbeat period (15 s), so the links to leaf-set
    /// neighbours stay up, and shorter than [`Self::keep_alive`]. A link opened to measure a
    /// peer's RTT or to answer one request does not linger: each idle link costs memory (its
    /// QUIC and TLS state, `rss_kib_per_connection` in BENCHMARKS.md) and keep-alive traffic.
    pub idle_link_timeout: Duration,
    /// How many idle links the pool keeps for the whole [`Self::idle_link_timeout`]; beyond
    /// them, links unused for [`Self::excess_idle_link_timeout`] are closed, least recently
    /// used first (as libp2p's connection manager keeps a low watermark). Default: no cap
    /// (`usize::MAX`). A join makes a node measure and message dozens of peers once each, so
    /// right after it a node holds dozens of links for the idle timeout; a small cap frees
    /// them within a second, but a link closed this way costs a handshake when it is wanted
    /// again, which routes right after a build pay in latency and throughput (BENCHMARKS.md,
    /// `memory`). The memory closed links freed is given back to the operating system only
    /// with [`Self::release_freed_memory`].
    pub max_idle_links: usize,
    /// How long a link beyond [`Self::max_idle_links`] may go unused before it is closed.
    /// Default 1 s: far longer than the exchanges of a join or a measurement take on any
    /// network, so a link is not closed under a conversation in progress.
    pub excess_idle_link_timeout: Duration,
    /// Whether to give the heap freed by closed links back to the operating system (glibc's
    /// `malloc_trim`, a couple of seconds after links closed, at most once per 10 s for the
    /// whole process). glibc otherwise keeps a join's burst of link state resident for good, so
    /// an idle node's resident size stays at its join's peak (BENCHMARKS.md, `memory`). Default
    /// false: the trim acts on the allocator of the whole process, which is the program's
    /// business, not a library's; the `wendy` binary turns it on. Without glibc it does nothing.
    pub release_freed_memory: bool,
    /// How long a dial (QUIC + TLS handshake) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a reachability dial-back (a handshake from a fresh socket, see
    /// [`Transport::dial_back`]) may take before the node dialled counts as unreachable.
    /// Shorter than [`Self::connect_timeout`]: the node waits for this answer to learn whether
    /// it is private. Default 2 s.
    pub dial_back_timeout: Duration,
    /// How long opening a stream may wait for stream credit from the peer. Default 5 s.
    pub open_stream_timeout: Duration,
    /// How long a request may wait for its answer. Default 10 s.
    pub request_timeout: Duration,
    /// How long an incoming stream may take to deliver its frame once we start reading it.
    /// Default 10 s.
    pub stream_read_timeout: Duration,
    /// Bytes of frames not yet complete that one link may make this node hold (see the module
    /// docs on read budgets): one maximum-size frame read at a time, plus small frames' first
    /// bytes. Must be at least [`Self::max_message_size`] + 16 KiB. Default 2 MiB: a peer that
    /// opens streams and never finishes them costs this plus the link's receive window
    /// ([`Self::connection_receive_window`]), however many streams it opens.
    pub link_read_budget: usize,
    /// Bytes of frames not yet complete that all links together may make this node hold. A
    /// large frame waits for room (its data stays in QUIC's windows, flow-controlling its
    /// sender); a small frame's first bytes without room reset its stream with
    /// [`StreamErrorCode::Overloaded`]. Must be at least [`Self::link_read_budget`]. Default
    /// 64 MiB.
    pub node_read_budget: usize,
    /// The most dials in flight at once, node-wide (each sends QUIC Initial packets until it
    /// completes or times out). A dial beyond them waits for one to end, at most
    /// [`Self::connect_timeout`], then fails with
    /// [`DialRefused::Limit`]. Default 32.
    pub max_dials_in_flight: usize,
    /// How long an address whose dial failed is not dialled again (doubling on each further
    /// failure, up to [`Self::max_dial_backoff`]); a link from that address clears it. Default
    /// 30 s.
    pub dial_backoff: Duration,
    /// The longest back-off of a failed address. Default 5 minutes.
    pub max_dial_backoff: Duration,
    /// Capacity of each bounded event channel: the transport's to its owner, and a node's to
    /// its application. Default 4096.
    pub event_capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: wire::DEFAULT_MAX_FRAME_SIZE,
            max_connections: 1024,
            max_incoming: 256,
            max_handshakes: 128,
            max_unprotected_links: 256,
            max_concurrent_uni_streams: 256,
            initial_concurrent_uni_streams: 256,
            max_concurrent_bi_streams: 64,
            stream_receive_window: 1 << 20,
            connection_receive_window: 4 << 20,
            send_window: 8 << 20,
            keep_alive: Duration::from_secs(25),
            max_idle_timeout: Duration::from_secs(60),
            idle_link_timeout: Duration::from_secs(20),
            max_idle_links: usize::MAX,
            excess_idle_link_timeout: Duration::from_secs(1),
            release_freed_memory: false,
            connect_timeout: Duration::from_secs(5),
            dial_back_timeout: Duration::from_secs(2),
            open_stream_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            stream_read_timeout: Duration::from_secs(10),
            link_read_budget: 2 << 20,
            node_read_budget: 64 << 20,
            max_dials_in_flight: 32,
            dial_backoff: Duration::from_secs(30),
            max_dial_backoff: Duration::from_secs(300),
            event_capacity: 4096,
        }
    }
}

/// Why a set of [`Limits`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A count, size or timeout that must be positive is zero.
    #[error("{0} must be above zero")]
    Zero(&'static str),
    /// A frame must hold at least the largest control message.
    #[error("max_message_size must be at least {min} bytes (got {got})")]
    MessageSize {
        /// The configured size.
        got: usize,
        /// The smallest usable size.
        min: usize,
    },
    /// A read budget cannot hold what it must.
    #[error("{field} must be at least {min} bytes (got {got})")]
    ReadBudget {
        /// The field.
        field: &'static str,
        /// The configured size.
        got: usize,
        /// The smallest usable size.
        min: usize,
    },
    /// Keep-alives must come before the idle timeout ends the link.
    #[error("keep_alive ({keep_alive:?}) must be below max_idle_timeout ({idle:?})")]
    KeepAlive {
        /// The keep-alive interval.
        keep_alive: Duration,
        /// The idle timeout.
        idle: Duration,
    },
}

impl Limits {
    /// The smallest usable [`Limits::max_message_size`].
    pub const MIN_MESSAGE_SIZE: usize = 1024;

    /// Checks that the limits are usable: positive counts, windows and timeouts, frames of at
    /// least [`Self::MIN_MESSAGE_SIZE`], and keep-alives below the idle timeout.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_message_size < Self::MIN_MESSAGE_SIZE {
            return Err(LimitsError::MessageSize {
                got: self.max_message_size,
                min: Self::MIN_MESSAGE_SIZE,
            });
        }
        let positive = [
            ("max_connections", self.max_connections > 0),
            ("max_incoming", self.max_incoming > 0),
            ("max_handshakes", self.max_handshakes > 0),
            ("max_unprotected_links", self.max_unprotected_links > 0),
            (
                "max_concurrent_uni_streams",
                self.max_concurrent_uni_streams > 0,
            ),
            (
                "max_concurrent_bi_streams",
                self.max_concurrent_bi_streams > 0,
            ),
            ("stream_receive_window", self.stream_receive_window > 0),
            (
                "connection_receive_window",
                self.connection_receive_window > 0,
            ),
            ("send_window", self.send_window > 0),
            ("max_idle_timeout", !self.max_idle_timeout.is_zero()),
            ("connect_timeout", !self.connect_timeout.is_zero()),
            ("dial_back_timeout", !self.dial_back_timeout.is_zero()),
            ("open_stream_timeout", !self.open_stream_timeout.is_zero()),
            ("request_timeout", !self.request_timeout.is_zero()),
            ("stream_read_timeout", !self.stream_read_timeout.is_zero()),
            ("event_capacity", self.event_capacity > 0),
            ("max_dials_in_flight", self.max_dials_in_flight > 0),
            ("dial_backoff", !self.dial_backoff.is_zero()),
        ];
        if let Some((field, _)) = positive.into_iter().find(|(_, ok)| !ok) {
            return Err(LimitsError::Zero(field));
        }
        let link_min = self.max_message_size + budget::SMALL_FRAME;
        if self.link_read_budget < link_min {
            return Err(LimitsError::ReadBudget {
                field: "link_read_budget",
                got: self.link_read_budget,
                min: link_min,
            });
        }
        if self.node_read_budget < self.link_read_budget {
            return Err(LimitsError::ReadBudget {
                field: "node_read_budget",
                got: self.node_read_budget,
                min: self.link_read_budget,
            });
        }
        if self.keep_alive >= self.max_idle_timeout {
            return Err(LimitsError::KeepAlive {
                keep_alive: self.keep_alive,
                idle: self.max_idle_timeout,
            });
        }
        Ok(())
    }
}

/// Takes one-way messages on the task that read them, instead of on the event channel (see
/// [`Transport::set_inbox`]).
///
/// This is the node's fast path: a routed message goes from QUIC's stream straight into the
/// Pastry core, with no hand-off to another task on its latency path.
pub(crate) trait Inbox: Send + Sync {
    /// Handles one event. Must not block. Returns `true` when [`Inbox::settle`] should run once
    /// the tasks this call woke have had their turn.
    fn event(&self, event: TransportEvent) -> bool;

    /// Finishes what [`Inbox::event`] left for later.
    fn settle(&self);
}

/// What the transport reports to its owner.
#[derive(Debug)]
pub enum TransportEvent {
    /// A link to a peer is up (emitted once per peer until [`TransportEvent::LinkLost`]).
    LinkUp {
        /// The verified peer.
        peer: NodeId,
        /// The peer's address.
        addr: SocketAddr,
        /// The smoothed RTT after the handshake.
        rtt: Duration,
        /// Whether the peer dialled us.
        inbound: bool,
    },
    /// The link to a peer is gone.
    LinkLost {
        /// The peer.
        peer: NodeId,
        /// Why (see [`LinkLostReason::is_failure`]).
        reason: LinkLostReason,
    },
    /// A one-way message from a verified peer.
    Message {
        /// The peer (derived from its certificate, never from the message).
        from: NodeId,
        /// The peer's address.
        from_addr: SocketAddr,
        /// The frame.
        body: Body,
    },
    /// A request from a verified peer; answer it with [`Responder::reply`].
    Request {
        /// The peer.
        from: NodeId,
        /// The peer's address.
        from_addr: SocketAddr,
        /// The request frame.
        body: Body,
        /// Where the answer goes. Dropping it resets the stream with
        /// [`StreamErrorCode::NoReply`].
        reply: Responder,
    },
    /// A raw stream opened by a peer with [`Transport::open_stream`].
    Stream {
        /// The peer.
        from: NodeId,
        /// The peer's address.
        from_addr: SocketAddr,
        /// The header frame (a [`Body::Tunnel`]).
        header: Body,
        /// The stream, positioned after the header.
        stream: RawStream,
    },
    /// A peer sent a bad frame; only that stream was dropped.
    StreamRejected {
        /// The peer.
        from: NodeId,
        /// What was wrong.
        error: WireError,
    },
    /// A peer closed our link to it with
    /// [`CloseCode::IdentityInUse`]: it already holds a live link to this node's identity at
    /// another address. A claim, not a proof: another process may run with this node's key
    /// there, which only a handshake with that address can show.
    IdentityInUse {
        /// The address the peer names (`None` if its close reason named none).
        live_at: Option<SocketAddr>,
        /// The peer that refused the link.
        reported_by: NodeId,
        /// The peer's address.
        reported_from: SocketAddr,
    },
    /// An incoming handshake failed (the peer was refused or the handshake broke).
    HandshakeFailed {
        /// The address the attempt came from.
        addr: SocketAddr,
        /// Why.
        error: ConnectError,
    },
}

/// Why a link went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkLostReason {
    /// This node closed the link ([`Transport::close`], eviction, idle, shutdown).
    ClosedLocally(CloseCode),
    /// The peer closed the link with an application close code (see [`CloseCode`]).
    ClosedByPeer {
        /// The peer's close code, if Wendy knows it.
        code: Option<CloseCode>,
        /// The raw code.
        raw_code: u64,
    },
    /// The peer stopped answering: nothing received for [`Limits::max_idle_timeout`] despite
    /// keep-alives. The peer is probably dead.
    TimedOut,
    /// The peer's endpoint no longer knows the link (it restarted): a stateless reset.
    Reset,
    /// A QUIC or TLS protocol error.
    Error(String),
}

impl LinkLostReason {
    /// Whether the loss signals a failed peer (rather than an orderly close).
    pub fn is_failure(&self) -> bool {
        match self {
            Self::ClosedLocally(_) => false,
            Self::ClosedByPeer { code, .. } => !matches!(
                code,
                Some(CloseCode::Idle | CloseCode::Closed | CloseCode::Evicted)
            ),
            Self::TimedOut | Self::Reset | Self::Error(_) => true,
        }
    }
}

pub use crate::wire::codes::{CloseCode, StreamErrorCode};

impl CloseCode {
    /// The code as a QUIC varint.
    pub fn to_varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self.value())
    }
}

impl StreamErrorCode {
    /// The code as a QUIC varint.
    pub fn to_varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self.value())
    }
}

/// What unfinished incoming frames hold ([`Transport::read_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadBudgetStatus {
    /// Bytes held node-wide (at most [`Self::node_max`]).
    pub node_held: usize,
    /// [`Limits::node_read_budget`].
    pub node_max: usize,
    /// Bytes held by the link that holds most (at most [`Limits::link_read_budget`]).
    pub largest_link_held: usize,
}

/// Who a link is to and where, without the statistics of a [`LinkInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkedPeer {
    /// The peer.
    pub peer: NodeId,
    /// The peer's address.
    pub addr: SocketAddr,
}

/// A snapshot of one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The peer.
    pub peer: NodeId,
    /// The peer's address.
    pub addr: SocketAddr,
    /// Whether the peer dialled us.
    pub inbound: bool,
    /// QUIC's smoothed RTT.
    pub rtt: Duration,
    /// Time since the link was last used (noticed at the pool's periodic looks, so it may lag
    /// by a fraction of [`Limits::idle_link_timeout`]).
    pub idle: Duration,
    /// Streams in progress on the link.
    pub in_flight: usize,
    /// UDP bytes sent on the link.
    pub bytes_sent: u64,
    /// UDP bytes received on the link.
    pub bytes_received: u64,
    /// UDP datagrams sent on the link.
    pub packets_sent: u64,
    /// UDP datagrams received on the link.
    pub packets_received: u64,
    /// Packets QUIC declared lost.
    pub packets_lost: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's code comes back as the variant that sent it (the registry's own tests check
    /// the ranges).
    #[test]
    fn quic_codes_round_trip_through_varints() {
        for &code in CloseCode::ALL {
            assert_eq!(
                CloseCode::from_u64(code.to_varint().into_inner()),
                Some(code)
            );
        }
        for &code in StreamErrorCode::ALL {
            assert_eq!(
                StreamErrorCode::from_u64(code.to_varint().into_inner()),
                Some(code)
            );
        }
    }
}
