//! The async runtime and public API: a [`Node`] drives the sans-IO [`Pastry`](crate::pastry::Pastry)
//! state machine with [`Transport`] events and timers.
//!
//! This is the only module (with `transport/`) that uses tokio and reads the clock. It owns the
//! mapping between the two worlds: transport events and application commands go in as
//! `handle_*` calls with the current time, and the core's outputs become QUIC sends, RTT
//! measurements and [`NodeEvent`]s for the application.
//!
//! # Application hooks
//!
//! Hooks are an **event stream** ([`Events`]) plus one synchronous **forward interceptor**
//! ([`NodeBuilder::on_forward`]). Events (deliver, direct message, leaf set changed, node
//! joined, node left, heartbeat, error) are plain values an application can `select!` on from
//! any task, without the overlay calling into user code; the forward decision is the one hook
//! that must answer before the node can continue, so it is a callback. The event channel is
//! bounded ([`Limits::event_capacity`]): a slow application never makes memory grow;
//! when the channel is full the newest event is dropped and counted in
//! [`NodeStats::events_dropped`], so the protocol (probes, acks) keeps running on time.
//!
//! ```no_run
//! use wendy::id::Key;
//! use wendy::identity::Identity;
//! use wendy::node::{Node, NodeEvent};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (node, mut events) = Node::builder(Identity::generate())
//!     .listen("127.0.0.1:0".parse()?)
//!     .spawn()
//!     .await?;
//! node.join(&["127.0.0.1:4000".parse()?]).await?;
//! node.route(Key::from_name("room:lobby"), b"hello".to_vec()).await?;
//! while let Some(event) = events.recv().await {
//!     if let NodeEvent::Deliver(delivery) = event {
//!         println!("{} hops: {:?}", delivery.hops, delivery.payload);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod driver;
mod kinds;
mod links;
mod mode;
pub use mode::ModeStatus;
mod origin;
mod status;
pub use status::{ConnectionStatus, LinkPath, PeerStatus, Status};
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::id::{Key, NodeId};
use crate::identity::{Certificate, Identity, Validity};
use crate::pastry::{self, PeerInfo};
use crate::reach::{self, ReachStatus};
use crate::relay::{RelayConfig, RelayStatus, Relays};
use crate::transport::{
    Admission, BindError, ConnectError, Limits, LimitsError, RawStream, SendError, Transport,
    TransportConfig,
};
use crate::wire::{Body, PayloadKind};

/// Binds a plain UDP socket for quinn at `addr`.
fn bind_udp(addr: SocketAddr) -> Result<Arc<dyn quinn::AsyncUdpSocket>, BindError> {
    use quinn::Runtime as _;
    let socket = std::net::UdpSocket::bind(addr)
        .and_then(|socket| quinn::TokioRuntime.wrap_udp_socket(socket));
    socket.map_err(|source| BindError::Socket { addr, source })
}

/// Runtime settings of a node. `Default` suits a LAN or loopback cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Pastry core's settings (structure sizes, probe and ack timers).
    pub pastry: pastry::Config,
    /// The transport's limits and timeouts.
    pub limits: Limits,
    /// Validity of the self-signed certificate made when none is given. Default 365 days.
    pub self_signed_days: u32,
    /// The bounds and timers of the topics every node serves ([`crate::topics`]).
    pub topics: crate::topics::TopicsConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            pastry: pastry::Config::default(),
            limits: Limits::default(),
            self_signed_days: 365,
            topics: crate::topics::TopicsConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Checks the Pastry core's settings and the transport's limits ([`NodeBuilder::spawn`]
    /// does it before binding anything).
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        self.pastry.validate()?;
        self.limits.validate()?;
        if self.self_signed_days == 0 {
            return Err(NodeConfigError::SelfSignedDays);
        }
        self.topics.validate()?;
        Ok(())
    }
}

