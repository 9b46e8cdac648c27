//! The route benchmark: routed latency over real nodes on loopback, against raw quinn
//! request/response measured in the same run.
//!
//! - **Baseline**: two raw quinn endpoints with Wendy's TLS setup and limits. Request/response:
//!   the client opens a bi stream, writes the 200-byte request and finishes; the server reads it
//!   to the end and answers 200 bytes; the time runs until the client has read the answer.
//!   One-way: a uni stream per message, timed until the server has read it (same process clock).
//!   Its connection is made before the cluster is built, and its samples are taken one by one
//!   interleaved with the Wendy 1-hop samples (alternating which goes first), so both sides see
//!   the same machine load and the same process (100 idle nodes beside them).
//!   One-way is also taken *detached*, the way the Wendy side is timed: the sending task returns
//!   once its stream is finished (as [`Node::route`] returns once the message is handed to
//!   QUIC), and the bench's own thread, woken by that task's end while the message is in
//!   flight, waits for the arrival. The plain one-way sample keeps its sending task waiting for
//!   the arrival, so nothing else runs during its flight.
//! - **Wendy 1 hop**: in a settled cluster (its nodes' first reachability checks over too,
//!   so no dial-back runs beside the samples), a node routes a 200-byte message to the key
//!   equal to its clockwise neighbour's id (a leaf, so one hop), timed from [`Node::route`]
//!   (called on a runtime worker, where the baseline is timed too) until the neighbour's
//!   application reads the [`NodeEvent::Deliver`]. Taken both ways the baseline is: `one_hop`
//!   detached (the routing task ends once [`Node::route`] returns, which wakes the bench's
//!   thread while the message is in flight), `one_hop_attached` as the plain one-way baseline
//!   (nothing waits for the routing task until the delivery has arrived).
//!   `one_hop_p50_ratio` is `one_hop`'s median over the raw quinn request/response median (the
//!   design's definition); `one_hop_one_way_p50_ratio` compares the attached samples of both
//!   sides, `one_hop_one_way_detached_p50_ratio` the detached ones, and
//!   `one_hop_one_way_mixed_p50_ratio` Wendy detached with raw quinn attached. Also reported:
//!   a Wendy request/response (the root's application answers with [`Node::send`], timed until
//!   the origin's application reads the answer).
//! - **Multi-hop**: random keys from random nodes, one at a time (routed from a runtime worker
//!   too), latency bucketed by the hop count of the delivery (`three_hop` is every route of 3
//!   hops or more).
//! - **Throughput**: every node routes to random keys at once (a window of messages in flight),
//!   delivered messages per second divided by the node count.
//! - **Raw mesh** ([`super::mesh`]): before the cluster is built, raw quinn's rate over as many
//!   endpoints with the throughput phase's window, one-way and with a receipt per message: the
//!   ceiling of the routed rate for any design with a stream per message.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;

use super::mesh::RawMeshThroughput;
use super::{ms, payload, BenchError, Latency, Progress};
use crate::id::{Key, NodeId};
use crate::identity::{Identity, Validity};
use crate::node::Node;
use crate::node::NodeEvent;
use crate::testing::{seq_of, Cluster, Observed};
use crate::transport::{tls, Admission, TransportConfig};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteBenchConfig {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Timed messages of each latency kind (raw quinn, Wendy 1 hop, multi-hop).
    pub samples: usize,
    /// Messages for the throughput measurement.
    pub throughput_messages: usize,
    /// Messages in flight at once in the throughput measurement.
    pub window: usize,
    /// Payload bytes.
    pub size: usize,
    /// Seed of origins and keys.
    pub seed: u64,
}

impl Default for RouteBenchConfig {
    fn default() -> Self {
        Self {
            nodes: 100,
            samples: 2000,
            throughput_messages: 10_000,
            window: 32,
            size: 200,
            seed: 1,
        }
    }
}

impl RouteBenchConfig {
    /// Small sizes for a smoke run (`--quick`).
    pub fn quick() -> Self {
        Self {
            nodes: 12,
            samples: 100,
            throughput_messages: 500,
            window: 32,
            size: 200,
            seed: 1,
        }
    }
}

