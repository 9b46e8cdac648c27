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
//! active) and again each maintenance round. A hint keeps only the members of the entry's
//! *region* (the ids sharing one more digit with the key than we do, the only keys it is used
//! for) and the first member beyond each end of it. Where the entry's leaf set does not reach an
//! end of the region (a region of more than `L/2` nodes on that side), the farthest member
//! known on that side is probed in turn for its leaf set, and so on until the end is reached or
//! [`MAX_REACH`] members are known on that side: a complete hint names every node of the region,
//! so any key of it goes to its root in one hop. A region holds about `N / 16^(row+1)`
//! ([`SPARSE_CANDIDATES`] at most, on average) nodes, so the extra traffic is one probe per
//! entry and about one more per `L/2` region members beyond the entry's leaf set, per
//! `maintenance_period`, plus the same per table change. Every reply's list passed the shape
//! check of every leaf set ([`super::validate`]) and is kept only if its span is at most
//! [`MAX_SPAN_RATIO`](super::route_cache::MAX_SPAN_RATIO) times our own leaf set's (it names
//! half as many ids a side, so an honest one spans about half of ours).
//!
//! Correctness never depends on a hint: the receiver routes the message like any other (its own
//! leaf set decides whether it is the root), so a stale or false hint costs at most a detour.
//!
//! Bounded: [`MAX_REACH`] ids a side for at most [`MAX_HINTED`] entries, the oldest out first;
//! at most [`MAX_HINT_PROBES`] probes in flight; a hint goes when its entry leaves the table or
//! is found dead, and a node it names leaves it when found dead or silent.

use crate::id::{Key, NodeId};

use super::leaf_set::{LeafSet, Side};
use super::state::Pastry;
use super::{PeerInfo, Time};

#[cfg(doc)]
use super::Message;

/// Neighbours a probe reply lists on each side of its sender (`L/2` at the shipped defaults).
pub(super) const HINT_HALF: usize = 8;
/// Most region members a hint keeps on each side of its entry (regions average at most
/// [`SPARSE_CANDIDATES`] nodes, so this covers nearly every one from any entry in it).
pub(super) const MAX_REACH: usize = 32;
/// Most entries with hints (sparse rows hold about 15 entries each at any size).
pub(super) const MAX_HINTED: usize = 48;
/// A row is sparse when its slots hold fewer than this many candidates each on average
/// (`N / 16^(row+1)`): the key's region then holds only a few nodes around the entry.
pub(super) const SPARSE_CANDIDATES: f64 = 32.0;
/// Growth of the estimated size after which a hint is refreshed.
pub(super) const REFRESH_GROWTH: f64 = 1.2;
/// Hint probes in flight at once.
pub(super) const MAX_HINT_PROBES: usize = 32;

/// One entry's region: its members nearest the entry on each side, as the probe replies of
/// the entry and of the farthest members known listed them.
#[derive(Debug, Clone)]
struct Hint {
    entry: PeerInfo,
    /// Digits every id of the entry's region shares with it.
    prefix: usize,
    /// Members of the region on each side of the entry, then the first one beyond its end.
    near: Run,
    learned: Time,
    /// The overlay's estimated size when it was learned: once the overlay has grown by
    /// [`REFRESH_GROWTH`], newcomers likely sit among the neighbours, so it is asked again.
    size: f64,
}

impl Hint {
    /// The member closest to `key` (the entry included), if `key` lies within the range the
    /// hint knows: both sides non-empty, and the key between their farthest members.
    fn root_of(&self, key: Key) -> Option<PeerInfo> {
        self.near.covers(key).then(|| self.near.closest_to(key))
    }

    /// Keeps, on each side, the members inside the region and the first one beyond it.
    fn trim(&mut self) {
        let (entry, prefix) = (self.entry.id, self.prefix);
        for side in [Side::Left, Side::Right] {
            let members = self.near.side_mut(side);
            if let Some(beyond) = members
                .iter()
                .position(|p| entry.shared_prefix_len(p.id) < prefix)
            {
                members.truncate(beyond + 1);
            }
        }
    }

    /// The farthest member known on `side` if the hint does not reach the region's end there
    /// and has room for more: the node to ask for the next stretch of the region.
    fn frontier(&self, side: Side) -> Option<PeerInfo> {
        let members = self.near.side(side);
        let far = members.last()?;
        (members.len() < MAX_REACH && self.entry.id.shared_prefix_len(far.id) >= self.prefix)
            .then_some(*far)
    }
}

/// The peers known on each side of an entry, nearest first: unlike a leaf set, a peer sits on
/// one side only (the half ring it lies on), so a short side never wraps around the ring.
#[derive(Debug, Clone)]
struct Run {
    entry: PeerInfo,
    left: Vec<PeerInfo>,
    right: Vec<PeerInfo>,
}

