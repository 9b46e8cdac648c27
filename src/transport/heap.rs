//! Giving the heap freed by closed links back to the operating system (glibc only).
//!
//! A join opens dozens of short-lived links (one per measured candidate, one per peer it
//! messages once), and the pool closes them a second or so later. glibc keeps the memory they
//! freed inside its arenas, so an idle node's resident size stays at the join's peak: about
//! 2.4 MiB per node of a 100-node cluster, of which the node still uses 0.6
//! (BENCHMARKS.md, `memory`). After links close, the pool asks for a trim here; the trim runs
//! once the closed links had time to drain, and at most once per [`MIN_INTERVAL`] for the whole
//! process, since `malloc_trim` walks every arena.

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
}

static STATE: Mutex<State> = Mutex::new(State {
    closed_at: None,
    trimmed_at: None,
});

impl State {
    /// Whether a trim is due at `now`; if so, records it as done.
    fn take_due(&mut self, now: Instant) -> bool {
        let drained = self
            .closed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= DRAIN);
        let rested = self
            .trimmed_at
            .map_or(true, |at| now.saturating_duration_since(at) >= MIN_INTERVAL);
        if drained && rested {
            self.closed_at = None;
            self.trimmed_at = Some(now);
        }
        drained && rested
    }
}

/// Records that links were closed at `now`.
pub(crate) fn links_closed(now: Instant) {
    STATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .closed_at = Some(now);
}

/// Trims the heap if links closed, drained since, and the last trim is old enough. Returns
/// whether it trimmed.
pub(crate) fn trim_if_due(now: Instant) -> bool {
    let due = STATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take_due(now);
    due && release()
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
        };
        assert!(!state.take_due(at(0)), "nothing closed yet");
        state.closed_at = Some(at(0));
        assert!(!state.take_due(at(1)), "links still draining");
        assert!(state.take_due(at(2)));
        assert!(!state.take_due(at(3)), "nothing closed since");
        state.closed_at = Some(at(4));
        assert!(!state.take_due(at(7)), "the last trim is too recent");
        assert!(state.take_due(at(12)));
    }
}
