//! The rustls certificate verifiers that bind a peer's certificate key to its [`NodeId`].
//!
//! One verifier per handshake (built by [`super::tls`]), so the typed [`AuthError`] of a
//! rejection, or the node id of an accepted peer, can be read back by the code that drove the
//! handshake through a shared [`Verdict`].
//!
//! Both verifiers accept only TLS 1.3 with ed25519 handshake signatures and apply the node's
//! [`Admission`] policy to the presented certificate.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use super::admission::{Admission, AuthError, PeerRole};
use crate::id::NodeId;

/// The only handshake signature scheme Wendy accepts.
pub(crate) static ED25519_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[webpki::ring::ED25519],
    mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])],
};

/// What one handshake's verifier concluded about the peer.
#[derive(Debug, Default)]
pub(crate) struct VerdictState {
    /// The peer's node id, once its certificate passed.
    pub(crate) peer: Option<NodeId>,
    /// Why the peer was refused, if it was.
    pub(crate) error: Option<AuthError>,
}

/// Shared between one handshake's verifier and the task awaiting that handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct Verdict(Arc<Mutex<VerdictState>>);

impl Verdict {
    fn record(&self, result: &Result<NodeId, AuthError>) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(id) => {
                state.peer = Some(*id);
                state.error = None;
            }
            Err(error) => state.error = Some(error.clone()),
        }
    }

    fn record_error(&self, error: AuthError) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).error = Some(error);
    }

    /// The rejection reason, if the verifier refused the peer.
    pub(crate) fn error(&self) -> Option<AuthError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .error
            .clone()
    }

    /// The verified peer id, if the certificate passed.
    pub(crate) fn peer(&self) -> Option<NodeId> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).peer
    }
}

/// Maps an [`AuthError`] to the rustls error whose TLS alert tells the peer the most without
/// revealing anything about the overlay.
fn to_rustls(error: &AuthError) -> rustls::Error {
    let certificate_error = match error {
        AuthError::NoCertificate => return rustls::Error::NoCertificatesPresented,
        AuthError::BadSignature => CertificateError::BadSignature,
        AuthError::Expired { .. } => CertificateError::Expired,
        AuthError::NotYetValid { .. } => CertificateError::NotValidYet,
        AuthError::UnknownIssuer => CertificateError::UnknownIssuer,
        AuthError::NodeIdMismatch { .. } | AuthError::NotAllowed(_) => {
            CertificateError::ApplicationVerificationFailure
        }
        AuthError::BadCertificate(_)
        | AuthError::NotEd25519 { .. }
        | AuthError::InvalidChain(_)
        | AuthError::WrongAlpn => CertificateError::Other(OtherError(Arc::new(error.clone()))),
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

/// What both verifiers do alike: apply the admission policy to the presented certificate,
/// record the verdict, and accept only TLS 1.3 ed25519 handshake signatures.
#[derive(Debug)]
struct Checker {
    admission: Arc<Admission>,
    verdict: Verdict,
}

impl Checker {
    fn certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
        expected: Option<NodeId>,
    ) -> Result<(), rustls::Error> {
        let result = self
            .admission
            .check(end_entity, intermediates, now, role, expected);
        self.verdict.record(&result);
        result.map(drop).map_err(|error| to_rustls(&error))
    }

    /// The configs enable TLS 1.3 only; a TLS 1.2 signature means something is very wrong.
    fn tls12_signature(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            self.verdict.record_error(AuthError::BadSignature);
            return Err(to_rustls(&AuthError::BadSignature));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ED25519_ONLY).inspect_err(
            |_| {
                self.verdict.record_error(AuthError::BadSignature);
            },
        )
    }
}

/// Verifies the server's certificate when this node dials.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    checker: Checker,
    expected: Option<NodeId>,
}

impl ServerVerifier {
    /// A verifier for one dial; `expected` is the node id being dialled, if known.
    pub(crate) fn new(
        admission: Arc<Admission>,
        expected: Option<NodeId>,
        verdict: Verdict,
    ) -> Self {
        Self {
            checker: Checker { admission, verdict },
            expected,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.checker
            .certificate(
                end_entity,
                intermediates,
                now,
                PeerRole::Server,
                self.expected,
            )
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls12_signature()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies a dialling client's certificate (client authentication is mandatory).
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    checker: Checker,
}

impl ClientVerifier {
    /// A verifier for one incoming handshake.
    pub(crate) fn new(admission: Arc<Admission>, verdict: Verdict) -> Self {
        // An empty client certificate is refused by rustls itself (`client_auth_mandatory`)
        // before any method here runs; the accepting side recognises it by the TLS alert.
        Self {
            checker: Checker { admission, verdict },
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.checker
            .certificate(end_entity, intermediates, now, PeerRole::Client, None)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls12_signature()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
