//! Address discovery and reachability: which addresses this node's peers see it at, and whether
//! a node it never sent to can dial it ([`Reachability`]).
//!
//! # The protocol ([`ReachMessage`], one request per bi stream on existing links)
//! - **Observe.** A node asks some of its peers which address they see it at; each answers its
//!   link's remote address. A peer vouches for one address at a time, and an address is
//!   believed ([`ReachStatus::observed_addrs`]) once [`observed::CONFIRMATIONS`] distinct peers
//!   report it. Behind a symmetric NAT every peer sees another port, so none is believed.
//! - **Check.** Node P asks a peer X "am I reachable?". X picks another of its peers, Y (not P,
//!   not at P's IP), and asks it to dial P back at the address *X* sees P at, never one P
//!   names (that would let P aim dials at anyone). Y dials from a fresh UDP socket
//!   ([`Transport::dial_back`]), so no NAT mapping that P's own traffic opened can let it in,
//!   and reports to X, which tells P. Success makes P [`Reachability::Public`], failure
//!   [`Reachability::Private`]. P believes "reachable" only if a dial-back handshake really
//!   reached it meanwhile ([`Transport::dial_backs_answered`]).
//! - **Over relays, nothing.** A peer whose link to this node runs through a relay sees it at
//!   a synthetic address, which says nothing of its network: a dial-back there from a fresh
//!   socket cannot arrive, so its "unreachable" would be wrong for a public node. Such peers
//!   are not asked (`askable`), a request that comes in over a relay is refused, and a
//!   synthetic address is never believed as an observed one.
//! - **Bounds.** Every request is rate-limited per requester (observe, check and dial-back each
//!   with their own budget, refused with [`ErrorCode::Refused`] past it); checks relayed and
//!   dial-backs made are capped in number at once ([`ErrorCode::Unavailable`] past it) and
//!   counted ([`ReachStatus`]); a node dials back only at the address another member saw.
//! - **When.** A node observes a second after its first link, then at intervals that double up
//!   to two minutes. It checks as soon as it has a link (a check that gets no answer is retried
//!   with another peer after a pause that doubles, up to a minute), then every ten minutes, or
//!   at once when its believed addresses change.
//! - **Verdict.** An answer that contradicts the confirmed verdict (or is the first) is checked
//!   again at once through another peer; two agreeing answers from distinct peers make the
//!   verdict ([`ReachStatus::verdict`]), which the node's private or public mode follows.
//!   After a change the checks come sooner (15 s, doubling to the ten-minute period); see
//!   [`verdict`].
//!
//! The state is [`Reachability::Unknown`] until the first check answers; status reports show
//! it as `"private"` (a node nobody has dialled back is not known to be reachable).
//!
//! The rest of the node (and an embedder) follows the state through
//! [`Node::reachability`](crate::node::Node::reachability), a watch channel.
//!
//! This module owns the protocol's state and bounds; it reaches the network only through the
//! node's [`Transport`] (requests on existing links, and its dial-back) and knows nothing of
//! Pastry. Relays and hole punching, which act on the reachability it reports, live elsewhere.

pub mod message;
pub mod observed;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info};

pub use message::ReachMessage;
pub use observed::{ObservedAddrs, RateLimiter};
pub use verdict::Verdict;

use crate::id::NodeId;
use crate::relay::is_synthetic;
use crate::transport::{LinkedPeer, Responder, Transport};
use crate::wire::{Body, ErrorCode};

/// Whether nodes this node never sent to can dial it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// No dial-back has answered yet.
    #[default]
    Unknown,
    /// A dial-back from another node reached this node.
    Public,
    /// A dial-back from another node did not reach this node (behind NAT or a firewall).
    Private,
}

impl Reachability {
    /// The word status reports use: `"public"`, or `"private"` (also while unknown).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private | Self::Unknown => "private",
        }
    }
}

