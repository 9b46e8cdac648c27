//! Outgoing links: dialling a peer (one dial per peer at a time), waiting for the server to
//! accept us, classifying a failed handshake, and opening streams on pooled links.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quinn::{ConnectionError, TransportErrorCode};
use tracing::{debug, info, Instrument};

use super::serve::{identity_in_use, lost_reason};
use super::{lock, Inner};
use crate::id::NodeId;
use crate::transport::dials::{canonical, Outcome};
use crate::transport::pool::{Link, Removed};
use crate::transport::stream::LinkGuard;
use crate::transport::verifier::Verdict;
use crate::transport::{
    AuthError, CloseCode, ConnectError, DialRefused, SendError, TransportEvent,
};

/// The server name put in every ClientHello; Wendy's verifiers ignore names (peers are
/// identified by key).
const SERVER_NAME: &str = "wendy";

/// TLS alert `no_application_protocol` (RFC 8446), as quinn reports it (crypto error 0x100+).
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;
/// TLS alert `certificate_required` (RFC 8446).
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

impl Inner {
    pub(super) fn client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<(quinn::ClientConfig, Verdict), ConnectError> {
        let (crypto, verdict) = self
            .tls
            .client_config(expected)
            .map_err(ConnectError::Tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.quic.clone());
        Ok((config, verdict))
    }

