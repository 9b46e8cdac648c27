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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
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
    tokio::select! {
        end = pump_out(&mut stream.send, outgoing) => end,
        () = pump_in(&mut stream.recv, &paths, peer) => SessionEnd::Broken,
    }
}

/// Framed transmits written at once by one stream write.
const WRITE_BATCH: usize = 64;

/// A keep-alive frame (a zero length).
static KEEPALIVE_FRAME: [u8; 2] = [0, 0];

/// Writes what the socket queued (already framed, see [`push_frame`]), several transmits per
/// write, handing quinn the buffers themselves rather than copies.
async fn pump_out(writer: &mut SendStream, outgoing: &mut mpsc::Receiver<Bytes>) -> SessionEnd {
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    loop {
        batch.clear();
        match tokio::time::timeout(KEEPALIVE, outgoing.recv()).await {
            Ok(Some(framed)) => {
                batch.push(framed);
                while batch.len() < WRITE_BATCH {
                    match outgoing.try_recv() {
                        Ok(framed) => batch.push(framed),
                        Err(_) => break,
                    }
                }
            }
            Ok(None) => return SessionEnd::Closed,
            Err(_) => batch.push(Bytes::from_static(&KEEPALIVE_FRAME)),
        }
        if writer.write_all_chunks(&mut batch).await.is_err() {
            return SessionEnd::Broken;
        }
    }
}

/// Appends `datagram` to `buf` as one frame. Datagrams longer than a frame can say, or empty,
/// are left out (QUIC's packets are far smaller, and never empty).
pub(crate) fn push_frame(buf: &mut BytesMut, datagram: &[u8]) {
    let Ok(len) = u16::try_from(datagram.len()) else {
        return;
    };
    if len == 0 {
        return;
    }
    buf.put_u16(len);
    buf.put_slice(datagram);
}

/// Cuts a session's byte stream back into datagrams. A frame inside one received chunk is
/// handed on as a slice of it (no copy); only a frame split across chunks is copied together.
#[derive(Debug, Default)]
pub(crate) struct Deframer {
    /// The start of a frame whose end has not arrived yet.
    partial: BytesMut,
}

impl Deframer {
    /// Takes the next chunk of the stream and appends the datagrams it completes to `out`
    /// (keep-alives are not datagrams and are dropped).
    pub(crate) fn push(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        let mut data = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        while data.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
            if data.len() < 2 + len {
                break;
            }
            if len > 0 {
                out.push(data.slice(2..2 + len));
            }
            data.advance(2 + len);
        }
        self.partial.extend_from_slice(&data);
    }
}

async fn pump_in(reader: &mut RecvStream, paths: &Paths, peer: NodeId) {
    let mut deframer = Deframer::default();
    let mut datagrams = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, reader.read_chunk(64 << 10, true)).await {
            Ok(Ok(Some(chunk))) => chunk.bytes,
            _ => return,
        };
        deframer.push(chunk, &mut datagrams);
        for datagram in datagrams.drain(..) {
            if !paths.deliver(peer, datagram).await {
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(datagrams: &[&[u8]]) -> Bytes {
        let mut buf = BytesMut::new();
        for datagram in datagrams {
            push_frame(&mut buf, datagram);
            buf.extend_from_slice(&KEEPALIVE_FRAME);
        }
        buf.freeze()
    }

    #[test]
    fn datagrams_come_out_whole_however_the_stream_is_cut() {
        let big = [9u8; 1400];
        let datagrams: [&[u8]; 4] = [b"a", &big, b"", b"last one"];
        let stream = framed(&datagrams);
        let sent: Vec<&[u8]> = datagrams
            .iter()
            .copied()
            .filter(|d| !d.is_empty())
            .collect();
        for cut in [1, 2, 3, 7, 1401, stream.len()] {
            let mut deframer = Deframer::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(cut) {
                deframer.push(Bytes::copy_from_slice(chunk), &mut out);
            }
            let out: Vec<&[u8]> = out.iter().map(|d| &d[..]).collect();
            assert_eq!(out, sent, "cut every {cut} bytes");
            assert!(deframer.partial.is_empty());
        }
    }

    #[test]
    fn an_oversized_datagram_is_left_out_rather_than_misframed() {
        let mut buf = BytesMut::new();
        push_frame(&mut buf, &[1u8; 70_000]);
        push_frame(&mut buf, b"next");
        let mut out = Vec::new();
        Deframer::default().push(buf.freeze(), &mut out);
        assert_eq!(out, vec![Bytes::from_static(b"next")]);
    }
}