/// What a node knows of its own reachability ([`Node::reachability`](crate::node::Node::reachability)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReachStatus {
    /// The latest check's outcome.
    pub reachability: Reachability,
    /// The confirmed verdict: what two checks through distinct peers agreed on last
    /// (`Unknown` until then). The node's private or public mode follows it.
    pub verdict: Reachability,
    /// Addresses at least two distinct peers see this node at, sorted.
    pub observed_addrs: Vec<SocketAddr>,
    /// How long after the node started its reachability was first known.
    pub learned_after: Option<Duration>,
    /// Checks this node completed for itself.
    pub checks: u64,
    /// Dial-backs this node made for others.
    pub dial_backs: u64,
    /// Requests of others this node refused (rate limits, caps).
    pub refused: u64,
}

/// A reachability request from a peer, handed over by the node's runtime.
pub(crate) struct Request {
    pub(crate) from: NodeId,
    pub(crate) from_addr: SocketAddr,
    pub(crate) message: ReachMessage,
    pub(crate) reply: Responder,
}

/// Requests waiting for the service; past it, new ones are dropped (reset unanswered).
pub(crate) const REQUEST_QUEUE: usize = 256;

const UNKNOWN_TICK: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
const OBSERVE_EVERY: Duration = Duration::from_secs(120);
const OBSERVE_FANOUT: usize = 3;
const REPORT_MAX_AGE: Duration = Duration::from_secs(900);
const MAX_REPORTERS: usize = 32;
const LIMIT_WINDOW: Duration = Duration::from_secs(60);
const LIMIT_PEERS: usize = 1024;
/// Observe requests answered per peer per minute.
pub const OBSERVES_PER_MINUTE: u32 = 30;
/// Check requests relayed per peer per minute.
pub const CHECKS_PER_MINUTE: u32 = 4;
/// Dial-backs made per requesting peer per minute.
pub const DIAL_BACKS_PER_MINUTE: u32 = 6;
const CHECKS_IN_FLIGHT: usize = 16;
const DIAL_BACKS_IN_FLIGHT: usize = 8;

enum Outcome {
    Observed(NodeId, SocketAddr),
    /// A check through this peer answered (`None`: no answer believed).
    Checked(NodeId, Option<bool>),
}

/// Starts the service; returns the queue the runtime hands requests to and the status channel.
pub(crate) fn spawn(transport: Transport) -> (mpsc::Sender<Request>, watch::Receiver<ReachStatus>) {
    let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    let (status, status_rx) = watch::channel(ReachStatus::default());
    let (outcomes, outcomes_rx) = mpsc::channel(64);
    let service = Service {
        started: Instant::now(),
        transport,
        status,
        observed: ObservedAddrs::new(MAX_REPORTERS, REPORT_MAX_AGE),
        observe_limit: RateLimiter::new(OBSERVES_PER_MINUTE, LIMIT_WINDOW, LIMIT_PEERS),
        check_limit: RateLimiter::new(CHECKS_PER_MINUTE, LIMIT_WINDOW, LIMIT_PEERS),
        dial_back_limit: RateLimiter::new(DIAL_BACKS_PER_MINUTE, LIMIT_WINDOW, LIMIT_PEERS),
        checks: Arc::new(Semaphore::new(CHECKS_IN_FLIGHT)),
        dial_backs: Arc::new(Semaphore::new(DIAL_BACKS_IN_FLIGHT)),
        dial_backs_made: Arc::new(AtomicU64::new(0)),
        refused: 0,
        outcomes,
        reachability: Reachability::Unknown,
        verdict: Verdict::default(),
        checks_done: 0,
        check_pending: false,
        last_check: None,
        last_observe: None,
        checked_for: Vec::new(),
        turn: 0,
        retry_after: Duration::ZERO,
        retry_at: Instant::now(),
        observe_after: Duration::ZERO,
    };
    tokio::spawn(service.run(requests_rx, outcomes_rx));
    (requests, status_rx)
}