/// The route benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteBenchReport {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Payload bytes.
    pub size: usize,
    /// Raw quinn request/response on a bi stream.
    pub raw_quinn_request_response: Latency,
    /// Raw quinn one-way message on a uni stream.
    pub raw_quinn_one_way: Latency,
    /// Raw quinn one-way message timed as the Wendy 1-hop sample is: the sending task returns
    /// once the stream is finished, and the bench's thread waits for the arrival.
    pub raw_quinn_one_way_detached: Latency,
    /// Wendy routed message to a leaf (1 hop), route call to delivery, timed detached.
    pub one_hop: Latency,
    /// The same, timed attached: as `raw_quinn_one_way`, nothing waits for the routing task
    /// while the message is in flight.
    pub one_hop_attached: Latency,
    /// Wendy 1-hop request and direct answer, route call to the answer's arrival.
    pub one_hop_request_response: Latency,
    /// Wendy routed messages of 3 or more hops (random keys).
    pub three_hop: Latency,
    /// Wendy routed messages to random keys, by hop count.
    pub by_hops: BTreeMap<u8, Latency>,
    /// `one_hop.p50 / raw_quinn_request_response.p50` (goal <= 1.2).
    pub one_hop_p50_ratio: f64,
    /// `one_hop_attached.p50 / raw_quinn_one_way.p50`: both sides timed the same way
    /// (attached).
    pub one_hop_one_way_p50_ratio: f64,
    /// `one_hop.p50 / raw_quinn_one_way_detached.p50`: both sides timed detached.
    pub one_hop_one_way_detached_p50_ratio: f64,
    /// `one_hop.p50 / raw_quinn_one_way.p50`: Wendy timed detached, raw quinn attached.
    pub one_hop_one_way_mixed_p50_ratio: f64,
    /// `one_hop_request_response.p50 / raw_quinn_request_response.p50`.
    pub one_hop_request_response_p50_ratio: f64,
    /// Routed messages delivered per second per node, all nodes routing at once.
    pub routed_msgs_per_s_per_node: f64,
    /// Routed messages delivered per second, whole cluster.
    pub routed_msgs_per_s: f64,
    /// Process CPU time (user + system, all nodes) per routed message in the throughput
    /// measurement, ms (Linux; `None` elsewhere). Times the delivered rate, it shows whether the
    /// rate was bounded by the CPU this process got.
    pub cpu_ms_per_routed_msg: Option<f64>,
    /// What authenticating origins costs (every node of the run signs and checks them).
    pub auth: AuthCost,
    /// Raw quinn's throughput over a mesh of as many endpoints, in the same process before the
    /// cluster is built: the ceiling of `routed_msgs_per_s` for a stream per message.
    pub raw_quinn_mesh: RawMeshThroughput,
    /// `routed_msgs_per_s * mean hops / raw_quinn_mesh.with_receipt_msgs_per_s`: the share of
    /// the raw mesh's hop rate (each hop with its receipt) the routed messages' hops reached.
    pub routed_hops_vs_raw_mesh: f64,
}

/// The cost of origin authentication on this machine, measured in the same process before the
/// cluster is built: each figure is the fastest of several batches' mean (the least disturbed
/// by other load), in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthCost {
    /// The domain-separated blake3 digest of one message of the run's payload size.
    pub digest_us: f64,
    /// One ed25519 signature of a digest (the origin, once per message).
    pub sign_us: f64,
    /// One check of a known origin's signature (its decoded key cached).
    pub verify_us: f64,
    /// One check of a new origin's signature (hash and decode its key first).
    pub verify_new_origin_us: f64,
    /// Signature checks per routed message, from the random-key hop counts: a message is
    /// checked by every hop after the first (the first hop's link proves the origin).
    pub checks_per_routed_msg: f64,
}

/// Mixed into the seed for the raw mesh's choice of links, so the cluster's draws stay as
/// they were.
const MESH_SEED: u64 = 0x6d65_7368;

