//! The punch service: one task per node that carries out what the state machine
//! ([`super::machine`]) decides: it feeds it the relayed links, offers, answers and probes,
//! sends offers and probes, sets the socket's routes, dials, and publishes the counters
//! (see the module docs of [`super`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use super::machine::{Effect, Machine, SCAN_EVERY};
use super::message::{usable, PunchMessage, MAX_ADDRS};
use super::socket::{Directs, Received};
use super::{Request, Shared, MAX_PUNCHING};
use crate::id::NodeId;
use crate::reach::{ReachMessage, ReachStatus};
use crate::relay::{is_synthetic, unmap};
use crate::transport::Transport;
use crate::wire::Body;

/// How often the service looks at its timers while it follows relayed links. Without any,
/// it wakes only for the next scan ([`SCAN_EVERY`]): most nodes have no relayed link, and a
/// node should not wake twenty times a second for nothing.
const TICK: Duration = Duration::from_millis(50);
/// How long an offer waits for its answer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node's own observed address is reused before it asks again.
const OBSERVED_FRESH: Duration = Duration::from_secs(5);
/// How long an observe request may take.
const OBSERVE_TIMEOUT: Duration = Duration::from_millis(700);

/// An offer's answer, from the task that sent it.
struct Answer {
    peer: NodeId,
    answer: Result<PunchMessage, String>,
}

type ObservedCache = Arc<Mutex<Option<(Instant, Vec<SocketAddr>)>>>;

pub(super) struct Service {
    transport: Transport,
    directs: Arc<Directs>,
    advertised: SocketAddr,
    /// The advertised address as the node's mode changes it.
    advertised_now: watch::Receiver<SocketAddr>,
    reach: watch::Receiver<ReachStatus>,
    shared: Arc<Shared>,
    machine: Machine,
    observed: ObservedCache,
}

impl Service {
    pub(super) fn new(
        transport: Transport,
        directs: Arc<Directs>,
        me: NodeId,
        advertised_now: watch::Receiver<SocketAddr>,
        reach: watch::Receiver<ReachStatus>,
        shared: Arc<Shared>,
    ) -> Self {
        let advertised = *advertised_now.borrow();
        Self {
            transport,
            directs,
            advertised,
            advertised_now,
            reach,
            shared,
            machine: Machine::new(me, advertised),
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs until the node's runtime drops its side of `requests`.
    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut probes: mpsc::Receiver<Received>,
    ) {
        let (answers, mut answers_rx) = mpsc::channel(MAX_PUNCHING * 2);
        let mut effects = Vec::new();
        let mut next_tick = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_tick) => {
                    let now = Instant::now();
                    if self.advertised_now.has_changed().unwrap_or(false) {
                        self.advertised = *self.advertised_now.borrow_and_update();
                        self.machine.set_advertised(self.advertised);
                    }
                    if self.machine.scan_due(now) {
                        self.machine.scan(now, &self.relayed(), &mut effects);
                    }
                    self.machine.tick(now, &mut effects);
                    next_tick = Instant::now() + self.period();
                }
                request = requests.recv() => match request {
                    Some(request) => self.on_request(request, Instant::now(), &mut effects),
                    None => return,
                },
                Some((from, probe)) = probes.recv() => {
                    self.machine.probe(from, probe, Instant::now(), &mut effects);
                }
                Some(Answer { peer, answer }) = answers_rx.recv() => {
                    self.machine.answered(peer, answer, Instant::now(), &mut effects);
                }
            }
            for effect in effects.drain(..) {
                self.carry_out(effect, &answers);
            }
            // A request or an answer may have given the machine a link to follow.
            next_tick = next_tick.min(Instant::now() + self.period());
            self.publish();
        }
    }

    /// How long until the machine's timers are looked at again.
    fn period(&self) -> Duration {
        if self.machine.is_idle() {
            SCAN_EVERY
        } else {
            TICK
        }
    }

    /// The transport's relayed links: peer -> synthetic address. Every node scans several
    /// times a second, so the links' statistics are not read here.
    fn relayed(&self) -> HashMap<NodeId, SocketAddr> {
        self.transport
            .linked_peers()
            .into_iter()
            .filter(|link| is_synthetic(link.addr))
            .map(|link| (link.peer, link.addr))
            .collect()
    }

    fn carry_out(&self, effect: Effect, answers: &mpsc::Sender<Answer>) {
        match effect {
            Effect::Offer {
                peer,
                synthetic,
                token,
            } => self.offer(peer, synthetic, token, answers.clone()),
            Effect::Probe { to, probe } => self.directs.send_probe(to, probe),
            Effect::SendVia { synthetic, direct } => self.directs.send_via(synthetic, direct),
            Effect::ReceiveFrom { direct, synthetic } => {
                self.directs.receive_from(direct, synthetic);
            }
            Effect::RelayAgain { synthetic } => self.directs.relay_again(synthetic),
            Effect::Forget { synthetic } => self.directs.forget(synthetic),
            Effect::Dial { peer, addr } => {
                let transport = self.transport.clone();
                tokio::spawn(async move {
                    if let Err(error) = transport.connect(addr, Some(peer)).await {
                        debug!(%peer, %error, "dialling a public peer directly failed");
                    }
                });
            }
            Effect::Reobserve => {
                *self.observed.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
    }

    /// Sends an offer to `id` (in a task: gathering addresses and the answer take round trips).
    fn offer(&self, id: NodeId, synthetic: SocketAddr, token: u64, answers: mpsc::Sender<Answer>) {
        let (transport, reach, observed) = (
            self.transport.clone(),
            self.reach.clone(),
            self.observed.clone(),
        );
        let advertised = self.advertised;
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
            let _ = answers.send(Answer { peer: id, answer }).await;
        });
    }

    fn on_request(&mut self, request: Request, now: Instant, effects: &mut Vec<Effect>) {
        let Request {
            from,
            from_addr,
            message,
            reply,
        } = request;
        if !self.machine.knows(from) {
            // The offer may come before the service's next look at the links.
            self.machine.scan(now, &self.relayed(), effects);
        }
        match self
            .machine
            .offered(from, from_addr, &message, now, effects)
        {
            Ok(my_token) => {
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
            }
            Err(refusal) => {
                tokio::spawn(async move {
                    let _ = reply
                        .reply(&Body::Error {
                            code: refusal.code as u16,
                            message: refusal.why,
                        })
                        .await;
                });
            }
        }
    }

    fn publish(&self) {
        let (mut status, direct) = self.machine.status();
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
