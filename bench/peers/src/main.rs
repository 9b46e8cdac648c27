//! `peers`: a 100-node Wendy cluster and a 100-node rust-libp2p cluster (Kademlia + identify
//! over QUIC, request-response for the message) measured on the same work, on loopback, in one
//! run: join time, lookup + delivery latency, messages and CPU per lookup, memory and idle
//! traffic per node, and whether each lookup reached the node truly closest to its key.
//!
//! Each system runs in a child process of its own, one after the other, so resident size and
//! CPU time are that system's alone. As root, each child also gets a network namespace of its
//! own (`unshare --net`), so the kernel's UDP and loopback counters count that system's
//! traffic and nothing else on the machine.
//!
//! ```text
//! cargo run --release --manifest-path bench/peers/Cargo.toml -- [--nodes 100] [--json]
//! ```
//! Method and recorded numbers: BENCHMARKS.md, "Side by side with the peers".

mod libp2p_side;
mod measure;
mod wendy_side;

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use measure::{Figures, RunConfig};

const USAGE: &str = "usage: peers [--nodes N] [--json] [--lookups N] [--joins N] [--idle-s S] \
                     [--warmup-s S] [--seed N] [--only wendy|libp2p] [--no-netns]";

/// The two systems, in the order they run.
const SYSTEMS: [&str; 2] = ["wendy", "libp2p"];

