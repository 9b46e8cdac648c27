//! [`Relays`]: a node's side of relaying: homing on relays when private, publishing its relay
//! record, keeping the records of relayed peers, and opening the sessions quinn wants.
//! Turning private or public at run time is in `switch.rs`.

mod switch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn, Instrument};

use super::record::{RelayEntry, RelayRecord, RelayRecordError, SignedRelayRecord, MAX_TTL_MS};
use super::server::{keep_alive, RelayServer, RelayServerStatus, ACCEPTED};
use super::session::{self, SessionEnd, Stop};
use super::socket::{Paths, WantedSession};
use super::{is_synthetic, unmap, RelayConfig};
use crate::id::NodeId;
use crate::identity::Identity;
use crate::mesh::unix_ms_now;
use crate::transport::{RawStream, StreamErrorCode, Transport};
use crate::wire::Body;

/// How many relays a private node keeps.
pub const HOMES: usize = 2;

/// How long a dial waits for the relay record of a relayed peer it has none for.
const RECORD_WAIT: Duration = Duration::from_secs(3);

/// The most records a node passes on to a peer when their link comes up.
const RECORDS_PER_LINK: usize = 32;

/// How long a relay that went silent is not tried again as a home.
const LOST_RELAY_PAUSE: Duration = Duration::from_secs(60);

/// How long a session whose connection closed stays up, so that the connection's last packets
/// (its close) still get through.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The shortest relay record lifetime a node signs.
const MIN_RECORD_TTL: Duration = Duration::from_secs(1);

/// How long a private node waits for a candidate relay's handshake.
const CANDIDATE_DIAL: Duration = Duration::from_secs(2);

/// How long a relay that broke a session of this node goes last when this node picks a relay
/// for any session (it is probably dead, and a connect through it would wait in vain).
const BROKEN_RELAY_PAUSE: Duration = Duration::from_secs(10);

/// How long a connect through a relay may take when the record names another relay to try
/// after it and this node has no RTT for its link to the relay (the last one gets
/// [`session::SILENCE`]).
const CONNECT_WAIT: Duration = Duration::from_secs(1);

/// With an RTT for the link to the relay, a connect through it that the record can follow
/// with another relay gets four RTTs plus this (at most [`CONNECT_WAIT`]): the relay answers
/// once it opened a stream to the target on its own link, about one RTT, and a dead relay
/// that the node has not yet seen break a session must not hold the move for a whole
/// second, longer than the peer's probes last on a fast path.
const CONNECT_MARGIN: Duration = Duration::from_millis(250);

/// How many linked peers a node asks for a relayed peer's record it lacks.
const QUERY_FANOUT: usize = 8;

/// The most relay records a node keeps.
const MAX_RECORDS: usize = 4096;

/// Addresses a private node keeps to look for relays at: its bootstrap nodes and `--relay-via`
/// first, then peers whose links came up (each asked once per [`LOST_RELAY_PAUSE`]).
const MAX_CANDIDATES: usize = 16;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // One map operation per critical section: a poisoned lock still guards consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The relays a node is homed on and what it relays, for the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// Whether the node is private (reached through relays).
    pub private: bool,
    /// The relays this node is homed on.
    pub homes: Vec<RelayEntry>,
    /// The relay role's figures, if this node serves as a relay.
    pub server: Option<RelayServerStatus>,
    /// Relay records refused (forged, expired, oversized, malformed).
    pub records_rejected: u64,
    /// Datagrams the node's socket dropped (a relay session's queue full, an unknown synthetic
    /// address, or a private node's filter).
    pub datagrams_dropped: u64,
    /// Relay sessions open now on this node (to relayed peers, or from them to this private
    /// node): each ends with the connection inside it, its relay link, or when idle.
    pub sessions: usize,
    /// Relay records of other nodes held now (expired ones are dropped).
    pub records: usize,
}

