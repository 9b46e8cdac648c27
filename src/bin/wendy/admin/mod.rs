//! The admin endpoint of `wendy node --admin ADDR`: a small HTTP/1.1 server for operators.
//!
//! - `/metrics`: the node's counters in the Prometheus (OpenMetrics) text format ([`metrics`]).
//! - `/status`: a JSON snapshot ([`document`]): the stdin `status` object plus version, uptime,
//!   certificate expiry and a per-peer view (`peers`) with RTT, bytes and last heard.
//! - `/health`: `200 ok` while the node is part of an overlay, `503` otherwise (health checks).
//! - `/`: a self-contained HTML page (inline script and style, no outside resources) that
//!   draws `/status` and refreshes itself.
//!
//! It binds a loopback address, unless it is given a bearer-token file; with a token, every
//! request but the page itself (a static file with no data) must carry
//! `Authorization: Bearer TOKEN`. Without a token, requests must name the host by IP address or
//! `localhost`, so a web page the operator visits cannot reach the endpoint through a DNS name
//! that resolves to 127.0.0.1 (DNS rebinding).
//!
//! This module reads the node through its public API ([`Node::status`], [`Mesh::status`]) only.

pub(crate) mod client;
mod document;
mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use wendy::id::NodeId;
use wendy::mesh::Mesh;
use wendy::node::Node;

pub(crate) use document::CertificateInfo;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The page at `/`.
const PAGE: &str = include_str!("page.html");

/// Where and how the admin endpoint listens.
#[derive(Debug, Clone)]
pub(crate) struct AdminOptions {
    /// The TCP address.
    pub(crate) listen: SocketAddr,
    /// A file holding the bearer token; required for a non-loopback address.
    pub(crate) token_file: Option<PathBuf>,
}

/// The bearer token, read from its file.
#[derive(Clone)]
struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Whether `presented` (an `Authorization` header) carries this token. The comparison
    /// takes the same time wherever the first difference is.
    fn accepts(&self, presented: Option<&HeaderValue>) -> bool {
        let Some(given) = presented
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Reads a token file: its first line, trimmed; it must not be empty.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read admin token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(format!(
            "admin token file {} is empty; put a long random secret in it, e.g. \
             `openssl rand -hex 32 > {}`",
            path.display(),
            path.display()
        ));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "admin token file {} holds spaces or control characters; use a hex or base64 \
             secret",
            path.display()
        ));
    }
    Ok(token)
}

/// The admin endpoint's socket, bound before the node starts so that a clash is found at once.
pub(crate) struct BoundAdmin {
    listener: TcpListener,
    token: Option<Token>,
}

impl BoundAdmin {
    /// Checks the options (loopback, or a token) and binds the socket.
    pub(crate) async fn bind(options: &AdminOptions) -> Result<Self, String> {
        let token = match &options.token_file {
            Some(path) => Some(Token(read_token(path)?.into())),
            None => None,
        };
        if !options.listen.ip().is_loopback() && token.is_none() {
            return Err(format!(
                "refusing to serve the admin endpoint on {}, a non-loopback address, without a \
                 token: pass --admin-token FILE (a file holding a secret, e.g. from `openssl \
                 rand -hex 32`), or listen on 127.0.0.1",
                options.listen
            ));
        }
        let listener = TcpListener::bind(options.listen).await.map_err(|e| {
            format!(
                "cannot listen on admin address {}: {e}; pick another --admin address",
                options.listen
            )
        })?;
        Ok(Self { listener, token })
    }

    /// The bound address (with the port picked for port 0).
    pub(crate) fn local_addr(&self) -> Result<SocketAddr, String> {
        self.listener
            .local_addr()
            .map_err(|e| format!("cannot read the admin address: {e}"))
    }

    /// Serves requests on a task of its own until the runtime ends.
    pub(crate) fn serve(self, state: AdminState) {
        let shared = Arc::new(Shared {
            state,
            token: self.token,
        });
        let listener = self.listener;
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, mostly: wait instead of spinning.
                        tracing::warn!(%error, "admin endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(request).await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(error) = served {
                        tracing::debug!(%error, "admin endpoint: connection ended");
                    }
                    drop(permit);
                });
            }
        });
    }
}

/// What the admin endpoint reads: the node, its mesh, and what the run loop observed.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) node: Node,
    pub(crate) mesh: Mesh,
    /// The address given to `--listen` (the node's own address is the advertised one).
    pub(crate) listen: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) certificate: CertificateInfo,
    pub(crate) observed: Observed,
    /// Output lines `wendy node` dropped because stdout was not read.
    pub(crate) output_dropped: fn() -> u64,
}

