//! Unit tests of the identity module: keys, files, certificates, the CA and webpki chains.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

use super::*;

fn validity_years(from_year_offset: i64, years: u64) -> Validity {
    let now = SystemTime::now();
    let start = if from_year_offset >= 0 {
        now + Duration::from_secs(from_year_offset as u64 * 365 * 86_400)
    } else {
        now - Duration::from_secs(from_year_offset.unsigned_abs() * 365 * 86_400)
    };
    Validity {
        not_before: start,
        not_after: start + Duration::from_secs(years * 365 * 86_400),
    }
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl binary must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Validates `cert` against `ca` with rustls-webpki, as the transport's verifier will.
fn webpki_verify(
    cert: &Certificate,
    ca: &Certificate,
    at: SystemTime,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca.der())?;
    let ee = webpki::EndEntityCert::try_from(cert.der())?;
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            &[webpki::ring::ED25519],
            std::slice::from_ref(&anchor),
            &[],
            time,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn seed_is_deterministic_and_node_id_hashes_the_public_key() {
    let a = Identity::from_seed([1; 32]);
    let b = Identity::from_seed([1; 32]);
    let c = Identity::from_seed([2; 32]);
    assert_eq!(a.node_id(), b.node_id());
    assert_ne!(a.node_id(), c.node_id());
    assert_eq!(
        a.node_id(),
        NodeId::from_public_key(a.public_key().as_bytes())
    );
    assert_ne!(
        Identity::generate().node_id(),
        Identity::generate().node_id()
    );
}

#[test]
fn signatures_verify_with_the_public_key() {
    use ed25519_dalek::Verifier;
    let id = Identity::from_seed([3; 32]);
    let sig = id.sign(b"hello");
    assert!(id.public_key().verify(b"hello", &sig).is_ok());
    assert!(id.public_key().verify(b"hellO", &sig).is_err());
}

#[test]
fn debug_does_not_reveal_the_private_key() {
    let seed = [0xab; 32];
    let id = Identity::from_seed(seed);
    let shown = format!(
        "{id:?} {:?}",
        MeshCa::from_identity(id.clone(), "x", Validity::days_from_now(1)).unwrap()
    );
    assert!(shown.contains(&id.node_id().to_string()), "{shown}");
    assert!(
        !shown.to_lowercase().contains(&hex::encode(seed)),
        "{shown}"
    );
    let pem = id.to_pkcs8_pem().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!shown.contains(&body), "{shown}");
}

#[test]
fn pem_round_trip_keeps_the_key() {
    let id = Identity::from_seed([4; 32]);
    let pem = id.to_pkcs8_pem().unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{}",
        &*pem
    );
    let back = Identity::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(back.public_key(), id.public_key());
    assert_eq!(back.sign(b"m"), id.sign(b"m"));
}

#[test]
fn private_key_der_is_pkcs8_that_rcgen_and_ring_accept() {
    let id = Identity::from_seed([5; 32]);
    let der = id.private_key_der();
    let rustls_pki_types::PrivateKeyDer::Pkcs8(pkcs8) = &der else {
        panic!("not PKCS#8: {der:?}");
    };
    let pair = rcgen::KeyPair::try_from(pkcs8).unwrap();
    assert_eq!(pair.public_key_raw(), id.public_key().as_bytes());
    // rustls (ring provider) loads it as an ed25519 signing key.
    let signer = rustls::crypto::ring::sign::any_eddsa_type(pkcs8).unwrap();
    assert_eq!(signer.algorithm(), rustls::SignatureAlgorithm::ED25519);
}

#[test]
fn garbage_pem_is_bad_pem() {
    for text in [
        "",
        "hello",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        let err = Identity::from_pkcs8_pem(text).unwrap_err();
        assert!(
            matches!(err, IdentityError::BadPem { path: None, .. }),
            "{err:?}"
        );
    }
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let err = Identity::from_pkcs8_pem(&p256.serialize_pem()).unwrap_err();
    assert!(matches!(err, IdentityError::BadPem { .. }), "{err:?}");
    assert!(err.to_string().contains("is not ed25519"), "{err}");
    let err = Identity::from_pkcs8_pem("hello").unwrap_err();
    assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");
}

