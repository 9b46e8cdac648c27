//! The one-frame-per-stream protocol on top of quinn streams.
//!
//! Uni stream: one frame, to the end of the stream. Bi stream: a 4-byte big-endian length, the
//! header frame, then either the end of the opener's direction (a request; the answer is one
//! frame to the end of the other direction) or raw bytes (a tunnel).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ReadError, ReadExactError, ReadToEndError, RecvStream, SendStream, WriteError};

use super::{StreamErrorCode, TransportError};
use crate::wire::{self, Body, WireError};

/// Marks a link busy while it is held: the pool never evicts a busy link.
#[derive(Debug)]
pub(crate) struct LinkGuard(Arc<AtomicUsize>);

impl LinkGuard {
    pub(crate) fn new(in_flight: &Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::Relaxed);
        Self(in_flight.clone())
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A raw bi-directional stream to a peer, after its header frame (see
/// [`super::Transport::open_stream`]). The link counts as busy while this exists.
#[derive(Debug)]
pub struct RawStream {
    /// Our direction.
    pub send: SendStream,
    /// The peer's direction.
    pub recv: RecvStream,
    _guard: LinkGuard,
}

impl RawStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream, guard: LinkGuard) -> Self {
        Self {
            send,
            recv,
            _guard: guard,
        }
    }
}

/// Where the answer to a [`super::TransportEvent::Request`] goes.
///
/// Dropping it without answering resets the stream with [`StreamErrorCode::NoReply`], so the
/// requester fails at once instead of waiting for its timeout.
#[derive(Debug)]
pub struct Responder {
    send: Option<SendStream>,
    max_message_size: usize,
    _guard: LinkGuard,
}

impl Responder {
    pub(crate) fn new(send: SendStream, max_message_size: usize, guard: LinkGuard) -> Self {
        Self {
            send: Some(send),
            max_message_size,
            _guard: guard,
        }
    }

    /// Sends the answer and finishes the stream.
    pub async fn reply(mut self, body: &Body) -> Result<(), TransportError> {
        let frame = wire::encode_bounded(body, self.max_message_size)?;
        let Some(mut send) = self.send.take() else {
            return Err(TransportError::Stream("answer already sent".into()));
        };
        send.write_chunk(frame).await.map_err(write_error)?;
        send.finish()
            .map_err(|error| TransportError::Stream(error.to_string()))?;
        Ok(())
    }

    /// Refuses the request: resets the stream with `code`.
    pub fn refuse(mut self, code: StreamErrorCode) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(code.to_varint());
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(StreamErrorCode::NoReply.to_varint());
        }
    }
}

/// Writes one length-prefixed header frame (bi streams).
pub(crate) async fn write_header(
    send: &mut SendStream,
    frame: Bytes,
) -> Result<(), TransportError> {
    let len = u32::try_from(frame.len()).map_err(|_| WireError::Oversized {
        len: frame.len(),
        max: u32::MAX as usize,
    })?;
    let mut chunks = [Bytes::copy_from_slice(&len.to_be_bytes()), frame];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(write_error)
}

/// Why reading a frame failed: a bad frame (the stream is then stopped with its code) or a
/// broken stream (nothing to stop).
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The frame is bad.
    Wire(WireError),
    /// The frame did not arrive in time.
    Timeout,
    /// The stream or link broke.
    Stream(String),
}

/// Reads a whole-stream frame (uni streams, answers) of at most `max` bytes and decodes it.
pub(crate) async fn read_frame_to_end(
    recv: &mut RecvStream,
    max: usize,
    timeout: Duration,
) -> Result<Body, ReadFrameError> {
    let bytes = match tokio::time::timeout(timeout, recv.read_to_end(max)).await {
        Err(_) => return Err(ReadFrameError::Timeout),
        Ok(Err(ReadToEndError::TooLong)) => {
            return Err(ReadFrameError::Wire(WireError::Oversized {
                len: max + 1,
                max,
            }))
        }
        Ok(Err(ReadToEndError::Read(error))) => {
            return Err(ReadFrameError::Stream(error.to_string()))
        }
        Ok(Ok(bytes)) => bytes,
    };
    wire::decode(&bytes, max).map_err(ReadFrameError::Wire)
}

/// Reads a length-prefixed header frame (bi streams) of at most `max` bytes and decodes it.
pub(crate) async fn read_header(
    recv: &mut RecvStream,
    max: usize,
    timeout: Duration,
) -> Result<Body, ReadFrameError> {
    let read = async {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(exact_error)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(ReadFrameError::Wire(WireError::Oversized { len, max }));
        }
        let mut frame = vec![0u8; len];
        recv.read_exact(&mut frame).await.map_err(exact_error)?;
        wire::decode(&frame, max).map_err(ReadFrameError::Wire)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ReadFrameError::Timeout))
}

fn exact_error(error: ReadExactError) -> ReadFrameError {
    match error {
        ReadExactError::FinishedEarly(_) => ReadFrameError::Wire(WireError::Truncated),
        ReadExactError::ReadError(error) => ReadFrameError::Stream(error.to_string()),
    }
}

/// Maps a write error, keeping the peer's stop code.
pub(crate) fn write_error(error: WriteError) -> TransportError {
    match error {
        WriteError::Stopped(code) => TransportError::StreamRefused {
            code: code.into_inner(),
            known: StreamErrorCode::from_u64(code.into_inner()),
        },
        WriteError::ConnectionLost(error) => TransportError::Connection(error),
        other => TransportError::Stream(other.to_string()),
    }
}

/// Maps a read error of an answer, keeping the peer's reset code.
pub(crate) fn read_error(error: ReadToEndError) -> TransportError {
    match error {
        ReadToEndError::TooLong => TransportError::Wire(WireError::Oversized { len: 0, max: 0 }),
        ReadToEndError::Read(ReadError::Reset(code)) => TransportError::StreamRefused {
            code: code.into_inner(),
            known: StreamErrorCode::from_u64(code.into_inner()),
        },
        ReadToEndError::Read(ReadError::ConnectionLost(error)) => TransportError::Connection(error),
        ReadToEndError::Read(other) => TransportError::Stream(other.to_string()),
    }
}
