//! Membership: admitting peers to the leaf set, routing table and neighbourhood set (offer and
//! consider), second-hand leaf-set candidates, and forgetting dead or departed nodes.

use std::time::Duration;

use crate::id::NodeId;

use super::liveness::{ProbeKind, CANDIDATE_HOLD_DIVISOR};
use super::state::{Pastry, Phase};
use super::{Event, Message, PeerInfo, Side, Time};

pub(super) const DEAD_MEMORY: usize = 32;
pub(super) const ANNOUNCED_MEMORY: usize = 8;

impl Pastry {
    /// A [`Message::NodeFailed`] from `from`: it holds `node` dead (or, if it is us, suspects
    /// us). Not believed on its word: it is one account (see [`super::witness`]). A node we
    /// heard from within a probe timeout is probed at once and stays usable for routing
    /// meanwhile; any other waits for a second account that shares no node with this one, or
    /// else our own probe, and routing parks messages for its keys until then. The sender's
    /// leaf set is merged as candidates either way (as if the node were gone, so that the
    /// probes that fill its place, which carry the second account, go out at once).
    pub(super) fn on_node_failed(
        &mut self,
        now: Time,
        from: PeerInfo,
        node: NodeId,
        leaf_set: &[PeerInfo],
    ) {
        if node == self.me.id {
            // A false suspicion: show the sender we are alive so it re-admits us.
            if self.is_active() {
                self.start_probe(now, from, ProbeKind::Member);
            }
        } else if self.known_peer(node).is_some() {
            let window = self.hop_timeout(node, self.config.probe_timeout);
            if self.heard_within(now, node, window) {
                // It spoke to us more recently than a probe could tell, so the notice is stale
                // or false, or the node died just after.
                self.stats.notices_contradicted += 1;
            } else {
                self.stats.notices_verified += 1;
            }
            self.take_account(now, from, node, from.id, false);
        }
        self.merge_candidates(now, from.id, leaf_set);
    }

    /// `id`'s peer info, if it is in any of the three structures.
    pub(super) fn known_peer(&self, id: NodeId) -> Option<PeerInfo> {
        self.leaf_set
            .get(id)
            .or_else(|| self.table.find(id))
            .or_else(|| self.neighbourhood.iter().find(|s| s.peer.id == id))
            .map(|s| s.peer)
    }

    /// A [`Message::Leave`] from `from`: it is gone at once.
    pub(super) fn on_leave(&mut self, now: Time, from: PeerInfo, leaf_set: &[PeerInfo]) {
        self.remove_everywhere(now, from.id);
        self.note_dead(now, from.id);
        self.merge_candidates(now, from.id, leaf_set);
    }

    /// Puts `peer` (heard from directly) into the leaf set only, with the usual events.
    pub(super) fn admit_leaf(&mut self, now: Time, peer: PeerInfo) {
        let was_known = self.knows(peer.id);
        if self.leaf_set.insert(peer, None) {
            if !was_known {
                self.emit(Event::NodeJoined(peer.id));
            }
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
            self.fill_as_grown();
            self.probe_hints(now, false);
        }
    }

    /// `peer` is alive and active (we heard from it directly).
    /// `improve`: measure it even if its routing-table slot is taken (a newly announced node
    /// may be nearer than the holder: this keeps existing tables proximity-aware as nodes join).
    pub(super) fn add_live(&mut self, now: Time, peer: PeerInfo, improve: bool) {
        let was_known = self.knows(peer.id);
        self.hints.heard(self.me.id, peer);
        if self.leaf_set.insert(peer, None) && self.is_active() {
            if !was_known {
                self.emit(Event::NodeJoined(peer.id));
            }
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
            self.fill_as_grown();
            self.probe_hints(now, false);
        }
        self.consider(now, peer, improve);
    }