#[test]
fn save_then_load_round_trips_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let id = Identity::generate();
    id.save(&path, false).unwrap();
    #[cfg(unix)]
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(Identity::load(&path).unwrap().node_id(), id.node_id());
}

#[test]
fn save_refuses_to_overwrite_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let first = Identity::from_seed([6; 32]);
    let second = Identity::from_seed([7; 32]);
    first.save(&path, false).unwrap();
    let err = second.save(&path, false).unwrap_err();
    assert!(
        matches!(&err, IdentityError::Exists { path: p } if p == &path),
        "{err:?}"
    );
    assert!(err.to_string().contains("node.key"), "{err}");
    assert_eq!(Identity::load(&path).unwrap().node_id(), first.node_id());

    // Overwriting a world-readable file still yields a 0600 key file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    second.save(&path, true).unwrap();
    assert_eq!(Identity::load(&path).unwrap().node_id(), second.node_id());
    #[cfg(unix)]
    assert_eq!(mode_of(&path), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary files left behind: {leftovers:?}"
    );
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let identity = Identity::generate();
    identity.save(&path, false).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(
            matches!(&err, IdentityError::KeyExposed { mode: m, .. } if *m == mode),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("chmod 600 {}", path.display())),
            "{text}"
        );
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(Identity::load(&path).unwrap().node_id(), identity.node_id());
    }
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let err = Identity::load(&missing).unwrap_err();
    assert!(matches!(err, IdentityError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.key"), "{err}");

    let garbage = dir.path().join("garbage.key");
    files::write_new(&garbage, b"not a key\n", files::KEY_MODE, false).unwrap();
    let err = Identity::load(&garbage).unwrap_err();
    assert!(
        matches!(&err, IdentityError::BadPem { path: Some(p), .. } if p == &garbage),
        "{err:?}"
    );
    assert!(err.to_string().contains("garbage.key"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn openssl_accepts_saved_keys_and_we_accept_openssl_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.key");
    let id = Identity::generate();
    id.save(&ours, false).unwrap();
    let (ok, out) = openssl(&["pkey", "-in", ours.to_str().unwrap(), "-noout"]);
    assert!(ok, "openssl rejected our key: {out}");

    let theirs = dir.path().join("theirs.key");
    let (ok, out) = openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        theirs.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let loaded = Identity::load(&theirs).unwrap();
    // openssl's view of the public key must match ours.
    let (ok, out) = openssl(&[
        "pkey",
        "-in",
        theirs.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    assert!(ok);
    let _ = out;
    let der = Command::new("openssl")
        .args([
            "pkey",
            "-in",
            theirs.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(&der[der.len() - 32..], loaded.public_key().as_bytes());
}

#[test]
fn self_signed_certificate_carries_the_node_key_and_id() {
    let id = Identity::from_seed([8; 32]);
    let cert = id
        .self_signed_certificate(Validity::days_from_now(30))
        .unwrap();
    assert_eq!(
        cert.ed25519_public_key().unwrap(),
        id.public_key().to_bytes()
    );
    assert_eq!(cert.node_id().unwrap(), id.node_id());
    assert_eq!(
        cert.dns_names().unwrap(),
        vec![format!("{}.wendy", id.node_id())]
    );
    assert!(!cert.is_ca().unwrap());
    // It is its own trust anchor.
    let (ok, out) = with_files(&[("c.crt", &cert)], |d| {
        let c = d.join("c.crt");
        openssl(&["x509", "-in", c.to_str().unwrap(), "-noout", "-subject"])
    });
    assert!(ok && out.contains(&id.node_id().to_string()), "{out}");
}

#[test]
fn validity_round_trips_at_second_precision() {
    let v = Validity {
        not_before: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        not_after: UNIX_EPOCH + Duration::from_secs(7_258_118_400), // 2200-01-01
    };
    let cert = Identity::from_seed([9; 32])
        .self_signed_certificate(v)
        .unwrap();
    assert_eq!(cert.validity().unwrap(), v);
    assert!(v.contains(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
    assert!(!v.contains(UNIX_EPOCH + Duration::from_secs(1_699_999_999)));

    let now = SystemTime::now();
    let d = Validity::days_from_now(10);
    assert!(d.contains(now));
    assert!(!d.contains(now + Duration::from_secs(11 * 86_400)));
}

#[test]
fn empty_validity_is_rejected() {
    let now = SystemTime::now();
    let err = Identity::generate()
        .self_signed_certificate(Validity {
            not_before: now,
            not_after: now,
        })
        .unwrap_err();
    assert!(matches!(err, IdentityError::BadValidity { .. }), "{err:?}");
}

#[test]
fn certificate_pem_and_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Identity::from_seed([10; 32])
        .self_signed_certificate(Validity::days_from_now(1))
        .unwrap();
    let pem = cert.to_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert_eq!(Certificate::from_pem(&pem).unwrap(), cert);
    assert_eq!(Certificate::from_der(cert.der().to_vec()), cert);

    let path = dir.path().join("n.crt");
    cert.save(&path, false).unwrap();
    assert_eq!(Certificate::load(&path).unwrap(), cert);
    let err = cert.save(&path, false).unwrap_err();
    assert!(matches!(err, IdentityError::Exists { .. }), "{err:?}");
    cert.save(&path, true).unwrap();

    std::fs::write(&path, "garbage").unwrap();
    let err = Certificate::load(&path).unwrap_err();
    assert!(
        matches!(&err, IdentityError::BadPem { path: Some(p), .. } if p == &path),
        "{err:?}"
    );
    let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = Certificate::from_pem(bogus).unwrap_err();
    assert!(
        matches!(err, IdentityError::BadCertificate { .. }),
        "{err:?}"
    );
    let err = Certificate::from_der(vec![1, 2, 3]).node_id().unwrap_err();
    assert!(
        matches!(err, IdentityError::BadCertificate { .. }),
        "{err:?}"
    );
}

#[test]
fn non_ed25519_certificates_are_not_ed25519() {
    let ca = MeshCa::generate("t", Validity::days_from_now(1)).unwrap();
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        cert::node_params(Identity::generate().node_id(), Validity::days_from_now(1)).unwrap();
    let cert = ca.issue_with(&params, &p256).unwrap();
    let err = ed25519_public_key_of(cert.der()).unwrap_err();
    assert!(
        matches!(&err, IdentityError::NotEd25519 { algorithm } if algorithm == "1.2.840.10045.2.1"),
        "{err:?}"
    );
    assert!(matches!(
        cert.node_id(),
        Err(IdentityError::NotEd25519 { .. })
    ));
}

#[test]
fn ca_certificate_is_a_real_ca() {
    let ca = MeshCa::generate("unit mesh", Validity::days_from_now(10)).unwrap();
    assert!(ca.certificate().is_ca().unwrap());
    let (ok, out) = with_files(&[("ca.crt", ca.certificate())], |d| {
        let c = d.join("ca.crt");
        openssl(&["x509", "-in", c.to_str().unwrap(), "-noout", "-text"])
    });
    assert!(ok, "{out}");
    assert!(out.contains("CA:TRUE"), "{out}");
    assert!(out.contains("Certificate Sign"), "{out}");
    assert!(out.contains("unit mesh"), "{out}");
}

#[test]
fn issued_certificate_binds_the_node_key_and_openssl_verifies_it() {
    let ca = MeshCa::generate("unit mesh", Validity::days_from_now(10)).unwrap();
    let node = Identity::generate();
    let cert = ca
        .issue(&node.public_key(), Validity::days_from_now(5))
        .unwrap();
    assert_eq!(cert.node_id().unwrap(), node.node_id());
    assert_eq!(
        cert.dns_names().unwrap(),
        vec![node_dns_name(node.node_id())]
    );
    assert!(!cert.is_ca().unwrap());
    let (ok, out) = with_files(&[("ca.crt", ca.certificate()), ("n.crt", &cert)], |d| {
        let (c, n) = (d.join("ca.crt"), d.join("n.crt"));
        openssl(&[
            "verify",
            "-CAfile",
            c.to_str().unwrap(),
            n.to_str().unwrap(),
        ])
    });
    assert!(ok && out.contains(": OK"), "{out}");

    let other = MeshCa::generate("other mesh", Validity::days_from_now(10)).unwrap();
    let (ok, out) = with_files(&[("ca.crt", other.certificate()), ("n.crt", &cert)], |d| {
        let (c, n) = (d.join("ca.crt"), d.join("n.crt"));
        openssl(&[
            "verify",
            "-CAfile",
            c.to_str().unwrap(),
            n.to_str().unwrap(),
        ])
    });
    assert!(!ok, "verified against the wrong CA: {out}");
}

#[test]
fn webpki_accepts_the_chain_only_within_validity_and_only_for_its_ca() {
    let ca = MeshCa::generate("unit mesh", validity_years(-1, 10)).unwrap();
    let node = Identity::generate();
    let v = Validity::days_from_now(30);
    let cert = ca.issue(&node.public_key(), v).unwrap();
    let now = SystemTime::now();
    webpki_verify(&cert, ca.certificate(), now).unwrap();

    let late = v.not_after + Duration::from_secs(60);
    assert!(matches!(
        webpki_verify(&cert, ca.certificate(), late),
        Err(webpki::Error::CertExpired { .. })
    ));
    let early = v.not_before - Duration::from_secs(60);
    assert!(matches!(
        webpki_verify(&cert, ca.certificate(), early),
        Err(webpki::Error::CertNotValidYet { .. })
    ));

    let other = MeshCa::generate("other mesh", validity_years(-1, 10)).unwrap();
    let err = webpki_verify(&cert, other.certificate(), now).unwrap_err();
    assert!(matches!(err, webpki::Error::UnknownIssuer), "{err:?}");
    // Same CA name, different key: the signature does not verify.
    let impostor = MeshCa::generate("unit mesh", validity_years(-1, 10)).unwrap();
    let err = webpki_verify(&cert, impostor.certificate(), now).unwrap_err();
    assert!(
        matches!(
            err,
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey
        ),
        "{err:?}"
    );

    // A self-signed node certificate is not a CA, so it chains to nothing.
    let open = node.self_signed_certificate(v).unwrap();
    assert!(webpki_verify(&open, ca.certificate(), now).is_err());
}

#[test]
fn ca_save_load_round_trip_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("nested/ca");
    let ca = MeshCa::generate("unit mesh", Validity::days_from_now(10)).unwrap();
    ca.save(&ca_dir, false).unwrap();
    #[cfg(unix)]
    assert_eq!(mode_of(&ca_dir.join(CA_KEY_FILE)), 0o600);
    let loaded = MeshCa::load(&ca_dir).unwrap();
    assert_eq!(loaded.certificate(), ca.certificate());

    // A certificate issued by the reloaded CA chains to the saved CA certificate.
    let node = Identity::generate();
    let cert = loaded
        .issue(&node.public_key(), Validity::days_from_now(1))
        .unwrap();
    webpki_verify(&cert, ca.certificate(), SystemTime::now()).unwrap();

    let other = MeshCa::generate("other", Validity::days_from_now(10)).unwrap();
    let err = other.save(&ca_dir, false).unwrap_err();
    assert!(matches!(err, IdentityError::Exists { .. }), "{err:?}");
    assert_eq!(
        MeshCa::load(&ca_dir).unwrap().certificate(),
        ca.certificate()
    );
    other.save(&ca_dir, true).unwrap();
    assert_eq!(
        MeshCa::load(&ca_dir).unwrap().certificate(),
        other.certificate()
    );
}

#[test]
fn ca_load_detects_mismatched_or_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = MeshCa::load(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, IdentityError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.key"), "{err}");

    let ca = MeshCa::generate("unit mesh", Validity::days_from_now(10)).unwrap();
    ca.save(dir.path(), false).unwrap();
    Identity::generate()
        .save(&dir.path().join(CA_KEY_FILE), true)
        .unwrap();
    let err = MeshCa::load(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");

    // A node certificate is not a CA certificate.
    let node = Identity::generate();
    node.save(&dir.path().join(CA_KEY_FILE), true).unwrap();
    node.self_signed_certificate(Validity::days_from_now(1))
        .unwrap()
        .save(&dir.path().join(CA_CERT_FILE), true)
        .unwrap();
    let err = MeshCa::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, IdentityError::BadCertificate { .. }),
        "{err:?}"
    );
}

fn with_files<T>(files: &[(&str, &Certificate)], f: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    for (name, cert) in files {
        cert.save(&dir.path().join(name), false).unwrap();
    }
    f(dir.path())
}
