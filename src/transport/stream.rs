//! The one-frame-per-stream protocol on top of quinn streams.
//!
//! Uni stream: one frame, to the end of the stream. Bi stream: a 4-byte big-endian length, the
//! header frame, then either the end of the opener's direction (a request; the answer is one
//! frame to the end of the other direction) or raw bytes (a tunnel).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};
use tokio::io::{AsyncRead, AsyncWrite};

use super::budget::{Charge, ReadBudgets, LARGE_CHUNK, SMALL_FRAME};
use super::{ReplyError, SendError, StreamError, StreamErrorCode};
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

    /// Reads exactly `buf.len()` bytes from the peer's direction.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), RawStreamError> {
        self.recv
            .read_exact(buf)
            .await
            .map_err(|error| match error {
                ReadExactError::FinishedEarly(read) => RawStreamError::FinishedEarly { read },
                ReadExactError::ReadError(ReadError::Reset(code)) => RawStreamError::Reset {
                    code: code.into_inner(),
                    known: StreamErrorCode::from_u64(code.into_inner()),
                },
                ReadExactError::ReadError(other) => RawStreamError::Read(other),
            })
    }

    /// Writes all of `bytes` to our direction.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), RawStreamError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|error| match error {
                WriteError::Stopped(code) => RawStreamError::Stopped {
                    code: code.into_inner(),
                    known: StreamErrorCode::from_u64(code.into_inner()),
                },
                other => RawStreamError::Write(other),
            })
    }

    /// Both directions as byte-stream halves, to copy through: reading ends at the peer's
    /// finish, and shutting the writer down finishes our direction (the other keeps flowing).
    pub fn io(&mut self) -> (impl AsyncWrite + Unpin + '_, impl AsyncRead + Unpin + '_) {
        (&mut self.send, &mut self.recv)
    }

    /// Abandons the stream in both directions with `code`: our direction is reset and the
    /// peer is asked to stop sending. The peer reads `code` back (see
    /// [`RawStreamError::Reset`]).
    pub fn reset(&mut self, code: StreamErrorCode) {
        // Either direction may already be finished or reset: nothing left to abandon there.
        let _ = self.send.reset(code.to_varint());
        let _ = self.recv.stop(code.to_varint());
    }
}

/// Why reading or writing a [`RawStream`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawStreamError {
    /// The peer reset its direction with this code.
    #[error("the peer reset the stream with code {code:#x} ({known:?})")]
    Reset {
        /// The raw code.
        code: u64,
        /// The code, if Wendy defines it.
        known: Option<StreamErrorCode>,
    },
    /// The peer asked us to stop sending, with this code.
    #[error("the peer stopped the stream with code {code:#x} ({known:?})")]
    Stopped {
        /// The raw code.
        code: u64,
        /// The code, if Wendy defines it.
        known: Option<StreamErrorCode>,
    },
    /// The peer finished its direction before the bytes asked for arrived.
    #[error("the stream ended after {read} bytes, before the bytes expected")]
    FinishedEarly {
        /// Bytes read before the end.
        read: usize,
    },
    /// Reading failed otherwise (the link was lost, the stream was already stopped).
    #[error("reading the stream failed")]
    Read(#[source] ReadError),
    /// Writing failed otherwise (the link was lost, the stream was already finished).
    #[error("writing the stream failed")]
    Write(#[source] WriteError),
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
    pub async fn reply(mut self, body: &Body) -> Result<(), ReplyError> {
        let frame =
            wire::encode_bounded(body, self.max_message_size).map_err(ReplyError::Encode)?;
        // Only `reply`, `refuse` and `drop` take the stream, and each consumes the responder.
        let Some(mut send) = self.send.take() else {
            return Ok(());
        };
        send.write_chunk(frame).await.map_err(StreamError::from)?;
        send.finish().map_err(StreamError::from)?;
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
pub(crate) async fn write_header(send: &mut SendStream, frame: Bytes) -> Result<(), SendError> {
    let len = u32::try_from(frame.len()).map_err(|_| {
        SendError::Encode(WireError::Oversized {
            len: frame.len(),
            max: u32::MAX as usize,
        })
    })?;
    let mut chunks = [Bytes::copy_from_slice(&len.to_be_bytes()), frame];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|error| StreamError::from(error).into())
}

/// Why reading a frame failed: a bad frame (the stream is then stopped with its code) or a
/// broken stream (nothing to stop).
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The frame is bad.
    Wire(WireError),
    /// The frame did not arrive in time.
    Timeout,
    /// The frame does not fit the link's or the node's read budget.
    Overloaded,
    /// The stream or link broke.
    Stream(String),
}

/// What [`poll_read_available`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Available {
    /// The stream ended: the buffer holds the whole frame.
    Ended,
    /// The frame is longer than [`SMALL_FRAME`]: the buffer holds its first bytes.
    More,
}

