//! [`Transport`]: the node's one quinn endpoint, its accept loop, dials, per-link stream loops
//! and the public operations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use quinn::{ConnectionError, RecvStream, SendStream, TransportErrorCode, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::pool::{Insert, Link, Pool, Removed};
use super::stream::{
    poll_read_available, read_error, read_header, read_rest_of_frame, write_error, write_header,
    LinkGuard, RawStream, ReadFrameError, Responder,
};
use super::tls::{TlsContext, ALPN};
use super::verifier::Verdict;
use super::{
    AuthError, CloseCode, Inbox, Limits, LinkInfo, LinkLostReason, StreamErrorCode,
    TransportConfig, TransportError, TransportEvent,
};
use crate::id::NodeId;
use crate::task::{step_aside, OnDrop};
use crate::wire::{self, Body, WireError};

/// The server name put in every ClientHello; Wendy's verifiers ignore names (peers are
/// identified by key).
const SERVER_NAME: &str = "wendy";

/// TLS alert `no_application_protocol` (RFC 8446), as quinn reports it (crypto error 0x100+).
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;
/// TLS alert `certificate_required` (RFC 8446).
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

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

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    local_id: NodeId,
    local_addr: SocketAddr,
    tls: TlsContext,
    limits: Limits,
    quic: Arc<quinn::TransportConfig>,
    pool: Mutex<Pool>,
    dial_locks: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    events: mpsc::Sender<TransportEvent>,
    /// Where one-way messages go instead of `events`, once set ([`Transport::set_inbox`]).
    inbox: OnceLock<Weak<dyn Inbox>>,
    closing: AtomicBool,
    span: tracing::Span,
}

