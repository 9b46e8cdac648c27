//! Reachability dial-backs: a handshake from a fresh UDP socket that proves whether a node can
//! be dialled at an address by a host it never sent to.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use quinn::ConnectionError;

use super::Inner;
use crate::id::NodeId;
use crate::transport::tls::DIAL_BACK_ALPN;
use crate::transport::ConnectError;

/// Why a dial-back could not be attempted or did not reach the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialBackError {
    /// The fresh UDP socket could not be bound.
    #[error("cannot bind a socket for the dial-back: {0}")]
    Socket(#[source] std::io::Error),
    /// The handshake did not complete (nobody answered, or the node refused it).
    #[error("dial-back failed: {0}")]
    Connect(#[source] ConnectError),
}

impl Inner {
    pub(super) async fn dial_back(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<(), DialBackError> {
        let (crypto, _verdict) = self
            .tls
            .client_config_for(Some(peer), DIAL_BACK_ALPN)
            .map_err(|e| DialBackError::Connect(ConnectError::Tls(e)))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.quic.clone());
        // A fresh socket: a NAT in front of `peer` has never seen this port, so only a node
        // that accepts unsolicited packets at `addr` can answer.
        let bind: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(DialBackError::Socket)?;
        let connecting = endpoint
            .connect_with(config, addr, "wendy")
            .map_err(|source| DialBackError::Connect(ConnectError::Start { addr, source }))?;
        let outcome = tokio::time::timeout(self.limits.dial_back_timeout, connecting).await;
        let result = match outcome {
            Err(_) => Err(DialBackError::Connect(ConnectError::Timeout(addr))),
            Ok(Ok(conn)) => {
                // Our side completes first; the node counts the dial-back when its side does,
                // then closes. Waiting for that close means the node has counted it before
                // anyone is told it succeeded (it believes no success it did not count).
                let _ = tokio::time::timeout(self.limits.dial_back_timeout, conn.closed()).await;
                conn.close(0u32.into(), b"dial-back done");
                Ok(())
            }
            // The node closes a dial-back as soon as its handshake completes; a close that
            // overtakes our own completion still means it answered.
            Ok(Err(ConnectionError::ApplicationClosed(_))) => Ok(()),
            Ok(Err(error)) => Err(DialBackError::Connect(ConnectError::Connection(error))),
        };
        endpoint.close(0u32.into(), b"dial-back done");
        result
    }
}
