//! `Pastry` itself: the state of one node, its constructor and accessors, and the entry points
//! (commands, `handle_*`, `poll_*`). The sub-protocols live in their own modules.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::id::{Key, NodeId, DIGITS};

use super::candidates::{Measuring, Queued};
use super::custody::{HeldReceipt, InFlight};
use super::hints::Hints;
use super::join::{JoinMsg, Joining};
use super::liveness::{PendingProbe, ProbeKind, RTT_CACHE};
use super::origin::OriginAuth;
use super::route_cache::{LinkView, RouteCache};
use super::routing::{HeldForward, Parked, RouteMsg};
#[cfg(doc)]
use super::timers::Timer;
use super::timers::TimerTable;
use super::{
    Config, Event, ForwardVerdict, LeafSet, Message, NeighbourhoodSet, PeerInfo, RoutingTable,
    Stats, Time, Transmit,
};

#[derive(Debug, Clone)]
pub(super) enum Phase {
    Idle,
    Joining(Joining),
    Active,
    Left,
}

/// One Pastry node's protocol state (sans-IO).
///
/// ```
/// use std::time::Duration;
/// use wendy::id::{Key, NodeId};
/// use wendy::pastry::{Config, Event, Pastry, PeerInfo, Time};
///
/// let me = PeerInfo { id: NodeId::from_u128(7), addr: "127.0.0.1:4000".parse().unwrap() };
/// let mut node = Pastry::new(me, Config::default(), 1);
/// node.bootstrap_alone(Time::ZERO);
/// assert!(node.is_active());
/// let id = node.route(Time::ZERO, Key::from_u128(99), b"hi".to_vec());
/// // Alone, this node is the root of every key.
/// let delivered = std::iter::from_fn(|| node.poll_event())
///     .any(|e| matches!(e, Event::Deliver { id: got, hops: 0, .. } if got == id));
/// assert!(delivered);
/// ```
#[derive(Debug)]
pub struct Pastry {
    pub(super) me: PeerInfo,
    pub(super) config: Config,
    pub(super) rng: ChaCha8Rng,
    pub(super) phase: Phase,
    pub(super) leaf_set: LeafSet,
    pub(super) table: RoutingTable,
    pub(super) neighbourhood: NeighbourhoodSet,
    /// Sends and measurements for the driver ([`Pastry::poll_transmit`]).
    pub(super) transmits: VecDeque<Transmit>,
    /// Deliveries, forwards and notifications for the application ([`Pastry::poll_event`]).
    pub(super) events: VecDeque<Event>,
    pub(super) stats: Stats,
    pub(super) next_id: u64,
    /// Draws the ids of routed messages this node originates: random, so nobody can guess the
    /// next `(origin, id)` pair (a stream of its own, so drawing ids leaves the choices
    /// `rng` makes unchanged).
    pub(super) route_ids: ChaCha8Rng,
    /// Signs the messages this node originates and checks those of other origins; `None`
    /// runs unauthenticated (see [`Pastry::set_origin_auth`]).
    pub(super) auth: Option<Box<dyn OriginAuth>>,
    /// Which peers the runtime holds links to; `None` takes every peer as linked (see
    /// [`Pastry::set_link_view`]).
    pub(super) links: Option<Box<dyn LinkView>>,
    pub(super) in_flight: Vec<InFlight>,
    /// Receipts held back a short while, in case the message's `done` can go instead.
    pub(super) receipts: Vec<HeldReceipt>,
    pub(super) held: Vec<HeldForward>,
    pub(super) delivered: VecDeque<(NodeId, u64)>,
    pub(super) probes: Vec<PendingProbe>,
    /// Recently dead nodes: not re-admitted from second-hand leaf sets for a while.
    pub(super) dead: VecDeque<(NodeId, Time)>,
    /// Leaf-set members we found dead or believed so lately: our own claims (see
    /// [`super::witness`]).
    pub(super) failed_lately: VecDeque<(NodeId, Time)>,
    /// Peers we asked the driver to measure (bounded: see `candidates`).
    pub(super) measuring: Vec<Measuring>,
    /// Candidates waiting for a measurement (bounded: see `candidates`).
    pub(super) measure_queue: VecDeque<Queued>,
    /// Immediate neighbours (left, right), watched for silence ([`Timer::WatchLeft`],
    /// [`Timer::WatchRight`]).
    pub(super) watch: [Option<NodeId>; 2],
    /// Every deadline (see [`TimerTable`]).
    pub(super) timers: TimerTable,
    pub(super) maintenance_row: usize,
    /// Until then, peers newly entering the routing table are told we joined.
    pub(super) announce_until: Time,
    /// Recently measured RTTs (microseconds), so a peer is not measured twice in a row.
    pub(super) rtt_cache: VecDeque<(NodeId, u32)>,
    /// Outstanding row requests: (peer, row, whether to measure candidates for occupied slots).
    pub(super) row_requests: Vec<(NodeId, u8, bool)>,
    /// Rows whose empty slot was met while routing and already asked about this period.
    pub(super) holes_asked: u32,
    /// Messages for our keys that arrived while we were joining, routed again once active.
    pub(super) waiting: Vec<RouteMsg>,
    /// Messages we would deliver as root only because a closer leaf-set member is under
    /// suspicion: held until its probe settles (alive: sent to it; dead: delivered here).
    pub(super) parked: Vec<Parked>,
    /// Nodes that announced themselves to us lately (newcomers whose news we may pass on).
    pub(super) announced: VecDeque<(NodeId, Time)>,
    /// Hole-filling passes done as the overlay grew, by row (see `Pastry::fill_as_grown`).
    pub(super) growth_passes: [u8; DIGITS],
    /// Roots that answered our messages, and our messages awaiting an answer.
    pub(super) route_cache: RouteCache,
    /// The nearest neighbours of our sparse rows' entries (see [`super::hints`]).
    pub(super) hints: Hints,
}

