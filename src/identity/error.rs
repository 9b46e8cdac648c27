//! The error type of the `identity` module.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while making, loading or saving keys and certificates.
///
/// Every message is one line naming the file involved (when there is one), so the CLI can print
/// it as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading, writing or creating a file or directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "create directory").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The target file exists and overwriting was not requested.
    #[error("{} already exists", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A private key file is readable or writable by group or others: anyone on the host could
    /// take the node's identity (or, for a CA key, admit nodes), so it is refused as ssh does.
    #[error(
        "{}: private key file is accessible by other users (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The text is not a PEM of the expected kind, or its contents do not decode.
    #[error("{}: not a valid {what} PEM: {reason}", origin(path))]
    BadPem {
        /// The file it came from, if any.
        path: Option<PathBuf>,
        /// What was expected ("ed25519 PKCS#8 private key", "certificate").
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The bytes are not a well-formed X.509 certificate.
    #[error("{}: not a valid X.509 certificate: {reason}", origin(path))]
    BadCertificate {
        /// The file it came from, if any.
        path: Option<PathBuf>,
        /// Why it was rejected.
        reason: String,
    },
    /// The certificate's subject public key is not an ed25519 key.
    #[error("certificate key is not ed25519 (algorithm {algorithm})")]
    NotEd25519 {
        /// The OID (dotted) of the key algorithm found instead.
        algorithm: String,
    },
    /// A private key does not belong to the certificate it was paired with.
    #[error("{}: private key does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The validity period is empty or cannot be encoded in a certificate.
    #[error("invalid validity period: {reason}")]
    BadValidity {
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen refused to build or sign the certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "<input>".to_owned(),
    }
}

impl IdentityError {
    /// Attaches `path` to a parse error that came from in-memory text (no-op for other errors).
    pub(crate) fn in_file(self, file: &Path) -> Self {
        match self {
            Self::BadPem {
                path: None,
                what,
                reason,
            } => Self::BadPem {
                path: Some(file.to_owned()),
                what,
                reason,
            },
            Self::BadCertificate { path: None, reason } => Self::BadCertificate {
                path: Some(file.to_owned()),
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
