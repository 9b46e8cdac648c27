//! [`MeshCa`]: the certificate authority of a closed mesh.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rcgen::Issuer;

use super::cert::{ca_params, node_params, Certificate, Validity};
use super::key::RcgenPublicKey;
use super::{Identity, IdentityError};
use crate::id::NodeId;

/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";

/// A mesh CA: an ed25519 key and its self-signed CA certificate (CA:TRUE, pathlen 0,
/// keyCertSign). It signs node certificates whose subject key is the node's own key, so the CA
/// never sees a node's private key.
///
/// On disk it is a directory holding [`CA_KEY_FILE`] (mode 0600) and [`CA_CERT_FILE`].
#[derive(Debug, Clone)]
pub struct MeshCa {
    key: Identity,
    cert: Certificate,
}

impl MeshCa {
    /// A new CA with a fresh key; `name` becomes the certificate's common name.
    pub fn generate(name: &str, validity: Validity) -> Result<Self, IdentityError> {
        Self::from_identity(Identity::generate(), name, validity)
    }

    /// A new CA certificate for an existing key (deterministic keys for tests and fixtures).
    pub fn from_identity(
        key: Identity,
        name: &str,
        validity: Validity,
    ) -> Result<Self, IdentityError> {
        let params = ca_params(name, validity)?;
        let cert = params.self_signed(&key.rcgen_signer())?;
        Ok(Self {
            key,
            cert: Certificate::from_der(cert.der().to_vec()),
        })
    }

    /// Loads `dir/ca.key` and `dir/ca.crt` and checks that they belong together.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let (key_path, cert_path) = paths(dir);
        let key = Identity::load(&key_path)?;
        let cert = Certificate::load(&cert_path)?;
        let cert_key = cert
            .ed25519_public_key()
            .map_err(|e| e.in_file(&cert_path))?;
        if cert_key != key.public_key().to_bytes() {
            return Err(IdentityError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        if !cert.is_ca().map_err(|e| e.in_file(&cert_path))? {
            return Err(IdentityError::BadCertificate {
                path: Some(cert_path),
                reason: "not a CA certificate (basicConstraints CA:TRUE missing)".to_owned(),
            });
        }
        Ok(Self { key, cert })
    }

    /// Writes `dir/ca.key` (0600) and `dir/ca.crt`, creating `dir` if needed. Unless
    /// `overwrite`, nothing is written if either file exists.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(), IdentityError> {
        std::fs::create_dir_all(dir).map_err(|e| IdentityError::io("create directory", dir, e))?;
        let (key_path, cert_path) = paths(dir);
        if !overwrite {
            for path in [&key_path, &cert_path] {
                if path.exists() {
                    return Err(IdentityError::Exists { path: path.clone() });
                }
            }
        }
        self.key.save(&key_path, overwrite)?;
        self.cert.save(&cert_path, overwrite)
    }

    /// The CA certificate (the trust anchor nodes are configured with).
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The CA's own key identity (its NodeId is meaningless for routing).
    pub fn identity(&self) -> &Identity {
        &self.key
    }

    /// Issues a node certificate for `node_key`: subject key = `node_key`, CN and SAN carry the
    /// NodeId derived from it.
    pub fn issue(
        &self,
        node_key: &VerifyingKey,
        validity: Validity,
    ) -> Result<Certificate, IdentityError> {
        let params = node_params(NodeId::from_public_key(node_key.as_bytes()), validity)?;
        self.issue_with(&params, &RcgenPublicKey(node_key))
    }

    /// Signs `params` for any subject key (used for the non-ed25519 test fixtures).
    pub(crate) fn issue_with(
        &self,
        params: &rcgen::CertificateParams,
        subject_key: &impl rcgen::PublicKeyData,
    ) -> Result<Certificate, IdentityError> {
        let issuer = Issuer::from_ca_cert_der(self.cert.der(), self.key.rcgen_signer())?;
        let cert = params.signed_by(subject_key, &issuer)?;
        Ok(Certificate::from_der(cert.der().to_vec()))
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CA_KEY_FILE), dir.join(CA_CERT_FILE))
}
