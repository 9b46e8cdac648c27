//! Counters of one node's activity.

use super::MessageKind;

#[cfg(doc)]
use super::{Config, Event, Message, Transmit};

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
    /// RTT measurements requested ([`Transmit::Measure`]).
    pub measures: u64,
    /// Messages delivered here as root.
    pub delivered: u64,
    /// Route messages sent to a next hop (first tries and re-routes).
    pub forwarded: u64,
    /// Route messages this node passed to a next hop on their first try here, its own
    /// included: `forwarded` without re-routes and hedges, and without the forwards the
    /// application vetoed ([`Event::Forward`](super::Event::Forward)).
    pub first_forwards: u64,
    /// Hops that timed out and were re-routed.
    pub reroutes: u64,
    /// Copies of a message sent on to another hop because its next hop, silent lately, did
    /// not acknowledge it within about two round trips (hedged hops).
    pub hedges: u64,
    /// Own messages that used up their attempts and were routed again from scratch rather
    /// than given up (at most two rounds per message).
    pub fresh_rounds: u64,
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
    /// Messages whose peer lists broke the protocol's rules ([`Event::Misbehaved`]).
    pub misbehaviours: u64,
    /// Candidates named by peers that were worth measuring or probing but were dropped: the
    /// in-flight caps and the queue were full (the per-message bound trims lists silently).
    pub candidates_dropped: u64,
    /// Failure notices about a node this node had heard from within a probe timeout: checked by
    /// a probe that leaves the node usable for routing meanwhile.
    pub notices_contradicted: u64,
    /// Failure notices about a node not heard from lately: probed as a suspect.
    pub notices_verified: u64,
    /// Failures believed from two accounts that share no node, without a probe of our own
    /// (the core's `witness` rule).
    pub failures_believed: u64,
    /// Routed messages dropped on arrival because their origin could not be verified
    /// ([`Event::OriginRejected`]).
    pub origins_rejected: u64,
    /// Origin signatures checked (messages from their origin itself need none).
    pub origins_verified: u64,
    /// Own messages sent unsigned to what this node took for the key's root, which asked for
    /// the signature because it had to pass them on ([`Message::ProofWanted`]).
    pub proofs_wanted: u64,
    /// Own messages sent straight to a cached root's leaf-set member (the route cache).
    pub route_cache_hits: u64,
    /// Of those, the ones whose answer came from another node: the entry was stale (the
    /// receiver routed the message on).
    pub route_cache_stale: u64,
    /// Own messages whose cached member this node holds no link to, routed through the
    /// routing table instead (see [`crate::pastry::LinkView`]).
    pub route_cache_unlinked: u64,
    /// Roots' answers ([`Message::RootAnswer`]) accepted.
    pub root_answers: u64,
    /// Roots' answers ignored: for no message of ours, or with a claim that does not hold.
    pub root_answers_rejected: u64,
    /// Roots' answers not sent: the origin reached this node through other nodes and holds no
    /// link to it (see [`crate::pastry::LinkView`]).
    pub root_answers_unlinked: u64,
    /// Of those, the ones sent back along the route instead ([`Message::RootAnswerRelay`]).
    pub root_answers_relayed: u64,
    /// Relayed answers passed on towards their origin by this node as a hop.
    pub root_answer_relays: u64,
    /// Relayed answers ignored: for no message this node forwarded to their sender lately, or
    /// passed on already.
    pub root_answer_relays_rejected: u64,
    /// Links to cached members asked of the runtime ([`Transmit::Measure`]), for own messages
    /// whose cached member this node held no link to.
    pub route_cache_links_requested: u64,
    /// Probes of sparse rows' entries for their leaf sets (neighbour hints).
    pub hint_probes: u64,
    /// Neighbour hints kept.
    pub hints_learned: u64,
    /// Neighbour hints refused: the listed neighbours span more than our own leaf set.
    pub hints_refused: u64,
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
