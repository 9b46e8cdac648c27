//! The transport's errors: one type per operation, as quinn has, with the typed cause kept as
//! the [`source`](std::error::Error::source) (a quinn, rustls, io or wire error) rather than
//! flattened to a string.
//!
//! | operation | error |
//! |---|---|
//! | building a quinn config ([`tls::quinn_client_config`](super::tls::quinn_client_config)) | [`ConfigError`] |
//! | [`Transport::bind`](super::Transport::bind) | [`BindError`] |
//! | [`Transport::connect`](super::Transport::connect), an incoming handshake ([`TransportEvent::HandshakeFailed`](super::TransportEvent::HandshakeFailed)) | [`ConnectError`] |
//! | [`Transport::send`](super::Transport::send), [`Transport::open_stream`](super::Transport::open_stream) | [`SendError`] |
//! | [`Transport::request`](super::Transport::request) | [`RequestError`] |
//! | [`Responder::reply`](super::Responder::reply) | [`ReplyError`] |
//!
//! Every message names its cause too, so that an error printed with `{}` (a log line, the CLI)
//! says the whole story without walking the chain.

use std::net::SocketAddr;

use quinn::{ConnectionError, ReadError, WriteError};

use super::{AuthError, StreamErrorCode, TlsError};
use crate::wire::WireError;

