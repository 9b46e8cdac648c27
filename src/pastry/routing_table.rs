//! The routing table: row `r` holds peers sharing exactly `r` leading digits with this node,
//! one per value of digit `r`.

use std::time::Duration;

use crate::id::{NodeId, DIGITS, DIGIT_VALUES};

use super::{PeerInfo, Time};

/// Stored proximity meaning "not measured".
const UNKNOWN_RTT: u32 = u32::MAX;
/// Stored last-heard time meaning "never heard from directly".
const NEVER_HEARD: u64 = u64::MAX;

/// One entry of a routing structure: a peer and its proximity (round-trip time), if measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The peer.
    pub peer: PeerInfo,
    /// Round-trip time in microseconds; `u32::MAX` when unmeasured. Kept small on purpose:
    /// the simulator holds 100,000 nodes' tables.
    rtt_us: u32,
    /// When this node last got a message from the peer (microseconds of [`Time`]);
    /// `u64::MAX` when never. It fits the padding after `rtt_us`: the slot stays 64 bytes.
    heard_us: u64,
}

impl Slot {
    /// A slot for `peer` with an optional measured round-trip time.
    pub fn new(peer: PeerInfo, rtt: Option<Duration>) -> Self {
        Self {
            peer,
            rtt_us: rtt.map_or(UNKNOWN_RTT, rtt_micros),
            heard_us: NEVER_HEARD,
        }
    }

    /// Whether a message from the peer arrived at `since` or later.
    pub(crate) fn heard_since(&self, since: Time) -> bool {
        self.heard_us != NEVER_HEARD && self.heard_us >= since.as_micros()
    }

    /// Records that a message from the peer arrived at `now`.
    pub(crate) fn mark_heard(&mut self, now: Time) {
        self.heard_us = now.as_micros();
    }

    /// This slot's peer and proximity replaced by `new`'s, keeping when it was last heard.
    pub(crate) fn refreshed(self, new: Self) -> Self {
        Self {
            heard_us: self.heard_us,
            ..new
        }
    }

    /// The peer's id.
    pub fn id(&self) -> NodeId {
        self.peer.id
    }

    /// The measured round-trip time, if any.
    pub fn rtt(&self) -> Option<Duration> {
        (self.rtt_us != UNKNOWN_RTT).then(|| Duration::from_micros(u64::from(self.rtt_us)))
    }

    /// Whether `candidate` should replace this slot's proximity-wise: it is measured and
    /// strictly nearer by more than the hysteresis fraction, or this slot is unmeasured.
    pub(crate) fn is_beaten_by(&self, candidate: Option<Duration>, hysteresis: f64) -> bool {
        match (self.rtt(), candidate) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => new.as_secs_f64() < old.as_secs_f64() * (1.0 - hysteresis),
        }
    }
}

