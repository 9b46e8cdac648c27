//! Scheduling helpers shared by the transport and the node runtime: both run protocol work on
//! whichever task has the input in hand, and hand off to other tasks only where they must.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tracing::Instrument;

/// Lets the tasks this task just woke run first, then continues.
///
/// tokio runs the task woken last by a worker's task next (its LIFO slot), and puts a task that
/// wakes itself at the back of the worker's queue (where an idle worker may also take it): so
/// the caller continues right after the application's task read a delivery, or QUIC's task put
/// a routed message on the wire. (`tokio::task::yield_now` instead waits until the worker has
/// nothing else to run, which a busy worker may not reach for a while.)
pub(crate) async fn step_aside() {
    let mut stepped_aside = false;
    std::future::poll_fn(|cx| {
        if stepped_aside {
            return Poll::Ready(());
        }
        stepped_aside = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Polls `work` once right here and spawns it only if it cannot finish at once.
///
/// A send on a pooled link with stream credit and window completes in its first poll (open a
/// uni stream, queue the frame, finish), so the hot path costs no task hand-off; a send that
/// must dial, or wait for credit, continues in its own task and the caller never waits on a
/// peer. The first poll uses a no-op waker: a future that returns `Pending` is polled again by
/// the spawned task, which registers the real waker before anything can be missed. The first
/// poll runs in the caller's span; a spawned rest is instrumented with it.
pub(crate) fn run_inline_or_spawn<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut work = Box::pin(work);
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    if work.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(work.in_current_span());
    }
}

/// A waker that does nothing (`std::task::Waker::noop` needs Rust 1.85, above the MSRV).
fn noop_waker() -> Waker {
    struct NoopWake;
    impl Wake for NoopWake {
        fn wake(self: Arc<Self>) {}
    }
    thread_local! {
        static NOOP: Waker = Waker::from(Arc::new(NoopWake));
    }
    NOOP.with(Waker::clone)
}

/// Runs a closure when dropped: work that must happen even if the future waiting before it is
/// cancelled.
pub(crate) struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(crate) fn new(run: F) -> Self {
        Self(Some(run))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            run();
        }
    }
}
