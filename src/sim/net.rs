//! The simulated network: virtual time, the event queue, messages and RTT measurements in
//! flight with their delays (latency model, jitter, loss), node timers, liveness and the
//! oracle of live active ids.
//!
//! It holds no protocol state. Its owner (the [`Simulation`](super::Simulation), or the Pastry
//! unit tests' harness) keeps the nodes, pops events with [`Network::pop`], calls the nodes and
//! hands their sends and measurements back with [`Network::send`] and [`Network::measure`].
//! Node `i` has the fake address [`addr_of`]`(i)`; no socket is ever opened. A failed node is
//! silent: messages to it are dropped and measurements of it never answer.
//!
//! Determinism: events at equal times pop in the order they were scheduled (timers may be
//! asked to go after messages, see [`TimerOrder`]), and the only randomness (loss and jitter)
//! comes from the RNG the owner seeds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(crate) use super::latency::Latency;
use super::oracle::Oracle;
use super::queue::EventQueue;
use crate::id::NodeId;
use crate::pastry::{Message, PeerInfo};

/// No timer armed.
const NO_TIMER: u64 = u64::MAX;
/// First port of the fake node addresses.
const BASE_PORT: u16 = 7000;

/// Where a node's timer events go among the events of their time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerOrder {
    /// In arming order, like every other event. A deadline already past is moved to now, and
    /// one still due right after firing to 1 µs later, so a protocol that keeps asking for
    /// "now" cannot stall virtual time (the simulator).
    Armed,
    /// At its exact deadline, after every message and measurement of that time, lower node
    /// index first (the unit-test harness).
    #[cfg_attr(not(test), allow(dead_code))]
    AfterMessages,
}

/// What [`Network::pop`] hands the owner.
#[derive(Debug)]
pub(crate) enum NetEvent<X> {
    /// `msg` from node `from` arrives at node `to` (which may have died since it was sent).
    Message {
        /// The sender.
        from: u32,
        /// The receiver.
        to: u32,
        /// The message.
        msg: Message,
    },
    /// Node `node`'s timer is due: ask the node for its deadline and pass it to
    /// [`Network::timer_due`].
    Timer(u32),
    /// The RTT measurement `node` asked for of `peer` completed.
    Proximity {
        /// The node that measured.
        node: u32,
        /// The peer measured.
        peer: u32,
        /// The round-trip time in microseconds.
        rtt_us: u64,
    },
    /// An event the owner scheduled with [`Network::schedule`].
    Owner(X),
}

/// A queue entry: small, since a large run queues millions.
#[derive(Debug, Clone, Copy)]
enum Queued<X> {
    /// The message in `inflight[slot]` arrives.
    Deliver(u32),
    /// A node's timer (stale unless it equals the node's `timer_at`).
    Timer(u32),
    Proximity {
        node: u32,
        peer: u32,
        rtt_us: u32,
    },
    Owner(X),
}

struct InFlight {
    from: u32,
    to: u32,
    msg: Message,
}

/// What the network knows of a node.
#[derive(Debug, Clone, Copy)]
struct Host {
    id: NodeId,
    /// When its queued timer event fires (`NO_TIMER`: none queued).
    timer_at: u64,
    alive: bool,
    /// Whether it has become active (stays set after it dies).
    active: bool,
}

/// How messages travel, besides the latency model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LinkOptions {
    /// Each message's delay is multiplied by `1 + U(0, jitter)`.
    pub(crate) jitter: f64,
    /// Probability that a message is lost (not while compressed).
    pub(crate) loss: f64,
}

/// The simulated network of nodes `0..len()`, with latency source `L` and owner events `X`.
pub(crate) struct Network<L, X> {
    now: u64,
    queue: EventQueue<Queued<X>>,
    inflight: Vec<Option<InFlight>>,
    free_slots: Vec<u32>,
    latency: L,
    links: LinkOptions,
    /// Loss and jitter draws.
    rng: ChaCha8Rng,
    compressed: bool,
    timer_order: TimerOrder,
    hosts: Vec<Host>,
    oracle: Oracle,
    popped: u64,
}

