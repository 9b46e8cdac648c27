//! Read budgets: how many bytes of frames not yet complete the transport holds, per link and
//! for the whole node.
//!
//! A stream's frame is copied out of QUIC only once it is charged here, because copying it
//! hands the flow-control credit back to the peer: a peer that opens streams and never
//! finishes them would otherwise make the node hold every byte its credit allows, again and
//! again. Bytes left unread stay in QUIC's receive windows, which flow-control the peer.
//!
//! # The rule
//! - A frame's first [`SMALL_FRAME`] bytes are read at once if the link's small-frame pool
//!   (its budget minus one maximum-size frame) and the node's budget have room; a frame that
//!   ends within them never waits. Without room, the stream is reset with
//!   [`StreamErrorCode::Overloaded`](super::StreamErrorCode::Overloaded).
//! - A frame larger than that is read by the link's single large-frame slot, one frame at a
//!   time, each chunk charged to the node's budget before it is read (waiting for room). Other
//!   large frames of the link wait for the slot with their data unread, in QUIC's windows.
//! - No deadlock: the frame holding the slot needs connection credit to finish, and waiting
//!   frames keep theirs while unread. So at most [`LinkBudget::max_waiting`] frames may wait,
//!   `(connection_receive_window - max_message_size) / stream_receive_window` (at least one):
//!   their unread data then always leaves the frame being read room to arrive. A large frame
//!   beyond that is reset with `Overloaded` (its unread data is dropped and the credit returned),
//!   and so is any frame that takes longer than the stream read timeout once it has the slot.
//!
//! So one link makes the node hold at most its [`Limits::link_read_budget`] plus what QUIC
//! keeps in its window ([`Limits::connection_receive_window`]), and all links together at most
//! [`Limits::node_read_budget`] (plus their windows).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::Limits;

/// The bytes of a frame read before it needs the link's large-frame slot: whole control
/// messages and routed messages of ordinary size never wait for it.
pub(crate) const SMALL_FRAME: usize = 16 << 10;

/// The most bytes asked of QUIC (and charged) at once by the large-frame reader.
pub(crate) const LARGE_CHUNK: usize = 64 << 10;

/// A pool of bytes that readers charge before they hold data.
#[derive(Debug)]
pub(crate) struct Budget {
    permits: Semaphore,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Semaphore::new(max),
            max,
        }
    }

    /// Bytes charged now.
    pub(crate) fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// The budget's size.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// Bytes charged to a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl<'a> Charge<'a> {
    pub(crate) fn none(budget: &'a Budget) -> Self {
        Self { budget, bytes: 0 }
    }

    /// Charges `bytes` more if the budget has room now.
    pub(crate) fn try_grow(&mut self, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.budget.permits.try_acquire_many(n) {
            Ok(permit) => {
                self.keep(permit, bytes);
                true
            }
            Err(_) => false,
        }
    }

    /// Charges `bytes` more, waiting for room.
    pub(crate) async fn grow(&mut self, bytes: usize) {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        // The semaphore is never closed, so acquiring only ends with the permits.
        if let Ok(permit) = self.budget.permits.acquire_many(n).await {
            self.keep(permit, n as usize);
        }
    }

    /// Gives `bytes` of the charge back.
    pub(crate) fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.budget.permits.add_permits(bytes);
        self.bytes -= bytes;
    }

    fn keep(&mut self, permit: SemaphorePermit<'_>, bytes: usize) {
        permit.forget();
        self.bytes += bytes;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.permits.add_permits(self.bytes);
    }
}

/// One link's share: its small-frame pool and its large-frame slot.
#[derive(Debug)]
pub(crate) struct LinkBudget {
    pub(crate) small: Budget,
    slot: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Bytes of the frame holding the slot.
    large: AtomicUsize,
}

impl LinkBudget {
    pub(crate) fn new(limits: &Limits) -> Self {
        let window = limits.connection_receive_window as usize;
        let per_stream = (limits.stream_receive_window as usize).max(1);
        Self {
            small: Budget::new(
                limits
                    .link_read_budget
                    .saturating_sub(limits.max_message_size),
            ),
            slot: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            max_waiting: Self::max_waiting(limits, window, per_stream),
            large: AtomicUsize::new(0),
        }
    }

    /// How many large frames may wait for the slot (see the module docs).
    fn max_waiting(limits: &Limits, window: usize, per_stream: usize) -> usize {
        (window.saturating_sub(limits.max_message_size) / per_stream).max(1)
    }

    /// Bytes of unfinished frames this link makes the node hold.
    pub(crate) fn held(&self) -> usize {
        self.small.held() + self.large.load(Ordering::Relaxed)
    }

    /// Waits for the large-frame slot; `None` if too many frames wait already.
    pub(crate) async fn large_slot(&self) -> Option<LargeSlot<'_>> {
        let _waiting = Waiting::enter(&self.waiting, self.max_waiting)?;
        // The semaphore is never closed.
        let permit = self.slot.acquire().await.ok()?;
        Some(LargeSlot {
            link: self,
            _permit: permit,
        })
    }
}

/// Counts a frame waiting for the slot, until it has it or gives up (its task was cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        let entered = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        entered.ok().map(|_| Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The link's large-frame slot, held while one large frame is read.
#[derive(Debug)]
pub(crate) struct LargeSlot<'a> {
    link: &'a LinkBudget,
    _permit: SemaphorePermit<'a>,
}

impl LargeSlot<'_> {
    /// Records the bytes held by the frame being read.
    pub(crate) fn set_held(&self, bytes: usize) {
        self.link.large.store(bytes, Ordering::Relaxed);
    }
}

impl Drop for LargeSlot<'_> {
    fn drop(&mut self) {
        self.link.large.store(0, Ordering::Relaxed);
    }
}

/// What a stream reader needs to charge its frame: its link's budget and the node's.
#[derive(Debug, Clone)]
pub(crate) struct ReadBudgets {
    pub(crate) node: Arc<Budget>,
    pub(crate) link: Arc<LinkBudget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_message_size: 1 << 20,
            link_read_budget: 2 << 20,
            connection_receive_window: 4 << 20,
            stream_receive_window: 1 << 20,
            ..Limits::default()
        }
    }

    #[test]
    fn a_charge_is_given_back_when_dropped_and_refused_past_the_budget() {
        let budget = Budget::new(100);
        {
            let mut charge = Charge::none(&budget);
            assert!(charge.try_grow(60));
            assert!(!charge.try_grow(41), "past the budget");
            assert!(charge.try_grow(40));
            assert_eq!(budget.held(), 100);
            charge.shrink(30);
            assert_eq!(budget.held(), 70);
        }
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn large_frames_beyond_the_window_arithmetic_are_refused_not_queued() {
        let link = LinkBudget::new(&limits());
        // (4 MiB window - 1 MiB frame) / 1 MiB per stream: three may wait.
        assert_eq!(link.max_waiting, 3);
        assert_eq!(link.small.max(), 1 << 20);
        let held = link.large_slot().await.expect("the slot is free");
        held.set_held(500);
        assert_eq!(link.held(), 500);
        let waiters: Vec<_> = (0..3).map(|_| Box::pin(link.large_slot())).collect();
        let mut waiters = waiters;
        for waiter in &mut waiters {
            assert!(futures_poll(waiter).is_none(), "waits for the slot");
        }
        assert!(link.large_slot().await.is_none(), "a fourth may not wait");
        drop(held);
        assert_eq!(link.held(), 0);
        assert!(
            futures_poll(&mut waiters[0]).is_some(),
            "the first waiter gets it"
        );
    }

    /// Polls a future once, with a no-op waker.
    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(future).poll(&mut cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