impl Run {
    fn new(entry: PeerInfo) -> Self {
        Self {
            entry,
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    /// The side `id` lies on, and its distance from the entry walking that way.
    fn place(&self, id: u128) -> (Side, u128) {
        let entry = self.entry.id;
        if entry.precedes(id) {
            (Side::Right, entry.clockwise_distance(id))
        } else {
            (Side::Left, NodeId::from_u128(id).clockwise_distance(entry))
        }
    }

    fn side(&self, side: Side) -> &Vec<PeerInfo> {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut Vec<PeerInfo> {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }

    /// Adds `peer` on its side, keeping at most [`MAX_REACH`] nearest there.
    fn insert(&mut self, peer: PeerInfo) {
        if peer.id == self.entry.id {
            return;
        }
        let (side, distance) = self.place(peer.id.as_u128());
        let entry = self.entry.id;
        let members = self.side_mut(side);
        if members.iter().any(|p| p.id == peer.id) {
            return;
        }
        let from = |id: NodeId| match side {
            Side::Right => entry.clockwise_distance(id),
            Side::Left => id.clockwise_distance(entry),
        };
        let at = members.partition_point(|p| from(p.id) < distance);
        members.insert(at, peer);
        members.truncate(MAX_REACH);
    }

    fn remove(&mut self, id: NodeId) {
        self.left.retain(|p| p.id != id);
        self.right.retain(|p| p.id != id);
    }

    fn len(&self) -> usize {
        self.left.len() + self.right.len()
    }

    /// Whether `key` lies between the farthest members of the two sides (both non-empty).
    fn covers(&self, key: Key) -> bool {
        let (Some(far_left), Some(far_right)) = (self.left.last(), self.right.last()) else {
            return false;
        };
        let (side, distance) = self.place(key.as_u128());
        let far = match side {
            Side::Left => far_left.id,
            Side::Right => far_right.id,
        };
        distance <= self.place(far.as_u128()).1
    }

    /// The member (or the entry) closest to `key` ([`Key::is_closer`]'s tie rule).
    fn closest_to(&self, key: Key) -> PeerInfo {
        self.left
            .iter()
            .chain(&self.right)
            .fold(self.entry, |best, p| {
                if key.is_closer(p.id, best.id) {
                    *p
                } else {
                    best
                }
            })
    }
}

/// The hints this node holds.
#[derive(Debug, Default)]
pub(super) struct Hints {
    entries: Vec<Hint>,
    /// Region members probed to extend a hint: `(member, entry)`.
    extending: Vec<(NodeId, NodeId)>,
}

impl Hints {
    /// Whether `entry` has a hint learned at an estimated size of at least `size`.
    fn fresh(&self, entry: NodeId, size: f64) -> bool {
        self.entries
            .iter()
            .any(|h| h.entry.id == entry && h.size * REFRESH_GROWTH >= size)
    }

    /// Forgets the hint of entry `id`, and `id` in every hint naming it (it died or left: the
    /// rest of the hint still lists the entry's nearest live neighbours).
    pub(super) fn forget(&mut self, id: NodeId) {
        self.entries.retain(|h| h.entry.id != id);
        for hint in &mut self.entries {
            hint.near.remove(id);
        }
        self.extending
            .retain(|(member, entry)| *member != id && *entry != id);
    }

    /// Entries whose neighbours are held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.extending.clear();
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
    /// entry of a sparse row, or added to the hint it was probed to extend; in both cases only
    /// if the list's span is plausible. Probes the next stretch of the region where the hint
    /// does not reach its end.
    pub(super) fn learn_hint(&mut self, now: Time, from: PeerInfo, leaf_set: &[PeerInfo]) {
        let extends = self
            .hints
            .extending
            .iter()
            .position(|(member, _)| *member == from.id)
            .map(|i| self.hints.extending.swap_remove(i).1);
        if extends.is_none() && !self.wants_hint(from.id) {
            return;
        }
        let Some(listed) = self.plausible_neighbours(from, leaf_set) else {
            self.stats.hints_refused += 1;
            return;
        };
        let index = match extends {
            Some(entry) => {
                let Some(index) = self.hints.entries.iter().position(|h| h.entry.id == entry)
                else {
                    return;
                };
                let hint = &mut self.hints.entries[index];
                let before = hint.near.len();
                for slot in listed.iter() {
                    hint.near.insert(slot.peer);
                }
                hint.near.insert(from);
                hint.trim();
                if hint.near.len() == before {
                    // Nothing new: this side ends here (a stale or short list).
                    return;
                }
                index
            }
            None => {
                let Some((row, _)) = self.table.position(from.id) else {
                    return;
                };
                let mut hint = Hint {
                    entry: from,
                    prefix: row + 1,
                    near: Run::new(from),
                    learned: now,
                    size: self.estimated_size(),
                };
                for slot in listed.iter() {
                    hint.near.insert(slot.peer);
                }
                hint.trim();
                let hints = &mut self.hints;
                hints.entries.retain(|h| h.entry.id != from.id);
                hints.extending.retain(|(_, entry)| *entry != from.id);
                if hints.entries.len() >= MAX_HINTED {
                    if let Some(oldest) = hints
                        .entries
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, h)| h.learned)
                        .map(|(i, _)| i)
                    {
                        let gone = hints.entries.remove(oldest).entry.id;
                        hints.extending.retain(|(_, entry)| *entry != gone);
                    }
                }
                hints.entries.push(hint);
                self.stats.hints_learned += 1;
                self.hints.entries.len() - 1
            }
        };
        self.extend_hint(now, index);
    }

    /// `from`'s listed neighbours as a leaf set of [`HINT_HALF`] a side, if the list is full on
    /// both sides, surrounds `from`, and spans at most [`MAX_SPAN_RATIO`] times our own leaf set.
    ///
    /// [`MAX_SPAN_RATIO`]: super::route_cache::MAX_SPAN_RATIO
    fn plausible_neighbours(&self, from: PeerInfo, leaf_set: &[PeerInfo]) -> Option<LeafSet> {
        let mut listed = LeafSet::new(from.id, HINT_HALF);
        for peer in leaf_set {
            listed.insert(*peer, None);
        }
        let far = |side: Side| {
            listed
                .side_slots(side)
                .get(HINT_HALF - 1)
                .map(|s| s.peer.id)
        };
        let (lo, hi) = (far(Side::Left)?, far(Side::Right)?);
        let own = match (
            self.leaf_set.side_slots(Side::Left).last(),
            self.leaf_set.side_slots(Side::Right).last(),
        ) {
            (Some(l), Some(r)) => l.peer.id.clockwise_distance(r.peer.id),
            _ => return None,
        };
        // `lo` counter-clockwise of `from`, `hi` clockwise: the span through it.
        let plausible = lo.clockwise_distance(hi)
            <= own.saturating_mul(super::route_cache::MAX_SPAN_RATIO)
            && lo.clockwise_distance(from.id) < lo.clockwise_distance(hi);
        plausible.then_some(listed)
    }

    /// Probes the frontier of hint `index` on each side that does not reach its region's end,
    /// unless one is being probed for it already, within the in-flight bound.
    fn extend_hint(&mut self, now: Time, index: usize) {
        let Some(hint) = self.hints.entries.get(index) else {
            return;
        };
        let entry = hint.entry.id;
        let frontiers: Vec<PeerInfo> = [Side::Left, Side::Right]
            .iter()
            .filter_map(|side| hint.frontier(*side))
            .collect();
        for member in frontiers {
            if member.id == self.me.id
                || self.hints.extending.iter().any(|(m, _)| *m == member.id)
                || self.hint_probes_in_flight() >= MAX_HINT_PROBES
            {
                continue;
            }
            if self.hints.extending.len() >= 2 * MAX_HINT_PROBES {
                // A probe answered while we were not active leaves its pair behind.
                self.hints.extending.remove(0);
            }
            self.hints.extending.push((member.id, entry));
            self.start_probe(now, member, super::liveness::ProbeKind::Hint);
        }
    }

    fn hint_probes_in_flight(&self) -> usize {
        self.probes
            .iter()
            .filter(|p| p.kind == super::liveness::ProbeKind::Hint)
            .count()
    }

    /// Probes `peer` for its leaf set if it wants a hint, within the in-flight bound.
    pub(super) fn probe_for_hint(&mut self, now: Time, peer: PeerInfo) {
        if !self.is_active() || !self.wants_hint(peer.id) {
            return;
        }
        if self.hint_probes_in_flight() >= MAX_HINT_PROBES {
            return;
        }
        self.start_probe(now, peer, super::liveness::ProbeKind::Hint);
    }

    /// Probes the sparse rows' entries: those without a hint or whose hint was learned when the
    /// overlay was [`REFRESH_GROWTH`] times smaller, or all of them (`refresh`), as many as the
    /// in-flight bound allows. Drops the hints of nodes no longer such entries.
    pub(super) fn probe_hints(&mut self, now: Time, refresh: bool) {
        let keep: Vec<NodeId> = self
            .hints
            .entries
            .iter()
            .map(|h| h.entry.id)
            .filter(|id| self.wants_hint(*id))
            .collect();
        self.hints.entries.retain(|h| keep.contains(&h.entry.id));
        let size = self.estimated_size();
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
