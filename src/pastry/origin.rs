//! Authenticated origins: the proof a routed message carries of the node that first routed it,
//! and the pluggable [`OriginAuth`] that makes and checks those proofs.
//!
//! The core computes what is signed ([`route_digest`]: a domain-separated blake3 digest of the
//! origin's id, the message id, the key and the payload) and decides when to check it; the
//! cryptography is the authenticator's. The node runtime installs one backed by the node's
//! ed25519 identity key; the simulator and most unit tests run without one (see
//! [`Pastry::set_origin_auth`]).
//!
//! # When proofs are checked
//!
//! * The origin signs every message it sends to a peer, except one sent to the key's root by
//!   its own leaf set: a root needs no proof from the origin itself. If the leaf sets disagree
//!   and that peer would pass the message on, it answers [`Message::ProofWanted`] instead (it
//!   neither passes the message on nor acknowledges it), and the origin, which still holds the
//!   message, signs it and sends it again. The cost of a wrong guess is one round trip.
//! * A hop receiving a message from its origin itself (the previous hop is the origin: the
//!   link's TLS identity proves it) accepts it without checking the signature. So a badly
//!   signed message from a lying origin is dropped by the second hop, which names the first
//!   (an honest node that only passed it on): attribution is exact from the second hop on.
//! * Every other hop checks it before anything else: before the duplicate filter records the
//!   `(origin, id)` pair, before delivery, before taking custody of it. So an honest node never
//!   passes a forged origin on, and a forgery is dropped at the first honest node it reaches,
//!   which names its previous hop ([`Event::OriginRejected`]) and releases that hop
//!   (`RouteAck { done: true }`): an honest hop that passed on a message its origin signed
//!   badly is not made to re-route it or to distrust us.
//! * A message whose forward hook changed its payload ([`ForwardVerdict::Modified`]) no longer
//!   matches its origin's signature: the hop that changed it routes it on as its own message
//!   (it becomes the origin, with a fresh id), so the root reports who vouches for the bytes it
//!   delivers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{Key, NodeId};

#[cfg(doc)]
use super::{Event, ForwardVerdict, Message, Pastry};

/// The blake3 `derive_key` context of [`route_digest`]: a signature over a routed message can
/// never be mistaken for one over anything else the key signs (certificates, TLS handshakes).
pub const ROUTE_DIGEST_CONTEXT: &str = "wendy route origin v1";

/// What the origin of a routed message signs: blake3 in `derive_key` mode
/// ([`ROUTE_DIGEST_CONTEXT`]) over the origin's id (16 bytes), the message id (8 bytes, little
/// endian), the key (16 bytes) and the payload. The fixed-size fields come first, so the
/// payload's length needs no prefix.
pub fn route_digest(origin: NodeId, id: u64, key: Key, payload: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(ROUTE_DIGEST_CONTEXT);
    hasher.update(&origin.to_bytes());
    hasher.update(&id.to_le_bytes());
    hasher.update(&key.to_bytes());
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// The proof of a routed message's origin: the origin's ed25519 public key (whose blake3 must
/// give the origin's [`NodeId`]) and its signature over [`route_digest`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OriginProof {
    /// The origin's ed25519 public key.
    pub public_key: [u8; 32],
    /// The ed25519 signature over the digest.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl fmt::Debug for OriginProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        f.debug_struct("OriginProof")
            .field("public_key", &hex(&self.public_key))
            .field("signature", &hex(&self.signature[..8]))
            .finish()
    }
}

/// Why a routed message's origin was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The message carries no proof, and its previous hop is not its origin.
    #[error("no origin signature, and the sender is not the origin")]
    Missing,
    /// The proof's public key does not hash to the claimed origin's id.
    #[error("the proof's public key does not hash to the claimed origin")]
    KeyMismatch,
    /// The proof's public key is not a valid ed25519 point.
    #[error("the proof's public key is not a valid ed25519 key")]
    BadKey,
    /// The signature does not verify over the message's origin, id, key and payload.
    #[error("the origin signature does not match the message")]
    BadSignature,
}

