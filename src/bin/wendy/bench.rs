//! `wendy bench ...`: benchmarks that compare Wendy with a baseline in the same run.
//!
//! Each suite prints a readable table, or one JSON object with `--json`; progress goes to
//! stderr. `wendy bench all` runs every suite in its own child process (so the memory and idle
//! figures see no leftovers of the other suites) and prints one object keyed by suite; the
//! simulator runs beside the suites that count rather than time (see [`BESIDE_SIM`]).

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use wendy::bench::{self, idle, join, link, memory, regions, route, sim};

/// Every suite, in the order `all` runs them.
const SUITES: [&str; 7] = ["link", "route", "join", "memory", "idle", "regions", "sim"];

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Every suite below, each in its own process; one table (or one JSON object keyed by suite).
    All(SuiteArgs),
    /// One-way message throughput between two nodes: Wendy transport vs raw quinn (one uni
    /// stream per message, one connection, same TLS setup).
    Link(LinkArgs),
    /// Routed latency (1 hop, 3+ hops) and routed msgs/s per node vs raw quinn request/response.
    Route(SuiteArgs),
    /// Time for a fresh node to join settled clusters of 32 and 100 nodes.
    Join(SuiteArgs),
    /// Resident memory per idle node, 100 nodes in one process, and per connection.
    Memory(SuiteArgs),
    /// UDP datagrams and bytes per node per second in an idle 100-node cluster (as root, in a
    /// private network namespace so the kernel's counters see only these nodes).
    Idle(IdleArgs),
    /// Route latency over direct latency, end to end: 48 nodes in three emulated regions
    /// (delaying sockets on loopback), first and repeated routes to seeded keys.
    Regions(SuiteArgs),
    /// The simulator at 100,000 nodes: hops, stretch, wall time vs Pastry 2001.
    Sim(SuiteArgs),
}

/// Options every suite takes.
#[derive(Debug, Args)]
pub(crate) struct SuiteArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Small sizes (seconds, for CI): checks the benchmark runs, figures not comparable to goals.
    #[arg(long)]
    quick: bool,
}

/// Arguments of `wendy bench idle`.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// Count with QUIC's per-link statistics only (do not move into a private network
    /// namespace to read the kernel's counters).
    #[arg(long)]
    no_netns: bool,
    /// Set when `wendy bench idle` re-runs itself under `unshare --net`.
    #[arg(long, hide = true)]
    in_private_netns: bool,
    /// Length of the measurement window in seconds [default: 180, 3 with --quick]; one
    /// routing-table maintenance period (1200) holds exactly one maintenance round per node.
    #[arg(long, value_name = "S")]
    window_s: Option<f64>,
    #[command(flatten)]
    common: SuiteArgs,
}

/// Arguments of `wendy bench link`.
#[derive(Debug, Args)]
pub(crate) struct LinkArgs {
    /// Messages per round [default: 100000, 5000 with --quick].
    #[arg(long)]
    messages: Option<usize>,
    /// Payload bytes per message [default: 200].
    #[arg(long)]
    size: Option<usize>,
    /// Rounds of each side (the best round of each is reported) [default: 5, 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    #[command(flatten)]
    common: SuiteArgs,
}

pub(crate) fn run(command: BenchCommand) -> crate::CmdResult {
    let (suite, common) = match &command {
        BenchCommand::All(args) => return run_all(args),
        BenchCommand::Link(args) => ("link", &args.common),
        BenchCommand::Route(args) => ("route", args),
        BenchCommand::Join(args) => ("join", args),
        BenchCommand::Memory(args) => ("memory", args),
        BenchCommand::Idle(args) => {
            if !args.in_private_netns && !args.no_netns {
                if let Some(result) = idle_in_private_netns(&args.common, args.window_s) {
                    return result;
                }
            }
            ("idle", &args.common)
        }
        BenchCommand::Regions(args) => ("regions", args),
        BenchCommand::Sim(args) => ("sim", args),
    };
    let report = run_suite(&command, common.quick)?;
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_suite(suite, &report);
    }
    Ok(())
}

fn progress(line: &str) {
    eprintln!("{line}");
}

