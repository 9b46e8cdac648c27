//! [`Transport`]: the node's one quinn endpoint and the public operations on it.
//!
//! The work behind them is split by concern: [`dial`] (outgoing links and opening streams),
//! [`accept`] (incoming links and admission), [`links`] (the pool's life cycle: registering,
//! duplicates, idle links) and [`serve`] (reading a link's incoming streams).

mod accept;
mod dial;
mod dial_back;
mod links;
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use quinn::VarInt;
use tokio::sync::mpsc;
use tracing::{info, Instrument};

pub use self::dial_back::DialBackError;
use self::serve::UniCredit;
use super::budget::Budget;
use super::dials::Dials;
use super::pool::Pool;
use super::stream::{write_header, LinkGuard, RawStream};
use super::tls::TlsContext;
use super::{
    BindError, CloseCode, ConfigError, ConnectError, Inbox, Limits, LinkInfo, LinkLostReason,
    LinkedPeer, ReadBudgetStatus, RequestError, SendError, StreamError, TransportConfig,
    TransportEvent,
};
use crate::id::NodeId;
use crate::task::{step_aside, OnDrop};
use crate::wire::{self, Body, WireError};

/// A node's authenticated QUIC transport: one UDP socket, both roles, a pool of links.
///
/// Cheap to clone; all clones share the endpoint. The endpoint closes when the last clone is
/// dropped or on [`Transport::shutdown`].
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    _close_on_drop: Arc<CloseOnDrop>,
}

#[derive(Debug)]
struct CloseOnDrop(quinn::Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0
            .close(CloseCode::Shutdown.to_varint(), b"transport dropped");
    }
}

/// See [`Transport::set_relayed_dial_hook`].
pub(crate) struct RelayedDialHook(pub(crate) Box<dyn Fn(NodeId) + Send + Sync>);

impl std::fmt::Debug for RelayedDialHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayedDialHook")
    }
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    local_id: NodeId,
    local_addr: SocketAddr,
    tls: TlsContext,
    limits: Limits,
    quic: Arc<quinn::TransportConfig>,
    pool: Mutex<Pool>,
    /// Incoming handshakes in progress.
    handshakes: AtomicUsize,
    /// Dial-back handshakes this node answered ([`Transport::dial_backs_answered`]).
    dial_backs_answered: std::sync::atomic::AtomicU64,
    /// What all links' unfinished incoming frames hold.
    read_budget: Arc<Budget>,
    dial_locks: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// One dial per address at a time (canonical addresses).
    addr_locks: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    /// Addresses (canonical) at which a second link for a peer was refused while its pooled
    /// link answered, with that link's id: a send to the peer at such an address uses the
    /// live link instead of dialling again, as long as that link is pooled.
    aliases: Mutex<HashMap<(NodeId, SocketAddr), usize>>,
    /// TLS exporter values of the latest incoming links that presented this node's own key:
    /// a dial that reaches its own process finds its link here (see `dial::is_own_process`).
    own_key_links: Mutex<std::collections::VecDeque<[u8; 32]>>,
    /// The cap on dials in flight and the failed addresses' back-offs.
    dials: Mutex<Dials>,
    /// One permit per dial in flight ([`Limits::max_dials_in_flight`]).
    dial_slots: tokio::sync::Semaphore,
    events: mpsc::Sender<TransportEvent>,
    /// Where one-way messages go instead of `events`, once set ([`Transport::set_inbox`]).
    inbox: OnceLock<Weak<dyn Inbox>>,
    /// Told of every dial of a known peer at a relayed (synthetic) address, before the
    /// handshake's first datagram is sent ([`Transport::set_relayed_dial_hook`]).
    relayed_dial_hook: OnceLock<RelayedDialHook>,
    closing: AtomicBool,
    span: tracing::Span,
}

