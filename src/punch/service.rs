//! The punch service: one task per node that tracks relayed links, exchanges offers, sends
//! and answers probes, watches direct paths and counts (see the module docs of [`super`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use super::message::{usable, PunchMessage, MAX_ADDRS};
use super::probe::{Kind, Probe};
use super::socket::{Directs, Received};
use super::{PunchStatus, Request, Shared, MAX_ATTEMPTS, MAX_BACKOFF, MAX_PUNCHING};
use crate::id::NodeId;
use crate::reach::{ReachMessage, ReachStatus};
use crate::relay::{is_synthetic, unmap};
use crate::transport::Transport;
use crate::wire::{Body, ErrorCode};

/// How often the service looks at its timers.
const TICK: Duration = Duration::from_millis(50);
/// How often it looks for new and closed relayed links.
const SCAN_EVERY: Duration = Duration::from_millis(250);
/// Pings to each candidate while punching, one per this.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long an attempt probes before it fails.
const PROBE_FOR: Duration = Duration::from_secs(3);
/// Pings on a direct path, one per this.
const HEALTH_EVERY: Duration = Duration::from_millis(200);
/// A direct path without a pong for this long is dead: back to the relay. It must be shorter
/// than the core's probe timeout on a fast link (three RTTs plus 250 ms, then twice that),
/// or a peer behind a path that just died would be declared dead before the relay takes over.
const DEAD_AFTER: Duration = Duration::from_millis(700);
/// The first pause after a failed attempt or a fallback (it doubles per failure).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long an offer waits for its answer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);
/// Offers from one peer closer together than this are refused.
const MIN_OFFER_GAP: Duration = Duration::from_millis(900);
/// How long a node's own observed address is reused before it asks again.
const OBSERVED_FRESH: Duration = Duration::from_secs(5);
/// How long an observe request may take.
const OBSERVE_TIMEOUT: Duration = Duration::from_millis(700);
/// Times to direct kept for the median.
const TIMES_KEPT: usize = 64;
/// Candidates an attempt probes at most (offered ones and ones learned from pings).
const MAX_CANDIDATES: usize = MAX_ADDRS + 2;

#[derive(Debug)]
enum Phase {
    /// Relayed; the next attempt (the initiator's offer) is due at `next`.
    Waiting { next: Instant },
    /// The offer is on its way.
    Offering,
    /// Pinging the peer's candidates until `until`.
    Probing {
        until: Instant,
        next_ping: Instant,
        candidates: Vec<SocketAddr>,
    },
    /// The peer's datagrams take the direct path `addr`.
    Direct {
        addr: SocketAddr,
        last_pong: Instant,
        next_ping: Instant,
    },
    /// One end is public: the private end dials it and the direct link replaces this one.
    Public,
    /// Too many failed attempts: the link stays relayed.
    GaveUp,
}

#[derive(Debug)]
struct Peer {
    /// The link's (synthetic) address.
    synthetic: SocketAddr,
    first_seen: Instant,
    /// Pings to this node from the peer carry it.
    token: u64,
    /// Pings to the peer carry it (from its offer or answer).
    peer_token: Option<u64>,
    phase: Phase,
    failures: u32,
    ever_direct: bool,
    last_offer_in: Option<Instant>,
}

enum Outcome {
    Offered {
        peer: NodeId,
        answer: Result<PunchMessage, String>,
    },
}

type ObservedCache = Arc<Mutex<Option<(Instant, Vec<SocketAddr>)>>>;

pub(super) struct Service {
    transport: Transport,
    directs: Arc<Directs>,
    me: NodeId,
    advertised: SocketAddr,
    reach: watch::Receiver<ReachStatus>,
    shared: Arc<Shared>,
    peers: HashMap<NodeId, Peer>,
    /// This node's tokens, by peer they were given to.
    tokens: HashMap<u64, NodeId>,
    /// Peers' tokens (pongs echo them).
    peer_tokens: HashMap<u64, NodeId>,
    counters: PunchStatus,
    times: VecDeque<u64>,
    last_scan: Option<Instant>,
    observed: ObservedCache,
}

