//! [`Identity`]: a node's ed25519 key pair and the NodeId derived from it.

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::cert::{node_params, Certificate, Validity};
use super::files::{self, KEY_MODE};
use super::IdentityError;
use crate::id::NodeId;

const KEY_PEM: &str = "ed25519 PKCS#8 private key";

/// A node's identity: an ed25519 signing key. Its [`NodeId`] is derived from the public key.
///
/// `Debug` shows the NodeId only; the private key is never printed or logged.
///
/// ```
/// use wendy::identity::Identity;
/// let a = Identity::from_seed([7; 32]);
/// let b = Identity::from_pkcs8_pem(&a.to_pkcs8_pem().unwrap()).unwrap();
/// assert_eq!(a.node_id(), b.node_id());
/// ```
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh random identity from the operating system's RNG.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The identity whose ed25519 secret key is `seed` (deterministic: tests and simulations).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// This node's id: first 16 bytes of blake3 of the public key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(self.key.verifying_key().as_bytes())
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `msg` with the node key.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// The key as a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the format `openssl` reads.
    ///
    /// Written as PKCS#8 v1 (RFC 8410, no embedded public key): OpenSSL 3.0 rejects the v2 form
    /// ed25519-dalek would produce by default.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, IdentityError> {
        self.pkcs8_v1()
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| IdentityError::BadPem {
                path: None,
                what: KEY_PEM,
                reason: e.to_string(),
            })
    }

    /// Parses a PKCS#8 PEM ed25519 private key (as written by [`Self::to_pkcs8_pem`] or
    /// `openssl genpkey -algorithm ed25519`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, IdentityError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| IdentityError::BadPem {
                path: None,
                what: KEY_PEM,
                reason: if pem.contains("-----BEGIN PRIVATE KEY-----") {
                    other_algorithm(pem).unwrap_or_else(|| e.to_string())
                } else {
                    "no \"-----BEGIN PRIVATE KEY-----\" block found".to_owned()
                },
            })
    }

    /// Loads a key file written by [`Self::save`] (or openssl). A file that group or others
    /// may access is refused ([`IdentityError::KeyExposed`], which names the `chmod` that fixes
    /// it), as ssh refuses such keys.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        files::check_private(path)?;
        let text = Zeroizing::new(files::read_text(path)?);
        let identity = Self::from_pkcs8_pem(&text).map_err(|e| e.in_file(path))?;
        tracing::debug!(path = %path.display(), node_id = %identity.node_id(), "loaded identity");
        Ok(identity)
    }

    /// Saves the key as PKCS#8 PEM, mode 0600 from creation. An existing file is an
    /// [`IdentityError::Exists`] unless `overwrite`; then it is replaced atomically.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), IdentityError> {
        let pem = self.to_pkcs8_pem()?;
        files::write_new(path, pem.as_bytes(), KEY_MODE, overwrite)
    }

    /// The key as PKCS#8 DER, for `rustls` (`with_single_cert`, `with_client_auth_cert`).
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8_der()))
    }

    /// A self-signed node certificate (open mesh): subject key = this key, CN and DNS SAN carry
    /// the NodeId (see [`super::node_dns_name`]).
    pub fn self_signed_certificate(
        &self,
        validity: Validity,
    ) -> Result<Certificate, IdentityError> {
        let params = node_params(self.node_id(), validity)?;
        let cert = params.self_signed(&RcgenSigner(&self.key))?;
        Ok(Certificate::from_der(cert.der().to_vec()))
    }

    /// PKCS#8 DER bytes. Encoding a 32-byte ed25519 key into a fixed-size structure cannot fail
    /// (the only error sources in `to_pkcs8_der` are length overflows of the DER writer); we still
    /// avoid panicking by falling back to an empty document that rustls will reject.
    fn pkcs8_der(&self) -> Vec<u8> {
        match self.pkcs8_v1().to_pkcs8_der() {
            Ok(doc) => doc.as_bytes().to_vec(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode ed25519 key as PKCS#8");
                Vec::new()
            }
        }
    }

    /// The secret key alone (zeroized on drop), for PKCS#8 v1 encoding.
    fn pkcs8_v1(&self) -> KeypairBytes {
        KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
    }

    /// The signing key, for this module's other signers.
    pub(super) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub(crate) fn rcgen_signer(&self) -> RcgenSigner<'_> {
        RcgenSigner(&self.key)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &format_args!("{}", self.node_id()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Lets rcgen sign certificates with a dalek key without a second copy of the secret.
pub(crate) struct RcgenSigner<'a>(&'a SigningKey);

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_ref().as_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

/// An ed25519 public key as rcgen's subject public key (the CA signs keys it does not hold).
pub(crate) struct RcgenPublicKey<'a>(pub(crate) &'a VerifyingKey);

impl rcgen::PublicKeyData for RcgenPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// When `pem` is a well-formed PKCS#8 key of another algorithm, says which (a clearer message
/// than the decoder's "unsupported algorithm").
fn other_algorithm(pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let info = ed25519_dalek::pkcs8::PrivateKeyInfo::try_from(der.secret_pkcs8_der()).ok()?;
    let oid = info.algorithm.oid;
    (oid != ed25519_dalek::pkcs8::ALGORITHM_OID)
        .then(|| format!("key algorithm {oid} is not ed25519 (generate one with `wendy keygen`)"))
}