/// Builds quinn's transport parameters from [`Limits`] (every limit set explicitly; see the
/// field docs of [`Limits`] for why each value).
pub(crate) fn quic_transport_config(
    limits: &Limits,
) -> Result<quinn::TransportConfig, ConfigError> {
    limits.validate()?;
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_uni_streams(VarInt::from_u32(limits.max_concurrent_uni_streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_concurrent_bi_streams))
        .stream_receive_window(VarInt::from_u32(limits.stream_receive_window))
        .receive_window(VarInt::from_u32(limits.connection_receive_window))
        .send_window(limits.send_window)
        .keep_alive_interval(Some(limits.keep_alive))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.max_idle_timeout)
                .map_err(ConfigError::MaxIdleTimeout)?,
        ))
        // Wendy sends no unreliable datagrams; refuse them rather than buffer them.
        .datagram_receive_buffer_size(None);
    Ok(config)
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // The pool's invariants hold between statements (no panics inside critical sections), so a
    // poisoned lock still guards consistent data.
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Transport {
    /// Binds the node's UDP socket and starts accepting links. Call it inside a tokio runtime
    /// (multi-threaded for throughput): the transport's tasks run on it.
    ///
    /// Returns the transport and the receiver of its events (bounded by
    /// [`Limits::event_capacity`]; see the module docs on backpressure).
    pub async fn bind(
        config: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), BindError> {
        let TransportConfig {
            listen,
            identity,
            certificate_chain,
            admission,
            limits,
            socket,
        } = config;
        let local_id = identity.node_id();
        let chain = certificate_chain
            .iter()
            .map(|certificate| certificate.der().clone())
            .collect();
        let tls = TlsContext::new(identity.private_key_der(), chain, admission)
            .map_err(ConfigError::Tls)?;
        let mut quic = quic_transport_config(&limits)?;
        // Links start with the small credit; `UniCredit` widens it on links that carry a flow.
        quic.max_concurrent_uni_streams(VarInt::from_u32(UniCredit::new(&limits).initial));
        let quic = Arc::new(quic);
        let (server_crypto, _) = tls.server_config().map_err(ConfigError::Tls)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config
            .transport_config(quic.clone())
            .max_incoming(limits.max_incoming)
            // Bytes buffered per not-yet-accepted connection, and for all of them: enough for a
            // client's first flight (0-RTT is refused anyway).
            .incoming_buffer_size(64 << 10)
            .incoming_buffer_size_total(16 << 20);
        // With a ready-made socket `listen` is ignored: errors name the socket's own address.
        let bound = match &socket {
            None => listen,
            Some(socket) => socket.local_addr().unwrap_or(listen),
        };
        let endpoint = match socket {
            None => quinn::Endpoint::server(server_config, listen),
            Some(socket) => quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            ),
        }
        .map_err(|source| BindError::Socket {
            addr: bound,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| BindError::Socket {
            addr: bound,
            source,
        })?;
        let (events, receiver) = mpsc::channel(limits.event_capacity.max(1));
        let span = tracing::info_span!("transport", node = %local_id);
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            local_id,
            local_addr,
            tls,
            pool: Mutex::new(Pool::new(
                local_id,
                limits.max_connections,
                limits.max_unprotected_links,
                limits.connect_timeout,
            )),
            handshakes: AtomicUsize::new(0),
            dial_backs_answered: std::sync::atomic::AtomicU64::new(0),
            read_budget: Arc::new(Budget::new(limits.node_read_budget)),
            quic,
            dial_locks: Mutex::new(HashMap::new()),
            addr_locks: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            own_key_links: Mutex::new(std::collections::VecDeque::new()),
            dials: Mutex::new(Dials::new(
                limits.max_dials_in_flight,
                limits.dial_backoff,
                limits.max_dial_backoff,
            )),
            dial_slots: tokio::sync::Semaphore::new(limits.max_dials_in_flight),
            limits,
            events,
            inbox: OnceLock::new(),
            relayed_dial_hook: OnceLock::new(),
            closing: AtomicBool::new(false),
            span: span.clone(),
        });
        info!(parent: &span, %local_addr, "transport listening");
        tokio::spawn(inner.clone().accept_loop().instrument(span.clone()));
        tokio::spawn(Inner::idle_reaper(Arc::downgrade(&inner)).instrument(span));
        Ok((
            Self {
                inner,
                _close_on_drop: Arc::new(CloseOnDrop(endpoint)),
            },
            receiver,
        ))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.inner.local_id
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Hands every one-way message (and rejected one-way stream) read from now on to `inbox`,
    /// on the task that read it, instead of sending it on the event channel (which keeps link
    /// events, requests and raw streams, and takes everything again once `inbox` is dropped).
    /// Set once: a second call is ignored.
    ///
    /// Without an inbox, the channel bounds what a slow consumer can make the transport hold.
    /// An inbox does not wait, so what bounds memory is QUIC's: each link's stream credit
    /// ([`Limits::max_concurrent_uni_streams`]) times [`Limits::max_message_size`], for the
    /// frames being read.
    pub(crate) fn set_inbox(&self, inbox: Weak<dyn Inbox>) {
        let _ = self.inner.inbox.set(inbox);
    }

    /// Calls `hook` with the peer of every dial to a synthetic (relayed) address for an
    /// expected peer, before its first datagram: the socket only sees the address, and
    /// needs the peer's id to find a relay session for it.
    pub(crate) fn set_relayed_dial_hook(&self, hook: RelayedDialHook) {
        let _ = self.inner.relayed_dial_hook.set(hook);
    }

    /// Ensures a link to `addr` and returns the peer's verified node id.
    ///
    /// With `expected`, the handshake fails with
    /// [`AuthError::NodeIdMismatch`](super::AuthError::NodeIdMismatch) unless the peer's key
    /// hashes to it. Without, the id is learned from the handshake (bootstrap by address).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<NodeId, ConnectError> {
        let existing = match expected {
            Some(peer) => self.inner.pooled_at(peer, addr).map(|link| link.peer),
            None => lock(&self.inner.pool).by_addr(addr),
        };
        if let Some(peer) = existing {
            return Ok(peer);
        }
        Ok(self.inner.link(expected, addr).await?.peer)
    }

    /// Sends `body` one-way to `peer` on a fresh uni stream, dialling `addr` if there is no link.
    ///
    /// Returns once the frame is handed to QUIC (delivery is reliable while the link lives).
    pub async fn send(&self, peer: NodeId, addr: SocketAddr, body: &Body) -> Result<(), SendError> {
        self.write_finished(peer, addr, body).await.map(drop)
    }

    /// Like [`Self::send`], but returns only once the peer has acknowledged every byte of the
    /// frame (not necessarily processed it). For the last messages before [`Self::shutdown`],
    /// which discards what QUIC has not delivered yet.
    pub async fn send_acknowledged(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> Result<(), SendError> {
        let (_guard, stream) = self.write_finished(peer, addr, body).await?;
        match stream.stopped().await.map_err(StreamError::from)? {
            None => Ok(()),
            Some(code) => Err(StreamError::refused(code).into()),
        }
    }

    /// Writes `body` on a fresh uni stream to `peer` (dialling `addr` if there is no link) and
    /// finishes it; the stream comes back with the guard that keeps the pool from evicting its link.
    async fn write_finished(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> Result<(LinkGuard, quinn::SendStream), SendError> {
        // A large routed payload goes out as a chunk of its own (see `wire::shared`).
        let mut frame = wire::encode_chunks(body, self.inner.limits.max_message_size)
            .map_err(SendError::Encode)?;
        let (guard, mut stream) = self
            .inner
            .open(peer, addr, |conn| async move { conn.open_uni().await })
            .await?;
        stream
            .write_all_chunks(&mut frame)
            .await
            .map_err(StreamError::from)?;
        stream.finish().map_err(StreamError::from)?;
        Ok((guard, stream))
    }

    /// Sends a request to `peer` on a bi stream and waits for its answer (at most
    /// [`Limits::request_timeout`]).
    pub async fn request(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> Result<Body, RequestError> {
        let max = self.inner.limits.max_message_size;
        let frame = wire::encode_bounded(body, max).map_err(RequestError::Encode)?;
        let exchange = async {
            let (_guard, (mut send, mut recv)) = self
                .inner
                .open(peer, addr, |conn| async move { conn.open_bi().await })
                .await?;
            write_header(&mut send, frame).await?;
            send.finish().map_err(StreamError::from)?;
            let answer = recv.read_to_end(max).await.map_err(|error| match error {
                quinn::ReadToEndError::TooLong => {
                    RequestError::Decode(WireError::Oversized { len: max + 1, max })
                }
                quinn::ReadToEndError::Read(error) => StreamError::from(error).into(),
            })?;
            wire::decode(&answer, max).map_err(RequestError::Decode)
        };
        tokio::time::timeout(self.inner.limits.request_timeout, exchange)
            .await
            .map_err(|_| RequestError::Timeout)?
    }

    /// Opens a raw bi stream to `peer`: sends `header` (normally a [`Body::Tunnel`]) and hands
    /// over the stream for the application's bytes. The peer gets [`TransportEvent::Stream`].
    pub async fn open_stream(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        header: &Body,
    ) -> Result<RawStream, SendError> {
        let frame = wire::encode_bounded(header, self.inner.limits.max_message_size)
            .map_err(SendError::Encode)?;
        let (guard, (mut send, recv)) = self
            .inner
            .open(peer, addr, |conn| async move { conn.open_bi().await })
            .await?;
        write_header(&mut send, frame).await?;
        Ok(RawStream::new(send, recv, guard))
    }

    /// Dials `peer` at `addr` from a fresh UDP socket, outside the pool, and returns once the
    /// handshake completes: proof that a host `peer` never sent to can dial it there. The peer
    /// closes such a handshake at once ([`tls::DIAL_BACK_ALPN`](super::tls::DIAL_BACK_ALPN));
    /// it never becomes a link. Fails after [`Limits::dial_back_timeout`] if nobody answers.
    pub async fn dial_back(&self, peer: NodeId, addr: SocketAddr) -> Result<(), DialBackError> {
        self.inner.dial_back(peer, addr).await
    }

    /// How many dial-back handshakes other nodes completed with this node: the node's own
    /// evidence that it can be dialled, so a peer's claim that a dial-back succeeded is
    /// believed only if this count moved meanwhile.
    pub fn dial_backs_answered(&self) -> u64 {
        self.inner.dial_backs_answered.load(Ordering::Relaxed)
    }

    /// The link's smoothed RTT, if there is a link to `peer`.
    pub fn rtt(&self, peer: NodeId) -> Option<Duration> {
        lock(&self.inner.pool).get(peer).map(|link| link.conn.rtt())
    }

    /// QUIC connections open on the endpoint, counting those still handshaking or closing (a
    /// diagnostic: [`Self::links`] shows only established links in the pool).
    pub fn connection_count(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// What unfinished incoming frames hold now, node-wide and on the link that holds most
    /// (see [`Limits::link_read_budget`] and [`Limits::node_read_budget`]).
    pub fn read_budget(&self) -> ReadBudgetStatus {
        let largest_link_held = lock(&self.inner.pool)
            .links()
            .map(|link| link.budget.held())
            .max()
            .unwrap_or(0);
        ReadBudgetStatus {
            node_held: self.inner.read_budget.held(),
            node_max: self.inner.read_budget.max(),
            largest_link_held,
        }
    }

    /// Tells the pool which peers the node's routing state holds (its leaf set and routing
    /// table): their links are evicted last and never count against
    /// [`Limits::max_unprotected_links`]. Replaces the previous set.
    pub fn protect(&self, peers: impl IntoIterator<Item = NodeId>) {
        let peers = peers.into_iter().collect();
        lock(&self.inner.pool).protect(peers);
    }

    /// Forgets the addresses whose dials failed (their back-offs end now; see
    /// `transport/dials.rs`), for a node whose own network just changed: a dial that a
    /// firewall in front of this node stopped says nothing of the address once it is gone.
    pub(crate) fn forget_failed_dials(&self) {
        self.inner
            .dials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_failures();
    }

    /// Dials in flight now (at most [`Limits::max_dials_in_flight`]).
    pub fn dials_in_flight(&self) -> usize {
        self.inner
            .dials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight()
    }

    /// The peer and address of every link, sorted by peer. Unlike [`Self::links`] it reads no
    /// connection's statistics (each a lock on the connection and a copy of its counters), so
    /// it stays cheap for callers that only pick peers, every tick and on every node.
    pub fn linked_peers(&self) -> Vec<LinkedPeer> {
        let pool = lock(&self.inner.pool);
        let mut peers: Vec<LinkedPeer> = pool
            .links()
            .map(|link| LinkedPeer {
                peer: link.peer,
                addr: link.addr(),
            })
            .collect();
        peers.sort_by_key(|link| link.peer);
        peers
    }

    /// The address of the link to `peer`, if there is one (reads no statistics, see
    /// [`Self::linked_peers`]).
    pub fn link_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        lock(&self.inner.pool).get(peer).map(|link| link.addr())
    }

    /// A snapshot of every link.
    pub fn links(&self) -> Vec<LinkInfo> {
        let pool = lock(&self.inner.pool);
        let mut links: Vec<LinkInfo> = pool
            .links()
            .map(|link| {
                let stats = link.conn.stats();
                LinkInfo {
                    peer: link.peer,
                    addr: link.addr(),
                    inbound: link.inbound,
                    rtt: link.conn.rtt(),
                    idle: link.idle_for(),
                    in_flight: link.in_flight.load(Ordering::Relaxed),
                    bytes_sent: stats.udp_tx.bytes,
                    bytes_received: stats.udp_rx.bytes,
                    packets_sent: stats.udp_tx.datagrams,
                    packets_received: stats.udp_rx.datagrams,
                    packets_lost: stats.path.lost_packets,
                }
            })
            .collect();
        links.sort_by_key(|link| link.peer);
        links
    }

    /// Closes the link to `peer`, if any (emits [`TransportEvent::LinkLost`] with
    /// [`LinkLostReason::ClosedLocally`]).
    pub async fn close(&self, peer: NodeId) {
        let removed = lock(&self.inner.pool).remove(peer);
        if let Some(link) = removed {
            link.conn.close(CloseCode::Closed.to_varint(), b"closed");
            self.inner
                .emit(TransportEvent::LinkLost {
                    peer,
                    reason: LinkLostReason::ClosedLocally(CloseCode::Closed),
                })
                .await;
        }
    }

    /// Closes every link and the endpoint, and waits (briefly) for the peers to be told.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let links = lock(&self.inner.pool).drain();
        for link in links {
            link.conn
                .close(CloseCode::Shutdown.to_varint(), b"shutdown");
        }
        self.inner
            .endpoint
            .close(CloseCode::Shutdown.to_varint(), b"shutdown");
        // The close frames go out within a few RTTs; do not hang on an unresponsive network.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        info!(parent: &self.inner.span, "transport shut down");
    }
}

impl Inner {
    /// Sends a link event on the channel. Never to the inbox: link events are also raised
    /// inside [`Transport::send`] and dials, which the inbox's owner may be running while it
    /// holds its own state.
    async fn emit(&self, event: TransportEvent) {
        // A dropped receiver means nobody listens any more; the event has no one to go to.
        let _ = self.events.send(event).await;
    }

    /// Hands `event` to the inbox and finishes its work after stepping aside; gives the event
    /// back if there is no inbox.
    async fn to_inbox(&self, event: TransportEvent) -> Option<TransportEvent> {
        let Some(inbox) = self.inbox.get().and_then(Weak::upgrade) else {
            return Some(event);
        };
        if inbox.event(event) {
            // Settled even if this task is cancelled while it steps aside.
            let _settle = OnDrop::new(|| inbox.settle());
            step_aside().await;
        }
        None
    }
}