impl<L: Latency, X> Network<L, X> {
    /// An empty network at time 0. `rng` draws loss and jitter.
    pub(crate) fn new(
        latency: L,
        links: LinkOptions,
        rng: ChaCha8Rng,
        timer_order: TimerOrder,
    ) -> Self {
        Self {
            now: 0,
            queue: EventQueue::new(),
            inflight: Vec::new(),
            free_slots: Vec::new(),
            latency,
            links,
            rng,
            compressed: false,
            timer_order,
            hosts: Vec::new(),
            oracle: Oracle::default(),
            popped: 0,
        }
    }

    /// Reserves room for `nodes` nodes.
    pub(crate) fn reserve(&mut self, nodes: usize) {
        self.hosts.reserve(nodes);
    }

    // ---- time and events ------------------------------------------------------------------

    /// Virtual time in microseconds.
    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// Moves the clock forward to `time` (never back).
    #[cfg_attr(not(test), allow(dead_code))] // the harness runs until a time, events or not
    pub(crate) fn advance_to(&mut self, time: u64) {
        self.now = self.now.max(time);
    }

    /// Events popped so far (stale timer events included).
    pub(crate) fn popped(&self) -> u64 {
        self.popped
    }

    /// Events queued (stale timer events included).
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Schedules an owner's event at `time`.
    pub(crate) fn schedule(&mut self, time: u64, event: X) {
        self.queue.push(time, Queued::Owner(event));
    }

    /// The next event due by `until` (microseconds), advancing the clock to it; `None` when
    /// the next one is later or there is none. Stale timer events are skipped.
    pub(crate) fn pop(&mut self, until: u64) -> Option<NetEvent<X>> {
        loop {
            if self.queue.peek_time()? > until {
                return None;
            }
            let (time, queued) = self.queue.pop()?;
            self.now = self.now.max(time);
            self.popped += 1;
            match queued {
                Queued::Deliver(slot) => {
                    let Some(InFlight { from, to, msg }) = self.inflight[slot as usize].take()
                    else {
                        continue;
                    };
                    self.free_slots.push(slot);
                    return Some(NetEvent::Message { from, to, msg });
                }
                Queued::Timer(node) => {
                    let host = &mut self.hosts[node as usize];
                    if host.timer_at != time {
                        continue; // stale: a later arming replaced it
                    }
                    host.timer_at = NO_TIMER;
                    return Some(NetEvent::Timer(node));
                }
                Queued::Proximity { node, peer, rtt_us } => {
                    return Some(NetEvent::Proximity {
                        node,
                        peer,
                        rtt_us: u64::from(rtt_us),
                    })
                }
                Queued::Owner(event) => return Some(NetEvent::Owner(event)),
            }
        }
    }

    // ---- nodes ----------------------------------------------------------------------------

    /// Adds a live, inactive node with id `id`; returns its index. The owner places it in the
    /// latency model.
    pub(crate) fn add_node(&mut self, id: NodeId) -> u32 {
        let index = self.hosts.len() as u32;
        self.hosts.push(Host {
            id,
            timer_at: NO_TIMER,
            alive: true,
            active: false,
        });
        index
    }

    /// Node `index`'s id.
    pub(crate) fn id(&self, index: u32) -> NodeId {
        self.hosts[index as usize].id
    }

    /// Node `index`'s id and fake address.
    pub(crate) fn peer(&self, index: u32) -> PeerInfo {
        PeerInfo {
            id: self.id(index),
            addr: addr_of(index),
        }
    }

    /// The node a peer description names, if it names one (its id must match the address).
    pub(crate) fn resolve(&self, peer: &PeerInfo) -> Option<u32> {
        let index = index_of(peer.addr)?;
        let host = self.hosts.get(index as usize)?;
        (host.id == peer.id).then_some(index)
    }

    /// Whether node `index` has not failed or left.
    pub(crate) fn is_alive(&self, index: u32) -> bool {
        self.hosts[index as usize].alive
    }