impl Pastry {
    /// A node with identity `me`, not yet part of an overlay. `seed` seeds its private RNG
    /// (timer jitter, choice of maintenance peers): the same seed gives the same behaviour.
    pub fn new(me: PeerInfo, config: Config, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let next_id = rng.gen::<u64>() >> 16;
        let mut route_ids = rng.clone();
        route_ids.set_stream(1);
        Self {
            me,
            leaf_set: LeafSet::new(me.id, config.leaf_set_size / 2),
            table: RoutingTable::new(me.id),
            neighbourhood: NeighbourhoodSet::new(config.neighbourhood_size),
            config,
            rng,
            phase: Phase::Idle,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            next_id,
            route_ids,
            auth: None,
            links: None,
            in_flight: Vec::new(),
            receipts: Vec::new(),
            held: Vec::new(),
            delivered: VecDeque::new(),
            probes: Vec::new(),
            dead: VecDeque::new(),
            failed_lately: VecDeque::new(),
            measuring: Vec::new(),
            measure_queue: VecDeque::new(),
            watch: [None, None],
            timers: TimerTable::default(),
            maintenance_row: 0,
            announce_until: Time::ZERO,
            rtt_cache: VecDeque::new(),
            row_requests: Vec::new(),
            holes_asked: 0,
            waiting: Vec::new(),
            parked: Vec::new(),
            announced: VecDeque::new(),
            growth_passes: [0; DIGITS],
            route_cache: RouteCache::default(),
            hints: Hints::default(),
        }
    }

