//! The secure service mesh: nodes expose named TCP services and reach each other's services
//! through QUIC tunnels, with a registry that lives on the overlay itself.
//!
//! This module owns the service registry, the tunnels and their TCP sockets. It uses the public
//! [`Node`] API (raw streams, events) and the node's crate-internal kinded payloads (routed and
//! direct payloads of kind [`PayloadKind::Mesh`]), and must
//! not reach into `pastry/` or `transport/`.
//!
//! Files: this one holds the [`Mesh`] API, its state and the event loop; `config`, `error`
//! and `status` its public types; `client` publishes and looks up records, `holder` stores and
//! replicates them for others; `connect` (consumer) and `provider` open and accept tunnels,
//! whose bytes `tunnel` copies; `record`, `registry` and `message` are the data they share.
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
//! # Events and mesh messages
//! [`Mesh::new`] takes the node's [`Events`] and returns a new [`Events`] that carries every
//! event the mesh does not consume, so the application still sees deliveries, direct messages,
//! leaf-set changes and the rest. The mesh consumes raw streams ([`NodeEvent::Stream`]: with a
//! mesh installed, the stream namespace is the service names). Its own messages never appear
//! among the node's events: the node sends them as payloads of kind
//! [`PayloadKind::Mesh`] and hands those to the mesh alone,
//! while every application payload, whatever its bytes, is the application's (see
//! [`crate::wire::envelope`]).
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

mod client;
mod config;
mod connect;
mod error;
mod holder;
mod message;
mod provider;
mod record;
mod registry;
mod status;
mod tunnel;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

pub use config::{validate_target, MeshConfig};
pub use error::MeshError;
pub use record::{
    unix_ms_now, validate_name, RecordError, ServiceRecord, SignedRecord, MAX_NAME_LEN,
};
pub use registry::service_key;
pub use status::{ExposedStatus, ForwardStatus, MeshStatus};

use crate::id::NodeId;
use crate::identity::Identity;
use crate::node::{Events, Node, NodeEvent};
use crate::transport::RawStream;
use crate::wire::PayloadKind;
use message::MeshMessage;
use registry::Registry;

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
    /// Hand-overs that arrived before this node's leaf set put it among the closest to their
    /// name (a holder learned of a failure before this node's own probe confirmed it): looked
    /// at again when the leaf set changes, for a while (see [`holder::DEFERRED_HANDOVERS`]).
    deferred: std::collections::VecDeque<(Instant, NodeId, Vec<SignedRecord>)>,
    last_sequence: u64,
    closed: bool,
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
        let messages = node.subscribe(PayloadKind::Mesh, config.event_capacity)?;
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
        let task = tokio::spawn(inner.clone().run(events, messages, app).instrument(span));
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
                bytes_sent: 0,
                bytes_received: 0,
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
                provider_failures: 0,
                bytes_sent: 0,
                bytes_received: 0,
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
            services: known_services(&state),
            events_dropped: self.inner.events_dropped.load(Ordering::Relaxed),
            sends_dropped: self.inner.sends_dropped.load(Ordering::Relaxed),
            records_refused: self.inner.records_refused.load(Ordering::Relaxed),
        }
    }

    /// The service names this node knows of, sorted (see [`MeshStatus::services`]).
    pub fn known_services(&self) -> Vec<String> {
        known_services(&self.inner.lock())
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

/// The names exposed here, held here with a live record, or cached with a provider.
fn known_services(state: &State) -> Vec<String> {
    let now = unix_ms_now();
    let mut names: Vec<String> = state.exposed.keys().cloned().collect();
    names.extend(
        state
            .registry
            .names()
            .into_iter()
            .filter(|name| !state.registry.live(name, now).is_empty()),
    );
    names.extend(
        state
            .cache
            .iter()
            .filter(|(_, (_, records))| !records.is_empty())
            .map(|(name, _)| name.clone()),
    );
    names.sort();
    names.dedup();
    names
}

/// Locks a mutex, recovering the data if a holder panicked (the state stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    async fn run(
        self: Arc<Self>,
        mut events: Events,
        mut messages: mpsc::Receiver<NodeEvent>,
        app: mpsc::Sender<NodeEvent>,
    ) {
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
                Some(message) = messages.recv() => self.on_message(message),
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

    /// A routed or direct mesh payload (the node hands over only those of kind
    /// [`PayloadKind::Mesh`]).
    fn on_message(self: &Arc<Self>, message: NodeEvent) {
        let (sender, payload) = match &message {
            NodeEvent::Deliver(delivery) => (delivery.origin, &delivery.payload),
            NodeEvent::Direct { from, payload } => (*from, payload),
            _ => return,
        };
        let Some(decoded) = MeshMessage::decode(payload) else {
            // A newer peer's message, or a broken one: only this message is lost.
            debug!(%sender, len = payload.len(), "undecodable mesh message dropped");
            return;
        };
        match message {
            NodeEvent::Deliver(delivery) => self.on_routed(delivery.origin, delivery.key, decoded),
            _ => self.on_direct(sender, decoded),
        }
    }

    fn on_event(self: &Arc<Self>, event: NodeEvent, app: &mpsc::Sender<NodeEvent>) {
        match event {
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
}