    pub(super) fn offer(&mut self, now: Time, peer: PeerInfo, rtt: Option<Duration>) {
        let was_known = self.knows(peer.id);
        let insertion = self
            .table
            .insert(peer, rtt, self.config.proximity_hysteresis);
        let entered = matches!(
            insertion,
            super::Insertion::Added | super::Insertion::Replaced(_)
        );
        if insertion == super::Insertion::Added
            && self.is_active()
            && self
                .announced
                .iter()
                .any(|(id, at)| *id == peer.id && now < *at + self.config.probe_timeout)
        {
            // A newcomer filled an empty slot of ours: it may be the first node with that
            // prefix, so the other nodes sharing the row's prefix with us likely lack it too
            // (it announced itself only to the nodes it knows). Pass it on, once.
            self.announced.retain(|(id, _)| *id != peer.id);
            // Only the sparse deep rows: a shallow row's slots have many candidates, so a hole
            // there is ours alone (a failure) and lazy repair or maintenance fills it.
            // And only where slots are expected to hold a candidate (about N / 16^(row+1) each):
            // beyond that, an empty slot usually means nobody has the prefix.
            let size = self.estimated_size();
            let dense_enough = |row: usize| size >= 16f64.powi(row as i32 + 1);
            if let Some((row, _)) = self
                .table
                .position(peer.id)
                .filter(|&(row, _)| row >= 1 && dense_enough(row))
            {
                let others: Vec<PeerInfo> = self
                    .table
                    .row(row)
                    .iter()
                    .map(|s| s.peer)
                    .filter(|p| p.id != peer.id)
                    .collect();
                for other in others {
                    self.send(
                        other,
                        Message::RowReply {
                            row: row as u8,
                            entries: vec![peer],
                        },
                    );
                }
            }
        }
        if entered {
            // A new entry of a sparse row: learn its neighbours (see `hints`).
            self.probe_for_hint(now, peer);
        }
        if let Some(rtt) = rtt {
            self.neighbourhood.insert(peer, rtt);
            if self.leaf_set.contains(peer.id) {
                self.leaf_set.insert(peer, Some(rtt));
            }
        }
        if self.is_active() && !was_known && self.knows(peer.id) {
            self.emit(Event::NodeJoined(peer.id));
        }
        if entered && self.is_active() && now < self.announce_until {
            self.send(peer, Message::Announce { leaf_set: vec![] });
        }
    }

    /// The overlay's size estimated from the leaf set's span: its members over the share of
    /// the ring from the farthest left member to the farthest right one (exact count if the
    /// overlay is no larger than the leaf set). A leaf set with holes (members found dead, not
    /// yet replaced) is read by the members it still has over the span they still cover: the
    /// overlay did not shrink to the size of the leaf set, and an estimate that dropped to it
    /// would make every routing-table row look sparse for the time the hole lasts.
    pub(super) fn estimated_size(&self) -> f64 {
        let half = self.leaf_set.half();
        let exact = (self.leaf_set.len() + 1) as f64;
        // In an overlay of at most L nodes the two sides share members: count them.
        if self.leaf_set.len() < 2 * half && !self.leaf_set.overlay_exceeds() {
            return exact;
        }
        let members = |side: Side| self.leaf_set.side_slots(side).len();
        let far = |side: Side| self.leaf_set.side_slots(side).last().map(|s| s.peer.id);
        let (count, span) = match (far(Side::Left), far(Side::Right)) {
            (Some(left), Some(right)) => (
                members(Side::Left) + members(Side::Right),
                left.clockwise_distance(right),
            ),
            // One side emptied by failures: the other side alone, from us to its far end.
            (Some(left), None) => (members(Side::Left), left.clockwise_distance(self.me.id)),
            (None, Some(right)) => (members(Side::Right), self.me.id.clockwise_distance(right)),
            (None, None) => return exact,
        };
        if span == 0 {
            return exact;
        }
        count as f64 * 2f64.powi(128) / span as f64
    }

    /// Probes second-hand leaf-set candidates, named by `source`, that would enter our leaf
    /// set.
    pub(super) fn merge_candidates(&mut self, now: Time, source: NodeId, peers: &[PeerInfo]) {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        if self.is_active() {
            // Leaf sets of nearby nodes also fill empty routing-table slots of the deepest rows.
            self.consider_named(now, source, peers, false);
        }
        // Members we were told failed count as gone: the probes that replace them carry the
        // second account of their failure (see `witness`).
        let without = self.leaf_set_without_doubted();
        let fits = |this: &Self, peer: &PeerInfo| {
            let base = without.as_ref().unwrap_or(&this.leaf_set);
            peer.id != this.me.id
                && !base.contains(peer.id)
                && base.would_accept(peer.id)
                && !this.is_dead(peer.id)
        };
        if !peers.iter().any(|p| fits(self, p)) {
            return;
        }
        // Probe only the candidates that would still be members if every candidate (and every
        // one already being probed) answered: a hole of one needs one probe, not eight.
        let mut hypothetical = without.clone().unwrap_or_else(|| self.leaf_set.clone());
        for probe in &self.probes {
            if probe.kind == ProbeKind::Candidate {
                hypothetical.insert(probe.peer, None);
            }
        }
        for peer in peers.iter().filter(|p| fits(self, p)) {
            hypothetical.insert(*peer, None);
        }
        // An active node whose leaf set has a hole holds back the probes of candidates on its
        // left (see `hold_candidate`); a joiner and a node of a small overlay probe at once.
        // A candidate that fits only once a member we were told failed is gone waits on both
        // sides, longer on the left: the other side's account of the failure may still be on
        // its way, and a probe that arrives after it needs no extra notice to be believed.
        let hold = self.is_active() && self.leaf_set.overlay_exceeds();
        let step = self.config.probe_timeout / CANDIDATE_HOLD_DIVISOR;
        for peer in peers {
            if fits(self, peer)
                && hypothetical.contains(peer.id)
                && !self.probes.iter().any(|p| p.peer.id == peer.id)
            {
                let on_left = peer.id.precedes(self.me.id);
                let for_doubted = without.is_some() && !self.leaf_set.would_accept(peer.id);
                if hold && for_doubted {
                    let wait = if on_left { step * 3 } else { step * 2 };
                    self.hold_candidate(now, *peer, wait);
                } else if hold && on_left {
                    self.hold_candidate(now, *peer, step);
                } else {
                    self.start_probe(now, *peer, ProbeKind::Candidate);
                }
            }
        }
    }