/// Why a quinn configuration could not be built from a
/// [`TransportConfig`](super::TransportConfig).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node's key or certificate is unusable.
    #[error("tls setup: {0}")]
    Tls(#[from] TlsError),
    /// A limit is unusable ([`Limits::validate`](super::Limits::validate)).
    #[error("limits: {0}")]
    Limits(#[from] super::LimitsError),
    /// [`Limits::max_idle_timeout`](super::Limits::max_idle_timeout) is beyond what QUIC can
    /// carry.
    #[error("max_idle_timeout: {0}")]
    MaxIdleTimeout(#[source] quinn::VarIntBoundsExceeded),
}

/// Why [`Transport::bind`](super::Transport::bind) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The configuration is unusable (key, certificate or limits).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The UDP socket could not be bound, or its address read.
    #[error("cannot bind {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a link to a peer could not be set up: by [`Transport::connect`](super::Transport::connect)
/// and the dial behind a send or request, or an incoming handshake
/// ([`TransportEvent::HandshakeFailed`](super::TransportEvent::HandshakeFailed)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer failed this node's checks in the handshake.
    #[error("this node refused the peer: {0}")]
    Auth(#[from] AuthError),
    /// The peer refused this node in the handshake (its TLS alert or close reason).
    #[error("the peer refused this node: {}", refusal(.0))]
    RefusedByPeer(#[source] ConnectionError),
    /// The handshake did not finish within
    /// [`Limits::connect_timeout`](super::Limits::connect_timeout).
    #[error("connecting to {0} timed out (no node answered there)")]
    Timeout(SocketAddr),
    /// The dial could not start (bad address, endpoint closing).
    #[error("cannot connect to {addr}: {}", start_failure(.addr, .source))]
    Start {
        /// The address.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake broke (not a refusal: a protocol error, a reset).
    #[error("link failed: {0}")]
    Connection(#[source] ConnectionError),
    /// The TLS configuration for this dial could not be built.
    #[error("tls setup: {0}")]
    Tls(#[source] TlsError),
    /// The pool is full and every link in it is busy.
    #[error("too many connections: all {max} links are busy")]
    TooManyConnections {
        /// The pool's cap.
        max: usize,
    },
    /// The dial was not attempted: this node's own bound on dials (in flight, or a recent
    /// failure at the address). Says nothing new about the peer.
    #[error("dial not attempted: {0}")]
    DialRefused(#[from] super::DialRefused),
    /// The address is this node's own (the dial reached this very process).
    #[error("{0} is this node itself")]
    SelfConnection(SocketAddr),
    /// The node at the address proved this node's own key in its handshake and is not this
    /// process: another process runs with the same key there.
    #[error("{0} runs with this node's own key (another process holds this identity)")]
    SameIdentity(SocketAddr),
    /// The peer refused the link because the identity presented is already linked there from
    /// another address, and that link still answers (close code
    /// [`CloseCode::IdentityInUse`](super::CloseCode::IdentityInUse)).
    #[error("the peer already has a live link to this node's identity at {live_at}")]
    IdentityInUse {
        /// Where the peer says the live holder of the identity is (not verified).
        live_at: SocketAddr,
    },
    /// As [`Self::IdentityInUse`], but the peer's close reason did not name an address.
    #[error(
        "the peer already has a live link to this node's identity (at an address it did not name)"
    )]
    IdentityInUseUnnamed,
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
    /// An incoming handshake was a reachability dial-back: answered by completing it, then
    /// closed (never a link).
    #[error("the handshake was a dial-back, closed once complete")]
    DialBack,
}

impl ConnectError {
    /// The refusal a peer's `IdentityInUse` close means, from its reason (the live address as
    /// text).
    pub(crate) fn identity_in_use(reason: &[u8]) -> Self {
        match std::str::from_utf8(reason)
            .ok()
            .and_then(|text| text.trim().parse::<SocketAddr>().ok())
        {
            Some(live_at) => Self::IdentityInUse { live_at },
            None => Self::IdentityInUseUnnamed,
        }
    }
}

/// Why the peer closed a handshake, from its TLS alert: Wendy's verifiers send one alert per
/// reason (see `verifier::to_rustls`), so the alert says which check this node failed there.
fn refusal(error: &ConnectionError) -> String {
    const CRYPTO_ERRORS: std::ops::Range<u64> = 0x100..0x200;
    let alert = match error {
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            CRYPTO_ERRORS
                .contains(&code)
                .then(|| code - CRYPTO_ERRORS.start)
        }
        _ => None,
    };
    let why = match alert {
        Some(45) => {
            "it says this node's certificate has expired or is not valid yet (renew it \
                     with `wendy ca issue`, and check both hosts' clocks)"
        }
        Some(48) => {
            "this node's certificate is not from its mesh CA (the two sides have \
                     different CAs: check --ca and --cert on both)"
        }
        Some(49) => "this node is not on its allow-list (add this node's id there with --allow)",
        Some(116) => "it requires a certificate",
        Some(120) => "it does not speak wendy/1 (is it a wendy node?)",
        _ => return error.to_string(),
    };
    why.to_owned()
}

/// Why a dial could not start, with the fix for the common case: an address of the other IP
/// family than the socket this node listens on.
fn start_failure(addr: &SocketAddr, error: &quinn::ConnectError) -> String {
    match error {
        quinn::ConnectError::InvalidRemoteAddress(_) if addr.is_ipv6() => format!(
            "{error}: this node listens on IPv4 and cannot reach an IPv6 address (listen on \
             [::]:PORT to dial both)"
        ),
        _ => error.to_string(),
    }
}

/// Why a stream failed once it was open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer stopped or reset the stream with this code.
    #[error("stream refused by peer with code {code} ({known:?})")]
    Refused {
        /// The raw code.
        code: u64,
        /// The code, if Wendy defines it.
        known: Option<StreamErrorCode>,
    },
    /// The link failed while the stream was in use.
    #[error("link failed: {0}")]
    ConnectionLost(#[source] ConnectionError),
    /// Writing failed for another reason (the stream was already closed).
    #[error("stream failed: {0}")]
    Write(#[source] WriteError),
    /// Reading failed for another reason.
    #[error("stream failed: {0}")]
    Read(#[source] ReadError),
    /// The stream could not be finished (it was already closed).
    #[error("stream failed: {0}")]
    Finish(#[source] quinn::ClosedStream),
}

impl StreamError {
    pub(crate) fn refused(code: quinn::VarInt) -> Self {
        Self::Refused {
            code: code.into_inner(),
            known: StreamErrorCode::from_u64(code.into_inner()),
        }
    }
}

impl From<WriteError> for StreamError {
    /// Keeps the peer's stop code.
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Stopped(code) => Self::refused(code),
            WriteError::ConnectionLost(error) => Self::ConnectionLost(error),
            other => Self::Write(other),
        }
    }
}

impl From<ReadError> for StreamError {
    /// Keeps the peer's reset code.
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Reset(code) => Self::refused(code),
            ReadError::ConnectionLost(error) => Self::ConnectionLost(error),
            other => Self::Read(other),
        }
    }
}

impl From<quinn::StoppedError> for StreamError {
    fn from(error: quinn::StoppedError) -> Self {
        match error {
            quinn::StoppedError::ConnectionLost(error) => Self::ConnectionLost(error),
            quinn::StoppedError::ZeroRttRejected => Self::Write(WriteError::ZeroRttRejected),
        }
    }
}

impl From<quinn::ClosedStream> for StreamError {
    fn from(error: quinn::ClosedStream) -> Self {
        Self::Finish(error)
    }
}

/// Why [`Transport::send`](super::Transport::send) or
/// [`Transport::open_stream`](super::Transport::open_stream) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The frame could not be encoded, or is larger than
    /// [`Limits::max_message_size`](super::Limits::max_message_size). Nothing was sent.
    #[error("bad frame: {0}")]
    Encode(#[source] WireError),
    /// There is no link to the peer and none could be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The peer gave no stream credit within
    /// [`Limits::open_stream_timeout`](super::Limits::open_stream_timeout).
    #[error("opening a stream timed out")]
    OpenStreamTimeout,
    /// The link failed as the stream was opened.
    #[error("link failed: {0}")]
    Connection(#[source] ConnectionError),
    /// The stream failed while the frame was written.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Why [`Transport::request`](super::Transport::request) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be encoded, or is larger than
    /// [`Limits::max_message_size`](super::Limits::max_message_size). Nothing was sent.
    #[error("bad frame: {0}")]
    Encode(#[source] WireError),
    /// There is no link to the peer and none could be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The peer gave no stream credit within
    /// [`Limits::open_stream_timeout`](super::Limits::open_stream_timeout).
    #[error("opening a stream timed out")]
    OpenStreamTimeout,
    /// The link failed as the stream was opened.
    #[error("link failed: {0}")]
    Connection(#[source] ConnectionError),
    /// The stream failed while the request was written or the answer read (a peer that
    /// dropped the request refuses it with [`StreamErrorCode::NoReply`]).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The answer is not a valid frame, or is larger than
    /// [`Limits::max_message_size`](super::Limits::max_message_size).
    #[error("bad answer: {0}")]
    Decode(#[source] WireError),
    /// The answer did not arrive within
    /// [`Limits::request_timeout`](super::Limits::request_timeout).
    #[error("request timed out")]
    Timeout,
}

impl From<SendError> for RequestError {
    /// The request's own send failed.
    fn from(error: SendError) -> Self {
        match error {
            SendError::Encode(error) => Self::Encode(error),
            SendError::Connect(error) => Self::Connect(error),
            SendError::OpenStreamTimeout => Self::OpenStreamTimeout,
            SendError::Connection(error) => Self::Connection(error),
            SendError::Stream(error) => Self::Stream(error),
        }
    }
}

/// Why [`Responder::reply`](super::Responder::reply) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The answer could not be encoded, or is larger than
    /// [`Limits::max_message_size`](super::Limits::max_message_size). The request is refused.
    #[error("bad frame: {0}")]
    Encode(#[source] WireError),
    /// The stream failed while the answer was written.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A program can reach the typed cause of a failed operation through `source()`, and the
    /// message alone still names it.
    #[test]
    fn the_cause_is_kept_typed_and_named_in_the_message() {
        let auth = AuthError::NotAllowed(crate::id::NodeId::from_bytes([7; 16]));
        let error = SendError::from(ConnectError::Auth(auth.clone()));
        let source = error.source().expect("a cause");
        assert_eq!(source.downcast_ref::<AuthError>(), Some(&auth));
        assert!(error.to_string().contains(&auth.to_string()), "{error}");

        let refused = RequestError::from(SendError::Stream(StreamError::from(
            WriteError::Stopped(StreamErrorCode::NoReply.to_varint()),
        )));
        assert!(
            matches!(
                refused,
                RequestError::Stream(StreamError::Refused {
                    known: Some(StreamErrorCode::NoReply),
                    ..
                })
            ),
            "{refused:?}"
        );
    }
}