/// Why a [`NodeConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// A Pastry setting is unusable.
    #[error("pastry: {0}")]
    Pastry(#[from] pastry::ConfigError),
    /// A transport limit is unusable.
    #[error("limits: {0}")]
    Limits(#[from] LimitsError),
    /// A self-signed certificate must be valid for at least a day.
    #[error("self_signed_days must be above zero")]
    SelfSignedDays,
    /// A topics setting is unusable.
    #[error("{0}")]
    Topics(#[from] crate::topics::TopicsConfigError),
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable ([`NodeConfig::validate`]).
    #[error("invalid configuration: {0}")]
    Config(#[from] NodeConfigError),
    /// The transport could not start (port in use, bad certificate, ...).
    #[error("transport: {0}")]
    Bind(#[from] BindError),
    /// A direct message or raw stream could not be sent ([`Node::send`],
    /// [`Node::open_stream`] and their `_to` forms).
    #[error("transport: {0}")]
    Send(#[from] SendError),
    /// The node's certificate could not be made.
    #[error("certificate: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// No bootstrap address answered.
    #[error("no bootstrap node reachable (tried {tried}): {last_addr}: {last_error}")]
    NoBootstrapReachable {
        /// The addresses tried, comma-separated.
        tried: String,
        /// The address of the last attempt.
        last_addr: SocketAddr,
        /// Why the last attempt failed (boxed: it is large, and rare).
        #[source]
        last_error: Box<ConnectError>,
    },
    /// A member refused this node's handshake while it joined (its CA or allow-list excludes
    /// this node), and the join then did not complete.
    #[error("{addr} refused this node while it joined: {reason}")]
    JoinRefused {
        /// The member's address.
        addr: SocketAddr,
        /// Why (the handshake error).
        reason: String,
    },
    /// Another process already runs this node's key (its NodeId) at `addr`: a handshake
    /// there proved the key. The join is abandoned and the node stopped, so the live node keeps
    /// its place.
    #[error(
        "another process already runs this node's key at {addr}: stop it, or start this node \
         with its own key"
    )]
    IdentityInUse {
        /// Where the other process runs.
        addr: SocketAddr,
    },
    /// A private node found no relay to home on (among its configured relays and the join's
    /// bootstrap nodes) in time, so nobody could reach it.
    #[error("no relay accepted this private node within {0:?}")]
    NoRelay(Duration),
    /// A bootstrap answered but the join did not complete in time.
    #[error("join did not complete within {0:?}")]
    JoinTimeout(Duration),
    /// The node is not part of an overlay yet (call [`Node::join`] first).
    #[error("the node has not joined an overlay")]
    NotJoined,
    /// `send` to a node this node does not know (not in any of its tables or links).
    #[error("unknown node {0}: not in this node's leaf set, routing table or links")]
    UnknownPeer(NodeId),
    /// The node has been shut down.
    #[error("the node is shut down")]
    Closed,
}

/// A routed message delivered at this node, the root of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The key the message was routed to.
    pub key: Key,
    /// The node that routed it, verified by this node: the previous hop's certificate when the
    /// origin sent it here itself, else the origin's ed25519 signature over the origin, the
    /// id, the key and the payload. A node whose forward hook changed the payload on the way
    /// becomes its origin (it vouches for the bytes delivered).
    pub origin: NodeId,
    /// The origin's message id (random, unique per origin).
    pub id: u64,
    /// Overlay hops taken (0 if the origin is the root).
    pub hops: u8,
    /// The application payload (a view of the frame it arrived in: see
    /// [`crate::wire::shared`]).
    pub payload: Bytes,
}

/// What the overlay tells the application.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeEvent {
    /// This node is part of the overlay; its leaf set at that moment.
    Joined {
        /// The leaf set's ids, counter-clockwise side first.
        leaf_set: Vec<NodeId>,
    },
    /// A routed message arrived at its root (this node).
    Deliver(Delivery),
    /// A message sent directly to this node with [`Node::send`].
    Direct {
        /// The sender (authenticated by its certificate).
        from: NodeId,
        /// The payload.
        payload: Bytes,
    },
    /// The leaf set's membership changed.
    LeafSetChanged {
        /// The new leaf set's ids.
        leaf_set: Vec<NodeId>,
    },
    /// A node entered this node's routing state.
    NodeJoined(NodeId),
    /// A node left this node's leaf set (failed, or left gracefully).
    NodeLeft(NodeId),
    /// A leaf-set neighbour's heartbeat arrived.
    Heartbeat {
        /// The neighbour.
        from: NodeId,
    },
    /// A message this node routed was given up (every next hop failed).
    RouteFailed {
        /// The message id.
        id: u64,
        /// Its key.
        key: Key,
    },
    /// A raw stream opened by a peer (service-mesh tunnels).
    Stream {
        /// The peer.
        from: NodeId,
        /// The service the peer asked for.
        service: String,
        /// The stream.
        stream: RawStream,
    },
    /// Something went wrong that the application may want to show (a refused peer, a bad
    /// frame); the node keeps running.
    Error(String),
    /// A message of a topic this node subscribes to ([`Node::topics`]).
    Topic(crate::topics::TopicMessage),
}

/// What a forward interceptor sees: a routed message about to leave this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The destination key.
    pub key: Key,
    /// The node that routed it, verified as for [`Delivery::origin`].
    pub origin: NodeId,
    /// The next hop chosen by Pastry.
    pub next_hop: NodeId,
    /// Hops so far.
    pub hops: u8,
}

