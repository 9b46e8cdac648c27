//! Neighbour hints: for the slots of this node's sparse routing-table rows, the nearest ring
//! neighbours of nodes in the slot, so that a route can skip its final hops on a first route to
//! a key.
//!
//! A route's last two hops (a deep, sparse row with one or a few dozen candidates per slot, then
//! the leaf-set hop) each land at a random point. Every key of a slot shares the slot's prefix,
//! and in a sparse row few nodes do: a few leaf sets list them all. Knowing them, we send
//! straight to the one closest to the key, which is then the key's root by those leaf sets.
//!
//! Learned from the leaf set a node puts in its [`Message::ProbeReply`]: a node probes each
//! entry of its sparse rows when the entry enters the table (or when the node becomes active)
//! and again each maintenance round. Where the entry's leaf set does not reach the slot's end
//! on a side, the farthest member known on that side is probed in turn (an *extension*), until
//! the slot is covered or holds [`MAX_PER_SLOT`] hints; so the extra traffic is a few probes
//! per slot per `maintenance_period` plus one per table change. A reply's list passed the shape
//! check of every leaf set ([`super::validate`]); a hint is kept only if its span is plausible
//! (see [`Pastry::learn_hint`]).
//!
//! Correctness never depends on a hint: the receiver routes the message like any other (its own
//! leaf set decides whether it is the root), so a stale or false hint costs at most a detour.
//!
//! Bounded: [`HINT_HALF`] ids a side for at most [`MAX_HINTED`] hints, [`MAX_PER_SLOT`] per
//! slot, the oldest out first; an entry's hint goes when its node leaves the table, an
//! extension when its row stops being sparse or it is older than half a maintenance period when
//! the slot's entry is asked again, and a node a hint names leaves it when found dead.

use crate::id::{Key, NodeId};

use super::leaf_set::{LeafSet, Side};
use super::state::Pastry;
use super::{PeerInfo, Time};

#[cfg(doc)]
use super::Message;

/// Neighbours kept on each side of a hinted node.
pub(super) const HINT_HALF: usize = 8;
/// Most hints held: sparse rows have 15 slots each, and a slot takes up to [`MAX_PER_SLOT`].
pub(super) const MAX_HINTED: usize = 128;
/// Most hints for one routing-table slot: the entry's and the extensions towards the slot's
/// ends, each reaching [`HINT_HALF`] nodes further, so up to about 57 nodes are covered.
pub(super) const MAX_PER_SLOT: usize = 6;
/// A row is sparse when its slots hold fewer than this many candidates each on average
/// (`N / 16^(row+1)`): a few leaf sets then list every node of a slot.
pub(super) const SPARSE_CANDIDATES: f64 = 48.0;
/// Growth of the estimated size after which a hint is refreshed.
pub(super) const REFRESH_GROWTH: f64 = 1.2;
/// Hint probes in flight at once.
pub(super) const MAX_HINT_PROBES: usize = 32;

/// A routing-table slot: row and column.
type SlotIx = (usize, usize);

/// The routing-table slot of node `me` that `id` qualifies for: (shared prefix, next digit);
/// `None` for `me` itself.
fn slot_of(me: NodeId, id: NodeId) -> Option<SlotIx> {
    let row = me.shared_prefix_len(id);
    (row < crate::id::DIGITS).then(|| (row, usize::from(id.digit(row))))
}

/// One node's nearest neighbours, as its last probe reply listed them.
#[derive(Debug, Clone)]
struct Hint {
    /// The node whose leaf set this is: the slot's entry, or a node of the slot another hint
    /// named (an extension).
    anchor: PeerInfo,
    /// The slot whose keys it routes.
    slot: SlotIx,
    near: LeafSet,
    learned: Time,
    /// The overlay's estimated size when it was learned: once the overlay has grown by
    /// [`REFRESH_GROWTH`], newcomers likely sit among the neighbours, so it is asked again.
    size: f64,
}

