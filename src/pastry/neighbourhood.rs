//! The neighbourhood set: the M peers nearest to this node by proximity.

use std::time::Duration;

use crate::id::NodeId;

use super::{PeerInfo, Slot, Time};

/// The `M` measured peers nearest to this node by round-trip time, nearest first.
///
/// Only measured peers enter. Inserting never drops an entry nearer than the one inserted:
/// when full, a newcomer displaces the farthest entry only if it is strictly nearer.
#[derive(Debug, Clone)]
pub struct NeighbourhoodSet {
    capacity: usize,
    slots: Vec<Slot>,
}

impl NeighbourhoodSet {
    /// An empty set holding at most `capacity` peers.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            slots: Vec::new(),
        }
    }

    /// Offers a measured peer; returns whether the set changed membership.
    pub fn insert(&mut self, peer: PeerInfo, rtt: Duration) -> bool {
        let mut new = Slot::new(peer, Some(rtt));
        let existed = match self.slots.iter().position(|s| s.peer.id == peer.id) {
            Some(index) => {
                new = self.slots.remove(index).refreshed(new);
                true
            }
            None => false,
        };
        if !existed && self.slots.len() >= self.capacity {
            match self.slots.last() {
                Some(worst) if worst.rtt() > Some(rtt) => {
                    self.slots.pop();
                }
                _ => return false,
            }
        }
        let at = self.slots.partition_point(|s| s.rtt() <= Some(rtt));
        self.slots.insert(at, new);
        !existed
    }

    /// Removes `id`; returns whether it was present.
    pub fn remove(&mut self, id: NodeId) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.peer.id != id);
        self.slots.len() != before
    }

    /// Records that a message from `id` arrived at `now`, if it is in the set.
    pub(crate) fn mark_heard(&mut self, id: NodeId, now: Time) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.peer.id == id) {
            slot.mark_heard(now);
        }
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: NodeId) -> bool {
        self.slots.iter().any(|s| s.peer.id == id)
    }

    /// The entries, nearest first.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.slots.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
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

    #[test]
    fn keeps_the_nearest_and_never_drops_a_nearer_entry() {
        // Go Wendy regression: inserting into a full set dropped an entry nearer than the new one.
        let ms = Duration::from_millis;
        let mut set = NeighbourhoodSet::new(3);
        assert!(set.insert(peer(1), ms(30)));
        assert!(set.insert(peer(2), ms(10)));
        assert!(set.insert(peer(3), ms(20)));
        // Farther than everything: rejected, nothing dropped.
        assert!(!set.insert(peer(4), ms(40)));
        assert_eq!(set.len(), 3);
        // Nearer than the worst: only the worst (30 ms) goes.
        assert!(set.insert(peer(5), ms(15)));
        let ids: Vec<u128> = set.iter().map(|s| s.id().as_u128()).collect();
        assert_eq!(ids, vec![2, 5, 3]);
        // Re-measuring a member re-sorts it without changing membership.
        assert!(!set.insert(peer(3), ms(5)));
        let ids: Vec<u128> = set.iter().map(|s| s.id().as_u128()).collect();
        assert_eq!(ids, vec![3, 2, 5]);
        assert!(set.remove(NodeId::from_u128(2)));
        assert!(!set.contains(NodeId::from_u128(2)));
        assert!(!set.remove(NodeId::from_u128(2)));
    }
}
