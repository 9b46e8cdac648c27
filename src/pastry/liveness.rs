//! Liveness: probes (of suspected members and of candidates), heartbeats to the two immediate
//! neighbours, the watch on them, and the RTT-based timeouts.

use std::time::Duration;

use super::state::Pastry;
use super::timers::Timer;
use super::witness::Doubt;
use super::{FailureClaim, Message, PeerInfo, Side, Slot, Time};
use crate::id::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProbeKind {
    /// A node in our state that may have failed: silence declares it dead.
    Member,
    /// A node learned second hand (or a joiner's leaf-set candidate): a reply admits it.
    Candidate,
    /// A member whose liveness is merely in doubt (a neighbour's leaf set lacks it): silence
    /// declares it dead, but it stays usable for routing meanwhile (it may be the root).
    Verify,
    /// An entry of a sparse routing-table row, asked for its leaf set (see `hints`): silence
    /// only drops its hint.
    Hint,
}

#[derive(Debug, Clone)]
pub(super) struct PendingProbe {
    pub(super) peer: PeerInfo,
    pub(super) deadline: Time,
    pub(super) retries_left: u8,
    pub(super) kind: ProbeKind,
    /// Set when someone told us the peer failed (a notice, or a claim passed on): the accounts
    /// collected (see [`super::witness`]). If the probe fails, the news spreads as a received
    /// notice would, not as a new detection.
    pub(super) doubt: Option<Box<Doubt>>,
    /// Not sent yet: a candidate's probe waits until `deadline` in case the candidate probes us
    /// first (see [`Pastry::hold_candidate`]), then is sent only if still needed; a suspect's
    /// waits for a second account of its failure (see [`Pastry::hold_suspect`]).
    pub(super) held: bool,
}

pub(super) const RTT_CACHE: usize = 16;
/// A held candidate probe waits `probe_timeout / CANDIDATE_HOLD_DIVISOR` (1 s by default):
/// long enough for the other side's probe, sent on the same news, to arrive.
pub(super) const CANDIDATE_HOLD_DIVISOR: u32 = 3;

impl Pastry {
    /// A [`Message::Probe`] from `from`: answered with our leaf set.
    pub(super) fn on_probe(
        &mut self,
        now: Time,
        from: PeerInfo,
        nonce: u64,
        active: bool,
        leaf_set: &[PeerInfo],
        failed: &[FailureClaim],
    ) {
        if active && self.is_active() {
            // Before admitting the prober: it may replace the member it says failed.
            self.take_claims(now, from, failed, true);
            self.add_live(now, from, false);
            self.vouch(now, from);
        } else if !active && self.is_active() {
            // A joiner's probe (MSPastry's consistent join): admit it to the leaf set
            // before replying. It becomes active only once every member of its leaf set
            // has replied, so by then all of them route its keys to it (it holds what
            // arrives before it is active). The routing table waits for its announce.
            self.admit_leaf(now, from);
        }
        let reply = Message::ProbeReply {
            nonce,
            active: self.is_active(),
            leaf_set: self.leaf_set.peers(),
            failed: self.claims(now),
        };
        self.send(from, reply);
        self.merge_candidates(now, from.id, leaf_set);
    }

    /// A [`Message::Heartbeat`] from `from`, one of our immediate neighbours.
    pub(super) fn on_heartbeat(&mut self, now: Time, from: PeerInfo, leaf_set: &[PeerInfo]) {
        if self.is_active() {
            self.add_live(now, from, false);
            self.merge_candidates(now, from.id, leaf_set);
            self.check_against(now, from, leaf_set);
        }
    }

    pub(super) fn is_suspect(&self, id: NodeId) -> bool {
        self.probes
            .iter()
            .any(|p| p.peer.id == id && p.kind == ProbeKind::Member)
    }

    pub(super) fn on_probe_reply(
        &mut self,
        now: Time,
        from: PeerInfo,
        active: bool,
        leaf_set: &[PeerInfo],
        failed: &[FailureClaim],
    ) {
        let mut hint_probe = false;
        if let Some(index) = self.probes.iter().position(|p| p.peer.id == from.id) {
            hint_probe = self.probes[index].kind == ProbeKind::Hint;
            self.probes.swap_remove(index);
        }
        if active {
            if self.is_active() {
                self.take_claims(now, from, failed, false);
            }
            self.add_live(now, from, false);
            if self.is_active() {
                self.vouch(now, from);
            }
        }
        self.merge_candidates(now, from.id, leaf_set);
        if active && self.is_active() {
            self.learn_hint(now, from, leaf_set);
            self.check_against(now, from, leaf_set);
        }
        self.hints.answered(from.id);
        if hint_probe {
            self.continue_hints(now);
        }
    }

