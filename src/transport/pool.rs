//! The connection pool: one link per peer, the simultaneous-dial rule, the cap with LRU
//! eviction of idle links, and which peers have been announced with `LinkUp`.
//!
//! Plain data behind the transport's mutex: no IO, no awaits. The transport carries out the
//! closes and events the pool's answers call for.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::LinkBudget;
use crate::id::NodeId;

/// One established, verified link.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    pub(crate) peer: NodeId,
    pub(crate) inbound: bool,
    /// What the link's unfinished incoming frames hold.
    pub(crate) budget: Arc<LinkBudget>,
    /// Streams in progress (ours and the peer's); the link is idle at zero.
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Uses so far, bumped once per stream: no clock read on the hot path.
    uses: AtomicU64,
    /// `uses` when the pool last looked.
    seen_uses: AtomicU64,
    /// Milliseconds since the pool's epoch when the pool last saw `uses` change.
    idle_since: AtomicU64,
    epoch: Instant,
    /// When the link was registered.
    created: Instant,
}

impl Link {
    pub(crate) fn new(
        conn: quinn::Connection,
        peer: NodeId,
        inbound: bool,
        epoch: Instant,
        budget: LinkBudget,
    ) -> Self {
        let link = Self {
            conn,
            peer,
            inbound,
            budget: Arc::new(budget),
            in_flight: Arc::new(AtomicUsize::new(0)),
            uses: AtomicU64::new(0),
            seen_uses: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            epoch,
            created: Instant::now(),
        };
        link.touch();
        link
    }

    /// Records a use.
    pub(crate) fn touch(&self) {
        self.uses.fetch_add(1, Ordering::Relaxed);
    }

    /// Time since the link was last used, as far as the pool has seen: a use is noticed when
    /// the pool next looks (the idle reaper looks several times per idle timeout), so this can
    /// lag by up to one look.
    pub(crate) fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed();
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let uses = self.uses.load(Ordering::Relaxed);
        if self.seen_uses.swap(uses, Ordering::Relaxed) != uses {
            self.idle_since.store(now_ms, Ordering::Relaxed);
        }
        now.saturating_sub(Duration::from_millis(
            self.idle_since.load(Ordering::Relaxed),
        ))
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub(crate) fn id(&self) -> usize {
        self.conn.stable_id()
    }

    /// The node that dialled this link.
    fn initiator(&self, local: NodeId) -> NodeId {
        if self.inbound {
            self.peer
        } else {
            local
        }
    }
}

/// What happened when a new link was offered to the pool.
#[derive(Debug)]
pub(crate) enum Insert {
    /// The link is in the pool.
    Added {
        /// A link to the same peer that lost the simultaneous-dial rule (close it, no event).
        replaced: Option<Arc<Link>>,
        /// An idle link evicted to make room (close it, emit `LinkLost`).
        evicted: Option<Arc<Link>>,
        /// Whether to emit `LinkUp` (the peer was not announced yet).
        announce: bool,
    },
    /// The existing link to the peer wins; the new one must be closed. Holds the survivor.
    Duplicate(Arc<Link>),
    /// The pool is full of busy links.
    Full,
}

/// What happened when a link was found closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// It was the pool's link to the peer: emit `LinkLost`.
    Lost,
    /// It was the pool's link but closed as a duplicate by the peer: a replacement should
    /// arrive; emit `LinkLost` only if none has after a grace period.
    AwaitReplacement,
    /// It was not in the pool (replaced, evicted or closed locally): nothing to report.
    NotPooled,
}

/// The links of one node.
#[derive(Debug)]
pub(crate) struct Pool {
    local: NodeId,
    max: usize,
    /// Two links to one peer registered further apart than this are not a simultaneous dial
    /// (see [`Pool::insert`]).
    race_window: Duration,
    epoch: Instant,
    links: HashMap<NodeId, Arc<Link>>,
    announced: HashSet<NodeId>,
    /// Peers the node's routing state holds ([`Pool::protect`]): their links are evicted last
    /// and never count against `max_unprotected`.
    protected: HashSet<NodeId>,
    /// The most links to peers that are not protected.
    max_unprotected: usize,
}

impl Pool {
    /// An empty pool of at most `max` links; `race_window` is the longest a dial can take (the
    /// connect timeout).
    pub(crate) fn new(
        local: NodeId,
        max: usize,
        max_unprotected: usize,
        race_window: Duration,
    ) -> Self {
        Self {
            local,
            max,
            race_window,
            epoch: Instant::now(),
            links: HashMap::new(),
            announced: HashSet::new(),
            protected: HashSet::new(),
            max_unprotected: max_unprotected.min(max),
        }
    }

    /// Replaces the set of protected peers.
    pub(crate) fn protect(&mut self, peers: HashSet<NodeId>) {
        self.protected = peers;
    }

    fn is_protected(&self, peer: NodeId) -> bool {
        self.protected.contains(&peer)
    }

    /// Links to peers that are not protected.
    pub(crate) fn unprotected(&self) -> usize {
        self.links
            .keys()
            .filter(|peer| !self.is_protected(**peer))
            .count()
    }

