//! The secure service mesh: nodes expose named TCP services and reach each other's services
//! through QUIC tunnels, with a registry that lives on the overlay itself.
//!
//! This module owns the service registry, the tunnels and their TCP sockets. It uses the public
//! [`Node`] API only (routed and direct payloads, raw streams, events) and must not reach into
//! `pastry/` or `transport/`.
//!
//! # Registry
//! A provider publishes a [`SignedRecord`] (service name, provider id and key, overlay address,
//! expiry, sequence) signed with its node key. The record is routed to the root of
//! [`service_key`]`(name)` = `Key::from_name("svc:" + name)`, which stores it and copies it to
//! the next closest nodes of its leaf set ([`MeshConfig::replicas`] holders in all, root
//! included), and answers the provider directly. Providers republish every
//! [`MeshConfig::republish_interval`], well before the record's [`MeshConfig::record_ttl`];
//! when a node's leaf set changes, it hands the records it holds to the nodes newly among the
//! closest to their key, so a node that becomes root already has them. A lookup is routed to
//! the same key and answered by whoever is root at the time: if the root dies, the next closest
//! node, a replica, becomes root and answers. Every holder checks a record before storing it and
//! every reader checks it again ([`SignedRecord::verify`]); a bad one is refused with a
//! [`RecordError`]. Expiry times are wall-clock (Unix) times, so the nodes' clocks must agree
//! to well within the TTL.
//!
//! # Tunnels
//! [`Mesh::forward`] listens on a local TCP address. For each accepted connection the mesh
//! looks the service up (results are cached for [`MeshConfig::lookup_cache`]), ranks the
//! providers (recently failed ones last, then lowest QUIC RTT, then the newest record) and opens
//! a QUIC bi stream directly to the first ([`Node::open_stream_to`]). The provider checks that
//! it exposes the name, connects to its `HOST:PORT` and answers one byte; then bytes flow both
//! ways, and a FIN in one direction is passed on without closing the other. A provider that
//! cannot be reached or refuses is skipped for the next one; when none is left, the local
//! connection is reset at once and the error logged and counted in [`Mesh::status`].
//!
//! # Events and message tags
//! [`Mesh::new`] takes the node's [`Events`] and returns a new [`Events`] that carries every
//! event the mesh does not consume, so the application still sees deliveries, direct messages,
//! leaf-set changes and the rest. The mesh consumes raw streams ([`NodeEvent::Stream`]: with a
//! mesh installed, the stream namespace is the service names) and the routed and direct
//! payloads tagged as mesh messages: such a payload starts with the 8 bytes [`MAGIC`]
//! (`0xFF` then `wmesh/1`; `0xFF` never occurs in UTF-8, so text payloads cannot collide) and
//! the rest must decode as a mesh message, otherwise it is passed to the application.
//!
//! ```no_run
//! use wendy::identity::Identity;
//! use wendy::mesh::{Mesh, MeshConfig};
//! use wendy::node::Node;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::generate();
//! let (node, events) = Node::builder(identity.clone()).spawn().await?;
//! node.join(&["127.0.0.1:4000".parse()?]).await?;
//! let (mesh, _app_events) = Mesh::new(node, identity, events, MeshConfig::default())?;
//! mesh.expose("web", "127.0.0.1:8080").await?; // publish a local service
//! let local = mesh.forward("127.0.0.1:9000".parse()?, "db").await?; // reach a remote one
//! println!("db is reachable at {local}");
//! # Ok(())
//! # }
//! ```

mod message;
mod record;
mod registry;
mod tunnel;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

pub use message::MAGIC;
pub use record::{
    unix_ms_now, validate_name, RecordError, ServiceRecord, SignedRecord, MAX_NAME_LEN,
};
pub use registry::service_key;

use crate::id::{Key, NodeId};
use crate::identity::Identity;
use crate::node::{Events, Node, NodeError, NodeEvent};
use crate::transport::{RawStream, RawStreamError};
use crate::wire::codes::StreamErrorCode;
use message::{MeshMessage, TUNNEL_ACCEPTED};
use registry::{rank_providers, replica_set, Offer, Registry, StoreLimits};

/// Settings of a [`Mesh`]. `Default` suits a LAN or the internet.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// How many nodes hold each name's records: the root and the next closest. Default 3.
    pub replicas: usize,
    /// How long a published record is valid. Default 60 s.
    pub record_ttl: Duration,
    /// How often providers republish (and holders drop expired records). Default 20 s
    /// (a third of the TTL, so two republications may be lost before a record expires).
    pub republish_interval: Duration,
    /// How long a registry request (publish or lookup) waits for the answer. Default 3 s.
    pub request_timeout: Duration,
    /// How many times a registry request is sent before giving up. Default 3.
    pub request_attempts: u32,
    /// How long opening a tunnel to one provider may take (QUIC dial, stream, the provider's
    /// connection to its service). Default 5 s.
    pub connect_timeout: Duration,
    /// How long a lookup's result is reused for new connections. Default 10 s.
    pub lookup_cache: Duration,
    /// How long a provider that failed is tried after the others. Default 30 s.
    pub failure_memory: Duration,
    /// Capacity of the [`Events`] channel handed back to the application; when it is full the
    /// newest event is dropped and counted in [`MeshStatus::events_dropped`]. Default 4096.
    pub event_capacity: usize,
    /// The longest record lifetime this node stores or believes (records expiring later are
    /// refused with [`RecordError::TooFarInFuture`]). Default twice the TTL, at least 1 h.
    pub max_record_ttl: Duration,
    /// The most providers this node stores per name for others. Default 64.
    pub max_providers_per_name: usize,
    /// The most names this node stores records for. Default 10,000.
    pub max_names_held: usize,
    /// The most providers one connection tries before it is closed. Default 4.
    pub max_tunnel_attempts: usize,
    /// The longest one connection spends trying providers, all attempts together (each one is
    /// also bounded by [`MeshConfig::connect_timeout`]); when it is spent the connection fails
    /// with [`MeshError::Unreachable`] even if untried providers remain. Registry lookups are
    /// not counted (they have their own timeout and attempts). `Duration::MAX` means no
    /// deadline. Default 8 s.
    pub connect_deadline: Duration,
    /// The most registry answers and replications in flight at once; beyond it they are
    /// dropped (and counted in [`MeshStatus::sends_dropped`]). Default 64.
    pub max_pending_sends: usize,
    /// The most tunnels this node serves at once as a provider (each holds a TCP connection to
    /// its target); beyond it new tunnels are refused as unavailable. Default 1024.
    pub max_provider_tunnels: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self::with_ttl(Duration::from_secs(60))
    }
}