/// The forward interceptor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAction {
    /// Forward the (possibly modified) payload.
    Continue,
    /// Drop the message here.
    Veto,
}

/// The forward interceptor: may modify `payload` in place, and returns whether to continue.
/// A modified payload is no longer covered by its origin's signature: this node sends it on as
/// its own message (see [`Delivery::origin`]).
pub type ForwardHook = dyn Fn(&Forwarded, &mut Vec<u8>) -> ForwardAction + Send + Sync;

/// Counters of a running node (the core's message counts are in [`Status`], from
/// [`Status::control_msgs_sent`] on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    /// Routed messages delivered here.
    pub delivered: u64,
    /// Routed messages originated here.
    pub routed: u64,
    /// Routed messages forwarded through here.
    pub forwarded: u64,
    /// Forwards vetoed by the interceptor.
    pub vetoed: u64,
    /// Direct messages received.
    pub direct_received: u64,
    /// Events dropped because the application did not keep up.
    pub events_dropped: u64,
    /// Sends that failed (the peer is then treated as failed).
    pub send_failures: u64,
    /// Frames from peers rejected (malformed, oversized, unknown version).
    pub frames_rejected: u64,
    /// Routed messages delivered here by their hop count: entry `i` counts deliveries after `i`
    /// hops; the last entry counts those after `HOP_BUCKETS - 1` hops or more.
    pub delivered_by_hops: [u64; HOP_BUCKETS],
    /// The hops of every message delivered here, added up (with `delivered`, the mean).
    pub delivered_hops_sum: u64,
    /// Routed messages originated here that were given up ([`NodeEvent::RouteFailed`]).
    pub routes_failed: u64,
    /// Nodes that entered this node's routing state ([`NodeEvent::NodeJoined`]).
    pub nodes_joined: u64,
    /// Nodes that left this node's leaf set ([`NodeEvent::NodeLeft`]).
    pub nodes_left: u64,
    /// Links this node dialled that failed, by reason.
    pub dial_failures: LinkFailures,
    /// Links other nodes dialled that failed in the handshake, by reason.
    pub handshake_failures: LinkFailures,
    /// Routed messages dropped because their origin could not be verified (each also an
    /// [`NodeEvent::Error`] naming the peer that sent it).
    pub origins_rejected: u64,
    /// Routes of messages originated here, timed from the first send to the root's answer (the
    /// route plus one direct hop back): entry `i` counts those of at most
    /// [`ROUTE_LATENCY_BOUNDS_S`]`[i]` seconds; the last entry counts the longer ones.
    pub route_latency_buckets: [u64; ROUTE_LATENCY_BUCKETS],
    /// Those routes' times added up, in microseconds.
    pub route_latency_sum_us: u64,
}

