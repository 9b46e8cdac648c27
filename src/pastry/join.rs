//! Join (Pastry section 2.4 with MSPastry's consistent join): routing the joiner's `Join`,
//! answering with state, probing the candidate leaf set, activation and announcement.

use std::time::Duration;

use rand::Rng;

use crate::id::{NodeId, DIGITS};

use super::custody::{Carried, InFlight};
use super::liveness::ProbeKind;
use super::membership::ANNOUNCED_MEMORY;
use super::routing::Choice;
use super::state::{Pastry, Phase};
use super::timers::Timer;
use super::{Event, LeafSet, Message, PeerInfo, Slot, Time};

#[derive(Debug, Clone)]
pub(super) struct Joining {
    pub(super) bootstrap: PeerInfo,
    pub(super) attempt: u64,
    pub(super) got_leaf_set: bool,
    pub(super) restarts: u32,
}

#[derive(Debug, Clone)]
pub(super) struct JoinMsg {
    pub(super) id: u64,
    pub(super) joiner: PeerInfo,
    pub(super) next_row: u8,
    pub(super) hops: u8,
}

impl Pastry {
    pub(super) fn send_join(&mut self, now: Time, via: PeerInfo) {
        let attempt = self.fresh_id();
        self.timers.set(Timer::Join, now + self.config.join_timeout);
        if let Phase::Joining(j) = &mut self.phase {
            j.attempt = attempt;
            j.got_leaf_set = false;
        }
        self.send(
            via,
            Message::Join {
                id: attempt,
                joiner: self.me,
                next_row: 0,
                hops: 0,
            },
        );
    }

    pub(super) fn restart_join(&mut self, now: Time) {
        let Phase::Joining(j) = &mut self.phase else {
            return;
        };
        j.restarts += 1;
        let bootstrap = j.bootstrap;
        let restarts = j.restarts;
        self.stats.join_restarts += 1;
        self.probes.retain(|p| p.kind != ProbeKind::Candidate);
        // Every other attempt goes through a peer we learned, in case the bootstrap died.
        let known: Vec<PeerInfo> = self
            .leaf_set
            .iter()
            .chain(self.table.iter())
            .map(|s| s.peer)
            .collect();
        let via = if restarts % 2 == 0 && !known.is_empty() {
            known[self.rng.gen_range(0..known.len())]
        } else {
            bootstrap
        };
        tracing::debug!(me = ?self.me.id, ?via, restarts, "restarting join");
        self.send_join(now, via);
    }

    pub(super) fn on_join(&mut self, now: Time, from: PeerInfo, join: JoinMsg) {
        // An inactive node cannot place a joiner; without an ack the sender re-routes.
        if !self.is_active() || join.joiner.id == self.me.id {
            return;
        }
        if from.id != join.joiner.id {
            self.send(
                from,
                Message::RouteAck {
                    origin: join.joiner.id,
                    id: join.id,
                    done: true,
                },
            );
        }
        let excluded = vec![join.joiner.id];
        self.forward_join(now, join, excluded, 0);
    }

    pub(super) fn forward_join(
        &mut self,
        now: Time,
        mut join: JoinMsg,
        excluded: Vec<NodeId>,
        attempts: u8,
    ) {
        let joiner = join.joiner;
        let shared = self.me.id.shared_prefix_len(joiner.id).min(DIGITS - 1);
        let mut rows = Vec::new();
        for row in usize::from(join.next_row)..=shared {
            let entries: Vec<PeerInfo> = self
                .table
                .row(row)
                .iter()
                .map(|s| s.peer)
                .filter(|p| p.id != joiner.id)
                .collect();
            if !entries.is_empty() {
                rows.push((row as u8, entries));
            }
        }
        join.next_row = join.next_row.max(shared as u8 + 1);
        let neighbourhood: Vec<PeerInfo> = if join.hops == 0 && attempts == 0 {
            self.neighbourhood
                .iter()
                .map(|s| s.peer)
                .filter(|p| p.id != joiner.id)
                .collect()
        } else {
            Vec::new()
        };
        match self.choose(joiner.id.to_key(), &excluded, true) {
            Choice::Local | Choice::Nowhere => {
                let leaf_set = self
                    .leaf_set
                    .iter()
                    .map(|s| s.peer)
                    .filter(|p| p.id != joiner.id)
                    .collect();
                self.send(
                    joiner,
                    Message::JoinState {
                        rows,
                        neighbourhood,
                        leaf_set: Some(leaf_set),
                    },
                );
            }
            Choice::Peer(next) => {
                if !rows.is_empty() || !neighbourhood.is_empty() {
                    self.send(
                        joiner,
                        Message::JoinState {
                            rows,
                            neighbourhood,
                            leaf_set: None,
                        },
                    );
                }
                self.send(
                    next,
                    Message::Join {
                        id: join.id,
                        joiner,
                        next_row: join.next_row,
                        hops: join.hops.saturating_add(1),
                    },
                );
                let deadline = now + self.hop_timeout(next.id, self.config.ack_timeout);
                self.in_flight.push(InFlight {
                    carried: Carried::Join(join),
                    next,
                    deadline,
                    attempts,
                    excluded,
                    received: false,
                    hedge_at: None,
                    hedged: false,
                });
            }
        }
    }