impl Service {
    pub(super) fn new(
        transport: Transport,
        directs: Arc<Directs>,
        me: NodeId,
        advertised: SocketAddr,
        reach: watch::Receiver<ReachStatus>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            transport,
            directs,
            me,
            advertised,
            reach,
            shared,
            peers: HashMap::new(),
            tokens: HashMap::new(),
            peer_tokens: HashMap::new(),
            counters: PunchStatus::default(),
            times: VecDeque::new(),
            last_scan: None,
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs until the node's runtime drops its side of `requests`.
    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut probes: mpsc::Receiver<Received>,
    ) {
        let (outcomes, mut outcomes_rx) = mpsc::channel(MAX_PUNCHING * 2);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.on_tick(Instant::now(), &outcomes),
                request = requests.recv() => match request {
                    Some(request) => self.on_request(request, Instant::now()),
                    None => return,
                },
                Some((from, probe)) = probes.recv() => self.on_probe(from, probe, Instant::now()),
                Some(outcome) = outcomes_rx.recv() => self.on_outcome(outcome, Instant::now()),
            }
            self.publish();
        }
    }

    fn initiates(&self, peer: NodeId) -> bool {
        self.me < peer
    }

    fn on_tick(&mut self, now: Instant, outcomes: &mpsc::Sender<Outcome>) {
        if self
            .last_scan
            .map_or(true, |at| now.duration_since(at) >= SCAN_EVERY)
        {
            self.scan(now);
        }
        let mut punching = self
            .peers
            .values()
            .filter(|p| matches!(p.phase, Phase::Offering | Phase::Probing { .. }))
            .count();
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let initiates = self.initiates(id);
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let mut pings: Vec<SocketAddr> = Vec::new();
            let mut offer = false;
            match &mut peer.phase {
                Phase::Waiting { next } => {
                    if initiates && now >= *next && punching < MAX_PUNCHING {
                        punching += 1;
                        peer.phase = Phase::Offering;
                        offer = true;
                    }
                }
                Phase::Probing {
                    until,
                    next_ping,
                    candidates,
                } => {
                    if now >= *until {
                        debug!(peer = %id, "punch failed: no pong");
                        self.counters.failures += 1;
                        backoff(peer, now);
                    } else if now >= *next_ping {
                        *next_ping = now + PROBE_EVERY;
                        pings.clone_from(candidates);
                    }
                }
                Phase::Direct {
                    addr,
                    last_pong,
                    next_ping,
                } => {
                    if now.duration_since(*last_pong) >= DEAD_AFTER {
                        info!(peer = %id, direct = %addr, "direct path silent; back to the relay");
                        self.directs.relay_again(peer.synthetic);
                        self.counters.fallbacks += 1;
                        // The address a public peer sees may be what changed.
                        *self.observed.lock().unwrap_or_else(PoisonError::into_inner) = None;
                        peer.phase = Phase::Waiting {
                            next: now + FIRST_BACKOFF,
                        };
                    } else if now >= *next_ping {
                        *next_ping = now + HEALTH_EVERY;
                        pings.push(*addr);
                    }
                }
                Phase::Offering | Phase::Public | Phase::GaveUp => {}
            }
            if let Some(token) = peer.peer_token {
                for addr in pings {
                    self.directs.send_probe(addr, ping(token));
                }
            }
            if offer {
                self.offer(id, outcomes.clone());
            }
        }
    }

    /// Follows the transport's links: a new relayed link gets a state, a peer no longer
    /// linked through a relay loses its state and routes.
    fn scan(&mut self, now: Instant) {
        self.last_scan = Some(now);
        // Every node scans several times a second: the links' statistics are not needed here.
        let relayed: HashMap<NodeId, SocketAddr> = self
            .transport
            .linked_peers()
            .into_iter()
            .filter(|link| is_synthetic(link.addr))
            .map(|link| (link.peer, link.addr))
            .collect();
        let gone: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|id| !relayed.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(peer) = self.peers.remove(&id) {
                self.directs.forget(peer.synthetic);
                self.tokens.remove(&peer.token);
                if let Some(token) = peer.peer_token {
                    self.peer_tokens.remove(&token);
                }
            }
        }
        for (id, addr) in relayed {
            if self.peers.contains_key(&id) {
                continue;
            }
            let token = rand::random();
            self.tokens.insert(token, id);
            self.peers.insert(
                id,
                Peer {
                    synthetic: unmap(addr),
                    first_seen: now,
                    token,
                    peer_token: None,
                    phase: Phase::Waiting { next: now },
                    failures: 0,
                    ever_direct: false,
                    last_offer_in: None,
                },
            );
        }
    }

    /// Sends an offer to `id` (in a task: gathering addresses and the answer take round trips).
    fn offer(&self, id: NodeId, outcomes: mpsc::Sender<Outcome>) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let (transport, reach, observed) = (
            self.transport.clone(),
            self.reach.clone(),
            self.observed.clone(),
        );
        let (token, advertised, synthetic) = (peer.token, self.advertised, peer.synthetic);
        tokio::spawn(async move {
            let addrs = gather(&transport, &reach, &observed).await;
            let body = Body::Punch(PunchMessage::Offer {
                token,
                advertised,
                addrs,
            });
            let answer =
                match tokio::time::timeout(OFFER_TIMEOUT, transport.request(id, synthetic, &body))
                    .await
                {
                    Ok(Ok(Body::Punch(message))) => Ok(message),
                    Ok(Ok(Body::Error { message, .. })) => Err(message),
                    Ok(Ok(other)) => Err(format!("unexpected answer: {}", other.kind_name())),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("no answer".to_owned()),
                };
            let _ = outcomes.send(Outcome::Offered { peer: id, answer }).await;
        });
    }

    fn on_outcome(&mut self, outcome: Outcome, now: Instant) {
        let Outcome::Offered { peer: id, answer } = outcome;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !matches!(peer.phase, Phase::Offering) {
            return;
        }
        match answer {
            Ok(message @ PunchMessage::Ready { .. }) => match message.checked() {
                Ok((token, advertised, addrs)) => {
                    let addrs = addrs.to_vec();
                    self.begin(id, token, advertised, addrs, now);
                }
                Err(error) => {
                    debug!(peer = %id, %error, "refused a punch answer");
                    backoff(peer, now);
                }
            },
            Ok(other) => {
                debug!(peer = %id, ?other, "a punch offer answered with another offer");
                backoff(peer, now);
            }
            Err(error) => {
                debug!(peer = %id, %error, "punch offer failed");
                backoff(peer, now);
            }
        }
    }

    /// Starts probing `id` (both ends private), or leaves the link to a direct dial (one end
    /// public).
    fn begin(
        &mut self,
        id: NodeId,
        peer_token: u64,
        peer_advertised: SocketAddr,
        addrs: Vec<SocketAddr>,
        now: Instant,
    ) {
        let me_private = is_synthetic(self.advertised);
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(old) = peer.peer_token.replace(peer_token) {
            self.peer_tokens.remove(&old);
        }
        self.peer_tokens.insert(peer_token, id);
        if !is_synthetic(peer_advertised) || !me_private {
            peer.phase = Phase::Public;
            if me_private && usable(peer_advertised) {
                // The peer takes dials: a direct link replaces the relayed one.
                self.counters.dialled_public += 1;
                let transport = self.transport.clone();
                tokio::spawn(async move {
                    if let Err(error) = transport.connect(peer_advertised, Some(id)).await {
                        debug!(peer = %id, %error, "dialling a public peer directly failed");
                    }
                });
            }
            return;
        }
        if let Phase::Direct { .. } = peer.phase {
            // The peer offers again: it no longer gets our pongs. Start over.
            self.directs.relay_again(peer.synthetic);
        }
        self.counters.attempts += 1;
        let mut candidates = addrs;
        candidates.truncate(MAX_CANDIDATES);
        for addr in &candidates {
            self.directs.send_probe(*addr, ping(peer_token));
        }
        peer.phase = Phase::Probing {
            until: now + PROBE_FOR,
            next_ping: now + PROBE_EVERY,
            candidates,
        };
    }

    fn on_request(&mut self, request: Request, now: Instant) {
        let Request {
            from,
            from_addr,
            message,
            reply,
        } = request;
        let refuse = |reply: crate::transport::Responder, code: ErrorCode, why: String| {
            tokio::spawn(async move {
                let _ = reply
                    .reply(&Body::Error {
                        code: code as u16,
                        message: why,
                    })
                    .await;
            });
        };
        let (token, advertised, addrs) = match (&message, message.checked()) {
            (PunchMessage::Offer { .. }, Ok((token, advertised, addrs))) => {
                (token, advertised, addrs.to_vec())
            }
            (PunchMessage::Ready { .. }, _) => {
                debug!(%from, "a punch answer sent as a request");
                return refuse(reply, ErrorCode::BadRequest, "not a punch request".into());
            }
            (_, Err(error)) => {
                debug!(%from, %error, "refused a punch offer");
                return refuse(reply, ErrorCode::BadRequest, error.to_string());
            }
        };
        if !is_synthetic(from_addr) {
            return refuse(reply, ErrorCode::Refused, "the link is not relayed".into());
        }
        if !self.peers.contains_key(&from) {
            self.scan(now);
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return refuse(reply, ErrorCode::Refused, "no relayed link".into());
        };
        if peer
            .last_offer_in
            .is_some_and(|at| now.duration_since(at) < MIN_OFFER_GAP)
        {
            return refuse(reply, ErrorCode::Refused, "offers too frequent".into());
        }
        peer.last_offer_in = Some(now);
        let my_token = peer.token;
        let (transport, reach, observed, me) = (
            self.transport.clone(),
            self.reach.clone(),
            self.observed.clone(),
            self.advertised,
        );
        tokio::spawn(async move {
            let addrs = gather(&transport, &reach, &observed).await;
            let _ = reply
                .reply(&Body::Punch(PunchMessage::Ready {
                    token: my_token,
                    advertised: me,
                    addrs,
                }))
                .await;
        });
        self.begin(from, token, advertised, addrs, now);
    }

    fn on_probe(&mut self, from: SocketAddr, probe: Probe, now: Instant) {
        match probe.kind {
            Kind::Ping => {
                let Some(&id) = self.tokens.get(&probe.token) else {
                    return;
                };
                self.directs.send_probe(
                    from,
                    Probe {
                        kind: Kind::Pong,
                        ..probe
                    },
                );
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                // The token proves the sender is the peer: its datagrams from there are its.
                self.directs.receive_from(from, peer.synthetic);
                let direct_here = matches!(peer.phase, Phase::Direct { addr, .. } if addr == from);
                if !direct_here {
                    if let Some(token) = peer.peer_token {
                        self.directs.send_probe(from, ping(token));
                    }
                    if let Phase::Probing { candidates, .. } = &mut peer.phase {
                        if !candidates.contains(&from) && candidates.len() < MAX_CANDIDATES {
                            candidates.push(from);
                        }
                    }
                }
            }
            Kind::Pong => {
                let Some(&id) = self.peer_tokens.get(&probe.token) else {
                    return;
                };
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                if let Phase::Direct {
                    addr, last_pong, ..
                } = &mut peer.phase
                {
                    if *addr == from {
                        *last_pong = now;
                        return;
                    }
                }
                if matches!(peer.phase, Phase::Public | Phase::GaveUp) {
                    return;
                }
                if matches!(peer.phase, Phase::Probing { .. }) {
                    self.counters.successes += 1;
                }
                self.directs.send_via(peer.synthetic, from);
                if !peer.ever_direct {
                    peer.ever_direct = true;
                    let ms = u64::try_from(now.duration_since(peer.first_seen).as_millis())
                        .unwrap_or(u64::MAX);
                    self.counters.last_time_to_direct_ms = Some(ms);
                    if self.times.len() == TIMES_KEPT {
                        self.times.pop_front();
                    }
                    self.times.push_back(ms);
                }
                info!(peer = %id, direct = %from, "punched: the link takes the direct path");
                peer.failures = 0;
                peer.phase = Phase::Direct {
                    addr: from,
                    last_pong: now,
                    next_ping: now + HEALTH_EVERY,
                };
            }
        }
    }

    fn publish(&self) {
        let mut status = self.counters.clone();
        status.direct_links = 0;
        status.punching = 0;
        let mut direct = HashSet::new();
        for (id, peer) in &self.peers {
            match peer.phase {
                Phase::Direct { .. } => {
                    status.direct_links += 1;
                    direct.insert(*id);
                }
                Phase::Offering | Phase::Probing { .. } => status.punching += 1,
                _ => {}
            }
        }
        status.recent_times_to_direct_ms = self.times.iter().copied().collect();
        let mut times = status.recent_times_to_direct_ms.clone();
        times.sort_unstable();
        status.median_time_to_direct_ms = times.get(times.len() / 2).copied();
        status.probes_dropped = self.directs.dropped();
        *self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = status;
        *self
            .shared
            .direct
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = direct;
    }
}

