//! rustls configuration: the only place that builds rustls configs.
//!
//! Ring provider, TLS 1.3 only, ed25519 handshake signatures only, ALPN `wendy/1`, mutual
//! authentication with the verifiers of `verifier.rs`. A rustls upgrade touches this
//! module and `verifier.rs` only.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::admission::Admission;
use super::verifier::{ClientVerifier, ServerVerifier, Verdict, ED25519_ONLY};
use crate::id::NodeId;

/// The application protocol Wendy links negotiate.
pub const ALPN: &[u8] = b"wendy/1";

/// The application protocol of a reachability dial-back: a handshake that proves a node can be
/// dialled at an address, then closes at once without becoming a link
/// ([`Transport::dial_back`](super::Transport::dial_back)).
pub const DIAL_BACK_ALPN: &[u8] = b"wendy-dialback/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The private key or certificate chain was refused by rustls.
    #[error("invalid key or certificate: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate chain is empty.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// quinn refused the rustls configuration.
    #[error("tls configuration unusable for quic: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// The crypto provider Wendy uses: ring, TLS 1.3 cipher suites only, ed25519 verification only.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    provider.signature_verification_algorithms = ED25519_ONLY;
    Arc::new(provider)
}

/// This node's TLS material and policy, from which per-handshake configs are made.
#[derive(Debug, Clone)]
pub(crate) struct TlsContext {
    provider: Arc<CryptoProvider>,
    certified_key: Arc<CertifiedKey>,
    admission: Arc<Admission>,
}

impl TlsContext {
    /// Loads the node's key and certificate chain (end-entity first).
    pub(crate) fn new(
        private_key: PrivateKeyDer<'static>,
        certificate_chain: Vec<CertificateDer<'static>>,
        admission: Admission,
    ) -> Result<Self, TlsError> {
        if certificate_chain.is_empty() {
            return Err(TlsError::EmptyChain);
        }
        let provider = provider();
        let certified_key = CertifiedKey::from_der(certificate_chain, private_key, &provider)?;
        Ok(Self {
            provider,
            certified_key: Arc::new(certified_key),
            admission: Arc::new(admission),
        })
    }

    /// A rustls client config for one dial; the returned verdict reports the handshake's
    /// outcome.
    #[cfg(test)]
    pub(crate) fn rustls_client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<(rustls::ClientConfig, Verdict), TlsError> {
        self.rustls_client_config_for(expected, ALPN)
    }

