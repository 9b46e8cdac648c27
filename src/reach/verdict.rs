//! When one dial-back's answer is believed, and when the node acts on it.
//!
//! - [`Verdict`]: a check whose answer contradicts the confirmed verdict (or the first one) is
//!   confirmed at once by a second check through another peer; only two agreeing answers
//!   from distinct peers change the verdict. When the confirming answer disagrees, the verdict
//!   stands if it agrees with it; otherwise (no verdict yet) the newer answer is confirmed in
//!   turn, once: a second disagreement in a row waits for the next regular check, so a
//!   flapping network or a lying peer costs at most three checks per period. After a change,
//!   checks come sooner than the
//!   ten-minute period ([`FRESH_RECHECK`], doubling up to [`RECHECK_EVERY`]), so a verdict
//!   that was wrong, or a network that changes again, is seen soon.
//! - [`ModeSwitch`]: the node's private or public mode follows the confirmed verdict, but a
//!   switch after a recent one waits: the pause doubles with each switch that follows the
//!   previous one within [`SETTLED_AFTER`], so a flapping network costs a bounded number of
//!   switches (and their homing, records and re-dials) however often the verdict changes.
//!
//! Both are pure: time comes in as an argument.

use std::time::{Duration, Instant};

use super::Reachability;
use crate::id::NodeId;

/// The period between checks once the verdict is old.
pub const RECHECK_EVERY: Duration = Duration::from_secs(600);

/// The first re-check after the verdict changed (then doubling up to [`RECHECK_EVERY`]).
pub const FRESH_RECHECK: Duration = Duration::from_secs(15);

/// The shortest pause between two mode switches (it doubles while switches follow closely).
pub const MIN_SWITCH_GAP: Duration = Duration::from_secs(10);

/// The longest pause between two mode switches.
pub const MAX_SWITCH_GAP: Duration = Duration::from_secs(600);

/// A switch this long after the previous one starts the pause over at [`MIN_SWITCH_GAP`].
pub const SETTLED_AFTER: Duration = Duration::from_secs(1800);

/// The confirmed reachability verdict and what the next check is for.
#[derive(Debug, Clone)]
pub struct Verdict {
    confirmed: Reachability,
    /// An answer that contradicts `confirmed`, and the peer that gave it: waiting for a second
    /// check through another peer.
    candidate: Option<(bool, NodeId)>,
    /// Whether the candidate is itself an answer that disagreed with the one before it.
    disagreed: bool,
    recheck_after: Duration,
}

impl Default for Verdict {
    fn default() -> Self {
        Self {
            confirmed: Reachability::Unknown,
            candidate: None,
            disagreed: false,
            recheck_after: FRESH_RECHECK,
        }
    }
}

impl Verdict {
    /// The confirmed verdict (`Unknown` until two peers agree).
    pub fn confirmed(&self) -> Reachability {
        self.confirmed
    }

    /// The peer a confirming check must not ask (the one whose answer it confirms), if a
    /// confirmation is due: the check should run at once.
    pub fn confirming(&self) -> Option<NodeId> {
        self.candidate.map(|(_, peer)| peer)
    }

    /// How long after the last check the next one is due (unless a confirmation is due).
    pub fn recheck_after(&self) -> Duration {
        self.recheck_after
    }