/// How long any single message may take before the run is declared broken (a hang guard).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the benchmark (needs a multi-threaded tokio runtime).
pub async fn run(
    config: RouteBenchConfig,
    progress: Progress<'_>,
) -> Result<RouteBenchReport, BenchError> {
    if config.nodes < 2 || config.samples == 0 || config.size < 8 {
        return Err(BenchError::Invalid(
            "need at least 2 nodes, 1 sample and 8 payload bytes".into(),
        ));
    }
    progress("route: signature costs");
    let mut auth = auth_cost(config.size);
    progress("route: raw quinn mesh throughput");
    let mut mesh_rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ MESH_SEED);
    let raw_quinn_mesh = super::mesh::measure(
        config.nodes,
        config.throughput_messages,
        config.window,
        config.size,
        &mut mesh_rng,
    )
    .await?;
    // The baseline's connection is up before the cluster, so both share the process from here.
    let mut raw = RawQuinn::start(config.size).await?;
    let mut cluster = super::cluster(config.seed);
    progress(&format!("route: building {} nodes", config.nodes));
    super::grow(&mut cluster, config.nodes, progress).await?;
    cluster.settle(Duration::from_secs(60)).await?;
    progress("route: waiting for the nodes' reachability checks");
    reachability_known(&cluster, Duration::from_secs(30), progress).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let mut seq = 0u64;

    progress("route: 1 hop, interleaved with raw quinn");
    let (mut one_hop, mut one_hop_attached, mut one_hop_rr) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_rr, mut raw_one_way, mut raw_detached) = (Vec::new(), Vec::new(), Vec::new());
    let index: HashMap<NodeId, usize> = cluster
        .ids()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    let mut sorted = cluster.ids();
    sorted.sort();
    // Warm-up rounds are not recorded (first streams on each link, allocator, caches).
    let warmup = (config.samples / 10).max(5);
    for round in 0..(config.samples + warmup) {
        // Sample by sample, alternating which goes first: the machine's load changes over a
        // run, and both sides must see the same.
        let baseline_first = round % 2 == 0;
        let early = if baseline_first {
            let (back, sample) = baseline(raw).await?;
            raw = back;
            Some(sample)
        } else {
            None
        };
        let origin_id = sorted[round % sorted.len()];
        let target_id = sorted[(round + 1) % sorted.len()];
        let (origin, target) = (index[&origin_id], index[&target_id]);
        seq += 1;
        let started = timed_route(
            &cluster.nodes[origin],
            Key::from(target_id),
            payload(seq, config.size),
        )
        .await?;
        let (at, hops, delivered) = await_delivery(&mut cluster, seq).await?;
        one_hop_to(target_id, at, hops)?;
        // The root's application answers directly, as a request/response service would.
        let root = cluster.nodes[target].clone();
        let answer = payload(seq, config.size);
        tokio::spawn(async move { root.send(origin_id, answer).await })
            .await
            .map_err(|e| BenchError::Incomplete(format!("the answering task failed: {e}")))??;
        let answered = await_direct(&mut cluster, seq).await?;
        let (rr, one_way) = match early {
            Some(sample) => sample,
            None => {
                let (back, sample) = baseline(raw).await?;
                raw = back;
                sample
            }
        };
        // Last in the round, so the samples above keep their order.
        let detached = raw.one_way_detached().await?;
        seq += 1;
        let attached = attached_route(
            &mut cluster,
            origin,
            target_id,
            payload(seq, config.size),
            seq,
        )
        .await?;
        if round >= warmup {
            one_hop.push(ms(delivered - started));
            one_hop_attached.push(ms(attached));
            one_hop_rr.push(ms(answered - started));
            raw_rr.push(ms(rr));
            raw_one_way.push(ms(one_way));
            raw_detached.push(ms(detached));
        }
    }
    raw.close();

    progress("route: random keys");
    let mut by_hops: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    for _ in 0..config.samples {
        let origin = rng.gen_range(0..cluster.nodes.len());
        seq += 1;
        let started = timed_route(
            &cluster.nodes[origin],
            Key::from_u128(rng.gen()),
            payload(seq, config.size),
        )
        .await?;
        let (_, hops, delivered) = await_delivery(&mut cluster, seq).await?;
        by_hops
            .entry(hops)
            .or_default()
            .push(ms(delivered - started));
    }

    progress("route: throughput");
    let cpu_before = super::link::process_cpu_ticks();
    let throughput = throughput(&mut cluster, &config, &mut rng, &mut seq).await?;
    let cpu_ms_per_routed_msg = super::link::cpu_ms_per(cpu_before, config.throughput_messages);
    let nodes = cluster.nodes.len();
    cluster.shutdown().await;

    let (checks, routed) = by_hops.iter().fold((0usize, 0usize), |(c, n), (hops, v)| {
        (
            c + usize::from(hops.saturating_sub(1)) * v.len(),
            n + v.len(),
        )
    });
    auth.checks_per_routed_msg = checks as f64 / routed.max(1) as f64;
    // The random-key phase's keys are drawn as the throughput phase's are.
    let mean_hops = by_hops
        .iter()
        .map(|(hops, v)| f64::from(*hops) * v.len() as f64)
        .sum::<f64>()
        / routed.max(1) as f64;
    let mut three_or_more: Vec<f64> = by_hops
        .range(3..)
        .flat_map(|(_, samples)| samples.iter().copied())
        .collect();
    let one_hop = Latency::of(&mut one_hop);
    let one_hop_attached = Latency::of(&mut one_hop_attached);
    let one_hop_rr = Latency::of(&mut one_hop_rr);
    let raw_rr = Latency::of(&mut raw_rr);
    let raw_one_way = Latency::of(&mut raw_one_way);
    let raw_detached = Latency::of(&mut raw_detached);
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    Ok(RouteBenchReport {
        nodes,
        size: config.size,
        raw_quinn_request_response: raw_rr,
        raw_quinn_one_way: raw_one_way,
        raw_quinn_one_way_detached: raw_detached,
        one_hop,
        one_hop_attached,
        one_hop_request_response: one_hop_rr,
        three_hop: Latency::of(&mut three_or_more),
        by_hops: by_hops
            .into_iter()
            .map(|(hops, mut samples)| (hops, Latency::of(&mut samples)))
            .collect(),
        one_hop_p50_ratio: ratio(one_hop.p50_ms, raw_rr.p50_ms),
        one_hop_one_way_p50_ratio: ratio(one_hop_attached.p50_ms, raw_one_way.p50_ms),
        one_hop_one_way_detached_p50_ratio: ratio(one_hop.p50_ms, raw_detached.p50_ms),
        one_hop_one_way_mixed_p50_ratio: ratio(one_hop.p50_ms, raw_one_way.p50_ms),
        one_hop_request_response_p50_ratio: ratio(one_hop_rr.p50_ms, raw_rr.p50_ms),
        routed_msgs_per_s_per_node: throughput / nodes as f64,
        routed_msgs_per_s: throughput,
        cpu_ms_per_routed_msg,
        auth,
        routed_hops_vs_raw_mesh: throughput * mean_hops
            / raw_quinn_mesh.with_receipt_msgs_per_s.max(1e-9),
        raw_quinn_mesh,
    })
}