impl MeshConfig {
    /// The default settings with this record TTL, republished every third of it.
    pub fn with_ttl(record_ttl: Duration) -> Self {
        Self {
            replicas: 3,
            record_ttl,
            republish_interval: record_ttl / 3,
            request_timeout: Duration::from_secs(3),
            request_attempts: 3,
            connect_timeout: Duration::from_secs(5),
            lookup_cache: Duration::from_secs(10),
            failure_memory: Duration::from_secs(30),
            event_capacity: 4096,
            max_record_ttl: record_ttl.saturating_mul(2).max(Duration::from_secs(3600)),
            max_providers_per_name: 64,
            max_names_held: 10_000,
            max_tunnel_attempts: 4,
            connect_deadline: Duration::from_secs(8),
            max_pending_sends: 64,
            max_provider_tunnels: 1024,
        }
    }
}

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The node refused the operation (not joined, shut down, ...).
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// A record could not be made, or the name is invalid.
    #[error("{0}")]
    Record(#[from] RecordError),
    /// The identity given to [`Mesh::new`] is not the node's.
    #[error("the identity {identity} is not the node's ({node}): give the mesh the node's key")]
    IdentityMismatch {
        /// The identity's node id.
        identity: NodeId,
        /// The node's id.
        node: NodeId,
    },
    /// The target of [`Mesh::expose`] is not `HOST:PORT`.
    #[error("bad service address {0:?}: expected HOST:PORT")]
    BadTarget(String),
    /// The local address of [`Mesh::forward`] cannot be listened on.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        message: String,
    },
    /// The registry did not answer.
    #[error("no answer from the registry for {name:?} after {attempts} attempts")]
    RegistryTimeout {
        /// The service name.
        name: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The registry refused a published record.
    #[error("the registry refused the record for {name:?}: {reason}")]
    Refused {
        /// The service name.
        name: String,
        /// The holder's reason.
        reason: String,
    },
    /// Nobody provides the service.
    #[error("no provider of {0:?} is registered")]
    NoProvider(String),
    /// Providers are registered but none could be reached.
    #[error("no provider of {name:?} could be reached ({tried} tried): {last_error}")]
    Unreachable {
        /// The service name.
        name: String,
        /// How many providers were tried.
        tried: usize,
        /// Why the last one failed.
        last_error: String,
    },
    /// The mesh has been shut down.
    #[error("the mesh is shut down")]
    Closed,
}

/// A service this node exposes, in [`MeshStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExposedStatus {
    /// The service name.
    pub name: String,
    /// The `HOST:PORT` tunnels are connected to.
    pub target: String,
    /// Tunnels accepted.
    pub tunnels: u64,
    /// Tunnels refused because the target could not be reached (or too many tunnels were
    /// open, see [`MeshConfig::max_provider_tunnels`]).
    pub target_failures: u64,
}

/// A local listener of [`Mesh::forward`], in [`MeshStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForwardStatus {
    /// The service name.
    pub name: String,
    /// The local TCP address listened on.
    pub listen: SocketAddr,
    /// Connections tunnelled to a provider.
    pub connections: u64,
    /// Connections closed because no provider could be reached.
    pub failures: u64,
    /// The last such failure.
    pub last_error: Option<String>,
}

/// A snapshot of a mesh's services and registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MeshStatus {
    /// Services this node exposes.
    pub exposed: Vec<ExposedStatus>,
    /// Services this node forwards.
    pub forwarded: Vec<ForwardStatus>,
    /// Unexpired records this node holds as a registry root or replica.
    pub records_held: usize,
    /// Events dropped because the application did not keep up.
    pub events_dropped: u64,
    /// Registry answers and replications dropped because too many were in flight.
    pub sends_dropped: u64,
    /// Records refused (bad signature, wrong key, too long a lifetime, wrong place, store
    /// full) from publications and replications.
    pub records_refused: u64,
}

/// The service mesh on top of a [`Node`]. Cheap to clone; every clone drives the same mesh.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

