//! The owner of a node's [`Pastry`] state, and the task that keeps it running.
//!
//! The state (the core plus what the runtime keeps beside it) lives in a [`Runtime`]: one mutex
//! that whichever task has an input locks for as long as the core takes to handle it, never
//! across an `.await`. A one-way message is handled by the transport task that read it (the
//! [`Inbox`] fast path) and [`Node::route`](super::Node::route) by the caller's task, so a
//! routed message meets no task hand-off beyond QUIC's own. The node's task runs a `select!`
//! loop over everything else: the core's next timer, the transport's other events, the
//! commands that wait (join, leave) and finished background work.
//!
//! Network work that may wait (dials, RTT measurements, a send without stream credit) runs in
//! spawned tasks, so no input waits on a peer; their results come back on an internal channel
//! as inputs to the core.
//!
//! The runtime reaches the network only through [`Links`]: the node's
//! [`Transport`](crate::transport::Transport), or an in-memory fake in the unit tests.
//!
//! Every routed and direct payload travels in an [`envelope`] that names its [`PayloadKind`],
//! written here on the way out and opened here on the way in: the application's payloads go to
//! its events and forward hook without the envelope, each other kind to the channel its owner
//! subscribed ([`Runtime::subscribe`]), and a payload of an unknown kind is dropped alone.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use std::sync::{atomic::Ordering, Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::links::Links;
use super::{
    bump, Command, ConnectionStatus, Counters, Delivery, ForwardAction, ForwardHook, Forwarded,
    LinkPath, NodeConfig, NodeError, NodeEvent, PeerStatus, Status,
};
use crate::id::{Key, NodeId};
use crate::pastry::{
    self, Event, ForwardVerdict, Message, OriginAuth, Pastry, PeerInfo, Time, Transmit,
};
use crate::relay::Relays;
use crate::task::{run_inline_or_spawn, step_aside, OnDrop};
use crate::transport::{ConnectError, Inbox, SendError, TransportEvent};
use crate::wire::{envelope, Body, PayloadKind};

mod batch;
mod inbound;
mod join;
mod leave;

use join::{BootstrapFailed, PendingJoin};

pub(super) struct Setup<L> {
    pub(super) me: PeerInfo,
    pub(super) config: NodeConfig,
    pub(super) seed: u64,
    pub(super) transport: L,
    pub(super) transport_events: mpsc::Receiver<TransportEvent>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) events: mpsc::Sender<NodeEvent>,
    pub(super) counters: Arc<Counters>,
    pub(super) forward: Option<Arc<ForwardHook>>,
    /// Signs and checks the origins of routed messages (the node's key); `None` runs the core
    /// unauthenticated (unit tests whose nodes have no keys).
    pub(super) origin_auth: Option<Box<dyn OriginAuth>>,
    /// Where reachability requests go (`None`: refused as unsupported, in unit tests).
    pub(super) reach: Option<mpsc::Sender<crate::reach::Request>>,
    /// The node's relaying (`None` in unit tests on in-memory links).
    pub(super) relays: Option<Arc<Relays>>,
    /// Where hole-punching requests go (`None`: refused as unsupported, in unit tests).
    pub(super) punch: Option<mpsc::Sender<crate::punch::Request>>,
}

/// Results of background work, fed back into the core.
enum Internal {
    /// A bootstrap dial finished.
    Bootstrapped(Result<PeerInfo, BootstrapFailed>),
    /// An RTT measurement finished.
    Measured(PeerInfo, Duration),
    /// A peer could not be reached (dial or send failed).
    Unreachable(NodeId),
    /// A handshake with the peer at this address was refused, by it or by this node (why).
    Refused(SocketAddr, String),
    /// A peer says this node's identity is already live at this address (a claim to verify).
    IdentityClaim(SocketAddr),
    /// A handshake at this address proved this node's own key: another process holds it.
    IdentityProven(SocketAddr),
}

/// Sends held back until the tasks a delivery woke have run (see [`Driver::drain_outputs`]).
///
/// Every send of a batch that handed a delivery to the application: the delivered message's
/// ack, and whatever else the same batch produced (forwards of other messages included), kept
/// in the core's order.
type Deferred = Vec<(PeerInfo, Message)>;

