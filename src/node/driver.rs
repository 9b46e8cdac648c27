//! The task that owns a node's [`Pastry`] state: one `select!` loop over transport events,
//! application commands, finished background work and the core's next timer.
//!
//! Network work (sends, dials, RTT measurements) runs in spawned tasks so the loop never waits
//! on a peer; their results come back on an internal channel as inputs to the core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::{
    bump, Command, ConnectionStatus, Counters, Delivery, ForwardAction, ForwardHook, Forwarded,
    NodeConfig, NodeError, NodeEvent, PeerStatus, Status,
};
use crate::id::NodeId;
use crate::pastry::{self, Event, ForwardVerdict, Message, Output, Pastry, PeerInfo, Time};
use crate::transport::{Transport, TransportError, TransportEvent};
use crate::wire::Body;

pub(super) struct Setup {
    pub(super) me: PeerInfo,
    pub(super) config: NodeConfig,
    pub(super) seed: u64,
    pub(super) transport: Transport,
    pub(super) transport_events: mpsc::Receiver<TransportEvent>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) events: mpsc::Sender<NodeEvent>,
    pub(super) counters: Arc<Counters>,
    pub(super) forward: Option<Arc<ForwardHook>>,
}

/// Results of background work, fed back into the core.
enum Internal {
    /// A bootstrap dial finished.
    Bootstrapped(Result<PeerInfo, (Vec<SocketAddr>, String)>),
    /// An RTT measurement finished.
    Measured(PeerInfo, Duration),
    /// A peer could not be reached (dial or send failed).
    Unreachable(NodeId),
}

/// What the loop does after stepping aside (see [`Driver::finish_deferred`]).
#[derive(Default)]
struct Deferred {
    /// Every send of a batch, from the first delivery it handed to the application on: the
    /// delivered message's ack, and whatever else the same batch produced (forwards of other
    /// messages included), kept in the core's order.
    sends: Vec<(PeerInfo, Message)>,
    /// Answers to [`Node::route`](super::Node::route) calls whose message is already handed
    /// to QUIC, with the message id.
    route_replies: Vec<(oneshot::Sender<Result<u64, NodeError>>, u64)>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.route_replies.is_empty()
    }
}

struct PendingJoin {
    reply: oneshot::Sender<Result<(), NodeError>>,
    deadline: Instant,
}

struct Driver {
    pastry: Pastry,
    epoch: Instant,
    transport: Transport,
    events: mpsc::Sender<NodeEvent>,
    counters: Arc<Counters>,
    forward: Option<Arc<ForwardHook>>,
    internal: mpsc::UnboundedSender<Internal>,
    join: Option<PendingJoin>,
    join_timeout: Duration,
    stopping: bool,
    /// Work off a message's latency path, done once the tasks this loop woke have run (see
    /// [`Driver::finish_deferred`]).
    deferred: Deferred,
    /// Polls a send inline once (see [`run_inline_or_spawn`]).
    noop_waker: Waker,
}

pub(super) fn spawn(setup: Setup) {
    let span = tracing::info_span!("node", id = %setup.me.id);
    let (internal, internal_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        pastry: Pastry::new(setup.me, setup.config.pastry.clone(), setup.seed),
        epoch: Instant::now(),
        transport: setup.transport,
        events: setup.events,
        counters: setup.counters,
        forward: setup.forward,
        internal,
        join: None,
        join_timeout: setup.config.join_timeout,
        stopping: false,
        deferred: Deferred::default(),
        noop_waker: Waker::from(Arc::new(NoopWake)),
    };
    tokio::spawn(
        driver
            .run(setup.transport_events, setup.commands, internal_rx)
            .instrument(span),
    );
}

impl Driver {
    async fn run(
        mut self,
        mut transport_events: mpsc::Receiver<TransportEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        while !self.stopping {
            let timer = self.next_wakeup();
            tokio::select! {
                event = transport_events.recv() => match event {
                    Some(event) => self.on_transport(event),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                Some(result) = internal.recv() => self.on_internal(result),
                () = tokio::time::sleep_until(timer) => {
                    // A loaded machine wakes this task late: by then the ack or probe reply a
                    // timer waits for may already be queued. Take what has arrived first, so a
                    // late wake-up is not mistaken for a silent peer.
                    self.take_arrived(&mut transport_events, &mut internal);
                    self.on_timer();
                }
            }
            self.drain_outputs();
            if !self.deferred.is_empty() {
                step_aside().await;
                self.finish_deferred();
            }
        }
        self.finish_deferred();
        debug!("node driver stopped");
    }

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
        let now = self.now();
        if self.pastry.poll_timeout().is_some_and(|t| t <= now) {
            self.pastry.handle_timeout(now);
        }
        if self
            .join
            .as_ref()
            .is_some_and(|j| j.deadline <= Instant::now())
        {
            if let Some(join) = self.join.take() {
                let _ = join
                    .reply
                    .send(Err(NodeError::JoinTimeout(self.join_timeout)));
            }
        }
    }