    /// Removes `id` from every structure. Returns whether it was in the leaf set.
    pub(super) fn remove_everywhere(&mut self, now: Time, id: NodeId) -> bool {
        let was_leaf = self.leaf_set.remove(id);
        self.table.remove(id);
        self.neighbourhood.remove(id);
        self.take_measuring(id);
        self.probes.retain(|p| p.peer.id != id);
        for f in &mut self.in_flight {
            if f.next.id == id {
                f.deadline = now;
            }
        }
        if was_leaf && self.is_active() {
            self.emit(Event::NodeLeft(id));
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
        }
        // The table slot is refilled lazily: when routing meets the hole (`note_hole`) or by
        // periodic maintenance; a failure notice does not cost a row request per table holder.
        was_leaf
    }

    pub(super) fn declare_dead(&mut self, now: Time, peer: PeerInfo) {
        self.stats.declared_dead += 1;
        tracing::debug!(me = ?self.me.id, dead = ?peer.id, "declaring node dead");
        self.forget_dead(now, peer.id, true, &[]);
    }

    /// Drops a dead node and spreads the news so that every leaf set holding it learns: the
    /// dead node's immediate neighbours tell their whole leaf sets (together they span every
    /// node that can hold it); a detector that is not a neighbour tells those neighbours.
    pub(super) fn forget_dead(
        &mut self,
        now: Time,
        id: NodeId,
        detected_here: bool,
        told: &[NodeId],
    ) {
        let position = self.leaf_set.position(id);
        let inner = position.and_then(|(side, rank)| {
            rank.checked_sub(1)
                .and_then(|r| self.leaf_set.side_slots(side).get(r))
                .map(|s| s.peer)
        });
        let outer = position
            .and_then(|(side, rank)| self.leaf_set.side_slots(side).get(rank + 1).map(|s| s.peer));
        let was_leaf = self.remove_everywhere(now, id);
        self.note_dead(now, id);
        if !was_leaf || !self.is_active() {
            return;
        }
        self.note_failed(now, id);
        let leaf_set = self.leaf_set.peers();
        if let Some((side, 0)) = position {
            // We were its neighbour: tell the members on our far side that hold it (those
            // fewer than half a leaf set away from it) and its other neighbour, now ours. That
            // neighbour tells its own far side: each holder hears one account from its side
            // and a second with the probe of its new member from the other (see `witness`).
            let half = self.leaf_set.half();
            let far = self
                .leaf_set
                .side_slots(side.opposite())
                .iter()
                .take(half.saturating_sub(1))
                .map(|s| s.peer);
            let across = self.leaf_set.neighbour(side).map(|s| s.peer);
            let mut recipients: Vec<PeerInfo> = Vec::new();
            for peer in far.chain(across) {
                if !told.contains(&peer.id) && !recipients.iter().any(|p| p.id == peer.id) {
                    recipients.push(peer);
                }
            }
            for member in recipients {
                self.send(
                    member,
                    Message::NodeFailed {
                        node: id,
                        leaf_set: leaf_set.clone(),
                    },
                );
            }
        } else if detected_here {
            // Not its neighbour: tell its neighbours, who tell their leaf sets. An empty leaf
            // set says we told nobody else.
            for member in inner.into_iter().chain(outer) {
                self.send(
                    member,
                    Message::NodeFailed {
                        node: id,
                        leaf_set: Vec::new(),
                    },
                );
            }
        }
    }

    pub(super) fn is_dead(&self, id: NodeId) -> bool {
        self.dead.iter().any(|(dead, _)| *dead == id)
    }

    pub(super) fn note_dead(&mut self, now: Time, id: NodeId) {
        self.rtt_cache.retain(|(cached, _)| *cached != id);
        self.route_cache.forget(id);
        self.hints.forget(id);
        if self.dead.len() >= DEAD_MEMORY {
            self.dead.pop_front();
        }
        self.dead.push_back((id, now));
    }
}