    /// Diagnostics: puts `peer`, measured at round-trip time `rtt`, into the routing-table slot
    /// its id qualifies for, replacing the entry there whatever its RTT. The protocol's own
    /// path ([`Self::handle_proximity`]) replaces an entry only with a nearer peer, by the
    /// [`Config::proximity_hysteresis`] margin; this entry point lets a tool that knows the
    /// true delays install ideal tables (`wendy sim --oracle-tables` measures what perfect
    /// proximity neighbour selection would buy). It sends nothing, reports no event and leaves
    /// the leaf set and the neighbourhood set alone.
    ///
    /// Returns whether `peer` is now in the table (`false` only for this node's own id, which
    /// has no slot).
    ///
    /// ```
    /// use std::time::Duration;
    /// use wendy::id::NodeId;
    /// use wendy::pastry::{Config, Pastry, PeerInfo, Time};
    ///
    /// let peer = |id| PeerInfo { id: NodeId::from_u128(id), addr: "10.0.0.1:4000".parse().unwrap() };
    /// let mut node = Pastry::new(peer(1 << 120), Config::default(), 1);
    /// node.bootstrap_alone(Time::ZERO);
    /// assert!(node.replace_table_entry(peer(2 << 120), Duration::from_millis(80)));
    /// // A farther peer for the same slot still replaces it.
    /// assert!(node.replace_table_entry(peer((2 << 120) + 1), Duration::from_millis(200)));
    /// assert_eq!(node.routing_table().len(), 1);
    /// assert!(!node.replace_table_entry(peer(1 << 120), Duration::from_millis(1)));
    /// ```
    pub fn replace_table_entry(&mut self, peer: PeerInfo, rtt: Duration) -> bool {
        let Some((row, column)) = self.table.position(peer.id) else {
            return false;
        };
        if let Some(old) = self.table.get(row, column).map(|s| s.peer.id) {
            if old != peer.id {
                self.table.remove(old);
            }
        }
        // Hysteresis 0: with the old occupant gone, the slot takes `peer`.
        self.table.insert(peer, Some(rtt), 0.0);
        true
    }

    /// Installs the authenticator that signs the messages this node routes and checks the
    /// origin of those it receives (see [`super::origin`]). The node runtime installs one
    /// backed by the node's ed25519 identity key, so [`Event::Deliver`] reports an origin the
    /// node has verified.
    ///
    /// Without one (the default) the node runs **unauthenticated**: it sends no proofs and
    /// believes every message's origin. Only the simulator runs so (its nodes have no keys,
    /// and all of them are honest); a node with an authenticator accepts a message without a
    /// proof only from its origin itself.
    pub fn set_origin_auth(&mut self, auth: Box<dyn OriginAuth>) {
        self.auth = Some(auth);
    }

    /// Installs what the runtime knows of its links: the route cache then sends only to
    /// members this node is linked to (see the `route_cache` module), and a neighbour hint is
    /// followed to an unlinked root only if the routing-table entry it belongs to is unlinked
    /// too. Without one (the
    /// default, and the simulator's, which has no links) every peer counts as linked.
    pub fn set_link_view(&mut self, links: Box<dyn LinkView>) {
        self.links = Some(links);
    }

    /// Whether an authenticator is installed ([`Self::set_origin_auth`]).
    pub fn authenticates_origins(&self) -> bool {
        self.auth.is_some()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// This node's id and address.
    pub fn me(&self) -> PeerInfo {
        self.me
    }

    /// This node advertises `addr` from now on (it turned private or public while running):
    /// the messages it sends carry it; peers learn it as they measure this node again.
    pub fn set_address(&mut self, addr: std::net::SocketAddr) {
        self.me.addr = addr;
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this node has joined (or bootstrapped alone) and not left: only an active node
    /// delivers messages as root and is admitted to other nodes' leaf sets.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active)
    }

    /// Whether a join is in progress.
    pub fn is_joining(&self) -> bool {
        matches!(self.phase, Phase::Joining(_))
    }

    /// The leaf set.
    pub fn leaf_set(&self) -> &LeafSet {
        &self.leaf_set
    }

    /// The routing table.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.table
    }

    /// The neighbourhood set.
    pub fn neighbourhood(&self) -> &NeighbourhoodSet {
        &self.neighbourhood
    }