    /// Opens a stream to `peer` with `open` (dialling `addr` if there is no link), within
    /// [`Limits::open_stream_timeout`]. A pooled link that turns out to be closed (its loss not
    /// processed yet) is dropped and the peer dialled afresh, once. The guard keeps the link
    /// busy while the stream is in use.
    pub(super) async fn open<T, F, Fut>(
        self: &Arc<Self>,
        peer: NodeId,
        addr: SocketAddr,
        open: F,
    ) -> Result<(LinkGuard, T), SendError>
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
                Err(_) => return Err(SendError::OpenStreamTimeout),
                Ok(Ok(stream)) => return Ok((guard, stream)),
                Ok(Err(error)) if identity_in_use(&error).is_some() => {
                    Box::pin(self.forget(&link, &error)).await;
                    let reason = identity_in_use(&error).unwrap_or_default();
                    return Err(ConnectError::identity_in_use(reason).into());
                }
                Ok(Err(error)) if !retried => {
                    debug!(%peer, %error, "pooled link was closed; dialling again");
                    drop(guard);
                    Box::pin(self.forget(&link, &error)).await;
                    retried = true;
                }
                Ok(Err(error)) => return Err(SendError::Connection(error)),
            }
        }
    }

    /// Removes a link found closed from the pool (reporting its loss) before its stream loop
    /// has noticed.
    pub(super) async fn forget(&self, link: &Link, error: &ConnectionError) {
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
    pub(super) async fn link(
        self: &Arc<Self>,
        peer: Option<NodeId>,
        addr: SocketAddr,
    ) -> Result<Arc<Link>, ConnectError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(ConnectError::Shutdown);
        }
        if let Some(peer) = peer {
            if let Some(link) = self.pooled_at(peer, addr) {
                return Ok(link);
            }
            // A link the peer dialled is the peer's (its handshake proved it), and for a peer
            // behind a NAT the only way to it: the address it advertises (its LAN address)
            // cannot be dialled, and waiting for that dial would cost a connect timeout. Use
            // the link now; the dial that finds out who is at `addr` (an alias for this link
            // if nobody, or the same key in another process) runs meanwhile, once.
            let inbound = lock(&self.pool).get(peer).filter(|link| link.inbound);
            if let Some(link) = inbound {
                let dialling = self
                    .dial_locks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(&peer);
                if !dialling {
                    let inner = self.clone();
                    tokio::spawn(
                        async move {
                            let _ = inner.dial_peer(peer, addr).await;
                        }
                        .instrument(self.span.clone()),
                    );
                }
                return Ok(link);
            }
            // Boxed, as `forget` above: a send's future would otherwise carry a dial's large
            // state (and be allocated at that size) on every send over a pooled link.
            return Box::pin(self.dial_peer(peer, addr)).await;
        }
        Box::pin(self.dial(addr, None)).await
    }

    /// Dials `peer` at `addr` (one dial per peer at a time) unless a link there appeared
    /// meanwhile; on failure, the peer's link from another address serves.
    async fn dial_peer(
        self: &Arc<Self>,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<Arc<Link>, ConnectError> {
        {
            // One dial per peer at a time: concurrent senders wait for the first dial.
            let dial_lock = {
                let mut locks = self
                    .dial_locks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                locks.entry(peer).or_default().clone()
            };
            let _dialling = dial_lock.lock().await;
            if let Some(link) = self.pooled_at(peer, addr) {
                return Ok(link);
            }
            let result = self.dial(addr, Some(peer)).await;
            self.dial_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&peer);
            match &result {
                Err(ConnectError::IdentityInUse { .. }) => {
                    // Refused here because the peer's pooled link answers: that live link is
                    // the peer (the one at `addr` holds its key but is not it).
                    if let Some(link) = self.alias(peer, addr) {
                        return Ok(link);
                    }
                    // A relayed dial refused because the peer's direct link (which came up
                    // meanwhile) answers: that link is the peer, and the better path.
                    if crate::relay::is_synthetic(addr) {
                        if let Some(link) = self.pooled_at(peer, addr) {
                            return Ok(link);
                        }
                    }
                }
                Err(error) => {
                    // Nobody (or nobody else) answers at `addr`, but the peer has a link from
                    // another address (it restarted there, or has several): that link serves.
                    let pooled = lock(&self.pool).get(peer);
                    if let Some(link) = pooled {
                        debug!(%peer, %addr, live_at = %link.addr(), %error,
                            "no link at the address given; using the peer's link elsewhere");
                        self.add_alias(peer, addr, &link);
                        return Ok(link);
                    }
                }
                Ok(_) => {}
            }
            result
        }
    }

    /// The pooled link to `peer` if it is at `addr` (canonically), or stands for the peer
    /// there (see [`Self::alias`]). A link at another address is not used: a dial to `addr`
    /// finds out who is there (one identity, one address: see `links.rs`).
    pub(super) fn pooled_at(&self, peer: NodeId, addr: SocketAddr) -> Option<Arc<Link>> {
        let link = lock(&self.pool).get(peer)?;
        // A synthetic address (a relayed peer's) names the peer, not a path: any live link to
        // it will do, and a direct one is better than a relayed one.
        if canonical(link.addr()) == canonical(addr) || crate::relay::is_synthetic(addr) {
            return Some(link);
        }
        self.alias(peer, addr)
    }

    /// Dials `addr` within the node's dial bounds (see `transport/dials.rs`): one dial per
    /// address at a time (a second waits for the first), at most
    /// [`Limits::max_dials_in_flight`](crate::transport::Limits::max_dials_in_flight) in all,
    /// and none to an address backing off after a failure.
    pub(super) async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Arc<Link>, ConnectError> {
        if addr == self.local_addr {
            return Err(ConnectError::SelfConnection(addr));
        }
        if let (Some(peer), Some(hook)) = (expected, self.relayed_dial_hook.get()) {
            if crate::relay::is_synthetic(addr) {
                (hook.0)(peer);
            }
        }
        let key = canonical(addr);
        let addr_lock = lock_map(&self.addr_locks).entry(key).or_default().clone();
        let result = {
            let _one_at_a_time = addr_lock.lock().await;
            self.bounded_dial(addr, expected).await
        };
        let mut locks = lock_map(&self.addr_locks);
        // Forget the lock unless another dial waits for it (the map's and ours: two).
        if Arc::strong_count(&addr_lock) <= 2 {
            locks.remove(&key);
        }
        result
    }

    async fn bounded_dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Arc<Link>, ConnectError> {
        if let Some(link) = expected.and_then(|peer| self.pooled_at(peer, addr)) {
            // Dialled by another task while this one waited for the address.
            return Ok(link);
        }
        // A dial beyond the cap waits for a slot as long as a dial may take: dials to live
        // peers free theirs within a few round trips, so only a backlog of silent addresses
        // makes one give up.
        let slot =
            tokio::time::timeout(self.limits.connect_timeout, self.dial_slots.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            return Err(ConnectError::DialRefused(DialRefused::Limit {
                max: self.limits.max_dials_in_flight,
            }));
        };
        self.dials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .begin(addr, expected, Instant::now())?;
        let result = self.handshake(addr, expected).await;
        let outcome = match &result {
            Ok(_) => Outcome::Linked,
            // A live node too busy for another handshake now: not a failed address.
            Err(ConnectError::RefusedByPeer(ConnectionError::ConnectionClosed(close)))
                if close.error_code == TransportErrorCode::CONNECTION_REFUSED =>
            {
                Outcome::Neutral
            }
            Err(ConnectError::Auth(AuthError::NodeIdMismatch { presented, .. })) => {
                Outcome::HeldBy(*presented)
            }
            Err(
                ConnectError::Timeout(_)
                | ConnectError::RefusedByPeer(_)
                | ConnectError::Connection(_)
                | ConnectError::Auth(_),
            ) => Outcome::Failed,
            Err(_) => Outcome::Neutral,
        };
        self.dials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .end(addr, outcome, Instant::now());
        result
    }

    /// One dial: the handshake, the checks after it, and the pool.
    async fn handshake(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Arc<Link>, ConnectError> {
        if !lock(&self.pool).has_room() {
            return Err(ConnectError::TooManyConnections {
                max: self.limits.max_connections,
            });
        }
        let (config, verdict) = self.client_config(expected)?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|source| ConnectError::Start { addr, source })?;
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(ConnectError::Timeout(addr)),
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
            return Err(ConnectError::Auth(AuthError::NoCertificate));
        };
        if peer == self.local_id {
            return Err(self.own_key_at(&conn, addr, deadline).await);
        }
        match tokio::time::timeout_at(deadline, confirmed(&conn)).await {
            Err(_) => {
                conn.close(CloseCode::Closed.to_varint(), b"not confirmed");
                return Err(ConnectError::Timeout(addr));
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
}

impl Inner {
    /// The handshake at `addr` proved this node's own key: this process (another address of
    /// its own socket) or another process running with the same key. The other side refuses a
    /// link presenting its own key, and when that side is this process it first records the
    /// link's TLS exporter value (`accept.rs`), so after the refusal the two cases differ.
    async fn own_key_at(
        &self,
        conn: &quinn::Connection,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> ConnectError {
        let _ = tokio::time::timeout_at(deadline, conn.closed()).await;
        conn.close(CloseCode::SelfConnection.to_varint(), b"self");
        let own = exporter(conn).is_some_and(|value| {
            self.own_key_links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&value)
        });
        if own {
            ConnectError::SelfConnection(addr)
        } else {
            info!(%addr, "another process runs with this node's key");
            ConnectError::SameIdentity(addr)
        }
    }
}

/// A value both ends of one TLS session derive alike, and no other session does.
pub(super) fn exporter(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut value = [0; 32];
    conn.export_keying_material(&mut value, b"wendy own key link", b"")
        .ok()?;
    Some(value)
}

type AddrLocks = HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>;

fn lock_map(map: &Mutex<AddrLocks>) -> MutexGuard<'_, AddrLocks> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
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
pub(super) fn handshake_error(
    error: ConnectionError,
    verdict: &Verdict,
    addr: SocketAddr,
) -> ConnectError {
    if let Some(auth) = verdict.error() {
        return ConnectError::Auth(auth);
    }
    match error {
        ConnectionError::TransportError(ref local)
            if local.code == TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL) =>
        {
            ConnectError::Auth(AuthError::WrongAlpn)
        }
        ConnectionError::TransportError(ref local)
            if local.code == TransportErrorCode::crypto(ALERT_CERTIFICATE_REQUIRED) =>
        {
            ConnectError::Auth(AuthError::NoCertificate)
        }
        ConnectionError::ConnectionClosed(close) => {
            ConnectError::RefusedByPeer(ConnectionError::ConnectionClosed(close))
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == CloseCode::IdentityInUse.to_varint() =>
        {
            ConnectError::identity_in_use(&close.reason)
        }
        ConnectionError::ApplicationClosed(close) => {
            ConnectError::RefusedByPeer(ConnectionError::ApplicationClosed(close))
        }
        ConnectionError::TimedOut => ConnectError::Timeout(addr),
        other => ConnectError::Connection(other),
    }
}