/// Builds quinn's transport parameters from [`Limits`] (every limit set explicitly; see the
/// field docs of [`Limits`] for why each value).
pub(crate) fn quic_transport_config(
    limits: &Limits,
) -> Result<quinn::TransportConfig, TransportError> {
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
                .map_err(|error| TransportError::Tls(format!("max_idle_timeout: {error}")))?,
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
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), TransportError> {
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
            .map_err(|error| TransportError::Tls(error.to_string()))?;
        let mut quic = quic_transport_config(&limits)?;
        // Links start with the small credit; `UniCredit` widens it on links that carry a flow.
        quic.max_concurrent_uni_streams(VarInt::from_u32(UniCredit::new(&limits).initial));
        let quic = Arc::new(quic);
        let (server_crypto, _) = tls
            .server_config()
            .map_err(|error| TransportError::Tls(error.to_string()))?;
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
        .map_err(|error| TransportError::Bind {
            addr: bound,
            message: error.to_string(),
        })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|error| TransportError::Bind {
                addr: bound,
                message: error.to_string(),
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
                limits.connect_timeout,
            )),
            limits,
            quic,
            dial_locks: Mutex::new(HashMap::new()),
            events,
            inbox: OnceLock::new(),
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

    /// Ensures a link to `addr` and returns the peer's verified node id.
    ///
    /// With `expected`, the handshake fails with [`AuthError::NodeIdMismatch`] unless the peer's
    /// key hashes to it. Without, the id is learned from the handshake (bootstrap by address).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<NodeId, TransportError> {
        let existing = {
            let pool = lock(&self.inner.pool);
            match expected {
                Some(peer) => pool.get(peer).map(|link| link.peer),
                None => pool.by_addr(addr),
            }
        };
        if let Some(peer) = existing {
            return Ok(peer);
        }
        Ok(self.inner.link(expected, addr).await?.peer)
    }

    /// Sends `body` one-way to `peer` on a fresh uni stream, dialling `addr` if there is no link.
    ///
    /// Returns once the frame is handed to QUIC (delivery is reliable while the link lives).
    pub async fn send(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> Result<(), TransportError> {
        let frame = wire::encode_bounded(body, self.inner.limits.max_message_size)?;
        let (_guard, mut stream) = self
            .inner
            .open(peer, addr, |conn| async move { conn.open_uni().await })
            .await?;
        stream.write_chunk(frame).await.map_err(write_error)?;
        stream
            .finish()
            .map_err(|error| TransportError::Stream(error.to_string()))?;
        Ok(())
    }

    /// Sends a request to `peer` on a bi stream and waits for its answer (at most
    /// [`Limits::request_timeout`]).
    pub async fn request(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        body: &Body,
    ) -> Result<Body, TransportError> {
        let max = self.inner.limits.max_message_size;
        let frame = wire::encode_bounded(body, max)?;
        let exchange = async {
            let (_guard, (mut send, mut recv)) = self
                .inner
                .open(peer, addr, |conn| async move { conn.open_bi().await })
                .await?;
            write_header(&mut send, frame).await?;
            send.finish()
                .map_err(|error| TransportError::Stream(error.to_string()))?;
            let answer = recv.read_to_end(max).await.map_err(|error| match error {
                quinn::ReadToEndError::TooLong => {
                    TransportError::Wire(WireError::Oversized { len: max + 1, max })
                }
                other => read_error(other),
            })?;
            Ok(wire::decode(&answer, max)?)
        };
        tokio::time::timeout(self.inner.limits.request_timeout, exchange)
            .await
            .map_err(|_| TransportError::RequestTimeout)?
    }

    /// Opens a raw bi stream to `peer`: sends `header` (normally a [`Body::Tunnel`]) and hands
    /// over the stream for the application's bytes. The peer gets [`TransportEvent::Stream`].
    pub async fn open_stream(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        header: &Body,
    ) -> Result<RawStream, TransportError> {
        let frame = wire::encode_bounded(header, self.inner.limits.max_message_size)?;
        let (guard, (mut send, recv)) = self
            .inner
            .open(peer, addr, |conn| async move { conn.open_bi().await })
            .await?;
        write_header(&mut send, frame).await?;
        Ok(RawStream::new(send, recv, guard))
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

    fn client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<(quinn::ClientConfig, Verdict), TransportError> {
        let (crypto, verdict) = self
            .tls
            .client_config(expected)
            .map_err(|error| TransportError::Tls(error.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.quic.clone());
        Ok((config, verdict))
    }

    /// Opens a stream to `peer` with `open` (dialling `addr` if there is no link), within
    /// [`Limits::open_stream_timeout`]. A pooled link that turns out to be closed (its loss not
    /// processed yet) is dropped and the peer dialled afresh, once. The guard keeps the link
    /// busy while the stream is in use.
    async fn open<T, F, Fut>(
        self: &Arc<Self>,
        peer: NodeId,
        addr: SocketAddr,
        open: F,
    ) -> Result<(LinkGuard, T), TransportError>
    where
        F: Fn(quinn::Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectionError>>,
    {
        let mut retried = false;
        loop {
            let link = self.link(Some(peer), addr).await?;
            let guard = LinkGuard::new(&link.in_flight);
            link.touch();
            match tokio::time::timeout(self.limits.open_stream_timeout, open(link.conn.clone()))
                .await
            {
                Err(_) => return Err(TransportError::OpenStreamTimeout),
                Ok(Ok(stream)) => return Ok((guard, stream)),
                Ok(Err(error)) if !retried => {
                    debug!(%peer, %error, "pooled link was closed; dialling again");
                    drop(guard);
                    self.forget(&link, &error).await;
                    retried = true;
                }
                Ok(Err(error)) => return Err(TransportError::Connection(error)),
            }
        }
    }

    /// Removes a link found closed from the pool (reporting its loss) before its stream loop
    /// has noticed.
    async fn forget(&self, link: &Link, error: &ConnectionError) {
        let removed = lock(&self.pool).closed(link.peer, link.id(), false);
        if removed == Removed::Lost {
            let reason = lost_reason(error);
            info!(peer = %link.peer, ?reason, "link lost");
            self.emit(TransportEvent::LinkLost {
                peer: link.peer,
                reason,
            })
            .await;
        }
    }

    /// The link to `peer` (or to whoever is at `addr`), dialling if needed.
    async fn link(
        self: &Arc<Self>,
        peer: Option<NodeId>,
        addr: SocketAddr,
    ) -> Result<Arc<Link>, TransportError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(TransportError::Shutdown);
        }
        if let Some(peer) = peer {
            if let Some(link) = lock(&self.pool).get(peer) {
                return Ok(link);
            }
            // One dial per peer at a time: concurrent senders wait for the first dial.
            let dial_lock = {
                let mut locks = self
                    .dial_locks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                locks.entry(peer).or_default().clone()
            };
            let _dialling = dial_lock.lock().await;
            if let Some(link) = lock(&self.pool).get(peer) {
                return Ok(link);
            }
            let result = self.dial(addr, Some(peer)).await;
            self.dial_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&peer);
            return result;
        }
        self.dial(addr, None).await
    }

    async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Arc<Link>, TransportError> {
        if addr == self.local_addr {
            return Err(TransportError::SelfConnection(addr));
        }
        if !lock(&self.pool).has_room() {
            return Err(TransportError::TooManyConnections {
                max: self.limits.max_connections,
            });
        }
        let (config, verdict) = self.client_config(expected)?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|error| TransportError::Connect {
                addr,
                message: error.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(TransportError::ConnectTimeout(addr)),
            Ok(Err(error)) => {
                let error = handshake_error(error, &verdict, addr);
                debug!(%addr, %error, "dial failed");
                return Err(error);
            }
            Ok(Ok(conn)) => conn,
        };
        let Some(peer) = verdict.peer() else {
            // Unreachable in practice: a finished handshake ran our verifier.
            conn.close(CloseCode::Closed.to_varint(), b"unverified");
            return Err(TransportError::Auth(AuthError::NoCertificate));
        };
        if peer == self.local_id {
            conn.close(CloseCode::SelfConnection.to_varint(), b"self");
            return Err(TransportError::SelfConnection(addr));
        }
        match tokio::time::timeout_at(deadline, confirmed(&conn)).await {
            Err(_) => {
                conn.close(CloseCode::Closed.to_varint(), b"not confirmed");
                return Err(TransportError::ConnectTimeout(addr));
            }
            Ok(Err(error)) => {
                let error = handshake_error(error, &verdict, addr);
                debug!(%addr, %error, "peer refused us");
                return Err(error);
            }
            Ok(Ok(())) => {}
        }
        self.register(conn, peer, false).await
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let inner = self.clone();
            tokio::spawn(async move { inner.accept(incoming).await }.instrument(self.span.clone()));
        }
        debug!("accept loop ended");
    }

    async fn accept(self: Arc<Self>, incoming: quinn::Incoming) {
        let addr = incoming.remote_address();
        if self.closing.load(Ordering::Relaxed) {
            incoming.refuse();
            return;
        }
        if !lock(&self.pool).has_room() {
            incoming.refuse();
            warn!(%addr, "refused incoming link: pool full of busy links");
            self.emit(TransportEvent::HandshakeFailed {
                addr,
                error: TransportError::TooManyConnections {
                    max: self.limits.max_connections,
                },
            })
            .await;
            return;
        }
        let (crypto, verdict) = match self.tls.server_config() {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%addr, %error, "cannot build server config");
                incoming.refuse();
                return;
            }
        };
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(self.quic.clone());
        let result = match incoming.accept_with(Arc::new(config)) {
            Err(error) => Err(handshake_error(error, &verdict, addr)),
            Ok(connecting) => {
                match tokio::time::timeout(self.limits.connect_timeout, connecting).await {
                    Err(_) => Err(TransportError::ConnectTimeout(addr)),
                    Ok(Err(error)) => Err(handshake_error(error, &verdict, addr)),
                    Ok(Ok(conn)) => self.admit(conn, &verdict),
                }
            }
        };
        match result {
            Ok((conn, peer)) => {
                if let Err(error) = self.register(conn, peer, true).await {
                    debug!(%addr, %error, "incoming link not registered");
                }
            }
            Err(error) => {
                warn!(%addr, %error, "refused incoming link");
                self.emit(TransportEvent::HandshakeFailed { addr, error })
                    .await;
            }
        }
    }

    /// Post-handshake checks of an incoming link: ALPN, verified id, not ourselves.
    fn admit(
        &self,
        conn: quinn::Connection,
        verdict: &Verdict,
    ) -> Result<(quinn::Connection, NodeId), TransportError> {
        let protocol = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        if protocol.as_deref() != Some(ALPN) {
            conn.close(CloseCode::WrongAlpn.to_varint(), b"alpn wendy/1 required");
            return Err(TransportError::Auth(AuthError::WrongAlpn));
        }
        let Some(peer) = verdict.peer() else {
            conn.close(CloseCode::Closed.to_varint(), b"unverified");
            return Err(TransportError::Auth(AuthError::NoCertificate));
        };
        if peer == self.local_id {
            conn.close(CloseCode::SelfConnection.to_varint(), b"self");
            return Err(TransportError::SelfConnection(conn.remote_address()));
        }
        Ok((conn, peer))
    }

    /// Puts a verified link in the pool (applying the simultaneous-dial rule and the cap),
    /// announces it and starts its stream loop. Returns the link to use for `peer`.
    async fn register(
        self: &Arc<Self>,
        conn: quinn::Connection,
        peer: NodeId,
        inbound: bool,
    ) -> Result<Arc<Link>, TransportError> {
        let epoch = lock(&self.pool).epoch();
        let link = Arc::new(Link::new(conn, peer, inbound, epoch));
        let outcome = lock(&self.pool).insert(link.clone());
        match outcome {
            Insert::Full => {
                link.conn.close(
                    CloseCode::TooManyConnections.to_varint(),
                    b"too many connections",
                );
                Err(TransportError::TooManyConnections {
                    max: self.limits.max_connections,
                })
            }
            Insert::Duplicate(survivor) => {
                debug!(%peer, inbound, "duplicate link loses the simultaneous-dial rule");
                // Its streams still flow until it drains; the peer learns which one survives
                // from the close code (and applies the same rule itself).
                tokio::spawn(
                    self.clone()
                        .stream_loop(link.clone())
                        .instrument(self.span.clone()),
                );
                tokio::spawn(drain_and_close(link));
                Ok(survivor)
            }
            Insert::Added {
                replaced,
                evicted,
                announce,
            } => {
                if let Some(loser) = replaced {
                    debug!(%peer, "replaced a duplicate link");
                    tokio::spawn(drain_and_close(loser));
                }
                if let Some(evicted) = evicted {
                    info!(peer = %evicted.peer, "evicted least recently used idle link");
                    evicted
                        .conn
                        .close(CloseCode::Evicted.to_varint(), b"evicted");
                    self.emit(TransportEvent::LinkLost {
                        peer: evicted.peer,
                        reason: LinkLostReason::ClosedLocally(CloseCode::Evicted),
                    })
                    .await;
                }
                self.close_excess_idle().await;
                if announce {
                    info!(%peer, addr = %link.addr(), inbound, rtt = ?link.conn.rtt(), "link up");
                    self.emit(TransportEvent::LinkUp {
                        peer,
                        addr: link.addr(),
                        rtt: link.conn.rtt(),
                        inbound,
                    })
                    .await;
                }
                tokio::spawn(
                    self.clone()
                        .stream_loop(link.clone())
                        .instrument(self.span.clone()),
                );
                Ok(link)
            }
        }
    }

    /// Accepts the peer's streams on one link until it closes, then reports the loss.
    async fn stream_loop(self: Arc<Self>, link: Arc<Link>) {
        // Bi streams (requests, tunnels) get their own loop so the hot uni loop awaits a single
        // future per stream.
        let bi_loop = tokio::spawn(self.clone().accept_bi_loop(link.clone()));
        let max = self.limits.max_message_size;
        let mut credit = UniCredit::new(&self.limits);
        let error = loop {
            let mut recv = match link.conn.accept_uni().await {
                Ok(recv) => recv,
                Err(error) => break error,
            };
            link.touch();
            credit.on_accepted(&link.conn);
            // Fast path: a small message usually arrives whole with its stream, so read what is
            // already buffered right here; only a stream still waiting for data gets a task.
            let mut frame = Vec::new();
            let available = std::future::poll_fn(|cx| {
                Poll::Ready(poll_read_available(&mut recv, cx, &mut frame, max))
            })
            .await;
            let Poll::Ready(result) = available else {
                tokio::spawn(self.clone().incoming_uni(link.clone(), recv, frame));
                continue;
            };
            let result =
                result.and_then(|()| wire::decode(&frame, max).map_err(ReadFrameError::Wire));
            self.finish_uni(&link, None, result, &mut recv).await;
        };
        bi_loop.abort();
        let duplicate = matches!(
            &error,
            ConnectionError::ApplicationClosed(close)
                if close.error_code == CloseCode::Duplicate.to_varint()
        );
        let removed = lock(&self.pool).closed(link.peer, link.id(), duplicate);
        match removed {
            Removed::NotPooled => {}
            Removed::Lost => {
                let reason = lost_reason(&error);
                info!(peer = %link.peer, ?reason, "link lost");
                self.emit(TransportEvent::LinkLost {
                    peer: link.peer,
                    reason,
                })
                .await;
            }
            Removed::AwaitReplacement => {
                tokio::time::sleep(self.limits.connect_timeout).await;
                let missing = lock(&self.pool).replacement_missing(link.peer);
                if missing {
                    info!(peer = %link.peer, "duplicate link closed and no replacement arrived");
                    self.emit(TransportEvent::LinkLost {
                        peer: link.peer,
                        reason: lost_reason(&error),
                    })
                    .await;
                }
            }
        }
    }

    async fn accept_bi_loop(self: Arc<Self>, link: Arc<Link>) {
        while let Ok((send, recv)) = link.conn.accept_bi().await {
            tokio::spawn(self.clone().incoming_bi(link.clone(), send, recv));
        }
    }

    async fn incoming_uni(
        self: Arc<Self>,
        link: Arc<Link>,
        mut recv: RecvStream,
        partial: Vec<u8>,
    ) {
        let _guard = LinkGuard::new(&link.in_flight);
        // Without an inbox, reserve the event slot first: while the consumer is behind, the
        // data stays unread in QUIC's windows and the peer is flow-controlled.
        let permit = if self.inbox.get().is_some() {
            None
        } else {
            let Ok(permit) = self.events.reserve().await else {
                return;
            };
            Some(permit)
        };
        let max = self.limits.max_message_size;
        let result =
            read_rest_of_frame(&mut recv, partial, max, self.limits.stream_read_timeout).await;
        self.finish_uni(&link, permit, result, &mut recv).await;
    }

    /// Hands a read one-way frame on, to the inbox when there is one, else as an event on the
    /// channel, waiting for room unless `permit` already holds a slot: waiting stalls this
    /// link's reading, and the peer then runs out of stream credit (backpressure, no unbounded
    /// queue).
    async fn finish_uni(
        &self,
        link: &Link,
        permit: Option<mpsc::Permit<'_, TransportEvent>>,
        result: Result<Body, ReadFrameError>,
        recv: &mut RecvStream,
    ) {
        let event = match result {
            Ok(body) => TransportEvent::Message {
                from: link.peer,
                from_addr: link.addr(),
                body,
            },
            Err(error) => match self.reject_stream(link, error, Some(recv), None) {
                Some(error) => TransportEvent::StreamRejected {
                    from: link.peer,
                    error,
                },
                None => return,
            },
        };
        let Some(event) = self.to_inbox(event).await else {
            return;
        };
        match permit {
            Some(permit) => permit.send(event),
            // A dropped receiver means nobody listens any more.
            None => {
                let _ = self.events.send(event).await;
            }
        }
    }

    async fn incoming_bi(
        self: Arc<Self>,
        link: Arc<Link>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let guard = LinkGuard::new(&link.in_flight);
        link.touch();
        let Ok(permit) = self.events.reserve().await else {
            let _ = send.reset(StreamErrorCode::Shutdown.to_varint());
            return;
        };
        let max = self.limits.max_message_size;
        match read_header(&mut recv, max, self.limits.stream_read_timeout).await {
            Ok(header @ Body::Tunnel { .. }) => permit.send(TransportEvent::Stream {
                from: link.peer,
                from_addr: link.addr(),
                header,
                stream: RawStream::new(send, recv, guard),
            }),
            Ok(body) => permit.send(TransportEvent::Request {
                from: link.peer,
                from_addr: link.addr(),
                body,
                reply: Responder::new(send, max, guard),
            }),
            Err(error) => {
                if let Some(error) =
                    self.reject_stream(&link, error, Some(&mut recv), Some(&mut send))
                {
                    permit.send(TransportEvent::StreamRejected {
                        from: link.peer,
                        error,
                    });
                }
            }
        }
    }

    /// Stops (and resets) a stream that brought a bad frame; logs one line. Returns the wire
    /// error to report, if the frame itself was bad.
    fn reject_stream(
        &self,
        link: &Link,
        error: ReadFrameError,
        recv: Option<&mut RecvStream>,
        send: Option<&mut SendStream>,
    ) -> Option<WireError> {
        let (code, wire_error) = match error {
            ReadFrameError::Wire(error) => (StreamErrorCode::for_wire_error(&error), Some(error)),
            ReadFrameError::Timeout => (StreamErrorCode::Timeout, None),
            ReadFrameError::Stream(message) => {
                debug!(peer = %link.peer, %message, "incoming stream broke");
                return None;
            }
        };
        if let Some(recv) = recv {
            let _ = recv.stop(code.to_varint());
        }
        if let Some(send) = send {
            let _ = send.reset(code.to_varint());
        }
        match &wire_error {
            Some(error) => {
                warn!(peer = %link.peer, addr = %link.addr(), %error, ?code, "rejected stream with a bad frame")
            }
            None => {
                warn!(peer = %link.peer, addr = %link.addr(), ?code, "rejected stream: frame too slow")
            }
        }
        wire_error
    }

    async fn idle_reaper(inner: Weak<Self>) {
        // Looks several times per timeout: a link's idle time is counted from the first look
        // that sees it unused (see `Link::idle_for`), so each look adds at most one period.
        let period = match inner.upgrade() {
            Some(inner) => {
                let limits = &inner.limits;
                let shortest = if limits.max_idle_links == usize::MAX {
                    limits.idle_link_timeout
                } else {
                    limits
                        .idle_link_timeout
                        .min(limits.excess_idle_link_timeout)
                };
                (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
            }
            None => return,
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing.load(Ordering::Relaxed) {
                return;
            }
            let idle = lock(&inner.pool).take_idle(inner.limits.idle_link_timeout);
            inner.close_idle(idle).await;
            inner.close_excess_idle().await;
        }
    }

    /// Closes the idle links beyond [`Limits::max_idle_links`] (see
    /// [`Limits::excess_idle_link_timeout`]).
    async fn close_excess_idle(&self) {
        let excess = lock(&self.pool).take_excess_idle(
            self.limits.max_idle_links,
            self.limits.excess_idle_link_timeout,
        );
        self.close_idle(excess).await;
    }

    /// Closes links taken from the pool as idle, telling the owner.
    async fn close_idle(&self, links: Vec<Arc<Link>>) {
        if !links.is_empty() && self.limits.release_freed_memory {
            super::heap::links_closed();
        }
        for link in links {
            info!(peer = %link.peer, "closing idle link");
            link.conn.close(CloseCode::Idle.to_varint(), b"idle");
            self.emit(TransportEvent::LinkLost {
                peer: link.peer,
                reason: LinkLostReason::ClosedLocally(CloseCode::Idle),
            })
            .await;
        }
    }
}

