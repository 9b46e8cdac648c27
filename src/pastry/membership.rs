//! Membership: admitting peers to the leaf set, routing table and neighbourhood set (offer and
//! consider), second-hand leaf-set candidates, and forgetting dead or departed nodes.

use std::time::Duration;

use crate::id::NodeId;

use super::liveness::ProbeKind;
use super::state::{Pastry, Phase};
use super::{Event, Message, PeerInfo, Side, Time};

pub(super) const DEAD_MEMORY: usize = 32;
pub(super) const ANNOUNCED_MEMORY: usize = 8;

impl Pastry {
    /// A [`Message::NodeFailed`] from `from`: it found `node` dead (or, if it is us, suspects
    /// us). Not believed on its word: we probe the node ourselves and drop it only if our probe
    /// fails, spreading the news then as the notice would have. A node we heard from within a
    /// probe timeout stays usable for routing meanwhile; any other is probed as a suspect
    /// member (routing parks messages for its keys until the probe settles). The sender's leaf set is merged as candidates either way.
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
        } else if let Some(peer) = self.known_peer(node) {
            // The sender told its own leaf set: if our probe confirms, we tell only the members
            // it lacks.
            let told: Vec<NodeId> = leaf_set
                .iter()
                .map(|p| p.id)
                .chain(std::iter::once(from.id))
                .collect();
            let window = self.hop_timeout(node, self.config.probe_timeout);
            let kind = if self.heard_within(now, node, window) {
                // It spoke to us more recently than a probe could tell, so the notice is stale
                // or false, or the node died just after: check it without holding its keys
                // (it stays usable for routing until our own probe fails).
                self.stats.notices_contradicted += 1;
                ProbeKind::Verify
            } else {
                self.stats.notices_verified += 1;
                ProbeKind::Member
            };
            self.start_probe(now, peer, kind);
            if let Some(probe) = self.probes.iter_mut().find(|p| p.peer.id == node) {
                probe.notice.get_or_insert(told);
                // The notice's sender found it silent to a first try and a retry: one
                // unanswered try of our own confirms it (a live node answers it, so a false
                // notice still evicts nothing). A node heard from lately gets its retry.
                if probe.kind == ProbeKind::Member {
                    probe.retries_left = 0;
                }
            }
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
        let fits = |this: &Self, peer: &PeerInfo| {
            peer.id != this.me.id
                && !this.leaf_set.contains(peer.id)
                && this.leaf_set.would_accept(peer.id)
                && !this.is_dead(peer.id)
        };
        if !peers.iter().any(|p| fits(self, p)) {
            return;
        }
        // Probe only the candidates that would still be members if every candidate (and every
        // one already being probed) answered: a hole of one needs one probe, not eight.
        let mut hypothetical = self.leaf_set.clone();
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
        let hold = self.is_active() && self.leaf_set.overlay_exceeds();
        for peer in peers {
            if fits(self, peer)
                && hypothetical.contains(peer.id)
                && !self.probes.iter().any(|p| p.peer.id == peer.id)
            {
                if hold && peer.id.precedes(self.me.id) {
                    self.hold_candidate(now, *peer);
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
        let leaf_set = self.leaf_set.peers();
        if position.is_some_and(|(_, rank)| rank == 0) {
            // We were its neighbour: tell our leaf set (but not who the sender already told).
            // The notice carries our leaf set, meaning "everyone here has been told".
            for member in leaf_set.iter().filter(|p| !told.contains(&p.id)) {
                self.send(
                    *member,
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
