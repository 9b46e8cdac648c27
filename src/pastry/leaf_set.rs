//! The leaf set: the L/2 numerically nearest node ids on each side of this node's id.

use std::time::Duration;

use crate::id::{Key, NodeId};

use super::{PeerInfo, Slot, Time};

/// The leaf set a node with id `me` should hold among `population` (which may include `me`):
/// the `half` nearest ids walking clockwise and the `half` nearest walking counter-clockwise,
/// sorted and without duplicates. The oracle tests and the demo compare real leaf sets with.
pub fn ideal_leaf_set(
    me: NodeId,
    population: impl IntoIterator<Item = NodeId>,
    half: usize,
) -> Vec<NodeId> {
    let mut others: Vec<NodeId> = population.into_iter().filter(|&id| id != me).collect();
    others.sort_by_key(|&id| me.clockwise_distance(id));
    let mut set: Vec<NodeId> = others.iter().take(half).copied().collect();
    others.sort_by_key(|&id| id.clockwise_distance(me));
    set.extend(others.iter().take(half));
    set.sort();
    set.dedup();
    set
}

/// One side of the leaf set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Counter-clockwise: ids just below this node's id (wrapping below zero).
    Left,
    /// Clockwise: ids just above this node's id (wrapping above the maximum).
    Right,
}

impl Side {
    /// The other side.
    pub fn opposite(self) -> Self {
        match self {
            Self::Left => Self::Right,
            Self::Right => Self::Left,
        }
    }
}

/// The leaf set: the `L/2` nearest known nodes walking counter-clockwise ([`Side::Left`]) and
/// the `L/2` nearest walking clockwise ([`Side::Right`]), each side sorted nearest first.
///
/// Distances follow the ring, so the sets are correct across the zero point. In an overlay of
/// at most `L/2 + 1` nodes both sides hold everyone; a node may then sit on both sides.
///
/// ```
/// use wendy::id::{Key, NodeId};
/// use wendy::pastry::{LeafSet, PeerInfo};
/// let peer = |n: u128| PeerInfo { id: NodeId::from_u128(n), addr: "127.0.0.1:1".parse().unwrap() };
/// let mut leaves = LeafSet::new(NodeId::from_u128(0), 2);
/// for n in [1, 2, 3, u128::MAX, u128::MAX - 1, u128::MAX - 2] {
///     leaves.insert(peer(n), None);
/// }
/// // Two each side, across zero.
/// assert!(leaves.covers(Key::from_u128(u128::MAX - 1)));
/// assert!(!leaves.covers(Key::from_u128(3)));
/// assert_eq!(leaves.closest_to(Key::from_u128(u128::MAX)), NodeId::from_u128(u128::MAX));
/// ```
#[derive(Debug, Clone)]
pub struct LeafSet {
    me: NodeId,
    half: usize,
    left: Vec<Slot>,
    right: Vec<Slot>,
    /// Set once both sides were full, apart, and each within its half of the ring: the overlay
    /// is clearly larger than the leaf set.
    /// From then on a side admits only ids on its own half of the ring, so that a hole left by
    /// a failure is never "filled" with a node from the far side (which would make the sides
    /// meet and the node believe it covers the whole ring).
    big: bool,
}

impl LeafSet {
    /// An empty leaf set for node `me` holding up to `half` nodes on each side (`L/2`).
    pub fn new(me: NodeId, half: usize) -> Self {
        Self {
            me,
            half: half.max(1),
            left: Vec::new(),
            right: Vec::new(),
            big: false,
        }
    }

