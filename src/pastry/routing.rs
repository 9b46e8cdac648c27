//! Routing: Pastry's route decision, one routing step per message, delivery as root, and the
//! messages held back while a closer leaf-set member is under suspicion (parked) or while this
//! node is still joining (waiting).

use crate::id::{Key, NodeId, DIGITS};
use bytes::Bytes;

use super::liveness::ProbeKind;
use super::origin::{route_digest, OriginProof, ProofError};
use super::state::Pastry;
use super::{Event, Message, PeerInfo, Time};

#[derive(Debug, Clone)]
pub(super) struct RouteMsg {
    pub(super) id: u64,
    pub(super) key: Key,
    pub(super) origin: PeerInfo,
    /// Hops taken when it reached this node.
    pub(super) hops: u8,
    /// Unresponsive nodes reported by earlier hops.
    pub(super) avoid: Vec<NodeId>,
    /// The node we received it from (none at the origin).
    pub(super) prev: Option<PeerInfo>,
    pub(super) payload: Bytes,
    /// The origin's proof, passed on unchanged (see [`super::origin`]).
    pub(super) proof: Option<Box<OriginProof>>,
    /// Fresh rounds of attempts its origin started after using up
    /// [`Config::max_route_attempts`](super::Config::max_route_attempts) (see `custody`);
    /// local to the origin, never sent.
    pub(super) fresh_rounds: u8,
}

/// A message held for the application's [`ForwardVerdict`].
#[derive(Debug, Clone)]
pub(super) struct HeldForward {
    pub(super) token: u64,
    pub(super) msg: RouteMsg,
    pub(super) next: PeerInfo,
    pub(super) excluded: Vec<NodeId>,
}

/// Whether a routing step released the message's sender (`RouteAck { done: true }`): it does
/// when it delivers the message here at once, so the sender needs no separate receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Released {
    /// Delivered here; the sender was released.
    Yes,
    /// Passed on, held or given up; the sender is released later (or never, if it failed).
    No,
}

pub(super) enum Choice {
    Local,
    Peer(PeerInfo),
    Nowhere,
}

/// A message held until the probe of leaf-set member `on` settles.
#[derive(Debug, Clone)]
pub(super) struct Parked {
    pub(super) on: NodeId,
    pub(super) msg: RouteMsg,
    pub(super) excluded: Vec<NodeId>,
    pub(super) attempts: u8,
}

pub(super) const MAX_WAITING: usize = 64;

impl Pastry {
    /// The next hop this node would choose for `key` now, or `None` if it is the key's root by
    /// its own state. This is Pastry's route decision (Rowstron & Druschel 2001, Table 1):
    ///
    /// 1. If `key` is within the leaf set's range: the numerically closest of the leaf set and
    ///    this node.
    /// 2. Else the routing-table entry at row `shared_prefix_len(self, key)`, column = the
    ///    key's next digit.
    /// 3. Else (rare) the numerically closest, among every known peer, of those sharing at
    ///    least as long a prefix with the key as this node and closer to it than this node.
    ///
    /// Ties follow [`Key::cmp_closeness`]. Peers under suspicion (an unanswered probe) are
    /// skipped.
    pub fn next_hop(&self, key: Key) -> Option<PeerInfo> {
        match self.choose(key, &[], true) {
            Choice::Peer(p) => Some(p),
            Choice::Local | Choice::Nowhere => None,
        }
    }

    /// A [`Message::Route`] from `from` (`msg.prev`): checks its origin, routes it one step
    /// and acknowledges it.
    pub(super) fn on_route(&mut self, now: Time, from: PeerInfo, mut msg: RouteMsg) {
        let (origin_id, id, key, hops) = (msg.origin.id, msg.id, msg.key, msg.hops);
        if let Err(reason) = self.check_origin(from, &msg) {
            tracing::debug!(from = %from.id, origin = %origin_id, %reason, "dropping a routed message");
            self.stats.origins_rejected += 1;
            // Released, so that an honest hop that passed on a badly signed message neither
            // routes it again nor takes our silence for a failure.
            self.release(from, origin_id, id);
            self.emit(Event::OriginRejected {
                from: from.id,
                origin: origin_id,
                id,
                reason,
            });
            return;
        }
        if self.auth.is_some() && msg.proof.is_none() && !self.delivers_now(&msg) {
            // From its origin, unsigned, and not ours to deliver at once: the hops after us
            // would need the proof. Its origin still holds it, and signs it on this answer.
            self.send(from, Message::ProofWanted { id });
            return;
        }
        msg.avoid.truncate(super::message::MAX_AVOID);
        msg.avoid.retain(|a| *a != self.me.id);
        let named = std::mem::take(&mut msg.avoid);
        msg.avoid = named
            .into_iter()
            .filter(|id| self.doubt(now, *id))
            .collect();
        if hops > self.config.max_hops {
            tracing::debug!(?key, hops, "dropping a message that exceeded max hops");
            // The drop is deliberate: `done` releases the sender, which would otherwise
            // keep custody and route it again after its custody timeout.
            self.release(from, origin_id, id);
            self.fail_route(origin_id, id, key);
        } else {
            // The receipt goes after the routing step, and not at all if that step
            // already released the sender (delivered here at once): one ack, not two.
            if self.route_step(now, msg, Vec::new(), 0) == Released::No {
                self.acknowledge_receipt(now, from, origin_id, id);
            }
        }
    }

