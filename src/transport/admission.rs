//! Admission policies: which authenticated peers may hold a link with this node.
//!
//! The policy is checked inside the TLS handshake, on both sides, by the verifiers in
//! [`super::verifier`]; a rejected peer never gets a connection and learns nothing of the
//! overlay. Every mode checks the certificate's validity period at handshake time and that its
//! key is ed25519 (the key the peer's [`NodeId`] is derived from).

use std::collections::HashSet;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::oid_registry::OID_SIG_ED25519;

use crate::id::NodeId;

/// Who may connect (and be connected to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Any peer with a currently valid ed25519 certificate (usually self-signed): an open mesh.
    Open,
    /// Only peers whose certificate chains to one of the mesh CA certificates in `roots` (a
    /// closed mesh; see `wendy ca init` / `wendy ca issue`).
    Ca {
        /// The mesh CA certificate(s) (DER).
        roots: Vec<CertificateDer<'static>>,
    },
    /// Only the listed node ids (certificates may be self-signed).
    AllowList(HashSet<NodeId>),
    /// Both: the certificate chains to a mesh CA *and* the node id is listed.
    CaAndAllowList {
        /// The mesh CA certificate(s) (DER).
        roots: Vec<CertificateDer<'static>>,
        /// The admitted node ids.
        allowed: HashSet<NodeId>,
    },
}

/// Why a peer's certificate was refused in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The peer presented no certificate (an unauthenticated client).
    #[error("it presented no certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("peer certificate is not valid x.509: {0}")]
    BadCertificate(String),
    /// The certificate's key is not ed25519, so no node id can be derived from it.
    #[error("peer certificate key is not ed25519 (algorithm {algorithm})")]
    NotEd25519 {
        /// The key's algorithm identifier (dotted OID).
        algorithm: String,
    },
    /// The certificate's validity period has ended.
    #[error("its certificate expired on {} (it needs a new one: `wendy ca issue`)", utc(*.not_after))]
    Expired {
        /// End of validity, seconds since the unix epoch.
        not_after: i64,
    },
    /// The certificate's validity period has not started.
    #[error("its certificate is not valid before {} (check both hosts' clocks)", utc(*.not_before))]
    NotYetValid {
        /// Start of validity, seconds since the unix epoch.
        not_before: i64,
    },
    /// The certificate does not chain to the mesh CA.
    #[error("its certificate is not issued by this node's mesh CA (the two sides have different CAs: check --ca and --cert on both)")]
    UnknownIssuer,
    /// The certificate chain is otherwise invalid.
    #[error("peer certificate chain is invalid: {0}")]
    InvalidChain(String),
    /// We dialled a specific node id and the peer's key hashes to another.
    #[error("expected node {expected} but the peer's key is node {presented}")]
    NodeIdMismatch {
        /// The id we dialled.
        expected: NodeId,
        /// The id the presented key hashes to.
        presented: NodeId,
    },
    /// The peer is not on the allow-list.
    #[error("node {0} is not on this node's allow-list (add it there with --allow {0})")]
    NotAllowed(NodeId),
    /// The handshake signature does not verify with the certificate's key (or uses a scheme
    /// other than ed25519).
    #[error("peer handshake signature is invalid")]
    BadSignature,
    /// The peer did not negotiate the `wendy/1` application protocol.
    #[error("peer did not negotiate alpn wendy/1")]
    WrongAlpn,
}

/// Which end of the handshake the checked certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRole {
    /// The peer is the server (we dialled).
    Server,
    /// The peer is the client (it dialled us).
    Client,
}

impl Admission {
    /// Checks a presented certificate chain at time `now`; returns the peer's node id.
    ///
    /// `expected` is the node id we dialled, if any; a mismatch is reported before the policy so
    /// the error says what went wrong.
    pub(crate) fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
        expected: Option<NodeId>,
    ) -> Result<NodeId, AuthError> {
        let presented = node_id_of_certificate(end_entity, now)?;
        if let Some(expected) = expected {
            if expected != presented {
                return Err(AuthError::NodeIdMismatch {
                    expected,
                    presented,
                });
            }
        }
        match self {
            Self::Open => {}
            Self::Ca { roots } => check_chain(roots, end_entity, intermediates, now, role)?,
            Self::AllowList(allowed) => check_listed(allowed, presented)?,
            Self::CaAndAllowList { roots, allowed } => {
                check_chain(roots, end_entity, intermediates, now, role)?;
                check_listed(allowed, presented)?;
            }
        }
        Ok(presented)
    }
}

/// Parses `der`, checks its key is ed25519 and that it is valid at `now`; returns the node id
/// its key hashes to.
pub(crate) fn node_id_of_certificate(
    der: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<NodeId, AuthError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|error| AuthError::BadCertificate(error.to_string()))?;
    let spki = certificate.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return Err(AuthError::NotEd25519 {
            algorithm: spki.algorithm.algorithm.to_id_string(),
        });
    }
    let key: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| AuthError::BadCertificate("ed25519 public key is not 32 bytes".to_string()))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = certificate.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(AuthError::NotYetValid { not_before });
    }
    if now > not_after {
        return Err(AuthError::Expired { not_after });
    }
    Ok(NodeId::from_public_key(&key))
}

/// `seconds` since the Unix epoch as a UTC date and time, for error messages.
fn utc(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} s after the Unix epoch"))
}

