//! `wendy sim`: run the deterministic simulator and print its report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use wendy::sim::{
    topic_figure, KeyPopularity, ModelSpec, Phase, Progress, RttMatrix, Scenario, SimConfig,
    Simulation, TopicFigureConfig,
};

/// Latency models built into the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Model {
    /// Nodes at random points of a plane; delay = distance (the Pastry paper's model).
    Plane,
    /// A few clustered regions: small delays inside a region, large ones between regions.
    Regions,
}

/// Options of `wendy sim`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Nodes in the overlay (initial population under churn).
    #[arg(long)]
    nodes: usize,
    /// Lookups to route to random keys from random live nodes.
    #[arg(long)]
    lookups: usize,
    /// Seed of every random choice: the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency model.
    #[arg(long, value_enum, default_value_t = Model::Plane, conflicts_with = "latency_matrix")]
    model: Model,
    /// Square matrix of measured RTTs in ms (whitespace-separated, one row per line); each node
    /// sits at one of its sites at random.
    #[arg(long, value_name = "FILE")]
    latency_matrix: Option<PathBuf>,
    /// Fraction of nodes that fail silently at once after the overlay is built.
    #[arg(long, value_name = "F", conflicts_with = "churn_median_s")]
    fail_fraction: Option<f64>,
    /// Churn: median session time in seconds (exponential sessions, Poisson arrivals).
    #[arg(long, value_name = "T", requires = "duration_s")]
    churn_median_s: Option<f64>,
    /// Churn: how long churn lasts, in seconds of virtual time.
    #[arg(long, value_name = "D", requires = "churn_median_s")]
    duration_s: Option<f64>,
    /// Print one JSON object instead of the readable summary.
    #[arg(long)]
    json: bool,
    /// Ignore proximity when filling routing tables (to see what proximity buys).
    #[arg(long)]
    no_proximity: bool,
    /// Leaf-set size L (L/2 each side).
    #[arg(long, default_value_t = 16)]
    leaf_set_size: usize,
    /// Multiply every message delay by 1 + U(0, JITTER).
    #[arg(long, default_value_t = 0.0)]
    jitter: f64,
    /// Probability that a message is lost (after the build).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// A joining node bootstraps through the nearest active node (0) or the nearest of this
    /// many random active nodes.
    #[arg(long, default_value_t = SimConfig::default().bootstrap_sample)]
    bootstrap_sample: usize,
    /// Build the overlay with real model delays (maintenance runs during the build; slower).
    #[arg(long)]
    realtime_build: bool,
    /// Virtual seconds between the build and the first lookup.
    #[arg(long, default_value_t = SimConfig::default().warmup_s)]
    warmup_s: f64,
    /// Virtual seconds over which lookups are spread (the control-traffic window).
    #[arg(long, default_value_t = SimConfig::default().lookup_window_s)]
    lookup_window_s: f64,
    /// Failure scenario: virtual seconds between the failure and the "after" lookups.
    #[arg(long, default_value_t = SimConfig::default().repair_window_s)]
    repair_window_s: f64,
    /// Record lookup paths: show up to 10 routes longer than ceil(log16 N) hops, up to 10 lost
    /// lookups, and routing-table diagnostics.
    #[arg(long)]
    trace_routes: bool,
    /// Diagnostics: after the build, replace every routing-table entry of rows 1 and deeper by
    /// the nearest node that qualifies (perfect proximity), to see what better tables buy.
    #[arg(long)]
    oracle_tables: bool,
    /// Which keys the lookups go to: a fresh random key each (uniform), or `--keys` random
    /// keys drawn by Zipf's law with exponent `--zipf-s`.
    #[arg(long, value_enum, default_value_t = Popularity::Uniform)]
    key_popularity: Popularity,
    /// Zipf popularity: how many distinct keys.
    #[arg(long, value_name = "K", default_value_t = 1000)]
    keys: usize,
    /// Zipf popularity: the exponent s (rank r drawn with probability proportional to 1/r^s).
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    zipf_s: f64,
    /// Topics figure instead of lookups: this many subscribers of one topic, its tree built
    /// and fed by the topics code over the nodes' Pastry routing.
    #[arg(long, value_name = "N")]
    topic_subscribers: Option<usize>,
    /// Topics figure: messages the publisher sends.
    #[arg(long, value_name = "M", default_value_t = 10)]
    topic_messages: usize,
}