/// Times the digest, signature and checks a routed message of `size` bytes costs.
fn auth_cost(size: usize) -> AuthCost {
    use crate::identity::OriginVerifier;
    use crate::pastry::route_digest;
    const BATCHES: usize = 5;
    const PER_BATCH: usize = 200;
    /// The fastest batch's mean time of `op`, in microseconds.
    fn fastest(mut op: impl FnMut(usize)) -> f64 {
        (0..BATCHES)
            .map(|batch| {
                let started = Instant::now();
                for i in 0..PER_BATCH {
                    op(batch * PER_BATCH + i);
                }
                started.elapsed().as_secs_f64() * 1e6 / PER_BATCH as f64
            })
            .fold(f64::INFINITY, f64::min)
    }
    let identities: Vec<Identity> = (0..BATCHES * PER_BATCH)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Identity::from_seed(seed)
        })
        .collect();
    let signer = identities[0].origin_signer();
    let origin = signer.node_id();
    let payload = vec![0x5a; size];
    let key = Key::from_u128(1);
    let digest_us = fastest(|i| {
        std::hint::black_box(route_digest(origin, i as u64, key, &payload));
    });
    let digest = route_digest(origin, 1, key, &payload);
    let signature = signer.sign(&digest);
    let sign_us = fastest(|_| {
        std::hint::black_box(signer.sign(std::hint::black_box(&digest)));
    });
    let mut verifier = OriginVerifier::new();
    let public_key = signer.public_key();
    let verify_us = fastest(|_| {
        let ok = verifier.verify(origin, &public_key, &digest, &signature);
        std::hint::black_box(ok.is_ok());
    });
    // A new origin each time: its key is hashed and decoded before the check.
    let signed: Vec<_> = identities
        .iter()
        .map(|identity| {
            let signer = identity.origin_signer();
            (signer.node_id(), signer.public_key(), signer.sign(&digest))
        })
        .collect();
    let mut fresh = OriginVerifier::new();
    let verify_new_origin_us = fastest(|i| {
        let (origin, public_key, signature) = &signed[i];
        let ok = fresh.verify(*origin, public_key, &digest, signature);
        std::hint::black_box(ok.is_ok());
    });
    AuthCost {
        digest_us,
        sign_us,
        verify_us,
        verify_new_origin_us,
        checks_per_routed_msg: 0.0,
    }
}