    pub(super) fn on_join_state(
        &mut self,
        now: Time,
        from: PeerInfo,
        rows: Vec<(u8, Vec<PeerInfo>)>,
        neighbourhood: Vec<PeerInfo>,
        leaf_set: Option<Vec<PeerInfo>>,
    ) {
        if !self.is_joining() {
            return;
        }
        self.consider(now, from, true);
        let named: Vec<PeerInfo> = rows
            .into_iter()
            .flat_map(|(_, peers)| peers)
            .chain(neighbourhood)
            .collect();
        self.consider_named(now, from.id, &named, true);
        let Some(leaf_set) = leaf_set else {
            return;
        };
        if let Phase::Joining(j) = &mut self.phase {
            j.got_leaf_set = true;
        }
        // Probe only those of the root's leaf set (and the root) that belong in ours.
        let mut wanted = LeafSet::new(self.me.id, self.leaf_set.half());
        for peer in leaf_set.iter().chain(std::iter::once(&from)) {
            wanted.insert(*peer, None);
        }
        for slot in wanted.iter() {
            let peer = slot.peer;
            if !self.leaf_set.contains(peer.id) {
                self.start_probe(now, peer, ProbeKind::Candidate);
            }
        }
    }

    pub(super) fn check_join_complete(&mut self, now: Time) {
        let Phase::Joining(j) = &self.phase else {
            return;
        };
        // MSPastry's consistent join: every member of our leaf set has answered our probe, so
        // each has admitted us (see the Probe handler). We also wait for every candidate that
        // would be an immediate neighbour: until it answers or is found dead, we cannot know
        // who shares our key range. A farther candidate still being probed (typically a dead
        // node in a leaf set we were given) does not hold us back: it is not a member yet, and
        // it admits us when it gets the probe. Only an immediate neighbour that does not
        // know us could deliver our keys.
        if !j.got_leaf_set
            || self.probes.iter().any(|p| {
                p.kind == ProbeKind::Candidate && self.leaf_set.would_be_neighbour(p.peer.id)
            })
        {
            return;
        }
        if self.leaf_set.is_empty() {
            // Every candidate was dead: try again.
            self.restart_join(now);
            return;
        }
        self.activate(now);
    }

    pub(super) fn activate(&mut self, now: Time) {
        self.phase = Phase::Active;
        self.timers.stop(Timer::Join);
        self.skip_growth_passes();
        self.start_timers(now);
        self.probe_hints(now, false);
        self.announce_until = now + self.config.join_timeout;
        tracing::debug!(me = ?self.me.id, leaves = self.leaf_set.len(), "joined");
        self.emit(Event::Joined);
        self.emit(Event::LeafSetChanged);
        let leaf_set = self.leaf_set.peers();
        for peer in &leaf_set {
            self.send(
                *peer,
                Message::Announce {
                    leaf_set: leaf_set.clone(),
                },
            );
        }
        let mut others: Vec<PeerInfo> = self
            .table
            .iter()
            .chain(self.neighbourhood.iter())
            .map(|s| s.peer)
            .filter(|p| !self.leaf_set.contains(p.id))
            .collect();
        others.sort_by_key(|p| p.id);
        others.dedup_by_key(|p| p.id);
        for peer in others {
            self.send(peer, Message::Announce { leaf_set: vec![] });
        }
        for msg in std::mem::take(&mut self.waiting) {
            self.route_step(now, msg, Vec::new(), 0);
        }
        // Improve locality at once (the paper's second join phase, one peer per row): the
        // rows we were given came from nodes near the join route, not near us.
        if self.config.proximity {
            for row in 0..self.table.row_count() {
                let mut entries: Vec<Slot> = self.table.row(row).to_vec();
                entries.sort_by_key(|s| s.rtt().unwrap_or(Duration::MAX));
                for slot in entries.into_iter().take(self.config.join_row_refresh) {
                    self.request_row(slot.peer, row, true);
                }
            }
        }
    }

    pub(super) fn on_announce(&mut self, now: Time, from: PeerInfo, theirs: &[PeerInfo]) {
        if !self.is_active() {
            return;
        }
        if self.announced.len() >= ANNOUNCED_MEMORY {
            self.announced.pop_front();
        }
        self.announced.push_back((from.id, now));
        self.add_live(now, from, true);
        if theirs.is_empty() {
            return;
        }
        // Tell the newcomer about leaf-set members it is missing (concurrent joins).
        let mut their_set = self.leaf_set.empty_for(from.id);
        for peer in theirs {
            their_set.insert(*peer, None);
        }
        let missing = self
            .leaf_set
            .iter()
            .map(|s| s.peer.id)
            .chain(std::iter::once(self.me.id))
            .any(|id| id != from.id && their_set.would_accept(id));
        if missing {
            let leaf_set = self.leaf_set.peers();
            self.send(from, Message::Heartbeat { leaf_set });
        }
    }
}