/// A node's runtime state, shared by the node's task, its transport's reading tasks and the
/// application's [`Node`](super::Node) handles: the [`Driver`] (the Pastry core and what the
/// runtime keeps beside it) behind its lock, and what lets any thread hand it an input.
pub(super) struct Runtime<L> {
    driver: Mutex<Driver<L>>,
    /// The runtime the node was spawned on: inputs handled on another thread (an application
    /// calling from outside tokio) still spawn their background work and arm their timeouts
    /// there.
    tokio: tokio::runtime::Handle,
    /// Wakes the node's task when an input handled elsewhere moved the core's next timer
    /// earlier than the one it sleeps until.
    rearm: Notify,
}

struct Driver<L> {
    pastry: Pastry,
    epoch: Instant,
    transport: L,
    /// `None` once the node has stopped, so the application's [`Events`](super::Events) end.
    events: Option<mpsc::Sender<NodeEvent>>,
    counters: Arc<Counters>,
    forward: Option<Arc<ForwardHook>>,
    internal: mpsc::UnboundedSender<Internal>,
    join: Option<PendingJoin>,
    join_timeout: Duration,
    stopping: bool,
    /// When the node's task wakes for the next timer.
    armed: Instant,
    /// Sends off a message's latency path, made once the tasks this batch woke have run.
    deferred: Deferred,
    /// Where routed and direct payloads of kinds other than the application's go.
    subscribers: Vec<(PayloadKind, mpsc::Sender<NodeEvent>)>,
    /// The peers last told to the transport as protected (sorted), and when.
    protected: (Vec<NodeId>, Instant),
    /// Where reachability requests go.
    reach: Option<mpsc::Sender<crate::reach::Request>>,
    relays: Option<Arc<Relays>>,
    punch: Option<mpsc::Sender<crate::punch::Request>>,
}