/// One raw quinn request/response and one-way sample, timed on a runtime worker as the Wendy
/// side's delivery is (by the observer task). Timed here, on the thread parked in `block_on`,
/// each exchange would also pay for waking that thread (~5 us), in Wendy's favour.
async fn baseline(mut raw: RawQuinn) -> Result<(RawQuinn, (Duration, Duration)), BenchError> {
    tokio::spawn(async move {
        let request_response = raw.request_response().await?;
        let one_way = raw.one_way().await?;
        Ok((raw, (request_response, one_way)))
    })
    .await
    .map_err(|e| BenchError::Incomplete(format!("the baseline task failed: {e}")))?
}

/// Routes a message from a runtime worker, as an application's task would, and returns when
/// the call was made. Every Wendy send of the suite is made this way (the root's answer too). (Called on the thread parked in `block_on`, each route would also pay for
/// waking a worker, as [`baseline`] explains.)
async fn timed_route(node: &Node, key: Key, payload: Vec<u8>) -> Result<Instant, BenchError> {
    joined(spawn_route(node, key, payload)).await
}

/// Starts a route on a runtime worker; the task returns when the call was made.
fn spawn_route(
    node: &Node,
    key: Key,
    payload: Vec<u8>,
) -> tokio::task::JoinHandle<Result<Instant, crate::node::NodeError>> {
    let node = node.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        node.route(key, payload).await.map(|_| started)
    })
}

/// When a [`spawn_route`] task made its call.
async fn joined(
    routing: tokio::task::JoinHandle<Result<Instant, crate::node::NodeError>>,
) -> Result<Instant, BenchError> {
    Ok(routing
        .await
        .map_err(|e| BenchError::Incomplete(format!("the routing task failed: {e}")))??)
}

/// Checks that a 1-hop route to `target` was delivered there, in one hop.
fn one_hop_to(target: NodeId, at: NodeId, hops: u8) -> Result<(), BenchError> {
    if at != target || hops != 1 {
        return Err(BenchError::Incomplete(format!(
            "a 1-hop route to a leaf took {hops} hops (at the right node: {})",
            at == target
        )));
    }
    Ok(())
}

/// Routes from a runtime worker, as [`timed_route`] does, but timed attached: the bench waits
/// for the delivery first and for the routing task only after it, so the task's end wakes
/// nothing while the message is in flight (as in [`RawQuinn::one_way`]). Returns the 1-hop
/// latency.
async fn attached_route(
    cluster: &mut Cluster,
    origin: usize,
    target: NodeId,
    payload: Vec<u8>,
    seq: u64,
) -> Result<Duration, BenchError> {
    let routing = spawn_route(&cluster.nodes[origin], Key::from(target), payload);
    let (at, hops, delivered) = await_delivery(cluster, seq).await?;
    let started = joined(routing).await?;
    one_hop_to(target, at, hops)?;
    Ok(delivered - started)
}

/// Waits (at most `timeout`) until every node of `cluster` has a confirmed reachability
/// verdict: a fresh node's checks dial it back from other nodes' new endpoints, handshakes
/// that would otherwise run beside the latency samples.
async fn reachability_known(cluster: &Cluster, timeout: Duration, progress: Progress<'_>) {
    let all = async {
        for node in &cluster.nodes {
            let mut status = node.reachability();
            // A closed channel means a stopped node: nothing more to wait for there.
            let _ = status
                .wait_for(|s| s.verdict != crate::reach::Reachability::Unknown)
                .await;
        }
    };
    if tokio::time::timeout(timeout, all).await.is_err() {
        progress(&format!(
            "  reachability still unknown on some nodes after {timeout:?}; measuring anyway"
        ));
    }
}