    /// An empty leaf set for another node `id` of the same overlay: same size, and if this one
    /// knows the overlay is larger than a leaf set, so does the new one (so a neighbour's leaf
    /// set with a hole is not read as spanning the ring).
    pub(crate) fn empty_for(&self, id: NodeId) -> Self {
        Self {
            big: self.big,
            ..Self::new(id, self.half)
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Capacity of each side (`L/2`).
    pub fn half(&self) -> usize {
        self.half
    }

    /// Distance from this node to `id` walking in the direction of `side`.
    fn distance(&self, side: Side, id: impl Into<u128>) -> u128 {
        let id = id.into();
        match side {
            Side::Right => self.me.clockwise_distance(id),
            Side::Left => NodeId::from_u128(id).clockwise_distance(self.me),
        }
    }

    fn side(&self, side: Side) -> &Vec<Slot> {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut Vec<Slot> {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }

    /// The entries of one side, nearest first.
    pub fn side_slots(&self, side: Side) -> &[Slot] {
        self.side(side)
    }

    /// Whether `id` would enter `side` if inserted now.
    fn fits(&self, side: Side, id: NodeId) -> bool {
        let slots = self.side(side);
        if slots.iter().any(|s| s.peer.id == id)
            || (self.big && !self.in_half(side, id) && !self.plausible_past_half(side, id))
        {
            return false;
        }
        slots.len() < self.half
            || slots
                .last()
                .is_some_and(|far| self.distance(side, id) < self.distance(side, far.peer.id))
    }

    /// In a small overlay (a few more nodes than L) a side's `L/2` nearest nodes may reach past
    /// half the ring. Such an id is admitted only if it lies outside the other side's range and
    /// within twice the distance the side's current members predict for `L/2` nodes (their
    /// mean gap times `L/2`), so a side short after failures is not filled with a node from
    /// the far side of a large ring (which would make it claim almost the whole ring).
    fn plausible_past_half(&self, side: Side, id: NodeId) -> bool {
        let slots = self.side(side);
        let Some(far) = slots.last() else {
            return false;
        };
        if slots.len() * 2 < self.half {
            return false;
        }
        let other = match side {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        };
        let distance = self.distance(side, id);
        if let Some(other_far) = self.side(other).last() {
            if distance >= self.distance(side, other_far.peer.id) {
                return false;
            }
        }
        let predicted = (self.distance(side, far.peer.id) / slots.len() as u128)
            .saturating_mul(self.half as u128);
        distance / 2 <= predicted
    }

    /// Whether `id` lies on `side`'s half of the ring.
    fn in_half(&self, side: Side, id: NodeId) -> bool {
        match side {
            Side::Right => self.me.precedes(id),
            Side::Left => id.precedes(self.me),
        }
    }

    /// Marks the overlay as larger than the leaf set once both sides are full and apart.
    fn update_big(&mut self) {
        let within_half = |side: Side| {
            self.side(side)
                .last()
                .is_some_and(|far| self.in_half(side, far.peer.id))
        };
        if !self.big
            && self.left.len() == self.half
            && self.right.len() == self.half
            && !self.sides_meet()
            && within_half(Side::Left)
            && within_half(Side::Right)
        {
            self.big = true;
            let me = self.me;
            self.left.retain(|s| s.peer.id.precedes(me));
            self.right.retain(|s| me.precedes(s.peer.id));
        }
    }

    /// Whether inserting `id` would change the membership of either side.
    pub fn would_accept(&self, id: NodeId) -> bool {
        id != self.me && (self.fits(Side::Left, id) || self.fits(Side::Right, id))
    }

    /// Inserts `peer` on each side where it is among the `L/2` nearest; returns whether the
    /// membership changed. A peer already present has its proximity refreshed.
    pub fn insert(&mut self, peer: PeerInfo, rtt: Option<Duration>) -> bool {
        if peer.id == self.me {
            return false;
        }
        let mut changed = false;
        for side in [Side::Left, Side::Right] {
            if let Some(slot) = self
                .side_mut(side)
                .iter_mut()
                .find(|s| s.peer.id == peer.id)
            {
                if rtt.is_some() {
                    *slot = slot.refreshed(Slot::new(peer, rtt));
                }
                continue;
            }
            if !self.fits(side, peer.id) {
                continue;
            }
            let distance = self.distance(side, peer.id);
            let me = self.me;
            let half = self.half;
            let slots = self.side_mut(side);
            let at = slots.partition_point(|s| side_distance(me, side, s.peer.id) < distance);
            slots.insert(at, Slot::new(peer, rtt));
            slots.truncate(half);
            changed = true;
        }
        if changed {
            self.update_big();
        }
        changed
    }

    /// Removes `id` from both sides; returns whether it was present. A side that shrinks is
    /// refilled from the other side's members when they qualify (small overlays).
    pub fn remove(&mut self, id: NodeId) -> bool {
        let before = self.left.len() + self.right.len();
        self.left.retain(|s| s.peer.id != id);
        self.right.retain(|s| s.peer.id != id);
        let removed = self.left.len() + self.right.len() != before;
        if removed {
            for slot in self.left.clone().into_iter().chain(self.right.clone()) {
                self.insert(slot.peer, slot.rtt());
            }
        }
        removed
    }

    /// Records that a message from member `id` arrived at `now`.
    pub(crate) fn mark_heard(&mut self, id: NodeId, now: Time) {
        for slot in self.left.iter_mut().chain(self.right.iter_mut()) {
            if slot.peer.id == id {
                slot.mark_heard(now);
            }
        }
    }

    /// Whether `id` is a member (either side).
    pub fn contains(&self, id: NodeId) -> bool {
        self.left
            .iter()
            .chain(self.right.iter())
            .any(|s| s.peer.id == id)
    }

    /// Where `id` sits: its side and its rank on that side (0 = immediate neighbour). A member
    /// on both sides (small overlays) reports its nearer side.
    pub fn position(&self, id: NodeId) -> Option<(Side, usize)> {
        let rank = |side: Side| self.side(side).iter().position(|s| s.peer.id == id);
        match (rank(Side::Left), rank(Side::Right)) {
            (Some(l), Some(r)) if r < l => Some((Side::Right, r)),
            (Some(l), _) => Some((Side::Left, l)),
            (None, Some(r)) => Some((Side::Right, r)),
            (None, None) => None,
        }
    }

    /// The member `id`, if present.
    pub fn get(&self, id: NodeId) -> Option<&Slot> {
        self.left
            .iter()
            .chain(self.right.iter())
            .find(|s| s.peer.id == id)
    }

    /// The distinct members (a member on both sides appears once).
    pub fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.left.iter().chain(
            self.right
                .iter()
                .filter(|r| !self.left.iter().any(|l| l.peer.id == r.peer.id)),
        )
    }

    /// The distinct members' peer infos.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.iter().map(|s| s.peer).collect()
    }

    /// Number of distinct members.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the leaf set is empty (this node knows no other).
    pub fn is_empty(&self) -> bool {
        self.left.is_empty() && self.right.is_empty()
    }

    /// The nearest member on `side` (this node's immediate neighbour).
    pub fn neighbour(&self, side: Side) -> Option<&Slot> {
        self.side(side).first()
    }

    /// Whether `id` would become an immediate neighbour (the nearest member on a side, or the
    /// first member of an empty side).
    pub fn would_be_neighbour(&self, id: NodeId) -> bool {
        id != self.me
            && [Side::Left, Side::Right].into_iter().any(|side| {
                self.neighbour(side).map_or(true, |n| {
                    self.distance(side, id) < self.distance(side, n.peer.id)
                })
            })
    }

    /// The farthest member on `side`: the node asked for its leaf set when this side needs
    /// repair (its leaf set reaches further out than ours).
    pub fn furthest(&self, side: Side) -> Option<&Slot> {
        self.side(side).last()
    }

    /// Whether the overlay was seen to be larger than the leaf set (see the `big` field): a
    /// side short of `L/2` members then has a hole, it does not mean the overlay is that small.
    pub fn overlay_exceeds(&self) -> bool {
        self.big
    }

    /// Whether `side` holds fewer than `L/2` nodes although the overlay is larger than the
    /// leaf set: a hole to repair from the farthest member's leaf set.
    pub fn needs_repair(&self, side: Side) -> bool {
        self.big && self.side(side).len() < self.half
    }

    /// Whether the leaf set spans the whole ring (an overlay of at most L + 1 nodes): the
    /// sides meet. Never once the overlay was seen to be larger than the leaf set.
    fn wraps(&self) -> bool {
        !self.big && self.sides_meet()
    }

    /// Whether the farthest left member lies within the right side's range.
    fn sides_meet(&self) -> bool {
        match (self.left.last(), self.right.last()) {
            (Some(far_left), Some(far_right)) => {
                self.distance(Side::Right, far_left.peer.id)
                    <= self.distance(Side::Right, far_right.peer.id)
            }
            _ => false,
        }
    }

    /// Whether `key` lies within the leaf set's range: between the farthest left member and
    /// the farthest right member, walking through this node. A node alone covers everything,
    /// and so does a leaf set whose sides meet around the ring.
    pub fn covers(&self, key: Key) -> bool {
        if self.is_empty() || self.wraps() {
            return true;
        }
        let within = |side: Side| {
            self.side(side)
                .last()
                .is_some_and(|far| self.distance(side, key) <= self.distance(side, far.peer.id))
        };
        key.to_node_id() == self.me || within(Side::Left) || within(Side::Right)
    }

    /// The id numerically closest to `key` among the members and this node (tie rule:
    /// [`Key::cmp_closeness`]).
    pub fn closest_to(&self, key: Key) -> NodeId {
        self.left
            .iter()
            .chain(self.right.iter())
            .map(|s| s.peer.id)
            .fold(
                self.me,
                |best, id| {
                    if key.is_closer(id, best) {
                        id
                    } else {
                        best
                    }
                },
            )
    }
}

fn side_distance(me: NodeId, side: Side, id: NodeId) -> u128 {
    match side {
        Side::Right => me.clockwise_distance(id),
        Side::Left => id.clockwise_distance(me),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u128) -> PeerInfo {
        PeerInfo {
            id: NodeId::from_u128(n),
            addr: "10.0.0.1:4000".parse().unwrap(),
        }
    }

    fn ids(slots: &[Slot]) -> Vec<u128> {
        slots.iter().map(|s| s.id().as_u128()).collect()
    }

    #[test]
    fn sides_are_sorted_nearest_first_and_bounded() {
        let mut leaves = LeafSet::new(NodeId::from_u128(1000), 2);
        for n in [1003, 990, 1001, 995, 1010, 999, 500] {
            leaves.insert(peer(n), None);
        }
        assert_eq!(ids(leaves.side_slots(Side::Right)), vec![1001, 1003]);
        assert_eq!(ids(leaves.side_slots(Side::Left)), vec![999, 995]);
        assert!(!leaves.would_accept(NodeId::from_u128(1010)));
        assert!(leaves.would_accept(NodeId::from_u128(1002)));
        assert_eq!(leaves.len(), 4);
    }

    #[test]
    fn lower_side_range_is_not_inverted() {
        // Go Wendy regression: the range check on the lower (left) side was inverted, so keys
        // just below the node were treated as outside and keys far below as inside.
        let mut leaves = LeafSet::new(NodeId::from_u128(1000), 2);
        for n in [990, 995, 1005, 1010] {
            leaves.insert(peer(n), None);
        }
        assert!(leaves.covers(Key::from_u128(992)));
        assert!(leaves.covers(Key::from_u128(990)));
        assert!(!leaves.covers(Key::from_u128(989)));
        assert!(!leaves.covers(Key::from_u128(10)));
        assert!(leaves.covers(Key::from_u128(1010)));
        assert!(!leaves.covers(Key::from_u128(1011)));
        assert_eq!(
            leaves.closest_to(Key::from_u128(993)),
            NodeId::from_u128(995)
        );
        assert_eq!(
            leaves.closest_to(Key::from_u128(999)),
            NodeId::from_u128(1000)
        );
    }

    #[test]
    fn correct_across_zero() {
        let top = u128::MAX;
        let mut leaves = LeafSet::new(NodeId::from_u128(2), 2);
        for n in [top, top - 10, 5, 9, top - 20, 100] {
            leaves.insert(peer(n), None);
        }
        assert_eq!(ids(leaves.side_slots(Side::Left)), vec![top, top - 10]);
        assert_eq!(ids(leaves.side_slots(Side::Right)), vec![5, 9]);
        assert!(leaves.covers(Key::from_u128(top - 5)));
        assert!(leaves.covers(Key::from_u128(0)));
        assert!(!leaves.covers(Key::from_u128(top - 11)));
        assert!(!leaves.covers(Key::from_u128(10)));
        // Key 1 is 1 from this node and 2 from `top` (across zero): this node wins.
        assert_eq!(leaves.closest_to(Key::from_u128(1)), NodeId::from_u128(2));
        assert_eq!(leaves.closest_to(Key::from_u128(0)), NodeId::from_u128(top));
        // Key 7 is 2 from both 5 and 9: the tie goes clockwise, to 9.
        assert_eq!(leaves.closest_to(Key::from_u128(7)), NodeId::from_u128(9));
    }

    #[test]
    fn small_ring_covers_everything_and_refills_sides() {
        let mut leaves = LeafSet::new(NodeId::from_u128(100), 2);
        for n in [200, 300, 400] {
            leaves.insert(peer(n), None);
        }
        // 4 nodes with 2 per side: both sides meet, every key is covered.
        assert!(leaves.covers(Key::from_u128(350)));
        assert!(!leaves.needs_repair(Side::Left));
        assert_eq!(ids(leaves.side_slots(Side::Right)), vec![200, 300]);
        assert_eq!(ids(leaves.side_slots(Side::Left)), vec![400, 300]);
        assert!(leaves.remove(NodeId::from_u128(300)));
        assert_eq!(ids(leaves.side_slots(Side::Right)), vec![200, 400]);
        assert_eq!(ids(leaves.side_slots(Side::Left)), vec![400, 200]);
        assert_eq!(leaves.len(), 2);
    }

    #[test]
    fn hole_after_removal_asks_for_repair() {
        let mut leaves = LeafSet::new(NodeId::from_u128(1000), 2);
        for n in [990, 995, 1005, 1010] {
            leaves.insert(peer(n), None);
        }
        assert!(!leaves.needs_repair(Side::Right));
        leaves.remove(NodeId::from_u128(1010));
        assert!(leaves.needs_repair(Side::Right));
        assert!(!leaves.needs_repair(Side::Left));
        // The hole is not filled with a node from the far (left) side.
        assert_eq!(ids(leaves.side_slots(Side::Right)), vec![1005]);
        assert!(!leaves.would_accept(NodeId::from_u128(500)));
        assert!(leaves.would_accept(NodeId::from_u128(1_000_000)));
        assert_eq!(leaves.furthest(Side::Right).unwrap().id().as_u128(), 1005);
        // The range shrank with the hole; keys beyond the last live member are not covered.
        assert!(!leaves.covers(Key::from_u128(1008)));
    }
}
