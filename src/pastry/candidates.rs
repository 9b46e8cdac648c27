//! Bounded candidates: what the peers a message names may cost this node.
//!
//! A peer list is hearsay: the ids and addresses in it are whatever its sender wrote, and
//! measuring a candidate or probing it makes the driver dial the address given. So whatever
//! one message names yields only a bounded amount of work:
//!
//! * **Per message**, a candidate is taken only if it would fill an empty routing-table slot,
//!   at most one per slot and at most [`PER_MESSAGE`] in all; or, in a list this node asked for
//!   to improve proximity (a joiner's `JoinState`, a `RowReply` to a proximity request, and an
//!   announcing newcomer), if it may be nearer than a slot's holder, at most
//!   [`PER_SOLICITED`]. Leaf-set candidates are probed only if they would
//!   still be members had every candidate answered (the hypothetical leaf set of
//!   `merge_candidates`), so a message yields at most `L` probes.
//! * **Measurements in flight** are capped node-wide ([`MAX_MEASURING`]) and per source, the
//!   peer whose message named the candidate ([`MEASURING_PER_SOURCE`]). Candidates past a cap
//!   wait in a bounded queue ([`MAX_QUEUED`], at most [`QUEUED_PER_SOURCE`] per source),
//!   started in order as measurements finish; the rest are dropped and counted
//!   ([`Stats::candidates_dropped`](super::Stats::candidates_dropped)). A measurement the driver
//!   never answers frees its place after twice the probe timeout (longer than a transport's
//!   connect timeout), and the peer counts as unreachable for a while.
//! * **Candidate probes** in flight are capped node-wide at twice the leaf-set size.
//!
//! This module owns the admission of named peers to the measurement pipeline; what happens
//! once a peer is measured is `membership`'s ([`Pastry::offer`]).

use std::time::Duration;

use crate::id::NodeId;

use super::state::Pastry;
use super::{PeerInfo, Time, Transmit};

/// Most candidates one message may make this node measure (or, without proximity, admit
/// unmeasured), one per empty slot.
pub(super) const PER_MESSAGE: usize = 8;
/// Most candidates of a list this node asked for to improve its table (a joiner's
/// `JoinState`, a `RowReply` to a proximity request): a joiner's first hop sends its row and its
/// neighbourhood set, all near the joiner, and measuring fewer of them makes routes longer.
pub(super) const PER_SOLICITED: usize = 32;
/// Most measurements in flight.
pub(super) const MAX_MEASURING: usize = 32;
/// Most measurements in flight of candidates named by one peer.
pub(super) const MEASURING_PER_SOURCE: usize = 8;
/// Most candidates waiting for a measurement.
pub(super) const MAX_QUEUED: usize = 128;
/// Most waiting candidates named by one peer.
pub(super) const QUEUED_PER_SOURCE: usize = 32;

/// A measurement in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measuring {
    pub(super) peer: NodeId,
    /// The peer whose message named it (itself, for a peer heard from directly).
    pub(super) source: NodeId,
    /// When it stops counting against the caps if the driver has not answered.
    pub(super) deadline: Time,
}

/// A candidate waiting for a measurement.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    peer: PeerInfo,
    source: NodeId,
    improve: bool,
}

/// What a named peer is worth to the routing table.
enum Worth {
    /// Nothing: ourselves, already held or being measured, recently dead, or its slot is
    /// taken and we are not improving.
    Nothing,
    /// Its RTT is known: offer it at once (no dial).
    Known(Duration),
    /// Without proximity: admit it unmeasured to its empty slot.
    Unmeasured((usize, usize)),
    /// Measure it for this slot.
    Measure((usize, usize)),
}

impl Pastry {
    /// Offers `peer`, heard from directly, to the routing table and neighbourhood set (see
    /// [`Self::consider_named`]).
    pub(super) fn consider(&mut self, now: Time, peer: PeerInfo, improve: bool) {
        self.consider_named(now, peer.id, &[peer], improve);
    }

    /// Offers the peers `source` named to the routing table and neighbourhood set: directly if
    /// their proximity is known or proximity is off, otherwise after a measurement. Only
    /// candidates for an empty slot count, one per slot and [`PER_MESSAGE`] in all; with
    /// `improve` (a list we asked for), candidates for any slot, [`PER_SOLICITED`] in all.
    pub(super) fn consider_named(
        &mut self,
        now: Time,
        source: NodeId,
        peers: &[PeerInfo],
        improve: bool,
    ) {
        let mut slots: Vec<(usize, usize)> = Vec::new();
        for &peer in peers {
            let slot = match self.worth(peer, improve) {
                Worth::Nothing => continue,
                Worth::Known(rtt) => {
                    self.offer(now, peer, Some(rtt));
                    continue;
                }
                Worth::Unmeasured(slot) | Worth::Measure(slot) => slot,
            };
            // Filling: one candidate per empty slot. Improving: candidates for one slot compete
            // on RTT, which is the point.
            if !improve && slots.contains(&slot) {
                continue;
            }
            let cap = if improve { PER_SOLICITED } else { PER_MESSAGE };
            if slots.len() >= cap {
                // The per-message bound: normal for long lists, not counted as dropped.
                continue;
            }
            slots.push(slot);
            if self.config.proximity {
                self.request_measure(
                    now,
                    Queued {
                        peer,
                        source,
                        improve,
                    },
                );
            } else {
                self.offer(now, peer, None);
            }
        }
        self.pump_measurements(now);
    }