/// What the run loop sees go by that the node's status does not hold: when each peer was last
/// heard from (its heartbeats and direct messages).
#[derive(Clone, Default)]
pub(crate) struct Observed {
    heard: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

/// Peers remembered in [`Observed`]; past this, the longest silent are forgotten.
const MAX_HEARD: usize = 4096;

impl Observed {
    /// Notes that `peer` was heard from now.
    pub(crate) fn heard(&self, peer: NodeId) {
        let Ok(mut heard) = self.heard.lock() else {
            return;
        };
        let now = Instant::now();
        heard.insert(peer, now);
        if heard.len() > MAX_HEARD {
            // Rare (a bounded leaf set sends the heartbeats): a linear pass is fine.
            if let Some(oldest) = heard.iter().min_by_key(|(_, t)| **t).map(|(id, _)| *id) {
                heard.remove(&oldest);
            }
        }
    }

    /// How long ago `peer` was last heard from.
    fn since(&self, peer: NodeId, now: Instant) -> Option<Duration> {
        let heard = self.heard.lock().ok()?;
        heard.get(&peer).map(|t| now.saturating_duration_since(*t))
    }
}

struct Shared {
    state: AdminState,
    token: Option<Token>,
}

type Reply = Response<Full<Bytes>>;

impl Shared {
    async fn handle(&self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        }
        match &self.token {
            // The page is the same static file for everyone; its data comes from /status.
            Some(token) if path != "/" => {
                if !token.accepts(request.headers().get(header::AUTHORIZATION)) {
                    let mut reply = plain(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token (send Authorization: Bearer TOKEN)\n",
                    );
                    reply
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return reply;
                }
            }
            Some(_) => {}
            None => {
                if !host_is_local(request.headers().get(header::HOST)) {
                    return plain(
                        StatusCode::FORBIDDEN,
                        "the admin endpoint answers requests for an IP address or localhost \
                         only\n",
                    );
                }
            }
        }
        match path {
            "/" | "/index.html" => with_type(
                Response::new(Full::new(Bytes::from_static(PAGE.as_bytes()))),
                "text/html; charset=utf-8",
            ),
            "/status" => match self.snapshot().await {
                Ok(snapshot) => match serde_json::to_vec_pretty(&document::Document::new(
                    &self.state,
                    &snapshot,
                )) {
                    Ok(body) => with_type(
                        Response::new(Full::new(Bytes::from(body))),
                        "application/json",
                    ),
                    Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                },
                Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
            },
            "/metrics" => match self.snapshot().await {
                Ok(snapshot) => match metrics::render(snapshot) {
                    Ok(text) => with_type(
                        Response::new(Full::new(Bytes::from(text))),
                        metrics::CONTENT_TYPE,
                    ),
                    Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                },
                Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
            },
            "/health" => match self.state.node.status().await {
                Ok(status) if status.active => plain(StatusCode::OK, "ok\n"),
                Ok(_) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not part of an overlay yet\n",
                ),
                Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
            },
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /, /status, /metrics or /health\n",
            ),
        }
    }

    async fn snapshot(&self) -> Result<document::Snapshot, String> {
        let status = self
            .state
            .node
            .status()
            .await
            .map_err(|e| format!("the node is not running: {e}"))?;
        Ok(document::Snapshot::take(&self.state, status))
    }
}

/// Whether a request's `Host` names this machine by address or as `localhost`.
fn host_is_local(host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 clients may send no Host; they cannot be a rebinding browser.
        return host.is_none();
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn plain(status: StatusCode, text: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(text.to_owned())));
    *reply.status_mut() = status;
    with_type(reply, "text/plain; charset=utf-8")
}

fn with_type(mut reply: Reply, content_type: &'static str) -> Reply {
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page loads nothing from elsewhere and may be framed by no one.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; frame-ancestors 'none'",
        ),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_and_localhost_hosts_pass_without_a_token() {
        let ok = |h: &str| host_is_local(Some(&HeaderValue::from_str(h).unwrap()));
        assert!(ok("127.0.0.1:9090"));
        assert!(ok("[::1]:9090"));
        assert!(ok("localhost:9090"));
        assert!(ok("LOCALHOST"));
        assert!(!ok("evil.example:9090"));
        assert!(!ok("127.0.0.1.nip.io:9090"));
        assert!(host_is_local(None));
    }

    #[test]
    fn the_token_must_match_exactly() {
        let token = Token("s3cret".into());
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(token.accepts(Some(&header("Bearer s3cret"))));
        assert!(!token.accepts(Some(&header("Bearer s3cre"))));
        assert!(!token.accepts(Some(&header("Bearer s3cret2"))));
        assert!(!token.accepts(Some(&header("Basic s3cret"))));
        assert!(!token.accepts(None));
    }

    #[test]
    fn token_files_must_hold_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("is empty"));
        std::fs::write(&path, "abc def\n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("spaces"));
        std::fs::write(&path, "  0123abcd \n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "0123abcd");
        let missing = dir.path().join("nope");
        assert!(read_token(&missing).unwrap_err().contains("cannot read"));
    }
}
