//! rustls configuration: the only place that builds rustls configs.
//!
//! Ring provider, TLS 1.3 only, ed25519 handshake signatures only, ALPN `wendy/1`, mutual
//! authentication with the verifiers of [`super::verifier`]. A rustls upgrade touches this
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

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The private key or certificate chain was refused by rustls.
    #[error("invalid key or certificate: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate chain is empty.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// quinn refused the rustls configuration.
    #[error("tls configuration unusable for quic: {0}")]
    Quic(String),
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

    /// A client config for one dial; the returned verdict reports the handshake's outcome.
    pub(crate) fn client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<(quinn::crypto::rustls::QuicClientConfig, Verdict), TlsError> {
        let verdict = Verdict::default();
        let verifier = ServerVerifier::new(self.admission.clone(), expected, verdict.clone());
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(FixedKey(self.certified_key.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|error| TlsError::Quic(error.to_string()))?;
        Ok((config, verdict))
    }

    /// A server config for one incoming handshake; the verdict reports its outcome.
    pub(crate) fn server_config(
        &self,
    ) -> Result<(quinn::crypto::rustls::QuicServerConfig, Verdict), TlsError> {
        let verdict = Verdict::default();
        let verifier = ClientVerifier::new(self.admission.clone(), verdict.clone());
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(FixedKey(self.certified_key.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT would let a peer send before it is authenticated; never accept early data.
        config.max_early_data_size = 0;
        let config = quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|error| TlsError::Quic(error.to_string()))?;
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
) -> Result<quinn::ClientConfig, super::TransportError> {
    let context = context_of(config)?;
    let (crypto, _) = context
        .client_config(expected)
        .map_err(|error| super::TransportError::Tls(error.to_string()))?;
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
) -> Result<quinn::ServerConfig, super::TransportError> {
    let context = context_of(config)?;
    let (crypto, _) = context
        .server_config()
        .map_err(|error| super::TransportError::Tls(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(super::endpoint::quic_transport_config(
        &config.limits,
    )?));
    Ok(server)
}

fn context_of(config: &super::TransportConfig) -> Result<TlsContext, super::TransportError> {
    TlsContext::new(
        config.identity.private_key_der(),
        config
            .certificate_chain
            .iter()
            .map(|certificate| certificate.der().clone())
            .collect(),
        config.admission.clone(),
    )
    .map_err(|error| super::TransportError::Tls(error.to_string()))
}
