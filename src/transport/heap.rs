//! Giving the heap freed by closed links back to the operating system (glibc only).
//!
//! A join opens dozens of short-lived links (one per measured candidate, one per peer it
//! messages once), and the pool closes them later. glibc keeps the memory they freed inside its
//! arenas, so an idle node's resident size stays at the join's peak, several times what the
//! node still uses (BENCHMARKS.md, `memory`). After links close, the pool asks for a trim here;
//! the trim runs once the closed links had time to drain, and at most once per
//! [`MIN_INTERVAL`] for the whole process, since `malloc_trim` walks every arena.
//!
//! Trimming acts on the allocator of the whole process, so it is the program's choice: the pool
//! asks only when `Limits::release_freed_memory` is on (off by default; the `wendy` binary
//! turns it on).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long after the last link closure the trim waits: a closed QUIC connection keeps its
/// state while it drains (three probe timeouts).
const DRAIN: Duration = Duration::from_secs(2);

/// The shortest time between two trims in one process.
const MIN_INTERVAL: Duration = Duration::from_secs(10);

struct State {
    /// When links were last closed, if no trim has run since.
    closed_at: Option<Instant>,
    /// When the last trim ran.
    trimmed_at: Option<Instant>,
    /// Whether a task is waiting to trim.
    scheduled: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    closed_at: None,
    trimmed_at: None,
    scheduled: false,
});

impl State {
    /// When the pending trim may run: the closed links drained and the last trim aged.
    fn due_at(&self) -> Option<Instant> {
        let drained = self.closed_at? + DRAIN;
        Some(match self.trimmed_at {
            Some(at) => drained.max(at + MIN_INTERVAL),
            None => drained,
        })
    }

    /// Records a closure at `now`; returns when to trim if no task is waiting for it yet.
    fn closed(&mut self, now: Instant) -> Option<Instant> {
        self.closed_at = Some(now);
        if self.scheduled {
            return None;
        }
        self.scheduled = true;
        self.due_at()
    }

    /// At `now`: `Ok(())` if the trim is due (and recorded as done), else when to look again.
    fn take_due(&mut self, now: Instant) -> Result<(), Instant> {
        match self.due_at() {
            Some(at) if at > now => Err(at),
            _ => {
                self.closed_at = None;
                self.trimmed_at = Some(now);
                self.scheduled = false;
                Ok(())
            }
        }
    }
}

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records that links were closed, and makes sure a trim follows once they drained (one
/// waiting task per process).
pub(crate) fn links_closed() {
    let Some(mut at) = state().closed(Instant::now()) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep_until(at.into()).await;
            match state().take_due(Instant::now()) {
                Ok(()) => break,
                Err(later) => at = later,
            }
        }
        if release() {
            tracing::debug!("returned the heap freed by closed links to the operating system");
        }
    });
}

/// glibc `malloc_trim(0)` now; `false` where there is no such call.
pub(crate) fn release() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain integer, touches only the allocator's own free
        // lists, and is thread-safe (it locks each arena in turn).
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_closed_links_to_drain_and_for_the_last_trim_to_age() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut state = State {
            closed_at: None,
            trimmed_at: None,
            scheduled: false,
        };
        assert_eq!(state.closed(at(0)), Some(at(2)), "after the links drained");
        assert_eq!(state.closed(at(1)), None, "one waiting task is enough");
        assert_eq!(
            state.take_due(at(2)),
            Err(at(3)),
            "the second closure drains later"
        );
        assert_eq!(state.take_due(at(3)), Ok(()));
        assert_eq!(
            state.closed(at(4)),
            Some(at(13)),
            "the last trim is too recent"
        );
        assert_eq!(state.take_due(at(13)), Ok(()));
    }
}
