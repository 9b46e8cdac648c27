//! `wendy demo`: a local cluster over real QUIC on loopback, checked against the oracle.
//!
//! N nodes start in this process, join one by one through the first, then M messages are routed
//! to random keys from random nodes; every delivery is compared with the live node whose id is
//! truly closest to the key.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use wendy::bench::{median, Latency};
use wendy::id::{Key, NodeId};
use wendy::node::NodeEvent;
use wendy::testing::{seq_of, Cluster, ClusterError, Observed, Via};

use crate::CmdResult;

/// Options of `wendy demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Messages routed to random keys.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Messages in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seed for keys and senders (node keys are always fresh).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    json: bool,
}

/// What the demo measured.
#[derive(Debug, serde::Serialize)]
struct Report {
    nodes: usize,
    messages: usize,
    delivered_correct: usize,
    lost: usize,
    misdelivered: usize,
    duplicates: usize,
    mean_hops: f64,
    max_hops: u8,
    hops_histogram: Vec<usize>,
    join_ms_p50: f64,
    join_ms_max: f64,
    settle_ms: f64,
    route_ms_p50: f64,
    route_ms_p99: f64,
    msgs_per_s: f64,
}

pub(crate) fn run(args: DemoArgs) -> CmdResult {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(demo(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if report.lost > 0 || report.misdelivered > 0 {
        return Err(format!(
            "{} messages lost and {} misdelivered",
            report.lost, report.misdelivered
        )
        .into());
    }
    Ok(())
}

/// Progress on stderr: one updating line on a terminal, plain lines otherwise.
fn progress(line: &str) {
    use std::io::IsTerminal;
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r{line:<70}");
        let _ = err.flush();
    } else {
        let _ = writeln!(err, "{line}");
    }
}

async fn demo(args: &DemoArgs) -> Result<Report, Box<dyn std::error::Error>> {
    // Only deliveries are read; the other events are dropped as they come.
    let mut cluster =
        Cluster::new(args.seed).with_event_filter(|event| matches!(event, NodeEvent::Deliver(_)));
    let joins = cluster
        .grow(
            args.nodes,
            &crate::node_config(),
            Via::First,
            &mut |joined| {
                progress(&format!("joined {joined}/{} nodes", args.nodes));
            },
        )
        .await?;
    let mut join_ms: Vec<f64> = joins.iter().map(|d| d.as_secs_f64() * 1e3).collect();

    let ids = cluster.ids();
    // Routing is correct from the moment `join` returns (a joiner's leaf-set neighbours hold it
    // before it becomes active). The wait below only measures how long the last announcements
    // to the rest of the overlay take to reach every leaf set, and keeps them out of the
    // latencies measured next.
    let settle_started = Instant::now();
    match cluster.settle(Duration::from_secs(10)).await {
        Ok(_) => {}
        Err(ClusterError::Unsettled { .. }) => {
            progress("leaf sets did not all converge within 10 s; routing anyway");
        }
        Err(other) => return Err(other.into()),
    }
    let settle_ms = settle_started.elapsed().as_secs_f64() * 1e3;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let plan: Vec<(usize, Key)> = (0..args.messages)
        .map(|_| (rng.gen_range(0..ids.len()), Key::from_u128(rng.gen())))
        .collect();
    let roots: Vec<NodeId> = plan
        .iter()
        .map(|(_, key)| key.closest(ids.iter().copied()).unwrap_or(ids[0]))
        .collect();

    let window = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut sent_at: Vec<Option<Instant>> = vec![None; args.messages];
    let mut seen: HashMap<u64, (NodeId, u8, Instant)> = HashMap::new();
    let mut duplicates = 0usize;
    let started = Instant::now();
    let mut next = 0usize;
    let mut last_progress = Instant::now();
    // Send with a bounded window; each arrival frees one slot.
    while seen.len() < args.messages {
        while next < args.messages {
            let Ok(permit) = window.clone().try_acquire_owned() else {
                break;
            };
            permit.forget();
            let (from, key) = plan[next];
            sent_at[next] = Some(Instant::now());
            let payload = (next as u64).to_be_bytes().to_vec();
            if let Err(error) = cluster.nodes[from].route(key, payload).await {
                return Err(format!("route failed at node {}: {error}", ids[from]).into());
            }
            next += 1;
        }
        match cluster.next_event(Duration::from_secs(10)).await {
            Some(Observed {
                at,
                when,
                event: NodeEvent::Deliver(delivery),
            }) => {
                let Some(seq) = seq_of(&delivery.payload) else {
                    continue;
                };
                if seen.contains_key(&seq) {
                    duplicates += 1;
                    continue;
                }
                seen.insert(seq, (at, delivery.hops, when));
                window.add_permits(1);
            }
            Some(_) => {}
            // Nothing arrived for 10 s: whatever is missing is lost.
            None => break,
        }
        if last_progress.elapsed() > Duration::from_millis(200) {
            progress(&format!("routed {}/{} messages", seen.len(), args.messages));
            last_progress = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    progress(&format!("routed {}/{} messages", seen.len(), args.messages));
    eprintln!();

    let mut hops_histogram = vec![0usize; 1];
    let mut latencies = Vec::with_capacity(seen.len());
    let (mut correct, mut misdelivered, mut hop_sum, mut max_hops) = (0, 0, 0u64, 0u8);
    for (seq, (at, hops, when)) in &seen {
        let seq = *seq as usize;
        let Some(root) = roots.get(seq) else { continue };
        if at == root {
            correct += 1;
        } else {
            misdelivered += 1;
        }
        let h = usize::from(*hops);
        if hops_histogram.len() <= h {
            hops_histogram.resize(h + 1, 0);
        }
        hops_histogram[h] += 1;
        hop_sum += u64::from(*hops);
        max_hops = max_hops.max(*hops);
        if let Some(Some(t0)) = sent_at.get(seq) {
            latencies.push(when.duration_since(*t0).as_secs_f64() * 1e3);
        }
    }
    cluster.shutdown().await;
    let route = Latency::of(&mut latencies);
    Ok(Report {
        nodes: args.nodes,
        messages: args.messages,
        delivered_correct: correct,
        lost: args.messages - seen.len(),
        misdelivered,
        duplicates,
        mean_hops: if seen.is_empty() {
            0.0
        } else {
            hop_sum as f64 / seen.len() as f64
        },
        max_hops,
        hops_histogram,
        join_ms_p50: median(&mut join_ms),
        join_ms_max: join_ms.iter().copied().fold(0.0, f64::max),
        settle_ms,
        route_ms_p50: route.p50_ms,
        route_ms_p99: route.p99_ms,
        msgs_per_s: seen.len() as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}

fn print_report(r: &Report) {
    println!(
        "Wendy demo: {} nodes on loopback, {} routed messages",
        r.nodes, r.messages
    );
    println!(
        "  join:     p50 {:.1} ms, max {:.1} ms (each through the first node); leaf sets settled {:.1} ms after the last join",
        r.join_ms_p50, r.join_ms_max, r.settle_ms
    );
    println!(
        "  delivery: {} correct, {} lost, {} misdelivered, {} duplicates",
        r.delivered_correct, r.lost, r.misdelivered, r.duplicates
    );
    println!("  hops:     mean {:.2}, max {}", r.mean_hops, r.max_hops);
    let total: usize = r.hops_histogram.iter().sum();
    for (hops, count) in r.hops_histogram.iter().enumerate() {
        let bar = "#".repeat(count * 40 / total.max(1));
        println!("            {hops} hops: {count:>6} {bar}");
    }
    println!(
        "  latency:  p50 {:.2} ms, p99 {:.2} ms; throughput {:.0} msgs/s",
        r.route_ms_p50, r.route_ms_p99, r.msgs_per_s
    );
}
