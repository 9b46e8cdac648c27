//! The authentication matrix: every way a peer can fail the handshake, each with its own
//! specific error, over real QUIC on loopback; and a good peer keeps being served meanwhile.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{assert_good_peer_served, config_with, open_config, Node};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{DigitallySignedStruct, SignatureAlgorithm, SignatureScheme};
use wendy::identity::{Identity, MeshCa, Validity};
use wendy::transport::{Admission, AuthError, ConnectError, TransportEvent};
use wendy::wire::Body;

const DAY: Duration = Duration::from_secs(86_400);

fn validity(from_days_ago: i64, to_days_ahead: i64) -> Validity {
    let now = SystemTime::now();
    let shift = |days: i64| {
        if days >= 0 {
            now + DAY * days as u32
        } else {
            now - DAY * (-days) as u32
        }
    };
    Validity {
        not_before: shift(-from_days_ago),
        not_after: shift(to_days_ahead),
    }
}

/// The next handshake failure the server reports.
async fn handshake_failure(server: &mut Node) -> ConnectError {
    server
        .next_matching(|event| match event {
            TransportEvent::HandshakeFailed { error, .. } => Some(error),
            TransportEvent::LinkUp { peer, .. } => panic!("bad peer {peer} got a link"),
            _ => None,
        })
        .await
}

/// A Wendy client that the server refuses learns it from the server's TLS alert, and keeps no
/// link.
async fn assert_refused_by_peer(client: &Node, server: &Node) {
    let error = client
        .transport
        .connect(server.addr(), Some(server.id()))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::RefusedByPeer(_)), "{error:?}");
    assert!(client.transport.links().is_empty());
}

fn auth_error(error: ConnectError) -> AuthError {
    match error {
        ConnectError::Auth(auth) => auth,
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

// ---- a raw, misbehaving client (test code only) ----

/// Accepts any server: the bad client only wants to test the server's checks.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Signs with its inner key whatever the server asked for (so a P-256 key is presented even
/// though Wendy only offers ed25519).
#[derive(Debug)]
struct ForceScheme(Arc<dyn SigningKey>, SignatureScheme);

impl SigningKey for ForceScheme {
    fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        self.0.choose_scheme(&[self.1])
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn signing_key(pkcs8: Vec<u8>) -> Arc<dyn SigningKey> {
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)))
        .unwrap()
}

/// A quinn client with a hand-made rustls config: `presented` is the certificate chain and key
/// to present (none = unauthenticated), `alpn` the protocols offered.
fn raw_client_config(presented: Option<CertifiedKey>, alpn: &[&[u8]]) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match presented {
        Some(key) => builder.with_client_cert_resolver(Arc::new(Present(Arc::new(key)))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap(),
    ))
}

/// Dials `server` with a raw client; the outcome on the client side is not asserted (in TLS
/// 1.3 the client may finish its handshake before the server refuses it), only that no usable
/// link results: the connection ends closed.
async fn raw_dial(server: &Node, config: quinn::ClientConfig) {
    let endpoint = quinn::Endpoint::client(common::loopback()).unwrap();
    if let Ok(connecting) = endpoint.connect_with(config, server.addr(), "wendy") {
        if let Ok(conn) = connecting.await {
            let closed = tokio::time::timeout(common::HANG_GUARD, conn.closed())
                .await
                .expect("hang guard: refused connection stayed open");
            assert!(!matches!(closed, quinn::ConnectionError::LocallyClosed));
        }
    }
    endpoint.close(0u32.into(), b"");
}

fn ed25519_presented(
    identity: &Identity,
    certificate: &wendy::identity::Certificate,
) -> CertifiedKey {
    let der = identity.private_key_der();
    let PrivateKeyDer::Pkcs8(pkcs8) = der else {
        panic!("identity keys are PKCS#8")
    };
    CertifiedKey::new(
        vec![certificate.der().clone()],
        signing_key(pkcs8.secret_pkcs8_der().to_vec()),
    )
}

fn p256_presented() -> CertifiedKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["p256.wendy".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    CertifiedKey::new(
        vec![cert.der().clone()],
        Arc::new(ForceScheme(
            signing_key(key.serialize_der()),
            SignatureScheme::ECDSA_NISTP256_SHA256,
        )),
    )
}

// ---- the matrix ----