    /// Counters of messages sent and protocol activity.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Routed messages this node passed on and still holds in custody: their next hop has not
    /// yet acknowledged that it passed them on (`RouteAck { done: true }`).
    pub fn in_custody(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `id` is in any of the three structures.
    pub fn knows(&self, id: NodeId) -> bool {
        self.leaf_set.contains(id) || self.table.contains(id) || self.neighbourhood.contains(id)
    }

    /// Starts a new overlay with this node as its only member.
    pub fn bootstrap_alone(&mut self, now: Time) {
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.phase = Phase::Active;
        self.start_timers(now);
        self.emit(Event::Joined);
        self.sync_timers();
    }

    /// Joins the overlay through `via`, any active member (ideally a nearby one: its
    /// neighbourhood set seeds ours). Completes with [`Event::Joined`].
    pub fn join(&mut self, now: Time, via: PeerInfo) {
        if !matches!(self.phase, Phase::Idle) || via.id == self.me.id {
            return;
        }
        self.phase = Phase::Joining(Joining {
            bootstrap: via,
            attempt: 0,
            got_leaf_set: false,
            restarts: 0,
        });
        self.send_join(now, via);
        self.sync_timers();
    }

    /// Routes `payload` towards `key`; returns the message id that [`Event::Deliver`] and
    /// [`Event::RouteFailed`] carry. A node that is not active fails the message at once.
    pub fn route(&mut self, now: Time, key: Key, payload: impl Into<Bytes>) -> u64 {
        let id = self.fresh_route_id();
        if self.is_active() {
            let msg = self.originate(id, key, 0, payload.into());
            self.route_step(now, msg, Vec::new(), 0);
        } else {
            self.fail_route(self.me.id, id, key);
        }
        self.sync_timers();
        id
    }

    /// Leaves gracefully: tells every peer that may hold this node in its state (whose
    /// members report [`Event::NodeLeft`] at once) and stops. Messages in flight are dropped.
    ///
    /// The leaf set alone is not enough: a node that has just joined is already in the leaf
    /// sets of peers it is still probing (they heard its announcement), and routing-table
    /// entries are held both ways. Each of those is told once, so the cost is bounded by this
    /// node's own state.
    pub fn leave(&mut self, _now: Time) {
        if self.is_active() {
            let leaf_set = self.leaf_set.peers();
            let mut told: Vec<PeerInfo> = Vec::new();
            let others = self.table.iter().map(|s| s.peer);
            let probed = self.probes.iter().map(|p| p.peer);
            for peer in leaf_set.iter().copied().chain(probed).chain(others) {
                if peer.id == self.me.id || told.iter().any(|t| t.id == peer.id) {
                    continue;
                }
                told.push(peer);
            }
            for peer in told {
                self.send(
                    peer,
                    Message::Leave {
                        leaf_set: leaf_set.clone(),
                    },
                );
            }
        }
        self.phase = Phase::Left;
        self.timers.stop_all();
        self.in_flight.clear();
        self.receipts.clear();
        self.held.clear();
        self.waiting.clear();
        self.parked.clear();
        self.probes.clear();
        self.measuring.clear();
        self.measure_queue.clear();
        self.route_cache.clear();
        self.hints.clear();
    }

    /// Answers an [`Event::Forward`].
    pub fn resume_forward(&mut self, now: Time, token: u64, verdict: ForwardVerdict) {
        let Some(index) = self.held.iter().position(|h| h.token == token) else {
            return;
        };
        let held = self.held.swap_remove(index);
        match verdict {
            ForwardVerdict::Continue(payload) => {
                let mut msg = held.msg;
                msg.payload = payload;
                self.send_route(now, held.next, msg, held.excluded, 0);
            }
            ForwardVerdict::Modified(payload) if self.auth.is_some() => {
                // The origin's signature no longer covers these bytes: we vouch for them now,
                // as the origin of a message of our own. Its predecessor is done with the
                // original.
                let old = held.msg;
                if let Some(prev) = old.prev {
                    self.release(prev, old.origin.id, old.id);
                }
                let id = self.fresh_route_id();
                let mut msg = self.originate(id, old.key, old.hops, payload);
                msg.avoid = old.avoid;
                self.send_route(now, held.next, msg, held.excluded, 0);
            }
            ForwardVerdict::Modified(payload) => {
                let mut msg = held.msg;
                msg.payload = payload;
                self.send_route(now, held.next, msg, held.excluded, 0);
            }
            ForwardVerdict::Drop => {
                if let Some(prev) = held.msg.prev {
                    self.release(prev, held.msg.origin.id, held.msg.id);
                }
            }
        }
        self.sync_timers();
    }

    /// A message from `from`, whose id the transport authenticated.
    pub fn handle_message(&mut self, now: Time, from: PeerInfo, msg: Message) {
        self.on_message(now, from, msg);
        self.sync_timers();
    }

    fn on_message(&mut self, now: Time, from: PeerInfo, msg: Message) {
        if matches!(self.phase, Phase::Idle | Phase::Left) || from.id == self.me.id {
            return;
        }
        let suspicion_ended = self.heard_from(now, from.id);
        let Some(msg) = self.screen(from, msg) else {
            return;
        };
        match msg {
            Message::Join {
                id,
                joiner,
                next_row,
                hops,
            } => self.on_join(
                now,
                from,
                JoinMsg {
                    id,
                    joiner,
                    next_row,
                    hops,
                },
            ),
            Message::JoinState {
                rows,
                neighbourhood,
                leaf_set,
            } => self.on_join_state(now, from, rows, neighbourhood, leaf_set),
            Message::Announce { leaf_set } => self.on_announce(now, from, &leaf_set),
            Message::Probe {
                nonce,
                active,
                leaf_set,
                failed,
            } => self.on_probe(now, from, nonce, active, &leaf_set, &failed),
            Message::ProbeReply {
                active,
                leaf_set,
                failed,
                ..
            } => self.on_probe_reply(now, from, active, &leaf_set, &failed),
            Message::Heartbeat { leaf_set } => self.on_heartbeat(now, from, &leaf_set),
            Message::NodeFailed { node, leaf_set } => {
                self.on_node_failed(now, from, node, &leaf_set);
            }
            Message::RowRequest { row } => self.on_row_request(now, from, row),
            Message::RowReply { row, entries } => self.on_row_reply(now, from, row, entries),
            Message::Route {
                id,
                key,
                origin,
                hops,
                avoid,
                payload,
                proof,
            } => {
                let msg = RouteMsg {
                    id,
                    key,
                    origin,
                    hops,
                    avoid,
                    prev: Some(from),
                    payload,
                    proof,
                    fresh_rounds: 0,
                };
                self.on_route(now, from, msg);
            }
            Message::RouteAck { origin, id, done } => {
                if !self.on_route_ack(now, from, origin, id, done) && !suspicion_ended {
                    // An ack for nothing we hold changes nothing: no state to re-check. A late
                    // one that ended its sender's suspicion does: the messages parked on the
                    // sender go to it now.
                    return;
                }
            }
            Message::Leave { leaf_set } => self.on_leave(now, from, &leaf_set),
            Message::ProofWanted { id } => {
                if !self.on_proof_wanted(now, from, id) && !suspicion_ended {
                    return;
                }
            }
            Message::RootAnswer { id, key, leaf_set } => {
                // Changes no membership state: nothing to re-check.
                self.on_root_answer(now, from, id, key, leaf_set);
                return;
            }
            Message::RootAnswerRelay {
                origin,
                id,
                key,
                root,
                leaf_set,
            } => {
                // Changes no membership state either.
                self.on_root_answer_relay(now, from, origin, id, key, root, leaf_set);
                return;
            }
        }
        // The sender may have just entered our state.
        self.mark_heard(now, from.id);
        self.check_join_complete(now);
        self.retry_parked(now);
    }

    /// A round-trip-time measurement of `peer` (the answer to [`Transmit::Measure`], or a fresh
    /// sample of a peer already in our state).
    pub fn handle_proximity(&mut self, now: Time, peer: PeerInfo, rtt: Duration) {
        if matches!(self.phase, Phase::Idle | Phase::Left) || peer.id == self.me.id {
            return;
        }
        let requested = self.take_measuring(peer.id);
        if requested {
            self.pump_measurements(now);
        }
        if !requested && !self.knows(peer.id) {
            self.sync_timers();
            return;
        }
        if self.rtt_cache.len() >= RTT_CACHE {
            self.rtt_cache.pop_front();
        }
        self.rtt_cache
            .push_back((peer.id, super::routing_table::rtt_micros(rtt)));
        let rtt = self.config.proximity.then_some(rtt);
        self.offer(now, peer, rtt);
        self.sync_timers();
    }

    /// The transport lost its link to `peer`, or could not dial it (also for an
    /// [`Transmit::Measure`]): suspect it (probe it, so it is declared dead if it stays silent)
    /// and re-route messages waiting for its acknowledgement. A peer we were only measuring
    /// (a candidate, not in our state) is not measured or admitted again for a while.
    pub fn handle_link_down(&mut self, now: Time, peer: NodeId) {
        self.on_link_down(now, peer);
        self.sync_timers();
    }

    fn on_link_down(&mut self, now: Time, peer: NodeId) {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        self.cached_link_down(peer);
        if self.take_measuring(peer) {
            if !self.knows(peer) {
                self.note_dead(now, peer);
            }
            self.pump_measurements(now);
        }
        if !self.is_active() {
            return;
        }
        let info = self
            .leaf_set
            .get(peer)
            .or_else(|| self.table.find(peer))
            .or_else(|| self.neighbourhood.iter().find(|s| s.peer.id == peer))
            .map(|s| s.peer);
        match info {
            Some(info) => self.start_probe(now, info, ProbeKind::Member),
            // Named only in a neighbour hint: nothing here probes it, so without this a route
            // (and `next_hop`) would go on choosing it from the hint until the hint is
            // refreshed. The entry's next probe relearns the hint if the node lives.
            None => self.hints.forget(peer),
        }
        for f in &mut self.in_flight {
            if f.next.id == peer {
                f.deadline = now;
            }
        }
    }

    /// The path under the link to `peer` is being replaced (a relayed link moving to another
    /// of the peer's relays): what was sent to it since the old path failed is lost with that
    /// path, not ignored by the peer. Its probes and the messages waiting for its
    /// acknowledgement get their whole timeout again, counted from `now`, so the peer is not
    /// taken for dead (and its keys delivered elsewhere) while its path moves. The runtime
    /// calls this once per move, and a move needs a relay that accepts it, so a dead peer
    /// is still declared dead.
    pub fn handle_path_change(&mut self, now: Time, peer: NodeId) {
        let probe = self.hop_timeout(peer, self.config.probe_timeout);
        for p in self
            .probes
            .iter_mut()
            .filter(|p| p.peer.id == peer && !p.held)
        {
            p.deadline = p.deadline.max(now + probe);
        }
        let ack = self.hop_timeout(peer, self.config.ack_timeout);
        for f in self
            .in_flight
            .iter_mut()
            .filter(|f| f.next.id == peer && !f.received)
        {
            f.deadline = f.deadline.max(now + ack);
        }
        self.sync_timers();
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.expire_timers(now);
        self.check_join_complete(now);
        self.retry_parked(now);
        self.sync_timers();
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        match self.phase {
            Phase::Idle | Phase::Left => None,
            Phase::Joining(_) | Phase::Active => self.timers.next(),
        }
    }

    /// The next send or measurement to carry out, if any. Drain after every call.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let next = self.transmits.pop_front();
        if next.is_none() && self.transmits.capacity() > 32 {
            // A join's burst of announcements must not pin memory in 100,000 idle nodes.
            self.transmits = VecDeque::new();
        }
        next
    }

    /// The next event for the application, if any. Drain after every call.
    pub fn poll_event(&mut self) -> Option<Event> {
        let next = self.events.pop_front();
        if next.is_none() && self.events.capacity() > 32 {
            self.events = VecDeque::new();
        }
        next
    }

    /// A random id for a routed message this node originates.
    pub(super) fn fresh_route_id(&mut self) -> u64 {
        self.route_ids.gen()
    }

    /// A message this node originates (signed when it is first sent to a peer, if need be:
    /// see `Pastry::send_route`).
    pub(super) fn originate(&mut self, id: u64, key: Key, hops: u8, payload: Bytes) -> RouteMsg {
        RouteMsg {
            id,
            key,
            origin: self.me,
            hops,
            avoid: Vec::new(),
            prev: None,
            payload,
            proof: None,
            fresh_rounds: 0,
        }
    }

    pub(super) fn fresh_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    pub(super) fn send(&mut self, to: PeerInfo, msg: Message) {
        let counter = &mut self.stats.sent[msg.kind() as usize];
        counter.msgs += 1;
        counter.bytes += msg.encoded_len() as u64;
        self.transmits.push_back(Transmit::Send { to, msg });
    }

    pub(super) fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }
}