/// A link's uni stream credit: [`Limits::initial_concurrent_uni_streams`] until the peer opens
/// that many streams within [`UniCredit::WINDOW`], then [`Limits::max_concurrent_uni_streams`].
///
/// quinn keeps a slot for every stream the peer may open, so the full credit on every link
/// costs memory that links carrying the odd control message never use; a flow widens it after
/// its first few messages. The clock is read once per `initial` streams, and never once widened.
struct UniCredit {
    initial: u32,
    max: u32,
    /// Streams accepted since `since`.
    counted: u32,
    since: Instant,
    widened: bool,
}

impl UniCredit {
    /// The peer must use the initial credit within this to get the full one.
    const WINDOW: Duration = Duration::from_secs(1);

    fn new(limits: &Limits) -> Self {
        let max = limits.max_concurrent_uni_streams;
        let initial = limits.initial_concurrent_uni_streams.clamp(1, max.max(1));
        Self {
            initial,
            max,
            counted: 0,
            since: Instant::now(),
            widened: initial >= max,
        }
    }

    /// Counts a stream the peer opened; widens the credit when it is a flow.
    fn on_accepted(&mut self, conn: &quinn::Connection) {
        if self.widened {
            return;
        }
        self.counted += 1;
        if self.counted < self.initial {
            return;
        }
        if self.since.elapsed() <= Self::WINDOW {
            debug!(max = self.max, "link carries a flow: full stream credit");
            conn.set_max_concurrent_uni_streams(VarInt::from_u32(self.max));
            self.widened = true;
        } else {
            self.counted = 0;
            self.since = Instant::now();
        }
    }
}

