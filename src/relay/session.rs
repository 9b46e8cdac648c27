//! One relay session: the datagrams between this node and one relayed peer, carried on a QUIC
//! stream to (or from) a relay.
//!
//! Framing, the same on every leg (the relay copies the bytes as they are): a 2-byte big-endian
//! length, then that many bytes of one QUIC datagram of the end-to-end connection. A length of
//! zero is a keep-alive: each end sends one every [`KEEPALIVE`], and an end that hears nothing
//! for [`SILENCE`] declares the session dead, so a relay that died is noticed in seconds (the
//! QUIC idle timeout of the link to it is a minute).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::socket::{Paths, SessionSender};
use crate::id::NodeId;
use crate::transport::RawStream;

/// How often a session (and a home stream) sends a keep-alive.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(1);

/// How long a session (or a home stream) may stay silent before it counts as dead.
pub(crate) const SILENCE: Duration = Duration::from_secs(3);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The socket dropped the session (the node is shutting down).
    Closed,
    /// The stream failed or went silent: the relay or the peer is gone.
    Broken,
}

/// Carries datagrams both ways until the stream breaks or goes silent.
pub(crate) async fn run(
    paths: Arc<Paths>,
    peer: NodeId,
    outgoing: &mut mpsc::Receiver<Bytes>,
    stream: &mut RawStream,
) -> SessionEnd {
    let (writer, reader) = stream.io();
    tokio::select! {
        end = pump_out(writer, outgoing) => end,
        () = pump_in(reader, &paths, peer) => SessionEnd::Broken,
    }
}

async fn pump_out(
    mut writer: impl AsyncWrite + Unpin,
    outgoing: &mut mpsc::Receiver<Bytes>,
) -> SessionEnd {
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        buf.clear();
        match tokio::time::timeout(KEEPALIVE, outgoing.recv()).await {
            Ok(Some(datagram)) => {
                push_frame(&mut buf, &datagram);
                // Batch what is already queued into one write.
                while buf.len() < 48 << 10 {
                    match outgoing.try_recv() {
                        Ok(datagram) => push_frame(&mut buf, &datagram),
                        Err(_) => break,
                    }
                }
            }
            Ok(None) => return SessionEnd::Closed,
            Err(_) => buf.extend_from_slice(&[0, 0]),
        }
        if writer.write_all(&buf).await.is_err() {
            return SessionEnd::Broken;
        }
    }
}

fn push_frame(buf: &mut Vec<u8>, datagram: &[u8]) {
    // Datagrams longer than a frame can say are not QUIC's (its packets are far smaller).
    let Ok(len) = u16::try_from(datagram.len()) else {
        return;
    };
    if len == 0 {
        return;
    }
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(datagram);
}

async fn pump_in(reader: impl AsyncRead + Unpin, paths: &Paths, peer: NodeId) {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(SILENCE, reader.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 {
            continue;
        }
        let mut datagram = BytesMut::zeroed(len);
        match tokio::time::timeout(SILENCE, reader.read_exact(&mut datagram)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if !paths.deliver(peer, datagram.freeze()).await {
            return;
        }
    }
}

/// Installs a session for `peer` in the socket and runs it on `stream`; returns how it ended
/// (the session is gone from the socket by then).
pub(crate) async fn install_and_run(
    paths: Arc<Paths>,
    peer: NodeId,
    stream: &mut RawStream,
) -> SessionEnd {
    let (sender, mut outgoing) = mpsc::channel(super::socket::SESSION_QUEUE);
    paths.open_session(peer, sender.clone());
    let end = run(paths.clone(), peer, &mut outgoing, stream).await;
    close(&paths, peer, &sender);
    end
}

/// Forgets a session in the socket.
pub(crate) fn close(paths: &Paths, peer: NodeId, sender: &SessionSender) {
    paths.close_session(peer, sender);
}