/// Upper bounds, in seconds, of the first buckets of [`NodeStats::route_latency_buckets`].
pub const ROUTE_LATENCY_BOUNDS_S: [f64; ROUTE_LATENCY_BUCKETS - 1] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// How many buckets [`NodeStats::route_latency_buckets`] has (the last one unbounded).
pub const ROUTE_LATENCY_BUCKETS: usize = 12;

/// How many hop counts [`NodeStats::delivered_by_hops`] tells apart.
pub const HOP_BUCKETS: usize = 9;

/// Failed link set-ups by reason, in [`NodeStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkFailures {
    /// The other side failed this node's admission checks (not on the allow-list, another
    /// CA, an expired certificate, a key that does not match the expected id).
    pub not_admitted: u64,
    /// The other side refused this node in the handshake.
    pub refused_by_peer: u64,
    /// The handshake did not finish in time.
    pub timeout: u64,
    /// The pool was full of busy links.
    pub too_many_connections: u64,
    /// Anything else (a broken handshake, an address that cannot be dialled).
    pub other: u64,
}

/// The counters behind a [`LinkFailures`].
#[derive(Default)]
struct LinkFailureCounters {
    not_admitted: AtomicU64,
    refused_by_peer: AtomicU64,
    timeout: AtomicU64,
    too_many_connections: AtomicU64,
    other: AtomicU64,
}

impl LinkFailureCounters {
    fn count(&self, error: &crate::transport::ConnectError) {
        use crate::transport::ConnectError;
        bump(match error {
            ConnectError::Auth(_) => &self.not_admitted,
            ConnectError::RefusedByPeer(_) => &self.refused_by_peer,
            ConnectError::Timeout(_) => &self.timeout,
            ConnectError::TooManyConnections { .. } => &self.too_many_connections,
            _ => &self.other,
        });
    }

    fn snapshot(&self) -> LinkFailures {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkFailures {
            not_admitted: get(&self.not_admitted),
            refused_by_peer: get(&self.refused_by_peer),
            timeout: get(&self.timeout),
            too_many_connections: get(&self.too_many_connections),
            other: get(&self.other),
        }
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    routed: AtomicU64,
    forwarded: AtomicU64,
    vetoed: AtomicU64,
    direct_received: AtomicU64,
    events_dropped: AtomicU64,
    send_failures: AtomicU64,
    frames_rejected: AtomicU64,
    delivered_by_hops: [AtomicU64; HOP_BUCKETS],
    delivered_hops_sum: AtomicU64,
    routes_failed: AtomicU64,
    nodes_joined: AtomicU64,
    nodes_left: AtomicU64,
    dial_failures: LinkFailureCounters,
    handshake_failures: LinkFailureCounters,
    origins_rejected: AtomicU64,
    route_latency_buckets: [AtomicU64; ROUTE_LATENCY_BUCKETS],
    route_latency_sum_us: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> NodeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeStats {
            delivered: get(&self.delivered),
            routed: get(&self.routed),
            forwarded: get(&self.forwarded),
            vetoed: get(&self.vetoed),
            direct_received: get(&self.direct_received),
            events_dropped: get(&self.events_dropped),
            send_failures: get(&self.send_failures),
            frames_rejected: get(&self.frames_rejected),
            delivered_by_hops: std::array::from_fn(|i| get(&self.delivered_by_hops[i])),
            delivered_hops_sum: get(&self.delivered_hops_sum),
            routes_failed: get(&self.routes_failed),
            nodes_joined: get(&self.nodes_joined),
            nodes_left: get(&self.nodes_left),
            dial_failures: self.dial_failures.snapshot(),
            handshake_failures: self.handshake_failures.snapshot(),
            origins_rejected: get(&self.origins_rejected),
            route_latency_buckets: std::array::from_fn(|i| get(&self.route_latency_buckets[i])),
            route_latency_sum_us: get(&self.route_latency_sum_us),
        }
    }

