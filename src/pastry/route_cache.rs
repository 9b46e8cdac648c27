//! The route cache: the roots that answered for keys this node routed to, and their leaf
//! sets, so that later messages for keys in a cached root's range go straight to the member
//! closest to the key (one hop) instead of through the routing table.
//!
//! The root of a message from another node answers its origin ([`Message::RootAnswer`]) with
//! the message's id and, when the message took more than one hop, its leaf set. The origin
//! keeps an answer only if it answers a message it sent (by id and key), if the sender is the
//! closest to the key among the ids it claims, and if the claimed range is plausible (a full
//! leaf set spanning at most [`MAX_SPAN_RATIO`] times our own). The receiver of a message sent
//! from the cache routes it like any other (its own leaf set decides whether it is the root),
//! so a stale or false entry costs at most a detour, never a misdelivery.
//!
//! Bounded: at most [`Config::route_cache_size`] entries, least recently used first out, each
//! forgotten [`Config::route_cache_ttl`] after it was learned or confirmed, and at once when a
//! member stops acknowledging. This module owns the cache and the answers' bookkeeping; the
//! route decision that consults it is in `routing`.
//!
//! A node that knows which peers it holds links to ([`Pastry::set_link_view`]) sends from the
//! cache only to a member it is linked to: a first contact costs a handshake (about 0.7 ms of
//! CPU on both ends together) that the message would wait for, so it takes the routing
//! table's links instead, and the member is sent to directly once another exchange (a
//! measurement, a liveness probe) has linked the two. For the same reason a root answers
//! directly only an origin it holds a link to; any other origin hears the answer back along
//! the route ([`Message::RootAnswerRelay`]), each hop passing it over the link the message came
//! by, so no connection is opened for it. A hop passes on a relay only for a message it
//! forwarded lately ([`MAX_FORWARDED`]) to the relay's sender, and only once; the origin checks
//! a relayed answer like a direct one, and in addition that it came from the node the origin
//! sent the message to. An origin whose cached member it holds no link to asks the runtime to
//! link to it in the background ([`Transmit::Measure`], at most once per [`LINK_RETRY`] per
//! member) when the key is one it routed lately (a key used again, not merely one in a cached
//! range), and sends to it straight once the link is up.

use std::collections::VecDeque;
use std::time::Duration;

use crate::id::{Key, NodeId};

use super::state::Pastry;
use super::{Event, Message, PeerInfo, Time, Transmit};

#[cfg(doc)]
use super::Config;

/// A claimed range may span at most this many times our own leaf set's range: ids are
/// uniform, so an honest root's leaf set spans about as much as ours, and a peer cannot claim
/// a large part of the ring.
pub(super) const MAX_SPAN_RATIO: u128 = 4;

/// Most of this node's own messages awaiting their root's answer.
const MAX_AWAITED: usize = 256;

/// Most messages remembered as forwarded (own ones included), for passing their roots' relayed
/// answers back: a relay comes back within about one round trip of the forward.
pub(super) const MAX_FORWARDED: usize = 256;

/// Most cached members this node asked the runtime to link to and still remembers.
const MAX_LINKING: usize = 32;

/// Most keys of this node's own messages remembered, to tell a key used again from a new
/// one that merely falls in a cached range.
const MAX_RECENT_KEYS: usize = 256;

/// A cached member is asked for a link at most once in this long (the dial may fail, or the
/// link may close again while idle).
pub(super) const LINK_RETRY: Duration = Duration::from_secs(30);

/// What the runtime knows of its links ([`Pastry::set_link_view`]).
pub trait LinkView: Send + std::fmt::Debug {
    /// Whether this node holds a link to `peer` now (a send to it opens no connection).
    fn is_linked(&self, peer: NodeId) -> bool;
}

/// A root and its leaf set, as it told us.
#[derive(Debug, Clone)]
pub(super) struct CachedRoot {
    root: PeerInfo,
    /// The root and its leaf set.
    members: Vec<PeerInfo>,
    /// The farthest members counter-clockwise and clockwise of the root.
    lo: NodeId,
    hi: NodeId,
    learned: Time,
    used: u64,
}

impl CachedRoot {
    /// Whether `key` lies strictly between the farthest members: then the member closest to it
    /// is its root by the root's own leaf set.
    fn covers(&self, key: Key) -> bool {
        let k = key.to_node_id();
        k != self.lo
            && k != self.hi
            && self.lo.clockwise_distance(k) < self.lo.clockwise_distance(self.hi)
    }