    /// Compares our leaf set with a live neighbour's: a member of ours that lies within the
    /// neighbour's range but is missing from its leaf set is probably dead (its failure notice
    /// did not reach us, e.g. when it sat at the far end of our leaf set). Probe it, unless it
    /// spoke to us within a probe timeout: then a probe would tell nothing new. Two members that
    /// cannot reach each other (behind NATs) disagree with everyone's leaf sets for good, and
    /// without that bound each probe's reply would start the next one.
    pub(super) fn check_against(&mut self, now: Time, from: PeerInfo, theirs: &[PeerInfo]) {
        if theirs.is_empty() {
            return;
        }
        let mut their_set = self.leaf_set.empty_for(from.id);
        for peer in theirs {
            their_set.insert(*peer, None);
        }
        let doubtful: Vec<PeerInfo> = self
            .leaf_set
            .iter()
            .map(|s| s.peer)
            .filter(|p| {
                p.id != from.id
                    && !their_set.contains(p.id)
                    && their_set.covers(p.id.to_key())
                    && !self.probes.iter().any(|probe| probe.peer.id == p.id)
                    && !self.heard_within(now, p.id, self.config.probe_timeout)
            })
            .collect();
        for peer in doubtful {
            self.start_probe(now, peer, ProbeKind::Verify);
        }
    }

    /// Records that a message from `id` arrived at `now` in whichever structures hold it.
    pub(super) fn mark_heard(&mut self, now: Time, id: NodeId) {
        self.leaf_set.mark_heard(id, now);
        self.table.mark_heard(id, now);
        self.neighbourhood.mark_heard(id, now);
    }

    /// Whether a message from `id` arrived within `window` of `now` (as far as the structures
    /// holding it recorded).
    pub(super) fn heard_within(&self, now: Time, id: NodeId, window: Duration) -> bool {
        let since = Time::from_micros(now.as_micros().saturating_sub(window.as_micros() as u64));
        self.leaf_set
            .get(id)
            .or_else(|| self.table.find(id))
            .or_else(|| self.neighbourhood.iter().find(|s| s.peer.id == id))
            .is_some_and(|slot| slot.heard_since(since))
    }

    /// A message from `id` arrived at `now`. Returns whether it ended a suspicion of `id` (a
    /// member's or a verify probe), which messages parked on `id` wait for.
    pub(super) fn heard_from(&mut self, now: Time, id: NodeId) -> bool {
        self.mark_heard(now, id);
        for side in [Side::Left, Side::Right] {
            if self.watch[side as usize] == Some(id) {
                self.timers
                    .set(Timer::watch(side), self.watch_deadline(now));
            }
        }
        self.dead.retain(|(dead, _)| *dead != id);
        // Any message proves it alive: a suspicion (a late ack, a missed heartbeat) is over.
        // A candidate's probe still waits for its reply (which says whether it is active).
        let before = self.probes.len();
        self.probes.retain(|p| {
            p.peer.id != id || matches!(p.kind, ProbeKind::Candidate | ProbeKind::Hint)
        });
        self.probes.len() != before
    }

    pub(super) fn refresh_watches(&mut self, now: Time) {
        for side in [Side::Left, Side::Right] {
            let current = self.leaf_set.neighbour(side).map(|s| s.peer.id);
            let index = side as usize;
            match (current, self.watch[index]) {
                (Some(id), Some(watched)) if id == watched => {}
                (Some(id), _) => {
                    self.watch[index] = Some(id);
                    self.timers
                        .set(Timer::watch(side), self.watch_deadline(now));
                }
                (None, _) => {
                    self.watch[index] = None;
                    self.timers.stop(Timer::watch(side));
                }
            }
        }
    }

    /// When a neighbour last heard from at `heard` is due a probe.
    fn watch_deadline(&self, heard: Time) -> Time {
        heard + self.config.probe_period + self.config.probe_timeout
    }

