//! Signed service records: who provides a service, where, until when.
//!
//! A record is signed by the provider's node key (ed25519) and carries the public key, so any
//! reader checks it alone: the key must hash to the provider's [`NodeId`] and the signature must
//! verify. Nodes that store records (the registry) and nodes that read them (consumers) both
//! check; a forged or tampered record is refused with a [`RecordError`].

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::identity::Identity;

/// Domain separation for record signatures: a record signature never verifies as anything else.
const SIGNING_CONTEXT: &[u8] = b"wendy-mesh-record/1\0";

/// The longest service name accepted (bytes).
pub const MAX_NAME_LEN: usize = 200;

/// One provider of one service: the signed part of a [`SignedRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service name (see [`validate_name`]).
    pub name: String,
    /// The providing node.
    pub provider: NodeId,
    /// The provider's ed25519 public key; its blake3 hash must give `provider`.
    pub public_key: [u8; 32],
    /// The provider's overlay (QUIC) address, where tunnels are opened.
    pub addr: SocketAddr,
    /// When the record stops being valid, in milliseconds since the Unix epoch (providers
    /// republish well before). A record whose expiry is already past when it is published is a
    /// withdrawal ("tombstone").
    pub expires_unix_ms: u64,
    /// Increases with every record the provider signs for this name: a store keeps the highest.
    pub sequence: u64,
}

/// A [`ServiceRecord`] with the provider's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The record.
    pub record: ServiceRecord,
    /// ed25519 signature by `record.public_key` over the record's encoding.
    #[serde(with = "crate::wire::byte_buf")]
    pub signature: Vec<u8>,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The public key in the record does not hash to the provider id it claims.
    #[error("record for {name:?} claims provider {claimed} but its key belongs to {derived}")]
    ProviderMismatch {
        /// The service name.
        name: String,
        /// The provider the record claims.
        claimed: NodeId,
        /// The node id of the key it carries.
        derived: NodeId,
    },
    /// The public key is not a valid ed25519 point.
    #[error("record for {name:?} carries an invalid ed25519 key")]
    BadKey {
        /// The service name.
        name: String,
    },
    /// The signature does not verify with the record's key.
    #[error("record for {name:?} from {provider} has a bad signature")]
    BadSignature {
        /// The service name.
        name: String,
        /// The provider it claims.
        provider: NodeId,
    },
    /// The record's expiry has passed.
    #[error("record for {name:?} from {provider} expired {ago_ms} ms ago")]
    Expired {
        /// The service name.
        name: String,
        /// The provider.
        provider: NodeId,
        /// How long ago it expired.
        ago_ms: u64,
    },
    /// The record's expiry is further in the future than any provider may ask for (a record
    /// that would never expire).
    #[error("record for {name:?} from {provider} expires more than {max_ttl_ms} ms from now")]
    TooFarInFuture {
        /// The service name.
        name: String,
        /// The provider.
        provider: NodeId,
        /// The longest lifetime accepted.
        max_ttl_ms: u64,
    },
    /// The service name is empty, too long or has characters outside the allowed set.
    #[error("bad service name {0:?}: use 1-200 characters among a-z A-Z 0-9 . _ - : /")]
    BadName(String),
    /// The record could not be encoded (never expected).
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// Checks a service name: 1 to [`MAX_NAME_LEN`] characters among ASCII letters, digits and
/// `. _ - : /` (no spaces, no `=`, so `NAME=HOST:PORT` flags parse unambiguously).
pub fn validate_name(name: &str) -> Result<(), RecordError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadName(name.to_owned()))
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ServiceRecord {
    /// A record for `name` provided by `identity`'s node at `addr`.
    pub fn new(
        identity: &Identity,
        name: &str,
        addr: SocketAddr,
        expires_unix_ms: u64,
        sequence: u64,
    ) -> Result<Self, RecordError> {
        validate_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            provider: identity.node_id(),
            public_key: identity.public_key().to_bytes(),
            addr,
            expires_unix_ms,
            sequence,
        })
    }

    /// Signs the record with `identity` (which must be the provider's: otherwise readers refuse
    /// it with [`RecordError::ProviderMismatch`] or [`RecordError::BadSignature`]).
    pub fn sign(self, identity: &Identity) -> Result<SignedRecord, RecordError> {
        let signature = identity.sign(&self.signing_bytes()?).to_bytes().to_vec();
        Ok(SignedRecord {
            record: self,
            signature,
        })
    }

    /// Whether the record's expiry is at or before `now_unix_ms`.
    pub fn is_expired(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms <= now_unix_ms
    }

    fn signing_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let body = postcard::to_stdvec(self).map_err(|e| RecordError::Encode(e.to_string()))?;
        let mut bytes = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
        bytes.extend_from_slice(SIGNING_CONTEXT);
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }
}