#[tokio::test]
async fn unauthenticated_client_is_refused() {
    let mut server = Node::open().await;
    raw_dial(&server, raw_client_config(None, &[b"wendy/1"])).await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::NoCertificate
    );
    assert_good_peer_served(&mut server).await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let mesh = MeshCa::generate("mesh", Validity::days_from_now(30)).unwrap();
    let other = MeshCa::generate("other mesh", Validity::days_from_now(30)).unwrap();
    let closed = || Admission::Ca {
        roots: vec![mesh.certificate().der().clone()],
    };
    let server_identity = Identity::generate();
    let server_cert = mesh
        .issue(&server_identity.public_key(), Validity::days_from_now(30))
        .unwrap();
    let mut server = Node::bind(config_with(server_identity, server_cert, closed())).await;

    // A client with a certificate from the other CA is refused by the server.
    let intruder = Identity::generate();
    let intruder_cert = other
        .issue(&intruder.public_key(), Validity::days_from_now(30))
        .unwrap();
    let client = Node::bind(config_with(
        intruder.clone(),
        intruder_cert.clone(),
        Admission::Open,
    ))
    .await;
    assert_refused_by_peer(&client, &server).await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::UnknownIssuer
    );

    // And a closed-mesh node refuses to dial a server certified by the other CA.
    let member = Identity::generate();
    let member_cert = mesh
        .issue(&member.public_key(), Validity::days_from_now(30))
        .unwrap();
    let member = Node::bind(config_with(member, member_cert, closed())).await;
    let error = member
        .transport
        .connect(client.addr(), Some(client.id()))
        .await
        .unwrap_err();
    assert_eq!(auth_error(error), AuthError::UnknownIssuer);

    // Members of the mesh get through.
    member
        .transport
        .send(server.id(), server.addr(), &Body::Ping { nonce: 1 })
        .await
        .unwrap();
    let from = server
        .next_matching(|event| match event {
            TransportEvent::Message { from, .. } => Some(from),
            _ => None,
        })
        .await;
    assert_eq!(from, member.id());
}

/// A node presenting a certificate with `validity` is refused both ways: its dial fails and
/// the server reports `expected`; a node dialling it fails with `expected` on its own side. The
/// server keeps serving good peers.
async fn refused_both_ways(validity: Validity, expected: fn(&AuthError) -> bool) {
    let mut server = Node::open().await;
    let identity = Identity::generate();
    let certificate = identity.self_signed_certificate(validity).unwrap();
    let client = Node::bind(config_with(identity, certificate, Admission::Open)).await;
    assert_refused_by_peer(&client, &server).await;
    let error = auth_error(handshake_failure(&mut server).await);
    assert!(expected(&error), "server side: {error:?}");
    let error = Node::open()
        .await
        .transport
        .connect(client.addr(), Some(client.id()))
        .await
        .unwrap_err();
    let error = auth_error(error);
    assert!(expected(&error), "client side: {error:?}");
    assert_good_peer_served(&mut server).await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    refused_both_ways(validity(10, -1), |e| matches!(e, AuthError::Expired { .. })).await;
}

#[tokio::test]
async fn not_yet_valid_certificate_is_refused() {
    refused_both_ways(validity(-1, 10), |e| {
        matches!(e, AuthError::NotYetValid { .. })
    })
    .await;
}

#[tokio::test]
async fn non_ed25519_certificate_is_refused() {
    let mut server = Node::open().await;
    raw_dial(
        &server,
        raw_client_config(Some(p256_presented()), &[b"wendy/1"]),
    )
    .await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::NotEd25519 {
            // id-ecPublicKey
            algorithm: "1.2.840.10045.2.1".to_string()
        }
    );
    assert_good_peer_served(&mut server).await;
}

#[tokio::test]
async fn certificate_of_another_key_is_refused() {
    // Spoofing: present a victim's (valid) certificate, sign the handshake with our own key.
    let mut server = Node::open().await;
    let victim = Identity::generate();
    let victim_cert = victim
        .self_signed_certificate(Validity::days_from_now(30))
        .unwrap();
    let attacker = Identity::generate();
    let attacker_key = ed25519_presented(&attacker, &victim_cert).key;
    let spoof = CertifiedKey::new(vec![victim_cert.der().clone()], attacker_key);
    raw_dial(&server, raw_client_config(Some(spoof), &[b"wendy/1"])).await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::BadSignature
    );
    assert_good_peer_served(&mut server).await;
}

#[tokio::test]
async fn node_id_mismatch_when_dialling_by_id_is_refused() {
    let server = Node::open().await;
    let client = Node::open().await;
    let expected = Identity::generate().node_id();
    let error = client
        .transport
        .connect(server.addr(), Some(expected))
        .await
        .unwrap_err();
    assert_eq!(
        auth_error(error),
        AuthError::NodeIdMismatch {
            expected,
            presented: server.id()
        }
    );
    assert!(client.transport.links().is_empty());
    // The same dial with the right id works.
    assert_eq!(
        client
            .transport
            .connect(server.addr(), Some(server.id()))
            .await
            .unwrap(),
        server.id()
    );
}