    pub(super) fn start_probe(&mut self, now: Time, peer: PeerInfo, kind: ProbeKind) {
        if let Some(existing) = self.probes.iter_mut().find(|p| p.peer.id == peer.id) {
            if kind == ProbeKind::Member {
                existing.kind = kind;
            }
            return;
        }
        match kind {
            ProbeKind::Member | ProbeKind::Verify => self.stats.suspect_probes += 1,
            ProbeKind::Candidate => {
                if self.candidate_probes_full() {
                    return;
                }
                self.stats.candidate_probes += 1;
            }
            ProbeKind::Hint => self.stats.hint_probes += 1,
        }
        let retries_left = match kind {
            ProbeKind::Member | ProbeKind::Verify => self.config.probe_retries,
            // A candidate that does not answer is simply not admitted.
            ProbeKind::Candidate | ProbeKind::Hint => 0,
        };
        self.probes.push(PendingProbe {
            peer,
            deadline: now + self.hop_timeout(peer.id, self.config.probe_timeout),
            retries_left,
            kind,
            doubt: None,
            held: false,
        });
        self.send_probe(now, peer);
    }

    /// Starts a suspect's probe held back for two probe timeouts: someone told us `peer`
    /// failed, and a second account (see [`super::witness`]) usually comes sooner, with the
    /// probe that fills its place (held up to two thirds of a probe timeout, after the other
    /// side's own check of up to one). Routing avoids the suspect meanwhile, as during any
    /// member's probe.
    pub(super) fn hold_suspect(&mut self, now: Time, peer: PeerInfo) {
        self.stats.suspect_probes += 1;
        self.probes.push(PendingProbe {
            peer,
            deadline: now + self.config.probe_timeout * 2,
            retries_left: 0,
            kind: ProbeKind::Member,
            doubt: None,
            held: true,
        });
    }

    /// Whether candidates' probes in flight (held back ones included) are at their node-wide
    /// cap, counting the candidate dropped if so: candidates are hearsay.
    fn candidate_probes_full(&mut self) -> bool {
        let in_flight = self
            .probes
            .iter()
            .filter(|p| p.kind == ProbeKind::Candidate)
            .count();
        let full = in_flight >= 2 * self.config.leaf_set_size;
        if full {
            self.stats.candidates_dropped += 1;
        }
        full
    }

    /// Starts a candidate's probe held back for `wait` (a multiple of `probe_timeout /`
    /// [`CANDIDATE_HOLD_DIVISOR`]). When a node between two others fails, each of the two is the
    /// other's new leaf-set member and both learn it from the failure's notices: the left one's
    /// probe admits it to the right one's leaf set too (a probe from an active node proves it
    /// alive), so the right one waits for that probe rather than sending its own. If none came,
    /// it probes.
    pub(super) fn hold_candidate(&mut self, now: Time, peer: PeerInfo, wait: Duration) {
        if self.probes.iter().any(|p| p.peer.id == peer.id) {
            return;
        }
        if self.candidate_probes_full() {
            return;
        }
        self.probes.push(PendingProbe {
            peer,
            deadline: now + wait,
            retries_left: 0,
            kind: ProbeKind::Candidate,
            doubt: None,
            held: true,
        });
    }

    /// `id` did not acknowledge a message (here or at an earlier hop): drop it from the
    /// routing table and neighbourhood set at once (cheap to relearn) and, if it is a leaf,
    /// probe it: it is skipped while suspected and declared dead if it stays silent.
    pub(super) fn distrust(&mut self, now: Time, id: NodeId) {
        if let Some(slot) = self.leaf_set.get(id) {
            let peer = slot.peer;
            self.start_probe(now, peer, ProbeKind::Member);
        }
        self.neighbourhood.remove(id);
        self.rtt_cache.retain(|(cached, _)| *cached != id);
        self.route_cache.forget(id);
        self.hints.forget(id);
        if let Some((row, column)) = self.table.remove(id) {
            self.repair_table_row(now, row, column);
        }
    }

    /// The RTT we know for `id`, if any.
    pub(super) fn rtt_of(&self, id: NodeId) -> Option<Duration> {
        self.rtt_cache
            .iter()
            .find(|(cached, _)| *cached == id)
            .map(|(_, us)| Duration::from_micros(u64::from(*us)))
            .or_else(|| self.leaf_set.get(id).and_then(Slot::rtt))
            .or_else(|| self.table.find(id).and_then(Slot::rtt))
            .or_else(|| {
                self.neighbourhood
                    .iter()
                    .find(|s| s.peer.id == id)
                    .and_then(Slot::rtt)
            })
    }

    /// How long to wait for `id` to answer: three RTTs plus [`Config::timeout_slack`] when
    /// its RTT is known, never more than `cap`.
    pub(super) fn hop_timeout(&self, id: NodeId, cap: Duration) -> Duration {
        match self.rtt_of(id) {
            Some(rtt) => cap.min(rtt * 3 + self.config.timeout_slack),
            None => cap,
        }
    }