impl Hint {
    /// The member closest to `key` (the anchor included), if `key` lies within the range the
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
        if root == self.anchor.id {
            return Some(self.anchor);
        }
        self.near.get(root).map(|s| s.peer)
    }

    /// Whether the two hints' ranges meet: one names the other's anchor.
    fn meets(&self, other: &Self) -> bool {
        self.anchor.id == other.anchor.id
            || self.near.contains(other.anchor.id)
            || other.near.contains(self.anchor.id)
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
    /// Extensions asked and not yet answered: the node, its slot, the side it extends, and
    /// when it was asked.
    extending: Vec<(NodeId, SlotIx, Side, Time)>,
    /// The highest estimated size a scan for entries to ask ran at (0 before the first).
    peak: f64,
    /// An entry that wanted asking was not, the in-flight bound being reached: the next
    /// hint probe to end (or leaf-set change) scans again.
    deferred: bool,
    /// When the last round asked every entry again (a maintenance round, or the settling
    /// round after growth): a hint learned before it is due for asking.
    round: Time,
    /// When to ask every entry again once the overlay has stopped growing: set two probe
    /// periods after each scan that growth started, so the nodes that joined after a hint
    /// was learned are in it before the next maintenance round.
    settle: Option<Time>,
}

impl Hints {
    /// Whether `entry` has a hint learned at an estimated size of at least `size`.
    fn fresh(&self, entry: NodeId, size: f64) -> bool {
        self.entries.iter().any(|h| {
            h.anchor.id == entry && h.size * REFRESH_GROWTH >= size && h.learned >= self.round
        }) || self
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

    /// Forgets the hint of `id`, and `id` in every hint naming it (it died or left: the rest
    /// of the hint still lists the anchor's nearest live neighbours).
    pub(super) fn forget(&mut self, id: NodeId) {
        self.entries.retain(|h| h.anchor.id != id);
        self.asked.retain(|(asked, _)| *asked != id);
        self.extending.retain(|(asked, ..)| *asked != id);
        for hint in &mut self.entries {
            hint.near.remove(id);
        }
    }

    /// `peer` was heard from directly: it goes into every hint whose range it lies in (a node
    /// that joined since the hint was learned is then named where it is the key's root),
    /// where it displaces the farthest member on its side.
    pub(super) fn heard(&mut self, me: NodeId, peer: PeerInfo) {
        // Only the hints of its own slot route keys it may be the root of.
        let Some(slot) = slot_of(me, peer.id) else {
            return;
        };
        for hint in self.entries.iter_mut().filter(|h| h.slot == slot) {
            if hint.anchor.id != peer.id && hint.near.covers(Key::from(peer.id)) {
                hint.near.insert(peer, None);
            }
        }
    }

    /// `id` answered a probe: an extension asked of it is settled (learned or not).
    pub(super) fn answered(&mut self, id: NodeId) {
        self.extending.retain(|(asked, ..)| *asked != id);
    }

    /// Hints held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.asked.clear();
        self.extending.clear();
        self.peak = 0.0;
        self.deferred = false;
        self.settle = None;
    }

    fn of_slot(&self, slot: SlotIx) -> impl Iterator<Item = &Hint> + '_ {
        self.entries.iter().filter(move |h| h.slot == slot)
    }
}

impl Pastry {
    /// Whether routing-table row `row` is sparse at the overlay's estimated size, and so gets
    /// hints (never with [`Config::neighbour_hints`](super::Config::neighbour_hints) off).
    pub(super) fn row_is_sparse(&self, row: usize) -> bool {
        self.config.neighbour_hints
            && self.estimated_size() / 16f64.powi(row as i32 + 1) < SPARSE_CANDIDATES
    }

    /// Whether `id` lies in routing-table slot `slot` (shares its row's prefix with us and has
    /// its column as the next digit).
    fn in_slot(&self, id: NodeId, slot: SlotIx) -> bool {
        slot_of(self.me.id, id) == Some(slot)
    }

    /// The slot `id`'s neighbours are wanted for: its own if it is an entry of a sparse row,
    /// or the one it was asked to extend; never for a member of our leaf set (whose keys the
    /// leaf set already routes).
    fn wants_hint(&self, id: NodeId) -> Option<SlotIx> {
        if self.leaf_set.contains(id) {
            return None;
        }
        let slot = match self.table.position(id) {
            Some(slot) => slot,
            None => self
                .hints
                .extending
                .iter()
                .find(|(asked, ..)| *asked == id)
                .map(|(_, slot, ..)| *slot)?,
        };
        self.row_is_sparse(slot.0).then_some(slot)
    }

    /// The hinted node closest to `key` in slot `slot`'s hints, if one covers the key and that
    /// node is usable (`usable`) and not this node.
    pub(super) fn hinted(
        &self,
        key: Key,
        slot: SlotIx,
        usable: impl Fn(NodeId) -> bool,
    ) -> Option<PeerInfo> {
        let root = self
            .hints
            .of_slot(slot)
            .filter_map(|h| h.root_of(key))
            .reduce(|a, b| if key.is_closer(b.id, a.id) { b } else { a })?;
        (root.id != self.me.id && usable(root.id)).then_some(root)
    }

