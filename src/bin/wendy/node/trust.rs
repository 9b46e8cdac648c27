//! Loading the node's key, certificate and admission policy, with errors that say what to fix.
//!
//! Everything that can be checked before the node binds its socket is checked here: a node
//! that starts has a key, a certificate for that key (issued by the given CA, within its
//! validity period), and a usable CA certificate.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

use wendy::identity::{Certificate, Identity, IdentityError, CA_CERT_FILE};
use wendy::transport::Admission;

use super::config::NodeOptions;

/// The node's identity and who it admits.
pub(crate) struct Trust {
    pub(crate) identity: Identity,
    /// The CA-issued certificate; `None` means a self-signed one is made.
    pub(crate) certificate: Option<Certificate>,
    pub(crate) admission: Admission,
}

/// Loads and checks the key, certificate and CA of `options`.
pub(crate) fn load(options: &NodeOptions) -> Result<Trust, String> {
    let identity = Identity::load(&options.key).map_err(|e| key_error(e, &options.key))?;
    let (certificate, roots) = match (&options.cert, &options.ca) {
        (None, None) => (None, None),
        (Some(cert), None) => {
            return Err(format!(
                "--cert {} needs --ca FILE, the mesh CA certificate that issued it (or drop \
                 --cert to run an open mesh with a self-signed certificate)",
                cert.display()
            ))
        }
        (None, Some(ca)) => {
            return Err(format!(
                "--ca {} needs --cert FILE, this node's certificate issued by that CA (make one \
                 with `wendy ca issue --ca DIR --key {} --out FILE`)",
                ca.display(),
                options.key.display()
            ))
        }
        (Some(cert_path), Some(ca_path)) => {
            let ca_path = ca_file(ca_path);
            let ca = load_ca(&ca_path)?;
            let cert = load_node_cert(cert_path, &identity, &options.key)?;
            check_issued_by(&cert, cert_path, &ca, &ca_path)?;
            (Some(cert), Some(vec![ca.der().clone()]))
        }
    };
    let allowed: HashSet<_> = options.allow.iter().copied().collect();
    let admission = match (roots, allowed.is_empty()) {
        (None, true) => Admission::Open,
        (None, false) => Admission::AllowList(allowed),
        (Some(roots), true) => Admission::Ca { roots },
        (Some(roots), false) => Admission::CaAndAllowList { roots, allowed },
    };
    Ok(Trust {
        identity,
        certificate,
        admission,
    })
}

fn key_error(e: IdentityError, path: &Path) -> String {
    match e {
        IdentityError::Io { ref source, .. } if source.kind() == ErrorKind::NotFound => format!(
            "key file {} does not exist; create it with `wendy keygen --out {}`",
            path.display(),
            path.display()
        ),
        IdentityError::Io { .. } => format!("{e}; check the --key path and its permissions"),
        IdentityError::KeyExposed { .. } => e.to_string(),
        other => format!("{other} (--key must be an ed25519 key from `wendy keygen`)"),
    }
}

/// `--ca DIR` means the CA directory of `wendy ca init`.
fn ca_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CA_CERT_FILE)
    } else {
        path.to_path_buf()
    }
}

fn load_ca(path: &Path) -> Result<Certificate, String> {
    let ca = Certificate::load(path).map_err(|e| {
        format!("{e} (--ca must be the mesh CA certificate, ca.crt from `wendy ca init`)")
    })?;
    match ca.is_ca() {
        Ok(true) => Ok(ca),
        Ok(false) => Err(format!(
            "{} is not a CA certificate (--ca must be the mesh CA's ca.crt, not a node \
             certificate)",
            path.display()
        )),
        Err(e) => Err(format!("{e} (--ca must be the mesh CA's ca.crt)")),
    }
}

fn load_node_cert(path: &Path, identity: &Identity, key: &Path) -> Result<Certificate, String> {
    let cert = Certificate::load(path).map_err(|e| {
        format!("{e} (--cert must be this node's certificate from `wendy ca issue`)")
    })?;
    let cert_id = cert
        .node_id()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if cert_id != identity.node_id() {
        return Err(format!(
            "certificate {} is for node {cert_id} but key {} is node {}; issue a certificate \
             for this key with `wendy ca issue --ca DIR --key {} --out {}`",
            path.display(),
            key.display(),
            identity.node_id(),
            key.display(),
            path.display()
        ));
    }
    let validity = cert
        .validity()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let now = SystemTime::now();
    if now > validity.not_after {
        return Err(format!(
            "certificate {} expired {} days ago; issue a new one with `wendy ca issue`",
            path.display(),
            days_between(validity.not_after, now)
        ));
    }
    if now < validity.not_before {
        return Err(format!(
            "certificate {} is not valid for another {} days; check the clock or issue a new \
             one with `wendy ca issue`",
            path.display(),
            days_between(now, validity.not_before) + 1
        ));
    }
    let left = validity.not_after.duration_since(now).unwrap_or_default();
    if left < EXPIRY_WARNING {
        tracing::warn!(
            "certificate {} expires in {}; issue a new one with `wendy ca issue` before then \
             (other nodes refuse this one once it has expired)",
            path.display(),
            remaining(left)
        );
    }
    Ok(cert)
}

/// A certificate with less than this left gets a warning at start.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// A time left, in days, or hours below two days.
fn remaining(left: std::time::Duration) -> String {
    let hours = left.as_secs() / 3600;
    if hours >= 48 {
        format!("{} days", hours / 24)
    } else {
        format!("{hours} hours")
    }
}

fn days_between(earlier: SystemTime, later: SystemTime) -> u64 {
    later
        .duration_since(earlier)
        .map_or(0, |d| d.as_secs() / 86_400)
}

fn check_issued_by(
    cert: &Certificate,
    cert_path: &Path,
    ca: &Certificate,
    ca_path: &Path,
) -> Result<(), String> {
    let not_issued = |why: String| {
        format!(
            "certificate {} is not issued by the CA in {} ({why}); issue it with `wendy ca \
             issue` from that CA, or pass the CA that issued it",
            cert_path.display(),
            ca_path.display()
        )
    };
    let anchor = webpki::anchor_from_trusted_cert(ca.der())
        .map_err(|e| format!("{}: unusable CA certificate: {e}", ca_path.display()))?;
    let end_entity =
        webpki::EndEntityCert::try_from(cert.der()).map_err(|e| not_issued(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?;
    end_entity
        .verify_for_usage(
            &[webpki::ring::ED25519],
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(now),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => not_issued("unknown issuer".to_owned()),
            other => not_issued(other.to_string()),
        })
}