    /// Whether node `index` has become active (it stays so after it dies).
    pub(crate) fn is_active(&self, index: u32) -> bool {
        self.hosts[index as usize].active
    }

    /// Counts live node `index` as active (in the oracle); false if it already was, or is dead.
    pub(crate) fn activate(&mut self, index: u32) -> bool {
        let host = &mut self.hosts[index as usize];
        if !host.alive || host.active {
            return false;
        }
        host.active = true;
        self.oracle.insert(host.id);
        true
    }

    /// Node `index` is no longer active (it left): out of the oracle.
    #[cfg_attr(not(test), allow(dead_code))] // the simulator's nodes never leave
    pub(crate) fn deactivate(&mut self, index: u32) {
        let host = &mut self.hosts[index as usize];
        if host.active && host.alive {
            self.oracle.remove(host.id);
        }
        host.active = false;
    }

    /// Node `index` fails silently (or has left): out of the oracle, its timer disarmed, and
    /// nothing reaches it any more. False if it was dead already.
    pub(crate) fn kill(&mut self, index: u32) -> bool {
        let host = &mut self.hosts[index as usize];
        if !host.alive {
            return false;
        }
        host.alive = false;
        host.timer_at = NO_TIMER;
        if host.active {
            self.oracle.remove(host.id);
        }
        true
    }

    /// The oracle of live active nodes.
    pub(crate) fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    // ---- links ----------------------------------------------------------------------------

    /// The latency source.
    pub(crate) fn latency(&self) -> &L {
        &self.latency
    }

    /// The latency source, to place a new node.
    pub(crate) fn latency_mut(&mut self) -> &mut L {
        &mut self.latency
    }

    /// While compressed, every message takes 1 µs, an RTT result arrives 1 µs after the
    /// request (still reporting the model's RTT) and nothing is lost: a build of 100,000 joins
    /// then takes a few virtual seconds.
    pub(crate) fn set_compressed(&mut self, compressed: bool) {
        self.compressed = compressed;
    }

    /// Sends `msg` from node `from` to node `to`. False (and dropped) if `to` is dead; a
    /// message lost on the way counts as sent.
    pub(crate) fn send(&mut self, from: u32, to: u32, msg: Message) -> bool {
        if !self.is_alive(to) {
            return false;
        }
        if !self.compressed && self.links.loss > 0.0 && self.rng.gen_bool(self.links.loss) {
            return true;
        }
        let delay = self.delay(from, to);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.inflight.push(None);
                (self.inflight.len() - 1) as u32
            }
        };
        self.inflight[slot as usize] = Some(InFlight { from, to, msg });
        self.queue.push(self.now + delay, Queued::Deliver(slot));
        true
    }

    fn delay(&mut self, from: u32, to: u32) -> u64 {
        if self.compressed {
            return 1;
        }
        let base = self.latency.one_way_us(from as usize, to as usize);
        if self.links.jitter > 0.0 {
            let factor = 1.0 + self.rng.gen::<f64>() * self.links.jitter;
            (base as f64 * factor) as u64
        } else {
            base
        }
    }

    /// Node `node` measures the RTT to node `peer`: the result comes back after one round
    /// trip. False if `peer` is dead (it never answers, and the node is told nothing, as the
    /// real transport would).
    pub(crate) fn measure(&mut self, node: u32, peer: u32) -> bool {
        if !self.is_alive(peer) {
            return false;
        }
        let rtt_us = 2 * self.latency.one_way_us(node as usize, peer as usize);
        let after = if self.compressed { 1 } else { rtt_us };
        self.queue.push(
            self.now + after,
            Queued::Proximity {
                node,
                peer,
                // RTTs are far below 2^32 µs (71 minutes).
                rtt_us: rtt_us.min(u64::from(u32::MAX)) as u32,
            },
        );
        true
    }

    // ---- timers ---------------------------------------------------------------------------

    /// After a call into live node `index`, which now asks for a timeout at `deadline`: makes
    /// sure an event fires by then. One queued event per node at most, at its earliest known
    /// deadline: a later deadline needs no event now (the queued one re-arms when it finds
    /// nothing due, see [`Network::timer_due`]), an earlier one replaces it (the old one goes
    /// stale). `fired`: the call was the timer firing.
    pub(crate) fn arm_timer(&mut self, index: u32, deadline: Option<u64>, fired: bool) {
        let Some(deadline) = deadline else {
            return;
        };
        let now = self.now;
        let order = self.timer_order;
        let host = &mut self.hosts[index as usize];
        if !host.alive {
            return;
        }
        let at = match order {
            TimerOrder::Armed => deadline.max(if fired { now + 1 } else { now }),
            TimerOrder::AfterMessages => deadline,
        };
        if at < host.timer_at {
            host.timer_at = at;
            self.push_timer(index, at);
        }
    }

    /// On [`NetEvent::Timer`], with the node's current deadline: true if the node is due (the
    /// owner calls its timeout handler, then [`Network::arm_timer`]); if its deadline moved
    /// later, the timer is re-armed for it.
    pub(crate) fn timer_due(&mut self, index: u32, deadline: Option<u64>) -> bool {
        match deadline {
            Some(at) if at <= self.now => true,
            Some(at) => {
                self.hosts[index as usize].timer_at = at;
                self.push_timer(index, at);
                false
            }
            None => false,
        }
    }

    fn push_timer(&mut self, index: u32, at: u64) {
        match self.timer_order {
            TimerOrder::Armed => self.queue.push(at, Queued::Timer(index)),
            TimerOrder::AfterMessages => self.queue.push_late(at, index, Queued::Timer(index)),
        }
    }
}