#[derive(Debug, Clone)]
struct Args {
    nodes: usize,
    json: bool,
    lookups: usize,
    joins: usize,
    idle_s: u64,
    warmup_s: u64,
    seed: u64,
    only: Option<String>,
    no_netns: bool,
    /// Internal: run one system's measurement and print its figures as JSON.
    child: Option<String>,
    /// Internal: the child is alone in its network namespace.
    own_netns: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            nodes: 100,
            json: false,
            lookups: 200,
            joins: 11,
            idle_s: 60,
            warmup_s: 10,
            seed: 1,
            only: None,
            no_netns: false,
            child: None,
            own_netns: false,
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match flag.as_str() {
            "--nodes" => args.nodes = number("--nodes", value("--nodes")?)? as usize,
            "--json" => args.json = true,
            "--lookups" => args.lookups = number("--lookups", value("--lookups")?)? as usize,
            "--joins" => args.joins = number("--joins", value("--joins")?)? as usize,
            "--idle-s" => args.idle_s = number("--idle-s", value("--idle-s")?)?,
            "--warmup-s" => args.warmup_s = number("--warmup-s", value("--warmup-s")?)?,
            "--seed" => args.seed = number("--seed", value("--seed")?)?,
            "--only" => args.only = Some(value("--only")?),
            "--no-netns" => args.no_netns = true,
            "--child" => args.child = Some(value("--child")?),
            "--own-netns" => args.own_netns = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    if args.idle_s == 0 {
        return Err("--idle-s must be at least 1".into());
    }
    if let Some(system) = args.only.as_ref().or(args.child.as_ref()) {
        if !SYSTEMS.contains(&system.as_str()) {
            return Err(format!("unknown system {system} (wendy or libp2p)"));
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match &args.child {
        Some(system) => run_child(system, &args),
        None => run_parent(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One system's measurement, in this process; prints its figures as one JSON line.
fn run_child(system: &str, args: &Args) -> Result<(), String> {
    if args.own_netns {
        // A new network namespace starts with its loopback interface down.
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map_err(|e| format!("ip link set lo up: {e}"))?;
        if !up.success() {
            return Err("ip link set lo up failed".into());
        }
    }
    let config = RunConfig {
        nodes: args.nodes,
        lookups: args.lookups,
        joins: args.joins,
        warmup: Duration::from_secs(args.warmup_s),
        idle_window: Duration::from_secs(args.idle_s),
        seed: args.seed,
        own_netns: args.own_netns,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let system = system.to_owned();
    // Both systems are measured from a runtime worker, never from the thread that blocks on
    // the runtime.
    let figures = runtime.block_on(async move {
        let task = tokio::spawn(async move {
            match system.as_str() {
                "wendy" => wendy_side::run(config).await,
                _ => libp2p_side::run(config).await,
            }
        });
        task.await.map_err(|e| format!("measurement task: {e}"))?
    })?;
    let mut figures = figures;
    if !args.own_netns {
        // The kernel's counters saw the whole machine's loopback traffic, not this run's.
        figures.idle_bytes_per_node_per_s = None;
        figures.detail.idle_datagrams_per_node_per_s = None;
        figures.detail.datagrams_per_lookup = None;
        figures.detail.bytes_per_lookup = None;
    }
    let line = serde_json::to_string(&figures).map_err(|e| format!("json: {e}"))?;
    println!("{line}");
    // The nodes' tasks may still hold sockets; the figures are out, so do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Whether `unshare --net` works here (root, and the tool is installed).
fn netns_available() -> bool {
    Command::new("unshare")
        .args(["--net", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Runs each system in a child process, one after the other, and reports them side by side.
fn run_parent(args: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let netns = !args.no_netns && netns_available();
    if !netns {
        eprintln!(
            "peers: no network namespace of its own (needs root and unshare): idle bytes and \
             datagram counts are left out"
        );
    }
    let load_before = load_average();
    let started = now_utc();
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for system in SYSTEMS {
        if args.only.as_deref().is_some_and(|only| only != system) {
            continue;
        }
        let mut child_args = vec![
            "--child".to_owned(),
            system.to_owned(),
            "--nodes".to_owned(),
            args.nodes.to_string(),
            "--lookups".to_owned(),
            args.lookups.to_string(),
            "--joins".to_owned(),
            args.joins.to_string(),
            "--idle-s".to_owned(),
            args.idle_s.to_string(),
            "--warmup-s".to_owned(),
            args.warmup_s.to_string(),
            "--seed".to_owned(),
            args.seed.to_string(),
        ];
        let mut command = if netns {
            child_args.push("--own-netns".to_owned());
            let mut command = Command::new("unshare");
            command.args(["--net", "--"]).arg(&exe);
            command
        } else {
            Command::new(&exe)
        };
        let output = command
            .args(&child_args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("starting the {system} run: {e}"))?;
        if !output.status.success() {
            return Err(format!("the {system} run failed ({})", output.status));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .ok_or(format!("the {system} run printed no figures"))?;
        let figures: Figures =
            serde_json::from_str(line).map_err(|e| format!("the {system} figures: {e}"))?;
        results.push((system, figures));
    }
    let load_after = load_average();
    let find = |name: &str| results.iter().find(|(s, _)| *s == name).map(|(_, f)| f);
    let (wendy, libp2p) = (find("wendy"), find("libp2p"));
    if args.json {
        let mut out = serde_json::Map::new();
        for (system, figures) in &results {
            out.insert(
                (*system).to_owned(),
                serde_json::to_value(figures).map_err(|e| format!("json: {e}"))?,
            );
        }
        if let (Some(w), Some(l)) = (wendy, libp2p) {
            let ratios: serde_json::Map<_, _> = rows(w, l)
                .into_iter()
                .map(|row| (row.name.to_owned(), json_number(row.ratio())))
                .collect();
            out.insert("ratios".into(), ratios.into());
        }
        out.insert("nodes".into(), args.nodes.into());
        out.insert("started_utc".into(), started.into());
        out.insert(
            "load_average".into(),
            serde_json::json!({ "before": load_before, "after": load_after }),
        );
        out.insert("own_netns".into(), netns.into());
        println!("{}", serde_json::Value::Object(out));
    } else {
        print_table(args, wendy, libp2p, &started, &load_before, &load_after);
    }
    Ok(())
}

/// One figure of both systems.
struct Row {
    name: &'static str,
    unit: &'static str,
    wendy: Option<f64>,
    libp2p: Option<f64>,
    higher_is_better: bool,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.wendy, self.libp2p) {
            (Some(w), Some(l)) if l != 0.0 => Some(w / l),
            _ => None,
        }
    }
}

fn rows(w: &Figures, l: &Figures) -> Vec<Row> {
    let row = |name, unit, f: fn(&Figures) -> Option<f64>, higher_is_better| Row {
        name,
        unit,
        wendy: f(w),
        libp2p: f(l),
        higher_is_better,
    };
    vec![
        row("join_ms_p50", "ms", |f| Some(f.join_ms_p50), false),
        row("lookup_ms_p50", "ms", |f| Some(f.lookup_ms_p50), false),
        row("lookup_ms_p99", "ms", |f| Some(f.lookup_ms_p99), false),
        row("msgs_per_lookup", "", |f| Some(f.msgs_per_lookup), false),
        row(
            "cpu_ms_per_lookup",
            "ms",
            |f| Some(f.cpu_ms_per_lookup),
            false,
        ),
        row(
            "rss_mib_per_node",
            "MiB",
            |f| Some(f.rss_mib_per_node),
            false,
        ),
        row(
            "idle_bytes_per_node_per_s",
            "B/s",
            |f| f.idle_bytes_per_node_per_s,
            false,
        ),
        row("correct_fraction", "", |f| Some(f.correct_fraction), true),
    ]
}

fn json_number(value: Option<f64>) -> serde_json::Value {
    value
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn print_table(
    args: &Args,
    wendy: Option<&Figures>,
    libp2p: Option<&Figures>,
    started: &str,
    load_before: &str,
    load_after: &str,
) {
    println!(
        "peers: {} nodes each, {} lookups, {} timed joins, idle window {} s (started {started}, \
         load average {load_before} -> {load_after})",
        args.nodes, args.lookups, args.joins, args.idle_s
    );
    let empty = Figures::default();
    let (w, l) = (wendy.unwrap_or(&empty), libp2p.unwrap_or(&empty));
    let cell = |present: bool, value: Option<f64>| match (present, value) {
        (true, Some(v)) => format!("{v:.3}"),
        _ => "-".to_owned(),
    };
    println!(
        "{:<32} {:>12} {:>12} {:>10}  ahead",
        "figure", "wendy", "libp2p", "w/l"
    );
    for row in rows(w, l) {
        let ratio = row.ratio().filter(|_| wendy.is_some() && libp2p.is_some());
        let ahead = match (wendy.and(row.wendy), libp2p.and(row.libp2p)) {
            (Some(a), Some(b)) if a == b => "even",
            (Some(a), Some(b)) if (a > b) == row.higher_is_better => "wendy",
            (Some(_), Some(_)) => "libp2p",
            _ => "",
        };
        let name = if row.unit.is_empty() {
            row.name.to_owned()
        } else {
            format!("{} ({})", row.name, row.unit)
        };
        println!(
            "{:<32} {:>12} {:>12} {:>10}  {ahead}",
            name,
            cell(wendy.is_some(), row.wendy),
            cell(libp2p.is_some(), row.libp2p),
            ratio.map_or("-".to_owned(), |r| format!("{r:.3}")),
        );
    }
    let detail = |name: &str, f: Option<&Figures>| {
        if let Some(f) = f {
            let d = &f.detail;
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
            println!(
                "{name}: build join p50 {:.1} ms, settle {:.0} ms, {:.2} {} per lookup, \
                 {} side msgs per lookup, {} datagrams and {} bytes per lookup, {} idle \
                 datagrams/node/s, {} of {} lookups failed, {} answered by their origin, {} of \
                 {} joins failed",
                d.build_join_ms_p50,
                d.settle_ms,
                d.hops_or_requests_per_lookup,
                if name == "wendy" {
                    "hops"
                } else {
                    "FIND_NODE requests"
                },
                format_args!("{:.2}", d.side_msgs_per_lookup),
                opt(d.datagrams_per_lookup),
                opt(d.bytes_per_lookup),
                opt(d.idle_datagrams_per_node_per_s),
                d.lookups_failed,
                d.lookups,
                d.lookups_local,
                d.joins_failed,
                d.joins,
            );
        }
    };
    detail("wendy", wendy);
    detail("libp2p", libp2p);
}

/// `/proc/loadavg`'s first three fields, or `?`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// The current UTC time, `YYYY-MM-DD HH:MM:SS`, from `date`.
fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}
