//! The punch state machine: per relayed link, when to offer, what to probe, when a direct path
//! is proved and when it is dead. It does no IO and reads no clock: time comes in as `now`, and
//! what to do goes out as [`Effect`]s that the service ([`super::service`]) carries out in
//! order. Its unit tests drive it step by step on a virtual clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use super::message::{PunchMessage, MAX_ADDRS};
use super::probe::{Kind, Probe};
use super::{PunchStatus, MAX_ATTEMPTS, MAX_BACKOFF, MAX_PUNCHING};
use crate::id::NodeId;
use crate::relay::{is_synthetic, unmap};
use crate::wire::ErrorCode;

/// How often the service looks for new and closed relayed links.
pub(super) const SCAN_EVERY: Duration = Duration::from_millis(250);
/// Pings to each candidate while punching, one per this.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long an attempt probes before it fails.
pub(super) const PROBE_FOR: Duration = Duration::from_secs(3);
/// Pings on a direct path, one per this.
pub(super) const HEALTH_EVERY: Duration = Duration::from_millis(200);
/// A direct path without a pong for this long is dead: back to the relay. It must be shorter
/// than the core's probe timeout on a fast link (three RTTs plus 250 ms, then twice that),
/// or a peer behind a path that just died would be declared dead before the relay takes over.
pub(super) const DEAD_AFTER: Duration = Duration::from_millis(700);
/// The first pause after a failed attempt or a fallback (it doubles per failure).
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Offers from one peer closer together than this are refused.
pub(super) const MIN_OFFER_GAP: Duration = Duration::from_millis(900);
/// Times to direct kept for the median.
const TIMES_KEPT: usize = 64;
/// Candidates an attempt probes at most (offered ones and ones learned from pings).
const MAX_CANDIDATES: usize = MAX_ADDRS + 2;

/// What the machine asks the service to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// Send [`PunchMessage::Offer`] with `token` to `peer` on its relayed link `synthetic`,
    /// and hand the answer to [`Machine::answered`].
    Offer {
        peer: NodeId,
        synthetic: SocketAddr,
        token: u64,
    },
    /// Send `probe` to `to` from the node's socket.
    Probe { to: SocketAddr, probe: Probe },
    /// Datagrams to `synthetic` go to `direct` (which becomes a receive route too).
    SendVia {
        synthetic: SocketAddr,
        direct: SocketAddr,
    },
    /// Datagrams from `direct` are handed to quinn as from `synthetic`.
    ReceiveFrom {
        direct: SocketAddr,
        synthetic: SocketAddr,
    },
    /// Datagrams to `synthetic` go through the relay again.
    RelayAgain { synthetic: SocketAddr },
    /// Forget every route of `synthetic` (its relayed link is gone).
    Forget { synthetic: SocketAddr },
    /// Dial the public `peer` at `addr`: a direct link replaces the relayed one.
    Dial { peer: NodeId, addr: SocketAddr },
    /// Where public peers see this node may have changed: ask them again before the next
    /// offer or answer.
    Reobserve,
}

/// Why an offer was refused: the error code and message the answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) code: ErrorCode,
    pub(super) why: String,
}

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

/// Every relayed link's punch state, and the counters.
#[derive(Debug)]
pub(super) struct Machine {
    me: NodeId,
    /// Whether this node is private (its advertised address is synthetic).
    me_private: bool,
    peers: HashMap<NodeId, Peer>,
    /// This node's tokens, by peer they were given to.
    tokens: HashMap<u64, NodeId>,
    /// Peers' tokens (pongs echo them).
    peer_tokens: HashMap<u64, NodeId>,
    counters: PunchStatus,
    times: VecDeque<u64>,
    last_scan: Option<Instant>,
}

impl Machine {
    /// The machine of node `me`, which advertises `advertised`.
    pub(super) fn new(me: NodeId, advertised: SocketAddr) -> Self {
        Self {
            me,
            me_private: is_synthetic(advertised),
            peers: HashMap::new(),
            tokens: HashMap::new(),
            peer_tokens: HashMap::new(),
            counters: PunchStatus::default(),
            times: VecDeque::new(),
            last_scan: None,
        }
    }

