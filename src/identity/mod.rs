//! Node identities: ed25519 keys, X.509 certificates and the mesh certificate authority.
//!
//! This module owns every private key and certificate Wendy handles, and the files they live in
//! (PKCS#8 PEM keys, mode 0600; PEM certificates). It knows nothing of QUIC or rustls
//! configuration: `transport/` takes [`Identity::private_key_der`] and [`Certificate::der`] and
//! builds its verifiers on [`ed25519_public_key_of`].
//!
//! Certificate layout (see `certs/README.md` for the trust model):
//! - the subject public key IS the node's ed25519 key, so the [`NodeId`] is derived from the
//!   certificate, never trusted from a message;
//! - the NodeId (32 lowercase hex digits) is the subject common name and a DNS subject
//!   alternative name `<hex>.wendy` (see [`node_dns_name`]);
//! - open mesh: self-signed ([`Identity::self_signed_certificate`]); closed mesh: signed by a
//!   [`MeshCa`] whose certificate is a real CA (basicConstraints CA:TRUE, keyCertSign), so
//!   `openssl verify -CAfile ca.crt node.crt` and rustls-webpki both accept the chain.
//!
//! ```
//! use wendy::identity::{Identity, MeshCa, Validity};
//! # fn main() -> Result<(), wendy::identity::IdentityError> {
//! let ca = MeshCa::generate("example mesh", Validity::days_from_now(3650))?;
//! let node = Identity::generate();
//! let cert = ca.issue(&node.public_key(), Validity::days_from_now(365))?;
//! assert_eq!(cert.node_id()?, node.node_id());
//! # Ok(())
//! # }
//! ```

mod ca;
mod cert;
mod error;
mod files;
mod key;
mod origin;
#[cfg(any(test, feature = "testing"))]
pub mod test_fixtures;

pub use ca::{MeshCa, CA_CERT_FILE, CA_KEY_FILE};
pub use cert::{ed25519_public_key_of, node_dns_name, Certificate, Validity, NODE_DNS_SUFFIX};
pub use error::IdentityError;
pub use key::Identity;
pub use origin::{OriginError, OriginSigner, OriginVerifier, VERIFIED_KEYS};

/// The NodeId type this module derives from keys (re-exported for convenience).
pub use crate::id::NodeId;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fixture_tests;