    /// The least recently used idle link, unprotected ones first (only those if
    /// `unprotected_only`).
    fn eviction_candidate(&self, unprotected_only: bool) -> Option<NodeId> {
        self.links
            .values()
            .filter(|link| !link.is_busy())
            .filter(|link| !unprotected_only || !self.is_protected(link.peer))
            .max_by_key(|link| (!self.is_protected(link.peer), link.idle_for()))
            .map(|link| link.peer)
    }

    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    pub(crate) fn get(&self, peer: NodeId) -> Option<Arc<Link>> {
        self.links.get(&peer).cloned()
    }

    pub(crate) fn by_addr(&self, addr: SocketAddr) -> Option<NodeId> {
        self.links
            .values()
            .find(|link| link.addr() == addr)
            .map(|link| link.peer)
    }

    pub(crate) fn links(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.links.values()
    }

    /// Whether a new link could be added now (room, or an idle link to evict).
    pub(crate) fn has_room(&self) -> bool {
        self.links.len() < self.max || self.links.values().any(|link| !link.is_busy())
    }

    /// Offers a freshly verified link.
    ///
    /// Simultaneous dials: of two links to the same peer, the one dialled by the lower node id
    /// survives, so both ends keep the same one. Otherwise the newer link survives: two links
    /// dialled by the same node, or a link that arrives when the existing one is older than a
    /// dial can take, mean the peer had no link left (it restarted, or its side closed), and
    /// the existing one is stale.
    pub(crate) fn insert(&mut self, link: Arc<Link>) -> Insert {
        let peer = link.peer;
        if let Some(existing) = self.links.get(&peer) {
            let preferred = self.local.min(peer);
            let existing_ok = existing.initiator(self.local) == preferred;
            let new_ok = link.initiator(self.local) == preferred;
            let racing = existing.created.elapsed() <= self.race_window;
            if racing && existing_ok && !new_ok {
                return Insert::Duplicate(existing.clone());
            }
            let replaced = self.links.insert(peer, link);
            return Insert::Added {
                replaced,
                evicted: None,
                announce: self.announced.insert(peer),
            };
        }
        let mut evicted = None;
        let over_unprotected =
            !self.is_protected(peer) && self.unprotected() >= self.max_unprotected;
        if self.links.len() >= self.max || over_unprotected {
            let Some(lru) = self.eviction_candidate(over_unprotected) else {
                return Insert::Full;
            };
            evicted = self.links.remove(&lru);
            self.announced.remove(&lru);
        }
        self.links.insert(peer, link);
        Insert::Added {
            replaced: None,
            evicted,
            announce: self.announced.insert(peer),
        }
    }

    /// Removes the peer's link and forgets its announcement (a local close); returns the link.
    pub(crate) fn remove(&mut self, peer: NodeId) -> Option<Arc<Link>> {
        self.announced.remove(&peer);
        self.links.remove(&peer)
    }

    /// Records that link `id` to `peer` closed; `duplicate` if the peer closed it as the loser
    /// of a simultaneous dial.
    pub(crate) fn closed(&mut self, peer: NodeId, id: usize, duplicate: bool) -> Removed {
        match self.links.get(&peer) {
            Some(link) if link.id() == id => {
                self.links.remove(&peer);
                if duplicate {
                    Removed::AwaitReplacement
                } else {
                    self.announced.remove(&peer);
                    Removed::Lost
                }
            }
            _ => Removed::NotPooled,
        }
    }

    /// After a duplicate close's grace period: whether the peer is still announced with no link
    /// (then it is forgotten and `LinkLost` is due).
    pub(crate) fn replacement_missing(&mut self, peer: NodeId) -> bool {
        !self.links.contains_key(&peer) && self.announced.remove(&peer)
    }

    /// Removes and returns links unused for longer than `timeout`.
    pub(crate) fn take_idle(&mut self, timeout: Duration) -> Vec<Arc<Link>> {
        let idle: Vec<NodeId> = self
            .links
            .values()
            .filter(|link| !link.is_busy() && link.idle_for() > timeout)
            .map(|link| link.peer)
            .collect();
        idle.into_iter()
            .filter_map(|peer| self.remove(peer))
            .collect()
    }

    /// Removes the idle links beyond the `keep` most recently used among those unused for at
    /// least `min_idle`, and returns them (to be closed).
    ///
    /// Bounds what a burst of short exchanges (a join measures and messages dozens of peers
    /// once each) leaves open: without it every such link would stay for the whole idle
    /// timeout. A link in use, or used within `min_idle`, is never taken; idle times are as the
    /// pool has seen them, so they err on the young side (see [`Link::idle_for`]).
    pub(crate) fn take_excess_idle(&mut self, keep: usize, min_idle: Duration) -> Vec<Arc<Link>> {
        if self.links.len() <= keep {
            // Fewer links than the cap, idle or not (always so with no cap).
            return Vec::new();
        }
        let mut idle: Vec<(Duration, NodeId)> = self
            .links
            .values()
            .filter(|link| !link.is_busy())
            .map(|link| (link.idle_for(), link.peer))
            .filter(|(idle_for, _)| *idle_for >= min_idle)
            .collect();
        if idle.len() <= keep {
            return Vec::new();
        }
        // Most recently used first; the ones past `keep` go.
        idle.sort_unstable();
        idle.into_iter()
            .skip(keep)
            .filter_map(|(_, peer)| self.remove(peer))
            .collect()
    }

    /// Removes every link (shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Arc<Link>> {
        self.announced.clear();
        self.links.drain().map(|(_, link)| link).collect()
    }
}
