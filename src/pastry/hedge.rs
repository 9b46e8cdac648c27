//! Hedged hops: a copy of a message sent on to the next-best hop when the hop it went to has
//! been silent lately and does not acknowledge receipt in about two round trips, without
//! waiting for the full acknowledgement timeout.
//!
//! Under churn, routing-table entries outlive their nodes (maintenance runs every
//! [`Config::maintenance_period`](super::Config::maintenance_period)), so a message's next hop
//! is often already dead. Until the hop's receipt comes, or the message goes elsewhere, the
//! sender is its only holder: if the sender is the origin and dies in that window, the message
//! is lost. A live hop's receipt comes within a round trip and the receipt delay
//! ([`Pastry::receipt_delay`], an eighth of the slack); the acknowledgement timeout waits
//! three round trips and the whole slack. A copy sent after two round trips and a quarter of
//! the slack halves (or better) the time a dead hop keeps the message at a single holder.
//!
//! Bounds, so that a live but slow hop costs at most one extra copy:
//!
//! * Only a hop not heard from within a [`Config::probe_period`](super::Config::probe_period)
//!   is hedged: a peer that spoke lately is alive, and its acknowledgement is late only
//!   through load.
//! * Only a hop whose RTT is known: without one there is no honest "two round trips", and a
//!   guess sends copies past live hops on a network whose delays vary widely.
//! * Never when this node's leaf set covers the key: the hop is then the key's root by our
//!   state, and the next-best hop would deliver in its place if the root is merely slow (a
//!   misdelivery); a silent root's message waits for its probe instead (`routing`).
//! * One copy per send: a message sent to a hop is copied on at most once, and a copy counts
//!   as one of the message's [`Config::max_route_attempts`](super::Config::max_route_attempts)
//!   at this node, so a run of silent hops costs a bounded chain of copies, not a tree.
//!
//! The copy is held in custody like any message (its own acknowledgement, custody and
//! re-routes); the original entry then only checks its hop when it expires and does not
//! route the message a third way. If both copies get through, the root delivers the first
//! and drops the second (its ring of recent `(origin, id)` pairs), and the root of a message
//! never changes between two copies a few round trips apart unless the overlay does.
//!
//! This module owns the decision and the copy; the custody entries are `custody`'s.

use std::time::Duration;

use crate::id::{Key, NodeId};

use super::custody::Carried;
use super::routing::Choice;
use super::state::Pastry;
use super::Time;

/// The share of [`Config::timeout_slack`](super::Config::timeout_slack) added to two round
/// trips before a copy goes: twice the receipt delay, so that a live hop's held receipt is
/// never taken for silence.
const HEDGE_SLACK_DIVISOR: u32 = 4;

impl Pastry {
    /// When a message for `key` first sent to `next` at `now` is copied to another hop if
    /// `next` has not acknowledged it by then, or `None` if it is not hedged (see the module
    /// documentation for the rules).
    pub(super) fn hedge_time(
        &self,
        now: Time,
        next: NodeId,
        key: Key,
        attempts: u8,
    ) -> Option<Time> {
        // The copy counts as an attempt.
        if attempts.saturating_add(1) >= self.config.max_route_attempts || self.leaf_set.covers(key)
        {
            return None;
        }
        let rtt = self.rtt_of(next)?;
        if self.heard_within(now, next, self.config.probe_period) {
            return None;
        }
        let wait = self.hedge_wait(rtt);
        (wait < self.hop_timeout(next, self.config.ack_timeout)).then_some(now + wait)
    }

    /// Two round trips and a quarter of the slack.
    fn hedge_wait(&self, rtt: Duration) -> Duration {
        rtt * 2 + self.config.timeout_slack / HEDGE_SLACK_DIVISOR
    }

    /// Sends the copies due at `now`: each unacknowledged message whose hedge time came goes
    /// on to the next-best hop (its silent hop, its other exclusions and its previous hop left
    /// out), if there is one.
    pub(super) fn send_due_hedges(&mut self, now: Time) {
        let due: Vec<usize> = self
            .in_flight
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.received && f.hedge_at.is_some_and(|at| at <= now))
            .map(|(index, _)| index)
            .collect();
        let mut copies = Vec::new();
        for index in due {
            let f = &mut self.in_flight[index];
            f.hedge_at = None;
            let Carried::Route(msg) = &f.carried else {
                continue;
            };
            let named = f.excluded.clone();
            let mut excluded = named.clone();
            excluded.push(f.next.id);
            let mut skip = excluded.clone();
            skip.extend(msg.avoid.iter().copied());
            skip.extend(msg.prev.map(|p| p.id));
            let (msg, attempts) = (msg.clone(), f.attempts);
            let target = match self.choose(msg.key, &skip, self.is_active()) {
                Choice::Peer(p) if self.suspected_root_beyond(msg.key, p.id).is_none() => p,
                Choice::Peer(_) | Choice::Local | Choice::Nowhere => continue,
            };
            self.in_flight[index].hedged = true;
            copies.push((target, msg, named, excluded, attempts));
        }
        for (target, mut msg, named, excluded, attempts) in copies {
            self.stats.hedges += 1;
            self.stats.forwarded += 1;
            if msg.proof.is_none() && msg.origin.id == self.me.id {
                // Our own message, sent unsigned to what we took for its root: the copy's hop
                // is not that root, and the hops after it need the proof.
                msg.proof = self.sign_own(&msg);
            }
            // The silent hop is not named to the copy's hops (`avoid`): it may be alive, and the
            // key's root, and a hop told to avoid it could deliver in its place. Its own
            // timeout names it, as for any hop.
            self.transmit_route(target, &msg, &named);
            // The copy's hop may be silent too: it gets one copy of its own, if still due.
            self.hold_sent(now, target, msg, excluded, attempts.saturating_add(1));
        }
    }
}
