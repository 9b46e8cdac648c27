//! Relay records: the signed statement of a private node saying which relays reach it.
//!
//! A private node cannot be dialled at an address of its own, so its
//! [`PeerInfo`](crate::pastry::PeerInfo) carries a synthetic address ([`super::synthetic_addr`]) and the
//! node hands out a [`RelayRecord`] naming the relays it is homed on. The record is signed by
//! the node's ed25519 key under a context no other Wendy signature uses, carries the key (which
//! must hash to the node's id), a sequence number (a reader keeps the highest) and an expiry,
//! and is at most [`MAX_RECORD_SIZE`] bytes encoded. A reader checks all of that before it
//! dials a relay on the record's word; a record that fails gets a [`RelayRecordError`].
//!
//! A record that names no relay is **direct**: the node signs one when it turns public again
//! ([`RelayRecord::is_direct`]). Its higher sequence number replaces the relayed record at every
//! holder, and holders keep it (not its relays: it has none) so that an older relayed record
//! arriving later cannot bring the relays back.

use std::net::SocketAddr;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::identity::Identity;

/// Domain separation: a relay record's signature never verifies as any other signed object.
const SIGNING_CONTEXT: &[u8] = b"wendy-relay-record/1\0";

/// The largest encoded record accepted (bytes): room for [`MAX_RELAYS`] IPv6 relays.
pub const MAX_RECORD_SIZE: usize = 512;

/// The most relays one record may name.
pub const MAX_RELAYS: usize = 4;

/// The longest lifetime a record may claim (a reader refuses one that expires later): 1 hour.
pub const MAX_TTL_MS: u64 = 3_600_000;

/// One relay in a record: its id (checked by TLS when dialled) and its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayEntry {
    /// The relay's node id.
    pub id: NodeId,
    /// The relay's address.
    pub addr: SocketAddr,
}

/// The signed part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// The private node.
    pub node: NodeId,
    /// Its ed25519 public key; its blake3 hash must give `node`.
    pub public_key: [u8; 32],
    /// Increases with every record the node signs: a reader keeps the highest.
    pub sequence: u64,
    /// When the record stops being valid, in milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// The relays the node is homed on, preferred first (at most [`MAX_RELAYS`]); none in a
    /// direct record (the node is public again and dialled at its own address).
    pub relays: Vec<RelayEntry>,
}

/// A [`RelayRecord`] with the node's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRelayRecord {
    /// The record.
    pub record: RelayRecord,
    /// ed25519 signature by `record.public_key` over the context and the record's encoding.
    #[serde(with = "crate::wire::byte_buf")]
    pub signature: Vec<u8>,
}

/// Why a relay record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayRecordError {
    /// The encoded record is larger than [`MAX_RECORD_SIZE`].
    #[error("relay record of {len} bytes exceeds the maximum of {MAX_RECORD_SIZE}")]
    Oversized {
        /// Its length.
        len: usize,
    },
    /// The bytes are not a record.
    #[error("malformed relay record: {0}")]
    Malformed(String),
    /// The record names more than [`MAX_RELAYS`] relays.
    #[error("relay record for {node} names {count} relays (at most {MAX_RELAYS} allowed)")]
    RelayCount {
        /// The node.
        node: NodeId,
        /// How many it names.
        count: usize,
    },
    /// The key in the record does not hash to the node id it claims.
    #[error("relay record claims node {claimed} but its key belongs to {derived}")]
    NodeMismatch {
        /// The id claimed.
        claimed: NodeId,
        /// The id of the key carried.
        derived: NodeId,
    },
    /// The key is not a valid ed25519 point.
    #[error("relay record for {0} carries an invalid ed25519 key")]
    BadKey(NodeId),
    /// The signature does not verify.
    #[error("relay record for {0} has a bad signature")]
    BadSignature(NodeId),
    /// The record's expiry has passed.
    #[error("relay record for {node} expired {ago_ms} ms ago")]
    Expired {
        /// The node.
        node: NodeId,
        /// How long ago.
        ago_ms: u64,
    },
    /// The record claims a lifetime longer than [`MAX_TTL_MS`].
    #[error("relay record for {0} expires more than {MAX_TTL_MS} ms from now")]
    TooFarInFuture(NodeId),
}

impl RelayRecord {
    /// A record for `identity`'s node naming `relays`.
    pub fn new(
        identity: &Identity,
        relays: Vec<RelayEntry>,
        sequence: u64,
        expires_unix_ms: u64,
    ) -> Self {
        Self {
            node: identity.node_id(),
            public_key: identity.public_key().to_bytes(),
            sequence,
            expires_unix_ms,
            relays,
        }
    }

    /// Whether the record says the node is dialled directly (it names no relay): it withdraws
    /// the node's earlier relayed records.
    pub fn is_direct(&self) -> bool {
        self.relays.is_empty()
    }

    /// Signs the record with `identity` (the node's own key, or readers refuse it).
    pub fn sign(self, identity: &Identity) -> SignedRelayRecord {
        let signature = identity.sign(&self.signing_bytes()).to_bytes().to_vec();
        SignedRelayRecord {
            record: self,
            signature,
        }
    }

    fn signing_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        // Encoding a struct of plain fields into a Vec cannot fail.
        bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        bytes
    }
}

