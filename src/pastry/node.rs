//! The Pastry protocol state machine of one node.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::id::{Key, NodeId, DIGITS};

use super::{
    LeafSet, Message, MessageKind, NeighbourhoodSet, PeerInfo, RoutingTable, Side, Slot, Time,
};

/// Tunables. [`Config::default`] gives the paper's structure sizes (b = 4, L = 16, M = 32) and
/// timers chosen to keep steady-state control traffic well under 0.5 messages per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Leaf-set size L (L/2 each side). Default 16.
    pub leaf_set_size: usize,
    /// Neighbourhood-set size M. Default 32.
    pub neighbourhood_size: usize,
    /// Use measured round-trip times to choose routing-table entries (proximity neighbour
    /// selection). When false no measurements are requested and the first peer found for a
    /// slot keeps it. Default true.
    pub proximity: bool,
    /// A slot is replaced only if the newcomer's RTT is below `old * (1 - h)`. Default 0.1.
    pub proximity_hysteresis: f64,
    /// Period of the leaf-set heartbeat each node sends its two immediate neighbours, and of
    /// leaf-set repair checks. Default 15 s.
    pub probe_period: Duration,
    /// How long to wait for a probe reply (and the slack after a missed heartbeat before the
    /// neighbour is probed). Default 3 s.
    pub probe_timeout: Duration,
    /// Probe retransmissions before a silent node is declared dead. Default 1.
    pub probe_retries: u8,
    /// Per-hop acknowledgement timeout for routed messages and joins. Default 1 s.
    pub ack_timeout: Duration,
    /// Attempts (first try plus re-routes) per hop before a message is given up. Default 5.
    pub max_route_attempts: u8,
    /// Messages that have taken more hops than this are dropped (loop guard). Default 40.
    pub max_hops: u8,
    /// Period of routing-table maintenance: ask a random entry of one row for its row and
    /// measure the candidates. Default 60 s.
    pub maintenance_period: Duration,
    /// Emit [`Output::Forward`] before forwarding and wait for [`Pastry::resume_forward`].
    /// Default false.
    pub intercept_forwards: bool,
    /// A join not complete after this long is restarted. Default 20 s.
    pub join_timeout: Duration,
    /// How many recently delivered `(origin, id)` pairs are remembered to drop duplicates.
    /// Default 128.
    pub dedup_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            leaf_set_size: 16,
            neighbourhood_size: 32,
            proximity: true,
            proximity_hysteresis: 0.1,
            probe_period: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(3),
            probe_retries: 1,
            ack_timeout: Duration::from_secs(1),
            max_route_attempts: 5,
            max_hops: 40,
            maintenance_period: Duration::from_secs(60),
            intercept_forwards: false,
            join_timeout: Duration::from_secs(20),
            dedup_capacity: 128,
        }
    }
}

/// An effect for the driver to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Deliver `msg` to `to` (the driver dials it if needed).
    Send {
        /// The destination peer.
        to: PeerInfo,
        /// The message.
        msg: Message,
    },
    /// Measure the round-trip time to `peer`, then call [`Pastry::handle_proximity`]. If the
    /// peer cannot be reached, do nothing.
    Measure {
        /// The peer to measure.
        peer: PeerInfo,
    },
    /// This node is the root of `key`: hand the message to the application.
    Deliver {
        /// The destination key.
        key: Key,
        /// The node that routed the message.
        origin: NodeId,
        /// The origin's message id.
        id: u64,
        /// Overlay hops the message took.
        hops: u8,
        /// The application payload.
        payload: Vec<u8>,
    },
    /// (Only with [`Config::intercept_forwards`].) The message is about to be forwarded to
    /// `next_hop`; answer with [`Pastry::resume_forward`] and this `token`.
    Forward {
        /// Identifies the held message.
        token: u64,
        /// The destination key.
        key: Key,
        /// The node that routed the message.
        origin: NodeId,
        /// The chosen next hop.
        next_hop: NodeId,
        /// Hops taken so far.
        hops: u8,
        /// The application payload (hand it back, possibly modified).
        payload: Vec<u8>,
    },
    /// Something the application may want to know.
    Event(Event),
}

/// The application's answer to [`Output::Forward`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardVerdict {
    /// Forward the message with this (possibly modified) payload.
    Continue(Vec<u8>),
    /// Drop the message.
    Drop,
}

/// A change the application may want to know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// This node became active: its leaf set is confirmed and it may deliver as root.
    Joined,
    /// The leaf set's membership changed.
    LeafSetChanged,
    /// A node entered this node's state (leaf set, routing table or neighbourhood set).
    NodeJoined(NodeId),
    /// A node left this node's leaf set because it died or left gracefully.
    NodeLeft(NodeId),
    /// A message originated or forwarded here was given up after
    /// [`Config::max_route_attempts`] attempts or [`Config::max_hops`] hops.
    RouteFailed {
        /// The origin's message id.
        id: u64,
        /// The destination key.
        key: Key,
    },
}

/// Messages and estimated bytes (the postcard encoding's length) of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Messages.
    pub msgs: u64,
    /// Bytes (see [`Message::encoded_len`]).
    pub bytes: u64,
}