    /// Counts one route's time, from the first send to the root's answer.
    fn route_answered(&self, elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = ROUTE_LATENCY_BOUNDS_S
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(ROUTE_LATENCY_BUCKETS - 1);
        bump(&self.route_latency_buckets[bucket]);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.route_latency_sum_us
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a delivery's hops (the delivery itself is counted in `delivered`).
    fn delivered_after(&self, hops: u8) {
        let bucket = usize::from(hops).min(HOP_BUCKETS - 1);
        bump(&self.delivered_by_hops[bucket]);
        self.delivered_hops_sum
            .fetch_add(u64::from(hops), Ordering::Relaxed);
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    identity: Identity,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    certificate_chain: Option<Vec<Certificate>>,
    admission: Admission,
    config: NodeConfig,
    forward: Option<Arc<ForwardHook>>,
    seed: Option<u64>,
    socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    relay: RelayConfig,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("id", &self.identity.node_id())
            .field("listen", &self.listen)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Sets the UDP address to listen on (default `127.0.0.1:0`, a free loopback port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Runs the node on this ready-made socket instead of binding [`Self::listen`]'s address,
    /// e.g. a `wendy::testing::DelaySocket` (feature `testing`) that emulates network distance.
    pub fn socket(mut self, socket: Arc<dyn quinn::AsyncUdpSocket>) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Sets the address other nodes are told to dial (default: the bound address). Needed
    /// when listening on an unspecified address such as `0.0.0.0`. A port of 0 stands for the
    /// port bound.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Sets the node's relaying: whether it serves as a relay, whether it is private (reached
    /// only through relays), and relays to home on (see [`crate::relay`]). Default: neither.
    pub fn relay(mut self, config: RelayConfig) -> Self {
        self.relay = config;
        self
    }

    /// Uses this certificate (e.g. signed by the mesh CA) instead of a self-signed one.
    pub fn certificate(mut self, certificate: Certificate) -> Self {
        self.certificate_chain = Some(vec![certificate]);
        self
    }

    /// Uses this certificate chain, end-entity first.
    pub fn certificate_chain(mut self, chain: Vec<Certificate>) -> Self {
        self.certificate_chain = Some(chain);
        self
    }

    /// Sets who may connect and be connected to (default [`Admission::Open`]).
    pub fn admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Seeds the core's RNG (routed message ids, probe nonces, maintenance choices); default:
    /// random, from the operating system (a fixed seed makes message ids predictable).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Installs the forward interceptor: called for every routed message before it leaves this
    /// node for its next hop; it may modify the payload or veto the message.
    ///
    /// It runs on whichever task handles the message (a transport task, or the task that
    /// called [`Node::route`]) while the node's state is locked: it must return quickly, and
    /// must not wait on this node (for example `block_on(node.status())` would never return).
    pub fn on_forward<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Forwarded, &mut Vec<u8>) -> ForwardAction + Send + Sync + 'static,
    {
        self.forward = Some(Arc::new(hook));
        self
    }

    /// Binds the socket and starts the node (not yet part of an overlay: call [`Node::join`]).
    pub async fn spawn(self) -> Result<(Node, Events), NodeError> {
        self.config.validate()?;
        let certificate_chain = match self.certificate_chain {
            Some(chain) => chain,
            None => vec![self
                .identity
                .self_signed_certificate(Validity::days_from_now(self.config.self_signed_days))?],
        };
        let id = self.identity.node_id();
        let origin_auth = origin::KeyAuth::new(&self.identity);
        let topic_signer = self.identity.origin_signer();
        let inner_socket = match self.socket {
            Some(socket) => socket,
            None => bind_udp(self.listen)?,
        };
        let (socket, paths, wanted) =
            crate::relay::wrap(inner_socket).map_err(|source| BindError::Socket {
                addr: self.listen,
                source,
            })?;
        let relays = Arc::new(Relays::new(self.identity.clone(), &self.relay, paths));
        let (socket, directs, probes) =
            crate::punch::socket::wrap(socket).map_err(|source| BindError::Socket {
                addr: self.listen,
                source,
            })?;
        let transport_config = TransportConfig {
            listen: self.listen,
            identity: self.identity,
            certificate_chain,
            admission: self.admission,
            limits: self.config.limits.clone(),
            socket: Some(socket),
        };
        let (transport, transport_events) = Transport::bind(transport_config).await?;
        let direct = match self.advertise {
            Some(addr) if addr.port() == 0 => {
                SocketAddr::new(addr.ip(), transport.local_addr().port())
            }
            Some(addr) => addr,
            None => transport.local_addr(),
        };
        let addr = if self.relay.private {
            crate::relay::synthetic_addr(id)
        } else {
            direct
        };
        let me = PeerInfo { id, addr };
        relays.start(transport.clone(), addr, wanted);
        let seed = self.seed.unwrap_or_else(rand::random);
        let (commands, command_rx) = mpsc::channel(1024);
        let (events_tx, events_rx) = mpsc::channel(self.config.limits.event_capacity.max(1));
        let topics_config = self.config.topics.clone();
        let topic_events = events_tx.clone();
        let counters = Arc::new(Counters::default());
        let (reach_requests, reach) = reach::spawn(transport.clone());
        let (punch_addr, punch_addr_rx) = tokio::sync::watch::channel(addr);
        let (punch_requests, punch) = crate::punch::spawn(
            transport.clone(),
            directs,
            probes,
            id,
            punch_addr_rx,
            reach.clone(),
        );
        let runtime = driver::spawn(driver::Setup {
            me,
            config: self.config,
            seed,
            transport: transport.clone(),
            transport_events,
            commands: command_rx,
            events: events_tx,
            counters: counters.clone(),
            forward: self.forward,
            origin_auth: Some(Box::new(origin_auth)),
            reach: Some(reach_requests),
            relays: Some(relays.clone()),
            punch: Some(punch_requests),
        });
        let core = Arc::downgrade(&runtime);
        relays.on_path_moving(Box::new(move |peer| {
            if let Some(core) = core.upgrade() {
                core.path_moving(peer);
            }
        }));
        let (mode_tx, mode) = tokio::sync::watch::channel(ModeStatus {
            private: self.relay.private,
            addr,
            switches: 0,
            relays: Vec::new(),
            switch_took: None,
        });
        mode::spawn(mode::Setup {
            id,
            relays: relays.clone(),
            runtime: Arc::downgrade(&runtime),
            reach: reach.clone(),
            punch_addr,
            status: mode_tx,
            direct,
            follow: self.relay.follow_reachability,
        });
        let (topic_tx, topic_rx) = mpsc::channel(topics_config.delivery_queue.max(1024));
        runtime.subscribe(PayloadKind::Topic, topic_tx)?;
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| Shared {
            me,
            mode,
            relays,
            transport,
            counters,
            runtime,
            reach,
            punch,
            topics: crate::topics::spawn(
                Box::new(kinds::TopicPort(weak.clone())),
                topic_signer,
                topics_config,
                topic_rx,
                topic_events,
            ),
        });
        Ok((Node { commands, shared }, Events(events_rx)))
    }
}

struct Shared {
    /// This node's id and the address it advertised at start (see `mode` for the one now).
    me: PeerInfo,
    mode: tokio::sync::watch::Receiver<ModeStatus>,
    relays: Arc<Relays>,
    transport: Transport,
    counters: Arc<Counters>,
    runtime: Arc<driver::Runtime<Transport>>,
    reach: tokio::sync::watch::Receiver<ReachStatus>,
    punch: Arc<crate::punch::Shared>,
    topics: crate::topics::Topics,
}

/// The receiving end of a node's [`NodeEvent`]s.
#[derive(Debug)]
pub struct Events(mpsc::Receiver<NodeEvent>);

impl Events {
    /// The next event; `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        self.0.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<NodeEvent> {
        self.0.try_recv().ok()
    }