/// Waits for the delivery of message `seq`: where, in how many hops, when.
async fn await_delivery(
    cluster: &mut Cluster,
    seq: u64,
) -> Result<(NodeId, u8, Instant), BenchError> {
    loop {
        match cluster.next_event(MESSAGE_TIMEOUT).await {
            Some(Observed {
                at,
                when,
                event: NodeEvent::Deliver(delivery),
            }) if seq_of(&delivery.payload) == Some(seq) => return Ok((at, delivery.hops, when)),
            Some(_) => {}
            None => {
                return Err(BenchError::Incomplete(format!(
                    "routed message {seq} was not delivered within {MESSAGE_TIMEOUT:?}"
                )))
            }
        }
    }
}

/// Waits for the direct answer to message `seq`.
async fn await_direct(cluster: &mut Cluster, seq: u64) -> Result<Instant, BenchError> {
    loop {
        match cluster.next_event(MESSAGE_TIMEOUT).await {
            Some(Observed {
                when,
                event: NodeEvent::Direct { payload, .. },
                ..
            }) if seq_of(&payload) == Some(seq) => return Ok(when),
            Some(_) => {}
            None => {
                return Err(BenchError::Incomplete(format!(
                    "the answer to {seq} did not arrive within {MESSAGE_TIMEOUT:?}"
                )))
            }
        }
    }
}

