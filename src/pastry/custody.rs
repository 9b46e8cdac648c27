//! Custody: messages passed to a next hop and held until it acknowledges (`RouteAck`) and
//! passes them on (`done`), and re-routing when a next hop stays silent.
//!
//! A hop that passes a message on holds its receipt to the sender back for a short while
//! ([`Pastry::receipt_delay`]): if its own next hop answers within it (the common case), the
//! sender gets the one `done` instead of a receipt and then a `done`, which saves a QUIC stream,
//! a datagram and the datagram's acknowledgement. The sender waits at least
//! [`Config::timeout_slack`](super::Config::timeout_slack) for either, and the delay is a small
//! part of that, so a held receipt never makes it take a live hop for a dead one.

use crate::id::NodeId;

use super::join::JoinMsg;
use super::liveness::ProbeKind;
use super::origin::{route_digest, OriginProof};
use super::routing::RouteMsg;
use super::state::Pastry;
use super::{Message, PeerInfo, Time};

#[derive(Debug, Clone)]
pub(super) enum Carried {
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
pub(super) struct InFlight {
    pub(super) carried: Carried,
    pub(super) next: PeerInfo,
    pub(super) deadline: Time,
    pub(super) attempts: u8,
    pub(super) excluded: Vec<NodeId>,
    /// The next hop acknowledged receipt; we wait for it to pass the message on.
    pub(super) received: bool,
    /// When a copy goes on to another hop if `next` has not acknowledged receipt by then
    /// (see [`super::hedge`]); `None`: never.
    pub(super) hedge_at: Option<Time>,
    /// A copy went on to another hop, whose own custody entry carries the message: this one
    /// is not routed again when it expires.
    pub(super) hedged: bool,
}

/// A receipt not sent yet: to `to`, for message `(origin, id)`, due at `due`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeldReceipt {
    to: PeerInfo,
    origin: NodeId,
    id: u64,
    pub(super) due: Time,
}

/// The share of [`Config::timeout_slack`](super::Config::timeout_slack) a receipt may be held.
const RECEIPT_DELAY_DIVISOR: u32 = 8;

/// Fresh rounds of [`Config::max_route_attempts`](super::Config::max_route_attempts) the
/// origin of a message starts before it gives the message up ([`super::Event::RouteFailed`]).
const MAX_FRESH_ROUNDS: u8 = 2;

impl Pastry {
    /// How long a hop that passed a message on holds its receipt back.
    pub(super) fn receipt_delay(&self) -> std::time::Duration {
        self.config.timeout_slack / RECEIPT_DELAY_DIVISOR
    }

    /// Acknowledges receipt of message `(origin, id)` to `to`, the hop it came from: at once
    /// without a delay, else when the delay ends unless its `done` went first.
    pub(super) fn acknowledge_receipt(&mut self, now: Time, to: PeerInfo, origin: NodeId, id: u64) {
        let delay = self.receipt_delay();
        if delay.is_zero() {
            self.send_receipt(to, origin, id);
        } else {
            self.receipts.push(HeldReceipt {
                to,
                origin,
                id,
                due: now + delay,
            });
        }
    }

    fn send_receipt(&mut self, to: PeerInfo, origin: NodeId, id: u64) {
        self.send(
            to,
            Message::RouteAck {
                origin,
                id,
                done: false,
            },
        );
    }

    /// Sends the held receipts that are due.
    pub(super) fn send_due_receipts(&mut self, now: Time) {
        let mut index = 0;
        while index < self.receipts.len() {
            if self.receipts[index].due <= now {
                let r = self.receipts.swap_remove(index);
                self.send_receipt(r.to, r.origin, r.id);
            } else {
                index += 1;
            }
        }
        if self.receipts.is_empty() && self.receipts.capacity() > 16 {
            self.receipts = Vec::new();
        }
    }

    /// A [`Message::RouteAck`] from `from`. Returns false if it acknowledges nothing we hold.
    pub(super) fn on_route_ack(
        &mut self,
        now: Time,
        from: PeerInfo,
        origin: NodeId,
        id: u64,
        done: bool,
    ) -> bool {
        let Some(index) = self
            .in_flight
            .iter()
            .position(|f| f.next.id == from.id && f.carried.ident() == (origin, id))
        else {
            return false;
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
            f.hedge_at = None;
            f.deadline = now + self.config.custody_timeout;
            let prev = match &f.carried {
                Carried::Route(m) => m.prev.map(|p| (p, m.origin.id, m.id)),
                Carried::Join(_) => None,
            };
            if let Some((prev, origin, id)) = prev {
                self.release(prev, origin, id);
            }
        }
        true
    }

    pub(super) fn send_route(
        &mut self,
        now: Time,
        next: PeerInfo,
        msg: RouteMsg,
        excluded: Vec<NodeId>,
        attempts: u8,
    ) {
        self.stats.forwarded += 1;
        if attempts == 0 {
            self.stats.first_forwards += 1;
        }
        let mut msg = msg;
        if msg.proof.is_none() && msg.origin.id == self.me.id {
            // Our own message. A root needs no proof from the origin itself (the link proves
            // who sent it), so it is signed only if `next` may pass it on: unless it is, by our
            // leaf set, the key's root. If that guess is wrong, `next` asks for the proof
            // (`ProofWanted`) instead of passing the message on.
            // A member of a cached root's leaf set counts as the root too.
            let to_root = attempts == 0
                && ((self.leaf_set.covers(msg.key) && self.leaf_set.contains(next.id))
                    || self.sent_via_cache(msg.id, next.id));
            if !to_root {
                msg.proof = self.sign_own(&msg);
            }
        }
        self.transmit_route(next, &msg, &excluded);
        self.hold_sent(now, next, msg, excluded, attempts);
    }

