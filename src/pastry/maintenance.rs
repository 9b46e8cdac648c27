//! Routing-table maintenance: row requests and replies, lazy repair of a slot found dead,
//! holes met while routing, the periodic maintenance round and the passes made as the overlay
//! grows.

use rand::Rng;

use crate::id::{Key, NodeId, DIGITS};

use super::state::Pastry;
use super::{Message, PeerInfo, Time};

pub(super) const MAX_ROW_REQUESTS: usize = 48;
/// Overlay sizes, in multiples of `16^(row+1)`, at which a row with empty slots is asked for
/// again (see `Pastry::fill_as_grown`).
pub(super) const GROWTH_PASSES: [f64; 12] = [
    1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0,
];

/// How many of [`GROWTH_PASSES`] an overlay of `size` nodes has reached for `row`.
pub(super) fn growth_passes_reached(size: f64, row: usize) -> u8 {
    let expected = 16f64.powi(row as i32 + 1);
    // At most GROWTH_PASSES.len() (12), so the count fits a u8.
    GROWTH_PASSES
        .iter()
        .take_while(|&&factor| size >= factor * expected)
        .count() as u8
}

impl Pastry {
    /// A [`Message::RowRequest`] from `from`: answered with our row (without the asker).
    pub(super) fn on_row_request(&mut self, now: Time, from: PeerInfo, row: u8) {
        // The asker is live: it may fill an empty slot of ours.
        if self.is_active() {
            self.consider(now, from, false);
        }
        let entries = self
            .table
            .row(usize::from(row))
            .iter()
            .map(|s| s.peer)
            .filter(|p| p.id != from.id)
            .collect();
        self.send(from, Message::RowReply { row, entries });
    }

    /// A [`Message::RowReply`] from `from`: its entries (and itself) are candidates.
    pub(super) fn on_row_reply(
        &mut self,
        now: Time,
        from: PeerInfo,
        row: u8,
        entries: Vec<PeerInfo>,
    ) {
        let improve = match self
            .row_requests
            .iter()
            .position(|(id, r, _)| *id == from.id && *r == row)
        {
            Some(index) => self.row_requests.swap_remove(index).2,
            None => false,
        };
        self.consider(now, from, improve);
        self.consider_named(now, from.id, &entries, improve);
    }

    /// Fills a routing-table hole as soon as routing meets it: when the slot for `key` is empty
    /// (and the key is outside the leaf set), the chosen next hop shares our prefix up to that
    /// row, so its row holds candidates. At most once per row per maintenance period.
    pub(super) fn note_hole(&mut self, key: Key, next: PeerInfo) {
        if !self.is_active() || self.leaf_set.covers(key) {
            return;
        }
        let row = self.me.id.shared_prefix_len(key);
        if row >= DIGITS || self.holes_asked & (1 << row) != 0 {
            return;
        }
        if self.table.get(row, usize::from(key.digit(row))).is_none()
            && self.me.id.shared_prefix_len(next.id) >= row
        {
            self.holes_asked |= 1 << row;
            self.request_row(next, row, false);
        }
    }

    /// Fills the empty slot `(row, column)` with the nearest member of our neighbourhood set or
    /// leaf set that belongs there and whose RTT we know, if any: no message needed. The
    /// neighbourhood set holds the nodes nearest by proximity, so for the first rows (a slot
    /// there fits one node in 16 or 256) it often has one, as good a choice as a row's
    /// measured candidates.
    pub(super) fn refill_from_known(&mut self, now: Time, row: usize, column: usize) -> bool {
        if self.table.get(row, column).is_some() {
            return false;
        }
        let fits = |this: &Self, id: NodeId| {
            id != this.me.id && this.table.position(id) == Some((row, column)) && !this.is_dead(id)
        };
        let best = self
            .neighbourhood
            .iter()
            .chain(self.leaf_set.iter())
            .filter(|s| fits(self, s.peer.id) && !self.is_suspect(s.peer.id))
            .filter_map(|s| s.rtt().map(|rtt| (s.peer, rtt)))
            .min_by_key(|(_, rtt)| *rtt);
        match best {
            Some((peer, rtt)) => {
                self.offer(now, peer, Some(rtt));
                self.table.get(row, column).is_some()
            }
            None => false,
        }
    }