/// Closes a link that lost the simultaneous-dial rule once its streams in progress are done and
/// a few RTTs have passed for frames already written to arrive.
async fn drain_and_close(link: Arc<Link>) {
    let drain = (link.conn.rtt() * 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(drain).await;
        if !link.is_busy() {
            break;
        }
    }
    link.conn
        .close(CloseCode::Duplicate.to_varint(), b"duplicate link");
}

/// Waits until the server has accepted us: in TLS 1.3 the client finishes its handshake first
/// and the server judges the client's certificate afterwards. The server's HANDSHAKE_DONE frame
/// confirms acceptance; a refusal closes the connection instead. quinn has no event for the
/// frame, so its counter is polled at a fraction of the RTT (sub-millisecond on loopback).
async fn confirmed(conn: &quinn::Connection) -> Result<(), ConnectionError> {
    let interval = (conn.rtt() / 8).clamp(Duration::from_millis(1), Duration::from_millis(20));
    loop {
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        if let Some(error) = conn.close_reason() {
            return Err(error);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Classifies a failed handshake: our verifier's verdict first, then the TLS alert.
fn handshake_error(error: ConnectionError, verdict: &Verdict, addr: SocketAddr) -> TransportError {
    if let Some(auth) = verdict.error() {
        return TransportError::Auth(auth);
    }
    match error {
        ConnectionError::TransportError(ref local)
            if local.code == TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL) =>
        {
            TransportError::Auth(AuthError::WrongAlpn)
        }
        ConnectionError::TransportError(ref local)
            if local.code == TransportErrorCode::crypto(ALERT_CERTIFICATE_REQUIRED) =>
        {
            TransportError::Auth(AuthError::NoCertificate)
        }
        ConnectionError::ConnectionClosed(close) => {
            TransportError::RefusedByPeer(close.to_string())
        }
        ConnectionError::ApplicationClosed(close) => {
            TransportError::RefusedByPeer(close.to_string())
        }
        ConnectionError::TimedOut => TransportError::ConnectTimeout(addr),
        other => TransportError::Connection(other),
    }
}

fn lost_reason(error: &ConnectionError) -> LinkLostReason {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let raw_code = close.error_code.into_inner();
            LinkLostReason::ClosedByPeer {
                code: CloseCode::from_u64(raw_code),
                raw_code,
            }
        }
        ConnectionError::LocallyClosed => LinkLostReason::ClosedLocally(CloseCode::Closed),
        ConnectionError::TimedOut => LinkLostReason::TimedOut,
        ConnectionError::Reset => LinkLostReason::Reset,
        other => LinkLostReason::Error(other.to_string()),
    }
}