/// Microseconds, clamped below the "unknown" marker.
pub(crate) fn rtt_micros(rtt: Duration) -> u32 {
    u32::try_from(rtt.as_micros())
        .unwrap_or(UNKNOWN_RTT - 1)
        .min(UNKNOWN_RTT - 1)
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insertion {
    /// The slot was empty; the peer now holds it.
    Added,
    /// The peer displaced a farther one (returned).
    Replaced(PeerInfo),
    /// The peer already held the slot; its proximity was refreshed.
    Updated,
    /// The slot is held by a nearer (or equally unmeasured) peer, or the peer is this node.
    Rejected,
}

/// Pastry's routing table (b = 4): 32 rows of 16 columns.
///
/// Row `r`, column `c` holds a peer whose id shares the first `r` digits with this node and
/// has digit `r` equal to `c`. Rows are allocated lazily and sparsely (a row keeps only its
/// occupied slots), so a node in a 100,000-node overlay holds about five rows, mostly full.
///
/// A slot is replaced only by a strictly nearer peer, by more than a hysteresis fraction, so
/// that round-trip-time noise does not churn it.
///
/// ```
/// use wendy::id::NodeId;
/// use wendy::pastry::{PeerInfo, RoutingTable, Insertion};
/// let me = NodeId::from_u128(0x1234 << 112);
/// let mut table = RoutingTable::new(me);
/// let peer = PeerInfo { id: NodeId::from_u128(0x1f00 << 112), addr: "127.0.0.1:1".parse().unwrap() };
/// assert_eq!(table.insert(peer, None, 0.1), Insertion::Added);
/// assert_eq!(table.get(1, 0xf).map(|s| s.peer), Some(peer));
/// ```
#[derive(Debug, Clone)]
pub struct RoutingTable {
    me: NodeId,
    rows: Vec<Vec<Slot>>,
}

impl RoutingTable {
    /// An empty table for node `me`.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            rows: Vec::new(),
        }
    }

    /// The (row, column) where `id` belongs, or `None` for this node's own id.
    pub fn position(&self, id: NodeId) -> Option<(usize, usize)> {
        let row = self.me.shared_prefix_len(id);
        (row < DIGITS).then(|| (row, usize::from(id.digit(row))))
    }

    /// The slot at `row`, `column`, if occupied.
    pub fn get(&self, row: usize, column: usize) -> Option<&Slot> {
        self.rows
            .get(row)?
            .iter()
            .find(|s| usize::from(s.peer.id.digit(row)) == column)
    }

    /// The occupied slots of `row` (in no particular order).
    pub fn row(&self, row: usize) -> &[Slot] {
        self.rows.get(row).map_or(&[], Vec::as_slice)
    }

    /// Number of rows allocated (one past the highest row ever holding an entry).
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Every occupied slot.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.rows.iter().flatten()
    }

    /// Number of occupied slots.
    pub fn len(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    /// Whether no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.rows.iter().all(Vec::is_empty)
    }

    /// The slot holding `id`, if any.
    pub fn find(&self, id: NodeId) -> Option<&Slot> {
        let (row, column) = self.position(id)?;
        self.get(row, column).filter(|s| s.peer.id == id)
    }

    /// Whether `id` holds a slot.
    pub fn contains(&self, id: NodeId) -> bool {
        self.find(id).is_some()
    }

    /// Offers `peer` (with its measured round-trip time, if any) for its slot.
    ///
    /// An empty slot takes it; the same peer refreshes its proximity; another peer is replaced
    /// only if `peer` is measured and nearer by more than `hysteresis` (a fraction, e.g. 0.1).
    pub fn insert(&mut self, peer: PeerInfo, rtt: Option<Duration>, hysteresis: f64) -> Insertion {
        let Some((row, column)) = self.position(peer.id) else {
            return Insertion::Rejected;
        };
        if self.rows.len() <= row {
            self.rows.resize_with(row + 1, Vec::new);
        }
        let slots = &mut self.rows[row];
        let new = Slot::new(peer, rtt);
        match slots
            .iter_mut()
            .find(|s| usize::from(s.peer.id.digit(row)) == column)
        {
            None => {
                if slots.capacity() == 0 {
                    slots.reserve_exact(if row < 4 { DIGIT_VALUES } else { 2 });
                }
                slots.push(new);
                Insertion::Added
            }
            Some(slot) if slot.peer.id == peer.id => {
                if rtt.is_some() {
                    *slot = slot.refreshed(new);
                } else {
                    slot.peer = peer;
                }
                Insertion::Updated
            }
            Some(slot) if slot.is_beaten_by(rtt, hysteresis) => {
                let old = slot.peer;
                *slot = new;
                Insertion::Replaced(old)
            }
            Some(_) => Insertion::Rejected,
        }
    }

    /// Records that a message from `id` arrived at `now`, if it holds a slot.
    pub(crate) fn mark_heard(&mut self, id: NodeId, now: Time) {
        let Some((row, _)) = self.position(id) else {
            return;
        };
        if let Some(slot) = self
            .rows
            .get_mut(row)
            .and_then(|slots| slots.iter_mut().find(|s| s.peer.id == id))
        {
            slot.mark_heard(now);
        }
    }

    /// Removes `id`; returns the (row, column) it held.
    pub fn remove(&mut self, id: NodeId) -> Option<(usize, usize)> {
        let (row, column) = self.position(id)?;
        let slots = self.rows.get_mut(row)?;
        let index = slots.iter().position(|s| s.peer.id == id)?;
        slots.swap_remove(index);
        while self.rows.last().is_some_and(Vec::is_empty) {
            self.rows.pop();
        }
        Some((row, column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(hex: &str) -> PeerInfo {
        PeerInfo {
            id: hex.parse().unwrap(),
            addr: "10.0.0.1:4000".parse().unwrap(),
        }
    }

    const ME: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn position_counts_prefix_digits_not_bytes() {
        // Go Wendy regression: the prefix was miscounted at odd digit positions.
        let me: NodeId = ME.parse().unwrap();
        let table = RoutingTable::new(me);
        for row in 0..DIGITS {
            let other = me.with_digit(row, me.digit(row) ^ 0x1);
            assert_eq!(
                table.position(other),
                Some((row, usize::from(other.digit(row)))),
                "row {row}"
            );
        }
        assert_eq!(table.position(me), None);
    }

    #[test]
    fn insert_get_remove() {
        let me: NodeId = ME.parse().unwrap();
        let mut table = RoutingTable::new(me);
        let a = peer("f0000000000000000000000000000000");
        let b = peer("0133333333333333333333333333333f"); // row 2, column 3
        assert_eq!(table.insert(a, None, 0.1), Insertion::Added);
        assert_eq!(table.insert(b, None, 0.1), Insertion::Added);
        assert_eq!(table.get(0, 0xf).unwrap().peer, a);
        assert_eq!(table.get(2, 3).unwrap().peer, b);
        assert_eq!(table.get(2, 4), None);
        assert_eq!(table.len(), 2);
        assert_eq!(table.row_count(), 3);
        assert_eq!(table.remove(b.id), Some((2, 3)));
        assert_eq!(table.row_count(), 1, "empty trailing rows are freed");
        assert!(!table.contains(b.id));
        assert_eq!(table.remove(b.id), None);
        assert_eq!(table.insert(peer(ME), None, 0.1), Insertion::Rejected);
    }

    #[test]
    fn a_slot_stays_64_bytes_and_keeps_when_it_was_heard() {
        // 100,000 simulated nodes hold about 100 slots each: the last-heard time must not
        // grow them.
        assert!(std::mem::size_of::<Slot>() <= 64);
        let me: NodeId = ME.parse().unwrap();
        let mut table = RoutingTable::new(me);
        let a = peer("f0000000000000000000000000000000");
        table.insert(a, None, 0.1);
        assert!(!table.find(a.id).unwrap().heard_since(Time::ZERO));
        table.mark_heard(a.id, Time::from_millis(5000));
        table.insert(a, Some(Duration::from_millis(30)), 0.1);
        let slot = table.find(a.id).unwrap();
        assert!(slot.heard_since(Time::from_millis(5000)));
        assert!(!slot.heard_since(Time::from_millis(5001)));
    }

    #[test]
    fn replaced_only_by_a_strictly_nearer_peer_beyond_hysteresis() {
        let me: NodeId = ME.parse().unwrap();
        let mut table = RoutingTable::new(me);
        let a = peer("f0000000000000000000000000000000");
        let b = peer("f1000000000000000000000000000000");
        let c = peer("f2000000000000000000000000000000");
        let ms = Duration::from_millis;
        assert_eq!(table.insert(a, Some(ms(100)), 0.1), Insertion::Added);
        // 95 ms is nearer but inside the 10% hysteresis band.
        assert_eq!(table.insert(b, Some(ms(95)), 0.1), Insertion::Rejected);
        // Unmeasured never displaces measured.
        assert_eq!(table.insert(b, None, 0.1), Insertion::Rejected);
        assert_eq!(table.insert(b, Some(ms(80)), 0.1), Insertion::Replaced(a));
        assert_eq!(table.insert(c, Some(ms(200)), 0.1), Insertion::Rejected);
        assert_eq!(table.get(0, 0xf).unwrap().peer, b);
        assert_eq!(table.insert(b, Some(ms(120)), 0.1), Insertion::Updated);
        assert_eq!(table.get(0, 0xf).unwrap().rtt(), Some(ms(120)));
    }
}