#[tokio::test]
async fn peer_not_on_the_allow_list_is_refused() {
    let listed = Identity::generate();
    let listed_cert = listed
        .self_signed_certificate(Validity::days_from_now(30))
        .unwrap();
    let server_config = {
        let mut config = open_config();
        config.admission = Admission::AllowList(HashSet::from([listed.node_id()]));
        config
    };
    let mut server = Node::bind(server_config).await;

    let stranger = Node::open().await;
    assert_refused_by_peer(&stranger, &server).await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::NotAllowed(stranger.id())
    );

    // The allow-list applies when dialling too.
    let error = server
        .transport
        .connect(stranger.addr(), Some(stranger.id()))
        .await
        .unwrap_err();
    assert_eq!(auth_error(error), AuthError::NotAllowed(stranger.id()));

    // The listed peer gets through.
    let member = Node::bind(config_with(listed, listed_cert, Admission::Open)).await;
    member
        .transport
        .send(server.id(), server.addr(), &Body::Ping { nonce: 2 })
        .await
        .unwrap();
    let from = server
        .next_matching(|event| match event {
            TransportEvent::Message { from, .. } => Some(from),
            _ => None,
        })
        .await;
    assert_eq!(from, member.id());
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    let mut server = Node::open().await;
    let identity = Identity::generate();
    let cert = identity
        .self_signed_certificate(Validity::days_from_now(30))
        .unwrap();
    raw_dial(
        &server,
        raw_client_config(Some(ed25519_presented(&identity, &cert)), &[b"h3"]),
    )
    .await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::WrongAlpn
    );
    // Offering no ALPN at all is refused the same way.
    raw_dial(
        &server,
        raw_client_config(Some(ed25519_presented(&identity, &cert)), &[]),
    )
    .await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::WrongAlpn
    );
    assert_good_peer_served(&mut server).await;
}

#[tokio::test]
async fn ca_and_allow_list_combined_need_both() {
    let mesh = MeshCa::generate("mesh", Validity::days_from_now(30)).unwrap();
    let issue = |identity: &Identity| {
        mesh.issue(&identity.public_key(), Validity::days_from_now(30))
            .unwrap()
    };
    let member = Identity::generate();
    let unlisted_member = Identity::generate();
    let server_identity = Identity::generate();
    let server_cert = issue(&server_identity);
    let admission = Admission::CaAndAllowList {
        roots: vec![mesh.certificate().der().clone()],
        allowed: HashSet::from([member.node_id(), server_identity.node_id()]),
    };
    let mut server = Node::bind(config_with(server_identity, server_cert, admission)).await;

    let unlisted = Node::bind(config_with(
        unlisted_member.clone(),
        issue(&unlisted_member),
        Admission::Open,
    ))
    .await;
    assert_refused_by_peer(&unlisted, &server).await;
    assert_eq!(
        auth_error(handshake_failure(&mut server).await),
        AuthError::NotAllowed(unlisted.id())
    );

    let listed = Node::bind(config_with(member.clone(), issue(&member), Admission::Open)).await;
    listed
        .transport
        .send(server.id(), server.addr(), &Body::Ping { nonce: 3 })
        .await
        .unwrap();
    let from = server
        .next_matching(|event| match event {
            TransportEvent::Message { from, .. } => Some(from),
            _ => None,
        })
        .await;
    assert_eq!(from, member.node_id());
}

#[tokio::test]
async fn good_peer_keeps_being_served_while_bad_peers_try() {
    let server = Node::open().await;
    let server_id = server.id();
    let server_addr = server.addr();
    let (server_transport, mut server_events) = server.serve();

    let bad = tokio::spawn(async move {
        for round in 0..5u32 {
            let config = match round % 3 {
                0 => raw_client_config(None, &[b"wendy/1"]),
                1 => raw_client_config(Some(p256_presented()), &[b"wendy/1"]),
                _ => {
                    let identity = Identity::generate();
                    let cert = identity
                        .self_signed_certificate(Validity::days_from_now(1))
                        .unwrap();
                    raw_client_config(Some(ed25519_presented(&identity, &cert)), &[b"h3"])
                }
            };
            let endpoint = quinn::Endpoint::client(common::loopback()).unwrap();
            if let Ok(connecting) = endpoint.connect_with(config, server_addr, "wendy") {
                if let Ok(conn) = connecting.await {
                    let _ = conn.closed().await;
                }
            }
        }
    });

    let good = Node::open().await;
    for nonce in 0..50 {
        let answer = good
            .transport
            .request(server_id, server_addr, &Body::Ping { nonce })
            .await
            .unwrap();
        assert_eq!(answer, Body::Pong { nonce });
    }
    bad.await.unwrap();
    // Every bad attempt was refused and reported.
    let mut failures = 0;
    tokio::time::timeout(common::HANG_GUARD, async {
        while failures < 5 {
            match server_events.recv().await.unwrap() {
                TransportEvent::HandshakeFailed { error, .. } => {
                    assert!(matches!(error, ConnectError::Auth(_)), "{error:?}");
                    failures += 1;
                }
                TransportEvent::LinkUp { peer, .. } => assert_eq!(peer, good.id()),
                _ => {}
            }
        }
    })
    .await
    .expect("hang guard: not every bad attempt was reported");
    assert_eq!(server_transport.links().len(), 1);
}

