//! Regenerates the TEST-ONLY certificate fixtures under `certs/test-fixtures/`.
//!
//! ```text
//! cargo run --example gen_test_fixtures -- certs/test-fixtures
//! ```
//!
//! Ed25519 keys are derived from fixed seeds (blake3 of the fixture name), so regenerating keeps
//! every fixture's NodeId; certificates get fresh serial numbers and signatures, and the P-256
//! key is random. Validity periods are fixed dates. Their private keys are published in the
//! repository: NEVER use any of these files outside tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use wendy::identity::{node_dns_name, Certificate, Identity, MeshCa, NodeId, Validity};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// 00:00:00 UTC on 1 January of `year` (proleptic Gregorian; fine for 1970..9999).
fn jan1(year: i32) -> SystemTime {
    let days: i64 = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400)
}

fn years(from: i32, to: i32) -> Validity {
    Validity {
        not_before: jan1(from),
        not_after: jan1(to),
    }
}

/// The fixed key of fixture `name`.
fn key(name: &str) -> Identity {
    let seed = blake3::hash(format!("wendy test fixture: {name}").as_bytes());
    Identity::from_seed(*seed.as_bytes())
}

struct Out {
    dir: PathBuf,
}

impl Out {
    fn key(&self, name: &str, id: &Identity) -> Result<()> {
        id.save(&self.dir.join(format!("{name}.key")), true)?;
        Ok(())
    }

    fn cert(&self, name: &str, cert: &Certificate) -> Result<()> {
        cert.save(&self.dir.join(format!("{name}.crt")), true)?;
        println!("wrote {name}.{{key,crt}}");
        Ok(())
    }

    fn node(&self, name: &str, ca: &MeshCa, validity: Validity) -> Result<Certificate> {
        let id = key(name);
        let cert = ca.issue(&id.public_key(), validity)?;
        self.key(name, &id)?;
        self.cert(name, &cert)?;
        Ok(cert)
    }

    fn ca(&self, name: &str, common_name: &str) -> Result<MeshCa> {
        let ca = MeshCa::from_identity(key(name), common_name, years(2020, 2300))?;
        self.key(name, ca.identity())?;
        self.cert(name, ca.certificate())?;
        Ok(ca)
    }
}

/// A CA-signed certificate for an ECDSA P-256 key, otherwise shaped like a node certificate.
fn p256_node(out: &Out, ca: &MeshCa) -> Result<()> {
    let node_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    // The "NodeId" of a non-ed25519 key is meaningless; use the hash of its raw public key so the
    // names look like a real node's.
    let raw: [u8; 32] = *blake3::hash(node_key.public_key_raw()).as_bytes();
    let id = NodeId::from_public_key(&raw);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.to_string());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(node_dns_name(id).try_into()?)];
    let v = years(2020, 2125);
    params.not_before = v.not_before.into();
    params.not_after = v.not_after.into();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;

    let ca_pkcs8 = match ca.identity().private_key_der() {
        rustls_pki_types::PrivateKeyDer::Pkcs8(der) => der,
        _ => return Err("CA key is not PKCS#8".into()),
    };
    let ca_key = KeyPair::try_from(&ca_pkcs8)?;
    let issuer = Issuer::from_ca_cert_der(ca.certificate().der(), ca_key)?;
    let cert = params.signed_by(&node_key, &issuer)?;

    std::fs::write(out.dir.join("test-p256.key"), node_key.serialize_pem())?;
    out.cert("test-p256", &Certificate::from_der(cert.der().to_vec()))
}

fn main() -> Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: cargo run --example gen_test_fixtures -- certs/test-fixtures")?;
    std::fs::create_dir_all(&dir)?;
    let out = Out { dir };

    let ca = out.ca("test-ca", "Wendy TEST-ONLY mesh CA")?;
    let other_ca = out.ca("test-other-ca", "Wendy TEST-ONLY other CA")?;

    let node_a = out.node("test-node-a", &ca, years(2020, 2125))?;
    out.node("test-node-b", &ca, years(2020, 2125))?;
    out.node("test-expired", &ca, years(2020, 2021))?;
    out.node("test-not-yet-valid", &ca, years(2200, 2201))?;
    out.node("test-wrong-ca", &other_ca, years(2020, 2125))?;
    p256_node(&out, &ca)?;

    // test-node-a's certificate presented with somebody else's key.
    out.key("test-mismatch", &key("test-mismatch"))?;
    out.cert("test-mismatch", &node_a)?;

    let open = key("test-self-signed");
    out.key("test-self-signed", &open)?;
    out.cert(
        "test-self-signed",
        &open.self_signed_certificate(years(2020, 2125))?,
    )?;

    check_written(&out.dir)?;
    Ok(())
}

/// Sanity check that everything we wrote parses back.
fn check_written(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "crt") {
            Certificate::load(&path)?;
        }
    }
    Ok(())
}