    /// A probe reply from `from` listing its leaf set: kept as a hint of the slot it was wanted
    /// for if the list's span is plausible; then the slot's hints are extended towards its ends.
    pub(super) fn learn_hint(&mut self, now: Time, from: PeerInfo, leaf_set: &[PeerInfo]) {
        let Some(slot) = self.wants_hint(from.id) else {
            return;
        };
        let from_entry = self.table.position(from.id).is_some();
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
        // `lo` counter-clockwise of the anchor, `hi` clockwise: the span through the anchor.
        if lo.clockwise_distance(hi) > own.saturating_mul(super::route_cache::MAX_SPAN_RATIO)
            || lo.clockwise_distance(from.id) >= lo.clockwise_distance(hi)
        {
            self.stats.hints_refused += 1;
            return;
        }
        let hint = Hint {
            anchor: from,
            slot,
            near,
            learned: now,
            size: self.estimated_size(),
        };
        let hints = &mut self.hints.entries;
        hints.retain(|h| h.anchor.id != from.id);
        if from_entry {
            // The slot's entry, asked again or new: a hint of the slot that no longer meets
            // its range, was learned before this round (so each round asks the slot's ends
            // again) or when the overlay was [`REFRESH_GROWTH`] times smaller (newcomers
            // likely sit among its neighbours) goes.
            let round = self.hints.round;
            let size = hint.size;
            let mut joined: Vec<Hint> = Vec::new();
            let mut rest: Vec<Hint> = Vec::new();
            for h in hints.drain(..) {
                if h.slot != slot {
                    rest.push(h);
                } else if h.learned >= round && h.size * REFRESH_GROWTH >= size {
                    joined.push(h);
                }
            }
            // Those reachable from the new hint, one meeting at a time (it is `kept[0]`).
            let mut kept = vec![hint.clone()];
            while let Some(i) = joined.iter().position(|h| kept.iter().any(|k| k.meets(h))) {
                kept.push(joined.remove(i));
            }
            rest.extend(kept.into_iter().skip(1));
            *hints = rest;
        }
        let evict = |hints: &mut Vec<Hint>, same_slot: bool| {
            if let Some(oldest) = hints
                .iter()
                .enumerate()
                .filter(|(_, h)| !same_slot || h.slot == slot)
                .min_by_key(|(_, h)| h.learned)
                .map(|(i, _)| i)
            {
                hints.remove(oldest);
            }
        };
        if hints.iter().filter(|h| h.slot == slot).count() >= MAX_PER_SLOT {
            evict(hints, true);
        }
        if hints.len() >= MAX_HINTED {
            evict(hints, false);
        }
        hints.push(hint);
        self.hints.answered(from.id);
        self.stats.hints_learned += 1;
        self.extend_hints(now, slot);
    }

    /// Asks for the neighbours of the farthest node known on each side of slot `slot` where no
    /// hint of the slot reaches past the slot's end yet, within the slot's and the in-flight
    /// bounds.
    fn extend_hints(&mut self, now: Time, slot: SlotIx) {
        // An extension whose probe ended unseen (replaced by another kind of probe) no longer
        // holds its side back.
        let wait = self.config.probe_timeout * 2;
        self.hints.extending.retain(|(.., at)| now - *at < wait);
        let size = self.estimated_size();
        for side in [Side::Left, Side::Right] {
            let held = self.hints.of_slot(slot).count()
                + self
                    .hints
                    .extending
                    .iter()
                    .filter(|(_, s, ..)| *s == slot)
                    .count();
            if held >= MAX_PER_SLOT
                || self
                    .hints
                    .extending
                    .iter()
                    .any(|(_, s, d, _)| *s == slot && *d == side)
            {
                continue;
            }
            let beyond = |a: NodeId, b: NodeId| match side {
                Side::Left => a < b,
                Side::Right => a > b,
            };
            let mut farthest: Option<PeerInfo> = None;
            let mut reached = false;
            for hint in self.hints.of_slot(slot) {
                let members = hint.near.side_slots(side);
                reached |= members.iter().any(|s| !self.in_slot(s.peer.id, slot));
                for peer in std::iter::once(hint.anchor).chain(members.iter().map(|s| s.peer)) {
                    if self.in_slot(peer.id, slot)
                        && farthest.map_or(true, |f| beyond(peer.id, f.id))
                    {
                        farthest = Some(peer);
                    }
                }
            }
            let Some(next) = farthest.filter(|_| !reached) else {
                continue;
            };
            // Asked once per size step or round: a node whose reply gave no hint (refused, or
            // it entered the table in between) is not asked again on every later reply.
            if next.id == self.me.id
                || self.leaf_set.contains(next.id)
                || self.hints.entries.iter().any(|h| h.anchor.id == next.id)
                || self.hints.fresh(next.id, size)
                || self.is_suspect(next.id)
            {
                continue;
            }
            if self.hint_probes_in_flight() >= MAX_HINT_PROBES {
                self.hints.deferred = true;
                return;
            }
            self.hints.note_asked(next.id, size);
            self.hints.extending.push((next.id, slot, side, now));
            self.start_probe(now, next, super::liveness::ProbeKind::Hint);
        }
    }