impl Counter {
    fn add(&mut self, other: Self) {
        self.msgs += other.msgs;
        self.bytes += other.bytes;
    }
}

/// Counters of one node's activity, for the simulator's reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent, indexed by `MessageKind as usize`.
    pub sent: [Counter; MessageKind::COUNT],
    /// RTT measurements requested ([`Output::Measure`]).
    pub measures: u64,
    /// Messages delivered here as root.
    pub delivered: u64,
    /// Route messages sent to a next hop (first tries and re-routes).
    pub forwarded: u64,
    /// Hops that timed out and were re-routed.
    pub reroutes: u64,
    /// Messages given up ([`Event::RouteFailed`]).
    pub routes_failed: u64,
    /// Duplicate deliveries suppressed.
    pub duplicates_suppressed: u64,
    /// Nodes this node declared dead after unanswered probes.
    pub declared_dead: u64,
    /// Leaf-set repair requests (probes to the farthest leaf of a short side).
    pub leaf_repairs: u64,
    /// Routing-table repair requests after a slot's node was found dead.
    pub table_repairs: u64,
    /// Joins restarted after [`Config::join_timeout`].
    pub join_restarts: u64,
}

impl Stats {
    /// Messages and bytes sent of `kind`.
    pub fn sent_of(&self, kind: MessageKind) -> Counter {
        self.sent[kind as usize]
    }

    /// Everything sent.
    pub fn total(&self) -> Counter {
        let mut total = Counter::default();
        for c in self.sent {
            total.add(c);
        }
        total
    }

