//! Neighbour hints: for the entries of this node's sparse routing-table rows, the entries'
//! nearest ring neighbours, so that a route can skip its final hops on a first route to a key.
//!
//! A route's last two hops (a deep, sparse row with one or two candidates per slot, then the
//! leaf-set hop) each land at a random point. A sparse row's entry shares one more digit with
//! the key than we do, and in a sparse row few nodes share that prefix: the key almost always
//! lies among the entry's nearest neighbours. Knowing them, we send straight to the one closest
//! to the key, which is then the key's root by the entry's leaf set.
//!
//! Learned from the leaf set an entry puts in its [`Message::ProbeReply`]: a node probes each
//! entry of its sparse rows once when the entry enters the table (or when the node becomes
//! active) and again each maintenance round, so the extra traffic is one probe per such entry
//! per `maintenance_period` plus one per table change. A reply's list passed the shape check
//! of every leaf set ([`super::validate`]); a hint is kept only if its span is at most our own
//! leaf set's (it names half as many ids a side, so an honest one spans about half of ours).
//!
//! Correctness never depends on a hint: the receiver routes the message like any other (its own
//! leaf set decides whether it is the root), so a stale or false hint costs at most a detour.
//!
//! Bounded: [`HINT_HALF`] ids a side for at most [`MAX_HINTED`] entries, the oldest out first;
//! a hint goes when its entry leaves the table or is found dead, and a node it names leaves it
//! when found dead.

use crate::id::{Key, NodeId};

use super::leaf_set::{LeafSet, Side};
use super::state::Pastry;
use super::{PeerInfo, Time};

#[cfg(doc)]
use super::Message;

/// Neighbours kept on each side of a hinted entry.
pub(super) const HINT_HALF: usize = 8;
/// Most entries with hints (sparse rows hold about 15 entries each at any size).
pub(super) const MAX_HINTED: usize = 48;
/// A row is sparse when its slots hold fewer than this many candidates each on average
/// (`N / 16^(row+1)`): the key's region then holds only a few nodes around the entry.
pub(super) const SPARSE_CANDIDATES: f64 = 32.0;
/// Growth of the estimated size after which a hint is refreshed.
pub(super) const REFRESH_GROWTH: f64 = 1.2;
/// Hint probes in flight at once.
pub(super) const MAX_HINT_PROBES: usize = 32;

/// One entry's nearest neighbours, as its last probe reply listed them.
#[derive(Debug, Clone)]
struct Hint {
    entry: PeerInfo,
    near: LeafSet,
    learned: Time,
    /// The overlay's estimated size when it was learned: once the overlay has grown by
    /// [`REFRESH_GROWTH`], newcomers likely sit among the neighbours, so it is asked again.
    size: f64,
}

impl Hint {
    /// The member closest to `key` (the entry included), if `key` lies within the range the
    /// hint knows: both sides non-empty (full when learned, less the members found dead since),
    /// and the key between their farthest members.
    fn root_of(&self, key: Key) -> Option<PeerInfo> {
        let sided = [Side::Left, Side::Right]
            .iter()
            .all(|side| !self.near.side_slots(*side).is_empty());
        if !sided || !self.near.covers(key) {
            return None;
        }
        let root = self.near.closest_to(key);
        if root == self.entry.id {
            return Some(self.entry);
        }
        self.near.get(root).map(|s| s.peer)
    }
}

/// The hints this node holds.
#[derive(Debug, Default)]
pub(super) struct Hints {
    entries: Vec<Hint>,
    /// Entries asked for their neighbours, with the estimated size when asked: one whose reply
    /// gave no hint (refused, or not wanted by then) is not asked again until the overlay has
    /// grown by [`REFRESH_GROWTH`] or the next maintenance round, so the many leaf-set changes
    /// of a failure cost no hint probes.
    asked: Vec<(NodeId, f64)>,
    /// The highest estimated size a scan for entries to ask ran at (0 before the first).
    peak: f64,
    /// An entry that wanted asking was not, the in-flight bound being reached: the next
    /// leaf-set change scans again.
    deferred: bool,
}

impl Hints {
    /// Whether `entry` has a hint learned at an estimated size of at least `size`.
    fn fresh(&self, entry: NodeId, size: f64) -> bool {
        self.entries
            .iter()
            .any(|h| h.entry.id == entry && h.size * REFRESH_GROWTH >= size)
            || self
                .asked
                .iter()
                .any(|(id, at)| *id == entry && at * REFRESH_GROWTH >= size)
    }

    /// Notes that `entry` was asked at estimated size `size`, the oldest note out past the
    /// bound.
    fn note_asked(&mut self, entry: NodeId, size: f64) {
        self.asked.retain(|(id, _)| *id != entry);
        if self.asked.len() >= 2 * MAX_HINTED {
            self.asked.remove(0);
        }
        self.asked.push((entry, size));
    }

    /// Forgets the hint of entry `id`, and `id` in every hint naming it (it died or left: the
    /// rest of the hint still lists the entry's nearest live neighbours).
    pub(super) fn forget(&mut self, id: NodeId) {
        self.entries.retain(|h| h.entry.id != id);
        self.asked.retain(|(asked, _)| *asked != id);
        for hint in &mut self.entries {
            hint.near.remove(id);
        }
    }

    /// Entries whose neighbours are held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.asked.clear();
        self.peak = 0.0;
        self.deferred = false;
    }
}