    /// Asks `peer` for its routing-table row `row`.
    pub(super) fn request_row(&mut self, peer: PeerInfo, row: usize, improve: bool) {
        if self.row_requests.len() >= MAX_ROW_REQUESTS {
            self.row_requests.remove(0);
        }
        self.row_requests.push((peer.id, row as u8, improve));
        self.send(peer, Message::RowRequest { row: row as u8 });
    }

    /// Lazy routing-table repair of the slot `(row, column)` whose entry was found dead: from a
    /// node we already know near (see [`Self::refill_from_known`]), else by asking another
    /// entry of the same row (or the next) for its row.
    pub(super) fn repair_table_row(&mut self, now: Time, row: usize, column: usize) {
        if !self.is_active() {
            return;
        }
        if self.refill_from_known(now, row, column) {
            return;
        }
        for r in [row, row + 1] {
            let entries = self.table.row(r);
            if !entries.is_empty() {
                let peer = entries[self.rng.gen_range(0..entries.len())].peer;
                self.stats.table_repairs += 1;
                self.request_row(peer, row, false);
                return;
            }
        }
    }

    /// The routing-table rows of a node that joined a small overlay keep the holes of that time
    /// (a branch that did not exist yet) when the overlay grows: newcomers announce themselves
    /// only to the nodes in their own state. So each time the estimated size first passes one
    /// of [`GROWTH_PASSES`] times the size at which every slot of row `r` is expected to hold a
    /// candidate (`16^(r+1)`), a row with empty slots is asked for again (a random entry's row;
    /// only the empty slots are measured). Passes already reached at activation are skipped:
    /// the second join phase has just asked.
    pub(super) fn fill_as_grown(&mut self) {
        if !self.is_active() {
            return;
        }
        let size = self.estimated_size();
        for row in 0..self.table.row_count().min(DIGITS) {
            let reached = growth_passes_reached(size, row);
            if reached <= self.growth_passes[row] {
                continue;
            }
            self.growth_passes[row] = reached;
            let entries = self.table.row(row);
            if entries.is_empty() || entries.len() >= crate::id::DIGIT_VALUES - 1 {
                continue;
            }
            let peer = entries[self.rng.gen_range(0..entries.len())].peer;
            self.request_row(peer, row, false);
        }
    }

    /// Marks the growth passes the current size has reached as done (see [`Self::fill_as_grown`]).
    pub(super) fn skip_growth_passes(&mut self) {
        let size = self.estimated_size();
        for (row, done) in self.growth_passes.iter_mut().enumerate() {
            *done = growth_passes_reached(size, row);
        }
    }

    /// Periodic routing-table maintenance. Rounds alternate between improving proximity (rows
    /// in turn: ask a random entry of row r for its row r and measure the candidates) and
    /// filling holes (the shallowest row with an empty slot: only empty slots are measured).
    pub(super) fn maintain_table(&mut self, now: Time) {
        self.holes_asked = 0;
        self.probe_hints(now, true);
        let rows = self.table.row_count();
        if rows == 0 {
            return;
        }
        self.maintenance_row = self.maintenance_row.wrapping_add(1);
        if self.maintenance_row % 2 == 0 {
            let shallowest = (0..rows).find(|&r| {
                let entries = self.table.row(r);
                !entries.is_empty() && entries.len() < crate::id::DIGIT_VALUES - 1
            });
            if let Some(row) = shallowest {
                let entries = self.table.row(row);
                let peer = entries[self.rng.gen_range(0..entries.len())].peer;
                self.request_row(peer, row, false);
                return;
            }
        }
        let start = self.maintenance_row / 2;
        for offset in 0..rows {
            let row = (start + offset) % rows;
            let entries = self.table.row(row);
            if !entries.is_empty() {
                let peer = entries[self.rng.gen_range(0..entries.len())].peer;
                self.request_row(peer, row, true);
                return;
            }
        }
    }
}