impl SignedRecord {
    /// Checks the name, that the key hashes to the provider id, and the signature; does not
    /// look at the expiry (stores keep withdrawals, see [`ServiceRecord::expires_unix_ms`]).
    pub fn verify_signature(&self) -> Result<&ServiceRecord, RecordError> {
        let record = &self.record;
        validate_name(&record.name)?;
        let derived = NodeId::from_public_key(&record.public_key);
        if derived != record.provider {
            return Err(RecordError::ProviderMismatch {
                name: record.name.clone(),
                claimed: record.provider,
                derived,
            });
        }
        let key =
            VerifyingKey::from_bytes(&record.public_key).map_err(|_| RecordError::BadKey {
                name: record.name.clone(),
            })?;
        let bad_signature = || RecordError::BadSignature {
            name: record.name.clone(),
            provider: record.provider,
        };
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| bad_signature())?;
        key.verify_strict(&record.signing_bytes()?, &Signature::from_bytes(&signature))
            .map_err(|_| bad_signature())?;
        Ok(record)
    }

    /// Refuses a record whose expiry is more than `max_ttl_ms` after `now_unix_ms`.
    pub fn check_lifetime(&self, now_unix_ms: u64, max_ttl_ms: u64) -> Result<(), RecordError> {
        let record = &self.record;
        if record.expires_unix_ms > now_unix_ms.saturating_add(max_ttl_ms) {
            return Err(RecordError::TooFarInFuture {
                name: record.name.clone(),
                provider: record.provider,
                max_ttl_ms,
            });
        }
        Ok(())
    }

    /// Everything a reader checks: [`Self::verify_signature`], then that the record has not
    /// expired at `now_unix_ms`.
    pub fn verify(&self, now_unix_ms: u64) -> Result<&ServiceRecord, RecordError> {
        let record = self.verify_signature()?;
        if record.is_expired(now_unix_ms) {
            return Err(RecordError::Expired {
                name: record.name.clone(),
                provider: record.provider,
                ago_ms: now_unix_ms - record.expires_unix_ms,
            });
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    fn signed(identity: &Identity) -> SignedRecord {
        ServiceRecord::new(identity, "web", addr(), NOW + 60_000, 1)
            .unwrap()
            .sign(identity)
            .unwrap()
    }

    #[test]
    fn a_fresh_record_verifies() {
        let id = Identity::from_seed([1; 32]);
        let record = signed(&id);
        let checked = record.verify(NOW).unwrap();
        assert_eq!(checked.provider, id.node_id());
        assert_eq!(checked.name, "web");
    }

    #[test]
    fn a_record_whose_key_is_not_the_providers_is_refused() {
        // Mallory signs a record claiming to be Alice's node (her own key inside).
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        let mut record = ServiceRecord::new(&mallory, "web", addr(), NOW + 60_000, 1).unwrap();
        record.provider = alice.node_id();
        let forged = record.sign(&mallory).unwrap();
        assert_eq!(
            forged.verify(NOW),
            Err(RecordError::ProviderMismatch {
                name: "web".into(),
                claimed: alice.node_id(),
                derived: mallory.node_id(),
            })
        );
    }

    #[test]
    fn a_record_signed_by_another_key_is_refused() {
        // Alice's key inside, Mallory's signature.
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        let forged = ServiceRecord::new(&alice, "web", addr(), NOW + 60_000, 1)
            .unwrap()
            .sign(&mallory)
            .unwrap();
        assert!(matches!(
            forged.verify(NOW),
            Err(RecordError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_tampered_record_is_refused() {
        let alice = Identity::from_seed([1; 32]);
        let mut record = signed(&alice);
        record.record.addr = "10.0.0.66:22".parse().unwrap();
        assert!(matches!(
            record.verify(NOW),
            Err(RecordError::BadSignature { .. })
        ));
        let mut record = signed(&alice);
        record.record.expires_unix_ms += 1;
        assert!(matches!(
            record.verify(NOW),
            Err(RecordError::BadSignature { .. })
        ));
        let mut record = signed(&alice);
        record.signature.pop();
        assert!(matches!(
            record.verify(NOW),
            Err(RecordError::BadSignature { .. })
        ));
    }

    #[test]
    fn an_expired_record_is_refused_but_its_signature_still_checks() {
        let alice = Identity::from_seed([1; 32]);
        let record = signed(&alice);
        assert_eq!(
            record.verify(NOW + 60_000 + 5),
            Err(RecordError::Expired {
                name: "web".into(),
                provider: alice.node_id(),
                ago_ms: 5,
            })
        );
        assert!(record.verify_signature().is_ok());
    }

    #[test]
    fn a_record_that_would_never_expire_is_refused() {
        let alice = Identity::from_seed([1; 32]);
        let record = ServiceRecord::new(&alice, "web", addr(), u64::MAX, 1)
            .unwrap()
            .sign(&alice)
            .unwrap();
        assert!(record.verify(NOW).is_ok(), "well signed");
        assert_eq!(
            record.check_lifetime(NOW, 3_600_000),
            Err(RecordError::TooFarInFuture {
                name: "web".into(),
                provider: alice.node_id(),
                max_ttl_ms: 3_600_000,
            })
        );
        assert!(signed(&alice).check_lifetime(NOW, 60_000).is_ok());
    }

    #[test]
    fn names_are_checked() {
        for good in ["web", "db.prod:5432", "a/b-c_d", &"x".repeat(MAX_NAME_LEN)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a=b", "é", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let alice = Identity::from_seed([1; 32]);
        assert!(ServiceRecord::new(&alice, "a b", addr(), NOW, 1).is_err());
    }
}
