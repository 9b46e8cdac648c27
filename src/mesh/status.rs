//! The snapshot [`super::Mesh::status`] returns.

use std::net::SocketAddr;

/// A service this node exposes, in [`MeshStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExposedStatus {
    /// The service name.
    pub name: String,
    /// The `HOST:PORT` tunnels are connected to.
    pub target: String,
    /// Tunnels accepted.
    pub tunnels: u64,
    /// Tunnels refused because the target could not be reached (or too many tunnels were
    /// open, see [`MeshConfig::max_provider_tunnels`](super::MeshConfig::max_provider_tunnels)).
    pub target_failures: u64,
    /// Bytes sent to the consumers by tunnels that have ended cleanly.
    pub bytes_sent: u64,
    /// Bytes received from the consumers by tunnels that have ended cleanly.
    pub bytes_received: u64,
}

/// A local listener of [`Mesh::forward`](super::Mesh::forward), in [`MeshStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForwardStatus {
    /// The service name.
    pub name: String,
    /// The local TCP address listened on.
    pub listen: SocketAddr,
    /// Connections tunnelled to a provider.
    pub connections: u64,
    /// Connections closed because no provider could be reached.
    pub failures: u64,
    /// The last such failure.
    pub last_error: Option<String>,
    /// Attempts on a provider that failed (the connection may then have gone to the next
    /// provider; see `failures` for connections that found none).
    pub provider_failures: u64,
    /// Bytes sent to the providers by tunnels that have ended cleanly.
    pub bytes_sent: u64,
    /// Bytes received from the providers by tunnels that have ended cleanly.
    pub bytes_received: u64,
}

/// A snapshot of a mesh's services and registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MeshStatus {
    /// Services this node exposes.
    pub exposed: Vec<ExposedStatus>,
    /// Services this node forwards.
    pub forwarded: Vec<ForwardStatus>,
    /// Unexpired records this node holds as a registry root or replica.
    pub records_held: usize,
    /// The service names this node knows of, sorted: those it exposes, holds records for, or
    /// has looked up with a provider found (a registry is spread over the overlay, so a node
    /// knows the names near it and those it has used, not necessarily all).
    pub services: Vec<String>,
    /// Events dropped because the application did not keep up.
    pub events_dropped: u64,
    /// Registry answers and replications dropped because too many were in flight.
    pub sends_dropped: u64,
    /// Records refused (bad signature, wrong key, too long a lifetime, wrong place, store
    /// full) from publications and replications.
    pub records_refused: u64,
}
