//! The rust-libp2p cluster: one swarm per node (Kademlia, identify and a request-response
//! protocol for the 200-byte message, over libp2p's QUIC transport), each driven by its own
//! task and told what to do over a channel.
//!
//! Settings are libp2p's defaults but one: Kademlia is put in server mode. By default it
//! chooses client mode until the swarm has a confirmed external address, which nodes on
//! loopback never get, and a cluster of clients answers nobody's queries. Identify's reports
//! are fed to Kademlia as the peer's addresses, as libp2p's own documentation advises.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::kad::{self, KBucketKey, QueryResult};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId, StreamProtocol, Swarm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use crate::measure::{
    baseline_rss, cpu_time, idle_rss, payload, per_node_mib, progress, quantile_ms, seq_of, Detail,
    Figures, RunConfig, Wire, WireFigures,
};

const NAME: &str = "libp2p";
/// How long a lookup (query, then delivery) may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a bootstrap may take before the join counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before each timed join, so the previous join's traffic has died down.
const JOIN_PAUSE: Duration = Duration::from_millis(500);
const DELIVER_PROTOCOL: StreamProtocol = StreamProtocol::new("/wendy-bench/deliver/1");
/// The largest request the delivery protocol reads.
const MAX_REQUEST: u64 = 64 * 1024;

/// The delivery protocol's framing: the request is the stream's bytes up to its end, the
/// response is empty (the stream's end is the acknowledgement).
#[derive(Debug, Clone, Default)]
struct Deliver;

impl request_response::Codec for Deliver {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut request = Vec::new();
        io.take(MAX_REQUEST).read_to_end(&mut request).await?;
        Ok(request)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut response = Vec::new();
        io.take(MAX_REQUEST).read_to_end(&mut response).await?;
        Ok(response)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    deliver: request_response::Behaviour<Deliver>,
}

/// What a node's task is asked to do.
enum Command {
    /// Learn `via` (if any) and bootstrap; answered once the bootstrap's last step is done.
    Bootstrap {
        via: Option<(PeerId, Multiaddr)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// `get_closest_peers(key)`; answered with the peers found and the query's counts.
    Closest {
        key: Vec<u8>,
        reply: oneshot::Sender<Closest>,
    },
    /// Sends `payload` to `to`; answered when the response arrives.
    Deliver {
        to: PeerId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// A `get_closest_peers` answer.
struct Closest {
    peers: Vec<PeerId>,
    /// FIND_NODE requests the query sent.
    requests: u32,
    /// Of them, answered.
    answered: u32,
    timed_out: bool,
}

/// Counts over every node of the cluster.
#[derive(Debug, Default)]
struct Counters {
    /// Identify messages sent (answers and pushes).
    identify_msgs: AtomicU64,
    /// Connections established (each counted at both ends).
    connections: AtomicU64,
    /// Connections that failed to be set up, either way.
    dial_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct CounterSnapshot {
    identify_msgs: u64,
    connections: u64,
    dial_errors: u64,
}

impl Counters {
    fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            identify_msgs: self.identify_msgs.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            dial_errors: self.dial_errors.load(Ordering::Relaxed),
        }
    }
}

impl CounterSnapshot {
    fn since(self, earlier: Self) -> Self {
        Self {
            identify_msgs: self.identify_msgs - earlier.identify_msgs,
            connections: self.connections - earlier.connections,
            dial_errors: self.dial_errors - earlier.dial_errors,
        }
    }
}

/// A request that arrived at `at` with sequence number `seq`, when it was read.
struct Arrival {
    at: PeerId,
    seq: Option<u64>,
    when: Instant,
}

/// A running node.
struct Peer {
    id: PeerId,
    addr: Multiaddr,
    commands: mpsc::UnboundedSender<Command>,
}

impl Peer {
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).ok()?;
        answer.await.ok()
    }
}