    /// Checks that `msg` comes from the origin it claims: the previous hop is the origin (its
    /// link authenticated it), or the proof verifies. Always passes without an authenticator.
    fn check_origin(&mut self, from: PeerInfo, msg: &RouteMsg) -> Result<(), ProofError> {
        let Some(auth) = self.auth.as_mut() else {
            return Ok(());
        };
        if from.id == msg.origin.id {
            return Ok(());
        }
        let proof = msg.proof.as_ref().ok_or(ProofError::Missing)?;
        self.stats.origins_verified += 1;
        let digest = route_digest(msg.origin.id, msg.id, msg.key, &msg.payload);
        auth.verify(msg.origin.id, &digest, proof)
    }

    /// Whether a routing step would deliver `msg` here at once (as root, with no closer
    /// leaf-set member under suspicion): then it is never passed on from here.
    fn delivers_now(&self, msg: &RouteMsg) -> bool {
        self.is_active()
            && matches!(self.choose(msg.key, &msg.avoid, true), Choice::Local)
            && self.suspected_closer(msg.key).is_none()
    }

    pub(super) fn choose(&self, key: Key, excluded: &[NodeId], allow_self: bool) -> Choice {
        let me = self.me.id;
        let usable = |id: NodeId| !excluded.contains(&id) && !self.is_suspect(id);
        if self.leaf_set.covers(key) {
            let mut best = allow_self.then_some(self.me);
            for slot in self.leaf_set.iter() {
                let id = slot.peer.id;
                if usable(id) && best.map_or(true, |b| key.is_closer(id, b.id)) {
                    best = Some(slot.peer);
                }
            }
            match best {
                Some(p) if p.id == me => return Choice::Local,
                Some(p) => return Choice::Peer(p),
                None => {}
            }
        }
        let row = me.shared_prefix_len(key);
        if row < DIGITS {
            if let Some(slot) = self.table.get(row, usize::from(key.digit(row))) {
                if usable(slot.peer.id) {
                    // A sparse row's entry whose neighbours we know: straight to the one
                    // closest to the key (it routes on if it is not the root after all).
                    // Not if we hold a link to the entry and none to the root: the message
                    // would wait for a handshake (about 0.7 ms of CPU on both ends, and round
                    // trips) where one more hop over a link costs far less, and the root's
                    // answer links the two for the keys that follow.
                    // A message that already met a silent node (`excluded` is not empty) goes
                    // to the entry itself: hints are refreshed once a maintenance period, so
                    // under churn the hinted root's neighbours are often gone too, and each
                    // costs a whole timeout (no RTT is known for them), while the entry's RTT
                    // is known and its silence is hedged (see `hedge`).
                    let hint = if excluded.is_empty() {
                        self.hinted(key, (row, usize::from(key.digit(row))), usable)
                    } else {
                        None
                    };
                    if let Some(root) = hint {
                        if self.is_linked(root.id) || !self.is_linked(slot.peer.id) {
                            return Choice::Peer(root);
                        }
                    }
                    return Choice::Peer(slot.peer);
                }
            }
        }
        // The rare case: the best of every known peer that is at least as good as us.
        let mut best: Option<PeerInfo> = None;
        // Any known node closer than us, whatever its prefix: used only when nothing better
        // exists, so that a node with a hole in its leaf set (the key lies outside its range)
        // does not wrongly deliver as root.
        let mut closer: Option<PeerInfo> = None;
        let known = self
            .leaf_set
            .iter()
            .chain(self.table.iter())
            .chain(self.neighbourhood.iter());
        for slot in known {
            let id = slot.peer.id;
            if !usable(id) {
                continue;
            }
            if allow_self
                && key.is_closer(id, me)
                && closer.map_or(true, |c| key.is_closer(id, c.id))
            {
                closer = Some(slot.peer);
            }
            if allow_self && (key.shared_prefix_len(id) < row || !key.is_closer(id, me)) {
                continue;
            }
            if best.map_or(true, |b| key.is_closer(id, b.id)) {
                best = Some(slot.peer);
            }
        }
        match best.or(closer) {
            Some(p) => Choice::Peer(p),
            None if allow_self => Choice::Local,
            None => Choice::Nowhere,
        }
    }