    fn worth(&self, peer: PeerInfo, improve: bool) -> Worth {
        if peer.id == self.me.id || self.table.contains(peer.id) || self.is_dead(peer.id) {
            return Worth::Nothing;
        }
        let Some((row, column)) = self.table.position(peer.id) else {
            return Worth::Nothing;
        };
        let empty = self.table.get(row, column).is_none();
        if !self.config.proximity {
            return if empty {
                Worth::Unmeasured((row, column))
            } else {
                Worth::Nothing
            };
        }
        if let Some(rtt) = self.rtt_of(peer.id) {
            return Worth::Known(rtt);
        }
        if (!empty && !improve) || self.is_measuring(peer.id) {
            return Worth::Nothing;
        }
        Worth::Measure((row, column))
    }

    fn is_measuring(&self, id: NodeId) -> bool {
        self.measuring.iter().any(|m| m.peer == id)
            || self.measure_queue.iter().any(|q| q.peer.id == id)
    }

    fn measuring_from(&self, source: NodeId) -> usize {
        self.measuring.iter().filter(|m| m.source == source).count()
    }

    fn may_start(&self, source: NodeId) -> bool {
        self.measuring.len() < MAX_MEASURING && self.measuring_from(source) < MEASURING_PER_SOURCE
    }

    /// Measures `candidate` now if the caps allow, else queues it if the queue has room.
    fn request_measure(&mut self, now: Time, candidate: Queued) {
        if self.may_start(candidate.source) {
            self.start_measure(now, candidate.peer, candidate.source);
            return;
        }
        let queued_from = self
            .measure_queue
            .iter()
            .filter(|q| q.source == candidate.source)
            .count();
        if self.measure_queue.len() < MAX_QUEUED && queued_from < QUEUED_PER_SOURCE {
            self.measure_queue.push_back(candidate);
        } else {
            self.stats.candidates_dropped += 1;
        }
    }

    fn start_measure(&mut self, now: Time, peer: PeerInfo, source: NodeId) {
        self.measuring.push(Measuring {
            peer: peer.id,
            source,
            deadline: now + self.measure_timeout(),
        });
        self.stats.measures += 1;
        self.transmits.push_back(Transmit::Measure { peer });
    }

    /// How long a measurement may stay unanswered before its place is freed.
    fn measure_timeout(&self) -> Duration {
        self.config.probe_timeout * 2
    }

    /// Ends the measurement of `id`, if one is in flight; returns whether it was.
    pub(super) fn take_measuring(&mut self, id: NodeId) -> bool {
        let before = self.measuring.len();
        self.measuring.retain(|m| m.peer != id);
        self.measuring.len() != before
    }

    /// Starts waiting candidates, in order, as far as the caps allow. A candidate that is no
    /// longer worth a measurement (its slot was filled meanwhile) is dropped.
    pub(super) fn pump_measurements(&mut self, now: Time) {
        let mut index = 0;
        while index < self.measure_queue.len() && self.measuring.len() < MAX_MEASURING {
            let source = self.measure_queue[index].source;
            if self.measuring_from(source) >= MEASURING_PER_SOURCE {
                index += 1;
                continue;
            }
            let Some(candidate) = self.measure_queue.remove(index) else {
                break;
            };
            match self.worth(candidate.peer, candidate.improve) {
                Worth::Measure(_) => self.start_measure(now, candidate.peer, source),
                Worth::Known(rtt) => self.offer(now, candidate.peer, Some(rtt)),
                Worth::Unmeasured(_) | Worth::Nothing => {}
            }
        }
        if self.measure_queue.is_empty() && self.measure_queue.capacity() > 0 {
            self.measure_queue = Default::default();
        }
    }

    /// Frees the places of measurements the driver never answered; their peers count as
    /// unreachable for a while unless they are in our state.
    pub(super) fn expire_measurements(&mut self, now: Time) {
        let mut expired = Vec::new();
        self.measuring.retain(|m| {
            let keep = m.deadline > now;
            if !keep {
                expired.push(m.peer);
            }
            keep
        });
        for id in expired {
            if !self.knows(id) {
                self.note_dead(now, id);
            }
        }
        if self.measuring.is_empty() && self.measuring.capacity() > 0 {
            self.measuring = Vec::new();
        }
        self.pump_measurements(now);
    }

    /// The earliest deadline of a measurement in flight.
    pub(super) fn measure_deadline(&self) -> Option<Time> {
        self.measuring.iter().map(|m| m.deadline).min()
    }
}