    fn closest(&self, key: Key) -> PeerInfo {
        let mut best = self.root;
        for m in &self.members {
            if key.is_closer(m.id, best.id) {
                best = *m;
            }
        }
        best
    }
}

/// One of this node's messages, waiting for its root's answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Awaited {
    id: u64,
    key: Key,
    sent: Time,
    /// The member the cache sent it to, if it did.
    via_cache: Option<NodeId>,
}

/// A message this node passed on (or sent, as origin), for passing its root's relayed answer
/// back to where it came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forwarded {
    origin: NodeId,
    id: u64,
    key: Key,
    /// Where it came from (none at its origin).
    prev: Option<PeerInfo>,
    /// Where it went: the only node a relay for it is taken from.
    next: NodeId,
}

/// The cache and the answers this node awaits.
#[derive(Debug, Default)]
pub(super) struct RouteCache {
    entries: Vec<CachedRoot>,
    awaited: VecDeque<Awaited>,
    forwarded: VecDeque<Forwarded>,
    /// Cached members this node asked a link to, and when.
    linking: VecDeque<(NodeId, Time)>,
    /// Keys of this node's latest own messages, newest last.
    recent_keys: VecDeque<Key>,
    tick: u64,
}

impl RouteCache {
    /// Cached roots.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every entry that names `id` (it stopped answering, or died).
    pub(super) fn forget(&mut self, id: NodeId) {
        self.entries
            .retain(|e| e.root.id != id && e.members.iter().all(|m| m.id != id));
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.awaited.clear();
        self.forwarded.clear();
        self.linking.clear();
        self.recent_keys.clear();
    }

    /// Remembers `key` as routed now; whether it was routed lately already.
    fn note_key(&mut self, key: Key) -> bool {
        let again = self.recent_keys.contains(&key);
        if !again {
            if self.recent_keys.len() >= MAX_RECENT_KEYS {
                self.recent_keys.pop_front();
            }
            self.recent_keys.push_back(key);
        }
        again
    }
}

impl Pastry {
    /// The member of a cached root's leaf set closest to `key`, if a fresh entry covers it and
    /// that member is usable.
    pub(super) fn cached_route(
        &mut self,
        now: Time,
        key: Key,
        skip: &[NodeId],
    ) -> Option<PeerInfo> {
        if self.config.route_cache_size == 0 || self.leaf_set.covers(key) {
            return None;
        }
        let again = self.route_cache.note_key(key);
        let ttl = self.config.route_cache_ttl;
        self.route_cache.entries.retain(|e| now - e.learned < ttl);
        let index = self
            .route_cache
            .entries
            .iter()
            .position(|e| e.covers(key))?;
        let target = self.route_cache.entries[index].closest(key);
        if target.id == self.me.id || skip.contains(&target.id) || self.is_suspect(target.id) {
            return None;
        }
        if self
            .links
            .as_ref()
            .is_some_and(|links| !links.is_linked(target.id))
        {
            self.stats.route_cache_unlinked += 1;
            // Only for a key used again: a new key that falls in a cached range (in a small
            // overlay one root's range is a sizeable share of the ring) would have the node
            // dial most roots, a handshake each, for keys that may never come back.
            if again {
                self.request_link(now, target);
            }
            return None;
        }
        self.route_cache.tick += 1;
        self.route_cache.entries[index].used = self.route_cache.tick;
        self.stats.route_cache_hits += 1;
        Some(target)
    }

    /// Asks the runtime to link to cached member `target` in the background (a measurement
    /// dials it), unless it was asked lately: the keys that follow then go to it straight.
    fn request_link(&mut self, now: Time, target: PeerInfo) {
        let linking = &mut self.route_cache.linking;
        linking.retain(|(_, asked)| now - *asked < LINK_RETRY);
        if linking.iter().any(|(id, _)| *id == target.id) {
            return;
        }
        if linking.len() >= MAX_LINKING {
            linking.pop_front();
        }
        linking.push_back((target.id, now));
        self.stats.route_cache_links_requested += 1;
        self.transmits.push_back(Transmit::Measure { peer: target });
    }

    /// The runtime could not link to (or lost its link to) `peer`: if the cache asked for the
    /// link, the entries naming `peer` go (a member that cannot be dialled is no shortcut).
    pub(super) fn cached_link_down(&mut self, peer: NodeId) {
        let linking = &mut self.route_cache.linking;
        let before = linking.len();
        linking.retain(|(id, _)| *id != peer);
        if linking.len() != before {
            self.route_cache.forget(peer);
        }
    }