    /// A rustls client config that offers `alpn` only (see [`DIAL_BACK_ALPN`]).
    pub(crate) fn rustls_client_config_for(
        &self,
        expected: Option<NodeId>,
        alpn: &[u8],
    ) -> Result<(rustls::ClientConfig, Verdict), TlsError> {
        let verdict = Verdict::default();
        let verifier = ServerVerifier::new(self.admission.clone(), expected, verdict.clone());
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(FixedKey(self.certified_key.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        // Every handshake presents and verifies full certificates: a resumed session would skip
        // the verifiers, and with them the key -> NodeId binding and the admission check.
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok((config, verdict))
    }

    /// A quinn client crypto config for one dial (see [`Self::rustls_client_config`]).
    pub(crate) fn client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<(quinn::crypto::rustls::QuicClientConfig, Verdict), TlsError> {
        self.client_config_for(expected, ALPN)
    }

    /// A quinn client crypto config offering `alpn` only.
    pub(crate) fn client_config_for(
        &self,
        expected: Option<NodeId>,
        alpn: &[u8],
    ) -> Result<(quinn::crypto::rustls::QuicClientConfig, Verdict), TlsError> {
        let (config, verdict) = self.rustls_client_config_for(expected, alpn)?;
        let config =
            quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(TlsError::Quic)?;
        Ok((config, verdict))
    }

    /// A rustls server config for one incoming handshake; the verdict reports its outcome.
    pub(crate) fn rustls_server_config(&self) -> Result<(rustls::ServerConfig, Verdict), TlsError> {
        let verdict = Verdict::default();
        let verifier = ClientVerifier::new(self.admission.clone(), verdict.clone());
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(FixedKey(self.certified_key.clone())));
        // Links negotiate `wendy/1`; a dial-back handshake is told apart by its own protocol.
        config.alpn_protocols = vec![ALPN.to_vec(), DIAL_BACK_ALPN.to_vec()];
        // 0-RTT would let a peer send before it is authenticated; never accept early data. No
        // resumption either (see `rustls_client_config`).
        config.max_early_data_size = 0;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok((config, verdict))
    }

    /// A quinn server crypto config for one incoming handshake (see
    /// [`Self::rustls_server_config`]).
    pub(crate) fn server_config(
        &self,
    ) -> Result<(quinn::crypto::rustls::QuicServerConfig, Verdict), TlsError> {
        let (config, verdict) = self.rustls_server_config()?;
        let config =
            quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(TlsError::Quic)?;
        Ok((config, verdict))
    }
}

/// Always presents this node's one certificate.
#[derive(Debug)]
struct FixedKey(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for FixedKey {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A quinn client config with Wendy's TLS setup for `config`'s identity (ring, TLS 1.3,
/// ed25519, ALPN `wendy/1`, admission and `expected` node id checked) and its transport limits.
///
/// For tools that speak raw QUIC to Wendy nodes (the link benchmark's baseline, tests).
pub fn quinn_client_config(
    config: &super::TransportConfig,
    expected: Option<NodeId>,
) -> Result<quinn::ClientConfig, super::ConfigError> {
    let context = context_of(config)?;
    let (crypto, _) = context
        .client_config(expected)
        .map_err(super::ConfigError::Tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(super::endpoint::quic_transport_config(
        &config.limits,
    )?));
    Ok(client)
}

/// A quinn server config with Wendy's TLS setup for `config` (mutual authentication, admission
/// checked) and its transport limits. See [`quinn_client_config`].
pub fn quinn_server_config(
    config: &super::TransportConfig,
) -> Result<quinn::ServerConfig, super::ConfigError> {
    let context = context_of(config)?;
    let (crypto, _) = context.server_config().map_err(super::ConfigError::Tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(super::endpoint::quic_transport_config(
        &config.limits,
    )?));
    Ok(server)
}

fn context_of(config: &super::TransportConfig) -> Result<TlsContext, super::ConfigError> {
    TlsContext::new(
        config.identity.private_key_der(),
        config
            .certificate_chain
            .iter()
            .map(|certificate| certificate.der().clone())
            .collect(),
        config.admission.clone(),
    )
    .map_err(super::ConfigError::Tls)
}

#[cfg(test)]
mod tests {
    //! Handshakes driven in memory (no sockets): rustls client and server connections built
    //! from Wendy's configs exchange their TLS bytes directly.
    use rustls::{ClientConnection, ServerConnection};

    use super::*;
    use crate::identity::{Identity, Validity};
    use crate::transport::AuthError;

    fn context(identity: &Identity, admission: Admission) -> TlsContext {
        let certificate = identity
            .self_signed_certificate(Validity::days_from_now(1))
            .unwrap();
        TlsContext::new(
            identity.private_key_der(),
            vec![certificate.der().clone()],
            admission,
        )
        .unwrap()
    }

    /// Runs the handshake to completion or the first error.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..16 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).unwrap();
            if !buffer.is_empty() {
                server.read_tls(&mut buffer.as_slice()).unwrap();
                server.process_new_packets()?;
            }
            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).unwrap();
            if !buffer.is_empty() {
                client.read_tls(&mut buffer.as_slice()).unwrap();
                client.process_new_packets()?;
            }
        }
        panic!("handshake did not finish");
    }

    fn pair(
        client: &TlsContext,
        server: &TlsContext,
        expected: Option<NodeId>,
    ) -> (ClientConnection, ServerConnection, Verdict, Verdict) {
        let (client_config, client_verdict) = client.rustls_client_config(expected).unwrap();
        let (server_config, server_verdict) = server.rustls_server_config().unwrap();
        let client = ClientConnection::new(
            Arc::new(client_config),
            rustls::pki_types::ServerName::try_from("wendy").unwrap(),
        )
        .unwrap();
        let server = ServerConnection::new(Arc::new(server_config)).unwrap();
        (client, server, client_verdict, server_verdict)
    }

    #[test]
    fn both_sides_learn_each_others_node_id() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (mut client, mut server, client_verdict, server_verdict) = pair(
            &context(&a, Admission::Open),
            &context(&b, Admission::Open),
            Some(b.node_id()),
        );
        handshake(&mut client, &mut server).unwrap();
        assert_eq!(client_verdict.peer(), Some(b.node_id()));
        assert_eq!(server_verdict.peer(), Some(a.node_id()));
        assert_eq!(client.alpn_protocol(), Some(ALPN));
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            client.negotiated_cipher_suite().unwrap().suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }

