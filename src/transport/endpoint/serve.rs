//! Serving a link's incoming streams: the per-link loops, reading one-way messages (inline when
//! they arrived whole), requests and raw streams, rejecting bad frames, and the uni stream credit.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use quinn::{ConnectionError, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{lock, Inner};
use crate::transport::budget::ReadBudgets;
use crate::transport::pool::{Link, Removed};
use crate::transport::stream::{
    poll_read_available, read_header, read_rest_of_frame, Available, LinkGuard, RawStream,
    ReadFrameError, Responder,
};
use crate::transport::{
    CloseCode, ConnectError, Limits, LinkLostReason, StreamErrorCode, TransportEvent,
};
use crate::wire::{self, Body, WireError};

impl Inner {
    /// Accepts the peer's streams on one link until it closes, then reports the loss.
    pub(super) async fn stream_loop(self: Arc<Self>, link: Arc<Link>) {
        // Bi streams (requests, tunnels) get their own loop so the hot uni loop awaits a single
        // future per stream.
        let bi_loop = tokio::spawn(self.clone().accept_bi_loop(link.clone()));
        let max = self.limits.max_message_size;
        let mut credit = UniCredit::new(&self.limits);
        let error = loop {
            let mut recv = match link.conn.accept_uni().await {
                Ok(recv) => recv,
                Err(error) => break error,
            };
            link.touch();
            credit.on_accepted(&link.conn);
            // Fast path: a small message usually arrives whole with its stream, so read what is
            // already buffered right here; only a stream still waiting for data gets a task.
            let mut frame = Vec::new();
            let available = std::future::poll_fn(|cx| {
                Poll::Ready(poll_read_available(&mut recv, cx, &mut frame))
            })
            .await;
            let result = match available {
                Poll::Ready(Ok(Available::Ended)) => {
                    wire::decode(&frame, max).map_err(ReadFrameError::Wire)
                }
                Poll::Ready(Err(error)) => Err(error),
                Poll::Pending | Poll::Ready(Ok(Available::More)) => {
                    tokio::spawn(self.clone().incoming_uni(link.clone(), recv, frame));
                    continue;
                }
            };
            self.finish_uni(&link, None, result, &mut recv).await;
        };
        bi_loop.abort();
        if self.limits.release_freed_memory {
            // What the link held (its QUIC state, frames it left unfinished) is freed now.
            crate::transport::heap::links_closed();
        }
        if let Some(reason) = identity_in_use(&error) {
            let live_at = match ConnectError::identity_in_use(reason) {
                ConnectError::IdentityInUse { live_at } => Some(live_at),
                _ => None,
            };
            warn!(peer = %link.peer, ?live_at, "peer refused our link: it holds a live link to our identity elsewhere");
            self.emit(TransportEvent::IdentityInUse {
                live_at,
                reported_by: link.peer,
                reported_from: link.addr(),
            })
            .await;
        }
        let duplicate = matches!(
            &error,
            ConnectionError::ApplicationClosed(close)
                if close.error_code == CloseCode::Duplicate.to_varint()
        );
        let removed = lock(&self.pool).closed(link.peer, link.id(), duplicate);
        match removed {
            Removed::NotPooled => {}
            Removed::Lost => {
                let reason = lost_reason(&error);
                info!(peer = %link.peer, ?reason, "link lost");
                self.emit(TransportEvent::LinkLost {
                    peer: link.peer,
                    reason,
                })
                .await;
            }
            Removed::AwaitReplacement => {
                tokio::time::sleep(self.limits.connect_timeout).await;
                let missing = lock(&self.pool).replacement_missing(link.peer);
                if missing {
                    info!(peer = %link.peer, "duplicate link closed and no replacement arrived");
                    self.emit(TransportEvent::LinkLost {
                        peer: link.peer,
                        reason: lost_reason(&error),
                    })
                    .await;
                }
            }
        }
    }

