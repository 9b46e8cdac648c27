//! Relays: how a node that cannot be dialled (behind a NAT or a firewall, "private") stays an
//! ordinary member of the overlay, with end-to-end TLS to every peer.
//!
//! - A **relay** is a node with a public address started with [`RelayConfig::serve`]
//!   (`wendy node --relay`). Private nodes home on it; it pairs streams by node id and copies
//!   bytes between them, within its [`RelayLimits`] (`server.rs`).
//! - A **private** node ([`RelayConfig::private`]) homes on [`HOMES`] relays (lowest RTT
//!   first, re-homing when one dies), advertises the synthetic address [`synthetic_addr`] of
//!   its id as its address, and hands out a [`SignedRelayRecord`] naming its relays
//!   (`record.rs`, `client.rs`).
//! - Every node runs quinn on a [`RelaySocket`] (`socket.rs`): a datagram to a synthetic
//!   address goes through a relay session (`session.rs`) instead of the network. The QUIC
//!   connection between two nodes is therefore the usual mutually authenticated one whichever
//!   path it takes; the relay only carries its encrypted datagrams.
//! - Once proven, a session's packets cross the relay as plain UDP datagrams under a token the
//!   relay granted (`dgram.rs`): one QUIC connection's work per relayed byte instead of three.
//!
//! See `docs/relays.md` for the design and what a relay is trusted with.

mod client;
mod dgram;
pub mod record;
mod server;
mod session;
mod socket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use client::Relays;
pub use client::{RelayStatus, HOMES};
pub use record::{RelayEntry, RelayRecord, RelayRecordError, SignedRelayRecord};
pub use server::{RelayLimits, RelayServerStatus};
pub use socket::RelaySocket;
pub(crate) use socket::{Paths, WantedSession};

use crate::id::NodeId;

/// A node's relay settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Serve as a relay, with these limits (`None`: do not relay). Only a node with a public
    /// address is useful as one.
    pub serve: Option<RelayLimits>,
    /// Whether this node is private: nobody can dial it, so it homes on relays, advertises a
    /// relay record, and takes datagrams from real addresses only if it sent to them first
    /// (as behind a NAT). This is the mode at start; with
    /// [`follow_reachability`](Self::follow_reachability) it then follows the reachability
    /// verdict.
    pub private: bool,
    /// Whether the node turns private or public at run time when the reachability check's
    /// confirmed verdict says so ([`crate::node::Node::mode`]). Default: on.
    pub follow_reachability: bool,
    /// Addresses of relays to home on when private (the join's bootstrap addresses are tried
    /// as well).
    pub relays: Vec<SocketAddr>,
    /// How long a relay session may carry only keep-alives before this node ends it. Default
    /// 90 s: longer than the QUIC keep-alive interval of the connection inside, so only a
    /// session whose connection is gone idles that long.
    pub session_idle: Duration,
    /// The lifetime of the relay record a private node signs (a second to
    /// [`record::MAX_TTL_MS`]); the node signs and sends a new one when half of it is gone.
    /// Default 59 minutes.
    pub record_ttl: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            serve: None,
            private: false,
            follow_reachability: true,
            relays: Vec::new(),
            session_idle: Duration::from_secs(90),
            record_ttl: Duration::from_millis(record::MAX_TTL_MS) - Duration::from_secs(60),
        }
    }
}

/// The synthetic address of a relayed node: in `240.0.0.0/5` (reserved, never a host's, and
/// clear of the broadcast address), the first 27 bits of its id in the address and 15 more in
/// the port (whose top bit is set, so it is never 0). Every node derives the same one from the
/// id alone.
pub fn synthetic_addr(id: NodeId) -> SocketAddr {
    let bytes = id.to_bytes();
    let high = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let ip = Ipv4Addr::from(0xf000_0000 | (high >> 5));
    // Bits 27..42 of the id.
    let next = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], 0]);
    let port = 0x8000 | ((next >> 10) as u16 & 0x7fff);
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Whether `addr` is a synthetic address (see [`synthetic_addr`]).
pub fn is_synthetic(addr: SocketAddr) -> bool {
    match unmap(addr) {
        SocketAddr::V4(v4) => (240..=247).contains(&v4.ip().octets()[0]),
        SocketAddr::V6(_) => false,
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4.
pub(crate) fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Wraps `inner` (the node's real socket) in a [`RelaySocket`].
pub(crate) fn wrap(
    inner: Arc<dyn quinn::AsyncUdpSocket>,
) -> std::io::Result<(
    Arc<RelaySocket>,
    Arc<Paths>,
    tokio::sync::mpsc::UnboundedReceiver<WantedSession>,
)> {
    let (paths, wanted) = Paths::new();
    let socket = RelaySocket::new(inner, paths.clone())?;
    Ok((Arc::new(socket), paths, wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn synthetic_addresses_are_recognised_and_never_real() {
        for _ in 0..100 {
            let addr = synthetic_addr(Identity::generate().node_id());
            assert!(is_synthetic(addr), "{addr}");
            assert_ne!(addr.port(), 0);
            let mapped = match addr {
                SocketAddr::V4(v4) => {
                    SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
                }
                other => other,
            };
            assert!(is_synthetic(mapped));
        }
        assert!(!is_synthetic("127.0.0.1:4000".parse().unwrap()));
        assert!(!is_synthetic("255.255.255.255:4000".parse().unwrap()));
        assert!(!is_synthetic("[::1]:4000".parse().unwrap()));
    }
}
