//! [`Certificate`]: an X.509 certificate (DER inside, PEM on disk), and its [`Validity`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::spki::der::pem::{self, LineEnding};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::{self, CERT_MODE};
use super::IdentityError;
use crate::id::NodeId;

/// The DNS suffix of a node's subject alternative name: `<32 hex NodeId>.wendy`.
pub const NODE_DNS_SUFFIX: &str = "wendy";

/// The DNS subject alternative name a node certificate carries: `<NodeId hex>.wendy`.
///
/// A DNS name (not a URI) so it can also serve as the TLS server name when dialling a known id.
pub fn node_dns_name(id: NodeId) -> String {
    format!("{id}.{NODE_DNS_SUFFIX}")
}

/// A certificate's validity period (X.509 `notBefore` .. `notAfter`, second precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: SystemTime,
    /// Last instant the certificate is valid.
    pub not_after: SystemTime,
}

/// How far `not_before` is set in the past by [`Validity::days_from_now`], so that a peer whose
/// clock is a little behind accepts a certificate issued a moment ago.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

impl Validity {
    /// From one hour ago (clock-skew allowance) until `days` days from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(UNIX_EPOCH),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// Whether `at` lies within the period (both ends inclusive, like X.509).
    pub fn contains(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    fn to_offset(self) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
        if self.not_after <= self.not_before {
            return Err(IdentityError::BadValidity {
                reason: "not_after is not later than not_before".to_owned(),
            });
        }
        Ok((to_offset(self.not_before)?, to_offset(self.not_after)?))
    }
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, IdentityError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IdentityError::BadValidity {
            reason: "time before 1970".to_owned(),
        })?
        .as_secs();
    // X.509 times run to the year 9999.
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| IdentityError::BadValidity {
            reason: "time after the year 9999".to_owned(),
        })
}

/// A random positive 128-bit serial number (RFC 5280: at most 20 octets, positive, unique).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Parameters of a node (end-entity) certificate for `id`.
pub(crate) fn node_params(
    id: NodeId,
    validity: Validity,
) -> Result<CertificateParams, IdentityError> {
    let (not_before, not_after) = validity.to_offset()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, id.to_string());
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::DnsName(node_dns_name(id).try_into()?)];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every Wendy link is mutually authenticated: each node is both TLS client and server.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Parameters of a mesh CA certificate named `name`.
pub(crate) fn ca_params(
    name: &str,
    validity: Validity,
) -> Result<CertificateParams, IdentityError> {
    let (not_before, not_after) = validity.to_offset()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Wendy mesh CA");
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    // Path length 0: the mesh CA signs node certificates only, never sub-CAs.
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// An X.509 certificate (DER). Node certificates, CA certificates and foreign ones alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    der: CertificateDer<'static>,
}

impl Certificate {
    /// Wraps DER bytes (not parsed here; the accessors report malformed input).
    pub fn from_der(der: Vec<u8>) -> Self {
        Self {
            der: CertificateDer::from(der),
        }
    }

    /// The DER, as rustls wants it.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Parses a `-----BEGIN CERTIFICATE-----` PEM (the first one if there are several).
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::BadPem {
                path: None,
                what: "certificate",
                reason: e.to_string(),
            })?;
        let cert = Self { der };
        cert.parse()?;
        Ok(cert)
    }

    /// The certificate as PEM text.
    pub fn to_pem(&self) -> String {
        pem::encode_string("CERTIFICATE", LineEnding::LF, self.der.as_ref()).unwrap_or_else(|e| {
            // Only fails on length overflow, impossible for a DER held in memory.
            tracing::error!(error = %e, "cannot PEM-encode certificate");
            String::new()
        })
    }

    /// Loads a PEM certificate file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = files::read_text(path)?;
        Self::from_pem(&text).map_err(|e| e.in_file(path))
    }

    /// Saves the certificate as PEM (mode 0644). An existing file is an
    /// [`IdentityError::Exists`] unless `overwrite`.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), IdentityError> {
        files::write_new(path, self.to_pem().as_bytes(), CERT_MODE, overwrite)
    }

    /// The raw ed25519 subject public key; [`IdentityError::NotEd25519`] for other key types.
    pub fn ed25519_public_key(&self) -> Result<[u8; 32], IdentityError> {
        ed25519_public_key_of(self.der.as_ref())
    }

    /// The NodeId derived from the subject public key (never from the names in the certificate).
    pub fn node_id(&self) -> Result<NodeId, IdentityError> {
        Ok(NodeId::from_public_key(&self.ed25519_public_key()?))
    }

    /// The validity period written in the certificate.
    pub fn validity(&self) -> Result<Validity, IdentityError> {
        let cert = self.parse()?;
        let v = cert.validity();
        Ok(Validity {
            not_before: from_unix(v.not_before.timestamp()),
            not_after: from_unix(v.not_after.timestamp()),
        })
    }

    /// Whether the certificate is a CA (basicConstraints CA:TRUE).
    pub fn is_ca(&self) -> Result<bool, IdentityError> {
        let cert = self.parse()?;
        Ok(cert.is_ca())
    }

    /// The DNS names in the subject alternative name extension.
    pub fn dns_names(&self) -> Result<Vec<String>, IdentityError> {
        let cert = self.parse()?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| bad_cert(e.to_string()))?;
        Ok(san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(s) => Some((*s).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn parse(&self) -> Result<X509Certificate<'_>, IdentityError> {
        parse(self.der.as_ref())
    }
}

fn bad_cert(reason: String) -> IdentityError {
    IdentityError::BadCertificate { path: None, reason }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad_cert(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad_cert(format!("{} trailing bytes", rest.len())));
    }
    Ok(cert)
}

fn from_unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// The raw ed25519 subject public key of any X.509 DER certificate.
///
/// [`IdentityError::NotEd25519`] if the key is of another type (ECDSA, RSA, ...),
/// [`IdentityError::BadCertificate`] if the DER does not parse.
pub fn ed25519_public_key_of(der: &[u8]) -> Result<[u8; 32], IdentityError> {
    let cert = parse(der)?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(IdentityError::NotEd25519 {
            algorithm: spki.algorithm.algorithm.to_id_string(),
        });
    }
    <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref()).map_err(|_| {
        bad_cert(format!(
            "ed25519 public key is {} bytes, expected 32",
            spki.subject_public_key.data.len()
        ))
    })
}