fn ping(token: u64) -> Probe {
    Probe {
        kind: Kind::Ping,
        token,
        tx: rand::random(),
    }
}

/// After a failed attempt: wait (doubling per failure), or give up after [`MAX_ATTEMPTS`].
fn backoff(peer: &mut Peer, now: Instant) {
    peer.failures += 1;
    if peer.failures >= MAX_ATTEMPTS {
        info!("punching given up after {MAX_ATTEMPTS} attempts; the link stays relayed");
        peer.phase = Phase::GaveUp;
        return;
    }
    let pause = FIRST_BACKOFF
        .saturating_mul(1 << (peer.failures - 1).min(8))
        .min(MAX_BACKOFF);
    peer.phase = Phase::Waiting { next: now + pause };
}

/// This node's candidate addresses: where public peers see it now (asked, then reused for a
/// few seconds), and the addresses reachability confirmed.
async fn gather(
    transport: &Transport,
    reach: &watch::Receiver<ReachStatus>,
    cache: &ObservedCache,
) -> Vec<SocketAddr> {
    let cached = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < OBSERVED_FRESH)
        .map(|(_, addrs)| addrs.clone());
    let mut addrs = match cached {
        Some(addrs) => addrs,
        None => {
            let mut seen = Vec::new();
            let publics: Vec<_> = transport
                .links()
                .into_iter()
                .filter(|link| !is_synthetic(link.addr))
                .take(2)
                .collect();
            for link in publics {
                let ask =
                    transport.request(link.peer, link.addr, &Body::Reach(ReachMessage::Observe));
                if let Ok(Ok(Body::Reach(ReachMessage::Observed { addr }))) =
                    tokio::time::timeout(OBSERVE_TIMEOUT, ask).await
                {
                    seen.push(unmap(addr));
                }
            }
            *cache.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), seen.clone()));
            seen
        }
    };
    addrs.extend(
        reach
            .borrow()
            .observed_addrs
            .iter()
            .map(|addr| unmap(*addr)),
    );
    let mut unique = Vec::new();
    for addr in addrs {
        if usable(addr) && !unique.contains(&addr) {
            unique.push(addr);
        }
    }
    unique.truncate(MAX_ADDRS);
    unique
}