/// The fake address of node `index`: `10.a.b.c:port`, the low 24 bits of the index in the IP
/// and the rest in the port. No socket is ever opened.
pub(crate) fn addr_of(index: u32) -> SocketAddr {
    let [hi, a, b, c] = index.to_be_bytes();
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, a, b, c)),
        BASE_PORT + u16::from(hi),
    )
}

/// The inverse of [`addr_of`].
pub(crate) fn index_of(addr: SocketAddr) -> Option<u32> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let [ten, a, b, c] = ip.octets();
    let hi = addr.port().checked_sub(BASE_PORT)?;
    if ten != 10 || hi > 255 {
        return None;
    }
    Some(u32::from_be_bytes([hi as u8, a, b, c]))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Nodes on a line, 1 ms apart per index step.
    struct Line;

    impl Latency for Line {
        fn one_way_us(&self, a: usize, b: usize) -> u64 {
            1000 * a.abs_diff(b) as u64
        }
    }

    fn network(order: TimerOrder, nodes: u32) -> Network<Line, &'static str> {
        let links = LinkOptions {
            jitter: 0.0,
            loss: 0.0,
        };
        let mut net = Network::new(Line, links, ChaCha8Rng::seed_from_u64(1), order);
        for n in 0..nodes {
            net.add_node(NodeId::from_u128(u128::from(n) + 100));
        }
        net
    }

    fn ping() -> Message {
        Message::Leave {
            leaf_set: Vec::new(),
        }
    }

    /// Pops everything, as `(time, what)`.
    fn drain(net: &mut Network<Line, &'static str>) -> Vec<(u64, String)> {
        std::iter::from_fn(|| {
            let event = net.pop(u64::MAX)?;
            let what = match event {
                NetEvent::Message { from, to, .. } => format!("msg {from}->{to}"),
                NetEvent::Timer(node) => format!("timer {node}"),
                NetEvent::Proximity { node, peer, rtt_us } => {
                    format!("rtt {node}->{peer} {rtt_us}")
                }
                NetEvent::Owner(name) => name.to_string(),
            };
            Some((net.now(), what))
        })
        .collect()
    }

    #[test]
    fn messages_take_the_latency_and_dead_nodes_hear_nothing() {
        let mut net = network(TimerOrder::Armed, 4);
        assert_eq!(net.resolve(&net.peer(2)), Some(2));
        assert_eq!(
            net.resolve(&PeerInfo {
                id: NodeId::from_u128(7),
                addr: addr_of(2)
            }),
            None,
            "the id must match the address"
        );
        assert!(net.send(0, 3, ping()));
        assert!(net.measure(0, 2));
        assert!(net.kill(1));
        assert!(!net.send(0, 1, ping()), "dropped: the destination is dead");
        assert!(!net.measure(0, 1), "a dead peer never answers");
        net.schedule(2500, "owner");
        assert_eq!(
            drain(&mut net),
            vec![
                (2500, "owner".to_string()),
                (3000, "msg 0->3".to_string()),
                (4000, "rtt 0->2 4000".to_string()),
            ]
        );
    }

    #[test]
    fn compressed_time_takes_one_microsecond_per_message_and_measurement() {
        let mut net = network(TimerOrder::Armed, 3);
        net.set_compressed(true);
        net.send(0, 2, ping());
        net.measure(2, 0);
        assert_eq!(
            drain(&mut net),
            vec![
                (1, "msg 0->2".to_string()),
                (1, "rtt 2->0 4000".to_string())
            ]
        );
    }

    #[test]
    fn the_oracle_counts_live_active_nodes_only() {
        let mut net = network(TimerOrder::Armed, 3);
        let key = NodeId::from_u128(101).to_key();
        assert_eq!(net.oracle().root(key), None);
        assert!(net.activate(0) && net.activate(1));
        assert!(!net.activate(1), "already active");
        assert_eq!(net.oracle().root(key), Some(NodeId::from_u128(101)));
        net.kill(1);
        assert!(net.is_active(1) && !net.is_alive(1));
        assert_eq!(net.oracle().root(key), Some(NodeId::from_u128(100)));
        assert!(!net.activate(1), "a dead node is not counted again");
        net.deactivate(0);
        assert_eq!(net.oracle().root(key), None);
    }

    #[test]
    fn armed_timers_keep_one_event_per_node_and_never_stall_time() {
        let mut net = network(TimerOrder::Armed, 2);
        net.arm_timer(0, Some(50), false);
        // A later deadline needs no new event; an earlier one replaces the queued one.
        net.arm_timer(0, Some(80), false);
        net.arm_timer(1, Some(30), false);
        net.arm_timer(1, Some(10), false);
        assert_eq!(net.queued(), 3);
        let Some(NetEvent::Timer(1)) = net.pop(u64::MAX) else {
            panic!("node 1's timer first");
        };
        assert_eq!(net.now(), 10);
        // Still due right after firing: 1 µs later, not now.
        net.arm_timer(1, Some(10), true);
        assert_eq!(
            drain(&mut net)
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<_>>(),
            vec![11, 50],
            "node 1 at 11, the stale event at 30 skipped, node 0 at 50"
        );
        // Node 0's deadline moved from 50 to 80: its owner re-arms when told it is not due.
        assert!(!net.timer_due(0, Some(80)));
        assert_eq!(drain(&mut net), vec![(80, "timer 0".to_string())]);
        assert!(net.timer_due(0, Some(80)));
    }

    #[test]
    fn harness_timers_fire_after_the_messages_of_their_time_by_node() {
        let mut net = network(TimerOrder::AfterMessages, 3);
        net.arm_timer(2, Some(1000), false);
        net.arm_timer(1, Some(1000), false);
        net.send(0, 1, ping());
        net.kill(0);
        net.arm_timer(0, Some(1000), false);
        assert_eq!(
            drain(&mut net),
            vec![
                (1000, "msg 0->1".to_string()),
                (1000, "timer 1".to_string()),
                (1000, "timer 2".to_string()),
            ],
            "a dead node's timer is never armed"
        );
        assert_eq!(net.pop(u64::MAX).map(|_| ()), None);
        net.advance_to(5000);
        net.advance_to(10);
        assert_eq!(net.now(), 5000);
    }

    #[test]
    fn pop_stops_at_the_horizon() {
        let mut net = network(TimerOrder::Armed, 2);
        net.send(0, 1, ping());
        assert!(net.pop(999).is_none());
        assert_eq!(net.now(), 0);
        assert!(net.pop(1000).is_some());
        assert_eq!(net.popped(), 1);
    }
}