struct Service {
    started: Instant,
    transport: Transport,
    status: watch::Sender<ReachStatus>,
    observed: ObservedAddrs,
    observe_limit: RateLimiter,
    check_limit: RateLimiter,
    dial_back_limit: RateLimiter,
    checks: Arc<Semaphore>,
    dial_backs: Arc<Semaphore>,
    dial_backs_made: Arc<AtomicU64>,
    refused: u64,
    outcomes: mpsc::Sender<Outcome>,
    reachability: Reachability,
    verdict: Verdict,
    checks_done: u64,
    check_pending: bool,
    last_check: Option<Instant>,
    last_observe: Option<Instant>,
    /// The believed addresses when the last check completed.
    checked_for: Vec<SocketAddr>,
    /// Rotates the peers asked.
    turn: usize,
    /// The pause after a check that got no answer (doubling up to [`MAX_RETRY`]).
    retry_after: Duration,
    /// No check before this.
    retry_at: Instant,
    /// The pause between observation rounds (doubling up to [`OBSERVE_EVERY`]).
    observe_after: Duration,
}

impl Service {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut outcomes: mpsc::Receiver<Outcome>,
    ) {
        let mut tick = tokio::time::interval(UNKNOWN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.answer(request),
                    // The node is gone.
                    None => break,
                },
                Some(outcome) = outcomes.recv() => self.on_outcome(outcome),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn publish(&mut self) {
        let learned_after = self.status.borrow().learned_after.or_else(|| {
            (self.reachability != Reachability::Unknown).then(|| self.started.elapsed())
        });
        let refused = self.refused
            + self.observe_limit.refused()
            + self.check_limit.refused()
            + self.dial_back_limit.refused();
        let next = ReachStatus {
            reachability: self.reachability,
            verdict: self.verdict.confirmed(),
            observed_addrs: self.observed.confirmed(),
            learned_after,
            checks: self.checks_done,
            dial_backs: self.dial_backs_made.load(Ordering::Relaxed),
            refused,
        };
        self.status.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.observed.expire(now.into_std());
        let links = askable(self.transport.linked_peers());
        if links.is_empty() {
            return;
        }
        let unknown = self.reachability == Reachability::Unknown;
        let observe_due = self
            .last_observe
            .map_or(true, |at| now.duration_since(at) >= self.observe_after);
        if observe_due {
            self.last_observe = Some(now);
            // Rounds start a second apart and spread out to every two minutes.
            self.observe_after = (self.observe_after * 2).clamp(UNKNOWN_TICK, OBSERVE_EVERY);
            for i in 0..OBSERVE_FANOUT.min(links.len()) {
                let link = &links[(self.turn + i) % links.len()];
                let (transport, outcomes, peer, addr) = (
                    self.transport.clone(),
                    self.outcomes.clone(),
                    link.peer,
                    link.addr,
                );
                tokio::spawn(async move {
                    let body = Body::Reach(ReachMessage::Observe);
                    if let Ok(Body::Reach(ReachMessage::Observed { addr: seen })) =
                        transport.request(peer, addr, &body).await
                    {
                        let _ = outcomes.send(Outcome::Observed(peer, seen)).await;
                    }
                });
            }
        }
        let addrs_changed = self.observed.confirmed() != self.checked_for;
        let confirming = self.verdict.confirming();
        let check_due = unknown
            || addrs_changed
            || confirming.is_some()
            || self.last_check.map_or(true, |at| {
                now.duration_since(at) >= self.verdict.recheck_after()
            });
        // A confirmation goes through another peer than the answer it confirms.
        let link = (0..links.len())
            .map(|i| &links[(self.turn + i) % links.len()])
            .find(|link| Some(link.peer) != confirming);
        if let (true, false, true, Some(link)) =
            (check_due, self.check_pending, now >= self.retry_at, link)
        {
            self.check_pending = true;
            let (transport, outcomes, peer, addr) = (
                self.transport.clone(),
                self.outcomes.clone(),
                link.peer,
                link.addr,
            );
            tokio::spawn(async move {
                let body = Body::Reach(ReachMessage::Check);
                let answered_before = transport.dial_backs_answered();
                let result = transport.request(peer, addr, &body).await;
                if matches!(
                    result,
                    Ok(Body::Reach(ReachMessage::CheckResult {
                        reachable: true,
                        ..
                    }))
                ) {
                    // The accept task counting the dial-back may not have run yet.
                    for _ in 0..20 {
                        if transport.dial_backs_answered() != answered_before {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                let answer = match result {
                    // "Reachable" is believed only if a dial-back really arrived meanwhile: a
                    // peer that lies cannot make this node think it is public.
                    Ok(Body::Reach(ReachMessage::CheckResult {
                        reachable: true, ..
                    })) if transport.dial_backs_answered() == answered_before => {
                        debug!(%peer, "claimed a dial-back that never arrived");
                        None
                    }
                    Ok(Body::Reach(ReachMessage::CheckResult { reachable, .. })) => Some(reachable),
                    other => {
                        debug!(%peer, ?other, "reachability check not answered");
                        None
                    }
                };
                let _ = outcomes.send(Outcome::Checked(peer, answer)).await;
            });
        }
        self.turn = self.turn.wrapping_add(1);
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Observed(peer, addr) => {
                self.observed.report(peer, addr, Instant::now().into_std());
            }
            Outcome::Checked(peer, answer) => {
                self.check_pending = false;
                if answer.is_none() {
                    // Ask another peer next, after a pause that doubles while checks fail.
                    self.retry_after = (self.retry_after * 2).clamp(UNKNOWN_TICK, MAX_RETRY);
                    self.retry_at = Instant::now() + self.retry_after;
                }
                if let Some(reachable) = answer {
                    self.retry_after = Duration::ZERO;
                    let next = if reachable {
                        Reachability::Public
                    } else {
                        Reachability::Private
                    };
                    if next != self.reachability {
                        info!(reachability = next.as_str(), "reachability known");
                    }
                    self.reachability = next;
                    self.checks_done += 1;
                    self.last_check = Some(Instant::now());
                    self.checked_for = self.observed.confirmed();
                    if let Some(confirmed) = self.verdict.on_answer(reachable, peer) {
                        info!(verdict = confirmed.as_str(), "reachability confirmed");
                    }
                }
            }
        }
        self.publish();
    }

    fn answer(&mut self, request: Request) {
        let Request {
            from,
            from_addr,
            message,
            reply,
        } = request;
        let now = Instant::now().into_std();
        let about_the_asker = matches!(message, ReachMessage::Observe | ReachMessage::Check);
        if about_the_asker && is_synthetic(from_addr) {
            // A relayed asker: the address this node sees it at is its synthetic one. (A
            // dial-back request names its target itself, and may come over any link.)
            self.refused += 1;
            self.publish();
            return refuse(
                reply,
                ErrorCode::BadRequest,
                "no address to observe or dial back over a relay",
            );
        }
        match message {
            ReachMessage::Observe => {
                if !self.observe_limit.allow(from, now) {
                    self.publish();
                    return refuse(reply, ErrorCode::Refused, "too many observe requests");
                }
                let answer = Body::Reach(ReachMessage::Observed { addr: from_addr });
                tokio::spawn(async move {
                    let _ = reply.reply(&answer).await;
                });
            }
            ReachMessage::Check => self.relay_check(from, from_addr, reply, now),
            ReachMessage::DialBack { peer, addr } => self.dial_back(from, peer, addr, reply, now),
            other => {
                debug!(%from, ?other, "not a reachability request");
                refuse(reply, ErrorCode::BadRequest, "not a reachability request");
            }
        }
    }

    /// P (`from`) asks whether it is reachable: another peer dials it back at `from_addr`.
    fn relay_check(
        &mut self,
        from: NodeId,
        from_addr: SocketAddr,
        reply: Responder,
        now: std::time::Instant,
    ) {
        if !self.check_limit.allow(from, now) {
            self.publish();
            return refuse(reply, ErrorCode::Refused, "too many reachability checks");
        }
        let Ok(permit) = self.checks.clone().try_acquire_owned() else {
            self.refused += 1;
            self.publish();
            return refuse(reply, ErrorCode::Unavailable, "too many checks in progress");
        };
        // Another node, not at the asker's IP (but for loopback, where every node is): one
        // behind the same NAT could reach it through the NAT and make it look public.
        let helpers: Vec<_> = self
            .transport
            .linked_peers()
            .into_iter()
            .filter(|link| {
                link.peer != from
                    && (link.addr.ip() != from_addr.ip() || from_addr.ip().is_loopback())
            })
            .collect();
        if helpers.is_empty() {
            return refuse(reply, ErrorCode::Unavailable, "no other peer to dial back");
        }
        let helper = &helpers[rand::random::<usize>() % helpers.len()];
        let (transport, helper_id, helper_addr) =
            (self.transport.clone(), helper.peer, helper.addr);
        tokio::spawn(async move {
            let _permit = permit;
            let body = Body::Reach(ReachMessage::DialBack {
                peer: from,
                addr: from_addr,
            });
            let answer = match transport.request(helper_id, helper_addr, &body).await {
                Ok(Body::Reach(ReachMessage::CheckResult { reachable, .. })) => {
                    Body::Reach(ReachMessage::CheckResult {
                        reachable,
                        addr: from_addr,
                    })
                }
                other => {
                    debug!(helper = %helper_id, ?other, "dial-back helper did not answer");
                    Body::Error {
                        code: ErrorCode::Unavailable as u16,
                        message: "the dial-back helper did not answer".to_owned(),
                    }
                }
            };
            let _ = reply.reply(&answer).await;
        });
    }

    /// X (`from`) asks this node to dial `peer` at `addr`.
    fn dial_back(
        &mut self,
        from: NodeId,
        peer: NodeId,
        addr: SocketAddr,
        reply: Responder,
        now: std::time::Instant,
    ) {
        if !self.dial_back_limit.allow(from, now) {
            self.publish();
            return refuse(reply, ErrorCode::Refused, "too many dial-back requests");
        }
        let ip = addr.ip();
        if peer == self.transport.local_id()
            || is_synthetic(addr)
            || addr.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast())
        {
            self.refused += 1;
            self.publish();
            return refuse(reply, ErrorCode::BadRequest, "not a dial-back target");
        }
        let Ok(permit) = self.dial_backs.clone().try_acquire_owned() else {
            self.refused += 1;
            self.publish();
            return refuse(
                reply,
                ErrorCode::Unavailable,
                "too many dial-backs in progress",
            );
        };
        self.dial_backs_made.fetch_add(1, Ordering::Relaxed);
        let transport = self.transport.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = transport.dial_back(peer, addr).await;
            debug!(%peer, %addr, ?result, "dial-back");
            let answer = Body::Reach(ReachMessage::CheckResult {
                reachable: result.is_ok(),
                addr,
            });
            let _ = reply.reply(&answer).await;
        });
        self.publish();
    }
}