/// Reads whatever of a whole-stream frame is already buffered, without waiting, up to
/// [`SMALL_FRAME`] bytes: `Ready` once the stream's end was reached, the small-frame bytes were
/// read, or on an error; `Pending` if more data must arrive first (then the stream's task is
/// woken when it does; `buf` keeps what was read).
///
/// The bytes read here are not charged to a budget: the caller decodes them at once or hands
/// them to [`read_rest_of_frame`], which charges them before it waits.
pub(crate) fn poll_read_available(
    recv: &mut RecvStream,
    cx: &mut std::task::Context<'_>,
    buf: &mut Vec<u8>,
) -> std::task::Poll<Result<Available, ReadFrameError>> {
    use std::mem::MaybeUninit;
    use std::task::Poll;
    // Uninitialised scratch space: nothing to zero per message.
    let mut scratch = [const { MaybeUninit::<u8>::uninit() }; 4096];
    loop {
        let room = SMALL_FRAME.saturating_sub(buf.len());
        if room == 0 {
            return Poll::Ready(Ok(Available::More));
        }
        let size = room.min(scratch.len());
        let mut chunk = tokio::io::ReadBuf::uninit(&mut scratch[..size]);
        match recv.poll_read_buf(cx, &mut chunk) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => {
                return Poll::Ready(Err(ReadFrameError::Stream(error.to_string())))
            }
            Poll::Ready(Ok(())) if chunk.filled().is_empty() => {
                return Poll::Ready(Ok(Available::Ended))
            }
            Poll::Ready(Ok(())) => buf.extend_from_slice(chunk.filled()),
        }
    }
}

/// Reads the rest of a whole-stream frame after `partial` (see [`poll_read_available`]) and
/// decodes it, charging what it holds to `budgets` (the rule is in [`super::budget`]).
pub(crate) async fn read_rest_of_frame(
    recv: &mut RecvStream,
    partial: Vec<u8>,
    budgets: &ReadBudgets,
    max: usize,
    timeout: Duration,
) -> Result<Body, ReadFrameError> {
    FrameReader::new(budgets, max, timeout, None)
        .read(recv, partial)
        .await
}

/// Reads a length-prefixed header frame (bi streams) of at most `max` bytes and decodes it. An
/// announced length above `max` is refused before anything else is read, and nothing is
/// allocated for the announced length: the frame grows as its bytes are charged and arrive.
pub(crate) async fn read_header(
    recv: &mut RecvStream,
    budgets: &ReadBudgets,
    max: usize,
    timeout: Duration,
) -> Result<Body, ReadFrameError> {
    let mut len = [0u8; 4];
    tokio::time::timeout(timeout, recv.read_exact(&mut len))
        .await
        .map_err(|_| ReadFrameError::Timeout)?
        .map_err(exact_error)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ReadFrameError::Wire(WireError::Oversized { len, max }));
    }
    FrameReader::new(budgets, max, timeout, Some(len))
        .read(recv, Vec::new())
        .await
}

/// Reads one frame (to the stream's end, or of a known length) under the read budgets.
struct FrameReader<'a> {
    budgets: &'a ReadBudgets,
    max: usize,
    timeout: Duration,
    /// The frame's length if announced (bi streams); else it ends with the stream.
    len: Option<usize>,
}