    fn on_transport(&mut self, event: TransportEvent) {
        let now = self.now();
        match event {
            TransportEvent::LinkUp {
                peer, addr, rtt, ..
            } => {
                // A fresh handshake is a free proximity sample.
                self.pastry
                    .handle_proximity(now, PeerInfo { id: peer, addr }, rtt);
            }
            TransportEvent::LinkLost { peer, reason } => {
                if reason.is_failure() {
                    debug!(%peer, ?reason, "link lost");
                    self.pastry.handle_link_down(now, peer);
                }
            }
            TransportEvent::Message {
                from,
                from_addr,
                body,
            } => match body {
                Body::Pastry(msg) => {
                    if matches!(msg, Message::Heartbeat { .. }) {
                        self.emit(NodeEvent::Heartbeat { from });
                    }
                    let peer = PeerInfo {
                        id: from,
                        addr: from_addr,
                    };
                    self.pastry.handle_message(now, peer, msg);
                }
                Body::Direct { payload } => {
                    bump(&self.counters.direct_received);
                    self.emit(NodeEvent::Direct { from, payload });
                }
                other => debug!(%from, kind = other.kind_name(), "ignored one-way frame"),
            },
            TransportEvent::Request {
                from, body, reply, ..
            } => {
                let answer = match body {
                    Body::Ping { nonce } => Body::Pong { nonce },
                    other => Body::Error {
                        code: crate::wire::ErrorCode::Unsupported as u16,
                        message: format!("{} is not a request", other.kind_name()),
                    },
                };
                debug!(%from, "answering request");
                tokio::spawn(async move {
                    let _ = reply.reply(&answer).await;
                });
            }
            TransportEvent::Stream {
                from,
                header,
                stream,
                ..
            } => match header {
                Body::Tunnel { service } => self.emit(NodeEvent::Stream {
                    from,
                    service,
                    stream,
                }),
                other => debug!(%from, kind = other.kind_name(), "ignored stream"),
            },
            TransportEvent::StreamRejected { from, error } => {
                bump(&self.counters.frames_rejected);
                self.emit(NodeEvent::Error(format!("bad frame from {from}: {error}")));
            }
            TransportEvent::HandshakeFailed { addr, error } => {
                self.emit(NodeEvent::Error(format!("refused peer at {addr}: {error}")));
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Join { bootstrap, reply } => {
                if self.pastry.is_active() {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if bootstrap.is_empty() {
                    info!("starting a new overlay");
                    self.pastry.bootstrap_alone(now);
                    self.join = Some(PendingJoin {
                        reply,
                        deadline: Instant::now() + self.join_timeout,
                    });
                    return;
                }
                self.join = Some(PendingJoin {
                    reply,
                    deadline: Instant::now() + self.join_timeout,
                });
                let transport = self.transport.clone();
                let internal = self.internal.clone();
                tokio::spawn(
                    async move {
                        let result = dial_first(&transport, &bootstrap).await;
                        let _ = internal.send(Internal::Bootstrapped(result));
                    }
                    .in_current_span(),
                );
            }
            Command::Route {
                key,
                payload,
                reply,
            } => {
                if !self.pastry.is_active() {
                    let _ = reply.send(Err(NodeError::NotJoined));
                    return;
                }
                bump(&self.counters.routed);
                let id = self.pastry.route(now, key, payload);
                // Answered after the loop stepped aside: waking the caller can cost a system
                // call (a thread parked in `block_on`), and the caller has nothing to do
                // before its message is on the wire.
                self.deferred.route_replies.push((reply, id));
            }
            Command::Address { to, reply } => {
                let _ = reply.send(self.address_of(to).ok_or(NodeError::UnknownPeer(to)));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Leave { reply } => {
                self.pastry.leave(now);
                self.drain_outputs();
                self.finish_deferred();
                // The leave notices are in flight on their own streams; give them a moment to be
                // handed to QUIC before the links close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.transport.shutdown().await;
                self.stopping = true;
                let _ = reply.send(());
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    fn on_internal(&mut self, result: Internal) {
        let now = self.now();
        match result {
            Internal::Bootstrapped(Ok(via)) => {
                if self.join.is_some() && !self.pastry.is_active() {
                    info!(via = %via.id, addr = %via.addr, "joining");
                    self.pastry.join(now, via);
                }
            }
            Internal::Bootstrapped(Err((tried, last_error))) => {
                if let Some(join) = self.join.take() {
                    let tried = tried
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let _ = join
                        .reply
                        .send(Err(NodeError::NoBootstrapReachable { tried, last_error }));
                }
            }
            Internal::Measured(peer, rtt) => self.pastry.handle_proximity(now, peer, rtt),
            Internal::Unreachable(peer) => self.pastry.handle_link_down(now, peer),
        }
    }

    /// Carries out everything the core asked for since the last call.
    ///
    /// Sends go out last, in the core's order. When the batch handed a delivery to the
    /// application, all its sends (the delivered message's ack, which is not on its latency
    /// path, and anything else the batch produced) are deferred until the application's task
    /// has had its turn.
    fn drain_outputs(&mut self) {
        let mut sends = Vec::new();
        let mut delivered = false;
        while let Some(output) = self.pastry.poll_output() {
            match output {
                Output::Send { to, msg } => sends.push((to, msg)),
                Output::Measure { peer } => self.measure(peer),
                Output::Deliver {
                    key,
                    origin,
                    id,
                    hops,
                    payload,
                } => {
                    bump(&self.counters.delivered);
                    delivered = true;
                    self.emit(NodeEvent::Deliver(Delivery {
                        key,
                        origin,
                        id,
                        hops,
                        payload,
                    }));
                }
                Output::Forward {
                    token,
                    key,
                    origin,
                    next_hop,
                    hops,
                    mut payload,
                } => {
                    let action = match &self.forward {
                        Some(hook) => {
                            let info = Forwarded {
                                key,
                                origin,
                                next_hop,
                                hops,
                            };
                            hook(&info, &mut payload)
                        }
                        None => ForwardAction::Continue,
                    };
                    let verdict = match action {
                        ForwardAction::Continue => {
                            bump(&self.counters.forwarded);
                            ForwardVerdict::Continue(payload)
                        }
                        ForwardAction::Veto => {
                            bump(&self.counters.vetoed);
                            ForwardVerdict::Drop
                        }
                    };
                    let now = self.now();
                    self.pastry.resume_forward(now, token, verdict);
                }
                Output::Event(event) => self.on_core_event(event),
            }
        }
        if delivered || !self.deferred.sends.is_empty() {
            // Behind sends already held back, so the core's order is kept.
            self.deferred.sends.extend(sends);
            return;
        }
        for (to, msg) in sends {
            self.send(to, msg);
        }
    }

    /// Sends what [`Self::drain_outputs`] held back after a delivery and answers the route
    /// calls held back.
    fn finish_deferred(&mut self) {
        for (to, msg) in std::mem::take(&mut self.deferred.sends) {
            self.send(to, msg);
        }
        for (reply, id) in self.deferred.route_replies.drain(..) {
            // A caller that stopped waiting no longer wants the id.
            let _ = reply.send(Ok(id));
        }
    }

    fn on_core_event(&mut self, event: Event) {
        match event {
            Event::Joined => {
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
            Event::NodeJoined(id) => self.emit(NodeEvent::NodeJoined(id)),
            Event::NodeLeft(id) => self.emit(NodeEvent::NodeLeft(id)),
            Event::RouteFailed { id, key } => {
                warn!(id, %key, "routed message given up");
                self.emit(NodeEvent::RouteFailed { id, key });
            }
        }
    }

    fn send(&self, to: PeerInfo, msg: Message) {
        let transport = self.transport.clone();
        let internal = self.internal.clone();
        let counters = self.counters.clone();
        run_inline_or_spawn(
            &self.noop_waker,
            async move {
                if let Err(error) = transport.send(to.id, to.addr, &Body::Pastry(msg)).await {
                    bump(&counters.send_failures);
                    debug!(peer = %to.id, %error, "send failed");
                    if is_peer_failure(&error) {
                        let _ = internal.send(Internal::Unreachable(to.id));
                    }
                }
            }
            .in_current_span(),
        );
    }

    fn measure(&self, peer: PeerInfo) {
        let transport = self.transport.clone();
        let internal = self.internal.clone();
        tokio::spawn(
            async move {
                match transport.connect(peer.addr, Some(peer.id)).await {
                    Ok(_) => {
                        if let Some(rtt) = transport.rtt(peer.id) {
                            let _ = internal.send(Internal::Measured(peer, rtt));
                        }
                    }
                    Err(error) => {
                        // Contract (src/pastry/API-CONTRACT.md, 02:30 change): a Measure whose
                        // dial fails is a failure signal; the core suspects a member (probes
                        // it) and forgets a mere candidate. A local limit is not the peer's fault.
                        debug!(peer = %peer.id, %error, "measurement failed");
                        if is_peer_failure(&error) {
                            let _ = internal.send(Internal::Unreachable(peer.id));
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Hands an event to the application, or drops and counts it if the application is behind.
    fn emit(&self, event: NodeEvent) {
        if self.events.try_send(event).is_err() {
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
            .or_else(|| {
                self.transport
                    .links()
                    .into_iter()
                    .find(|l| l.peer == id)
                    .map(|l| l.addr)
            })
    }

    fn status(&self) -> Status {
        let peer_status = |slot: &pastry::Slot| PeerStatus {
            id: slot.id(),
            addr: slot.peer.addr,
            rtt_ms: slot.rtt().map(|d| d.as_secs_f64() * 1e3),
        };
        let stats = self.pastry.stats();
        let control = stats.control();
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
                })
                .collect(),
            stats: self.counters.snapshot(),
            control_msgs_sent: control.msgs,
            control_bytes_sent: control.bytes,
            reroutes: stats.reroutes,
            duplicates_suppressed: stats.duplicates_suppressed,
            in_custody: self.pastry.in_custody(),
        }
    }
}

/// Polls `work` once right here and spawns it only if it cannot finish at once.
///
/// A send on a pooled link with stream credit and window completes in its first poll (open a
/// uni stream, queue the frame, finish), so the hot path costs no task hand-off; a send that
/// must dial, or wait for credit, continues in its own task and the loop never waits on a peer.
/// The first poll uses a no-op waker: a future that returns `Pending` is polled again by the
/// spawned task, which registers the real waker before anything can be missed.
fn run_inline_or_spawn<F>(noop_waker: &Waker, work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut work = Box::pin(work);
    let mut cx = Context::from_waker(noop_waker);
    if work.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(work);
    }
}

/// Lets the tasks this task just woke run first, then continues.
///
/// tokio runs the task woken last by a worker's task next (its LIFO slot), and puts a task that
/// wakes itself at the back of the worker's queue (where an idle worker may also take it): so
/// the driver continues right after the application's task read a delivery, or QUIC's task put
/// a routed message on the wire. (`tokio::task::yield_now` instead waits until the worker has
/// nothing else to run, which a busy worker may not reach for a while.)
async fn step_aside() {
    let mut stepped_aside = false;
    std::future::poll_fn(|cx| {
        if stepped_aside {
            return Poll::Ready(());
        }
        stepped_aside = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// A waker that does nothing (`std::task::Waker::noop` needs Rust 1.85, above the MSRV).
struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// Whether a transport error means the peer is unreachable (as opposed to a local limit).
fn is_peer_failure(error: &TransportError) -> bool {
    !matches!(
        error,
        TransportError::TooManyConnections { .. } | TransportError::Wire(_)
    )
}

/// Dials the bootstrap addresses in order; the first that completes a handshake is the one.
async fn dial_first(
    transport: &Transport,
    bootstrap: &[SocketAddr],
) -> Result<PeerInfo, (Vec<SocketAddr>, String)> {
    let mut last_error = String::from("no address given");
    for &addr in bootstrap {
        match transport.connect(addr, None).await {
            Ok(id) => return Ok(PeerInfo { id, addr }),
            Err(error) => {
                warn!(%addr, %error, "bootstrap unreachable");
                last_error = format!("{addr}: {error}");
            }
        }
    }
    Err((bootstrap.to_vec(), last_error))
}