    /// A heartbeat tick: once the overlay has settled after growing, every entry is asked
    /// again (see [`Hints::settle`]).
    pub(super) fn settle_hints(&mut self, now: Time) {
        if self.hints.settle.is_some_and(|at| now >= at) {
            self.hints.settle = None;
            self.probe_hints(now, true);
        }
    }

    /// A hint probe ended: if a scan was cut short by the in-flight bound, it goes on.
    pub(super) fn continue_hints(&mut self, now: Time) {
        if self.hints.deferred && self.is_active() {
            self.probe_hints(now, false);
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
        if !self.is_active() || self.wants_hint(peer.id).is_none() {
            return;
        }
        if self.hint_probes_in_flight() >= MAX_HINT_PROBES {
            self.hints.deferred = true;
            return;
        }
        let size = self.estimated_size();
        self.hints.note_asked(peer.id, size);
        self.start_probe(now, peer, super::liveness::ProbeKind::Hint);
    }

    /// Probes the sparse rows' entries: those without a hint or whose hint was learned when the
    /// overlay was [`REFRESH_GROWTH`] times smaller, or all of them (`refresh`), as many as the
    /// in-flight bound allows, and extends the slots whose hints do not reach their ends. Drops
    /// the hints of nodes no longer such entries, and the extensions of rows no longer sparse.
    ///
    /// Without `refresh` (a leaf-set change) the scan runs only when the estimated size is the
    /// highest seen yet, or an earlier scan or new entry hit the in-flight bound. While the
    /// overlay grows that is nearly every change; after a failure, whose leaf-set changes move
    /// the estimate up and down by a member's gap each, it is rarely any: the hints near their
    /// refresh point would otherwise all be asked again by that jitter, a burst of probes the
    /// failure did not call for (the table entries that replace the dead are asked as they
    /// enter).
    pub(super) fn probe_hints(&mut self, now: Time, refresh: bool) {
        let size = self.estimated_size();
        // An entry's stale hint stays until its entry answers again; any other goes at once
        // (the scan below asks for it again from the slot's ends).
        let keep: Vec<NodeId> = self
            .hints
            .entries
            .iter()
            .filter(|h| {
                self.row_is_sparse(h.slot.0)
                    && !self.leaf_set.contains(h.anchor.id)
                    && (h.size * REFRESH_GROWTH >= size
                        || self.table.position(h.anchor.id) == Some(h.slot))
            })
            .map(|h| h.anchor.id)
            .collect();
        self.hints.entries.retain(|h| keep.contains(&h.anchor.id));
        if refresh {
            self.hints.asked.clear();
            self.hints.round = now;
        }
        if !(refresh || size > self.hints.peak || self.hints.deferred) {
            return;
        }
        if !refresh && size > self.hints.peak {
            self.hints.settle = Some(now + self.config.probe_period * 2);
        }
        let resumed = self.hints.deferred;
        self.hints.peak = self.hints.peak.max(size);
        self.hints.deferred = false;
        let wanted: Vec<PeerInfo> = self
            .table
            .iter()
            .map(|s| s.peer)
            .filter(|p| self.wants_hint(p.id).is_some() && !self.hints.fresh(p.id, size))
            .collect();
        for peer in wanted {
            self.probe_for_hint(now, peer);
        }
        // Extensions start as hints are learned; those the in-flight bound held back go on here.
        if resumed && !refresh {
            let mut slots: Vec<SlotIx> = self.hints.entries.iter().map(|h| h.slot).collect();
            slots.sort_unstable();
            slots.dedup();
            for slot in slots {
                self.extend_hints(now, slot);
            }
        }
    }
}