    /// Holds `msg`, just sent to `next`, in custody until `next` acknowledges it: its
    /// acknowledgement deadline and, if it is hedged, when a copy goes elsewhere.
    pub(super) fn hold_sent(
        &mut self,
        now: Time,
        next: PeerInfo,
        msg: RouteMsg,
        excluded: Vec<NodeId>,
        attempts: u8,
    ) {
        let deadline = now + self.hop_timeout(next.id, self.config.ack_timeout);
        let hedge_at = self.hedge_time(now, next.id, msg.key, attempts);
        self.in_flight.push(InFlight {
            carried: Carried::Route(msg),
            next,
            deadline,
            attempts,
            excluded,
            received: false,
            hedge_at,
            hedged: false,
        });
    }

    /// Sends `msg` to `next`, one hop further, avoiding `excluded` too.
    pub(super) fn transmit_route(&mut self, next: PeerInfo, msg: &RouteMsg, excluded: &[NodeId]) {
        let mut avoid = msg.avoid.clone();
        for id in excluded {
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
                proof: msg.proof.clone(),
            },
        );
    }

    /// Our proof over our own message `msg` (`None` without an authenticator).
    pub(super) fn sign_own(&mut self, msg: &RouteMsg) -> Option<Box<OriginProof>> {
        let digest = route_digest(self.me.id, msg.id, msg.key, &msg.payload);
        self.auth.as_mut().map(|auth| Box::new(auth.sign(&digest)))
    }

    /// A [`Message::ProofWanted`] from `from`: the message `id` we sent it unsigned must be
    /// passed on after all. Signs it and sends it again, once. Returns false if we hold no
    /// such message (a stale or made-up request changes nothing).
    pub(super) fn on_proof_wanted(&mut self, now: Time, from: PeerInfo, id: u64) -> bool {
        let me = self.me.id;
        let Some(index) = self.in_flight.iter().position(|f| {
            f.next.id == from.id
                && matches!(&f.carried, Carried::Route(m)
                    if m.origin.id == me && m.id == id && m.proof.is_none())
        }) else {
            return false;
        };
        let mut f = self.in_flight.swap_remove(index);
        if let Carried::Route(m) = &mut f.carried {
            m.proof = self.sign_own(m);
            self.stats.proofs_wanted += 1;
            let excluded = f.excluded.clone();
            self.transmit_route(f.next, m, &excluded);
        }
        f.received = false;
        // It answered: not silent.
        f.hedge_at = None;
        f.deadline = now + self.hop_timeout(f.next.id, self.config.ack_timeout);
        self.in_flight.push(f);
        true
    }

    /// Tells `prev` that we passed on (or delivered) message `(origin, id)`; a receipt still
    /// held for it is not needed any more.
    pub(super) fn release(&mut self, prev: PeerInfo, origin: NodeId, id: u64) {
        self.receipts
            .retain(|r| !(r.to.id == prev.id && r.origin == origin && r.id == id));
        self.send(
            prev,
            Message::RouteAck {
                origin,
                id,
                done: true,
            },
        );
    }

    pub(super) fn expire_in_flight(&mut self, now: Time) {
        self.send_due_receipts(now);
        self.send_due_hedges(now);
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
            if f.hedged {
                // Its copy went on to another hop, which holds it in custody: the message is
                // not routed a third way; the silent hop is checked as any other.
                if f.received {
                    if self.knows(f.next.id) {
                        self.start_probe(now, f.next, ProbeKind::Verify);
                    }
                } else {
                    self.distrust(now, f.next.id);
                }
                continue;
            }
            self.stats.reroutes += 1;
            let (origin, id) = f.carried.ident();
            tracing::debug!(
                me = %self.me.id,
                next = %f.next.id,
                %origin,
                id,
                received = f.received,
                "the next hop did not pass a message on in time; routing it again"
            );
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
                if let Carried::Route(mut m) = f.carried {
                    if m.prev.is_none()
                        && m.origin.id == self.me.id
                        && m.fresh_rounds < MAX_FRESH_ROUNDS
                    {
                        // Our own message, and we are its only holder: giving up loses it.
                        // The hops that failed it are out of our state by now (dropped from
                        // the table, or under probe), so a fresh round of attempts, with no
                        // exclusions, takes other routes.
                        m.fresh_rounds += 1;
                        self.stats.fresh_rounds += 1;
                        self.route_step(now, m, Vec::new(), 1);
                    } else {
                        self.fail_route(m.origin.id, m.id, m.key);
                    }
                }
                continue;
            }
            match f.carried {
                Carried::Route(m) => {
                    self.route_step(now, m, f.excluded, attempts);
                }
                Carried::Join(j) => self.forward_join(now, j, f.excluded, attempts),
            }
        }
    }
}