    #[test]
    fn dialling_the_wrong_node_id_fails_in_the_client_verifier() {
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (mut client, mut server, client_verdict, _) = pair(
            &context(&a, Admission::Open),
            &context(&b, Admission::Open),
            Some(c.node_id()),
        );
        assert!(handshake(&mut client, &mut server).is_err());
        assert_eq!(
            client_verdict.error(),
            Some(AuthError::NodeIdMismatch {
                expected: c.node_id(),
                presented: b.node_id()
            })
        );
        assert_eq!(client_verdict.peer(), None);
    }

    #[test]
    fn allow_list_is_enforced_by_the_server_verifier() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let only_b = Admission::AllowList([b.node_id()].into_iter().collect());
        let (mut client, mut server, _, server_verdict) =
            pair(&context(&a, Admission::Open), &context(&b, only_b), None);
        assert!(handshake(&mut client, &mut server).is_err());
        assert_eq!(
            server_verdict.error(),
            Some(AuthError::NotAllowed(a.node_id()))
        );
    }

    #[test]
    fn only_ed25519_signatures_are_offered_and_accepted() {
        let (config, _) = context(&Identity::generate(), Admission::Open)
            .rustls_client_config(None)
            .unwrap();
        let schemes = config
            .crypto_provider()
            .signature_verification_algorithms
            .supported_schemes();
        assert_eq!(schemes, vec![SignatureScheme::ED25519]);
    }

    #[test]
    fn sessions_are_never_resumed() {
        // Even reusing one pair of configs, the second handshake is a full one (certificates
        // presented and verified again), never a resumption.
        let (a, b) = (Identity::generate(), Identity::generate());
        let (client_config, _) = context(&a, Admission::Open)
            .rustls_client_config(None)
            .unwrap();
        let (server_config, _) = context(&b, Admission::Open).rustls_server_config().unwrap();
        let (client_config, server_config) = (Arc::new(client_config), Arc::new(server_config));
        for _ in 0..2 {
            let mut client = ClientConnection::new(
                client_config.clone(),
                rustls::pki_types::ServerName::try_from("wendy").unwrap(),
            )
            .unwrap();
            let mut server = ServerConnection::new(server_config.clone()).unwrap();
            handshake(&mut client, &mut server).unwrap();
            // Let the client read any session ticket the server might send.
            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).unwrap();
            client.read_tls(&mut buffer.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            assert_eq!(client.handshake_kind(), Some(rustls::HandshakeKind::Full));
        }
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_at_setup() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let certificate_of_b = b
            .self_signed_certificate(Validity::days_from_now(1))
            .unwrap();
        let result = TlsContext::new(
            a.private_key_der(),
            vec![certificate_of_b.der().clone()],
            Admission::Open,
        );
        assert!(matches!(result, Err(TlsError::Rustls(_))), "{result:?}");
    }
}
