//! Signing and checking the origin of routed messages with node keys.
//!
//! What is signed (a 32-byte digest of the message) is the routing core's business
//! (`crate::pastry::origin`); this module only signs digests with the node's ed25519 key
//! ([`OriginSigner`]) and checks another node's signature, given the [`NodeId`] it claims
//! ([`OriginVerifier`]).

use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::Identity;
use crate::id::NodeId;

/// Why an origin signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The public key does not hash to the claimed node id.
    #[error("the public key does not hash to the claimed node id")]
    KeyMismatch,
    /// The public key is not a valid ed25519 key (or is a weak, small-order one).
    #[error("not a valid ed25519 public key")]
    BadKey,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
}

/// Signs digests of routed messages with a node's key (see [`Identity::origin_signer`]).
///
/// `Debug` shows the NodeId only.
///
/// ```
/// use wendy::identity::{Identity, OriginVerifier};
/// let me = Identity::from_seed([3; 32]);
/// let signer = me.origin_signer();
/// let digest = [9u8; 32];
/// let signature = signer.sign(&digest);
/// let mut verifier = OriginVerifier::new();
/// assert!(verifier.verify(me.node_id(), &signer.public_key(), &digest, &signature).is_ok());
/// assert!(verifier.verify(me.node_id(), &signer.public_key(), &[8; 32], &signature).is_err());
/// ```
#[derive(Clone)]
pub struct OriginSigner {
    key: SigningKey,
    public_key: [u8; 32],
    node_id: NodeId,
}

impl Identity {
    /// A signer for the digests of the routed messages this node originates.
    pub fn origin_signer(&self) -> OriginSigner {
        let key = self.signing_key().clone();
        let public_key = key.verifying_key().to_bytes();
        OriginSigner {
            key,
            public_key,
            node_id: NodeId::from_public_key(&public_key),
        }
    }
}

impl OriginSigner {
    /// The node's ed25519 public key (its blake3 is the node id).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The node id of the key.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Signs `digest` (ed25519, RFC 8032).
    pub fn sign(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.key.sign(digest).to_bytes()
    }
}

impl std::fmt::Debug for OriginSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginSigner")
            .field("node_id", &format_args!("{}", self.node_id))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Most decoded public keys an [`OriginVerifier`] keeps.
pub const VERIFIED_KEYS: usize = 4096;

/// Checks origin signatures, keeping the decoded public keys of the origins it has seen (at
/// most [`VERIFIED_KEYS`]), so that a known origin costs one signature check: no hash of its
/// key, no point decompression.
#[derive(Debug, Default)]
pub struct OriginVerifier {
    keys: HashMap<NodeId, VerifyingKey>,
}

impl OriginVerifier {
    /// An empty verifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that `public_key` belongs to `origin` (its blake3 gives the id) and that
    /// `signature` is its signature over `digest` (strict RFC 8032 verification: weak keys and
    /// non-canonical signatures are refused).
    pub fn verify(
        &mut self,
        origin: NodeId,
        public_key: &[u8; 32],
        digest: &[u8; 32],
        signature: &[u8; 64],
    ) -> Result<(), OriginError> {
        let key = match self.keys.get(&origin) {
            // The cached key was checked against `origin` when it was stored.
            Some(key) if key.as_bytes() == public_key => *key,
            _ => {
                if NodeId::from_public_key(public_key) != origin {
                    return Err(OriginError::KeyMismatch);
                }
                let key = VerifyingKey::from_bytes(public_key).map_err(|_| OriginError::BadKey)?;
                if key.is_weak() {
                    return Err(OriginError::BadKey);
                }
                if self.keys.len() >= VERIFIED_KEYS {
                    // Rare (more origins than the cache holds): start over rather than track
                    // recency on every message.
                    self.keys.clear();
                }
                self.keys.insert(origin, key);
                key
            }
        };
        key.verify_strict(digest, &Signature::from_bytes(signature))
            .map_err(|_| OriginError::BadSignature)
    }

    /// Decoded keys held.
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_digest_and_its_origin() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let signer = a.origin_signer();
        assert_eq!(signer.node_id(), a.node_id());
        let digest = [5u8; 32];
        let signature = signer.sign(&digest);
        let mut verifier = OriginVerifier::new();
        let key = signer.public_key();
        assert_eq!(
            verifier.verify(a.node_id(), &key, &digest, &signature),
            Ok(())
        );
        // Twice: the second check uses the cached key.
        assert_eq!(
            verifier.verify(a.node_id(), &key, &digest, &signature),
            Ok(())
        );
        assert_eq!(verifier.cached_keys(), 1);
        assert_eq!(
            verifier.verify(a.node_id(), &key, &[6; 32], &signature),
            Err(OriginError::BadSignature)
        );
        // a's key and signature, claimed for b.
        assert_eq!(
            verifier.verify(b.node_id(), &key, &digest, &signature),
            Err(OriginError::KeyMismatch)
        );
        // b's key claimed for a (after a's key is cached): refused, and a's entry stays.
        let b_key = b.origin_signer().public_key();
        let b_signature = b.origin_signer().sign(&digest);
        assert_eq!(
            verifier.verify(a.node_id(), &b_key, &digest, &b_signature),
            Err(OriginError::KeyMismatch)
        );
        let mut flipped = signature;
        flipped[10] ^= 1;
        assert_eq!(
            verifier.verify(a.node_id(), &key, &digest, &flipped),
            Err(OriginError::BadSignature)
        );
    }

    #[test]
    fn a_weak_key_is_refused_even_when_it_hashes_to_the_origin() {
        // The identity point (a small-order key): any "signature" might verify under it.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let origin = NodeId::from_public_key(&weak);
        let mut verifier = OriginVerifier::new();
        assert_eq!(
            verifier.verify(origin, &weak, &[0; 32], &[0; 64]),
            Err(OriginError::BadKey)
        );
    }
}