/// A node's relaying: see the [module docs](self).
pub(crate) struct Relays {
    me: NodeId,
    identity: Identity,
    paths: Arc<Paths>,
    transport: OnceLock<Transport>,
    /// The address this node advertises (its synthetic one while private), told to the
    /// relays it connects through.
    advertised_addr: Mutex<Option<SocketAddr>>,
    /// Whether the node is private now (the mode; the socket's NAT-like filter is set only
    /// for a node private from the start, see [`Paths::set_private`]).
    private: AtomicBool,
    /// Whether the homing loop runs (it ends once the node is public).
    homing: AtomicBool,
    /// Ends the home stream to each relay (the node turned public).
    home_stops: Mutex<HashMap<NodeId, Arc<Notify>>>,
    server: Option<RelayServer>,
    directory: Mutex<HashMap<NodeId, SignedRelayRecord>>,
    record_arrived: Notify,
    homes: Mutex<Vec<RelayEntry>>,
    candidates: Mutex<Vec<SocketAddr>>,
    own: Mutex<Option<SignedRelayRecord>>,
    sequence: AtomicU64,
    /// The addresses relayed peers say they listen on (from their connect streams).
    claimed: Mutex<HashMap<NodeId, SocketAddr>>,
    /// The relay carrying each relayed peer's session now.
    via: Mutex<HashMap<NodeId, NodeId>>,
    home_lost: Arc<Notify>,
    /// Relays lost lately, by address: not tried again for [`LOST_RELAY_PAUSE`].
    lost: Mutex<HashMap<SocketAddr, std::time::Instant>>,
    /// Relays under a session of this node that broke lately: tried last for
    /// [`BROKEN_RELAY_PAUSE`].
    broken: Mutex<HashMap<NodeId, std::time::Instant>>,
    records_rejected: AtomicU64,
    /// The running sessions, by peer, with the handle that ends each.
    sessions: Mutex<HashMap<NodeId, (u64, Arc<Stop>)>>,
    next_session: AtomicU64,
    session_idle: Duration,
    record_ttl: Duration,
    /// Told when a relayed peer's path breaks and moves to another relay (the node's routing
    /// core: replies lost with the old path do not make the peer dead).
    path_moving: OnceLock<PathMoving>,
}