    pub(super) fn send_probe(&mut self, now: Time, peer: PeerInfo) {
        let nonce = self.fresh_id();
        let msg = Message::Probe {
            nonce,
            active: self.is_active(),
            leaf_set: self.leaf_set.peers(),
            failed: self.claims(now),
        };
        self.send(peer, msg);
    }

    pub(super) fn expire_probes(&mut self, now: Time) {
        let mut failed = Vec::new();
        let mut resend = Vec::new();
        let timeouts: Vec<Duration> = self
            .probes
            .iter()
            .map(|p| self.hop_timeout(p.peer.id, self.config.probe_timeout))
            .collect();
        let probe_cap = self.config.probe_timeout;
        let mut release = Vec::new();
        let mut index = 0;
        self.probes.retain_mut(|p| {
            let timeout = timeouts[index];
            index += 1;
            if p.deadline > now {
                return true;
            }
            if p.held && p.kind != ProbeKind::Candidate {
                // No second account came: check it ourselves.
                p.held = false;
                p.deadline = now + timeout;
                resend.push(p.peer);
                return true;
            }
            if p.held {
                release.push(p.peer);
                return false;
            }
            if p.retries_left > 0 {
                p.retries_left -= 1;
                // Back off: a late answer (load, jitter) must not make a live node dead.
                p.deadline = now + (timeout * 2).min(probe_cap);
                resend.push(p.peer);
                true
            } else {
                failed.push((p.peer, p.kind, p.doubt.take()));
                false
            }
        });
        for peer in resend {
            self.send_probe(now, peer);
        }
        // A held candidate's probe is sent only if the candidate did not probe us meanwhile
        // and would still enter the leaf set.
        let without = self.leaf_set_without_doubted();
        for peer in release {
            let base = without.as_ref().unwrap_or(&self.leaf_set);
            if self.is_active()
                && !base.contains(peer.id)
                && base.would_accept(peer.id)
                && !self.is_dead(peer.id)
            {
                self.start_probe(now, peer, ProbeKind::Candidate);
            }
        }
        let hint_failed = failed.iter().any(|(_, kind, _)| *kind == ProbeKind::Hint);
        for (peer, kind, doubt) in failed {
            match (kind, doubt) {
                (ProbeKind::Member | ProbeKind::Verify, Some(doubt)) => {
                    // Our own probe confirms what we were told.
                    self.conclude(now, peer.id, *doubt, None);
                }
                (ProbeKind::Member | ProbeKind::Verify, None) => self.declare_dead(now, peer),
                (ProbeKind::Candidate, _) => self.note_dead(now, peer.id),
                (ProbeKind::Hint, _) => self.hints.forget(peer.id),
            }
        }
        if hint_failed {
            self.continue_hints(now);
        }
    }

    /// The immediate neighbour on `side` was not heard from for `probe_period +
    /// probe_timeout`: probe it, and watch it for another such span.
    pub(super) fn expire_watch(&mut self, now: Time, side: Side) {
        let Some(id) = self.watch[side as usize] else {
            return;
        };
        self.timers
            .set(Timer::watch(side), self.watch_deadline(now));
        if let Some(slot) = self.leaf_set.get(id) {
            let peer = slot.peer;
            self.start_probe(now, peer, ProbeKind::Member);
        }
    }

    pub(super) fn heartbeat(&mut self, now: Time) {
        let leaf_set = self.leaf_set.peers();
        let left = self.leaf_set.neighbour(Side::Left).map(|s| s.peer);
        let right = self.leaf_set.neighbour(Side::Right).map(|s| s.peer);
        if let Some(left) = left {
            self.send(
                left,
                Message::Heartbeat {
                    leaf_set: leaf_set.clone(),
                },
            );
        }
        if let Some(right) = right.filter(|r| Some(r.id) != left.map(|l| l.id)) {
            self.send(right, Message::Heartbeat { leaf_set });
        }
        // Leaf-set repair: a short side asks its farthest member, whose leaf set reaches on.
        for side in [Side::Left, Side::Right] {
            if self.leaf_set.needs_repair(side) {
                if let Some(far) = self.leaf_set.furthest(side).map(|s| s.peer) {
                    self.stats.leaf_repairs += 1;
                    self.start_probe(now, far, ProbeKind::Member);
                }
            }
        }
        let horizon = self.config.probe_period * 4;
        self.dead.retain(|(_, when)| now < *when + horizon);
        self.in_flight.shrink_to(8);
        self.probes.shrink_to(8);
    }
}