/// Starts a node's task; returns the state its [`Node`](super::Node) handles use.
pub(super) fn spawn<L: Links>(setup: Setup<L>) -> Arc<Runtime<L>> {
    let span = tracing::info_span!("node", id = %setup.me.id);
    let (internal, internal_rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut pastry = Pastry::new(
        setup.me,
        pastry::Config {
            // Forwards wait for the application's hook, if it installed one.
            intercept_forwards: setup.forward.is_some(),
            ..setup.config.pastry.clone()
        },
        setup.seed,
    );
    if let Some(auth) = setup.origin_auth {
        pastry.set_origin_auth(auth);
    }
    pastry.set_link_view(Box::new(super::links::LinkedPeers(setup.transport.clone())));
    let driver = Driver {
        pastry,
        epoch: now,
        transport: setup.transport.clone(),
        events: Some(setup.events),
        counters: setup.counters,
        forward: setup.forward,
        internal,
        join: None,
        join_timeout: setup.config.pastry.join_timeout,
        stopping: false,
        armed: now,
        deferred: Deferred::new(),
        subscribers: Vec::new(),
        protected: (Vec::new(), now),
        reach: setup.reach,
        relays: setup.relays,
        punch: setup.punch,
    };
    let runtime = Arc::new(Runtime {
        driver: Mutex::new(driver),
        tokio: tokio::runtime::Handle::current(),
        rearm: Notify::new(),
    });
    let weak: Weak<Runtime<L>> = Arc::downgrade(&runtime);
    setup.transport.set_inbox(weak);
    tokio::spawn(
        runtime
            .clone()
            .run(setup.transport_events, setup.commands, internal_rx)
            .instrument(span),
    );
    runtime
}

impl<L: Links> Runtime<L> {
    /// How long a join may take.
    pub(super) fn join_timeout(&self) -> Duration {
        self.lock().join_timeout
    }

    fn lock(&self) -> MutexGuard<'_, Driver<L>> {
        // Every critical section leaves the driver consistent between core calls, so a panic
        // in one (a bug) does not make the state unusable for the others.
        self.driver.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The driver, unless the node has stopped.
    fn lock_running(&self) -> Result<MutexGuard<'_, Driver<L>>, NodeError> {
        let driver = self.lock();
        if driver.stopping {
            return Err(NodeError::Closed);
        }
        Ok(driver)
    }

    /// Runs `f` on the driver and carries out the core's outputs. Returns `f`'s result and
    /// whether a follow-up is due (sends held back, or the node's task to wake because the
    /// core's next timer moved earlier than the one it sleeps until): then call
    /// [`Self::settle`] once the tasks this call woke (QUIC's, the application's) have run, so
    /// that neither the held-back sends nor the node's task delay them.
    fn with<R>(&self, f: impl FnOnce(&mut Driver<L>) -> R) -> (R, bool) {
        let _runtime = self.tokio.enter();
        let mut driver = self.lock();
        let result = f(&mut driver);
        driver.drain_outputs();
        let follow_up = !driver.deferred.is_empty() || driver.timer_moved_earlier();
        (result, follow_up)
    }

    /// The follow-up of [`Self::with`]: makes the sends held back, and wakes the node's task if
    /// its timer is due earlier.
    fn settle(&self) {
        let _runtime = self.tokio.enter();
        let mut driver = self.lock();
        driver.finish_deferred();
        if driver.timer_moved_earlier() {
            self.rearm.notify_one();
        }
    }

    /// [`Node::route`](super::Node::route) (and its kinded form), on the caller's task.
    pub(super) async fn route(
        &self,
        key: Key,
        kind: PayloadKind,
        payload: &[u8],
    ) -> Result<u64, NodeError> {
        let (result, follow_up) = self.with(|driver| driver.route(key, kind, payload));
        // Settled even if the caller's future is dropped while it steps aside.
        let _settle = follow_up.then(|| OnDrop::new(|| self.settle()));
        // QUIC's connection task, woken by the send, runs before the caller goes on: the
        // caller has nothing to do before its message is on the wire.
        step_aside().await;
        result
    }

    /// Sends the routed and direct payloads of `kind` that arrive from now on to `to` (instead
    /// of a previous subscriber's channel). The application's payloads always go to the node's
    /// events: subscribing [`PayloadKind::Application`] has no effect.
    pub(super) fn subscribe(
        &self,
        kind: PayloadKind,
        to: mpsc::Sender<NodeEvent>,
    ) -> Result<(), NodeError> {
        let mut driver = self.lock_running()?;
        driver.subscribers.retain(|(k, _)| *k != kind);
        driver.subscribers.push((kind, to));
        Ok(())
    }

    /// The next hop this node would choose for `key` (`None`: this node is its root), or
    /// `None` too while the node is not active.
    pub(super) fn next_hop(&self, key: Key) -> Result<Option<PeerInfo>, NodeError> {
        let driver = self.lock_running()?;
        if !driver.pastry.is_active() {
            return Err(NodeError::NotJoined);
        }
        Ok(driver.pastry.next_hop(key))
    }

    /// Up to `n` leaf-set members, closest to `key` first.
    pub(super) fn closest_leaves(&self, key: Key, n: usize) -> Vec<PeerInfo> {
        let driver = self.lock();
        let mut leaves = driver.pastry.leaf_set().peers();
        leaves.sort_by(|a, b| key.cmp_closeness(a.id, b.id));
        leaves.truncate(n);
        leaves
    }

    /// A layer above the node could not reach `peer`: the core treats it as a link failure
    /// (it probes the peer, and routes around it meanwhile).
    pub(super) fn link_down(&self, peer: NodeId) {
        self.tell_core(|pastry, now| pastry.handle_link_down(now, peer));
    }

    /// The relayed path under the link to `peer` is moving to another relay: the core gives
    /// what waits for the peer's answers its whole timeout again (see
    /// [`Pastry::handle_path_change`]).
    pub(super) fn path_moving(&self, peer: NodeId) {
        self.tell_core(|pastry, now| pastry.handle_path_change(now, peer));
    }

    /// Gives the core an input from outside it (unless the node is stopping) and carries out
    /// what follows.
    pub(super) fn tell_core(&self, input: impl FnOnce(&mut Pastry, Time)) {
        let (_, follow_up) = self.with(|driver| {
            if !driver.stopping {
                let now = driver.now();
                input(&mut driver.pastry, now);
            }
        });
        if follow_up {
            self.settle();
        }
    }

    /// The address of a peer this node knows.
    pub(super) fn address_of(&self, id: NodeId) -> Result<SocketAddr, NodeError> {
        self.lock_running()?
            .address_of(id)
            .ok_or(NodeError::UnknownPeer(id))
    }

    /// A snapshot of the node's state.
    pub(super) fn status(&self) -> Result<Status, NodeError> {
        Ok(self.lock_running()?.status())
    }

    /// Stops the node at once: every call from now on fails with [`NodeError::Closed`], the
    /// application's events end, and the node's task exits.
    pub(super) fn stop(&self) {
        let _runtime = self.tokio.enter();
        let mut driver = self.lock();
        driver.stop();
        self.rearm.notify_one();
    }

    /// The node's task: timers, the transport's events, commands and background results.
    async fn run(
        self: Arc<Self>,
        mut transport_events: mpsc::Receiver<TransportEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        loop {
            let timer = {
                let mut driver = self.lock();
                if driver.stopping {
                    break;
                }
                driver.armed = driver.next_wakeup();
                driver.armed
            };
            let follow_up = tokio::select! {
                event = transport_events.recv() => match event {
                    Some(event) => self.with(|driver| driver.on_transport(event)).1,
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Join { bootstrap, reply }) => {
                        self.with(|driver| driver.join(bootstrap, reply)).1
                    }
                    Some(Command::Leave { reply }) => {
                        let _ = reply.send(self.leave().await);
                        false
                    }
                    None => break,
                },
                Some(result) = internal.recv() => self.with(|driver| driver.on_internal(result)).1,
                () = self.rearm.notified() => false,
                () = tokio::time::sleep_until(timer) => {
                    // A loaded machine wakes this task late: by then the ack or probe reply a
                    // timer waits for may already be read by a transport task waiting to run
                    // on this worker, or queued here. Let those run and take what has arrived
                    // first, so a late wake-up is not mistaken for a silent peer.
                    step_aside().await;
                    self.with(|driver| {
                        driver.take_arrived(&mut transport_events, &mut internal);
                        driver.on_timer();
                    })
                    .1
                }
            };
            if follow_up {
                step_aside().await;
                self.settle();
            }
        }
        self.lock().stop();
        debug!("node driver stopped");
    }
}