// ---- the committed TEST-ONLY fixtures, under the `ca` policy (trust anchor test-ca.crt) ----

mod fixtures {
    use super::*;
    use wendy::identity::test_fixtures::path;
    use wendy::identity::Certificate;

    fn fixture_cert(name: &str) -> Certificate {
        Certificate::load(&path(&format!("{name}.crt"))).unwrap()
    }

    /// The raw PKCS#8 DER of a fixture key (any algorithm).
    fn fixture_pkcs8(name: &str) -> Vec<u8> {
        let pem = std::fs::read_to_string(path(&format!("{name}.key"))).unwrap();
        rcgen::KeyPair::from_pem(&pem).unwrap().serialize_der()
    }

    fn ca_admission() -> Admission {
        Admission::Ca {
            roots: vec![fixture_cert("test-ca").der().clone()],
        }
    }

    /// A closed-mesh server as test-node-a.
    async fn ca_server() -> Node {
        let identity = Identity::load(&path("test-node-a.key")).unwrap();
        Node::bind(config_with(
            identity,
            fixture_cert("test-node-a"),
            ca_admission(),
        ))
        .await
    }

    /// Presents fixture `name` (its certificate and key) from a raw client.
    async fn present_fixture(server: &Node, name: &str, scheme: SignatureScheme) {
        let key = CertifiedKey::new(
            vec![fixture_cert(name).der().clone()],
            Arc::new(ForceScheme(signing_key(fixture_pkcs8(name)), scheme)),
        );
        raw_dial(server, raw_client_config(Some(key), &[b"wendy/1"])).await;
    }

    async fn refused_as(name: &str, scheme: SignatureScheme) -> AuthError {
        let mut server = ca_server().await;
        present_fixture(&server, name, scheme).await;
        let error = auth_error(handshake_failure(&mut server).await);
        // The mesh member test-node-b is still served.
        let identity = Identity::load(&path("test-node-b.key")).unwrap();
        let member = Node::bind(config_with(
            identity,
            fixture_cert("test-node-b"),
            ca_admission(),
        ))
        .await;
        member
            .transport
            .send(server.id(), server.addr(), &Body::Ping { nonce: 9 })
            .await
            .unwrap();
        let from = server
            .next_matching(|event| match event {
                TransportEvent::Message { from, .. } => Some(from),
                _ => None,
            })
            .await;
        assert_eq!(from, member.id());
        error
    }

    #[tokio::test]
    async fn fixture_expired_is_refused() {
        let error = refused_as("test-expired", SignatureScheme::ED25519).await;
        assert!(matches!(error, AuthError::Expired { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn fixture_not_yet_valid_is_refused() {
        let error = refused_as("test-not-yet-valid", SignatureScheme::ED25519).await;
        assert!(matches!(error, AuthError::NotYetValid { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn fixture_wrong_ca_is_refused() {
        let error = refused_as("test-wrong-ca", SignatureScheme::ED25519).await;
        assert_eq!(error, AuthError::UnknownIssuer);
    }

    #[tokio::test]
    async fn fixture_self_signed_is_refused_by_a_closed_mesh() {
        let error = refused_as("test-self-signed", SignatureScheme::ED25519).await;
        assert_eq!(error, AuthError::UnknownIssuer);
    }

    #[tokio::test]
    async fn fixture_p256_is_refused() {
        let error = refused_as("test-p256", SignatureScheme::ECDSA_NISTP256_SHA256).await;
        assert!(matches!(error, AuthError::NotEd25519 { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn fixture_mismatched_key_is_refused() {
        let error = refused_as("test-mismatch", SignatureScheme::ED25519).await;
        assert_eq!(error, AuthError::BadSignature);
    }
}
