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
    /// Per-hop acknowledgement timeout for routed messages and joins when the next hop's RTT
    /// is unknown, and the cap otherwise (see [`Config::timeout_slack`]). Default 1 s.
    pub ack_timeout: Duration,
    /// Acks and probes to a peer with a measured RTT time out after `3 * rtt + slack` (capped
    /// by [`Config::ack_timeout`] / [`Config::probe_timeout`]). Default 50 ms.
    pub timeout_slack: Duration,
    /// How long a hop keeps a copy of a message its next hop acknowledged, waiting for that
    /// hop to pass it on ([`Message::RouteAck`] `done`), before routing it again another way
    /// (the next hop may have died holding it). Default 5 s.
    pub custody_timeout: Duration,
    /// Attempts (first try plus re-routes) per hop before a message is given up. Default 16
    /// (with RTT-based ack timeouts a dead hop costs about three RTTs).
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
    /// After joining, ask this many of the nearest entries of each routing-table row for their
    /// row and measure the candidates (only with proximity). Default 3.
    pub join_row_refresh: usize,
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
            timeout_slack: Duration::from_millis(50),
            custody_timeout: Duration::from_secs(5),
            max_route_attempts: 16,
            max_hops: 40,
            maintenance_period: Duration::from_secs(60),
            intercept_forwards: false,
            join_timeout: Duration::from_secs(20),
            join_row_refresh: 3,
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
    /// peer cannot be reached (the dial fails), call [`Pastry::handle_link_down`]: a peer that
    /// cannot be dialled is suspected like one whose link died.
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
    /// Probes started to check a node in our state (missed heartbeat, ack timeout, leaf-set
    /// repair, a neighbour's leaf set lacking it).
    pub suspect_probes: u64,
    /// Probes started to verify a leaf-set candidate learned second hand (or while joining).
    pub candidate_probes: u64,
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
    /// A member whose liveness is merely in doubt (a neighbour's leaf set lacks it): silence
    /// declares it dead, but it stays usable for routing meanwhile (it may be the root).
    Verify,
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
    /// Unresponsive nodes reported by earlier hops.
    avoid: Vec<NodeId>,
    /// The node we received it from (none at the origin).
    prev: Option<PeerInfo>,
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
    /// The next hop acknowledged receipt; we wait for it to pass the message on.
    received: bool,
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
    /// Recently measured RTTs (microseconds), so a peer is not measured twice in a row.
    rtt_cache: VecDeque<(NodeId, u32)>,
    /// Outstanding row requests: (peer, row, whether to measure candidates for occupied slots).
    row_requests: Vec<(NodeId, u8, bool)>,
    /// Rows whose empty slot was met while routing and already asked about this period.
    holes_asked: u32,
    /// Messages for our keys that arrived while we were joining, routed again once active.
    waiting: Vec<RouteMsg>,
    /// Messages we would deliver as root only because a closer leaf-set member is under
    /// suspicion: held until its probe settles (alive: sent to it; dead: delivered here).
    parked: Vec<Parked>,
    /// Nodes that announced themselves to us lately (newcomers whose news we may pass on).
    announced: VecDeque<(NodeId, Time)>,
    /// Hole-filling passes done as the overlay grew, by row (see `Pastry::fill_as_grown`).
    growth_passes: [u8; DIGITS],
}

/// A message held until the probe of leaf-set member `on` settles.
#[derive(Debug, Clone)]
struct Parked {
    on: NodeId,
    msg: RouteMsg,
    excluded: Vec<NodeId>,
    attempts: u8,
}

const DEAD_MEMORY: usize = 32;
const RTT_CACHE: usize = 16;
const MAX_ROW_REQUESTS: usize = 48;
const MAX_WAITING: usize = 64;
const ANNOUNCED_MEMORY: usize = 8;
/// Overlay sizes, in multiples of `16^(row+1)`, at which a row with empty slots is asked for
/// again (see `Pastry::fill_as_grown`).
const GROWTH_PASSES: [f64; 12] = [
    1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0,
];