    /// Whether this node holds a link to `id` (every peer counts as linked without a
    /// [`super::LinkView`], as in the simulator).
    pub(super) fn is_linked(&self, id: NodeId) -> bool {
        self.links
            .as_ref()
            .map_or(true, |links| links.is_linked(id))
    }

    pub(super) fn route_step(
        &mut self,
        now: Time,
        msg: RouteMsg,
        mut excluded: Vec<NodeId>,
        attempts: u8,
    ) -> Released {
        // Sending a message straight back where it came from means our two states disagree
        // (each thinks the other is closer): a loop. Tell the sender what we know (it probes
        // the nodes it is missing) and route around it.
        if let Some(prev) = msg.prev.filter(|_| attempts == 0) {
            if let Choice::Peer(next) = self.choose(msg.key, &msg.avoid, self.is_active()) {
                if next.id == prev.id {
                    let leaf_set = self.leaf_set.peers();
                    self.send(next, Message::Heartbeat { leaf_set });
                    excluded.push(prev.id);
                }
            }
        }
        // Only an active node may be a root (MSPastry's consistent join).
        let skip: Vec<NodeId> = if msg.avoid.is_empty() {
            Vec::new()
        } else {
            msg.avoid.iter().chain(&excluded).copied().collect()
        };
        let skip = if skip.is_empty() { &excluded } else { &skip };
        if self.is_joining() && matches!(self.choose(msg.key, skip, true), Choice::Local) {
            // Our leaf set already routes this key to us: hold it until we are active.
            if self.waiting.len() >= MAX_WAITING {
                let oldest = self.waiting.remove(0);
                self.fail_route(oldest.origin.id, oldest.id, oldest.key);
            }
            self.waiting.push(msg);
            return Released::No;
        }
        // Our own message, first try: a cached root's leaf set may know the key's root.
        let own_first = msg.prev.is_none() && msg.origin.id == self.me.id && attempts == 0;
        let cached = if own_first && self.is_active() {
            self.cached_route(now, msg.key, skip)
        } else {
            None
        };
        let choice = match cached {
            Some(target) => Choice::Peer(target),
            None => self.choose(msg.key, skip, self.is_active()),
        };
        match choice {
            Choice::Local => {
                // Deliver as root only if no closer leaf-set member is merely suspected: an
                // ack that timed out under load or a missed heartbeat does not make it dead,
                // and delivering here as well as there would be a misdelivery and a duplicate.
                match self.suspected_closer(msg.key) {
                    Some(on) if self.parked.len() < MAX_WAITING => {
                        self.parked.push(Parked {
                            on,
                            msg,
                            excluded,
                            attempts,
                        });
                        Released::No
                    }
                    _ => {
                        self.deliver(msg);
                        Released::Yes
                    }
                }
            }
            Choice::Peer(next) => {
                // The same holds for a next hop chosen because the key's root by our leaf set
                // is under probe: the next closest would deliver it as root (it does not
                // suspect the root), so the message waits here until the probe settles.
                if let Some(on) = self.suspected_root_beyond(msg.key, next.id) {
                    if self.parked.len() < MAX_WAITING {
                        self.parked.push(Parked {
                            on,
                            msg,
                            excluded,
                            attempts,
                        });
                        return Released::No;
                    }
                }
                if cached.is_none() {
                    self.note_hole(msg.key, next);
                }
                if own_first && self.config.route_cache_size > 0 {
                    self.await_answer(now, msg.id, msg.key, cached.map(|c| c.id));
                }
                self.note_forward(msg.origin.id, msg.id, msg.key, msg.prev, next.id);
                if self.config.intercept_forwards && attempts == 0 {
                    let token = self.fresh_id();
                    let mut held = msg;
                    let payload = std::mem::take(&mut held.payload);
                    self.emit(Event::Forward {
                        token,
                        key: held.key,
                        origin: held.origin.id,
                        next_hop: next.id,
                        hops: held.hops,
                        payload,
                    });
                    self.held.push(HeldForward {
                        token,
                        msg: held,
                        next,
                        excluded,
                    });
                } else {
                    self.send_route(now, next, msg, excluded, attempts);
                }
                Released::No
            }
            Choice::Nowhere => {
                self.fail_route(msg.origin.id, msg.id, msg.key);
                Released::No
            }
        }
    }