/// Runs one suite in this process and returns its report as JSON.
fn run_suite(command: &BenchCommand, quick: bool) -> Result<Value, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let progress: bench::Progress<'_> = &progress;
    Ok(match command {
        BenchCommand::Link(args) => {
            let base = if quick {
                link::LinkBenchConfig::quick()
            } else {
                link::LinkBenchConfig::default()
            };
            let config = link::LinkBenchConfig {
                messages: args.messages.unwrap_or(base.messages),
                size: args.size.unwrap_or(base.size),
                rounds: args.rounds.unwrap_or(base.rounds),
            };
            if config.messages > 0 && config.rounds > 0 {
                progress(&format!(
                    "link: {} messages of {} bytes, {} rounds each side",
                    config.messages, config.size, config.rounds
                ));
            }
            serde_json::to_value(runtime.block_on(link::run(config))?)?
        }
        BenchCommand::Route(_) => {
            let config = if quick {
                route::RouteBenchConfig::quick()
            } else {
                route::RouteBenchConfig::default()
            };
            serde_json::to_value(runtime.block_on(route::run(config, progress))?)?
        }
        BenchCommand::Join(_) => {
            let config = if quick {
                join::JoinBenchConfig::quick()
            } else {
                join::JoinBenchConfig::default()
            };
            serde_json::to_value(runtime.block_on(join::run(config, progress))?)?
        }
        BenchCommand::Memory(_) => {
            let config = if quick {
                memory::MemoryBenchConfig::quick()
            } else {
                memory::MemoryBenchConfig::default()
            };
            serde_json::to_value(runtime.block_on(memory::run(config, progress))?)?
        }
        BenchCommand::Idle(args) => {
            let mut config = if quick {
                idle::IdleBenchConfig::quick()
            } else {
                idle::IdleBenchConfig::default()
            };
            if let Some(window_s) = args.window_s {
                if !(window_s > 0.0 && window_s.is_finite()) {
                    return Err(
                        format!("--window-s must be a positive number, got {window_s}").into(),
                    );
                }
                let window = std::time::Duration::from_secs_f64(window_s);
                config = if quick {
                    idle::IdleBenchConfig {
                        window,
                        ..idle::IdleBenchConfig::quick()
                    }
                } else {
                    idle::IdleBenchConfig::with_window(window)
                };
            }
            if args.in_private_netns {
                // A new network namespace has only `lo`, and it is down.
                let up = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .map_err(|e| format!("cannot run `ip link set lo up`: {e}"))?;
                if !up.success() {
                    return Err(
                        "`ip link set lo up` failed in the private network namespace".into(),
                    );
                }
                config.private_netns = true;
            }
            serde_json::to_value(runtime.block_on(idle::run(config, progress))?)?
        }
        BenchCommand::Regions(_) => {
            let config = if quick {
                regions::RegionsBenchConfig::quick()
            } else {
                regions::RegionsBenchConfig::default()
            };
            serde_json::to_value(runtime.block_on(regions::run(config, progress))?)?
        }
        BenchCommand::Sim(_) => {
            let config = if quick {
                sim::SimBenchConfig::quick()
            } else {
                sim::SimBenchConfig::default()
            };
            serde_json::to_value(sim::run(config, progress))?
        }
        BenchCommand::All(_) => return Err("`all` is not a single suite".into()),
    })
}