    /// A check through `peer` answered `reachable`. Returns the new confirmed verdict if it
    /// changed.
    pub fn on_answer(&mut self, reachable: bool, peer: NodeId) -> Option<Reachability> {
        let answer = if reachable {
            Reachability::Public
        } else {
            Reachability::Private
        };
        match self.candidate {
            // A second answer from the same peer confirms nothing: it replaces the first.
            Some((_, first)) if first == peer => {
                self.candidate = (answer != self.confirmed).then_some((reachable, peer));
                None
            }
            Some((wanted, _)) if wanted == reachable => {
                self.candidate = None;
                self.disagreed = false;
                self.confirmed = answer;
                self.recheck_after = FRESH_RECHECK;
                Some(answer)
            }
            Some(_) if answer == self.confirmed => {
                // The contradiction was not confirmed: the verdict stands, and is checked
                // again soon.
                self.candidate = None;
                self.disagreed = false;
                self.recheck_after = FRESH_RECHECK;
                None
            }
            Some(_) if !self.disagreed => {
                // No verdict yet and two peers disagree (the network may have changed
                // between the two checks): the newer answer is confirmed in turn.
                self.candidate = Some((reachable, peer));
                self.disagreed = true;
                None
            }
            Some(_) => {
                // They keep disagreeing: look again at the next regular check, less often
                // while this goes on.
                self.candidate = None;
                self.disagreed = false;
                self.recheck_after = (self.recheck_after * 2).min(RECHECK_EVERY);
                None
            }
            None if answer == self.confirmed => {
                self.recheck_after = (self.recheck_after * 2).min(RECHECK_EVERY);
                None
            }
            None => {
                self.candidate = Some((reachable, peer));
                self.disagreed = false;
                None
            }
        }
    }
}

/// The node's mode (private: reached through relays) following the confirmed verdict, with a
/// pause between switches.
#[derive(Debug, Clone)]
pub struct ModeSwitch {
    private: bool,
    last_switch: Option<Instant>,
    gap: Duration,
    switches: u64,
}

impl ModeSwitch {
    /// A node that starts private or public.
    pub fn new(private: bool) -> Self {
        Self {
            private,
            last_switch: None,
            gap: MIN_SWITCH_GAP,
            switches: 0,
        }
    }