    /// Remembers that message `(origin, id)` for `key`, which came from `prev`, goes to `next`,
    /// so that its root's relayed answer can be passed back. Only with a link view: without
    /// one every origin counts as linked, so every root answers it directly.
    pub(super) fn note_forward(
        &mut self,
        origin: NodeId,
        id: u64,
        key: Key,
        prev: Option<PeerInfo>,
        next: NodeId,
    ) {
        if self.links.is_none() || self.config.route_cache_size == 0 {
            return;
        }
        let forwarded = &mut self.route_cache.forwarded;
        // A message routed again (a hop did not acknowledge it) went to another node: the
        // relay comes from there.
        forwarded.retain(|f| !(f.origin == origin && f.id == id));
        if forwarded.len() >= MAX_FORWARDED {
            forwarded.pop_front();
        }
        forwarded.push_back(Forwarded {
            origin,
            id,
            key,
            prev,
            next,
        });
    }

    /// Remembers that our message `id` for `key` left at `now` (through the cache to `via`),
    /// to time its root's answer.
    pub(super) fn await_answer(&mut self, now: Time, id: u64, key: Key, via: Option<NodeId>) {
        let awaited = &mut self.route_cache.awaited;
        if awaited.len() >= MAX_AWAITED {
            awaited.pop_front();
        }
        awaited.push_back(Awaited {
            id,
            key,
            sent: now,
            via_cache: via,
        });
    }

    /// Whether our message `id` is being sent to `next` from the cache.
    pub(super) fn sent_via_cache(&self, id: u64, next: NodeId) -> bool {
        self.route_cache
            .awaited
            .iter()
            .rev()
            .any(|a| a.id == id && a.via_cache == Some(next))
    }

    /// Delivering `id` for `key` from `origin` here as root: tells the origin, with our leaf
    /// set if the message came by another node (the origin did not reach us directly, so a
    /// later one can).
    pub(super) fn answer_origin(
        &mut self,
        origin: PeerInfo,
        prev: Option<PeerInfo>,
        id: u64,
        key: Key,
    ) {
        if origin.id == self.me.id || self.config.route_cache_size == 0 {
            return;
        }
        let leaf_set = if prev.map_or(true, |p| p.id == origin.id) {
            Vec::new()
        } else {
            self.leaf_set.peers()
        };
        if !self.is_linked(origin.id) {
            // A direct answer would open a connection (a handshake on both ends) that the
            // message itself did not need. The hop it came from holds a link to us (it just
            // used it), and one to its own predecessor: the answer goes back that way.
            self.stats.root_answers_unlinked += 1;
            if let Some(prev) = prev.filter(|_| !leaf_set.is_empty()) {
                self.stats.root_answers_relayed += 1;
                let root = self.me;
                self.send(
                    prev,
                    Message::RootAnswerRelay {
                        origin: origin.id,
                        id,
                        key,
                        root,
                        leaf_set,
                    },
                );
            }
            return;
        }
        self.send(origin, Message::RootAnswer { id, key, leaf_set });
    }