impl Pastry {
    /// Whether routing-table row `row` is sparse at the overlay's estimated size.
    pub(super) fn row_is_sparse(&self, row: usize) -> bool {
        self.estimated_size() / 16f64.powi(row as i32 + 1) < SPARSE_CANDIDATES
    }

    /// Whether `id` is an entry of a sparse row and outside our leaf set (whose members' keys
    /// the leaf set already routes).
    fn wants_hint(&self, id: NodeId) -> bool {
        !self.leaf_set.contains(id)
            && self
                .table
                .position(id)
                .is_some_and(|(row, _)| self.row_is_sparse(row))
    }

    /// The member of `entry`'s hint closest to `key`, if the hint covers the key and that member
    /// is usable (`usable`) and not this node.
    pub(super) fn hinted(
        &self,
        key: Key,
        entry: NodeId,
        usable: impl Fn(NodeId) -> bool,
    ) -> Option<PeerInfo> {
        let hint = self.hints.entries.iter().find(|h| h.entry.id == entry)?;
        let root = hint.root_of(key)?;
        (root.id != self.me.id && usable(root.id)).then_some(root)
    }

    /// A probe reply from `from` listing its leaf set: kept as `from`'s hint if `from` is an
    /// entry of a sparse row and the list's span is plausible.
    pub(super) fn learn_hint(&mut self, now: Time, from: PeerInfo, leaf_set: &[PeerInfo]) {
        if !self.wants_hint(from.id) {
            return;
        }
        let mut near = LeafSet::new(from.id, HINT_HALF);
        for peer in leaf_set {
            near.insert(*peer, None);
        }
        let far = |side: Side| near.side_slots(side).get(HINT_HALF - 1).map(|s| s.peer.id);
        let (Some(lo), Some(hi)) = (far(Side::Left), far(Side::Right)) else {
            return;
        };
        let own = match (
            self.leaf_set.side_slots(Side::Left).last(),
            self.leaf_set.side_slots(Side::Right).last(),
        ) {
            (Some(l), Some(r)) => l.peer.id.clockwise_distance(r.peer.id),
            _ => return,
        };
        // `lo` counter-clockwise of the entry, `hi` clockwise: the span through the entry.
        if lo.clockwise_distance(hi) > own.saturating_mul(super::route_cache::MAX_SPAN_RATIO)
            || lo.clockwise_distance(from.id) >= lo.clockwise_distance(hi)
        {
            self.stats.hints_refused += 1;
            return;
        }
        let hints = &mut self.hints.entries;
        hints.retain(|h| h.entry.id != from.id);
        if hints.len() >= MAX_HINTED {
            if let Some(oldest) = hints
                .iter()
                .enumerate()
                .min_by_key(|(_, h)| h.learned)
                .map(|(i, _)| i)
            {
                hints.remove(oldest);
            }
        }
        let size = self.estimated_size();
        self.hints.entries.push(Hint {
            entry: from,
            near,
            learned: now,
            size,
        });
        self.stats.hints_learned += 1;
    }

    /// Probes `peer` for its leaf set if it wants a hint, within the in-flight bound.
    pub(super) fn probe_for_hint(&mut self, now: Time, peer: PeerInfo) {
        if !self.is_active() || !self.wants_hint(peer.id) {
            return;
        }
        let in_flight = self
            .probes
            .iter()
            .filter(|p| p.kind == super::liveness::ProbeKind::Hint)
            .count();
        if in_flight >= MAX_HINT_PROBES {
            self.hints.deferred = true;
            return;
        }
        let size = self.estimated_size();
        self.hints.note_asked(peer.id, size);
        self.start_probe(now, peer, super::liveness::ProbeKind::Hint);
    }

    /// Probes the sparse rows' entries: those without a hint or whose hint was learned when the
    /// overlay was [`REFRESH_GROWTH`] times smaller, or all of them (`refresh`), as many as the
    /// in-flight bound allows. Drops the hints of nodes no longer such entries.
    ///
    /// Without `refresh` (a leaf-set change) the scan runs only when the estimated size is the
    /// highest seen yet, or an earlier scan or new entry hit the in-flight bound. While the
    /// overlay grows that is nearly every change; after a failure, whose leaf-set changes move
    /// the estimate up and down by a member's gap each, it is rarely any: the hints near their
    /// refresh point would otherwise all be asked again by that jitter, a burst of probes the
    /// failure did not call for (the table entries that replace the dead are asked as they
    /// enter).
    pub(super) fn probe_hints(&mut self, now: Time, refresh: bool) {
        let keep: Vec<NodeId> = self
            .hints
            .entries
            .iter()
            .map(|h| h.entry.id)
            .filter(|id| self.wants_hint(*id))
            .collect();
        self.hints.entries.retain(|h| keep.contains(&h.entry.id));
        if refresh {
            self.hints.asked.clear();
        }
        let size = self.estimated_size();
        if !(refresh || size > self.hints.peak || self.hints.deferred) {
            return;
        }
        self.hints.peak = self.hints.peak.max(size);
        self.hints.deferred = false;
        let wanted: Vec<PeerInfo> = self
            .table
            .iter()
            .map(|s| s.peer)
            .filter(|p| self.wants_hint(p.id) && (refresh || !self.hints.fresh(p.id, size)))
            .collect();
        for peer in wanted {
            self.probe_for_hint(now, peer);
        }
    }
}