/// Makes and checks [`OriginProof`]s for one node. Installed with
/// [`Pastry::set_origin_auth`]; the core calls it on the routing path, so both calls should be
/// quick (cache what can be cached, such as decoded public keys).
pub trait OriginAuth: Send + fmt::Debug {
    /// Signs `digest` (a [`route_digest`] of a message this node originates) with this node's
    /// key.
    fn sign(&mut self, digest: &[u8; 32]) -> OriginProof;

    /// Checks that `proof` was made by `origin` over `digest`: its public key hashes to
    /// `origin`, and its signature verifies.
    fn verify(
        &mut self,
        origin: NodeId,
        digest: &[u8; 32],
        proof: &OriginProof,
    ) -> Result<(), ProofError>;
}

/// Serde for a 64-byte array as a fixed-size tuple (no length prefix in postcard; serde's own
/// array impls stop at 32 elements).
mod sig_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &[u8; 64],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(64)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 64], D::Error> {
        deserializer.deserialize_tuple(64, SigVisitor)
    }

    struct SigVisitor;

    impl<'de> Visitor<'de> for SigVisitor {
        type Value = [u8; 64];

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("64 signature bytes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut bytes = [0u8; 64];
            for (index, byte) in bytes.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(index, &self))?;
            }
            Ok(bytes)
        }
    }
}

/// A cheap deterministic stand-in for a real authenticator, for the core's unit tests: node
/// `n`'s "public key" is its id followed by 16 zero bytes, and its "signature" a keyed blake3
/// of the digest under that key. It checks the same things a real one does (the key belongs to
/// the origin, the signature covers the digest), without the cryptographic cost; it is no
/// protection at all against anyone who knows the rule.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct FakeAuth {
    pub(crate) me: NodeId,
}

#[cfg(test)]
impl FakeAuth {
    /// The fake public key of `id`.
    pub(crate) fn public_key_of(id: NodeId) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&id.to_bytes());
        key
    }

    /// The proof `id` would make over `digest`.
    pub(crate) fn proof_of(id: NodeId, digest: &[u8; 32]) -> OriginProof {
        let public_key = Self::public_key_of(id);
        let mac = blake3::keyed_hash(&public_key, digest);
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(mac.as_bytes());
        OriginProof {
            public_key,
            signature,
        }
    }
}

#[cfg(test)]
impl OriginAuth for FakeAuth {
    fn sign(&mut self, digest: &[u8; 32]) -> OriginProof {
        Self::proof_of(self.me, digest)
    }

    fn verify(
        &mut self,
        origin: NodeId,
        digest: &[u8; 32],
        proof: &OriginProof,
    ) -> Result<(), ProofError> {
        if proof.public_key != Self::public_key_of(origin) {
            return Err(ProofError::KeyMismatch);
        }
        if proof.signature != Self::proof_of(origin, digest).signature {
            return Err(ProofError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_every_signed_field() {
        let base = route_digest(NodeId::from_u128(1), 2, Key::from_u128(3), b"pay");
        assert_ne!(
            base,
            route_digest(NodeId::from_u128(9), 2, Key::from_u128(3), b"pay")
        );
        assert_ne!(
            base,
            route_digest(NodeId::from_u128(1), 9, Key::from_u128(3), b"pay")
        );
        assert_ne!(
            base,
            route_digest(NodeId::from_u128(1), 2, Key::from_u128(9), b"pay")
        );
        assert_ne!(
            base,
            route_digest(NodeId::from_u128(1), 2, Key::from_u128(3), b"paY")
        );
        // Domain separation: not the plain hash of the same bytes.
        let mut plain = Vec::new();
        plain.extend_from_slice(&NodeId::from_u128(1).to_bytes());
        plain.extend_from_slice(&2u64.to_le_bytes());
        plain.extend_from_slice(&Key::from_u128(3).to_bytes());
        plain.extend_from_slice(b"pay");
        assert_ne!(&base, blake3::hash(&plain).as_bytes());
    }

    #[test]
    fn a_proof_encodes_in_96_bytes() {
        let proof = FakeAuth::proof_of(NodeId::from_u128(5), &[7; 32]);
        let bytes = postcard::to_allocvec(&proof).unwrap();
        assert_eq!(bytes.len(), 96);
        let back: OriginProof = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, proof);
        assert!(postcard::from_bytes::<OriginProof>(&bytes[..95]).is_err());
    }
}
