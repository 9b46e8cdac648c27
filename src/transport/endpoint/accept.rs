//! Incoming links: the accept loop and the admission checks after the handshake.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::{debug, warn, Instrument};

use super::dial::{exporter, handshake_error};
use super::{lock, Inner};
use crate::id::NodeId;
use crate::transport::dials::canonical;
use crate::transport::tls::{ALPN, DIAL_BACK_ALPN};
use crate::transport::verifier::Verdict;
use crate::transport::{AuthError, CloseCode, ConnectError, TransportEvent};

impl Inner {
    pub(super) async fn accept_loop(self: Arc<Self>) {
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
        // Handshakes in progress are bounded: past half the cap, a client must first prove its
        // address with a stateless retry (no state kept here until it does); at the cap, new
        // ones are refused.
        let in_progress = self.handshakes.load(Ordering::Acquire);
        if in_progress >= self.limits.max_handshakes {
            incoming.refuse();
            debug!(%addr, in_progress, "refused incoming link: too many handshakes in progress");
            return;
        }
        if in_progress >= self.limits.max_handshakes / 2 && !incoming.remote_address_validated() {
            if let Err(error) = incoming.retry() {
                error.into_incoming().ignore();
            }
            return;
        }
        let _handshake = Handshake::enter(&self.handshakes);
        if !lock(&self.pool).has_room() {
            incoming.refuse();
            warn!(%addr, "refused incoming link: pool full of busy links");
            self.emit(TransportEvent::HandshakeFailed {
                addr,
                error: ConnectError::TooManyConnections {
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
                    Err(_) => Err(ConnectError::Timeout(addr)),
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
            Err(ConnectError::DialBack) => {}
            Err(error) => {
                // The node reports it once, as an event the application shows or logs.
                debug!(%addr, %error, "refused incoming link");
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
    ) -> Result<(quinn::Connection, NodeId), ConnectError> {
        let protocol = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        if protocol.as_deref() == Some(DIAL_BACK_ALPN) {
            // The handshake itself was the answer: the dialler now knows this node can be
            // dialled at the address it used. The connection never becomes a link.
            debug!(addr = %conn.remote_address(), peer = ?verdict.peer(), "answered a dial-back");
            self.dial_backs_answered.fetch_add(1, Ordering::Relaxed);
            conn.close(CloseCode::Closed.to_varint(), b"dial-back");
            return Err(ConnectError::DialBack);
        }
        if protocol.as_deref() != Some(ALPN) {
            conn.close(CloseCode::WrongAlpn.to_varint(), b"alpn wendy/1 required");
            return Err(ConnectError::Auth(AuthError::WrongAlpn));
        }
        let Some(peer) = verdict.peer() else {
            conn.close(CloseCode::Closed.to_varint(), b"unverified");
            return Err(ConnectError::Auth(AuthError::NoCertificate));
        };
        if peer == self.local_id {
            let addr = conn.remote_address();
            // Recorded before the close, which the dialler waits for: if the dialler is this
            // process, it finds its link here (`dial::own_key_at`).
            if let Some(value) = exporter(&conn) {
                let mut own = self
                    .own_key_links
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if own.len() >= OWN_KEY_LINKS_KEPT {
                    own.pop_front();
                }
                own.push_back(value);
            }
            conn.close(CloseCode::SelfConnection.to_varint(), b"self");
            let local = self.local_addr;
            let maybe_self = addr.port() == local.port()
                && (local.ip().is_unspecified() || canonical(addr).ip() == canonical(local).ip());
            return Err(if maybe_self {
                ConnectError::SelfConnection(addr)
            } else {
                ConnectError::SameIdentity(addr)
            });
        }
        Ok((conn, peer))
    }
}

/// How many own-key links `Inner::own_key_links` remembers: a dialler looks within one
/// round trip of the record, so a few suffice.
const OWN_KEY_LINKS_KEPT: usize = 16;

/// Counts an incoming handshake in progress until it ends.
struct Handshake<'a>(&'a AtomicUsize);

impl<'a> Handshake<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Handshake<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