    /// A previous hop names `id` in a message's `avoid` list: a node that did not take the
    /// message in time. That is a claim about a third party, and under load a live node's ack
    /// can be late: this node checks it, and drops nothing on another node's word. A leaf-set
    /// member is probed and avoided until it answers (it may be a key's root, and a message
    /// delivered past it would be misdelivered); a routing-table entry is probed and stays
    /// usable meanwhile. Silence declares either dead.
    ///
    /// Returns whether the message still avoids `id`. It does, unless `id` is a leaf-set member
    /// this node heard from within a probe timeout: then this node's own evidence says it is
    /// alive, and it may well be the key's root whose ack to the previous hop was merely late
    /// (and which delivered the message already). Passing over it would deliver a second copy
    /// at the next closest node; sent to it, a copy it delivered is suppressed there.
    fn doubt(&mut self, now: Time, id: NodeId) -> bool {
        self.route_cache.forget(id);
        self.hints.forget(id);
        if self.heard_within(now, id, self.config.probe_timeout) {
            return !self.leaf_set.contains(id);
        }
        if let Some(slot) = self.leaf_set.get(id) {
            let peer = slot.peer;
            self.start_probe(now, peer, ProbeKind::Member);
        } else if let Some(slot) = self.table.find(id) {
            let peer = slot.peer;
            self.start_probe(now, peer, ProbeKind::Verify);
        }
        true
    }

    /// The leaf-set member closest to `key`, if it is closer than us and being probed.
    pub(super) fn suspected_closer(&self, key: Key) -> Option<NodeId> {
        let mut best: Option<NodeId> = None;
        for slot in self.leaf_set.iter() {
            let id = slot.peer.id;
            if key.is_closer(id, self.me.id)
                && best.map_or(true, |b| key.is_closer(id, b))
                && self.probes.iter().any(|p| {
                    p.peer.id == id && matches!(p.kind, ProbeKind::Member | ProbeKind::Verify)
                })
            {
                best = Some(id);
            }
        }
        best
    }

    /// The leaf-set member closest to `key`, if the leaf set covers `key`, it is closer than
    /// both `next` and us, and it is being probed: the key's root by our state, which a route
    /// to `next` would pass over.
    pub(super) fn suspected_root_beyond(&self, key: Key, next: NodeId) -> Option<NodeId> {
        if !self.leaf_set.covers(key) {
            return None;
        }
        self.suspected_closer(key)
            .filter(|suspect| key.is_closer(*suspect, next))
    }

    /// Routes again the parked messages whose suspect's probe has settled.
    pub(super) fn retry_parked(&mut self, now: Time) {
        if self.parked.is_empty() {
            return;
        }
        let (ready, still): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| !self.probes.iter().any(|probe| probe.peer.id == p.on));
        self.parked = still;
        for mut p in ready {
            // Alive (it answered): it is a candidate again; dead: it is gone from our state.
            // The same holds for every other leaf-set member excluded earlier (they were
            // probed when excluded): one still in the leaf set and not under probe answered.
            let settled = |this: &Self, id: NodeId| {
                id == p.on
                    || (this.leaf_set.contains(id)
                        && !this.probes.iter().any(|probe| probe.peer.id == id))
            };
            p.excluded.retain(|id| !settled(self, *id));
            p.msg.avoid.retain(|id| !settled(self, *id));
            self.route_step(now, p.msg, p.excluded, p.attempts);
        }
    }

    /// Delivers `msg` here, unless its `(origin, id)` was delivered already. Its origin was
    /// checked on arrival ([`Self::on_route`]), so the duplicate filter records only verified
    /// pairs: forged ones cannot push a real origin's ids out of it, nor take their place.
    pub(super) fn deliver(&mut self, msg: RouteMsg) {
        if let Some(prev) = msg.prev {
            self.release(prev, msg.origin.id, msg.id);
        }
        let ident = (msg.origin.id, msg.id);
        if self.delivered.contains(&ident) {
            self.stats.duplicates_suppressed += 1;
            return;
        }
        if self.delivered.len() >= self.config.dedup_capacity.max(1) {
            self.delivered.pop_front();
        }
        self.delivered.push_back(ident);
        self.stats.delivered += 1;
        tracing::trace!(
            me = %self.me.id,
            origin = %msg.origin.id,
            id = msg.id,
            hops = msg.hops,
            prev = ?msg.prev.map(|p| p.id),
            avoid = ?msg.avoid,
            "delivering as root"
        );
        self.answer_origin(msg.origin, msg.prev, msg.id, msg.key);
        self.emit(Event::Deliver {
            key: msg.key,
            origin: msg.origin.id,
            id: msg.id,
            hops: msg.hops,
            payload: msg.payload,
        });
    }

    /// Gives up a message here. Only its origin hears of it ([`Event::RouteFailed`]): the id
    /// of a message from elsewhere means nothing to this node's application, and a peer could
    /// otherwise make it report failures of messages it never sent.
    pub(super) fn fail_route(&mut self, origin: NodeId, id: u64, key: Key) {
        self.stats.routes_failed += 1;
        if origin == self.me.id {
            self.emit(Event::RouteFailed { id, key });
        }
    }
}