    /// Wraps a receiver of node events: lets a layer that consumes a node's [`Events`] (such as
    /// the service mesh) hand the events it does not handle on to the application.
    pub fn from_receiver(receiver: mpsc::Receiver<NodeEvent>) -> Self {
        Self(receiver)
    }
}

pub(crate) enum Command {
    Join {
        bootstrap: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Leave {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// A running Wendy node. Cheap to clone; every clone drives the same node.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.shared.me.id)
            .field("addr", &self.addr())
            .finish()
    }
}

impl Node {
    /// Starts building a node with this identity.
    pub fn builder(identity: Identity) -> NodeBuilder {
        NodeBuilder {
            identity,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            certificate_chain: None,
            admission: Admission::Open,
            config: NodeConfig::default(),
            forward: None,
            seed: None,
            socket: None,
            relay: RelayConfig::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.me.id
    }

    /// The address other nodes dial (its synthetic one while the node is private: see
    /// [`Self::mode`]).
    pub fn addr(&self) -> SocketAddr {
        self.shared.mode.borrow().addr
    }

    /// The node's id and address.
    pub fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            id: self.shared.me.id,
            addr: self.addr(),
        }
    }

    /// Whether the node is private (reached through relays) or public now, as a watch channel
    /// that changes when the node switches. The mode follows the reachability verdict
    /// ([`Self::reachability`]) unless [`RelayConfig::follow_reachability`] is off: a public
    /// node that finds it cannot be dialled (a firewall appeared) homes on relays and
    /// advertises its synthetic address; a private node found reachable withdraws its relay
    /// record and advertises its own address again.
    pub fn mode(&self) -> tokio::sync::watch::Receiver<ModeStatus> {
        self.shared.mode.clone()
    }