    /// Overlay maintenance traffic sent (every kind with [`MessageKind::is_control`]).
    pub fn control(&self) -> Counter {
        let mut total = Counter::default();
        for kind in MessageKind::ALL.into_iter().filter(|k| k.is_control()) {
            total.add(self.sent_of(kind));
        }
        total
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Joining(Joining),
    Active,
    Left,
}

#[derive(Debug, Clone)]
struct Joining {
    bootstrap: PeerInfo,
    attempt: u64,
    deadline: Time,
    got_leaf_set: bool,
    restarts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    /// A node in our state that may have failed: silence declares it dead.
    Member,
    /// A node learned second hand (or a joiner's leaf-set candidate): a reply admits it.
    Candidate,
}

#[derive(Debug, Clone)]
struct PendingProbe {
    peer: PeerInfo,
    deadline: Time,
    retries_left: u8,
    kind: ProbeKind,
}

#[derive(Debug, Clone)]
struct RouteMsg {
    id: u64,
    key: Key,
    origin: PeerInfo,
    /// Hops taken when it reached this node.
    hops: u8,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct JoinMsg {
    id: u64,
    joiner: PeerInfo,
    next_row: u8,
    hops: u8,
}

#[derive(Debug, Clone)]
enum Carried {
    Route(RouteMsg),
    Join(JoinMsg),
}

impl Carried {
    fn ident(&self) -> (NodeId, u64) {
        match self {
            Self::Route(m) => (m.origin.id, m.id),
            Self::Join(j) => (j.joiner.id, j.id),
        }
    }
}

/// A message sent to a next hop and not yet acknowledged.
#[derive(Debug, Clone)]
struct InFlight {
    carried: Carried,
    next: PeerInfo,
    deadline: Time,
    attempts: u8,
    excluded: Vec<NodeId>,
}

/// A message held for the application's [`ForwardVerdict`].
#[derive(Debug, Clone)]
struct HeldForward {
    token: u64,
    msg: RouteMsg,
    next: PeerInfo,
    excluded: Vec<NodeId>,
}

enum Choice {
    Local,
    Peer(PeerInfo),
    Nowhere,
}

/// One Pastry node's protocol state (sans-IO).
///
/// ```
/// use std::time::Duration;
/// use wendy::id::{Key, NodeId};
/// use wendy::pastry::{Config, Output, Pastry, PeerInfo, Time};
///
/// let me = PeerInfo { id: NodeId::from_u128(7), addr: "127.0.0.1:4000".parse().unwrap() };
/// let mut node = Pastry::new(me, Config::default(), 1);
/// node.bootstrap_alone(Time::ZERO);
/// assert!(node.is_active());
/// let id = node.route(Time::ZERO, Key::from_u128(99), b"hi".to_vec());
/// // Alone, this node is the root of every key.
/// let delivered = std::iter::from_fn(|| node.poll_output())
///     .any(|o| matches!(o, Output::Deliver { id: got, hops: 0, .. } if got == id));
/// assert!(delivered);
/// ```
#[derive(Debug)]
pub struct Pastry {
    me: PeerInfo,
    config: Config,
    rng: ChaCha8Rng,
    phase: Phase,
    leaf_set: LeafSet,
    table: RoutingTable,
    neighbourhood: NeighbourhoodSet,
    outputs: VecDeque<Output>,
    stats: Stats,
    next_id: u64,
    in_flight: Vec<InFlight>,
    held: Vec<HeldForward>,
    delivered: VecDeque<(NodeId, u64)>,
    probes: Vec<PendingProbe>,
    /// Recently dead nodes: not re-admitted from second-hand leaf sets for a while.
    dead: VecDeque<(NodeId, Time)>,
    /// Peers we asked the driver to measure.
    measuring: HashMap<NodeId, Time>,
    /// Immediate neighbours (left, right) and when we last heard from each.
    watch: [Option<(NodeId, Time)>; 2],
    next_heartbeat: Time,
    next_maintenance: Time,
    maintenance_row: usize,
    /// Until then, peers newly entering the routing table are told we joined.
    announce_until: Time,
}

const DEAD_MEMORY: usize = 32;

impl Pastry {
    /// A node with identity `me`, not yet part of an overlay. `seed` seeds its private RNG
    /// (timer jitter, choice of maintenance peers): the same seed gives the same behaviour.
    pub fn new(me: PeerInfo, config: Config, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let next_id = rng.gen::<u64>() >> 16;
        Self {
            me,
            leaf_set: LeafSet::new(me.id, config.leaf_set_size / 2),
            table: RoutingTable::new(me.id),
            neighbourhood: NeighbourhoodSet::new(config.neighbourhood_size),
            config,
            rng,
            phase: Phase::Idle,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            next_id,
            in_flight: Vec::new(),
            held: Vec::new(),
            delivered: VecDeque::new(),
            probes: Vec::new(),
            dead: VecDeque::new(),
            measuring: HashMap::new(),
            watch: [None, None],
            next_heartbeat: Time::MAX,
            next_maintenance: Time::MAX,
            maintenance_row: 0,
            announce_until: Time::ZERO,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// This node's id and address.
    pub fn me(&self) -> PeerInfo {
        self.me
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

    /// Whether `id` is in any of the three structures.
    pub fn knows(&self, id: NodeId) -> bool {
        self.leaf_set.contains(id) || self.table.contains(id) || self.neighbourhood.contains(id)
    }

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

    // ---------------------------------------------------------------- commands

    /// Starts a new overlay with this node as its only member.
    pub fn bootstrap_alone(&mut self, now: Time) {
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.phase = Phase::Active;
        self.start_timers(now);
        self.emit(Event::Joined);
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
            deadline: now,
            got_leaf_set: false,
            restarts: 0,
        });
        self.send_join(now, via);
    }

    /// Routes `payload` towards `key`; returns the message id that [`Output::Deliver`] and
    /// [`Event::RouteFailed`] carry. A node that is not active fails the message at once.
    pub fn route(&mut self, now: Time, key: Key, payload: Vec<u8>) -> u64 {
        let id = self.fresh_id();
        if !self.is_active() {
            self.fail_route(id, key);
            return id;
        }
        let msg = RouteMsg {
            id,
            key,
            origin: self.me,
            hops: 0,
            payload,
        };
        self.route_step(now, msg, Vec::new(), 0);
        id
    }

    /// Leaves gracefully: tells the leaf set (whose members report [`Event::NodeLeft`] at
    /// once) and stops. Messages in flight are dropped.
    pub fn leave(&mut self, _now: Time) {
        if self.is_active() {
            let leaf_set = self.leaf_set.peers();
            for peer in &leaf_set {
                self.send(
                    *peer,
                    Message::Leave {
                        leaf_set: leaf_set.clone(),
                    },
                );
            }
        }
        self.phase = Phase::Left;
        self.in_flight.clear();
        self.held.clear();
        self.probes.clear();
        self.measuring.clear();
    }

    /// Answers an [`Output::Forward`].
    pub fn resume_forward(&mut self, now: Time, token: u64, verdict: ForwardVerdict) {
        let Some(index) = self.held.iter().position(|h| h.token == token) else {
            return;
        };
        let held = self.held.swap_remove(index);
        if let ForwardVerdict::Continue(payload) = verdict {
            let mut msg = held.msg;
            msg.payload = payload;
            self.send_route(now, held.next, msg, held.excluded, 0);
        }
    }

    // ---------------------------------------------------------------- inputs

    /// A message from `from`, whose id the transport authenticated.
    pub fn handle_message(&mut self, now: Time, from: PeerInfo, msg: Message) {
        if matches!(self.phase, Phase::Idle | Phase::Left) || from.id == self.me.id {
            return;
        }
        self.heard_from(now, from.id);
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
            } => {
                let reply = Message::ProbeReply {
                    nonce,
                    active: self.is_active(),
                    leaf_set: self.leaf_set.peers(),
                };
                self.send(from, reply);
                if active && self.is_active() {
                    self.add_live(now, from);
                }
                self.merge_candidates(now, &leaf_set);
            }
            Message::ProbeReply {
                active, leaf_set, ..
            } => self.on_probe_reply(now, from, active, &leaf_set),
            Message::Heartbeat { leaf_set } => {
                if self.is_active() {
                    self.add_live(now, from);
                    self.merge_candidates(now, &leaf_set);
                }
            }
            Message::NodeFailed { node, leaf_set } => {
                if node == self.me.id {
                    // A false suspicion: show the sender we are alive so it re-admits us.
                    if self.is_active() {
                        self.start_probe(now, from, ProbeKind::Member);
                    }
                } else if self.knows(node) {
                    self.remove_everywhere(now, node);
                    self.note_dead(now, node);
                }
                self.merge_candidates(now, &leaf_set);
            }
            Message::RowRequest { row } => {
                let entries = self
                    .table
                    .row(usize::from(row))
                    .iter()
                    .map(|s| s.peer)
                    .filter(|p| p.id != from.id)
                    .collect();
                self.send(from, Message::RowReply { row, entries });
            }
            Message::RowReply { entries, .. } => {
                self.consider(now, from);
                for peer in entries {
                    self.consider(now, peer);
                }
            }
            Message::Route {
                id,
                key,
                origin,
                hops,
                payload,
            } => {
                self.send(
                    from,
                    Message::RouteAck {
                        origin: origin.id,
                        id,
                    },
                );
                let msg = RouteMsg {
                    id,
                    key,
                    origin,
                    hops,
                    payload,
                };
                if hops > self.config.max_hops {
                    tracing::debug!(?key, hops, "dropping a message that exceeded max hops");
                    self.fail_route(id, key);
                } else {
                    self.route_step(now, msg, Vec::new(), 0);
                }
            }
            Message::RouteAck { origin, id } => {
                self.in_flight
                    .retain(|f| !(f.next.id == from.id && f.carried.ident() == (origin, id)));
            }
            Message::Leave { leaf_set } => {
                self.remove_everywhere(now, from.id);
                self.note_dead(now, from.id);
                self.merge_candidates(now, &leaf_set);
            }
        }
        self.check_join_complete(now);
    }