struct Inner {
    node: Node,
    identity: Identity,
    config: MeshConfig,
    state: Mutex<State>,
    events_dropped: AtomicU64,
    sends_dropped: AtomicU64,
    records_refused: AtomicU64,
    /// Bounds the answers and replications in flight.
    sends: Arc<Semaphore>,
    /// Bounds the tunnels served as a provider.
    tunnels: Arc<Semaphore>,
    /// Set when the mesh shuts down: live tunnels end.
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    registry: Registry,
    leaf_set: Vec<NodeId>,
    pending: HashMap<u64, oneshot::Sender<MeshMessage>>,
    exposed: BTreeMap<String, ExposedStatus>,
    forwarded: Vec<ForwardStatus>,
    cache: HashMap<String, (Instant, Vec<ServiceRecord>)>,
    failed: HashMap<NodeId, Instant>,
    probed: HashMap<NodeId, Instant>,
    last_sequence: u64,
    closed: bool,
}

/// Refuses a tunnel: abandons both directions with `code`, which the opener reads back as the
/// reason (the tunnel codes of [`StreamErrorCode`]).
fn refuse(mut stream: RawStream, code: StreamErrorCode) {
    stream.reset(code);
}

impl Mesh {
    /// Installs the mesh on `node`, whose key `identity` is (records are signed with it), and
    /// takes over its `events`: the returned [`Events`] carries every event the mesh does not
    /// consume (see the module docs).
    pub fn new(
        node: Node,
        identity: Identity,
        events: Events,
        config: MeshConfig,
    ) -> Result<(Self, Events), MeshError> {
        if identity.node_id() != node.id() {
            return Err(MeshError::IdentityMismatch {
                identity: identity.node_id(),
                node: node.id(),
            });
        }
        let (app, app_events) = mpsc::channel(config.event_capacity.max(1));
        let max_pending_sends = config.max_pending_sends.max(1);
        let max_provider_tunnels = config.max_provider_tunnels.max(1);
        let inner = Arc::new(Inner {
            node,
            identity,
            config,
            state: Mutex::new(State::default()),
            events_dropped: AtomicU64::new(0),
            sends_dropped: AtomicU64::new(0),
            records_refused: AtomicU64::new(0),
            sends: Arc::new(Semaphore::new(max_pending_sends)),
            tunnels: Arc::new(Semaphore::new(max_provider_tunnels)),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        let span = tracing::info_span!("mesh", id = %inner.node.id());
        let task = tokio::spawn(inner.clone().run(events, app).instrument(span));
        lock(&inner.tasks).push(task);
        Ok((Self { inner }, Events::from_receiver(app_events)))
    }

    /// The node the mesh runs on.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// Publishes `name` as provided by this node, tunnelled to `target` (`HOST:PORT`, connected
    /// anew for every tunnel), and keeps republishing it. Resolves once the registry root has
    /// stored the record. Exposing a name again replaces its target.
    pub async fn expose(&self, name: &str, target: &str) -> Result<(), MeshError> {
        validate_name(name)?;
        validate_target(target)?;
        self.inner.lock().exposed.insert(
            name.to_owned(),
            ExposedStatus {
                name: name.to_owned(),
                target: target.to_owned(),
                tunnels: 0,
                target_failures: 0,
            },
        );
        let expires = unix_ms_now().saturating_add(millis(self.inner.config.record_ttl));
        let attempts = self.inner.config.request_attempts;
        if let Err(error) = self.inner.publish(name, expires, attempts).await {
            self.inner.lock().exposed.remove(name);
            return Err(error);
        }
        info!(name, target, "service exposed");
        Ok(())
    }

    /// Stops exposing `name` and withdraws its record from the registry.
    pub async fn unexpose(&self, name: &str) -> Result<(), MeshError> {
        validate_name(name)?;
        if self.inner.lock().exposed.remove(name).is_some() {
            let attempts = self.inner.config.request_attempts;
            self.inner.publish(name, unix_ms_now(), attempts).await?;
        }
        Ok(())
    }

    /// Listens on `listen` (TCP) and tunnels every accepted connection to a provider of `name`.
    /// Returns the address actually listened on (useful with port 0).
    pub async fn forward(&self, listen: SocketAddr, name: &str) -> Result<SocketAddr, MeshError> {
        validate_name(name)?;
        let bind_error = |e: std::io::Error| MeshError::Bind {
            addr: listen,
            message: e.to_string(),
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let index = {
            let mut state = self.inner.lock();
            if state.closed {
                return Err(MeshError::Closed);
            }
            state.forwarded.push(ForwardStatus {
                name: name.to_owned(),
                listen: local,
                connections: 0,
                failures: 0,
                last_error: None,
            });
            state.forwarded.len() - 1
        };
        info!(%local, name, "forwarding");
        let inner = self.inner.clone();
        let name = name.to_owned();
        let span = tracing::info_span!("forward", %local, name = %name);
        let task = tokio::spawn(
            async move {
                loop {
                    match listener.accept().await {
                        Ok((tcp, client)) => {
                            let inner = inner.clone();
                            let name = name.clone();
                            tokio::spawn(
                                async move { inner.serve_local(tcp, client, &name, index).await }
                                    .in_current_span(),
                            );
                        }
                        Err(error) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            .instrument(span),
        );
        lock(&self.inner.tasks).push(task);
        Ok(local)
    }

    /// The verified, unexpired providers of `name` the registry knows (empty if none).
    pub async fn lookup(&self, name: &str) -> Result<Vec<ServiceRecord>, MeshError> {
        validate_name(name)?;
        self.inner.lookup(name).await
    }

    /// Opens a tunnel to a provider of `name` (the best reachable one, see the module docs):
    /// a stream that carries the service's bytes. [`Mesh::forward`] does this per connection.
    pub async fn connect(&self, name: &str) -> Result<RawStream, MeshError> {
        validate_name(name)?;
        self.inner.connect(name).await
    }

    /// The exposed and forwarded services and the registry's size.
    pub fn status(&self) -> MeshStatus {
        let state = self.inner.lock();
        MeshStatus {
            exposed: state.exposed.values().cloned().collect(),
            forwarded: state.forwarded.clone(),
            records_held: state.registry.live_count(unix_ms_now()),
            events_dropped: self.inner.events_dropped.load(Ordering::Relaxed),
            sends_dropped: self.inner.sends_dropped.load(Ordering::Relaxed),
            records_refused: self.inner.records_refused.load(Ordering::Relaxed),
        }
    }

    /// Withdraws every exposed service from the registry (best effort, one request timeout at
    /// most), closes the forward listeners and stops the mesh's event handling. The node keeps
    /// running: shut it down afterwards.
    pub async fn shutdown(&self) {
        let names: Vec<String> = {
            let mut state = self.inner.lock();
            state.closed = true;
            std::mem::take(&mut state.exposed).into_keys().collect()
        };
        let mut withdrawals = tokio::task::JoinSet::new();
        for name in names {
            let inner = self.inner.clone();
            withdrawals.spawn(async move {
                if let Err(error) = inner.publish(&name, unix_ms_now(), 1).await {
                    debug!(name, %error, "withdrawal not acknowledged");
                }
            });
        }
        while withdrawals.join_next().await.is_some() {}
        self.inner.stop.send_replace(true);
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Locks a mutex, recovering the data if a holder panicked (the state stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Checks that `target` looks like `HOST:PORT` with a non-zero port (the host is resolved at
/// each tunnel, so a name like `localhost` is fine).
pub fn validate_target(target: &str) -> Result<(), MeshError> {
    let ok = target
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(MeshError::BadTarget(target.to_owned()))
    }
}

/// Why one tunnel attempt failed.
struct TunnelFailure {
    /// What went wrong, for the caller's error.
    message: String,
    /// The attempt ran out of time (rather than being refused or failing).
    timed_out: bool,
}

/// What went wrong opening a tunnel to one provider, for logs and errors.
fn describe_refusal(error: RawStreamError) -> String {
    match error {
        RawStreamError::Reset { known, code } => match known {
            Some(StreamErrorCode::NoSuchService) => {
                "the provider does not expose this service".to_owned()
            }
            Some(StreamErrorCode::ServiceUnreachable) => {
                "the provider cannot reach its service".to_owned()
            }
            Some(StreamErrorCode::ProviderBusy) => {
                "the provider serves as many tunnels as it allows".to_owned()
            }
            _ => format!("the provider refused the tunnel (code {code:#x})"),
        },
        RawStreamError::FinishedEarly { .. } => "the provider closed the tunnel".to_owned(),
        other => error_chain(&other),
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    async fn run(self: Arc<Self>, mut events: Events, app: mpsc::Sender<NodeEvent>) {
        let mut tick = tokio::time::interval(
            self.config
                .republish_interval
                .max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; records were just published.
        tick.tick().await;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event, &app),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        debug!("mesh stopped: the node's events ended");
    }

    fn pass_on(&self, event: NodeEvent, app: &mpsc::Sender<NodeEvent>) {
        if app.try_send(event).is_err() {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_event(self: &Arc<Self>, event: NodeEvent, app: &mpsc::Sender<NodeEvent>) {
        match event {
            NodeEvent::Deliver(delivery) => match MeshMessage::decode(&delivery.payload) {
                Some(message) => self.on_routed(delivery.origin, delivery.key, message),
                None => self.pass_on(NodeEvent::Deliver(delivery), app),
            },
            NodeEvent::Direct { from, payload } => match MeshMessage::decode(&payload) {
                Some(message) => self.on_direct(from, message),
                None => self.pass_on(NodeEvent::Direct { from, payload }, app),
            },
            NodeEvent::Stream {
                from,
                service,
                stream,
            } => self.on_stream(from, service, stream),
            NodeEvent::Joined { leaf_set } => {
                self.on_leaf_set(leaf_set.clone());
                self.pass_on(NodeEvent::Joined { leaf_set }, app);
            }
            NodeEvent::LeafSetChanged { leaf_set } => {
                self.on_leaf_set(leaf_set.clone());
                self.pass_on(NodeEvent::LeafSetChanged { leaf_set }, app);
            }
            NodeEvent::NodeLeft(id) => {
                self.forget_cached_provider(id);
                self.pass_on(NodeEvent::NodeLeft(id), app);
            }
            other => self.pass_on(other, app),
        }
    }

    fn limits(&self) -> StoreLimits {
        StoreLimits {
            max_ttl_ms: millis(self.config.max_record_ttl),
            max_providers_per_name: self.config.max_providers_per_name,
            max_names: self.config.max_names_held,
        }
    }

    fn refused(&self) {
        self.records_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A mesh message routed to `key`, of which this node is root.
    fn on_routed(self: &Arc<Self>, origin: NodeId, key: Key, message: MeshMessage) {
        match message {
            MeshMessage::Publish {
                request,
                reply_addr,
                record,
            } => {
                if key != service_key(&record.record.name) {
                    warn!(%origin, name = record.record.name, %key, "refused a record routed to the wrong key");
                    self.refused();
                    return;
                }
                // A live record is stored only once its provider answered at its address: the
                // handshake proves an admitted node with that key is there (so records signed
                // by throw-away keys cannot fill the registry). Withdrawals need no proof.
                let withdrawal = record.record.is_expired(unix_ms_now());
                let provider = record.record.provider;
                if withdrawal || provider == self.node.id() {
                    let answer = self.store_as_root(origin, request, record);
                    self.answer(origin, reply_addr, request, answer);
                    return;
                }
                let Some(permit) = self.send_permit() else {
                    return;
                };
                let inner = self.clone();
                tokio::spawn(
                    async move {
                        let probe = inner.node.send_to(
                            provider,
                            record.record.addr,
                            MeshMessage::Probe.encode(),
                        );
                        let reached =
                            tokio::time::timeout(inner.config.connect_timeout, probe).await;
                        drop(permit);
                        let answer = match reached {
                            Ok(Ok(())) => inner.store_as_root(origin, request, record),
                            Ok(Err(error)) => {
                                inner.refused();
                                MeshMessage::Refused {
                                    request,
                                    reason: format!(
                                        "the provider is not reachable at {}: {error}",
                                        record.record.addr
                                    ),
                                }
                            }
                            Err(_) => {
                                inner.refused();
                                MeshMessage::Refused {
                                    request,
                                    reason: format!(
                                        "the provider did not answer at {}",
                                        record.record.addr
                                    ),
                                }
                            }
                        };
                        inner.answer(origin, reply_addr, request, answer);
                    }
                    .in_current_span(),
                );
            }
            MeshMessage::Lookup {
                request,
                reply_addr,
                name,
            } => {
                if key != service_key(&name) {
                    warn!(%origin, name, %key, "ignored a lookup routed to the wrong key");
                    return;
                }
                let records = self.lock().registry.live(&name, unix_ms_now());
                debug!(name, %origin, found = records.len(), "answering a lookup");
                self.answer(
                    origin,
                    reply_addr,
                    request,
                    MeshMessage::Found { request, records },
                );
            }
            other => debug!(%origin, ?other, "ignored a routed mesh message of a direct kind"),
        }
    }

    /// Stores a published record as the root of its name, hands it to the replicas, and says
    /// what to answer.
    fn store_as_root(&self, origin: NodeId, request: u64, record: SignedRecord) -> MeshMessage {
        let name = record.record.name.clone();
        let offered = self
            .lock()
            .registry
            .offer(record, unix_ms_now(), &self.limits());
        match offered {
            Ok(Offer::Stored | Offer::Stale) => {
                debug!(name, %origin, "stored a service record as root");
                self.replicate_as_root(&name);
                MeshMessage::Stored { request }
            }
            Ok(Offer::Full) => {
                warn!(name, %origin, "registry full: refused a service record");
                self.refused();
                MeshMessage::Refused {
                    request,
                    reason: "the registry holds as many providers or names as it may".to_owned(),
                }
            }
            Err(error) => {
                warn!(name, %origin, %error, "refused a published service record");
                self.refused();
                MeshMessage::Refused {
                    request,
                    reason: error.to_string(),
                }
            }
        }
    }

    /// A mesh message sent directly to this node.
    fn on_direct(&self, from: NodeId, message: MeshMessage) {
        match message {
            MeshMessage::Replicate { records } => self.on_replicate(from, records),
            MeshMessage::Stored { request }
            | MeshMessage::Refused { request, .. }
            | MeshMessage::Found { request, .. } => self.complete(request, message),
            MeshMessage::Probe => {}
            other => debug!(%from, ?other, "ignored a direct mesh message of a routed kind"),
        }
    }

    /// Records handed over by a holder: kept only if they are for one name, no more than a
    /// holder may keep, and this node is among the closest to that name's key (so a peer cannot
    /// fill any node's store with names it is not responsible for).
    fn on_replicate(&self, from: NodeId, records: Vec<SignedRecord>) {
        let Some(name) = records.first().map(|r| r.record.name.clone()) else {
            return;
        };
        let one_name = records.iter().all(|r| r.record.name == name);
        if !one_name || records.len() > self.config.max_providers_per_name {
            warn!(%from, count = records.len(), "refused a malformed replication");
            self.records_refused
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            return;
        }
        let me = self.node.id();
        let limits = self.limits();
        let now = unix_ms_now();
        let mut state = self.lock();
        let set = replica_set(
            service_key(&name),
            me,
            &state.leaf_set,
            self.config.replicas,
        );
        if !set.contains(&me) {
            debug!(%from, name, "refused records for a name this node does not hold");
            drop(state);
            self.records_refused
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            return;
        }
        for record in records {
            match state.registry.offer(record, now, &limits) {
                Ok(Offer::Stored | Offer::Stale) => {}
                Ok(Offer::Full) => self.refused(),
                Err(error) => {
                    warn!(%from, %error, "refused a replicated service record");
                    self.refused();
                }
            }
        }
    }

    /// A slot for one more answer or replication in flight, if any is free.
    fn send_permit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.sends.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.sends_dropped.fetch_add(1, Ordering::Relaxed);
            debug!("too many registry sends in flight; dropped one");
        }
        permit
    }

    fn complete(&self, request: u64, answer: MeshMessage) {
        if let Some(waiter) = self.lock().pending.remove(&request) {
            let _ = waiter.send(answer);
        }
    }

    /// Sends `answer` to the node that asked (locally if this node asked itself).
    fn answer(&self, origin: NodeId, reply_addr: SocketAddr, request: u64, answer: MeshMessage) {
        if origin == self.node.id() {
            self.complete(request, answer);
            return;
        }
        let Some(permit) = self.send_permit() else {
            return;
        };
        let node = self.node.clone();
        tokio::spawn(
            async move {
                let payload = answer.encode();
                // A node in this one's tables is reached on its known link; the requester's
                // own address is used only otherwise.
                let sent = match node.send(origin, payload.clone()).await {
                    Err(NodeError::UnknownPeer(_)) => {
                        node.send_to(origin, reply_addr, payload).await
                    }
                    other => other,
                };
                if let Err(error) = sent {
                    debug!(%origin, %error, "could not answer a registry request");
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }

    fn send_direct(&self, to: NodeId, message: &MeshMessage) {
        let Some(permit) = self.send_permit() else {
            return;
        };
        let node = self.node.clone();
        let payload = message.encode();
        tokio::spawn(
            async move {
                if let Err(error) = node.send(to, payload).await {
                    debug!(%to, %error, "could not replicate service records");
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }

    /// As root of `name`: copies its records to the other replica holders.
    fn replicate_as_root(&self, name: &str) {
        let me = self.node.id();
        let (targets, records) = {
            let mut state = self.lock();
            let set = replica_set(service_key(name), me, &state.leaf_set, self.config.replicas);
            state.registry.newly_pushed(name, &set);
            (set, state.registry.all(name))
        };
        let message = MeshMessage::Replicate { records };
        for to in targets.into_iter().filter(|&id| id != me) {
            self.send_direct(to, &message);
        }
    }

    /// The leaf set changed: nodes newly among the closest to a key this node holds records
    /// for get them (so a node that becomes root, or a replica, has them at once).
    fn on_leaf_set(&self, leaf_set: Vec<NodeId>) {
        let me = self.node.id();
        let mut pushes = Vec::new();
        {
            let mut state = self.lock();
            state.leaf_set = leaf_set;
            for name in state.registry.names() {
                let set = replica_set(
                    service_key(&name),
                    me,
                    &state.leaf_set,
                    self.config.replicas,
                );
                if !set.contains(&me) {
                    continue;
                }
                let new: Vec<NodeId> = state
                    .registry
                    .newly_pushed(&name, &set)
                    .into_iter()
                    .filter(|&id| id != me)
                    .collect();
                if !new.is_empty() {
                    pushes.push((new, state.registry.all(&name)));
                }
            }
        }
        for (targets, records) in pushes {
            let message = MeshMessage::Replicate { records };
            for to in targets {
                debug!(%to, "handing service records to a node newly among the closest");
                self.send_direct(to, &message);
            }
        }
    }

    fn forget_cached_provider(&self, id: NodeId) {
        let mut state = self.lock();
        for (_, records) in state.cache.values_mut() {
            records.retain(|r| r.provider != id);
        }
    }

    /// Republishes the exposed services; drops expired records and stale bookkeeping.
    fn on_tick(self: &Arc<Self>) {
        let names: Vec<String> = self.lock().exposed.keys().cloned().collect();
        for name in names {
            let inner = self.clone();
            tokio::spawn(
                async move {
                    let expires = unix_ms_now().saturating_add(millis(inner.config.record_ttl));
                    let attempts = inner.config.request_attempts;
                    if let Err(error) = inner.publish(&name, expires, attempts).await {
                        warn!(name, %error, "republishing failed; will retry");
                    }
                }
                .in_current_span(),
            );
        }
        let now = Instant::now();
        let mut state = self.lock();
        state
            .registry
            .sweep(unix_ms_now(), millis(self.config.record_ttl));
        let memory = self.config.failure_memory;
        state
            .failed
            .retain(|_, at| now.duration_since(*at) < memory);
        state
            .probed
            .retain(|_, at| now.duration_since(*at) < memory);
        let cache = self.config.lookup_cache;
        state
            .cache
            .retain(|_, (at, _)| now.duration_since(*at) < cache);
    }

    /// Routes a registry request for `name` and waits for its answer, retrying on timeouts.
    async fn request(
        &self,
        name: &str,
        attempts: u32,
        build: impl Fn(u64, SocketAddr) -> MeshMessage,
    ) -> Result<MeshMessage, MeshError> {
        let attempts = attempts.max(1);
        for attempt in 1..=attempts {
            // Random ids, so no other node can guess one and answer in the registry's place.
            let request: u64 = rand::random();
            let (waiter, answer) = oneshot::channel();
            self.lock().pending.insert(request, waiter);
            let payload = build(request, self.node.addr()).encode();
            if let Err(error) = self.node.route(service_key(name), payload).await {
                self.lock().pending.remove(&request);
                return Err(error.into());
            }
            match tokio::time::timeout(self.config.request_timeout, answer).await {
                Ok(Ok(answer)) => return Ok(answer),
                _ => {
                    self.lock().pending.remove(&request);
                    debug!(name, attempt, "registry request unanswered");
                }
            }
        }
        Err(MeshError::RegistryTimeout {
            name: name.to_owned(),
            attempts,
        })
    }

    /// Signs and publishes a record for `name` expiring at `expires_unix_ms` (a withdrawal if
    /// that is now), sending it up to `attempts` times while unanswered.
    async fn publish(
        &self,
        name: &str,
        expires_unix_ms: u64,
        attempts: u32,
    ) -> Result<(), MeshError> {
        let record = self.sign(name, expires_unix_ms)?;
        let answer = self
            .request(name, attempts, |request, reply_addr| MeshMessage::Publish {
                request,
                reply_addr,
                record: record.clone(),
            })
            .await?;
        match answer {
            MeshMessage::Stored { .. } => Ok(()),
            MeshMessage::Refused { reason, .. } => Err(MeshError::Refused {
                name: name.to_owned(),
                reason,
            }),
            other => Err(MeshError::Refused {
                name: name.to_owned(),
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    fn sign(&self, name: &str, expires_unix_ms: u64) -> Result<SignedRecord, MeshError> {
        let sequence = {
            let mut state = self.lock();
            // Unix milliseconds, so a restarted provider's records supersede its old ones.
            state.last_sequence = state.last_sequence.saturating_add(1).max(unix_ms_now());
            state.last_sequence
        };
        let record = ServiceRecord::new(
            &self.identity,
            name,
            self.node.addr(),
            expires_unix_ms,
            sequence,
        )?;
        Ok(record.sign(&self.identity)?)
    }

    /// Asks the registry for `name`'s providers; keeps the verified, unexpired ones. An empty
    /// answer is asked again twice (a node that just became root may be receiving the records).
    async fn lookup(&self, name: &str) -> Result<Vec<ServiceRecord>, MeshError> {
        const EMPTY_RETRIES: u32 = 2;
        let mut round = 0;
        let records = loop {
            let records = self.lookup_once(name).await?;
            if !records.is_empty() || round == EMPTY_RETRIES {
                break records;
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(250) * round).await;
        };
        self.lock()
            .cache
            .insert(name.to_owned(), (Instant::now(), records.clone()));
        self.probe(&records);
        Ok(records)
    }

    async fn lookup_once(&self, name: &str) -> Result<Vec<ServiceRecord>, MeshError> {
        let answer = self
            .request(name, self.config.request_attempts, |request, reply_addr| {
                MeshMessage::Lookup {
                    request,
                    reply_addr,
                    name: name.to_owned(),
                }
            })
            .await?;
        let MeshMessage::Found { records, .. } = answer else {
            return Ok(Vec::new());
        };
        let now = unix_ms_now();
        let mut best: HashMap<NodeId, ServiceRecord> = HashMap::new();
        let max_ttl = millis(self.config.max_record_ttl);
        for signed in &records {
            let checked = signed
                .verify(now)
                .and_then(|record| signed.check_lifetime(now, max_ttl).map(|()| record));
            match checked {
                Ok(record) if record.name == name => {
                    let newer = !matches!(
                        best.get(&record.provider),
                        Some(held) if held.sequence >= record.sequence
                    );
                    if newer {
                        best.insert(record.provider, record.clone());
                    }
                }
                Ok(record) => warn!(name, other = record.name, "lookup answered another name"),
                Err(error) => warn!(name, %error, "refused a service record"),
            }
        }
        Ok(best.into_values().collect())
    }

    /// Opens links to providers whose RTT is unknown, so the next ranking can use it.
    fn probe(&self, records: &[ServiceRecord]) {
        let me = self.node.id();
        let now = Instant::now();
        for record in records {
            if record.provider == me || self.node.rtt(record.provider).is_some() {
                continue;
            }
            let fresh = self.lock().probed.insert(record.provider, now).is_none();
            if !fresh {
                continue;
            }
            let node = self.node.clone();
            let (to, addr) = (record.provider, record.addr);
            tokio::spawn(
                async move {
                    if let Err(error) = node.send_to(to, addr, MeshMessage::Probe.encode()).await {
                        debug!(%to, %error, "provider probe failed");
                    }
                }
                .in_current_span(),
            );
        }
    }

    fn cached(&self, name: &str) -> Option<Vec<ServiceRecord>> {
        let state = self.lock();
        let (at, records) = state.cache.get(name)?;
        (at.elapsed() < self.config.lookup_cache && !records.is_empty()).then(|| records.clone())
    }

    fn failed_recently(&self, id: NodeId) -> bool {
        self.lock()
            .failed
            .get(&id)
            .is_some_and(|at| at.elapsed() < self.config.failure_memory)
    }

    /// A tunnel to the best reachable provider of `name`, failing over down the ranking; a
    /// cached provider list that is all unreachable is looked up afresh once.
    async fn connect(&self, name: &str) -> Result<RawStream, MeshError> {
        let me = self.node.id();
        let (mut records, mut from_cache) = match self.cached(name) {
            Some(records) => (records, true),
            None => (self.lookup(name).await?, false),
        };
        let mut tried: HashSet<(NodeId, SocketAddr)> = HashSet::new();
        let mut last_error = String::new();
        // `None`: a deadline too far away to represent, i.e. none.
        let deadline = Instant::now().checked_add(self.config.connect_deadline);
        let mut out_of_time = false;
        'rounds: loop {
            let untried = records
                .into_iter()
                .filter(|r| !tried.contains(&(r.provider, r.addr)))
                .collect();
            let ranked = rank_providers(untried, |p| self.node.rtt(p), |p| self.failed_recently(p));
            for record in ranked {
                if tried.len() >= self.config.max_tunnel_attempts.max(1) {
                    break;
                }
                let left = deadline.map_or(Duration::MAX, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                if left.is_zero() {
                    out_of_time = true;
                    break 'rounds;
                }
                tried.insert((record.provider, record.addr));
                if record.provider == me {
                    last_error = "the only provider left is this node itself".to_owned();
                    continue;
                }
                let limit = self.config.connect_timeout.min(left);
                match self.open_tunnel(&record, limit).await {
                    Ok(stream) => {
                        self.lock().failed.remove(&record.provider);
                        return Ok(stream);
                    }
                    Err(error) => {
                        warn!(name, provider = %record.provider, addr = %record.addr,
                            error = %error.message, "provider unreachable; trying the next");
                        // A provider that only ran out of what was left of the deadline is not
                        // known to be unreachable: it keeps its rank and the cached records.
                        let cut_short = error.timed_out && limit < self.config.connect_timeout;
                        if !cut_short {
                            let mut state = self.lock();
                            state.failed.insert(record.provider, Instant::now());
                            state.cache.remove(name);
                        }
                        last_error = error.message;
                    }
                }
            }
            if !from_cache || tried.len() >= self.config.max_tunnel_attempts.max(1) {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                out_of_time = true;
                break;
            }
            from_cache = false;
            records = self.lookup(name).await?;
        }
        if out_of_time {
            let spent = format!(
                "gave up after {:?} (the connect deadline)",
                self.config.connect_deadline
            );
            last_error = if last_error.is_empty() {
                spent
            } else {
                format!("{last_error}; {spent}")
            };
        } else if tried.is_empty() {
            return Err(MeshError::NoProvider(name.to_owned()));
        }
        Err(MeshError::Unreachable {
            name: name.to_owned(),
            tried: tried.len(),
            last_error,
        })
    }

    /// Opens a tunnel to one provider and waits for its acceptance byte, for at most `limit`.
    async fn open_tunnel(
        &self,
        record: &ServiceRecord,
        limit: Duration,
    ) -> Result<RawStream, TunnelFailure> {
        let open = async {
            let mut stream = self
                .node
                .open_stream_to(record.provider, record.addr, &record.name)
                .await
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .map_err(describe_refusal)?;
            if byte[0] == TUNNEL_ACCEPTED {
                Ok(stream)
            } else {
                Err(format!("unexpected tunnel answer {}", byte[0]))
            }
        };
        match tokio::time::timeout(limit, open).await {
            Ok(result) => result.map_err(|message| TunnelFailure {
                message,
                timed_out: false,
            }),
            Err(_) => Err(TunnelFailure {
                message: format!("no tunnel within {limit:?}"),
                timed_out: true,
            }),
        }
    }

    /// One accepted local connection of a forward listener.
    async fn serve_local(&self, tcp: TcpStream, client: SocketAddr, name: &str, index: usize) {
        let _ = tcp.set_nodelay(true);
        match self.connect(name).await {
            Ok(stream) => {
                if let Some(forward) = self.lock().forwarded.get_mut(index) {
                    forward.connections += 1;
                }
                let mut stop = self.stop.subscribe();
                tokio::select! {
                    result = tunnel::splice(tcp, stream) => match result {
                        Ok(carried) => debug!(%client, up = carried.to_stream,
                            down = carried.to_tcp, "tunnel closed"),
                        Err(error) => debug!(%client, %error, "tunnel broken"),
                    },
                    _ = stop.wait_for(|stopped| *stopped) => {
                        debug!(%client, "tunnel closed: the mesh is shutting down");
                    }
                }
            }
            Err(error) => {
                warn!(%client, %error, "closing the forwarded connection");
                if let Some(forward) = self.lock().forwarded.get_mut(index) {
                    forward.failures += 1;
                    forward.last_error = Some(error.to_string());
                }
                tunnel::reset_tcp(tcp);
            }
        }
    }

    fn count_tunnel(&self, service: &str, opened: bool) {
        if let Some(exposed) = self.lock().exposed.get_mut(service) {
            if opened {
                exposed.tunnels += 1;
            } else {
                exposed.target_failures += 1;
            }
        }
    }

    /// A peer opened a tunnel to `service` on this node.
    fn on_stream(self: &Arc<Self>, from: NodeId, service: String, mut stream: RawStream) {
        let target = self.lock().exposed.get(&service).map(|e| e.target.clone());
        let Some(target) = target else {
            warn!(%from, service, "tunnel refused: this node does not expose that service");
            refuse(stream, StreamErrorCode::NoSuchService);
            return;
        };
        let Ok(permit) = self.tunnels.clone().try_acquire_owned() else {
            warn!(%from, service, "tunnel refused: serving as many tunnels as allowed");
            self.count_tunnel(&service, false);
            refuse(stream, StreamErrorCode::ProviderBusy);
            return;
        };
        let inner = self.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let connected = tokio::time::timeout(
                    inner.config.connect_timeout,
                    TcpStream::connect(target.as_str()),
                )
                .await;
                let tcp = match connected {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(error)) => {
                        warn!(%from, service, target, %error, "cannot reach the exposed service");
                        inner.count_tunnel(&service, false);
                        refuse(stream, StreamErrorCode::ServiceUnreachable);
                        return;
                    }
                    Err(_) => {
                        warn!(%from, service, target, "the exposed service did not answer in time");
                        inner.count_tunnel(&service, false);
                        refuse(stream, StreamErrorCode::ServiceUnreachable);
                        return;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if let Err(error) = stream.write_all(&[TUNNEL_ACCEPTED]).await {
                    debug!(%from, %error, "tunnel closed before it was accepted");
                    return;
                }
                inner.count_tunnel(&service, true);
                let mut stop = inner.stop.subscribe();
                tokio::select! {
                    result = tunnel::splice(tcp, stream) => match result {
                        Ok(carried) => debug!(%from, service, up = carried.to_stream,
                            down = carried.to_tcp, "tunnel closed"),
                        Err(error) => debug!(%from, service, %error, "tunnel broken"),
                    },
                    _ = stop.wait_for(|stopped| *stopped) => {
                        debug!(%from, service, "tunnel closed: the mesh is shutting down");
                    }
                }
            }
            .in_current_span(),
        );
    }
}
