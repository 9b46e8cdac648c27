//! Why a mesh operation fails.

use std::net::SocketAddr;

use super::RecordError;
use crate::id::NodeId;
use crate::node::NodeError;

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The node refused the operation (not joined, shut down, ...).
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// A record could not be made, or the name is invalid.
    #[error("{0}")]
    Record(#[from] RecordError),
    /// The identity given to [`Mesh::new`](super::Mesh::new) is not the node's.
    #[error("the identity {identity} is not the node's ({node}): give the mesh the node's key")]
    IdentityMismatch {
        /// The identity's node id.
        identity: NodeId,
        /// The node's id.
        node: NodeId,
    },
    /// The target of [`Mesh::expose`](super::Mesh::expose) is not `HOST:PORT`.
    #[error("bad service address {0:?}: expected HOST:PORT")]
    BadTarget(String),
    /// The local address of [`Mesh::forward`](super::Mesh::forward) cannot be listened on.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        message: String,
    },
    /// The registry did not answer.
    #[error("no answer from the registry for {name:?} after {attempts} attempts")]
    RegistryTimeout {
        /// The service name.
        name: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The registry refused a published record.
    #[error("the registry refused the record for {name:?}: {reason}")]
    Refused {
        /// The service name.
        name: String,
        /// The holder's reason.
        reason: String,
    },
    /// Nobody provides the service.
    #[error("no provider of {0:?} is registered")]
    NoProvider(String),
    /// Providers are registered but none could be reached.
    #[error("no provider of {name:?} could be reached ({tried} tried): {last_error}")]
    Unreachable {
        /// The service name.
        name: String,
        /// How many providers were tried.
        tried: usize,
        /// Why the last one failed.
        last_error: String,
    },
    /// The mesh has been shut down.
    #[error("the mesh is shut down")]
    Closed,
}