/// The links worth asking to observe this node or check it: those that do not run through a
/// relay (a relayed peer sees only this node's synthetic address; see the module docs).
fn askable(links: Vec<LinkedPeer>) -> Vec<LinkedPeer> {
    links
        .into_iter()
        .filter(|link| !is_synthetic(link.addr))
        .collect()
}

fn refuse(reply: Responder, code: ErrorCode, message: &str) {
    let answer = Body::Error {
        code: code as u16,
        message: message.to_owned(),
    };
    tokio::spawn(async move {
        let _ = reply.reply(&answer).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::relay::synthetic_addr;

    #[test]
    fn peers_linked_through_a_relay_are_not_asked_to_observe_or_check() {
        let direct = LinkedPeer {
            peer: Identity::generate().node_id(),
            addr: "198.18.0.10:7000".parse().unwrap(),
        };
        let relayed_id = Identity::generate().node_id();
        let relayed = LinkedPeer {
            peer: relayed_id,
            addr: synthetic_addr(relayed_id),
        };
        // The same, as an IPv6 socket shows it.
        let mapped = LinkedPeer {
            peer: relayed_id,
            addr: match synthetic_addr(relayed_id) {
                SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
                v6 => v6,
            },
        };
        assert_eq!(askable(vec![relayed, direct, mapped]), vec![direct]);
    }
}