/// Re-runs `wendy bench idle` under `unshare --net` (a private network namespace, so the
/// kernel's UDP counters count these nodes only). `None` when that is not possible here (not
/// root, no `unshare`): the caller then counts with QUIC statistics in this process.
fn idle_in_private_netns(args: &SuiteArgs, window_s: Option<f64>) -> Option<crate::CmdResult> {
    let possible = Command::new("unshare")
        .args(["--net", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !possible {
        progress("idle: no private network namespace here (needs root and unshare): counting with QUIC statistics");
        return None;
    }
    let run = || -> crate::CmdResult {
        let exe = std::env::current_exe()?;
        let mut command = Command::new("unshare");
        command
            .arg("--net")
            .arg("--")
            .arg(exe)
            .args(["bench", "idle", "--in-private-netns"]);
        if args.json {
            command.arg("--json");
        }
        if args.quick {
            command.arg("--quick");
        }
        if let Some(window_s) = window_s {
            command.args(["--window-s", &window_s.to_string()]);
        }
        let status = command.status()?;
        if status.success() {
            Ok(())
        } else {
            Err(
                format!("the idle suite in a private network namespace exited with {status}")
                    .into(),
            )
        }
    };
    Some(run())
}

/// The suites whose figures are speeds: run one at a time, with nothing beside them.
const TIMED: [&str; 4] = ["link", "route", "join", "regions"];

/// The suites whose figures are counts (resident memory of their own process, datagrams and
/// bytes per node): they run beside the simulator, whose busy core changes none of them, so
/// that `bench all` fits in a quarter of an hour. The simulator's figures are deterministic.
const BESIDE_SIM: [&str; 2] = ["memory", "idle"];

/// Starts `suite` as a child process of this executable, its JSON on a pipe.
fn start_suite(exe: &std::path::Path, suite: &str, quick: bool) -> std::io::Result<Child> {
    let mut command = Command::new(exe);
    command.args(["bench", suite, "--json"]);
    if quick {
        command.arg("--quick");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

/// Waits for a suite started at `started` and files its report (or its failure).
fn finish_suite(
    suite: &'static str,
    child: Child,
    started: Instant,
    reports: &mut Map<String, Value>,
    failed: &mut Vec<&'static str>,
) -> std::io::Result<()> {
    let output = child.wait_with_output()?;
    let seconds = started.elapsed().as_secs_f64();
    let parsed = if output.status.success() {
        serde_json::from_slice::<Value>(&output.stdout).map_err(|e| e.to_string())
    } else {
        Err(format!("exited with {}", output.status))
    };
    match parsed {
        Ok(mut report) => {
            if let Some(object) = report.as_object_mut() {
                object.insert("suite_seconds".into(), json!(seconds));
            }
            reports.insert(suite.into(), report);
        }
        Err(error) => {
            failed.push(suite);
            reports.insert(suite.into(), json!({ "error": error }));
        }
    }
    Ok(())
}

/// Runs every suite as a child process of this executable and gathers their JSON: the timed
/// suites one by one, then the simulator with the counting suites one by one beside it.
fn run_all(args: &SuiteArgs) -> crate::CmdResult {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut reports = Map::new();
    let mut failed = Vec::new();
    for suite in TIMED {
        progress(&format!("== {suite}"));
        let suite_started = Instant::now();
        let child = start_suite(&exe, suite, args.quick)?;
        finish_suite(suite, child, suite_started, &mut reports, &mut failed)?;
    }
    progress("== sim (beside memory and idle)");
    let sim_started = Instant::now();
    let sim = start_suite(&exe, "sim", args.quick)?;
    for suite in BESIDE_SIM {
        progress(&format!("== {suite}"));
        let suite_started = Instant::now();
        let child = start_suite(&exe, suite, args.quick)?;
        finish_suite(suite, child, suite_started, &mut reports, &mut failed)?;
    }
    finish_suite("sim", sim, sim_started, &mut reports, &mut failed)?;
    progress(&format!(
        "== all suites in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let all = Value::Object(reports);
    if args.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        for suite in SUITES {
            print_suite(suite, &all[suite]);
            println!();
        }
        print_goals(&all, args.quick);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "suites failed: {} (their progress above says why)",
            failed.join(", ")
        )
        .into())
    }
}

/// A number from a report, NaN when missing.
fn num(report: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(report, |value, key| value.get(*key))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn print_suite(suite: &str, r: &Value) {
    if let Some(error) = r.get("error").and_then(Value::as_str) {
        println!("{suite}: FAILED ({error})");
        return;
    }
    match suite {
        "link" => {
            println!(
                "link: {} one-way messages of {} bytes over one link, best of {} rounds",
                r["messages"], r["size"], r["rounds"]
            );
            println!("  {:<22} {:>12} {:>14}", "", "seconds", "msgs/s");
            println!(
                "  {:<22} {:>12.3} {:>14.0}",
                "wendy",
                num(r, &["ours_seconds"]),
                num(r, &["ours_msgs_per_s"])
            );
            println!(
                "  {:<22} {:>12.3} {:>14.0}",
                "raw quinn",
                num(r, &["raw_quinn_seconds"]),
                num(r, &["raw_quinn_msgs_per_s"])
            );
            println!(
                "  ratio (wendy / raw quinn): {:.3} (best rounds), {:.3} (median round)",
                num(r, &["ratio"]),
                num(r, &["ratio_median"])
            );
            if let Some(cpu_ratio) = r["cpu_ratio"].as_f64() {
                println!("  cpu efficiency (raw quinn cpu / wendy cpu): {cpu_ratio:.3}");
            }
        }
        "route" => {
            println!(
                "route: {} nodes on loopback, {}-byte messages, latency in ms",
                r["nodes"], r["size"]
            );
            println!("  {:<34} {:>8} {:>8} {:>8}", "", "p50", "p99", "samples");
            let rows = [
                ("raw quinn request/response", "raw_quinn_request_response"),
                ("raw quinn one-way", "raw_quinn_one_way"),
                ("raw quinn one-way, detached", "raw_quinn_one_way_detached"),
                ("wendy 1 hop (route -> deliver)", "one_hop"),
                ("wendy 1 hop, attached", "one_hop_attached"),
                ("wendy 1 hop request/response", "one_hop_request_response"),
                ("wendy 3+ hops (random keys)", "three_hop"),
            ];
            for (label, key) in rows {
                println!(
                    "  {label:<34} {:>8.3} {:>8.3} {:>8}",
                    num(r, &[key, "p50_ms"]),
                    num(r, &[key, "p99_ms"]),
                    r[key]["samples"]
                );
            }
            if let Some(by_hops) = r["by_hops"].as_object() {
                for (hops, latency) in by_hops {
                    println!(
                        "  {:<34} {:>8.3} {:>8.3} {:>8}",
                        format!("wendy {hops} hops (random keys)"),
                        num(latency, &["p50_ms"]),
                        num(latency, &["p99_ms"]),
                        latency["samples"]
                    );
                }
            }
            println!(
                "  one_hop_p50_ratio (wendy 1 hop / raw quinn request/response): {:.3}",
                num(r, &["one_hop_p50_ratio"])
            );
            println!(
                "  wendy 1 hop / raw quinn one-way: {:.3} attached, {:.3} detached ({:.3} mixed); wendy request/response / raw quinn: {:.3}",
                num(r, &["one_hop_one_way_p50_ratio"]),
                num(r, &["one_hop_one_way_detached_p50_ratio"]),
                num(r, &["one_hop_one_way_mixed_p50_ratio"]),
                num(r, &["one_hop_request_response_p50_ratio"])
            );
            println!(
                "  routed throughput: {:.0} msgs/s per node ({:.0} msgs/s in all)",
                num(r, &["routed_msgs_per_s_per_node"]),
                num(r, &["routed_msgs_per_s"])
            );
            if let Some(cpu) = r["cpu_ms_per_routed_msg"].as_f64() {
                println!("  process CPU per routed message: {cpu:.3} ms");
            }
            let mesh = &r["raw_quinn_mesh"];
            let cpu = |key: &str| {
                mesh[key]
                    .as_f64()
                    .map_or_else(|| "-".to_string(), |cpu| format!("{cpu:.3}"))
            };
            println!(
                "  raw quinn mesh ({} endpoints, {} links): {:.0} msgs/s one-way ({} ms CPU each), \
                 {:.0} with a receipt each ({} ms CPU); routed hops reached {:.3} of it",
                mesh["endpoints"],
                mesh["links"],
                num(mesh, &["msgs_per_s"]),
                cpu("cpu_ms_per_msg"),
                num(mesh, &["with_receipt_msgs_per_s"]),
                cpu("with_receipt_cpu_ms_per_msg"),
                num(r, &["routed_hops_vs_raw_mesh"])
            );
            println!(
                "  origin authentication, us: sign {:.1}, check {:.1} (new origin {:.1}), \
                 digest {:.2}; {:.2} checks per routed message",
                num(r, &["auth", "sign_us"]),
                num(r, &["auth", "verify_us"]),
                num(r, &["auth", "verify_new_origin_us"]),
                num(r, &["auth", "digest_us"]),
                num(r, &["auth", "checks_per_routed_msg"])
            );
        }
        "join" => {
            println!(
                "join: a fresh node joins a settled cluster ({} samples each), ms",
                r["samples"]
            );
            println!(
                "  into {:>4} nodes: p50 {:8.1}, max {:8.1}",
                r["nodes_small"],
                num(r, &["join_ms_p50_n32"]),
                num(r, &["join_ms_max_n32"])
            );
            println!(
                "  into {:>4} nodes: p50 {:8.1}, max {:8.1}",
                r["nodes_large"],
                num(r, &["join_ms_p50_n100"]),
                num(r, &["join_ms_max_n100"])
            );
            println!(
                "  while building: p50 {:.1}; settled {:.1} after the build",
                num(r, &["build_join_ms_p50"]),
                num(r, &["settle_ms_after_build"])
            );
        }
        "memory" => {
            println!("memory: {} idle nodes in one process (VmRSS)", r["nodes"]);
            println!(
                "  before {:.1} MiB, after {:.1} MiB: {:.3} MiB per node ({:.3} before joining)",
                num(r, &["rss_mib_before"]),
                num(r, &["rss_mib_after"]),
                num(r, &["rss_mib_per_node"]),
                num(r, &["rss_mib_per_node_unjoined"])
            );
            if let Some(trimmed) = r["rss_mib_per_node_after_trim"].as_f64() {
                println!(
                    "  after glibc malloc_trim: {trimmed:.3} MiB per node (the rest is memory freed after the join that glibc keeps)"
                );
            }
            println!(
                "  {:.1} links per node at the end; one connection: {:.1} KiB (measured over {} connection states)",
                num(r, &["connections_per_node"]),
                num(r, &["rss_kib_per_connection"]),
                r["connections_measured"]
            );
        }
        "idle" => {
            println!(
                "idle: {} idle nodes, {:.0} s window, per node per second",
                r["nodes"],
                num(r, &["window_s"])
            );
            println!(
                "  UDP datagrams sent: {:.3} (MSPastry: {})",
                num(r, &["control_msgs_per_node_per_s"]),
                r["mspastry_msgs_per_node_per_s"]
            );
            println!(
                "  bytes on the wire:  {:.1} (Bamboo: {})",
                num(r, &["control_bytes_per_node_per_s"]),
                r["bamboo_bytes_per_node_per_s"]
            );
            println!(
                "  counted by: {} (QUIC statistics of pooled links: {:.3} datagrams, {:.1} bytes)",
                r["counted_by"].as_str().unwrap_or("?"),
                num(r, &["quic_datagrams_per_node_per_s"]),
                num(r, &["quic_bytes_per_node_per_s"])
            );
            println!(
                "  overlay control messages: {:.3}; {:.1} links per node, {:.2} opened per node",
                num(r, &["overlay_msgs_per_node_per_s"]),
                num(r, &["links_per_node"]),
                num(r, &["links_opened_per_node"])
            );
            if let Some(cpu) = r["cpu_ms_per_node_per_s"].as_f64() {
                println!("  process CPU: {cpu:.3} ms per node per s");
            }
        }
        "regions" => print_regions(r),
        "sim" => {
            println!(
                "sim: {} nodes, {} lookups ({} correct)",
                r["nodes"], r["lookups"], r["delivered_correct"]
            );
            println!(
                "  hops mean {:.3} (paper 3.98), max {} (paper 5); stretch mean {:.3} (paper 1.3), median {:.3}",
                num(r, &["mean_hops"]),
                r["max_hops"],
                num(r, &["stretch_mean"]),
                num(r, &["stretch_median"])
            );
            println!(
                "  wall {:.1} s, peak RSS {:.0} MiB",
                num(r, &["wall_seconds"]),
                num(r, &["peak_rss_mib"])
            );
        }
        _ => println!("{suite}: {r}"),
    }
}

fn print_regions(r: &Value) {
    println!(
        "regions: {} nodes in {} emulated regions (RTT ms {}), {} keys, {} repeats, {}-byte messages",
        r["nodes"], r["regions"], r["region_rtt_ms"], r["keys"], r["repeats"], r["size"]
    );
    println!(
        "  settled: leaf sets {:.0} ms, routing tables {:.0} ms ({}); {} of {} table entries in the holder's region",
        num(r, &["leaf_sets_settled_ms"]),
        num(r, &["tables_settled_ms"]),
        if r["tables_stable"].as_bool() == Some(true) {
            "stable"
        } else {
            "still changing at the bound"
        },
        r["table_entries_same_region"],
        r["table_entries"]
    );
    println!(
        "  loopback floor (direct message over a link, minus its emulated delay): {:.3} ms ({} samples)",
        num(r, &["loopback_floor_ms"]),
        r["loopback_floor_samples"]
    );
    println!("  direct = {}", r["direct_is"].as_str().unwrap_or("?"));
    println!(
        "  {:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6}",
        "",
        "routes",
        "mean",
        "median",
        "p95",
        "r.o.m.",
        "+floor",
        "path",
        "lat ms",
        "dir ms",
        "hops"
    );
    for (label, key) in [("first", "stretch_first"), ("repeat", "stretch_repeat")] {
        let s = &r[key];
        println!(
            "  {label:<8} {:>7} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.2} {:>8.2} {:>6.2}",
            // A JSON value's Display ignores the width: print the number.
            s["samples"].as_u64().unwrap_or_default(),
            num(s, &["mean"]),
            num(s, &["median"]),
            num(s, &["p95"]),
            num(s, &["ratio_of_means"]),
            num(s, &["ratio_of_means_with_floor"]),
            num(s, &["path_ratio_of_means"]),
            num(s, &["latency_mean_ms"]),
            num(s, &["direct_mean_ms"]),
            num(s, &["mean_hops"])
        );
    }
    println!(
        "  (mean/median/p95: per-route ratios; r.o.m.: ratio of means; +floor: ratio of means with \
         the loopback floor added to direct; path: emulated delay along the hops taken / direct)"
    );
    for (label, key) in [("first", "stretch_first"), ("repeat", "stretch_repeat")] {
        let s = &r[key];
        println!(
            "  {label}: measured - emulated path delay p50 {:.3} ms, p95 {:.3} ms, max {:.3} ms; \
             hops {}; {} paths not recorded whole",
            num(s, &["excess_p50_ms"]),
            num(s, &["excess_p95_ms"]),
            num(s, &["excess_max_ms"]),
            s["by_hops"],
            s["incomplete_paths"]
        );
    }
    for (label, key) in [("first", "stretch_first"), ("repeat", "stretch_repeat")] {
        let s = &r[key];
        println!(
            "  {label}: {} routes dialled a hop first (excess p50 {:.1} ms); the others: ratio of \
             means {:.3}, {:.3} with the floor",
            s["first_contact_routes"],
            num(s, &["first_contact_excess_p50_ms"]),
            num(s, &["ratio_of_means_over_links"]),
            num(s, &["ratio_of_means_over_links_with_floor"])
        );
    }
    println!(
        "  {} of {} routes delivered at the true root; route cache: {} hits, {} stale",
        r["delivered_at_root"], r["routes"], r["route_cache_hits"], r["route_cache_stale"]
    );
}

/// The design's performance goals (DESIGN.md's anchors), each with the measured figure.
fn print_goals(all: &Value, quick: bool) {
    let goals: [(&str, &str, f64, &str, bool); 11] = {
        let link = num(all, &["link", "ratio"]);
        let route = num(all, &["route", "one_hop_p50_ratio"]);
        let join = num(all, &["join", "join_ms_p50_n100"]);
        let memory = num(all, &["memory", "rss_mib_per_node"]);
        let msgs = num(all, &["idle", "control_msgs_per_node_per_s"]);
        let bytes = num(all, &["idle", "control_bytes_per_node_per_s"]);
        let hops = num(all, &["sim", "mean_hops"]);
        let max_hops = num(all, &["sim", "max_hops"]);
        let stretch = num(all, &["sim", "stretch_mean"]);
        let first = num(all, &["regions", "stretch_first", "ratio_of_means"]);
        let repeat = num(all, &["regions", "stretch_repeat", "ratio_of_means"]);
        [
            ("link", "ratio", link, ">= 0.8", link >= 0.8),
            ("route", "one_hop_p50_ratio", route, "<= 1.2", route <= 1.2),
            ("join", "join_ms_p50_n100", join, "< 1000", join < 1000.0),
            ("memory", "rss_mib_per_node", memory, "<= 2", memory <= 2.0),
            (
                "idle",
                "control_msgs_per_node_per_s",
                msgs,
                "< 0.5",
                msgs < 0.5,
            ),
            (
                "idle",
                "control_bytes_per_node_per_s",
                bytes,
                "< 900",
                bytes < 900.0,
            ),
            ("sim", "mean_hops", hops, "<= 3.98", hops <= 3.98),
            ("sim", "max_hops", max_hops, "<= 5", max_hops <= 5.0),
            (
                "regions",
                "stretch_first.ratio_of_means",
                first,
                "<= 1.3",
                first <= 1.3,
            ),
            (
                "regions",
                "stretch_repeat.ratio_of_means",
                repeat,
                "<= 1.05",
                repeat <= 1.05,
            ),
            ("sim", "stretch_mean", stretch, "<= 1.3", stretch <= 1.3),
        ]
    };
    if quick {
        println!("goals (--quick uses small sizes, so these are NOT the real figures):");
    } else {
        println!("goals:");
    }
    for (suite, field, value, goal, met) in goals {
        println!(
            "  {suite:<7} {field:<30} {value:>10.3}  goal {goal:<8} {}",
            if met { "met" } else { "MISSED" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{BESIDE_SIM, SUITES, TIMED};

    #[test]
    fn all_runs_every_suite_exactly_once() {
        let mut run: Vec<&str> = TIMED.iter().chain(&BESIDE_SIM).copied().collect();
        run.push("sim");
        run.sort_unstable();
        let mut every = SUITES.to_vec();
        every.sort_unstable();
        assert_eq!(run, every);
    }
}