fn check_listed(allowed: &HashSet<NodeId>, id: NodeId) -> Result<(), AuthError> {
    if allowed.contains(&id) {
        Ok(())
    } else {
        Err(AuthError::NotAllowed(id))
    }
}

fn check_chain(
    roots: &[CertificateDer<'static>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<(), AuthError> {
    let anchors = roots
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect::<Vec<_>>();
    let certificate = EndEntityCert::try_from(end_entity)
        .map_err(|error| AuthError::BadCertificate(error.to_string()))?;
    let usage = match role {
        PeerRole::Server => KeyUsage::server_auth(),
        PeerRole::Client => KeyUsage::client_auth(),
    };
    certificate
        .verify_for_usage(
            &[webpki::ring::ED25519],
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|error| match error {
            // A chain that names the mesh CA but was signed by another key is a certificate from
            // another mesh whose CA has the same name (every `wendy ca init` defaults to one).
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                AuthError::UnknownIssuer
            }
            webpki::Error::CertExpired { not_after, .. } => AuthError::Expired {
                not_after: i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX),
            },
            webpki::Error::CertNotValidYet { not_before, .. } => AuthError::NotYetValid {
                not_before: i64::try_from(not_before.as_secs()).unwrap_or(i64::MAX),
            },
            other => AuthError::InvalidChain(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::identity::{Certificate, Identity, MeshCa, Validity};

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
    }

    fn shifted(days_before: u32, days_after: u32, past: bool) -> Validity {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        if past {
            Validity {
                not_before: now - day * days_before,
                not_after: now - day * days_after,
            }
        } else {
            Validity {
                not_before: now + day * days_before,
                not_after: now + day * days_after,
            }
        }
    }

    fn self_signed(identity: &Identity) -> Certificate {
        identity
            .self_signed_certificate(Validity::days_from_now(1))
            .unwrap()
    }

    fn check(
        admission: &Admission,
        certificate: &Certificate,
        expected: Option<NodeId>,
    ) -> Result<NodeId, AuthError> {
        admission.check(certificate.der(), &[], now(), PeerRole::Client, expected)
    }

    #[test]
    fn open_admits_any_valid_ed25519_certificate_and_derives_its_id() {
        let identity = Identity::generate();
        assert_eq!(
            check(&Admission::Open, &self_signed(&identity), None),
            Ok(identity.node_id())
        );
    }

    #[test]
    fn validity_dates_are_checked_in_every_mode() {
        let identity = Identity::generate();
        let expired = identity
            .self_signed_certificate(shifted(10, 1, true))
            .unwrap();
        let early = identity
            .self_signed_certificate(shifted(1, 10, false))
            .unwrap();
        assert!(matches!(
            check(&Admission::Open, &expired, None),
            Err(AuthError::Expired { .. })
        ));
        assert!(matches!(
            check(&Admission::Open, &early, None),
            Err(AuthError::NotYetValid { .. })
        ));
    }

    #[test]
    fn ca_mode_admits_only_certificates_of_the_mesh_ca() {
        let mesh = MeshCa::generate("mesh", Validity::days_from_now(10)).unwrap();
        let other = MeshCa::generate("other", Validity::days_from_now(10)).unwrap();
        let admission = Admission::Ca {
            roots: vec![mesh.certificate().der().clone()],
        };
        let node = Identity::generate();
        let issued = mesh
            .issue(&node.public_key(), Validity::days_from_now(1))
            .unwrap();
        let foreign = other
            .issue(&node.public_key(), Validity::days_from_now(1))
            .unwrap();
        assert_eq!(check(&admission, &issued, None), Ok(node.node_id()));
        assert_eq!(
            check(&admission, &foreign, None),
            Err(AuthError::UnknownIssuer)
        );
        assert_eq!(
            check(&admission, &self_signed(&node), None),
            Err(AuthError::UnknownIssuer)
        );
        // Server role too (the verifier of a dialling node).
        assert_eq!(
            admission.check(issued.der(), &[], now(), PeerRole::Server, None),
            Ok(node.node_id())
        );
    }

    #[test]
    fn allow_list_admits_only_listed_ids() {
        let listed = Identity::generate();
        let stranger = Identity::generate();
        let admission = Admission::AllowList(HashSet::from([listed.node_id()]));
        assert_eq!(
            check(&admission, &self_signed(&listed), None),
            Ok(listed.node_id())
        );
        assert_eq!(
            check(&admission, &self_signed(&stranger), None),
            Err(AuthError::NotAllowed(stranger.node_id()))
        );
    }

    #[test]
    fn expected_id_mismatch_is_reported_before_the_policy() {
        let node = Identity::generate();
        let expected = Identity::generate().node_id();
        let admission = Admission::AllowList(HashSet::new());
        assert_eq!(
            check(&admission, &self_signed(&node), Some(expected)),
            Err(AuthError::NodeIdMismatch {
                expected,
                presented: node.node_id()
            })
        );
    }

    #[test]
    fn non_ed25519_and_garbage_certificates_are_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p256 = rcgen::CertificateParams::new(vec!["p256".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let p256 = Certificate::from_der(p256.der().to_vec());
        assert_eq!(
            check(&Admission::Open, &p256, None),
            Err(AuthError::NotEd25519 {
                algorithm: "1.2.840.10045.2.1".to_string()
            })
        );
        let garbage = Certificate::from_der(vec![0x30, 0x03, 0x01, 0x02, 0x03]);
        assert!(matches!(
            check(&Admission::Open, &garbage, None),
            Err(AuthError::BadCertificate(_))
        ));
    }
}
