//! The oracle: global knowledge of which nodes are live and active, against which deliveries
//! and leaf sets are checked.
//!
//! It knows ids only (no protocol state): the network adds a node when the node becomes active
//! and removes it when it fails or leaves.

use std::collections::BTreeSet;

use crate::id::{Key, NodeId};

/// The ids of the live active nodes, sorted round the ring.
#[derive(Debug, Default)]
pub(crate) struct Oracle {
    ids: BTreeSet<u128>,
}

impl Oracle {
    /// Counts `id` as live and active.
    pub(crate) fn insert(&mut self, id: NodeId) {
        self.ids.insert(id.as_u128());
    }

    /// Stops counting `id`.
    pub(crate) fn remove(&mut self, id: NodeId) {
        self.ids.remove(&id.as_u128());
    }

    /// The live active ids in ascending order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u128> + '_ {
        self.ids.iter().copied()
    }

    /// The root of `key`: the live active node closest to it (the id module's tie rule).
    pub(crate) fn root(&self, key: Key) -> Option<NodeId> {
        let k = key.as_u128();
        let successor = self
            .ids
            .range(k..)
            .next()
            .or_else(|| self.ids.iter().next());
        let predecessor = self
            .ids
            .range(..k)
            .next_back()
            .or_else(|| self.ids.iter().next_back());
        key.closest(
            [successor, predecessor]
                .into_iter()
                .flatten()
                .map(|&id| NodeId::from_u128(id)),
        )
    }

    /// The ideal leaf set of `me`: the `half` nearest live active ids on each side of it round
    /// the ring (`me` excluded), ascending and without repeats (in a small overlay both sides
    /// hold the same ids).
    pub(crate) fn leaf_set(&self, me: NodeId, half: usize) -> Vec<u128> {
        let me = me.as_u128();
        let clockwise = self.ids.range(me + 1..).chain(self.ids.range(..me));
        let counter_clockwise = self
            .ids
            .range(..me)
            .rev()
            .chain(self.ids.range(me + 1..).rev());
        let mut set: Vec<u128> = clockwise
            .take(half)
            .chain(counter_clockwise.take(half))
            .copied()
            .collect();
        set.sort_unstable();
        set.dedup();
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pastry::ideal_leaf_set;

    #[test]
    fn root_and_leaf_sets_match_a_scan_of_every_id() {
        let ids: Vec<u128> = (0..40u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        let mut oracle = Oracle::default();
        for &id in &ids {
            oracle.insert(NodeId::from_u128(id));
        }
        oracle.remove(NodeId::from_u128(ids[3]));
        let live: Vec<NodeId> = ids
            .iter()
            .filter(|&&id| id != ids[3])
            .map(|&id| NodeId::from_u128(id))
            .collect();
        for k in 0..200u128 {
            let key = Key::from_u128(k.wrapping_mul(0x2545_f491_4f6c_dd1d_0123_4567_89ab_cdef));
            assert_eq!(oracle.root(key), key.closest(live.iter().copied()));
        }
        for &me in live.iter().chain([NodeId::from_u128(ids[3])].iter()) {
            for half in [1, 4, 8, 30] {
                let expected: Vec<u128> = ideal_leaf_set(me, live.iter().copied(), half)
                    .into_iter()
                    .map(NodeId::as_u128)
                    .collect();
                assert_eq!(oracle.leaf_set(me, half), expected, "{me} half {half}");
            }
        }
        assert_eq!(Oracle::default().root(Key::from_u128(5)), None);
    }
}