/// How the lookups' keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Popularity {
    /// A fresh random key for every lookup.
    Uniform,
    /// `--keys` random keys, by Zipf's law.
    Zipf,
}

impl SimArgs {
    fn config(&self) -> Result<SimConfig, Box<dyn std::error::Error>> {
        let model = match &self.latency_matrix {
            Some(path) => ModelSpec::Matrix(RttMatrix::from_file(path)?),
            None => match self.model {
                Model::Plane => ModelSpec::Plane,
                Model::Regions => ModelSpec::Regions,
            },
        };
        let scenario = match (self.fail_fraction, self.churn_median_s, self.duration_s) {
            (Some(fraction), _, _) => {
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(format!("--fail-fraction must be in (0, 1), got {fraction}").into());
                }
                Scenario::Failure { fraction }
            }
            (None, Some(median_session_s), Some(duration_s)) => {
                if !(median_session_s > 0.0 && duration_s > 0.0) {
                    return Err("--churn-median-s and --duration-s must be positive".into());
                }
                Scenario::Churn {
                    median_session_s,
                    duration_s,
                }
            }
            _ => Scenario::Steady,
        };
        if self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.loss) || self.jitter < 0.0 {
            return Err("--loss must be in [0, 1) and --jitter non-negative".into());
        }
        let key_popularity = match self.key_popularity {
            Popularity::Uniform => KeyPopularity::Uniform,
            Popularity::Zipf => {
                if self.keys == 0 || !(self.zipf_s >= 0.0 && self.zipf_s.is_finite()) {
                    return Err(
                        "--keys must be at least 1 and --zipf-s a non-negative number".into(),
                    );
                }
                KeyPopularity::Zipf {
                    keys: self.keys,
                    s: self.zipf_s,
                }
            }
        };
        let mut config = SimConfig {
            key_popularity,
            nodes: self.nodes,
            lookups: self.lookups,
            seed: self.seed,
            model,
            scenario,
            jitter: self.jitter,
            loss: self.loss,
            bootstrap_sample: self.bootstrap_sample,
            realtime_build: self.realtime_build,
            warmup_s: self.warmup_s,
            lookup_window_s: self.lookup_window_s,
            repair_window_s: self.repair_window_s,
            trace_routes: self.trace_routes,
            oracle_tables: self.oracle_tables,
            ..SimConfig::default()
        };
        config.protocol.proximity = !self.no_proximity;
        config.protocol.leaf_set_size = self.leaf_set_size;
        Ok(config)
    }
}

/// Runs `wendy sim`; `quiet` (the global `-q` / `--quiet`) also leaves out the progress lines.
pub(crate) fn run(args: SimArgs, quiet: bool) -> crate::CmdResult {
    if let Some(subscribers) = args.topic_subscribers {
        let config = TopicFigureConfig {
            nodes: args.nodes,
            subscribers,
            messages: args.topic_messages,
            seed: args.seed,
        };
        let figure = topic_figure(&config, &mut |what| {
            if !quiet {
                eprintln!("{what}");
            }
        });
        if args.json {
            println!("{}", serde_json::to_string(&figure)?);
        } else {
            println!("{figure}");
        }
        return Ok(());
    }
    let config = args.config()?;
    let started = Instant::now();
    let mut last = started;
    let mut progress = |p: &Progress| {
        if quiet || last.elapsed() < Duration::from_secs(2) {
            return;
        }
        last = Instant::now();
        let phase = match p.phase {
            Phase::Build => "build",
            Phase::Scenario => "scenario",
        };
        eprintln!(
            "[{:6.1}s] {phase}: t={:.1}s virtual, {} nodes ({} live), {} lookups, {} events, {} queued",
            started.elapsed().as_secs_f64(),
            p.virtual_s,
            p.nodes_created,
            p.live_active,
            p.lookups_issued,
            p.events,
            p.queued
        );
    };
    let report = Simulation::new(config).run(&mut progress);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