impl<L: Links> Inbox for Runtime<L> {
    fn event(&self, event: TransportEvent) -> bool {
        self.with(|driver| driver.on_transport(event)).1
    }

    fn settle(&self) {
        Self::settle(self);
    }
}

impl<L: Links> Driver<L> {
    /// Handles the inputs already queued (at most a bounded batch, so timers still run under a
    /// flood), draining the core's outputs after each.
    fn take_arrived(
        &mut self,
        transport_events: &mut mpsc::Receiver<TransportEvent>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) {
        const MAX_BATCH: usize = 1024;
        for _ in 0..MAX_BATCH {
            if let Ok(event) = transport_events.try_recv() {
                self.on_transport(event);
            } else if let Ok(result) = internal.try_recv() {
                self.on_internal(result);
            } else {
                break;
            }
            self.drain_outputs();
        }
    }

    /// Whether the core's next timer is earlier than the one the node's task sleeps until.
    fn timer_moved_earlier(&self) -> bool {
        self.pastry
            .poll_timeout()
            .is_some_and(|t| self.instant(t) < self.armed)
    }

    fn now(&self) -> Time {
        let micros = self.epoch.elapsed().as_micros();
        Time::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    fn instant(&self, time: Time) -> Instant {
        self.epoch + Duration::from_micros(time.as_micros())
    }

    /// The earlier of the core's next timer and a pending join's deadline (an hour away if
    /// neither: the loop wakes for inputs anyway).
    fn next_wakeup(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let core = self.pastry.poll_timeout().map_or(far, |t| self.instant(t));
        let join = self.join.as_ref().map_or(far, |j| j.deadline);
        core.min(join)
    }

    fn on_timer(&mut self) {
        if self.stopping {
            return;
        }
        let now = self.now();
        if self.pastry.poll_timeout().is_some_and(|t| t <= now) {
            self.pastry.handle_timeout(now);
        }
        self.protect_routing_state(false);
        if self
            .join
            .as_ref()
            .is_some_and(|j| j.deadline <= Instant::now())
        {
            if let Some(join) = self.join.take() {
                let error = match join.refused {
                    Some((addr, reason)) => NodeError::JoinRefused { addr, reason },
                    None => NodeError::JoinTimeout(self.join_timeout),
                };
                let _ = join.reply.send(Err(error));
            }
        }
    }

    /// Remembers a refused handshake for a pending join's error.
    fn note_refusal(&mut self, addr: SocketAddr, error: &ConnectError) {
        if let Some(join) = self.join.as_mut() {
            if is_refusal(error) {
                join.refused = Some((addr, error.to_string()));
            }
        }
    }

    /// Tells the transport which peers the leaf set and routing table hold, so that their
    /// links are kept first when links are capped: at most once a second unless `now`, and
    /// only when the set changed.
    fn protect_routing_state(&mut self, now: bool) {
        const PERIOD: Duration = Duration::from_secs(1);
        if !now && self.protected.1.elapsed() < PERIOD {
            return;
        }
        let mut peers = self.leaf_ids();
        peers.extend(self.pastry.routing_table().iter().map(|slot| slot.id()));
        peers.sort_unstable();
        peers.dedup();
        self.protected.1 = Instant::now();
        if peers != self.protected.0 {
            self.transport.protect(peers.clone());
            self.protected.0 = peers;
        }
    }

    fn stop(&mut self) {
        self.stopping = true;
        self.finish_deferred();
        self.events = None;
        self.subscribers.clear();
        if let Some(join) = self.join.take() {
            let _ = join.reply.send(Err(NodeError::Closed));
        }
    }

    fn route(&mut self, key: Key, kind: PayloadKind, payload: &[u8]) -> Result<u64, NodeError> {
        if self.stopping {
            return Err(NodeError::Closed);
        }
        if !self.pastry.is_active() {
            return Err(NodeError::NotJoined);
        }
        bump(&self.counters.routed);
        let now = self.now();
        Ok(self.pastry.route(now, key, envelope::wrap(kind, payload)))
    }

    fn on_internal(&mut self, result: Internal) {
        if self.stopping {
            return;
        }
        let now = self.now();
        match result {
            Internal::Bootstrapped(Ok(via)) => {
                if self.join.is_some() && !self.pastry.is_active() {
                    info!(via = %via.id, addr = %via.addr, "joining");
                    self.pastry.join(now, via);
                }
            }
            Internal::Bootstrapped(Err(failed)) => {
                if let Some(addr) = failed.identity_in_use {
                    self.identity_in_use(addr);
                } else if let Some(join) = self.join.take() {
                    let tried = failed
                        .tried
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let _ = join.reply.send(Err(NodeError::NoBootstrapReachable {
                        tried,
                        last_addr: failed.last_addr,
                        last_error: Box::new(failed.last_error),
                    }));
                }
            }
            Internal::Measured(peer, rtt) => self.pastry.handle_proximity(now, peer, rtt),
            Internal::Refused(addr, reason) => {
                if let Some(join) = self.join.as_mut() {
                    join.refused = Some((addr, reason));
                }
            }
            Internal::Unreachable(peer) => self.pastry.handle_link_down(now, peer),
            Internal::IdentityClaim(addr) => self.check_identity_claim(addr),
            Internal::IdentityProven(addr) => self.identity_in_use(addr),
        }
    }

    /// Carries out everything the core asked for since the last call: first its events (which
    /// may answer a forward, queueing more transmits), then its transmits.
    ///
    /// Measurements start at once; sends go out last, in the core's order. When the batch
    /// handed a delivery to the application, all its sends (the delivered message's ack, which
    /// is not on its latency path, and anything else the batch produced) are deferred until the
    /// application's task has had its turn, and so are those of later batches until then.
    fn drain_outputs(&mut self) {
        let mut delivered = false;
        while let Some(event) = self.pastry.poll_event() {
            delivered |= matches!(event, Event::Deliver { .. });
            self.on_core_event(event);
        }
        let hold = delivered || !self.deferred.is_empty();
        while let Some(transmit) = self.pastry.poll_transmit() {
            match transmit {
                Transmit::Send { to, msg } => self.deferred.push((to, msg)),
                Transmit::Measure { peer } => self.measure(peer),
            }
        }
        if !hold {
            self.finish_deferred();
        }
        self.counters
            .forwarded
            .store(self.pastry.stats().first_forwards, Ordering::Relaxed);
    }

    /// Makes the sends [`Self::drain_outputs`] held back (or has just queued).
    fn finish_deferred(&mut self) {
        for (to, body) in batch::frames(std::mem::take(&mut self.deferred)) {
            self.send(to, body);
        }
    }

    /// Hands a forward to the hook and the core the hook's verdict.
    ///
    /// The hook sees (and may change) the application's payload only, out of its envelope;
    /// payloads of other kinds, known or not, pass on untouched without being shown to it.
    fn on_forward(&mut self, token: u64, info: Forwarded, mut payload: Bytes) {
        let key = info.key;
        let mut modified = false;
        let action = match (&self.forward, envelope::peek(&payload)) {
            (Some(hook), Ok((PayloadKind::Application, header))) => {
                // The hook gets a copy of the application's part to change; the shared
                // original tells whether it did (a changed payload is no longer the one its
                // origin signed: see `ForwardVerdict::Modified`).
                let mut application = payload[header..].to_vec();
                // The hook runs on a transport task or the application's: a panic
                // in it must not take that task (a link's reader) down with it.
                let called =
                    std::panic::catch_unwind(AssertUnwindSafe(|| hook(&info, &mut application)));
                if application[..] != payload[header..] {
                    modified = true;
                    let mut changed = Vec::with_capacity(header + application.len());
                    changed.extend_from_slice(&payload[..header]);
                    changed.append(&mut application);
                    payload = Bytes::from(changed);
                }
                called.unwrap_or_else(|_| {
                    warn!(%key, "the forward hook panicked; message dropped");
                    self.emit(NodeEvent::Error(format!(
                        "the forward hook panicked on a message for {key}; \
                         it was dropped"
                    )));
                    ForwardAction::Veto
                })
            }
            _ => ForwardAction::Continue,
        };
        let verdict = match action {
            ForwardAction::Continue if modified => ForwardVerdict::Modified(payload),
            ForwardAction::Continue => ForwardVerdict::Continue(payload),
            ForwardAction::Veto => {
                bump(&self.counters.vetoed);
                ForwardVerdict::Drop
            }
        };
        let now = self.now();
        self.pastry.resume_forward(now, token, verdict);
    }

    fn on_core_event(&mut self, event: Event) {
        match event {
            Event::Deliver {
                key,
                origin,
                id,
                hops,
                payload,
            } => {
                bump(&self.counters.delivered);
                self.counters.delivered_after(hops);
                self.hand_over(origin, "routed message", payload, |payload| {
                    NodeEvent::Deliver(Delivery {
                        key,
                        origin,
                        id,
                        hops,
                        payload,
                    })
                });
            }
            Event::Forward {
                token,
                key,
                origin,
                next_hop,
                hops,
                payload,
            } => {
                let info = Forwarded {
                    key,
                    origin,
                    next_hop,
                    hops,
                };
                self.on_forward(token, info, payload);
            }
            Event::Joined => {
                self.protect_routing_state(true);
                let leaf_set = self.leaf_ids();
                info!(leaves = leaf_set.len(), "joined the overlay");
                if let Some(join) = self.join.take() {
                    let _ = join.reply.send(Ok(()));
                }
                self.emit(NodeEvent::Joined { leaf_set });
            }
            Event::LeafSetChanged => {
                let leaf_set = self.leaf_ids();
                self.emit(NodeEvent::LeafSetChanged { leaf_set });
            }
            Event::NodeJoined(id) => {
                bump(&self.counters.nodes_joined);
                self.emit(NodeEvent::NodeJoined(id));
            }
            Event::NodeLeft(id) => {
                bump(&self.counters.nodes_left);
                // Topic trees repair at once when a parent leaves the leaf set.
                self.tell_kind(PayloadKind::Topic, NodeEvent::NodeLeft(id));
                self.emit(NodeEvent::NodeLeft(id));
            }
            Event::RouteFailed { id, key } => {
                bump(&self.counters.routes_failed);
                warn!(id, %key, "routed message given up");
                self.emit(NodeEvent::RouteFailed { id, key });
            }
            Event::RouteAnswered { elapsed, .. } => self.counters.route_answered(elapsed),
            Event::Misbehaved { peer, reason } => {
                warn!(%peer, %reason, "peer misbehaved");
                self.emit(NodeEvent::Error(format!(
                    "peer {peer} misbehaved: {reason}"
                )));
            }
            Event::OriginRejected {
                from,
                origin,
                id,
                reason,
            } => {
                bump(&self.counters.origins_rejected);
                warn!(%from, %origin, id, %reason, "dropped a routed message with a forged origin");
                self.emit(NodeEvent::Error(format!(
                    "dropped a routed message from {from} claiming origin {origin} \
                     (id {id}): {reason}"
                )));
            }
        }
    }

    fn send(&self, to: PeerInfo, body: Body) {
        let transport = self.transport.clone();
        let internal = self.internal.clone();
        let counters = self.counters.clone();
        run_inline_or_spawn(async move {
            if let Err(error) = transport.send(to.id, to.addr, &body).await {
                bump(&counters.send_failures);
                if let SendError::Connect(error) = &error {
                    counters.dial_failures.count(error);
                    if let ConnectError::IdentityInUse { live_at } = error {
                        let _ = internal.send(Internal::IdentityClaim(*live_at));
                    }
                    if is_refusal(error) {
                        let _ = internal.send(Internal::Refused(to.addr, error.to_string()));
                    }
                }
                debug!(peer = %to.id, %error, "send failed");
                if is_peer_failure(&error) {
                    let _ = internal.send(Internal::Unreachable(to.id));
                }
            }
        });
    }

    fn measure(&self, peer: PeerInfo) {
        let transport = self.transport.clone();
        let internal = self.internal.clone();
        let counters = self.counters.clone();
        tokio::spawn(
            async move {
                match transport.connect(peer.addr, Some(peer.id)).await {
                    Ok(_) => {
                        if let Some(rtt) = transport.rtt(peer.id) {
                            let _ = internal.send(Internal::Measured(peer, rtt));
                        }
                    }
                    Err(error) => {
                        // Contract (`pastry::Output::Measure`): a Measure whose
                        // dial fails is a failure signal; the core suspects a member (probes
                        // it) and forgets a mere candidate. A local limit is not the peer's fault.
                        debug!(peer = %peer.id, %error, "measurement failed");
                        counters.dial_failures.count(&error);
                        if let ConnectError::IdentityInUse { live_at } = error {
                            let _ = internal.send(Internal::IdentityClaim(live_at));
                        }
                        if is_refusal(&error) {
                            let _ = internal.send(Internal::Refused(peer.addr, error.to_string()));
                        }
                        if is_unreachable(&error) {
                            let _ = internal.send(Internal::Unreachable(peer.id));
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Opens a routed or direct payload's envelope and hands `event(payload)` to the owner of
    /// its kind: the application, or the kind's subscriber. A payload that is not in a valid
    /// envelope of a kind this build knows is dropped, counted as a rejected frame and reported
    /// as an error naming `sender` (the origin of a routed message).
    fn hand_over(
        &self,
        sender: NodeId,
        what: &str,
        wrapped: Bytes,
        event: impl FnOnce(Bytes) -> NodeEvent,
    ) {
        match envelope::open(wrapped) {
            Ok((PayloadKind::Application, payload)) => self.emit(event(payload)),
            Ok((kind, payload)) => {
                let subscriber = self.subscribers.iter().find(|(k, _)| *k == kind);
                match subscriber {
                    Some((_, to)) => {
                        if to.try_send(event(payload)).is_err() {
                            bump(&self.counters.events_dropped);
                        }
                    }
                    // A peer may run a layer (the mesh) this node does not.
                    None => debug!(%sender, ?kind, "no subscriber for a {what}; dropped"),
                }
            }
            Err(error) => {
                bump(&self.counters.frames_rejected);
                debug!(%sender, %error, "dropped a {what}");
                self.emit(NodeEvent::Error(format!(
                    "dropped a {what} from {sender}: {error}"
                )));
            }
        }
    }

    /// Hands an event to the subscriber of `kind`, if any (dropped when it is behind).
    fn tell_kind(&self, kind: PayloadKind, event: NodeEvent) {
        if let Some((_, to)) = self.subscribers.iter().find(|(k, _)| *k == kind) {
            if to.try_send(event).is_err() {
                bump(&self.counters.events_dropped);
            }
        }
    }

    /// Hands an event to the application, or drops and counts it if the application is behind.
    fn emit(&self, event: NodeEvent) {
        let Some(events) = &self.events else {
            return;
        };
        if events.try_send(event).is_err() {
            bump(&self.counters.events_dropped);
        }
    }

    fn leaf_ids(&self) -> Vec<NodeId> {
        self.pastry
            .leaf_set()
            .iter()
            .map(|slot| slot.id())
            .collect()
    }

    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        let leaf = self.pastry.leaf_set().get(id).map(|s| s.peer.addr);
        leaf.or_else(|| self.pastry.routing_table().find(id).map(|s| s.peer.addr))
            .or_else(|| {
                self.pastry
                    .neighbourhood()
                    .iter()
                    .find(|s| s.id() == id)
                    .map(|s| s.peer.addr)
            })
            .or_else(|| self.transport.link_addr(id))
    }

    fn status(&self) -> Status {
        let peer_status = |slot: &pastry::Slot| PeerStatus {
            id: slot.id(),
            addr: slot.peer.addr,
            rtt_ms: slot.rtt().map(|d| d.as_secs_f64() * 1e3),
        };
        let stats = self.pastry.stats();
        let control = stats.control();
        let relay_status = self
            .relays
            .as_ref()
            .map(|relays| relays.status())
            .unwrap_or_default();
        let relayed = |peer, addr| {
            self.relays
                .as_ref()
                .and_then(|relays| relays.relayed_via(peer, addr))
        };
        Status {
            id: self.pastry.id(),
            addr: self.pastry.me().addr,
            active: self.pastry.is_active(),
            leaf_set: self.leaf_ids(),
            routing_table: self
                .pastry
                .routing_table()
                .iter()
                .map(peer_status)
                .collect(),
            neighbourhood: self
                .pastry
                .neighbourhood()
                .iter()
                .map(peer_status)
                .collect(),
            connections: self
                .transport
                .links()
                .into_iter()
                .map(|link| ConnectionStatus {
                    id: link.peer,
                    addr: link.addr,
                    rtt_ms: link.rtt.as_secs_f64() * 1e3,
                    inbound: link.inbound,
                    bytes_sent: link.bytes_sent,
                    bytes_received: link.bytes_received,
                    packets_sent: link.packets_sent,
                    packets_received: link.packets_received,
                    idle_ms: u64::try_from(link.idle.as_millis()).unwrap_or(u64::MAX),
                    path: if relayed(link.peer, link.addr).is_some() {
                        LinkPath::Relay
                    } else {
                        LinkPath::Direct
                    },
                    via: relayed(link.peer, link.addr).flatten(),
                })
                .collect(),
            relays: relay_status.homes.iter().map(|home| home.id).collect(),
            relay: relay_status.server,
            stats: self.counters.snapshot(),
            control_msgs_sent: control.msgs,
            control_bytes_sent: control.bytes,
            reroutes: stats.reroutes,
            hedges: stats.hedges,
            fresh_rounds: stats.fresh_rounds,
            duplicates_suppressed: stats.duplicates_suppressed,
            in_custody: self.pastry.in_custody(),
            route_cache_roots: self.pastry.route_cache_len(),
            route_cache_hits: stats.route_cache_hits,
            route_cache_stale: stats.route_cache_stale,
            route_cache_unlinked: stats.route_cache_unlinked,
            route_cache_links_requested: stats.route_cache_links_requested,
            root_answers_relayed: stats.root_answers_relayed,
            root_answer_relays: stats.root_answer_relays,
            hints_held: self.pastry.hints_len(),
            hint_probes: stats.hint_probes,
            hints_learned: stats.hints_learned,
            hints_refused: stats.hints_refused,
            // Filled in by the node handle, which holds the reachability service's channel.
            reachability: crate::reach::Reachability::Unknown,
            observed_addrs: Vec::new(),
            punch: crate::punch::PunchStatus::default(),
        }
    }
}

/// Whether a failed send means the peer is unreachable (as opposed to a local limit or a frame
/// this node could not encode).
pub(super) fn is_peer_failure(error: &SendError) -> bool {
    match error {
        SendError::Encode(_) => false,
        SendError::Connect(error) => is_unreachable(error),
        _ => true,
    }
}

/// Whether a failed handshake was a refusal by either side's admission checks (as opposed to
/// an unreachable or busy peer).
fn is_refusal(error: &ConnectError) -> bool {
    matches!(
        error,
        ConnectError::Auth(_) | ConnectError::RefusedByPeer(_)
    )
}

/// Whether a failed dial means the peer is unreachable (as opposed to a local limit: a full
/// pool, or the bounds on dials, which refuse without dialling).
fn is_unreachable(error: &ConnectError) -> bool {
    !matches!(
        error,
        ConnectError::TooManyConnections { .. } | ConnectError::DialRefused(_)
    )
}
