//! Byte plumbing of the TCP tunnels: a local TCP connection spliced to a QUIC bi stream, each
//! direction copied on its own so that a FIN in one direction (TCP write shutdown, QUIC stream
//! finish) is passed on without closing the other.

use std::io;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::transport::RawStream;
use crate::wire::codes::StreamErrorCode;

/// Copy buffer per direction.
const BUFFER: usize = 64 * 1024;

/// Bytes carried by a finished tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Carried {
    /// From the TCP side into the stream.
    pub(crate) to_stream: u64,
    /// From the stream to the TCP side.
    pub(crate) to_tcp: u64,
}

/// Copies both ways until both directions ended. A clean end of one direction is passed on as
/// a clean end (TCP FIN becomes a QUIC finish and vice versa) while the other keeps flowing; an
/// error in either direction resets the stream and the TCP connection (RST), both ways.
pub(crate) async fn splice(tcp: TcpStream, mut stream: RawStream) -> io::Result<Carried> {
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let outcome = {
        let (mut send, recv) = stream.io();
        let to_stream = async {
            let mut reader = BufReader::with_capacity(BUFFER, &mut tcp_read);
            let n = tokio::io::copy_buf(&mut reader, &mut send).await?;
            // Finishes our direction of the stream: the peer reads a clean end.
            send.shutdown().await?;
            Ok::<u64, io::Error>(n)
        };
        let to_tcp = async {
            let mut reader = BufReader::with_capacity(BUFFER, recv);
            let n = tokio::io::copy_buf(&mut reader, &mut tcp_write).await?;
            tcp_write.shutdown().await?;
            Ok::<u64, io::Error>(n)
        };
        both(to_stream, to_tcp).await
    };
    match outcome {
        Ok((to_stream, to_tcp)) => Ok(Carried { to_stream, to_tcp }),
        Err(error) => {
            stream.reset(StreamErrorCode::TunnelBroken);
            if let Ok(tcp) = tcp_read.reunite(tcp_write) {
                reset_tcp(tcp);
            }
            Err(error)
        }
    }
}

/// Closes a TCP connection with a reset (RST), so the peer sees an error rather than a clean
/// end of data.
pub(crate) fn reset_tcp(tcp: TcpStream) {
    // Zero linger makes close send RST and never blocks.
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// Runs both directions; returns both results, or the first error at once (the other direction
/// is then dropped).
async fn both(
    a: impl std::future::Future<Output = io::Result<u64>>,
    b: impl std::future::Future<Output = io::Result<u64>>,
) -> io::Result<(u64, u64)> {
    tokio::pin!(a, b);
    let (mut a_done, mut b_done) = (None, None);
    while a_done.is_none() || b_done.is_none() {
        tokio::select! {
            result = &mut a, if a_done.is_none() => a_done = Some(result?),
            result = &mut b, if b_done.is_none() => b_done = Some(result?),
        }
    }
    Ok((a_done.unwrap_or(0), b_done.unwrap_or(0)))
}