    /// Joins the overlay through the first reachable of `bootstrap`, and resolves once this
    /// node is active (its leaf set confirmed). With no address, starts a new overlay alone.
    ///
    /// Fails with [`NodeError::NoBootstrapReachable`] if no address answers, and with
    /// [`NodeError::JoinTimeout`] if the join does not complete within
    /// [`pastry::Config::join_timeout`](crate::pastry::Config::join_timeout).
    pub async fn join(&self, bootstrap: &[SocketAddr]) -> Result<(), NodeError> {
        let relays = &self.shared.relays;
        if relays.is_private() {
            relays.add_candidates(bootstrap);
            // Others dial a private node through its relays: it must have one before it asks
            // to be let in.
            relays
                .wait_homed(self.shared.runtime.join_timeout())
                .await?;
        }
        self.ask(|reply| Command::Join {
            bootstrap: bootstrap.to_vec(),
            reply,
        })
        .await?
    }

    /// Routes `payload` to the live node whose id is closest to `key`; returns the message id.
    ///
    /// Delivery is acknowledged hop by hop and re-routed around failed hops; the root gets a
    /// [`NodeEvent::Deliver`], and this node a [`NodeEvent::RouteFailed`] if it is given up.
    pub async fn route(&self, key: Key, payload: Vec<u8>) -> Result<u64, NodeError> {
        self.route_kind(key, PayloadKind::Application, &payload)
            .await
    }

    /// Sends `payload` directly (one QUIC stream, no routing) to a node this node knows.
    pub async fn send(&self, to: NodeId, payload: Vec<u8>) -> Result<(), NodeError> {
        self.send_kind(to, PayloadKind::Application, &payload).await
    }

    /// Opens a raw stream to a node this node knows, asking for `service` (service mesh).
    pub async fn open_stream(&self, to: NodeId, service: &str) -> Result<RawStream, NodeError> {
        let addr = self.shared.runtime.address_of(to)?;
        let header = Body::Tunnel {
            service: service.to_owned(),
        };
        Ok(self.shared.transport.open_stream(to, addr, &header).await?)
    }