/// Routes `throughput_messages` to random keys from random nodes with `window` in flight;
/// returns deliveries per second.
async fn throughput(
    cluster: &mut Cluster,
    config: &RouteBenchConfig,
    rng: &mut rand_chacha::ChaCha8Rng,
    seq: &mut u64,
) -> Result<f64, BenchError> {
    let total = config.throughput_messages;
    if total == 0 {
        return Ok(0.0);
    }
    let first = *seq + 1;
    let (mut sent, mut delivered) = (0usize, 0usize);
    let started = Instant::now();
    while delivered < total {
        while sent < total && sent - delivered < config.window.max(1) {
            let origin: &Node = &cluster.nodes[rng.gen_range(0..cluster.nodes.len())];
            *seq += 1;
            origin
                .route(Key::from_u128(rng.gen()), payload(*seq, config.size))
                .await?;
            sent += 1;
        }
        match cluster.next_event(MESSAGE_TIMEOUT).await {
            Some(Observed {
                event: NodeEvent::Deliver(delivery),
                ..
            }) if seq_of(&delivery.payload).is_some_and(|s| s >= first) => {
                delivered += 1;
            }
            Some(_) => {}
            None => {
                return Err(BenchError::Incomplete(format!(
                    "{} of {total} routed messages were not delivered",
                    total - delivered
                )))
            }
        }
    }
    Ok(total as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

pub(super) fn transport_config() -> Result<TransportConfig, BenchError> {
    let identity = Identity::generate();
    let certificate = identity.self_signed_certificate(Validity::days_from_now(1))?;
    let mut config = TransportConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        identity,
        certificate,
        Admission::Open,
    );
    super::as_shipped(&mut config.limits);
    Ok(config)
}

/// Two raw quinn endpoints with Wendy's TLS setup and limits, one connection between them:
/// the baseline, measured sample by sample interleaved with Wendy's own samples.
struct RawQuinn {
    client: quinn::Endpoint,
    server: quinn::Endpoint,
    conn: quinn::Connection,
    accept: tokio::task::JoinHandle<()>,
    arrived: mpsc::UnboundedReceiver<Instant>,
    request: bytes::Bytes,
    max: usize,
}

pub(super) fn quinn_error(error: &dyn std::fmt::Display) -> BenchError {
    BenchError::Quinn(error.to_string())
}

impl RawQuinn {
    /// Binds both endpoints, connects, and starts the server's answering tasks.
    async fn start(size: usize) -> Result<Self, BenchError> {
        let server_config = transport_config()?;
        let client_config = transport_config()?;
        let max = server_config.limits.max_message_size;
        let server = quinn::Endpoint::server(
            tls::quinn_server_config(&server_config)?,
            server_config.listen,
        )
        .map_err(|error| quinn_error(&error))?;
        let server_addr = server.local_addr().map_err(|error| quinn_error(&error))?;
        let client =
            quinn::Endpoint::client(client_config.listen).map_err(|error| quinn_error(&error))?;
        let (arrived_tx, arrived) = mpsc::unbounded_channel::<Instant>();
        let accept = {
            let server = server.clone();
            tokio::spawn(async move {
                let Some(incoming) = server.accept().await else {
                    return;
                };
                let Ok(conn) = incoming.await else {
                    return;
                };
                let answer_bytes = bytes::Bytes::from(vec![0xa5; size]);
                let bi = {
                    let conn = conn.clone();
                    let answer_bytes = answer_bytes.clone();
                    tokio::spawn(async move {
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            let answer_bytes = answer_bytes.clone();
                            tokio::spawn(async move {
                                if recv.read_to_end(max).await.is_ok()
                                    && send.write_chunk(answer_bytes).await.is_ok()
                                {
                                    let _ = send.finish();
                                }
                            });
                        }
                    })
                };
                while let Ok(mut recv) = conn.accept_uni().await {
                    let arrived_tx = arrived_tx.clone();
                    tokio::spawn(async move {
                        if recv.read_to_end(max).await.is_ok() {
                            let _ = arrived_tx.send(Instant::now());
                        }
                    });
                }
                bi.abort();
            })
        };
        let conn = client
            .connect_with(
                tls::quinn_client_config(&client_config, Some(server_config.identity.node_id()))?,
                server_addr,
                "wendy",
            )
            .map_err(|error| quinn_error(&error))?
            .await
            .map_err(|error| quinn_error(&error))?;
        Ok(Self {
            client,
            server,
            conn,
            accept,
            arrived,
            request: bytes::Bytes::from(vec![0x5a; size]),
            max,
        })
    }

    /// One request/response on a fresh bi stream: returns how long it took.
    async fn request_response(&self) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| quinn_error(&e))?;
            send.write_chunk(self.request.clone())
                .await
                .map_err(|e| quinn_error(&e))?;
            send.finish().map_err(|e| quinn_error(&e))?;
            recv.read_to_end(self.max)
                .await
                .map_err(|e| quinn_error(&e))?;
            Ok::<_, BenchError>(Instant::now())
        };
        let answered = tokio::time::timeout(MESSAGE_TIMEOUT, exchange)
            .await
            .map_err(|_| BenchError::Quinn("request timed out".into()))??;
        Ok(answered - started)
    }

    /// One message on a fresh uni stream sent by a runtime worker's task that returns once the
    /// stream is finished, as [`timed_route`]'s does; this (the bench's) thread waits for the
    /// arrival. Returns how long until the server had read it.
    async fn one_way_detached(&mut self) -> Result<Duration, BenchError> {
        let (conn, request) = (self.conn.clone(), self.request.clone());
        let sent = tokio::spawn(async move { send_one(&conn, request).await })
            .await
            .map_err(|e| BenchError::Incomplete(format!("the baseline task failed: {e}")))??;
        Ok(self.arrival().await? - sent)
    }

    /// One message on a fresh uni stream: returns how long until the server had read it.
    async fn one_way(&mut self) -> Result<Duration, BenchError> {
        let sent = send_one(&self.conn, self.request.clone()).await?;
        Ok(self.arrival().await? - sent)
    }

    /// When the server read the next one-way message.
    async fn arrival(&mut self) -> Result<Instant, BenchError> {
        tokio::time::timeout(MESSAGE_TIMEOUT, self.arrived.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| BenchError::Quinn("one-way message lost".into()))
    }

    fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.client.close(0u32.into(), b"done");
        self.server.close(0u32.into(), b"done");
        self.accept.abort();
    }
}

/// Sends `request` on a fresh uni stream of `conn` and finishes it; returns when it started.
async fn send_one(conn: &quinn::Connection, request: bytes::Bytes) -> Result<Instant, BenchError> {
    let sent = Instant::now();
    let mut stream = conn.open_uni().await.map_err(|e| quinn_error(&e))?;
    stream
        .write_chunk(request)
        .await
        .map_err(|e| quinn_error(&e))?;
    stream.finish().map_err(|e| quinn_error(&e))?;
    Ok(sent)
}