/// How many of [`GROWTH_PASSES`] an overlay of `size` nodes has reached for `row`.
fn growth_passes_reached(size: f64, row: usize) -> u8 {
    let expected = 16f64.powi(row as i32 + 1);
    // At most GROWTH_PASSES.len() (12), so the count fits a u8.
    GROWTH_PASSES
        .iter()
        .take_while(|&&factor| size >= factor * expected)
        .count() as u8
}

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
            rtt_cache: VecDeque::new(),
            row_requests: Vec::new(),
            holes_asked: 0,
            waiting: Vec::new(),
            parked: Vec::new(),
            announced: VecDeque::new(),
            growth_passes: [0; DIGITS],
        }
    }

    /// Simulator diagnostics only: puts `peer` (with its true RTT) into its routing-table slot,
    /// replacing whatever holds it (the "oracle table" experiment of `wendy sim`).
    #[cfg(feature = "sim")]
    pub(crate) fn force_table_entry(&mut self, peer: PeerInfo, rtt: Duration) {
        if let Some((row, column)) = self.table.position(peer.id) {
            if let Some(old) = self.table.get(row, column).map(|s| s.peer.id) {
                if old != peer.id {
                    self.table.remove(old);
                }
            }
            self.table.insert(peer, Some(rtt), 0.0);
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

    /// Routed messages this node passed on and still holds in custody: their next hop has not
    /// yet acknowledged that it passed them on (`RouteAck { done: true }`).
    pub fn in_custody(&self) -> usize {
        self.in_flight.len()
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
            avoid: Vec::new(),
            prev: None,
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
        self.waiting.clear();
        self.parked.clear();
        self.probes.clear();
        self.measuring.clear();
    }

    /// Answers an [`Output::Forward`].
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
            ForwardVerdict::Drop => {
                if let Some(prev) = held.msg.prev {
                    self.release(prev, held.msg.origin.id, held.msg.id);
                }
            }
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
                if active && self.is_active() {
                    self.add_live(now, from, false);
                } else if !active && self.is_active() {
                    // A joiner's probe (MSPastry's consistent join): admit it to the leaf set
                    // before replying. It becomes active only once every member of its leaf set
                    // has replied, so by then all of them route its keys to it (it holds what
                    // arrives before it is active). The routing table waits for its announce.
                    self.admit_leaf(now, from);
                }
                let reply = Message::ProbeReply {
                    nonce,
                    active: self.is_active(),
                    leaf_set: self.leaf_set.peers(),
                };
                self.send(from, reply);
                self.merge_candidates(now, &leaf_set);
            }
            Message::ProbeReply {
                active, leaf_set, ..
            } => self.on_probe_reply(now, from, active, &leaf_set),
            Message::Heartbeat { leaf_set } => {
                if self.is_active() {
                    self.add_live(now, from, false);
                    self.merge_candidates(now, &leaf_set);
                    self.check_against(now, from, &leaf_set);
                }
            }
            Message::NodeFailed { node, leaf_set } => {
                if node == self.me.id {
                    // A false suspicion: show the sender we are alive so it re-admits us.
                    if self.is_active() {
                        self.start_probe(now, from, ProbeKind::Member);
                    }
                } else if self.knows(node) {
                    // The sender told its own leaf set: we only tell the members it lacks.
                    let told: Vec<NodeId> = leaf_set
                        .iter()
                        .map(|p| p.id)
                        .chain(std::iter::once(from.id))
                        .collect();
                    self.forget_dead(now, node, false, &told);
                }
                self.merge_candidates(now, &leaf_set);
            }
            Message::RowRequest { row } => {
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
            Message::RowReply { row, entries } => {
                let improve = match self
                    .row_requests
                    .iter()
                    .position(|(id, r, _)| *id == from.id && *r == row)
                {
                    Some(index) => self.row_requests.swap_remove(index).2,
                    None => false,
                };
                self.consider(now, from, improve);
                for peer in entries {
                    self.consider(now, peer, improve);
                }
            }
            Message::Route {
                id,
                key,
                origin,
                hops,
                mut avoid,
                payload,
            } => {
                let receipt = |this: &mut Self| {
                    this.send(
                        from,
                        Message::RouteAck {
                            origin: origin.id,
                            id,
                            done: false,
                        },
                    );
                };
                let origin_id = origin.id;
                let queued = self.outputs.len();
                avoid.truncate(super::message::MAX_AVOID);
                avoid.retain(|a| *a != self.me.id);
                for dead in &avoid {
                    self.distrust(now, *dead);
                }
                let msg = RouteMsg {
                    id,
                    key,
                    origin,
                    hops,
                    avoid,
                    prev: Some(from),
                    payload,
                };
                if hops > self.config.max_hops {
                    tracing::debug!(?key, hops, "dropping a message that exceeded max hops");
                    // The drop is deliberate: `done` releases the sender, which would otherwise
                    // keep custody and route it again after its custody timeout.
                    self.release(from, origin_id, id);
                    self.fail_route(id, key);
                } else {
                    self.route_step(now, msg, Vec::new(), 0);
                    // The receipt goes after the routing step, and not at all if that step
                    // already released the sender (delivered here at once): one ack, not two.
                    let released = self.outputs.iter().skip(queued).any(|o| {
                        matches!(o, Output::Send {
                            to,
                            msg: Message::RouteAck { origin: o, id: i, done: true },
                        } if to.id == from.id && *o == origin_id && *i == id)
                    });
                    if !released {
                        receipt(self);
                    }
                }
            }
            Message::RouteAck { origin, id, done } => {
                let Some(index) = self
                    .in_flight
                    .iter()
                    .position(|f| f.next.id == from.id && f.carried.ident() == (origin, id))
                else {
                    return;
                };
                if done {
                    // A next hop that delivered at once sends only this ack (no receipt
                    // first): release our predecessor now if its receipt did not.
                    let f = self.in_flight.swap_remove(index);
                    if let (false, Carried::Route(m)) = (f.received, &f.carried) {
                        if let Some(prev) = m.prev {
                            self.release(prev, m.origin.id, m.id);
                        }
                    }
                } else if !self.in_flight[index].received {
                    // The next hop has it: keep a copy in case it dies before passing it on,
                    // and release our predecessor.
                    let f = &mut self.in_flight[index];
                    f.received = true;
                    f.deadline = now + self.config.custody_timeout;
                    let prev = match &f.carried {
                        Carried::Route(m) => m.prev.map(|p| (p, m.origin.id, m.id)),
                        Carried::Join(_) => None,
                    };
                    if let Some((prev, origin, id)) = prev {
                        self.release(prev, origin, id);
                    }
                }
            }
            Message::Leave { leaf_set } => {
                self.remove_everywhere(now, from.id);
                self.note_dead(now, from.id);
                self.merge_candidates(now, &leaf_set);
            }
        }
        self.check_join_complete(now);
        self.retry_parked(now);
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
        if self.rtt_cache.len() >= RTT_CACHE {
            self.rtt_cache.pop_front();
        }
        self.rtt_cache
            .push_back((peer.id, super::routing_table::rtt_micros(rtt)));
        let rtt = self.config.proximity.then_some(rtt);
        self.offer(now, peer, rtt);
    }

    /// The transport lost its link to `peer`, or could not dial it (also for an
    /// [`Output::Measure`]): suspect it (probe it, so it is declared dead if it stays silent)
    /// and re-route messages waiting for its acknowledgement. A peer we were only measuring
    /// (a candidate, not in our state) is not measured or admitted again for a while.
    pub fn handle_link_down(&mut self, now: Time, peer: NodeId) {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        if self.measuring.remove(&peer).is_some() && !self.knows(peer) {
            self.note_dead(now, peer);
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
        self.retry_parked(now);
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
        let out = self.outputs.pop_front();
        if out.is_none() && self.outputs.capacity() > 32 {
            // A join's burst of announcements must not pin memory in 100,000 idle nodes.
            self.outputs = VecDeque::new();
        }
        out
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

    fn route_step(&mut self, now: Time, msg: RouteMsg, mut excluded: Vec<NodeId>, attempts: u8) {
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
                self.fail_route(oldest.id, oldest.key);
            }
            self.waiting.push(msg);
            return;
        }
        match self.choose(msg.key, skip, self.is_active()) {
            Choice::Local => {
                // Deliver as root only if no closer leaf-set member is merely suspected: an
                // ack that timed out under load or a missed heartbeat does not make it dead,
                // and delivering here as well as there would be a misdelivery and a duplicate.
                match self.suspected_closer(msg.key) {
                    Some(on) if self.parked.len() < MAX_WAITING => self.parked.push(Parked {
                        on,
                        msg,
                        excluded,
                        attempts,
                    }),
                    _ => self.deliver(msg),
                }
            }
            Choice::Peer(next) => {
                self.note_hole(msg.key, next);
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

    /// The leaf-set member closest to `key`, if it is closer than us and being probed.
    fn suspected_closer(&self, key: Key) -> Option<NodeId> {
        let mut best: Option<NodeId> = None;
        for slot in self.leaf_set.iter() {
            let id = slot.peer.id;
            if key.is_closer(id, self.me.id)
                && best.map_or(true, |b| key.is_closer(id, b))
                && self
                    .probes
                    .iter()
                    .any(|p| p.peer.id == id && p.kind != ProbeKind::Candidate)
            {
                best = Some(id);
            }
        }
        best
    }

    /// Routes again the parked messages whose suspect's probe has settled.
    fn retry_parked(&mut self, now: Time) {
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

    /// Fills a routing-table hole as soon as routing meets it: when the slot for `key` is empty
    /// (and the key is outside the leaf set), the chosen next hop shares our prefix up to that
    /// row, so its row holds candidates. At most once per row per maintenance period.
    fn note_hole(&mut self, key: Key, next: PeerInfo) {
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

    fn send_route(
        &mut self,
        now: Time,
        next: PeerInfo,
        msg: RouteMsg,
        excluded: Vec<NodeId>,
        attempts: u8,
    ) {
        self.stats.forwarded += 1;
        let mut avoid = msg.avoid.clone();
        for id in &excluded {
            if !avoid.contains(id) {
                avoid.push(*id);
            }
        }
        if avoid.len() > super::message::MAX_AVOID {
            avoid.drain(..avoid.len() - super::message::MAX_AVOID);
        }
        self.send(
            next,
            Message::Route {
                id: msg.id,
                key: msg.key,
                origin: msg.origin,
                hops: msg.hops.saturating_add(1),
                avoid,
                payload: msg.payload.clone(),
            },
        );
        let deadline = now + self.hop_timeout(next.id, self.config.ack_timeout);
        self.in_flight.push(InFlight {
            carried: Carried::Route(msg),
            next,
            deadline,
            attempts,
            excluded,
            received: false,
        });
    }

    /// Tells `prev` that we passed on (or delivered) message `(origin, id)`.
    fn release(&mut self, prev: PeerInfo, origin: NodeId, id: u64) {
        self.send(
            prev,
            Message::RouteAck {
                origin,
                id,
                done: true,
            },
        );
    }

    fn deliver(&mut self, msg: RouteMsg) {
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
            if f.received {
                // It took the message but never passed it on: it may have died holding it, or
                // be slow. Check it without dropping it, and try another way.
                if self.knows(f.next.id) {
                    self.start_probe(now, f.next, ProbeKind::Verify);
                }
            } else {
                self.distrust(now, f.next.id);
            }
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
                    done: true,
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
                let deadline = now + self.hop_timeout(next.id, self.config.ack_timeout);
                self.in_flight.push(InFlight {
                    carried: Carried::Join(join),
                    next,
                    deadline,
                    attempts,
                    excluded,
                    received: false,
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
        self.consider(now, from, true);
        for peer in rows
            .into_iter()
            .flat_map(|(_, peers)| peers)
            .chain(neighbourhood)
        {
            self.consider(now, peer, true);
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
        // MSPastry's consistent join: every member of our leaf set has answered our probe, so
        // each has admitted us (see the Probe handler). We also wait for every candidate that
        // would be an immediate neighbour: until it answers or is found dead, we cannot know
        // who shares our key range. A farther candidate still being probed (typically a dead
        // node in a leaf set we were given) does not hold us back: it is not a member yet, and
        // it admits us when it gets the probe. Only an immediate neighbour that does not
        // know us could deliver our keys.
        if !j.got_leaf_set
            || self.probes.iter().any(|p| {
                p.kind == ProbeKind::Candidate && self.leaf_set.would_be_neighbour(p.peer.id)
            })
        {
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
        self.skip_growth_passes();
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
        for msg in std::mem::take(&mut self.waiting) {
            self.route_step(now, msg, Vec::new(), 0);
        }
        // Improve locality at once (the paper's second join phase, one peer per row): the
        // rows we were given came from nodes near the join route, not near us.
        if self.config.proximity {
            for row in 0..self.table.row_count() {
                let mut entries: Vec<Slot> = self.table.row(row).to_vec();
                entries.sort_by_key(|s| s.rtt().unwrap_or(Duration::MAX));
                for slot in entries.into_iter().take(self.config.join_row_refresh) {
                    self.request_row(slot.peer, row, true);
                }
            }
        }
    }

    fn on_announce(&mut self, now: Time, from: PeerInfo, theirs: &[PeerInfo]) {
        if !self.is_active() {
            return;
        }
        if self.announced.len() >= ANNOUNCED_MEMORY {
            self.announced.pop_front();
        }
        self.announced.push_back((from.id, now));
        self.add_live(now, from, true);
        if theirs.is_empty() {
            return;
        }
        // Tell the newcomer about leaf-set members it is missing (concurrent joins).
        let mut their_set = self.leaf_set.empty_for(from.id);
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

    /// Puts `peer` (heard from directly) into the leaf set only, with the usual events.
    fn admit_leaf(&mut self, now: Time, peer: PeerInfo) {
        let was_known = self.knows(peer.id);
        if self.leaf_set.insert(peer, None) {
            if !was_known {
                self.emit(Event::NodeJoined(peer.id));
            }
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
            self.fill_as_grown();
        }
    }

    /// `peer` is alive and active (we heard from it directly).
    /// `improve`: measure it even if its routing-table slot is taken (a newly announced node
    /// may be nearer than the holder: this keeps existing tables proximity-aware as nodes join).
    fn add_live(&mut self, now: Time, peer: PeerInfo, improve: bool) {
        let was_known = self.knows(peer.id);
        if self.leaf_set.insert(peer, None) && self.is_active() {
            if !was_known {
                self.emit(Event::NodeJoined(peer.id));
            }
            self.emit(Event::LeafSetChanged);
            self.refresh_watches(now);
            self.fill_as_grown();
        }
        self.consider(now, peer, improve);
    }

    /// The routing-table rows of a node that joined a small overlay keep the holes of that time
    /// (a branch that did not exist yet) when the overlay grows: newcomers announce themselves
    /// only to the nodes in their own state. So each time the estimated size first passes one
    /// of [`GROWTH_PASSES`] times the size at which every slot of row `r` is expected to hold a
    /// candidate (`16^(r+1)`), a row with empty slots is asked for again (a random entry's row;
    /// only the empty slots are measured). Passes already reached at activation are skipped:
    /// the second join phase has just asked.
    fn fill_as_grown(&mut self) {
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
    fn skip_growth_passes(&mut self) {
        let size = self.estimated_size();
        for (row, done) in self.growth_passes.iter_mut().enumerate() {
            *done = growth_passes_reached(size, row);
        }
    }

    /// Offers `peer` to the routing table and neighbourhood set: directly if its proximity is
    /// known or proximity is off, otherwise after a measurement. A measurement is requested
    /// only if the peer's slot is empty, or if `improve` (it may be nearer than the holder).
    fn consider(&mut self, now: Time, peer: PeerInfo, improve: bool) {
        if peer.id == self.me.id || self.table.contains(peer.id) || self.is_dead(peer.id) {
            return;
        }
        if !self.config.proximity {
            self.offer(now, peer, None);
            return;
        }
        if let Some(rtt) = self.rtt_of(peer.id) {
            self.offer(now, peer, Some(rtt));
            return;
        }
        let slot_empty = self
            .table
            .position(peer.id)
            .is_some_and(|(row, column)| self.table.get(row, column).is_none());
        if !slot_empty && !improve {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = self.measuring.entry(peer.id) {
            entry.insert(now);
            self.stats.measures += 1;
            self.outputs.push_back(Output::Measure { peer });
        }
    }

    /// Asks `peer` for its routing-table row `row`.
    fn request_row(&mut self, peer: PeerInfo, row: usize, improve: bool) {
        if self.row_requests.len() >= MAX_ROW_REQUESTS {
            self.row_requests.remove(0);
        }
        self.row_requests.push((peer.id, row as u8, improve));
        self.send(peer, Message::RowRequest { row: row as u8 });
    }

    fn offer(&mut self, now: Time, peer: PeerInfo, rtt: Option<Duration>) {
        let was_known = self.knows(peer.id);
        let insertion = self
            .table
            .insert(peer, rtt, self.config.proximity_hysteresis);
        let entered = matches!(
            insertion,
            super::Insertion::Added | super::Insertion::Replaced(_)
        );
        if insertion == super::Insertion::Added
            && self.is_active()
            && self
                .announced
                .iter()
                .any(|(id, at)| *id == peer.id && now < *at + self.config.probe_timeout)
        {
            // A newcomer filled an empty slot of ours: it may be the first node with that
            // prefix, so the other nodes sharing the row's prefix with us likely lack it too
            // (it announced itself only to the nodes it knows). Pass it on, once.
            self.announced.retain(|(id, _)| *id != peer.id);
            // Only the sparse deep rows: a shallow row's slots have many candidates, so a hole
            // there is ours alone (a failure) and lazy repair or maintenance fills it.
            // And only where slots are expected to hold a candidate (about N / 16^(row+1) each):
            // beyond that, an empty slot usually means nobody has the prefix.
            let size = self.estimated_size();
            let dense_enough = |row: usize| size >= 16f64.powi(row as i32 + 1);
            if let Some((row, _)) = self
                .table
                .position(peer.id)
                .filter(|&(row, _)| row >= 1 && dense_enough(row))
            {
                let others: Vec<PeerInfo> = self
                    .table
                    .row(row)
                    .iter()
                    .map(|s| s.peer)
                    .filter(|p| p.id != peer.id)
                    .collect();
                for other in others {
                    self.send(
                        other,
                        Message::RowReply {
                            row: row as u8,
                            entries: vec![peer],
                        },
                    );
                }
            }
        }
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

    /// The overlay's size estimated from the leaf set's span (exact count if it is not full).
    fn estimated_size(&self) -> f64 {
        let half = self.leaf_set.half();
        // In an overlay of at most L nodes the two sides share members: count them.
        if self.leaf_set.len() < 2 * half {
            return (self.leaf_set.len() + 1) as f64;
        }
        let (Some(left), Some(right)) = (
            self.leaf_set.side_slots(Side::Left).get(half - 1),
            self.leaf_set.side_slots(Side::Right).get(half - 1),
        ) else {
            return (self.leaf_set.len() + 1) as f64;
        };
        let span = left.peer.id.clockwise_distance(right.peer.id) as f64;
        if span <= 0.0 {
            return (self.leaf_set.len() + 1) as f64;
        }
        (2.0 * half as f64) * 2f64.powi(128) / span
    }

    /// Probes second-hand leaf-set candidates that would enter our leaf set.
    fn merge_candidates(&mut self, now: Time, peers: &[PeerInfo]) {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        if self.is_active() {
            // Leaf sets of nearby nodes also fill empty routing-table slots of the deepest rows.
            for peer in peers {
                self.consider(now, *peer, false);
            }
        }
        let fits = |this: &Self, peer: &PeerInfo| {
            peer.id != this.me.id
                && !this.leaf_set.contains(peer.id)
                && this.leaf_set.would_accept(peer.id)
                && !this.is_dead(peer.id)
        };
        if !peers.iter().any(|p| fits(self, p)) {
            return;
        }
        // Probe only the candidates that would still be members if every candidate (and every
        // one already being probed) answered: a hole of one needs one probe, not eight.
        let mut hypothetical = self.leaf_set.clone();
        for probe in &self.probes {
            if probe.kind == ProbeKind::Candidate {
                hypothetical.insert(probe.peer, None);
            }
        }
        for peer in peers.iter().filter(|p| fits(self, p)) {
            hypothetical.insert(*peer, None);
        }
        for peer in peers {
            if fits(self, peer)
                && hypothetical.contains(peer.id)
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
            self.add_live(now, from, false);
        }
        self.merge_candidates(now, leaf_set);
        if active && self.is_active() {
            self.check_against(now, from, leaf_set);
        }
    }

    /// Compares our leaf set with a live neighbour's: a member of ours that lies within the
    /// neighbour's range but is missing from its leaf set is probably dead (its failure notice
    /// did not reach us, e.g. when it sat at the far end of our leaf set). Probe it.
    fn check_against(&mut self, now: Time, from: PeerInfo, theirs: &[PeerInfo]) {
        if theirs.is_empty() {
            return;
        }
        let mut their_set = self.leaf_set.empty_for(from.id);
        for peer in theirs {
            their_set.insert(*peer, None);
        }
        let doubtful: Vec<PeerInfo> = self
            .leaf_set
            .iter()
            .map(|s| s.peer)
            .filter(|p| {
                p.id != from.id
                    && !their_set.contains(p.id)
                    && their_set.covers(p.id.to_key())
                    && !self.probes.iter().any(|probe| probe.peer.id == p.id)
            })
            .collect();
        for peer in doubtful {
            self.start_probe(now, peer, ProbeKind::Verify);
        }
    }

    /// Removes `id` from every structure. Returns whether it was in the leaf set.
    fn remove_everywhere(&mut self, now: Time, id: NodeId) -> bool {
        let was_leaf = self.leaf_set.remove(id);
        self.table.remove(id);
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
        // The table slot is refilled lazily: when routing meets the hole (`note_hole`) or by
        // periodic maintenance; a failure notice does not cost a row request per table holder.
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
                self.request_row(peer, row, false);
                return;
            }
        }
    }

    fn declare_dead(&mut self, now: Time, peer: PeerInfo) {
        self.stats.declared_dead += 1;
        tracing::debug!(me = ?self.me.id, dead = ?peer.id, "declaring node dead");
        self.forget_dead(now, peer.id, true, &[]);
    }

    /// Drops a dead node and spreads the news so that every leaf set holding it learns: the
    /// dead node's immediate neighbours tell their whole leaf sets (together they span every
    /// node that can hold it); a detector that is not a neighbour tells those neighbours.
    fn forget_dead(&mut self, now: Time, id: NodeId, detected_here: bool, told: &[NodeId]) {
        let position = self.leaf_set.position(id);
        let inner = position.and_then(|(side, rank)| {
            rank.checked_sub(1)
                .and_then(|r| self.leaf_set.side_slots(side).get(r))
                .map(|s| s.peer)
        });
        let outer = position
            .and_then(|(side, rank)| self.leaf_set.side_slots(side).get(rank + 1).map(|s| s.peer));
        let was_leaf = self.remove_everywhere(now, id);
        self.note_dead(now, id);
        if !was_leaf || !self.is_active() {
            return;
        }
        let leaf_set = self.leaf_set.peers();
        if position.is_some_and(|(_, rank)| rank == 0) {
            // We were its neighbour: tell our leaf set (but not who the sender already told).
            // The notice carries our leaf set, meaning "everyone here has been told".
            for member in leaf_set.iter().filter(|p| !told.contains(&p.id)) {
                self.send(
                    *member,
                    Message::NodeFailed {
                        node: id,
                        leaf_set: leaf_set.clone(),
                    },
                );
            }
        } else if detected_here {
            // Not its neighbour: tell its neighbours, who tell their leaf sets. An empty leaf
            // set says we told nobody else.
            for member in inner.into_iter().chain(outer) {
                self.send(
                    member,
                    Message::NodeFailed {
                        node: id,
                        leaf_set: Vec::new(),
                    },
                );
            }
        }
    }

    fn is_dead(&self, id: NodeId) -> bool {
        self.dead.iter().any(|(dead, _)| *dead == id)
    }

    fn note_dead(&mut self, now: Time, id: NodeId) {
        self.rtt_cache.retain(|(cached, _)| *cached != id);
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
        // Any message proves it alive: a suspicion (a late ack, a missed heartbeat) is over.
        // A candidate's probe still waits for its reply (which says whether it is active).
        self.probes
            .retain(|p| p.peer.id != id || p.kind == ProbeKind::Candidate);
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
        match kind {
            ProbeKind::Member | ProbeKind::Verify => self.stats.suspect_probes += 1,
            ProbeKind::Candidate => self.stats.candidate_probes += 1,
        }
        let retries_left = match kind {
            ProbeKind::Member | ProbeKind::Verify => self.config.probe_retries,
            // A candidate that does not answer is simply not admitted.
            ProbeKind::Candidate => 0,
        };
        self.probes.push(PendingProbe {
            peer,
            deadline: now + self.hop_timeout(peer.id, self.config.probe_timeout),
            retries_left,
            kind,
        });
        self.send_probe(peer);
    }

    /// `id` did not acknowledge a message (here or at an earlier hop): drop it from the
    /// routing table and neighbourhood set at once (cheap to relearn) and, if it is a leaf,
    /// probe it: it is skipped while suspected and declared dead if it stays silent.
    fn distrust(&mut self, now: Time, id: NodeId) {
        if let Some(slot) = self.leaf_set.get(id) {
            let peer = slot.peer;
            self.start_probe(now, peer, ProbeKind::Member);
        }
        self.neighbourhood.remove(id);
        self.rtt_cache.retain(|(cached, _)| *cached != id);
        if let Some((row, _)) = self.table.remove(id) {
            self.repair_table_row(row);
        }
    }

    /// The RTT we know for `id`, if any.
    fn rtt_of(&self, id: NodeId) -> Option<Duration> {
        self.rtt_cache
            .iter()
            .find(|(cached, _)| *cached == id)
            .map(|(_, us)| Duration::from_micros(u64::from(*us)))
            .or_else(|| self.leaf_set.get(id).and_then(Slot::rtt))
            .or_else(|| self.table.find(id).and_then(Slot::rtt))
            .or_else(|| {
                self.neighbourhood
                    .iter()
                    .find(|s| s.peer.id == id)
                    .and_then(Slot::rtt)
            })
    }

    /// How long to wait for `id` to answer: three RTTs plus [`Config::timeout_slack`] when
    /// its RTT is known, never more than `cap`.
    fn hop_timeout(&self, id: NodeId, cap: Duration) -> Duration {
        match self.rtt_of(id) {
            Some(rtt) => cap.min(rtt * 3 + self.config.timeout_slack),
            None => cap,
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
        let timeouts: Vec<Duration> = self
            .probes
            .iter()
            .map(|p| self.hop_timeout(p.peer.id, self.config.probe_timeout))
            .collect();
        let probe_cap = self.config.probe_timeout;
        let mut index = 0;
        self.probes.retain_mut(|p| {
            let timeout = timeouts[index];
            index += 1;
            if p.deadline > now {
                return true;
            }
            if p.retries_left > 0 {
                p.retries_left -= 1;
                // Back off: a late answer (load, jitter) must not make a live node dead.
                p.deadline = now + (timeout * 2).min(probe_cap);
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
                ProbeKind::Member | ProbeKind::Verify => self.declare_dead(now, peer),
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
        if self.measuring.is_empty() {
            self.measuring = HashMap::new();
        }
        self.in_flight.shrink_to(8);
        self.probes.shrink_to(8);
    }

    /// Periodic routing-table maintenance. Rounds alternate between improving proximity (rows
    /// in turn: ask a random entry of row r for its row r and measure the candidates) and
    /// filling holes (the shallowest row with an empty slot: only empty slots are measured).
    fn maintain_table(&mut self, _now: Time) {
        self.holes_asked = 0;
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