impl SignedRelayRecord {
    /// The record's encoding, as carried in [`crate::wire::Body::RelayRecord`].
    pub fn encode(&self) -> Vec<u8> {
        // Plain fields into a Vec: cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and checks a record: its size, its relay count, that its key hashes to its
    /// node id, its signature, and its expiry against `now_unix_ms`.
    pub fn decode_verified(bytes: &[u8], now_unix_ms: u64) -> Result<Self, RelayRecordError> {
        if bytes.len() > MAX_RECORD_SIZE {
            return Err(RelayRecordError::Oversized { len: bytes.len() });
        }
        let signed: Self = postcard::from_bytes(bytes)
            .map_err(|error| RelayRecordError::Malformed(error.to_string()))?;
        signed.verify(now_unix_ms)?;
        Ok(signed)
    }

    /// Checks the record (see [`Self::decode_verified`]).
    pub fn verify(&self, now_unix_ms: u64) -> Result<(), RelayRecordError> {
        let record = &self.record;
        let node = record.node;
        if record.relays.len() > MAX_RELAYS {
            return Err(RelayRecordError::RelayCount {
                node,
                count: record.relays.len(),
            });
        }
        let derived = NodeId::from_public_key(&record.public_key);
        if derived != node {
            return Err(RelayRecordError::NodeMismatch {
                claimed: node,
                derived,
            });
        }
        let key = VerifyingKey::from_bytes(&record.public_key)
            .map_err(|_| RelayRecordError::BadKey(node))?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| RelayRecordError::BadSignature(node))?;
        key.verify_strict(&record.signing_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| RelayRecordError::BadSignature(node))?;
        if record.expires_unix_ms <= now_unix_ms {
            return Err(RelayRecordError::Expired {
                node,
                ago_ms: now_unix_ms - record.expires_unix_ms,
            });
        }
        if record.expires_unix_ms - now_unix_ms > MAX_TTL_MS {
            return Err(RelayRecordError::TooFarInFuture(node));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn relays(n: usize) -> Vec<RelayEntry> {
        (0..n)
            .map(|i| RelayEntry {
                id: Identity::generate().node_id(),
                addr: SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16)),
            })
            .collect()
    }

    #[test]
    fn a_signed_record_verifies_and_round_trips() {
        let identity = Identity::generate();
        let signed = RelayRecord::new(&identity, relays(2), 7, NOW + 60_000).sign(&identity);
        let decoded = SignedRelayRecord::decode_verified(&signed.encode(), NOW).unwrap();
        assert_eq!(decoded, signed);
        assert!(signed.encode().len() <= MAX_RECORD_SIZE);
    }

    #[test]
    fn a_record_signed_by_another_key_is_forged() {
        let identity = Identity::generate();
        let forger = Identity::generate();
        let mut record = RelayRecord::new(&identity, relays(2), 1, NOW + 60_000);
        let signed = record.clone().sign(&forger);
        assert_eq!(
            SignedRelayRecord::decode_verified(&signed.encode(), NOW),
            Err(RelayRecordError::BadSignature(identity.node_id()))
        );
        // Carrying the forger's key instead makes the key and the claimed id disagree.
        record.public_key = forger.public_key().to_bytes();
        let signed = record.sign(&forger);
        assert!(matches!(
            signed.verify(NOW),
            Err(RelayRecordError::NodeMismatch { .. })
        ));
    }

    #[test]
    fn a_tampered_relay_list_breaks_the_signature() {
        let identity = Identity::generate();
        let mut signed = RelayRecord::new(&identity, relays(2), 1, NOW + 60_000).sign(&identity);
        signed.record.relays[0].addr = SocketAddr::from(([10, 0, 0, 1], 1));
        assert_eq!(
            signed.verify(NOW),
            Err(RelayRecordError::BadSignature(identity.node_id()))
        );
    }

    #[test]
    fn expired_and_far_future_records_are_refused() {
        let identity = Identity::generate();
        let expired = RelayRecord::new(&identity, relays(1), 1, NOW - 5).sign(&identity);
        assert_eq!(
            expired.verify(NOW),
            Err(RelayRecordError::Expired {
                node: identity.node_id(),
                ago_ms: 5
            })
        );
        let forever =
            RelayRecord::new(&identity, relays(1), 1, NOW + MAX_TTL_MS + 1).sign(&identity);
        assert_eq!(
            forever.verify(NOW),
            Err(RelayRecordError::TooFarInFuture(identity.node_id()))
        );
    }

    #[test]
    fn oversized_records_and_too_many_relays_are_refused() {
        let identity = Identity::generate();
        let big = vec![0u8; MAX_RECORD_SIZE + 1];
        assert_eq!(
            SignedRelayRecord::decode_verified(&big, NOW),
            Err(RelayRecordError::Oversized {
                len: MAX_RECORD_SIZE + 1
            })
        );
        let many =
            RelayRecord::new(&identity, relays(MAX_RELAYS + 1), 1, NOW + 1000).sign(&identity);
        assert!(matches!(
            many.verify(NOW),
            Err(RelayRecordError::RelayCount { count, .. }) if count == MAX_RELAYS + 1
        ));
        // No relay at all is a direct record, which verifies.
        let direct = RelayRecord::new(&identity, Vec::new(), 1, NOW + 1000).sign(&identity);
        assert_eq!(direct.verify(NOW), Ok(()));
        assert!(direct.record.is_direct());
        assert!(matches!(
            SignedRelayRecord::decode_verified(&[1, 2, 3], NOW),
            Err(RelayRecordError::Malformed(_))
        ));
    }
}