    /// Whether the node is private now.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// How many times the mode switched.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// What to do at `now` with the confirmed `verdict`: `Ok(Some(private))` to switch now
    /// (the switch is counted), `Ok(None)` if the mode already agrees (or the verdict is
    /// unknown), `Err(at)` if a switch is due but must wait until `at`.
    pub fn decide(&mut self, verdict: Reachability, now: Instant) -> Result<Option<bool>, Instant> {
        let wanted = match verdict {
            Reachability::Unknown => return Ok(None),
            Reachability::Public => false,
            Reachability::Private => true,
        };
        if wanted == self.private {
            return Ok(None);
        }
        if let Some(last) = self.last_switch {
            let since = now.saturating_duration_since(last);
            if since < self.gap {
                return Err(last + self.gap);
            }
            self.gap = if since >= SETTLED_AFTER {
                MIN_SWITCH_GAP
            } else {
                (self.gap * 2).min(MAX_SWITCH_GAP)
            };
        }
        self.last_switch = Some(now);
        self.private = wanted;
        self.switches += 1;
        Ok(Some(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u128) -> NodeId {
        NodeId::from_u128(n)
    }

    #[test]
    fn a_contradicting_answer_is_confirmed_through_another_peer_before_the_verdict_changes() {
        let mut verdict = Verdict::default();
        // The first verdict too needs two peers.
        assert_eq!(verdict.on_answer(true, peer(1)), None);
        assert_eq!(verdict.confirming(), Some(peer(1)));
        assert_eq!(verdict.on_answer(true, peer(2)), Some(Reachability::Public));
        assert_eq!(verdict.confirming(), None);
        assert_eq!(verdict.recheck_after(), FRESH_RECHECK);
        // Agreeing answers space the checks out up to the period.
        for _ in 0..10 {
            assert_eq!(verdict.on_answer(true, peer(3)), None);
        }
        assert_eq!(verdict.recheck_after(), RECHECK_EVERY);
        // A firewall appears: one failed dial-back asks for a confirmation at once...
        assert_eq!(verdict.on_answer(false, peer(4)), None);
        assert_eq!(verdict.confirmed(), Reachability::Public);
        assert_eq!(verdict.confirming(), Some(peer(4)));
        // ...which the same peer cannot give...
        assert_eq!(verdict.on_answer(false, peer(4)), None);
        assert_eq!(verdict.confirmed(), Reachability::Public);
        // ...and another peer does: the verdict changes and is checked again soon.
        assert_eq!(
            verdict.on_answer(false, peer(5)),
            Some(Reachability::Private)
        );
        assert_eq!(verdict.recheck_after(), FRESH_RECHECK);
    }

    #[test]
    fn an_unconfirmed_contradiction_leaves_the_verdict_as_it_was() {
        let mut verdict = Verdict::default();
        verdict.on_answer(false, peer(1));
        verdict.on_answer(false, peer(2));
        assert_eq!(verdict.confirmed(), Reachability::Private);
        assert_eq!(verdict.on_answer(true, peer(3)), None);
        assert_eq!(verdict.on_answer(false, peer(4)), None);
        assert_eq!(verdict.confirmed(), Reachability::Private);
        assert_eq!(verdict.confirming(), None);
        assert_eq!(verdict.recheck_after(), FRESH_RECHECK);
    }

    #[test]
    fn a_first_verdict_follows_a_network_that_changed_between_two_checks() {
        let mut verdict = Verdict::default();
        // Reachable, then a firewall appears before the confirmation.
        assert_eq!(verdict.on_answer(true, peer(1)), None);
        assert_eq!(verdict.on_answer(false, peer(2)), None);
        // The newer answer is confirmed at once, through yet another peer.
        assert_eq!(verdict.confirming(), Some(peer(2)));
        assert_eq!(
            verdict.on_answer(false, peer(3)),
            Some(Reachability::Private)
        );
    }

    #[test]
    fn answers_that_keep_disagreeing_cost_at_most_three_checks_per_period() {
        let mut verdict = Verdict::default();
        let mut reachable = true;
        let mut immediate = 0;
        for n in 0..30 {
            verdict.on_answer(reachable, peer(n));
            reachable = !reachable;
            if verdict.confirming().is_some() {
                immediate += 1;
            }
        }
        // Each round: an answer asks for a confirmation at once, the disagreeing confirmation
        // for one more, and the third answer, disagreeing again, waits for the next period.
        assert_eq!(verdict.confirmed(), Reachability::Unknown);
        assert_eq!(immediate, 20);
        assert_eq!(verdict.recheck_after(), RECHECK_EVERY);
    }

    #[test]
    fn the_mode_follows_the_verdict_and_a_flapping_one_switches_it_a_bounded_number_of_times() {
        let start = Instant::now();
        let mut mode = ModeSwitch::new(false);
        assert_eq!(mode.decide(Reachability::Unknown, start), Ok(None));
        assert_eq!(mode.decide(Reachability::Public, start), Ok(None));
        assert_eq!(mode.decide(Reachability::Private, start), Ok(Some(true)));
        assert!(mode.is_private());
        // Back at once: it waits for the pause.
        let soon = start + Duration::from_secs(1);
        assert_eq!(
            mode.decide(Reachability::Public, soon),
            Err(start + MIN_SWITCH_GAP)
        );
        assert_eq!(
            mode.decide(Reachability::Public, start + MIN_SWITCH_GAP),
            Ok(Some(false))
        );
        // A verdict that flips every second for an hour: the pauses double, so the switches
        // stay few (10 s, 20 s, 40 s, ... up to 10 min between them).
        let mut now = start + MIN_SWITCH_GAP;
        let mut flip = true;
        while now < start + Duration::from_secs(3600) {
            now += Duration::from_secs(1);
            let verdict = if flip {
                Reachability::Private
            } else {
                Reachability::Public
            };
            flip = !flip;
            let _ = mode.decide(verdict, now);
        }
        assert!(mode.switches() <= 14, "{} switches", mode.switches());
        // Once the network has been quiet long enough, a switch is prompt again.
        let later = now + SETTLED_AFTER;
        let wanted = if mode.is_private() {
            Reachability::Public
        } else {
            Reachability::Private
        };
        assert!(matches!(mode.decide(wanted, later), Ok(Some(_))));
        let (back, to_private) = if mode.is_private() {
            (Reachability::Public, false)
        } else {
            (Reachability::Private, true)
        };
        assert_eq!(
            mode.decide(back, later + MIN_SWITCH_GAP),
            Ok(Some(to_private))
        );
    }
}