/// Starts a node listening on a free loopback port.
async fn spawn(
    arrivals: mpsc::UnboundedSender<Arrival>,
    counters: Arc<Counters>,
) -> Result<Peer, String> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                id,
                kad::store::MemoryStore::new(id),
                kad::Config::new(kad::PROTOCOL_NAME),
            );
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/wendy-bench/1".into(),
                    key.public(),
                )),
                deliver: request_response::Behaviour::new(
                    [(DELIVER_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            }
        })
        .map_err(|e| format!("behaviour: {e}"))?
        .build();
    let listen: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1"
        .parse()
        .map_err(|e| format!("listen address: {e}"))?;
    swarm
        .listen_on(listen)
        .map_err(|e| format!("listen: {e}"))?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let id = *swarm.local_peer_id();
    let (commands, inbox) = mpsc::unbounded_channel();
    tokio::spawn(drive(swarm, inbox, arrivals, counters));
    Ok(Peer { id, addr, commands })
}

/// A node's task: carries out commands and answers them from the swarm's events, until the
/// command channel closes.
async fn drive(
    mut swarm: Swarm<Behaviour>,
    mut inbox: mpsc::UnboundedReceiver<Command>,
    arrivals: mpsc::UnboundedSender<Arrival>,
    counters: Arc<Counters>,
) {
    let me = *swarm.local_peer_id();
    let mut bootstraps: HashMap<kad::QueryId, oneshot::Sender<Result<(), String>>> = HashMap::new();
    let mut lookups: HashMap<kad::QueryId, oneshot::Sender<Closest>> = HashMap::new();
    let mut deliveries: HashMap<OutboundRequestId, oneshot::Sender<Result<(), String>>> =
        HashMap::new();
    loop {
        tokio::select! {
            command = inbox.recv() => match command {
                None => break,
                Some(Command::Bootstrap { via, reply }) => {
                    let kad = &mut swarm.behaviour_mut().kad;
                    if let Some((peer, addr)) = via {
                        kad.add_address(&peer, addr);
                    }
                    match kad.bootstrap() {
                        Ok(query) => {
                            bootstraps.insert(query, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
                Some(Command::Closest { key, reply }) => {
                    let query = swarm.behaviour_mut().kad.get_closest_peers(key);
                    lookups.insert(query, reply);
                }
                Some(Command::Deliver { to, payload, reply }) => {
                    let request = swarm.behaviour_mut().deliver.send_request(&to, payload);
                    deliveries.insert(request, reply);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    id, result, stats, step,
                })) => match result {
                    QueryResult::Bootstrap(result) if step.last => {
                        if let Some(reply) = bootstraps.remove(&id) {
                            let _ = reply.send(result.map(|_| ()).map_err(|e| e.to_string()));
                        }
                    }
                    QueryResult::GetClosestPeers(result) if step.last => {
                        if let Some(reply) = lookups.remove(&id) {
                            let (peers, timed_out) = match result {
                                Ok(ok) => (ok.peers, false),
                                Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                                    (peers, true)
                                }
                            };
                            let _ = reply.send(Closest {
                                peers: peers.into_iter().map(|p| p.peer_id).collect(),
                                requests: stats.num_requests(),
                                answered: stats.num_successes(),
                                timed_out,
                            });
                        }
                    }
                    _ => {}
                },
                SwarmEvent::ConnectionEstablished { .. } => {
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    counters.dial_errors.fetch_add(1, Ordering::Relaxed);
                    if std::env::var_os("PEERS_DEBUG").is_some() {
                        eprintln!("dial error: {error}");
                    }
                }
                SwarmEvent::IncomingConnectionError { error, .. } => {
                    counters.dial_errors.fetch_add(1, Ordering::Relaxed);
                    if std::env::var_os("PEERS_DEBUG").is_some() {
                        eprintln!("incoming connection error: {error}");
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => match event {
                    identify::Event::Received { peer_id, info, .. } => {
                        for addr in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                    identify::Event::Sent { .. } | identify::Event::Pushed { .. } => {
                        counters.identify_msgs.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Deliver(event)) => match event {
                    request_response::Event::Message { message, .. } => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let _ = arrivals.send(Arrival {
                                at: me,
                                seq: seq_of(&request),
                                when: Instant::now(),
                            });
                            let _ = swarm.behaviour_mut().deliver.send_response(channel, Vec::new());
                        }
                        request_response::Message::Response { request_id, .. } => {
                            if let Some(reply) = deliveries.remove(&request_id) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                    },
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        if let Some(reply) = deliveries.remove(&request_id) {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    _ => {}
                },
                _ => {}
            },
        }
    }
}

/// Joins `peer` through `via` (or starts the network); returns how long the bootstrap took.
async fn join(peer: &Peer, via: Option<&Peer>) -> Result<Duration, String> {
    let started = Instant::now();
    if let Some(via) = via {
        let via = Some((via.id, via.addr.clone()));
        let answer = peer.ask(|reply| Command::Bootstrap { via, reply });
        match tokio::time::timeout(JOIN_TIMEOUT, answer).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(format!("bootstrap: {e}")),
            Ok(None) => return Err("the node stopped".into()),
            Err(_) => return Err("bootstrap timed out".into()),
        }
    }
    Ok(started.elapsed())
}

/// Builds the cluster, then measures memory, idle traffic, lookups and joins, in that order.
pub async fn run(config: RunConfig) -> Result<Figures, String> {
    let rss_before = baseline_rss()?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());

    progress(NAME, &format!("building {} nodes", config.nodes));
    let mut peers: Vec<Peer> = Vec::with_capacity(config.nodes + config.joins);
    let mut build_joins = Vec::new();
    while peers.len() < config.nodes {
        let peer = spawn(arrivals_tx.clone(), counters.clone()).await?;
        let via = (!peers.is_empty()).then(|| &peers[rng.gen_range(0..peers.len())]);
        let took = join(&peer, via).await?;
        if via.is_some() {
            build_joins.push(took);
        }
        peers.push(peer);
    }
    // Settled: every node has finished its bootstrap, and the nodes it asked have learnt of it
    // (identify gives them its address). A round of bootstraps on every node at once, standing
    // in for Kademlia's periodic one (every 5 minutes), was tried: on two shared cores its
    // thousands of handshakes timed out, peers were dropped from routing tables, and the
    // automatic re-bootstraps kept the storm going for minutes.
    let settle = Duration::ZERO;
    let built = counters.snapshot();
    progress(
        NAME,
        &format!(
            "built ({} connections established, {} failed so far); warming up",
            built.connections, built.dial_errors
        ),
    );
    tokio::time::sleep(config.warmup).await;

    progress(NAME, &format!("idle window of {:?}", config.idle_window));
    let idle_wire_before = Wire::read();
    tokio::time::sleep(config.idle_window).await;
    let idle_wire = Wire::read()
        .zip(idle_wire_before)
        .map(|(after, before)| after.since(before));
    let (rss_idle, rss_idle_trimmed) = idle_rss()?;

    progress(NAME, &format!("{} lookups", config.lookups));
    let ids: Vec<KBucketKey<PeerId>> = peers.iter().map(|p| KBucketKey::from(p.id)).collect();
    let mut latencies = Vec::with_capacity(config.lookups);
    let (mut correct, mut failed, mut local) = (0, 0, 0);
    let (mut requests, mut msgs) = (0u64, 0u64);
    let before = counters.snapshot();
    let wire_before = Wire::read();
    let cpu_before = cpu_time();
    let phase_started = Instant::now();
    for seq in 0..config.lookups as u64 {
        let origin = rng.gen_range(0..peers.len());
        let key: Vec<u8> = (0..32).map(|_| rng.gen()).collect();
        let target = KBucketKey::new(key.clone());
        let truly_closest = ids
            .iter()
            .min_by_key(|id| id.distance(&target))
            .map(|id| *id.preimage());
        let started = Instant::now();
        let lookup = peers[origin].ask(|reply| Command::Closest { key, reply });
        let closest = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Some(closest)) => closest,
            _ => {
                failed += 1;
                continue;
            }
        };
        requests += u64::from(closest.requests);
        msgs += u64::from(closest.requests) + u64::from(closest.answered);
        if closest.timed_out {
            progress(
                NAME,
                "a get_closest_peers query timed out (its peers are used)",
            );
        }
        // The origin takes the message itself when no peer it found is closer than it.
        let chosen = closest
            .peers
            .iter()
            .copied()
            .chain(std::iter::once(peers[origin].id))
            .min_by_key(|id| KBucketKey::from(*id).distance(&target));
        let Some(chosen) = chosen else {
            failed += 1;
            continue;
        };
        let reached = if chosen == peers[origin].id {
            local += 1;
            Some((chosen, started.elapsed()))
        } else {
            let sent = peers[origin].ask(|reply| Command::Deliver {
                to: chosen,
                payload: payload(seq),
                reply,
            });
            let remaining = LOOKUP_TIMEOUT.saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, sent).await {
                Ok(Some(Ok(()))) => {
                    msgs += 2;
                    // The response came after the request was read: its arrival is queued.
                    let mut reached = None;
                    while let Ok(arrival) = arrivals.try_recv() {
                        if arrival.seq == Some(seq) {
                            reached = Some((arrival.at, arrival.when - started));
                        }
                    }
                    reached
                }
                _ => None,
            }
        };
        match reached {
            Some((at, took)) => {
                latencies.push(took);
                if Some(at) == truly_closest {
                    correct += 1;
                }
            }
            None => failed += 1,
        }
    }
    let phase = phase_started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let busy_wire = Wire::read()
        .zip(wire_before)
        .map(|(after, before)| after.since(before));
    let during = counters.snapshot().since(before);
    progress(
        NAME,
        &format!(
            "lookup phase: {} connections established, {} failed, {} identify messages",
            during.connections, during.dial_errors, during.identify_msgs
        ),
    );

    progress(NAME, &format!("{} timed joins", config.joins));
    let mut joins = Vec::with_capacity(config.joins);
    let mut joins_failed = 0;
    for _ in 0..config.joins {
        tokio::time::sleep(JOIN_PAUSE).await;
        let peer = spawn(arrivals_tx.clone(), counters.clone()).await?;
        let via = &peers[rng.gen_range(0..peers.len())];
        match join(&peer, Some(via)).await {
            Ok(took) => joins.push(took),
            Err(e) => {
                progress(NAME, &format!("join failed: {e}"));
                joins_failed += 1;
            }
        }
        peers.push(peer);
    }
    // Closing the command channels stops the nodes.
    drop(peers);

    let lookups = config.lookups.max(1) as f64;
    let wire = WireFigures::new(
        config.nodes,
        idle_wire,
        config.idle_window,
        busy_wire,
        phase,
        config.lookups,
    );
    Ok(Figures {
        join_ms_p50: quantile_ms(&joins, 0.5),
        lookup_ms_p50: quantile_ms(&latencies, 0.5),
        lookup_ms_p99: quantile_ms(&latencies, 0.99),
        msgs_per_lookup: msgs as f64 / lookups,
        cpu_ms_per_lookup: cpu.as_secs_f64() * 1e3 / lookups,
        rss_mib_per_node: per_node_mib(rss_idle_trimmed, rss_before, config.nodes),
        idle_bytes_per_node_per_s: wire.idle_bytes_per_node_per_s,
        correct_fraction: correct as f64 / lookups,
        detail: Detail {
            nodes: config.nodes,
            build_join_ms_p50: quantile_ms(&build_joins, 0.5),
            settle_ms: settle.as_secs_f64() * 1e3,
            rss_mib_per_node_untrimmed: per_node_mib(rss_idle, rss_before, config.nodes),
            idle_window_s: config.idle_window.as_secs_f64(),
            idle_datagrams_per_node_per_s: wire.idle_datagrams_per_node_per_s,
            lookups: config.lookups,
            lookups_failed: failed,
            lookups_local: local,
            datagrams_per_lookup: wire.datagrams_per_lookup,
            bytes_per_lookup: wire.bytes_per_lookup,
            hops_or_requests_per_lookup: requests as f64 / lookups,
            side_msgs_per_lookup: during.identify_msgs as f64 / lookups,
            lookup_phase_s: phase.as_secs_f64(),
            joins: config.joins,
            joins_failed,
            own_netns: config.own_netns,
        },
    })
}