    async fn accept_bi_loop(self: Arc<Self>, link: Arc<Link>) {
        while let Ok((send, recv)) = link.conn.accept_bi().await {
            tokio::spawn(self.clone().incoming_bi(link.clone(), send, recv));
        }
    }

    async fn incoming_uni(
        self: Arc<Self>,
        link: Arc<Link>,
        mut recv: RecvStream,
        partial: Vec<u8>,
    ) {
        let _guard = LinkGuard::new(&link.in_flight);
        // Without an inbox, reserve the event slot first: while the consumer is behind, the
        // data stays unread in QUIC's windows and the peer is flow-controlled.
        let permit = if self.inbox.get().is_some() {
            None
        } else {
            let Ok(permit) = self.events.reserve().await else {
                return;
            };
            Some(permit)
        };
        let max = self.limits.max_message_size;
        let budgets = self.budgets(&link);
        let timeout = self.limits.stream_read_timeout;
        let result = read_rest_of_frame(&mut recv, partial, &budgets, max, timeout).await;
        self.finish_uni(&link, permit, result, &mut recv).await;
    }

    /// Hands a read one-way frame on, to the inbox when there is one, else as an event on the
    /// channel, waiting for room unless `permit` already holds a slot: waiting stalls this
    /// link's reading, and the peer then runs out of stream credit (backpressure, no unbounded
    /// queue).
    async fn finish_uni(
        &self,
        link: &Link,
        permit: Option<mpsc::Permit<'_, TransportEvent>>,
        result: Result<Body, ReadFrameError>,
        recv: &mut RecvStream,
    ) {
        let event = match result {
            Ok(body) => TransportEvent::Message {
                from: link.peer,
                from_addr: link.addr(),
                body,
            },
            Err(error) => match self.reject_stream(link, error, Some(recv), None) {
                Some(error) => TransportEvent::StreamRejected {
                    from: link.peer,
                    error,
                },
                None => return,
            },
        };
        let Some(event) = self.to_inbox(event).await else {
            return;
        };
        match permit {
            Some(permit) => permit.send(event),
            // A dropped receiver means nobody listens any more.
            None => {
                let _ = self.events.send(event).await;
            }
        }
    }

    async fn incoming_bi(
        self: Arc<Self>,
        link: Arc<Link>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let guard = LinkGuard::new(&link.in_flight);
        link.touch();
        let Ok(permit) = self.events.reserve().await else {
            let _ = send.reset(StreamErrorCode::Shutdown.to_varint());
            return;
        };
        let max = self.limits.max_message_size;
        let budgets = self.budgets(&link);
        let timeout = self.limits.stream_read_timeout;
        match read_header(&mut recv, &budgets, max, timeout).await {
            Ok(
                header @ (Body::Tunnel { .. }
                | Body::RelayHome
                | Body::RelayConnect { .. }
                | Body::RelayIncoming { .. }),
            ) => permit.send(TransportEvent::Stream {
                from: link.peer,
                from_addr: link.addr(),
                header,
                stream: RawStream::new(send, recv, guard),
            }),
            Ok(body) => permit.send(TransportEvent::Request {
                from: link.peer,
                from_addr: link.addr(),
                body,
                reply: Responder::new(send, max, guard),
            }),
            Err(error) => {
                if let Some(error) =
                    self.reject_stream(&link, error, Some(&mut recv), Some(&mut send))
                {
                    permit.send(TransportEvent::StreamRejected {
                        from: link.peer,
                        error,
                    });
                }
            }
        }
    }

    fn budgets(&self, link: &Link) -> ReadBudgets {
        ReadBudgets {
            node: self.read_budget.clone(),
            link: link.budget.clone(),
        }
    }