    /// The node now advertises `advertised` (it turned private or public at run time).
    pub(super) fn set_advertised(&mut self, advertised: SocketAddr) {
        self.me_private = is_synthetic(advertised);
    }

    fn initiates(&self, peer: NodeId) -> bool {
        self.me < peer
    }

    /// Whether the relayed links are due for another look ([`Self::scan`]).
    pub(super) fn scan_due(&self, now: Instant) -> bool {
        self.last_scan
            .map_or(true, |at| now.duration_since(at) >= SCAN_EVERY)
    }

    /// Whether the machine follows no relayed link: nothing to time but the next scan.
    pub(super) fn is_idle(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether `peer` has a relayed link the machine follows.
    pub(super) fn knows(&self, peer: NodeId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// Follows the transport's relayed links (peer -> synthetic address): a new one gets a
    /// state, a peer no longer linked through a relay loses its state and routes.
    pub(super) fn scan(
        &mut self,
        now: Instant,
        relayed: &HashMap<NodeId, SocketAddr>,
        out: &mut Vec<Effect>,
    ) {
        self.last_scan = Some(now);
        let gone: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|id| !relayed.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(peer) = self.peers.remove(&id) {
                out.push(Effect::Forget {
                    synthetic: peer.synthetic,
                });
                self.tokens.remove(&peer.token);
                if let Some(token) = peer.peer_token {
                    self.peer_tokens.remove(&token);
                }
            }
        }
        for (&id, &addr) in relayed {
            if self.peers.contains_key(&id) {
                continue;
            }
            let token = self.fresh_token();
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

    /// A random token no other link of this node holds.
    fn fresh_token(&self) -> u64 {
        loop {
            let token = rand::random();
            if !self.tokens.contains_key(&token) {
                return token;
            }
        }
    }

    /// Moves every link's timers on to `now`: offers due, pings due, attempts and direct
    /// paths out of time.
    pub(super) fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let mut punching = self
            .peers
            .values()
            .filter(|p| matches!(p.phase, Phase::Offering | Phase::Probing { .. }))
            .count();
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        // Peers in a fixed order: which links get the punch slots does not depend on the map.
        ids.sort_unstable();
        for id in ids {
            let initiates = self.initiates(id);
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let mut pings: Vec<SocketAddr> = Vec::new();
            match &mut peer.phase {
                Phase::Waiting { next } => {
                    if initiates && now >= *next && punching < MAX_PUNCHING {
                        punching += 1;
                        peer.phase = Phase::Offering;
                        out.push(Effect::Offer {
                            peer: id,
                            synthetic: peer.synthetic,
                            token: peer.token,
                        });
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
                        out.push(Effect::RelayAgain {
                            synthetic: peer.synthetic,
                        });
                        self.counters.fallbacks += 1;
                        // The address a public peer sees may be what changed.
                        out.push(Effect::Reobserve);
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
                out.extend(pings.into_iter().map(|to| Effect::Probe {
                    to,
                    probe: ping(token),
                }));
            }
        }
    }

    /// The answer to this node's offer to `id` (a peer's frame, or why there is none).
    pub(super) fn answered(
        &mut self,
        id: NodeId,
        answer: Result<PunchMessage, String>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
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
                    self.begin(id, token, advertised, addrs, now, out);
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

    /// An offer from `from`, whose link to this node has the address `from_addr`. `Ok` holds
    /// the token this node's answer carries ([`PunchMessage::Ready`]); the service adds its
    /// advertised address and candidates.
    pub(super) fn offered(
        &mut self,
        from: NodeId,
        from_addr: SocketAddr,
        message: &PunchMessage,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> Result<u64, Refusal> {
        let refuse = |code, why: &str| Refusal {
            code,
            why: why.to_owned(),
        };
        let (token, advertised, addrs) = match (message, message.checked()) {
            (PunchMessage::Offer { .. }, Ok((token, advertised, addrs))) => {
                (token, advertised, addrs.to_vec())
            }
            (PunchMessage::Ready { .. }, _) => {
                debug!(%from, "a punch answer sent as a request");
                return Err(refuse(ErrorCode::BadRequest, "not a punch request"));
            }
            (_, Err(error)) => {
                debug!(%from, %error, "refused a punch offer");
                return Err(refuse(ErrorCode::BadRequest, &error.to_string()));
            }
        };
        if !is_synthetic(from_addr) {
            return Err(refuse(ErrorCode::Refused, "the link is not relayed"));
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return Err(refuse(ErrorCode::Refused, "no relayed link"));
        };
        if peer
            .last_offer_in
            .is_some_and(|at| now.duration_since(at) < MIN_OFFER_GAP)
        {
            return Err(refuse(ErrorCode::Refused, "offers too frequent"));
        }
        peer.last_offer_in = Some(now);
        let my_token = peer.token;
        self.begin(from, token, advertised, addrs, now, out);
        Ok(my_token)
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
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(old) = peer.peer_token.replace(peer_token) {
            self.peer_tokens.remove(&old);
        }
        self.peer_tokens.insert(peer_token, id);
        if !is_synthetic(peer_advertised) || !self.me_private {
            peer.phase = Phase::Public;
            if self.me_private && super::message::usable(peer_advertised) {
                // The peer takes dials: a direct link replaces the relayed one.
                self.counters.dialled_public += 1;
                out.push(Effect::Dial {
                    peer: id,
                    addr: peer_advertised,
                });
            }
            return;
        }
        if let Phase::Direct { .. } = peer.phase {
            // The peer offers again: it no longer gets our pongs. Start over.
            out.push(Effect::RelayAgain {
                synthetic: peer.synthetic,
            });
        }
        self.counters.attempts += 1;
        let mut candidates = addrs;
        candidates.truncate(MAX_CANDIDATES);
        out.extend(candidates.iter().map(|&to| Effect::Probe {
            to,
            probe: ping(peer_token),
        }));
        peer.phase = Phase::Probing {
            until: now + PROBE_FOR,
            next_ping: now + PROBE_EVERY,
            candidates,
        };
    }

    /// A probe from `from`.
    pub(super) fn probe(
        &mut self,
        from: SocketAddr,
        probe: Probe,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        match probe.kind {
            Kind::Ping => self.ping_in(from, probe, out),
            Kind::Pong => self.pong_in(from, probe, now, out),
        }
    }

    fn ping_in(&mut self, from: SocketAddr, probe: Probe, out: &mut Vec<Effect>) {
        // An unknown token: no answer, so the socket cannot reflect traffic at third parties.
        let Some(&id) = self.tokens.get(&probe.token) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        // The token proves the sender is the peer: its datagrams from there are its, mapped
        // before the pong leaves (the peer may move its QUIC packets here on that pong).
        out.push(Effect::ReceiveFrom {
            direct: from,
            synthetic: peer.synthetic,
        });
        out.push(Effect::Probe {
            to: from,
            probe: Probe {
                kind: Kind::Pong,
                ..probe
            },
        });
        let direct_here = matches!(peer.phase, Phase::Direct { addr, .. } if addr == from);
        if !direct_here {
            // A new source (a NAT that rebound, or the other end's first ping): ping it back,
            // its pong proves the path both ways.
            if let Some(token) = peer.peer_token {
                out.push(Effect::Probe {
                    to: from,
                    probe: ping(token),
                });
            }
            if let Phase::Probing { candidates, .. } = &mut peer.phase {
                if !candidates.contains(&from) && candidates.len() < MAX_CANDIDATES {
                    candidates.push(from);
                }
            }
        }
    }

    fn pong_in(&mut self, from: SocketAddr, probe: Probe, now: Instant, out: &mut Vec<Effect>) {
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
        out.push(Effect::SendVia {
            synthetic: peer.synthetic,
            direct: from,
        });
        if !peer.ever_direct {
            peer.ever_direct = true;
            let ms =
                u64::try_from(now.duration_since(peer.first_seen).as_millis()).unwrap_or(u64::MAX);
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

    /// The counters (but `probes_dropped`, which the socket keeps) and the peers whose link
    /// takes a direct path now.
    pub(super) fn status(&self) -> (PunchStatus, HashSet<NodeId>) {
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
        (status, direct)
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

#[cfg(test)]
mod tests;