    /// A [`Message::RootAnswerRelay`] from `from`: passed on towards `origin` if this node
    /// forwarded the message to `from` lately (once), taken as `root`'s answer if we are the
    /// origin, ignored otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_root_answer_relay(
        &mut self,
        now: Time,
        from: PeerInfo,
        origin: NodeId,
        id: u64,
        key: Key,
        root: PeerInfo,
        leaf_set: Vec<PeerInfo>,
    ) {
        let forwarded = &mut self.route_cache.forwarded;
        let Some(index) = forwarded
            .iter()
            .position(|f| f.origin == origin && f.id == id && f.key == key && f.next == from.id)
        else {
            // Not a message we sent that way, or relayed already: a forged or replayed relay
            // goes no further.
            self.stats.root_answer_relays_rejected += 1;
            return;
        };
        let prev = forwarded.remove(index).and_then(|f| f.prev);
        if origin == self.me.id {
            if leaf_set.is_empty() || root.id == self.me.id {
                self.stats.root_answers_rejected += 1;
                return;
            }
            self.on_root_answer(now, root, id, key, leaf_set);
            return;
        }
        let Some(prev) = prev else {
            self.stats.root_answer_relays_rejected += 1;
            return;
        };
        self.stats.root_answer_relays += 1;
        self.send(
            prev,
            Message::RootAnswerRelay {
                origin,
                id,
                key,
                root,
                leaf_set,
            },
        );
    }

    /// A [`Message::RootAnswer`] from `from`: times the message it answers and, if the claim
    /// holds up, caches `from` as the root of its range.
    pub(super) fn on_root_answer(
        &mut self,
        now: Time,
        from: PeerInfo,
        id: u64,
        key: Key,
        leaf_set: Vec<PeerInfo>,
    ) {
        let Some(index) = self
            .route_cache
            .awaited
            .iter()
            .position(|a| a.id == id && a.key == key)
        else {
            // Not ours, or answered already: a stray or replayed answer changes nothing.
            self.stats.root_answers_rejected += 1;
            return;
        };
        let awaited = self.route_cache.awaited.remove(index).unwrap_or(Awaited {
            id,
            key,
            sent: now,
            via_cache: None,
        });
        if let Some(via) = awaited.via_cache.filter(|v| *v != from.id) {
            // The entry that sent it to `via` is stale (a node joined near the key) or false.
            self.stats.route_cache_stale += 1;
            self.route_cache.forget(via);
        }
        self.emit(Event::RouteAnswered {
            id,
            key,
            root: from.id,
            elapsed: now - awaited.sent,
        });
        if leaf_set.is_empty() {
            // Reached directly: confirm the entry that sent it there, if any.
            if let Some(e) = self
                .route_cache
                .entries
                .iter_mut()
                .find(|e| e.root.id == from.id || e.members.iter().any(|m| m.id == from.id))
            {
                if e.covers(key) && e.closest(key).id == from.id {
                    e.learned = now;
                }
            }
            self.stats.root_answers += 1;
            return;
        }
        match self.check_claim(from, key, &leaf_set) {
            Some((lo, hi)) => {
                self.stats.root_answers += 1;
                self.cache_root(now, from, leaf_set, lo, hi);
            }
            None => {
                tracing::debug!(peer = %from.id, "ignoring a root answer whose claim does not hold");
                self.stats.root_answers_rejected += 1;
            }
        }
    }

    /// The range `(lo, hi)` `from` claims with `leaf_set`, if the claim is plausible: a full
    /// leaf set of distinct ids without `from`, `from` the closest of them to `key`, and a span
    /// at most [`MAX_SPAN_RATIO`] times our own leaf set's.
    fn check_claim(
        &self,
        from: PeerInfo,
        key: Key,
        leaf_set: &[PeerInfo],
    ) -> Option<(NodeId, NodeId)> {
        let full = self.config.leaf_set_size;
        if leaf_set.len() != full {
            return None;
        }
        let mut ids: Vec<NodeId> = leaf_set.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != full || ids.contains(&from.id) {
            return None;
        }
        if ids.iter().any(|id| key.is_closer(*id, from.id)) {
            return None;
        }
        // Counter-clockwise members are those less than half the ring behind the root.
        let half = 1u128 << 127;
        let behind = |id: NodeId| id.clockwise_distance(from.id);
        let ahead = |id: NodeId| from.id.clockwise_distance(id);
        let lo = ids
            .iter()
            .copied()
            .filter(|id| behind(*id) < half)
            .max_by_key(|id| behind(*id))?;
        let hi = ids
            .iter()
            .copied()
            .filter(|id| ahead(*id) < half)
            .max_by_key(|id| ahead(*id))?;
        let span = lo.clockwise_distance(hi);
        let own = {
            let far_left = self.leaf_set.side_slots(super::Side::Left).last()?.peer.id;
            let far_right = self.leaf_set.side_slots(super::Side::Right).last()?.peer.id;
            far_left.clockwise_distance(far_right)
        };
        if span > own.saturating_mul(MAX_SPAN_RATIO) {
            return None;
        }
        let k = key.to_node_id();
        if lo.clockwise_distance(k) >= span {
            return None;
        }
        Some((lo, hi))
    }

    fn cache_root(
        &mut self,
        now: Time,
        root: PeerInfo,
        members: Vec<PeerInfo>,
        lo: NodeId,
        hi: NodeId,
    ) {
        let cache = &mut self.route_cache;
        cache.tick += 1;
        cache.entries.retain(|e| e.root.id != root.id);
        if cache.entries.len() >= self.config.route_cache_size {
            if let Some(oldest) = cache
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            {
                cache.entries.swap_remove(oldest);
            }
        }
        cache.entries.push(CachedRoot {
            root,
            members,
            lo,
            hi,
            learned: now,
            used: cache.tick,
        });
    }

    /// Roots in the route cache.
    pub fn route_cache_len(&self) -> usize {
        self.route_cache.len()
    }

    /// Leaf sets held of nodes in the sparse rows' slots (neighbour hints).
    pub fn hints_len(&self) -> usize {
        self.hints.len()
    }
}