    /// Stops (and resets) a stream that brought a bad frame; logs one line. Returns the wire
    /// error to report, if the frame itself was bad.
    fn reject_stream(
        &self,
        link: &Link,
        error: ReadFrameError,
        recv: Option<&mut RecvStream>,
        send: Option<&mut SendStream>,
    ) -> Option<WireError> {
        let (code, wire_error) = match error {
            ReadFrameError::Wire(error) => (StreamErrorCode::for_wire_error(&error), Some(error)),
            ReadFrameError::Timeout => (StreamErrorCode::Timeout, None),
            ReadFrameError::Overloaded => (StreamErrorCode::Overloaded, None),
            ReadFrameError::Stream(message) => {
                debug!(peer = %link.peer, %message, "incoming stream broke");
                return None;
            }
        };
        if let Some(recv) = recv {
            let _ = recv.stop(code.to_varint());
        }
        if let Some(send) = send {
            let _ = send.reset(code.to_varint());
        }
        match &wire_error {
            Some(error) => {
                warn!(peer = %link.peer, addr = %link.addr(), %error, ?code, "rejected stream with a bad frame")
            }
            None if code == StreamErrorCode::Overloaded => {
                warn!(peer = %link.peer, addr = %link.addr(), held = link.budget.held(), ?code, "rejected stream: unfinished frames over the read budget")
            }
            None => {
                warn!(peer = %link.peer, addr = %link.addr(), ?code, "rejected stream: frame too slow")
            }
        }
        wire_error
    }
}

/// A link's uni stream credit: [`Limits::initial_concurrent_uni_streams`] until the peer opens
/// that many streams within [`UniCredit::WINDOW`], then [`Limits::max_concurrent_uni_streams`].
///
/// quinn keeps a slot for every stream the peer may open, so the full credit on every link
/// costs memory that links carrying the odd control message never use; a flow widens it after
/// its first few messages. The clock is read once per `initial` streams, and never once widened.
pub(super) struct UniCredit {
    pub(super) initial: u32,
    max: u32,
    /// Streams accepted since `since`.
    counted: u32,
    since: Instant,
    widened: bool,
}

impl UniCredit {
    /// The peer must use the initial credit within this to get the full one.
    const WINDOW: Duration = Duration::from_secs(1);

    pub(super) fn new(limits: &Limits) -> Self {
        let max = limits.max_concurrent_uni_streams;
        let initial = limits.initial_concurrent_uni_streams.clamp(1, max.max(1));
        Self {
            initial,
            max,
            counted: 0,
            since: Instant::now(),
            widened: initial >= max,
        }
    }

    /// Counts a stream the peer opened; widens the credit when it is a flow.
    fn on_accepted(&mut self, conn: &quinn::Connection) {
        if self.widened {
            return;
        }
        self.counted += 1;
        if self.counted < self.initial {
            return;
        }
        if self.since.elapsed() <= Self::WINDOW {
            debug!(max = self.max, "link carries a flow: full stream credit");
            conn.set_max_concurrent_uni_streams(VarInt::from_u32(self.max));
            self.widened = true;
        } else {
            self.counted = 0;
            self.since = Instant::now();
        }
    }
}

/// The close reason of a link the peer closed with [`CloseCode::IdentityInUse`].
pub(super) fn identity_in_use(error: &ConnectionError) -> Option<&[u8]> {
    match error {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == CloseCode::IdentityInUse.to_varint() =>
        {
            Some(&close.reason)
        }
        _ => None,
    }
}

pub(super) fn lost_reason(error: &ConnectionError) -> LinkLostReason {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let raw_code = close.error_code.into_inner();
            LinkLostReason::ClosedByPeer {
                code: CloseCode::from_u64(raw_code),
                raw_code,
            }
        }
        ConnectionError::LocallyClosed => LinkLostReason::ClosedLocally(CloseCode::Closed),
        ConnectionError::TimedOut => LinkLostReason::TimedOut,
        ConnectionError::Reset => LinkLostReason::Reset,
        other => LinkLostReason::Error(other.to_string()),
    }
}