    /// A round-trip-time measurement of `peer` (the answer to [`Output::Measure`], or a fresh
    /// sample of a peer already in our state).
    pub fn handle_proximity(&mut self, now: Time, peer: PeerInfo, rtt: Duration) {
        if matches!(self.phase, Phase::Idle | Phase::Left) || peer.id == self.me.id {
            return;
        }
        let requested = self.measuring.remove(&peer.id).is_some();
        if !requested && !self.knows(peer.id) {
            return;
        }
        let rtt = self.config.proximity.then_some(rtt);
        self.offer(now, peer, rtt);
    }

    /// The transport lost its link to `peer`: suspect it (probe it) and re-route messages
    /// waiting for its acknowledgement.
    pub fn handle_link_down(&mut self, now: Time, peer: NodeId) {
        if !self.is_active() {
            return;
        }
        let info = self
            .leaf_set
            .get(peer)
            .or_else(|| self.table.find(peer))
            .or_else(|| self.neighbourhood.iter().find(|s| s.peer.id == peer))
            .map(|s| s.peer);
        if let Some(info) = info {
            self.start_probe(now, info, ProbeKind::Member);
        }
        for f in &mut self.in_flight {
            if f.next.id == peer {
                f.deadline = now;
            }
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Phase::Joining(j) = &self.phase {
            if now >= j.deadline {
                self.restart_join(now);
            }
        }
        self.expire_probes(now);
        self.expire_in_flight(now);
        if self.is_active() {
            for side in [Side::Left, Side::Right] {
                let index = side as usize;
                if let Some((id, heard)) = self.watch[index] {
                    if now >= heard + self.config.probe_period + self.config.probe_timeout {
                        self.watch[index] = Some((id, now));
                        if let Some(slot) = self.leaf_set.get(id) {
                            let peer = slot.peer;
                            self.start_probe(now, peer, ProbeKind::Member);
                        }
                    }
                }
            }
            if now >= self.next_heartbeat {
                self.next_heartbeat = now + self.config.probe_period;
                self.heartbeat(now);
            }
            if now >= self.next_maintenance {
                self.next_maintenance = now + self.config.maintenance_period;
                self.maintain_table(now);
            }
        }
        self.check_join_complete(now);
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut earliest = match &self.phase {
            Phase::Idle | Phase::Left => return None,
            Phase::Joining(j) => j.deadline,
            Phase::Active => {
                let mut t = self.next_heartbeat.min(self.next_maintenance);
                for (_, heard) in self.watch.iter().flatten() {
                    t = t.min(*heard + self.config.probe_period + self.config.probe_timeout);
                }
                t
            }
        };
        for p in &self.probes {
            earliest = earliest.min(p.deadline);
        }
        for f in &self.in_flight {
            earliest = earliest.min(f.deadline);
        }
        Some(earliest)
    }

    /// The next effect to carry out, if any. Drain after every call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---------------------------------------------------------------- routing

    fn is_suspect(&self, id: NodeId) -> bool {
        self.probes
            .iter()
            .any(|p| p.peer.id == id && p.kind == ProbeKind::Member)
    }

    fn choose(&self, key: Key, excluded: &[NodeId], allow_self: bool) -> Choice {
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
                    return Choice::Peer(slot.peer);
                }
            }
        }
        // The rare case: the best of every known peer that is at least as good as us.
        let mut best: Option<PeerInfo> = None;
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
            if allow_self && (key.shared_prefix_len(id) < row || !key.is_closer(id, me)) {
                continue;
            }
            if best.map_or(true, |b| key.is_closer(id, b.id)) {
                best = Some(slot.peer);
            }
        }
        match best {
            Some(p) => Choice::Peer(p),
            None if allow_self => Choice::Local,
            None => Choice::Nowhere,
        }
    }

    fn route_step(&mut self, now: Time, msg: RouteMsg, excluded: Vec<NodeId>, attempts: u8) {
        // Only an active node may be a root (MSPastry's consistent join).
        match self.choose(msg.key, &excluded, self.is_active()) {
            Choice::Local => self.deliver(msg),
            Choice::Peer(next) => {
                if self.config.intercept_forwards && attempts == 0 {
                    let token = self.fresh_id();
                    let mut held = msg;
                    let payload = std::mem::take(&mut held.payload);
                    self.outputs.push_back(Output::Forward {
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
            }
            Choice::Nowhere => self.fail_route(msg.id, msg.key),
        }
    }

    fn send_route(
        &mut self,
        now: Time,
        next: PeerInfo,
        msg: RouteMsg,
        excluded: Vec<NodeId>,
        attempts: u8,
    ) {
        self.stats.forwarded += 1;
        self.send(
            next,
            Message::Route {
                id: msg.id,
                key: msg.key,
                origin: msg.origin,
                hops: msg.hops.saturating_add(1),
                payload: msg.payload.clone(),
            },
        );
        self.in_flight.push(InFlight {
            carried: Carried::Route(msg),
            next,
            deadline: now + self.config.ack_timeout,
            attempts,
            excluded,
        });
    }

    fn deliver(&mut self, msg: RouteMsg) {
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
        self.outputs.push_back(Output::Deliver {
            key: msg.key,
            origin: msg.origin.id,
            id: msg.id,
            hops: msg.hops,
            payload: msg.payload,
        });
    }

    fn fail_route(&mut self, id: u64, key: Key) {
        self.stats.routes_failed += 1;
        self.emit(Event::RouteFailed { id, key });
    }

    fn expire_in_flight(&mut self, now: Time) {
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.in_flight.len() {
            if self.in_flight[index].deadline <= now {
                due.push(self.in_flight.swap_remove(index));
            } else {
                index += 1;
            }
        }
        for mut f in due {
            self.stats.reroutes += 1;
            self.start_probe_if_known(now, f.next);
            f.excluded.push(f.next.id);
            let attempts = f.attempts.saturating_add(1);
            if attempts >= self.config.max_route_attempts {
                if let Carried::Route(m) = f.carried {
                    self.fail_route(m.id, m.key);
                }
                continue;
            }
            match f.carried {
                Carried::Route(m) => self.route_step(now, m, f.excluded, attempts),
                Carried::Join(j) => self.forward_join(now, j, f.excluded, attempts),
            }
        }
    }

    // ---------------------------------------------------------------- join

    fn send_join(&mut self, now: Time, via: PeerInfo) {
        let attempt = self.fresh_id();
        let deadline = now + self.config.join_timeout;
        if let Phase::Joining(j) = &mut self.phase {
            j.attempt = attempt;
            j.deadline = deadline;
            j.got_leaf_set = false;
        }
        self.send(
            via,
            Message::Join {
                id: attempt,
                joiner: self.me,
                next_row: 0,
                hops: 0,
            },
        );
    }

    fn restart_join(&mut self, now: Time) {
        let Phase::Joining(j) = &mut self.phase else {
            return;
        };
        j.restarts += 1;
        let bootstrap = j.bootstrap;
        let restarts = j.restarts;
        self.stats.join_restarts += 1;
        self.probes.retain(|p| p.kind != ProbeKind::Candidate);
        // Every other attempt goes through a peer we learned, in case the bootstrap died.
        let known: Vec<PeerInfo> = self
            .leaf_set
            .iter()
            .chain(self.table.iter())
            .map(|s| s.peer)
            .collect();
        let via = if restarts % 2 == 0 && !known.is_empty() {
            known[self.rng.gen_range(0..known.len())]
        } else {
            bootstrap
        };
        tracing::debug!(me = ?self.me.id, ?via, restarts, "restarting join");
        self.send_join(now, via);
    }

    fn on_join(&mut self, now: Time, from: PeerInfo, join: JoinMsg) {
        // An inactive node cannot place a joiner; without an ack the sender re-routes.
        if !self.is_active() || join.joiner.id == self.me.id {
            return;
        }
        if from.id != join.joiner.id {
            self.send(
                from,
                Message::RouteAck {
                    origin: join.joiner.id,
                    id: join.id,
                },
            );
        }
        let excluded = vec![join.joiner.id];
        self.forward_join(now, join, excluded, 0);
    }

    fn forward_join(&mut self, now: Time, mut join: JoinMsg, excluded: Vec<NodeId>, attempts: u8) {
        let joiner = join.joiner;
        let shared = self.me.id.shared_prefix_len(joiner.id).min(DIGITS - 1);
        let mut rows = Vec::new();
        for row in usize::from(join.next_row)..=shared {
            let entries: Vec<PeerInfo> = self
                .table
                .row(row)
                .iter()
                .map(|s| s.peer)
                .filter(|p| p.id != joiner.id)
                .collect();
            if !entries.is_empty() {
                rows.push((row as u8, entries));
            }
        }
        join.next_row = join.next_row.max(shared as u8 + 1);
        let neighbourhood: Vec<PeerInfo> = if join.hops == 0 && attempts == 0 {
            self.neighbourhood
                .iter()
                .map(|s| s.peer)
                .filter(|p| p.id != joiner.id)
                .collect()
        } else {
            Vec::new()
        };
        match self.choose(joiner.id.to_key(), &excluded, true) {
            Choice::Local | Choice::Nowhere => {
                let leaf_set = self
                    .leaf_set
                    .iter()
                    .map(|s| s.peer)
                    .filter(|p| p.id != joiner.id)
                    .collect();
                self.send(
                    joiner,
                    Message::JoinState {
                        rows,
                        neighbourhood,
                        leaf_set: Some(leaf_set),
                    },
                );
            }
            Choice::Peer(next) => {
                if !rows.is_empty() || !neighbourhood.is_empty() {
                    self.send(
                        joiner,
                        Message::JoinState {
                            rows,
                            neighbourhood,
                            leaf_set: None,
                        },
                    );
                }
                self.send(
                    next,
                    Message::Join {
                        id: join.id,
                        joiner,
                        next_row: join.next_row,
                        hops: join.hops.saturating_add(1),
                    },
                );
                self.in_flight.push(InFlight {
                    carried: Carried::Join(join),
                    next,
                    deadline: now + self.config.ack_timeout,
                    attempts,
                    excluded,
                });
            }
        }
    }

    fn on_join_state(
        &mut self,
        now: Time,
        from: PeerInfo,
        rows: Vec<(u8, Vec<PeerInfo>)>,
        neighbourhood: Vec<PeerInfo>,
        leaf_set: Option<Vec<PeerInfo>>,
    ) {
        if !self.is_joining() {
            return;
        }
        self.consider(now, from);
        for peer in rows
            .into_iter()
            .flat_map(|(_, peers)| peers)
            .chain(neighbourhood)
        {
            self.consider(now, peer);
        }
        let Some(leaf_set) = leaf_set else {
            return;
        };
        if let Phase::Joining(j) = &mut self.phase {
            j.got_leaf_set = true;
        }
        // Probe only those of the root's leaf set (and the root) that belong in ours.
        let mut wanted = LeafSet::new(self.me.id, self.leaf_set.half());
        for peer in leaf_set.iter().chain(std::iter::once(&from)) {
            wanted.insert(*peer, None);
        }
        for slot in wanted.iter() {
            let peer = slot.peer;
            if !self.leaf_set.contains(peer.id) {
                self.start_probe(now, peer, ProbeKind::Candidate);
            }
        }
    }

    fn check_join_complete(&mut self, now: Time) {
        let Phase::Joining(j) = &self.phase else {
            return;
        };
        if !j.got_leaf_set || self.probes.iter().any(|p| p.kind == ProbeKind::Candidate) {
            return;
        }
        if self.leaf_set.is_empty() {
            // Every candidate was dead: try again.
            self.restart_join(now);
            return;
        }
        self.activate(now);
    }

    fn activate(&mut self, now: Time) {
        self.phase = Phase::Active;
        self.start_timers(now);
        self.announce_until = now + self.config.join_timeout;
        tracing::debug!(me = ?self.me.id, leaves = self.leaf_set.len(), "joined");
        self.emit(Event::Joined);
        self.emit(Event::LeafSetChanged);
        let leaf_set = self.leaf_set.peers();
        for peer in &leaf_set {
            self.send(
                *peer,
                Message::Announce {
                    leaf_set: leaf_set.clone(),
                },
            );
        }
        let mut others: Vec<PeerInfo> = self
            .table
            .iter()
            .chain(self.neighbourhood.iter())
            .map(|s| s.peer)
            .filter(|p| !self.leaf_set.contains(p.id))
            .collect();
        others.sort_by_key(|p| p.id);
        others.dedup_by_key(|p| p.id);
        for peer in others {
            self.send(peer, Message::Announce { leaf_set: vec![] });
        }
    }

    fn on_announce(&mut self, now: Time, from: PeerInfo, theirs: &[PeerInfo]) {
        if !self.is_active() {
            return;
        }
        self.add_live(now, from);
        if theirs.is_empty() {
            return;
        }
        // Tell the newcomer about leaf-set members it is missing (concurrent joins).
        let mut their_set = LeafSet::new(from.id, self.leaf_set.half());
        for peer in theirs {
            their_set.insert(*peer, None);
        }
        let missing = self
            .leaf_set
            .iter()
            .map(|s| s.peer.id)
            .chain(std::iter::once(self.me.id))
            .any(|id| id != from.id && their_set.would_accept(id));
        if missing {
            let leaf_set = self.leaf_set.peers();
            self.send(from, Message::Heartbeat { leaf_set });
        }
    }

    // ---------------------------------------------------------------- membership

    /// `peer` is alive and active (we heard from it directly).
    fn add_live(&mut self, now: Time, peer: PeerInfo) {
        let was_known = self.knows(peer.id);
        if self.leaf_set.insert(peer, None) && self.is_active() {
            if !was_known {
                self.emit(Event::NodeJoined(peer.id));
            }
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
        }
        self.consider(now, peer);
    }

    /// Offers `peer` to the routing table and neighbourhood set: directly if its proximity is
    /// known or proximity is off, otherwise after a measurement.
    fn consider(&mut self, now: Time, peer: PeerInfo) {
        if peer.id == self.me.id || self.table.contains(peer.id) {
            return;
        }
        if !self.config.proximity {
            self.offer(now, peer, None);
            return;
        }
        let known = self.leaf_set.get(peer.id).and_then(Slot::rtt).or_else(|| {
            self.neighbourhood
                .iter()
                .find(|s| s.peer.id == peer.id)
                .and_then(Slot::rtt)
        });
        if let Some(rtt) = known {
            self.offer(now, peer, Some(rtt));
        } else if let std::collections::hash_map::Entry::Vacant(entry) =
            self.measuring.entry(peer.id)
        {
            entry.insert(now);
            self.stats.measures += 1;
            self.outputs.push_back(Output::Measure { peer });
        }
    }

    fn offer(&mut self, now: Time, peer: PeerInfo, rtt: Option<Duration>) {
        let was_known = self.knows(peer.id);
        let entered = matches!(
            self.table
                .insert(peer, rtt, self.config.proximity_hysteresis),
            super::Insertion::Added | super::Insertion::Replaced(_)
        );
        if let Some(rtt) = rtt {
            self.neighbourhood.insert(peer, rtt);
            if self.leaf_set.contains(peer.id) {
                self.leaf_set.insert(peer, Some(rtt));
            }
        }
        if self.is_active() && !was_known && self.knows(peer.id) {
            self.emit(Event::NodeJoined(peer.id));
        }
        if entered && self.is_active() && now < self.announce_until {
            self.send(peer, Message::Announce { leaf_set: vec![] });
        }
    }

    /// Probes second-hand leaf-set candidates that would enter our leaf set.
    fn merge_candidates(&mut self, now: Time, peers: &[PeerInfo]) {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        for peer in peers {
            if peer.id != self.me.id
                && !self.leaf_set.contains(peer.id)
                && self.leaf_set.would_accept(peer.id)
                && !self.dead.iter().any(|(id, _)| *id == peer.id)
                && !self.probes.iter().any(|p| p.peer.id == peer.id)
            {
                self.start_probe(now, *peer, ProbeKind::Candidate);
            }
        }
    }

    fn on_probe_reply(&mut self, now: Time, from: PeerInfo, active: bool, leaf_set: &[PeerInfo]) {
        if let Some(index) = self.probes.iter().position(|p| p.peer.id == from.id) {
            self.probes.swap_remove(index);
        }
        if active {
            self.add_live(now, from);
        }
        self.merge_candidates(now, leaf_set);
    }

    /// Removes `id` from every structure. Returns whether it was in the leaf set.
    fn remove_everywhere(&mut self, now: Time, id: NodeId) -> bool {
        let was_leaf = self.leaf_set.remove(id);
        let position = self.table.remove(id);
        self.neighbourhood.remove(id);
        self.measuring.remove(&id);
        self.probes.retain(|p| p.peer.id != id);
        for f in &mut self.in_flight {
            if f.next.id == id {
                f.deadline = now;
            }
        }
        if was_leaf && self.is_active() {
            self.emit(Event::NodeLeft(id));
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
        }
        if let Some((row, _)) = position {
            self.repair_table_row(row);
        }
        was_leaf
    }

    /// Lazy routing-table repair: ask another entry of the same row (or the next) for its row.
    fn repair_table_row(&mut self, row: usize) {
        if !self.is_active() {
            return;
        }
        for r in [row, row + 1] {
            let entries = self.table.row(r);
            if !entries.is_empty() {
                let peer = entries[self.rng.gen_range(0..entries.len())].peer;
                self.stats.table_repairs += 1;
                self.send(peer, Message::RowRequest { row: row as u8 });
                return;
            }
        }
    }

    fn declare_dead(&mut self, now: Time, peer: PeerInfo) {
        self.stats.declared_dead += 1;
        tracing::debug!(me = ?self.me.id, dead = ?peer.id, "declaring node dead");
        let was_leaf = self.remove_everywhere(now, peer.id);
        self.note_dead(now, peer.id);
        if was_leaf && self.is_active() {
            let leaf_set = self.leaf_set.peers();
            for member in &leaf_set {
                self.send(
                    *member,
                    Message::NodeFailed {
                        node: peer.id,
                        leaf_set: leaf_set.clone(),
                    },
                );
            }
        }
    }

    fn note_dead(&mut self, now: Time, id: NodeId) {
        if self.dead.len() >= DEAD_MEMORY {
            self.dead.pop_front();
        }
        self.dead.push_back((id, now));
    }

    fn heard_from(&mut self, now: Time, id: NodeId) {
        for (watched, heard) in self.watch.iter_mut().flatten() {
            if *watched == id {
                *heard = now;
            }
        }
        self.dead.retain(|(dead, _)| *dead != id);
    }

    fn refresh_watches(&mut self, now: Time) {
        for side in [Side::Left, Side::Right] {
            let current = self.leaf_set.neighbour(side).map(|s| s.peer.id);
            let slot = &mut self.watch[side as usize];
            match (current, *slot) {
                (Some(id), Some((watched, _))) if id == watched => {}
                (Some(id), _) => *slot = Some((id, now)),
                (None, _) => *slot = None,
            }
        }
    }

    // ---------------------------------------------------------------- probes and timers

    fn start_probe(&mut self, now: Time, peer: PeerInfo, kind: ProbeKind) {
        if let Some(existing) = self.probes.iter_mut().find(|p| p.peer.id == peer.id) {
            if kind == ProbeKind::Member {
                existing.kind = kind;
            }
            return;
        }
        self.probes.push(PendingProbe {
            peer,
            deadline: now + self.config.probe_timeout,
            retries_left: self.config.probe_retries,
            kind,
        });
        self.send_probe(peer);
    }

    fn start_probe_if_known(&mut self, now: Time, peer: PeerInfo) {
        if self.knows(peer.id) {
            self.start_probe(now, peer, ProbeKind::Member);
        }
    }

    fn send_probe(&mut self, peer: PeerInfo) {
        let nonce = self.fresh_id();
        let msg = Message::Probe {
            nonce,
            active: self.is_active(),
            leaf_set: self.leaf_set.peers(),
        };
        self.send(peer, msg);
    }

    fn expire_probes(&mut self, now: Time) {
        let mut failed = Vec::new();
        let mut resend = Vec::new();
        let timeout = self.config.probe_timeout;
        self.probes.retain_mut(|p| {
            if p.deadline > now {
                return true;
            }
            if p.retries_left > 0 {
                p.retries_left -= 1;
                p.deadline = now + timeout;
                resend.push(p.peer);
                true
            } else {
                failed.push((p.peer, p.kind));
                false
            }
        });
        for peer in resend {
            self.send_probe(peer);
        }
        for (peer, kind) in failed {
            match kind {
                ProbeKind::Member => self.declare_dead(now, peer),
                ProbeKind::Candidate => self.note_dead(now, peer.id),
            }
        }
    }

    fn start_timers(&mut self, now: Time) {
        let period = self.config.probe_period.as_micros().max(1) as u64;
        let jitter = Duration::from_micros(self.rng.gen_range(0..period));
        self.next_heartbeat = now + jitter;
        let maintenance = self.config.maintenance_period.as_micros().max(1) as u64;
        self.next_maintenance =
            now + Duration::from_micros(maintenance / 2 + self.rng.gen_range(0..maintenance));
        self.refresh_watches(now);
    }

    fn heartbeat(&mut self, now: Time) {
        let leaf_set = self.leaf_set.peers();
        let left = self.leaf_set.neighbour(Side::Left).map(|s| s.peer);
        let right = self.leaf_set.neighbour(Side::Right).map(|s| s.peer);
        if let Some(left) = left {
            self.send(
                left,
                Message::Heartbeat {
                    leaf_set: leaf_set.clone(),
                },
            );
        }
        if let Some(right) = right.filter(|r| Some(r.id) != left.map(|l| l.id)) {
            self.send(right, Message::Heartbeat { leaf_set });
        }
        // Leaf-set repair: a short side asks its farthest member, whose leaf set reaches on.
        for side in [Side::Left, Side::Right] {
            if self.leaf_set.needs_repair(side) {
                if let Some(far) = self.leaf_set.furthest(side).map(|s| s.peer) {
                    self.stats.leaf_repairs += 1;
                    self.start_probe(now, far, ProbeKind::Member);
                }
            }
        }
        let horizon = self.config.probe_period * 4;
        self.dead.retain(|(_, when)| now < *when + horizon);
        self.measuring.retain(|_, asked| now < *asked + horizon);
    }

    fn maintain_table(&mut self, _now: Time) {
        let rows = self.table.row_count();
        for _ in 0..rows {
            let row = self.maintenance_row % rows;
            self.maintenance_row = self.maintenance_row.wrapping_add(1);
            let entries = self.table.row(row);
            if !entries.is_empty() {
                let peer = entries[self.rng.gen_range(0..entries.len())].peer;
                self.send(peer, Message::RowRequest { row: row as u8 });
                return;
            }
        }
    }

    // ---------------------------------------------------------------- plumbing

    fn fresh_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn send(&mut self, to: PeerInfo, msg: Message) {
        let counter = &mut self.stats.sent[msg.kind() as usize];
        counter.msgs += 1;
        counter.bytes += msg.encoded_len() as u64;
        self.outputs.push_back(Output::Send { to, msg });
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }
}