impl<'a> FrameReader<'a> {
    fn new(budgets: &'a ReadBudgets, max: usize, timeout: Duration, len: Option<usize>) -> Self {
        Self {
            budgets,
            max,
            timeout,
            len,
        }
    }

    async fn read(self, recv: &mut RecvStream, mut frame: Vec<u8>) -> Result<Body, ReadFrameError> {
        let budgets = self.budgets;
        let mut node = Charge::none(&budgets.node);
        let mut small = Charge::none(&budgets.link.small);
        if !charge_both(&mut small, &mut node, frame.len()) {
            return Err(ReadFrameError::Overloaded);
        }
        // The first bytes, from the link's small-frame pool, never waiting for room.
        let small_end = self.len.map_or(SMALL_FRAME, |len| len.min(SMALL_FRAME));
        let small_phase = async {
            while frame.len() < small_end {
                match recv.read_chunk(small_end - frame.len(), true).await {
                    Ok(Some(chunk)) => {
                        if !charge_both(&mut small, &mut node, chunk.bytes.len()) {
                            return Err(ReadFrameError::Overloaded);
                        }
                        frame.extend_from_slice(&chunk.bytes);
                    }
                    Ok(None) => return self.ended(frame.len()),
                    Err(error) => return Err(ReadFrameError::Stream(error.to_string())),
                }
            }
            Ok(self.len == Some(frame.len()))
        };
        let ended = tokio::time::timeout(self.timeout, small_phase)
            .await
            .unwrap_or(Err(ReadFrameError::Timeout))?;
        if !ended {
            // A large frame: one at a time per link, each chunk charged to the node first.
            let Some(slot) = budgets.link.large_slot().await else {
                return Err(ReadFrameError::Overloaded);
            };
            let mut chunks: Vec<Bytes> = Vec::new();
            let mut total = frame.len();
            let large_phase = async {
                loop {
                    let end = self.len.unwrap_or(self.max + 1);
                    let want = LARGE_CHUNK.min(end - total);
                    if want == 0 {
                        return Ok(());
                    }
                    node.grow(want).await;
                    match recv.read_chunk(want, true).await {
                        Ok(Some(chunk)) => {
                            node.shrink(want - chunk.bytes.len());
                            total += chunk.bytes.len();
                            if total > self.max {
                                return Err(ReadFrameError::Wire(WireError::Oversized {
                                    len: total,
                                    max: self.max,
                                }));
                            }
                            chunks.push(chunk.bytes);
                            slot.set_held(total);
                        }
                        Ok(None) => {
                            self.ended(total)?;
                            return Ok(());
                        }
                        Err(error) => return Err(ReadFrameError::Stream(error.to_string())),
                    }
                }
            };
            tokio::time::timeout(self.timeout, large_phase)
                .await
                .unwrap_or(Err(ReadFrameError::Timeout))?;
            frame.reserve_exact(total - frame.len());
            for chunk in chunks {
                frame.extend_from_slice(&chunk);
            }
        }
        // Payloads stay in the frame's buffer (see `wire::shared`).
        let frame = Bytes::from(frame);
        wire::decode_shared(&frame, self.max).map_err(ReadFrameError::Wire)
    }

    /// The stream ended after `read` bytes: the frame's end, or early if its length was
    /// announced. Returns that the frame is complete.
    fn ended(&self, read: usize) -> Result<bool, ReadFrameError> {
        match self.len {
            Some(len) if read < len => Err(ReadFrameError::Wire(WireError::Truncated)),
            _ => Ok(true),
        }
    }
}

/// Charges `bytes` to the link's small-frame pool and the node's budget, or to neither.
fn charge_both(small: &mut Charge<'_>, node: &mut Charge<'_>, bytes: usize) -> bool {
    if !small.try_grow(bytes) {
        return false;
    }
    if !node.try_grow(bytes) {
        small.shrink(bytes);
        return false;
    }
    true
}

fn exact_error(error: ReadExactError) -> ReadFrameError {
    match error {
        ReadExactError::FinishedEarly(_) => ReadFrameError::Wire(WireError::Truncated),
        ReadExactError::ReadError(error) => ReadFrameError::Stream(error.to_string()),
    }
}