    /// Sends `payload` directly to `to` at `addr`, a node this node need not know yet (the
    /// handshake fails unless the key presented at `addr` hashes to `to`).
    pub async fn send_to(
        &self,
        to: NodeId,
        addr: SocketAddr,
        payload: Vec<u8>,
    ) -> Result<(), NodeError> {
        self.send_to_kind(to, addr, PayloadKind::Application, &payload)
            .await
    }

    /// Opens a raw stream to `to` at `addr`, a node this node need not know yet (the handshake
    /// fails unless the key presented at `addr` hashes to `to`), asking for `service`.
    pub async fn open_stream_to(
        &self,
        to: NodeId,
        addr: SocketAddr,
        service: &str,
    ) -> Result<RawStream, NodeError> {
        let header = Body::Tunnel {
            service: service.to_owned(),
        };
        Ok(self.shared.transport.open_stream(to, addr, &header).await?)
    }

    /// The QUIC smoothed RTT of the link to `peer`, if there is one.
    pub fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.shared.transport.rtt(peer)
    }

    /// A snapshot of the routing state, links and counters.
    pub async fn status(&self) -> Result<Status, NodeError> {
        let mut status = self.shared.runtime.status()?;
        let reach = self.shared.reach.borrow();
        status.reachability = reach.reachability;
        status.observed_addrs = reach.observed_addrs.clone();
        let punch = &self.shared.punch;
        for link in &mut status.connections {
            // A punched link keeps its relayed address; its datagrams take the direct path.
            if punch.is_direct(link.id) {
                link.path = status::LinkPath::Direct;
                link.via = None;
            }
        }
        status.punch = punch.status();
        Ok(status)
    }

    /// This node's reachability and observed addresses, as a watch channel that changes when
    /// they do (see [`crate::reach`]): `Unknown` until the first dial-back answers, then
    /// `Public` or `Private` ([`Reachability`](crate::reach::Reachability)), checked again
    /// periodically and whenever the observed addresses change. A private node is one others
    /// cannot dial: it needs relays (or hole punching) to be reached.
    ///
    /// ```no_run
    /// # async fn demo(node: wendy::node::Node) {
    /// use wendy::reach::Reachability;
    /// let mut reach = node.reachability();
    /// while reach.borrow_and_update().reachability == Reachability::Unknown {
    ///     if reach.changed().await.is_err() {
    ///         return; // the node stopped
    ///     }
    /// }
    /// println!("{:?}", reach.borrow().reachability);
    /// # }
    /// ```
    pub fn reachability(&self) -> tokio::sync::watch::Receiver<ReachStatus> {
        self.shared.reach.clone()
    }

    /// The relays this node is homed on, and what it carries as a relay.
    pub fn relay_status(&self) -> RelayStatus {
        self.shared.relays.status()
    }

    /// The runtime counters.
    pub fn stats(&self) -> NodeStats {
        self.shared.counters.snapshot()
    }

    /// Leaves gracefully: the leaf set is told at once, and so are this node's children and
    /// parents in topic trees (the topics it is root of go to the nodes next in line), then
    /// the node shuts down.
    pub async fn leave(&self) -> Result<(), NodeError> {
        self.shared.topics.leave().await;
        self.ask(|reply| Command::Leave { reply }).await?
    }

    /// The node's topics: publish/subscribe on Scribe-style trees ([`crate::topics`]).
    pub fn topics(&self) -> &crate::topics::Topics {
        &self.shared.topics
    }

    /// Stops at once, without telling anyone (peers detect the failure).
    pub async fn shutdown(&self) {
        self.shared.runtime.stop();
        self.shared.transport.shutdown().await;
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NodeError::Closed)?;
        answer.await.map_err(|_| NodeError::Closed)
    }
}
