//! A one-request HTTP/1.1 client for the admin endpoint (`wendy status`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// How long `wendy status` waits for the node to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Answers are bounded: a status document of thousands of peers stays far below this.
const MAX_BODY: usize = 16 << 20;

/// GETs `path` from the admin endpoint at `addr`; returns the status code and the body.
pub(crate) async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    tokio::time::timeout(TIMEOUT, get_inner(addr, path, token))
        .await
        .map_err(|_| {
            format!(
                "the admin endpoint at {addr} did not answer within {}s",
                TIMEOUT.as_secs()
            )
        })?
}

async fn get_inner(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        format!(
            "cannot reach the admin endpoint at {addr}: {e}; is a node running with \
             `--admin {addr}`? (pass --admin ADDR to name another)"
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin endpoint at {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "admin client connection ended");
        }
    });
    let mut request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(
            header::USER_AGENT,
            concat!("wendy/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("admin endpoint at {addr}: {e}"))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("admin endpoint at {addr}: reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
