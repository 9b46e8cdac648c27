//! Each committed fixture under `certs/test-fixtures/` is what its name says, so a regenerated
//! set cannot silently go wrong (e.g. an "expired" certificate that is in fact valid).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

use super::test_fixtures;
use super::*;

fn cert(name: &str) -> Certificate {
    Certificate::load(&test_fixtures::path(&format!("{name}.crt"))).unwrap()
}

fn key(name: &str) -> Identity {
    Identity::load(&test_fixtures::path(&format!("{name}.key"))).unwrap()
}

/// rustls-webpki chain validation to `ca` at `at`, ed25519 signatures only (as the transport).
fn chain(name: &str, ca: &str, at: SystemTime) -> Result<(), webpki::Error> {
    let ca = cert(ca);
    let anchor = webpki::anchor_from_trusted_cert(ca.der())?;
    let leaf = cert(name);
    let ee = webpki::EndEntityCert::try_from(leaf.der())?;
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
    ee.verify_for_usage(
        &[webpki::ring::ED25519],
        std::slice::from_ref(&anchor),
        &[],
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

fn year(y: u64) -> SystemTime {
    // Close enough to 1 January for year-granular checks.
    UNIX_EPOCH + Duration::from_secs((y - 1970) * 31_556_952)
}

#[test]
fn fixture_directory_is_where_the_helper_says() {
    assert!(test_fixtures::dir().is_dir());
    assert!(test_fixtures::path("README.md").is_file());
}

#[test]
fn cas_are_cas_with_their_keys() {
    for name in ["test-ca", "test-other-ca"] {
        let c = cert(name);
        assert!(c.is_ca().unwrap(), "{name}");
        assert_eq!(
            c.ed25519_public_key().unwrap(),
            key(name).public_key().to_bytes()
        );
        assert!(c.validity().unwrap().contains(SystemTime::now()), "{name}");
    }
    assert_ne!(cert("test-ca"), cert("test-other-ca"));
}

#[test]
fn good_nodes_chain_to_test_ca_until_2125() {
    let now = SystemTime::now();
    for name in ["test-node-a", "test-node-b"] {
        let c = cert(name);
        let k = key(name);
        assert_eq!(c.node_id().unwrap(), k.node_id(), "{name}");
        assert_eq!(c.dns_names().unwrap(), vec![node_dns_name(k.node_id())]);
        assert!(!c.is_ca().unwrap());
        chain(name, "test-ca", now).unwrap();
        chain(name, "test-ca", year(2124)).unwrap();
        assert!(c.validity().unwrap().not_after >= year(2125) - Duration::from_secs(86_400 * 2));
        let err = chain(name, "test-other-ca", now).unwrap_err();
        assert!(
            matches!(err, webpki::Error::UnknownIssuer),
            "{name}: {err:?}"
        );
    }
    assert_ne!(key("test-node-a").node_id(), key("test-node-b").node_id());
}

#[test]
fn expired_is_expired_but_otherwise_good() {
    let now = SystemTime::now();
    let v = cert("test-expired").validity().unwrap();
    assert!(v.not_after < now);
    let err = chain("test-expired", "test-ca", now).unwrap_err();
    assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");
    // Inside its period it was fine: only time is wrong with it.
    chain(
        "test-expired",
        "test-ca",
        v.not_before + Duration::from_secs(86_400),
    )
    .unwrap();
    assert_eq!(
        cert("test-expired").node_id().unwrap(),
        key("test-expired").node_id()
    );
}

#[test]
fn not_yet_valid_starts_in_2200() {
    let now = SystemTime::now();
    let v = cert("test-not-yet-valid").validity().unwrap();
    assert!(v.not_before >= year(2199));
    let err = chain("test-not-yet-valid", "test-ca", now).unwrap_err();
    assert!(
        matches!(err, webpki::Error::CertNotValidYet { .. }),
        "{err:?}"
    );
    chain(
        "test-not-yet-valid",
        "test-ca",
        v.not_before + Duration::from_secs(86_400),
    )
    .unwrap();
}

#[test]
fn wrong_ca_chains_to_the_other_ca_only() {
    let now = SystemTime::now();
    let err = chain("test-wrong-ca", "test-ca", now).unwrap_err();
    assert!(matches!(err, webpki::Error::UnknownIssuer), "{err:?}");
    chain("test-wrong-ca", "test-other-ca", now).unwrap();
    assert_eq!(
        cert("test-wrong-ca").node_id().unwrap(),
        key("test-wrong-ca").node_id()
    );
}

#[test]
fn p256_is_a_ca_signed_ecdsa_key() {
    let c = cert("test-p256");
    let err = c.ed25519_public_key().unwrap_err();
    assert!(matches!(err, IdentityError::NotEd25519 { .. }), "{err:?}");
    // Signed by test-ca (an ed25519 signature), so only its key type is wrong.
    chain("test-p256", "test-ca", SystemTime::now()).unwrap();
    let pem = std::fs::read_to_string(test_fixtures::path("test-p256.key")).unwrap();
    assert!(matches!(
        Identity::from_pkcs8_pem(&pem),
        Err(IdentityError::BadPem { .. })
    ));
    let pair = rcgen::KeyPair::from_pem(&pem).unwrap();
    assert_eq!(pair.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, parsed) = x509_parser::parse_x509_certificate(c.der()).unwrap();
    assert_eq!(
        parsed.public_key().subject_public_key.data.as_ref(),
        pair.public_key_raw()
    );
}

#[test]
fn mismatch_is_node_a_certificate_with_another_key() {
    assert_eq!(cert("test-mismatch"), cert("test-node-a"));
    let k = key("test-mismatch");
    assert_ne!(
        k.public_key().to_bytes(),
        cert("test-mismatch").ed25519_public_key().unwrap()
    );
    assert_ne!(k.node_id(), key("test-node-a").node_id());
}

#[test]
fn self_signed_is_an_open_mesh_node() {
    let c = cert("test-self-signed");
    let k = key("test-self-signed");
    assert_eq!(c.node_id().unwrap(), k.node_id());
    assert!(!c.is_ca().unwrap());
    assert!(c.validity().unwrap().contains(SystemTime::now()));
    let (_, parsed) = x509_parser::parse_x509_certificate(c.der()).unwrap();
    assert_eq!(parsed.issuer(), parsed.subject());
    let err = chain("test-self-signed", "test-ca", SystemTime::now()).unwrap_err();
    assert!(matches!(err, webpki::Error::UnknownIssuer), "{err:?}");
}

#[test]
fn every_ed25519_fixture_key_is_readable_by_openssl() {
    for entry in std::fs::read_dir(test_fixtures::dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-noout", "-in"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", path.display());
        }
    }
}