/// What a node does when the relayed path to a peer is moving (see [`Relays::on_path_moving`]).
pub(crate) type PathMoving = Box<dyn Fn(NodeId) + Send + Sync>;

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays")
            .field("me", &self.me)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Relays {
    pub(crate) fn new(identity: Identity, config: &RelayConfig, paths: Arc<Paths>) -> Self {
        paths.set_private(config.private);
        let server = config
            .serve
            .map(|limits| RelayServer::new(limits, paths.clone()));
        Self {
            me: identity.node_id(),
            identity,
            paths,
            transport: OnceLock::new(),
            advertised_addr: Mutex::new(None),
            private: AtomicBool::new(config.private),
            homing: AtomicBool::new(false),
            home_stops: Mutex::new(HashMap::new()),
            server,
            directory: Mutex::new(HashMap::new()),
            record_arrived: Notify::new(),
            homes: Mutex::new(Vec::new()),
            candidates: Mutex::new(config.relays.clone()),
            own: Mutex::new(None),
            sequence: AtomicU64::new(unix_ms_now()),
            claimed: Mutex::new(HashMap::new()),
            via: Mutex::new(HashMap::new()),
            home_lost: Arc::new(Notify::new()),
            lost: Mutex::new(HashMap::new()),
            broken: Mutex::new(HashMap::new()),
            records_rejected: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            session_idle: config.session_idle,
            // A record must outlive the time it takes to reach its holders; the refresh loop
            // wakes at a quarter of it.
            record_ttl: config
                .record_ttl
                .clamp(MIN_RECORD_TTL, Duration::from_millis(MAX_TTL_MS)),
            path_moving: OnceLock::new(),
        }
    }

    /// Sets what to call when the relayed path to a peer breaks and when it is up again
    /// through another relay.
    pub(crate) fn on_path_moving(&self, hook: PathMoving) {
        let _ = self.path_moving.set(hook);
    }

    fn path_moved(&self, peer: NodeId) {
        if let Some(hook) = self.path_moving.get() {
            hook(peer);
        }
    }

    /// Starts the session opener and, on a private node, the homing loop.
    pub(crate) fn start(
        self: &Arc<Self>,
        transport: Transport,
        advertised: SocketAddr,
        mut wanted: mpsc::UnboundedReceiver<WantedSession>,
    ) {
        // A dial of a relayed peer this node has no relay record for yet (it heard of the
        // peer from a third node) must still reach the socket's session opener, which then
        // asks linked peers for the record: the synthetic address alone does not name the id.
        let paths = self.paths.clone();
        transport.set_relayed_dial_hook(crate::transport::RelayedDialHook(Box::new(move |peer| {
            paths.learn(peer)
        })));
        let _ = self.transport.set(transport);
        *lock(&self.advertised_addr) = Some(advertised);
        let span = tracing::info_span!("relay", node = %self.me);
        let relays = Arc::downgrade(self);
        tokio::spawn(
            async move {
                while let Some(session) = wanted.recv().await {
                    let Some(relays) = relays.upgrade() else {
                        return;
                    };
                    tokio::spawn(async move { relays.open_outbound(session).await });
                }
            }
            .instrument(span.clone()),
        );
        if self.is_private() {
            self.start_homing();
        }
    }

    /// Spawns the homing loop unless it runs.
    fn start_homing(self: &Arc<Self>) {
        if self.homing.swap(true, Ordering::SeqCst) {
            return;
        }
        let span = tracing::info_span!("relay", node = %self.me);
        let relays = Arc::downgrade(self);
        tokio::spawn(Self::keep_homes(relays).instrument(span));
    }

    /// Whether the node is private.
    pub(crate) fn is_private(&self) -> bool {
        self.private.load(Ordering::SeqCst)
    }

    /// Waits until the node is homed on a relay, at most `timeout`.
    pub(crate) async fn wait_homed(&self, timeout: Duration) -> Result<(), crate::node::NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if lock(&self.own)
                .as_ref()
                .is_some_and(|own| !own.record.is_direct())
            {
                return Ok(());
            }
            self.home_lost.notify_one();
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::node::NodeError::NoRelay(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds addresses at which to look for relays (the bootstrap nodes of a join).
    pub(crate) fn add_candidates(&self, addrs: &[SocketAddr]) {
        let mut candidates = lock(&self.candidates);
        for addr in addrs {
            if !candidates.contains(addr) && !super::is_synthetic(*addr) {
                candidates.push(*addr);
            }
        }
    }

    pub(crate) fn status(&self) -> RelayStatus {
        RelayStatus {
            private: self.is_private(),
            homes: lock(&self.homes).clone(),
            server: self.server.as_ref().map(RelayServer::status),
            records_rejected: self.records_rejected.load(Ordering::Relaxed),
            datagrams_dropped: self.paths.dropped(),
            sessions: lock(&self.sessions).len(),
            records: {
                self.drop_expired(unix_ms_now());
                lock(&self.directory)
                    .values()
                    .filter(|signed| !signed.record.is_direct())
                    .count()
            },
        }
    }

    /// Forgets the records that expired by `now_ms`: their relays are not dialled on their word.
    fn drop_expired(&self, now_ms: u64) {
        lock(&self.directory).retain(|_, signed| signed.record.expires_unix_ms > now_ms);
    }

    /// Registers a session with `peer`; it stays listed until the guard is dropped.
    fn session_started(
        self: &Arc<Self>,
        peer: NodeId,
    ) -> (Arc<Stop>, crate::task::OnDrop<impl FnOnce()>) {
        let ticket = self.next_session.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Stop::default());
        lock(&self.sessions).insert(peer, (ticket, stop.clone()));
        let relays = Arc::downgrade(self);
        let guard = crate::task::OnDrop::new(move || {
            if let Some(relays) = relays.upgrade() {
                let mut sessions = lock(&relays.sessions);
                if sessions.get(&peer).is_some_and(|(t, _)| *t == ticket) {
                    sessions.remove(&peer);
                }
            }
        });
        (stop, guard)
    }

    /// The link to `peer` is gone: if it ran inside a relay session, the session ends once
    /// the connection's last packets are through, unless a new connection took it over.
    pub(crate) fn on_link_lost(&self, peer: NodeId) {
        let Some(stop) = lock(&self.sessions)
            .get(&peer)
            .map(|(_, stop)| stop.clone())
        else {
            return;
        };
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_LINGER).await;
            if transport.rtt(peer).is_none() {
                debug!(%peer, "relayed connection closed; ending its session");
                stop.stop();
            }
        });
    }

    /// The path of the link to `peer` at `addr`: `Some(relay)` if it is relayed.
    pub(crate) fn relayed_via(&self, peer: NodeId, addr: SocketAddr) -> Option<Option<NodeId>> {
        if !is_synthetic(unmap(addr)) {
            return None;
        }
        Some(lock(&self.via).get(&peer).copied())
    }

    /// The address to tell Pastry for `peer` seen at `addr`: for a private peer, its synthetic
    /// address; for a relayed peer, the address
    /// it says it listens on (it may be public and dialled directly); otherwise `addr`.
    pub(crate) fn dialable(&self, peer: NodeId, addr: SocketAddr) -> SocketAddr {
        if !is_synthetic(unmap(addr)) {
            // A private node's direct links come from its NAT's mapping, which only the peer
            // it dialled can use: everyone else reaches it at its synthetic address (where a
            // link to it exists, that address uses the link).
            let now = unix_ms_now();
            let relayed = lock(&self.directory).get(&peer).is_some_and(|signed| {
                signed.record.expires_unix_ms > now && !signed.record.is_direct()
            });
            if relayed {
                return super::synthetic_addr(peer);
            }
            return addr;
        }
        lock(&self.claimed).get(&peer).copied().unwrap_or(addr)
    }

    /// Checks and keeps a relay record a peer sent. Returns the record's node and whether it
    /// is relayed now when the record changed that (a first relayed record, or a direct one
    /// replacing a relayed one): the routing core should measure the node again at the address
    /// that now reaches it, or it would keep the old one in its tables.
    pub(crate) fn on_record(
        &self,
        from: NodeId,
        bytes: &[u8],
    ) -> Result<Option<(NodeId, bool)>, RelayRecordError> {
        let signed = match SignedRelayRecord::decode_verified(bytes, unix_ms_now()) {
            Ok(signed) => signed,
            Err(error) => {
                self.records_rejected.fetch_add(1, Ordering::Relaxed);
                warn!(%from, %error, "refused a relay record");
                return Err(error);
            }
        };
        Ok(self.keep_record(signed))
    }

    /// Keeps `signed` if it is newer than the record held for its node (see
    /// [`Self::on_record`] for what it returns).
    fn keep_record(&self, signed: SignedRelayRecord) -> Option<(NodeId, bool)> {
        let node = signed.record.node;
        if node == self.me {
            return None;
        }
        self.drop_expired(unix_ms_now());
        let mut directory = lock(&self.directory);
        let old = directory.get(&node);
        let newer = old.map_or(true, |old| old.record.sequence < signed.record.sequence);
        if !newer || (directory.len() >= MAX_RECORDS && old.is_none()) {
            return None;
        }
        let was_relayed = old.is_some_and(|old| !old.record.is_direct());
        let relayed = !signed.record.is_direct();
        directory.insert(node, signed);
        drop(directory);
        if relayed {
            self.paths.learn(node);
            self.record_arrived.notify_waiters();
        }
        (was_relayed != relayed).then_some((node, relayed))
    }

    /// Tells a peer whose link just came up the relay records it may need to dial relayed
    /// nodes this node tells it about: this node's own, then others it holds.
    pub(crate) fn on_link_up(&self, peer: NodeId, addr: SocketAddr) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        // A private node short of relays looks for them among the peers the overlay links it
        // to: a peer that is no relay refuses the home stream and is not asked again for a
        // while; the list is bounded, so the overlay's size does not matter.
        if self.is_private()
            && lock(&self.homes).len() < HOMES
            && lock(&self.candidates).len() < MAX_CANDIDATES
        {
            self.add_candidates(&[addr]);
            self.home_lost.notify_one();
        }
        let mut records: Vec<Vec<u8>> = lock(&self.own).iter().map(|r| r.encode()).collect();
        let now = unix_ms_now();
        records.extend(
            lock(&self.directory)
                .values()
                .filter(|r| r.record.node != peer && r.record.expires_unix_ms > now)
                .take(RECORDS_PER_LINK)
                .map(SignedRelayRecord::encode),
        );
        if records.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for record in records {
                if transport
                    .send(peer, addr, &Body::RelayRecord { record })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Takes a relay stream a peer opened; gives back any other stream.
    pub(crate) fn on_stream(
        self: &Arc<Self>,
        from: NodeId,
        from_addr: SocketAddr,
        header: Body,
        mut stream: RawStream,
    ) -> Option<(Body, RawStream)> {
        match header {
            Body::RelayHome => match &self.server {
                Some(_) => {
                    let relays = self.clone();
                    tokio::spawn(async move {
                        if let Some(server) = &relays.server {
                            server.serve_home(from, from_addr, stream).await;
                        }
                    });
                }
                None => stream.reset(StreamErrorCode::RelayNotARelay),
            },
            Body::RelayConnect { target, advertised } => {
                match (&self.server, self.transport.get()) {
                    (Some(_), Some(transport)) => {
                        let relays = self.clone();
                        let transport = transport.clone();
                        tokio::spawn(async move {
                            if let Some(server) = &relays.server {
                                server
                                    .serve_connect(
                                        &transport, from, from_addr, target, advertised, stream,
                                    )
                                    .await;
                            }
                        });
                    }
                    _ => stream.reset(StreamErrorCode::RelayNotARelay),
                }
            }
            Body::RelayIncoming {
                from: peer,
                advertised,
            } => {
                if !lock(&self.homes).iter().any(|home| home.id == from) {
                    stream.reset(StreamErrorCode::RelayNotHomed);
                    return None;
                }
                lock(&self.claimed).insert(peer, advertised);
                let session = session::Incoming::install(&self.paths, peer, self.me < peer);
                if session.installed {
                    lock(&self.via).insert(peer, from);
                }
                let paths = self.paths.clone();
                // Only the installed session is this link's, for the node to stop.
                let (stop, registered) = if session.installed {
                    let (stop, registered) = self.session_started(peer);
                    (stop, Some(registered))
                } else {
                    (Arc::new(Stop::default()), None)
                };
                let idle = self.session_idle;
                let relays = Arc::downgrade(self);
                tokio::spawn(async move {
                    let end = session
                        .run(paths, peer, from_addr, &mut stream, &stop, idle)
                        .await;
                    drop(registered);
                    debug!(%peer, relay = %from, ?end, "incoming relay session ended");
                    if let Some(relays) = relays.upgrade() {
                        relays.forget_via(peer, from);
                        if end == SessionEnd::Broken {
                            // The peer, which dialled, moves the session to another relay.
                            relays.path_moved(peer);
                        }
                    }
                });
            }
            other => return Some((other, stream)),
        }
        None
    }

    /// The encoded record of `node` (this node's own, or one it holds), to answer a query.
    pub(crate) fn record_for(&self, node: NodeId) -> Option<Vec<u8>> {
        if node == self.me {
            return lock(&self.own).as_ref().map(SignedRelayRecord::encode);
        }
        let now = unix_ms_now();
        // A direct record is answered too: it withdraws the relayed one the asker may hold.
        lock(&self.directory)
            .get(&node)
            .filter(|signed| signed.record.expires_unix_ms > now)
            .map(SignedRelayRecord::encode)
    }

    /// Asks up to [`QUERY_FANOUT`] linked peers for `node`'s record (the peers that told this
    /// node about it are linked to it, and so hold its record); keeps the answers that verify.
    fn query_record(self: &Arc<Self>, node: NodeId) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        let relays = Arc::downgrade(self);
        {
            let links = transport.links();
            let asks = links
                .iter()
                .filter(|link| link.peer != node && !is_synthetic(unmap(link.addr)))
                .take(QUERY_FANOUT)
                .map(|link| {
                    let transport = transport.clone();
                    let relays = relays.clone();
                    let (peer, addr) = (link.peer, link.addr);
                    async move {
                        let query = Body::RelayRecordQuery { node };
                        if let Ok(Body::RelayRecord { record }) =
                            transport.request(peer, addr, &query).await
                        {
                            if let Some(relays) = relays.upgrade() {
                                let _ = relays.on_record(peer, &record);
                            }
                        }
                    }
                });
            for ask in asks {
                tokio::spawn(ask);
            }
        }
    }

    async fn record_of(self: &Arc<Self>, peer: NodeId) -> Option<SignedRelayRecord> {
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        let mut asked = false;
        loop {
            let arrived = self.record_arrived.notified();
            if let Some(record) = lock(&self.directory).get(&peer) {
                if record.record.expires_unix_ms > unix_ms_now() && !record.record.is_direct() {
                    return Some(record.clone());
                }
            }
            if !asked {
                asked = true;
                self.query_record(peer);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    /// Carries the datagrams quinn sends to a relayed peer through one of its relays, moving
    /// to another of its relays when the one in use breaks.
    async fn open_outbound(self: Arc<Self>, wanted: WantedSession) {
        let WantedSession { peer, mut outgoing } = wanted;
        let (stop, _registered) = self.session_started(peer);
        let mut failures = 0;
        let mut broken: Option<NodeId> = None;
        while failures < 3 {
            let Some(record) = self.record_of(peer).await else {
                debug!(%peer, "no relay record for a relayed peer");
                break;
            };
            let mut carried = false;
            let order = self.relay_order(&record.record.relays, broken);
            for (i, relay) in order.iter().enumerate() {
                let wait = if i + 1 < order.len() {
                    self.connect_wait(relay.id)
                } else {
                    session::SILENCE
                };
                let attempt = tokio::time::timeout(wait, self.connect_via(*relay, peer)).await;
                let Ok(Ok(mut stream)) = attempt else {
                    if i + 1 < order.len() {
                        // The path moves on to the next relay: what was sent to the peer
                        // meanwhile waited for this one.
                        self.path_moved(peer);
                    }
                    continue;
                };
                lock(&self.via).insert(peer, relay.id);
                if broken.is_some() || i > 0 {
                    // Up again through another relay: what the peer answers now comes back.
                    self.path_moved(peer);
                }
                let end = session::run(
                    self.paths.clone(),
                    peer,
                    relay.addr,
                    &mut outgoing,
                    &mut stream,
                    &stop,
                    self.session_idle,
                )
                .await;
                self.forget_via(peer, relay.id);
                match end {
                    SessionEnd::Closed => return,
                    SessionEnd::Stopped | SessionEnd::Idle => {
                        debug!(%peer, relay = %relay.id, ?end, "relayed session ended");
                        // A datagram quinn sends later asks for a new session.
                        self.paths.drop_outbound(peer);
                        return;
                    }
                    SessionEnd::Broken => {}
                }
                debug!(%peer, relay = %relay.id, "relayed session broke; trying another relay");
                self.path_moved(peer);
                lock(&self.broken).insert(relay.id, std::time::Instant::now());
                broken = Some(relay.id);
                carried = true;
                break;
            }
            if carried {
                failures = 0;
            } else {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        self.paths.drop_outbound(peer);
    }

    /// How long a connect through `relay` may take when another relay can follow it.
    fn connect_wait(&self, relay: NodeId) -> Duration {
        match self.transport.get().and_then(|t| t.rtt(relay)) {
            Some(rtt) => (rtt * 4 + CONNECT_MARGIN).min(CONNECT_WAIT),
            None => CONNECT_WAIT,
        }
    }

    /// A session with `peer` through `relay` ended: the link to `peer` no longer runs through
    /// it, unless another session (one the peer opened meanwhile) carries it now.
    fn forget_via(&self, peer: NodeId, relay: NodeId) {
        let mut via = lock(&self.via);
        if via.get(&peer) == Some(&relay) {
            via.remove(&peer);
        }
    }

    /// The order in which to try a record's relays: the one that just broke this session
    /// last, before it those that broke any session of this node lately (both are probably
    /// dead), the others in the record's order (its node's, lowest RTT first).
    fn relay_order(&self, relays: &[RelayEntry], just_broken: Option<NodeId>) -> Vec<RelayEntry> {
        let recently: Vec<NodeId> = {
            let mut broken = lock(&self.broken);
            broken.retain(|_, since| since.elapsed() < BROKEN_RELAY_PAUSE);
            broken.keys().copied().collect()
        };
        let mut order = relays.to_vec();
        order.sort_by_key(|relay| (Some(relay.id) == just_broken, recently.contains(&relay.id)));
        order
    }

    async fn connect_via(&self, relay: RelayEntry, target: NodeId) -> Result<RawStream, String> {
        let transport = self.transport.get().ok_or("not started")?;
        let advertised = lock(&self.advertised_addr).ok_or("not started")?;
        let header = Body::RelayConnect { target, advertised };
        let mut stream = transport
            .open_stream(relay.id, relay.addr, &header)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        stream
            .recv
            .read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if answer[0] != ACCEPTED {
            return Err(format!("relay answered {}", answer[0]));
        }
        Ok(stream)
    }

    /// Keeps a private node homed on [`HOMES`] relays, lowest RTT first.
    async fn keep_homes(relays: std::sync::Weak<Self>) {
        loop {
            let Some(this) = relays.upgrade() else {
                return;
            };
            if !this.is_private() {
                // Turned public: the loop ends, unless the node turned private again meanwhile
                // (then it found the loop still marked running and started none).
                this.homing.store(false, Ordering::SeqCst);
                if !this.is_private() || this.homing.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
            let wake = this.home_lost.clone();
            let lost = wake.notified();
            if lock(&this.homes).len() < HOMES {
                this.home_on_more().await;
            }
            // The record is signed again (a higher sequence number, a new expiry) and sent out
            // when half its lifetime is gone, so holders never see it expire while the node
            // lives.
            let ttl_ms = u64::try_from(this.record_ttl.as_millis()).unwrap_or(MAX_TTL_MS);
            let refresh = lock(&this.own)
                .as_ref()
                .is_some_and(|own| own.record.expires_unix_ms < unix_ms_now() + ttl_ms / 2);
            if refresh {
                this.publish().await;
            }
            let idle = if lock(&this.homes).len() < HOMES {
                Duration::from_millis(500)
            } else {
                // Often enough to refresh the record at half its lifetime.
                Duration::from_secs(30).min(this.record_ttl / 4)
            };
            drop(this);
            tokio::select! {
                () = lost => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    async fn home_on_more(self: &Arc<Self>) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        let candidates: Vec<SocketAddr> = {
            let mut lost = lock(&self.lost);
            lost.retain(|_, since| since.elapsed() < LOST_RELAY_PAUSE);
            let homes: Vec<SocketAddr> = lock(&self.homes).iter().map(|h| h.addr).collect();
            let mut candidates: Vec<SocketAddr> = lock(&self.candidates)
                .iter()
                .filter(|addr| !lost.contains_key(addr) && !homes.contains(addr))
                .copied()
                .collect();
            // Public peers the node is linked to may be relays too: a node that lost a relay
            // looks among them, not only among the configured and bootstrap addresses (those
            // may be the relay that died). Each that refuses rests in `lost` for the pause.
            for link in transport.linked_peers() {
                if candidates.len() >= MAX_CANDIDATES {
                    break;
                }
                let addr = link.addr;
                if link.peer != self.me
                    && !is_synthetic(unmap(addr))
                    && !lost.contains_key(&addr)
                    && !homes.contains(&addr)
                    && !candidates.contains(&addr)
                {
                    candidates.push(addr);
                }
            }
            candidates
        };
        // All candidates at once, each within a short bound: a dead one must not hold up the
        // others (a dial to it would wait for the whole connect timeout).
        let dials = candidates.into_iter().map(|addr| {
            let transport = transport.clone();
            tokio::spawn(async move {
                let dialled = tokio::time::timeout(CANDIDATE_DIAL, transport.connect(addr, None));
                match dialled.await {
                    Ok(Ok(id)) => Some((transport.rtt(id).unwrap_or(Duration::MAX), id, addr)),
                    _ => None,
                }
            })
        });
        let mut measured = Vec::new();
        for dial in dials.collect::<Vec<_>>() {
            if let Ok(Some((rtt, id, addr))) = dial.await {
                let homed = lock(&self.homes).iter().any(|home| home.id == id);
                if id != self.me && !homed {
                    measured.push((rtt, id, addr));
                }
            }
        }
        measured.sort();
        let mut changed = false;
        for (_, id, addr) in measured {
            if lock(&self.homes).len() >= HOMES {
                break;
            }
            let Ok(mut stream) = transport.open_stream(id, addr, &Body::RelayHome).await else {
                continue;
            };
            let mut answer = [0u8; 1];
            match stream.recv.read_exact(&mut answer).await {
                Ok(()) if answer[0] == ACCEPTED => {}
                _ => {
                    // Not a relay, or a full one: asked again after the pause.
                    lock(&self.lost).insert(addr, std::time::Instant::now());
                    continue;
                }
            }
            if !self.is_private() {
                // Turned public while this home was being set up.
                let _ = stream.send.finish();
                break;
            }
            info!(relay = %id, %addr, "homed on a relay");
            let entry = RelayEntry { id, addr };
            lock(&self.homes).push(entry);
            changed = true;
            let relays = Arc::downgrade(self);
            let stop = Arc::new(Notify::new());
            lock(&self.home_stops).insert(id, stop.clone());
            tokio::spawn(async move {
                let stopped = tokio::select! {
                    () = keep_alive(&mut stream) => false,
                    () = stop.notified() => true,
                };
                if stopped {
                    // Turned public: the relay forgets this node at once.
                    let _ = stream.send.finish();
                    return;
                }
                let Some(relays) = relays.upgrade() else {
                    return;
                };
                lock(&relays.home_stops).remove(&id);
                warn!(relay = %id, "lost a relay; homing elsewhere");
                lock(&relays.homes).retain(|home| home.id != id);
                lock(&relays.lost).insert(addr, std::time::Instant::now());
                // Its sessions die with the link, so their peers move to another relay.
                if let Some(transport) = relays.transport.get() {
                    transport.close(id).await;
                }
                relays.publish().await;
                relays.home_lost.notify_one();
            });
        }
        if changed {
            self.publish().await;
        }
    }

    /// Signs a record naming the current homes and sends it to every linked peer.
    async fn publish(&self) {
        let homes = lock(&self.homes).clone();
        if homes.is_empty() || !self.is_private() {
            return;
        }
        self.sign_and_send(homes);
    }

    /// Sends this node's own record to each of `peers` it has no link to (dialling it): the
    /// linked ones had it when it was signed.
    pub(crate) fn send_own_record(&self, peers: Vec<crate::pastry::PeerInfo>) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        let Some(bytes) = lock(&self.own).as_ref().map(SignedRelayRecord::encode) else {
            return;
        };
        let linked: Vec<NodeId> = transport.links().iter().map(|l| l.peer).collect();
        let unlinked = peers
            .into_iter()
            .filter(|p| !linked.contains(&p.id))
            .map(|p| (p.id, p.addr));
        send_record(&transport, &bytes, unlinked);
    }

    /// Signs a record naming `homes` (none: a direct record), keeps it as this node's own and
    /// sends it to every linked peer.
    fn sign_and_send(&self, homes: Vec<RelayEntry>) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let ttl_ms = u64::try_from(self.record_ttl.as_millis()).unwrap_or(MAX_TTL_MS);
        let record = RelayRecord::new(&self.identity, homes, sequence, unix_ms_now() + ttl_ms)
            .sign(&self.identity);
        let bytes = record.encode();
        *lock(&self.own) = Some(record);
        let linked = transport.links().into_iter().map(|l| (l.peer, l.addr));
        send_record(&transport, &bytes, linked);
    }
}

/// Sends the encoded record `bytes` to each of `peers`, each on its own task (a dial where
/// there is no link); a send that fails is not retried: the record also travels with links
/// that come up later.
fn send_record(
    transport: &Transport,
    bytes: &[u8],
    peers: impl IntoIterator<Item = (NodeId, SocketAddr)>,
) {
    for (peer, addr) in peers {
        let body = Body::RelayRecord {
            record: bytes.to_vec(),
        };
        let transport = transport.clone();
        tokio::spawn(async move {
            let _ = transport.send(peer, addr, &body).await;
        });
    }
}
