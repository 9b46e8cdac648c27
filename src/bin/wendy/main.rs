//! The `wendy` command-line tool.
//!
//! `main.rs` holds only the command enum and the dispatch; each command lives in its own file.
//! Every failure prints one line `error: ...` on stderr and exits non-zero.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod bench;
mod ca;
mod cert;
mod demo;
mod keys;
mod node;
mod sim;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wendy::node::NodeConfig;

/// Wendy: a Pastry overlay where every link is a mutually authenticated QUIC connection.
#[derive(Debug, Parser)]
#[command(name = "wendy", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    logging: LogArgs,
}

/// Log options, valid before or after the command (`wendy -v node ...`, `wendy node -v ...`).
#[derive(Debug, clap::Args)]
struct LogArgs {
    /// Log more: -v info, -vv debug, -vvv trace (default: warnings and errors). RUST_LOG, when
    /// set, overrides this (e.g. RUST_LOG=wendy=debug,quinn=warn).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    verbose: u8,
    /// Log less: -q errors only, -qq nothing (`wendy sim -q` also leaves out its progress).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    /// Log line format on stderr: `text` or `json` (one object per line).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald, Loki, Elasticsearch).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a node key (PKCS#8 PEM, mode 0600) and print its NodeId.
    Keygen(keys::KeygenArgs),
    /// Print the NodeId of a key file.
    Id(keys::IdArgs),
    /// Run a local cluster over QUIC on loopback, route messages and check every delivery.
    Demo(demo::DemoArgs),
    /// Manage a mesh certificate authority (closed meshes).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Benchmarks (Wendy vs a baseline, in one run).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulate a Pastry overlay deterministically (no sockets): hops, stretch, failures, churn.
    Sim(sim::SimArgs),
    /// Run one node: join an overlay, take commands on stdin, print events on stdout.
    Node(node::NodeArgs),
    /// Show a running node's peers, links and services (from its `--admin` endpoint).
    Status(status::StatusArgs),
    /// Inspect certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Print a shell completion script: `wendy completions bash > /etc/bash_completion.d/wendy`
    /// (zsh: into a directory of $fpath as `_wendy`; fish: ~/.config/fish/completions/wendy.fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The error every command returns; printed as one line.
type CmdResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(&cli.logging);
    let result: CmdResult = match cli.command {
        Command::Keygen(args) => keys::keygen(args),
        Command::Id(args) => keys::id(args),
        Command::Ca(cmd) => ca::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Sim(args) => sim::run(args, cli.logging.quiet > 0),
        Command::Node(args) => node::run(args),
        Command::Status(args) => status::run(args),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "wendy", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The settings every node this program starts begins with: the library's defaults, plus the
/// process-wide choices a library leaves to its program. `wendy` runs nodes and nothing else,
/// so it gives the heap freed by closed links back to the operating system
/// (`Limits::release_freed_memory`, off in the library).
fn node_config() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.limits.release_freed_memory = true;
    config
}

/// Logs go to stderr at the level of `-v` / `-q` (default `warn`), or as `RUST_LOG` says when
/// it is set.
fn init_logging(args: &LogArgs) {
    let level = match (args.verbose, args.quiet) {
        (0, 0) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        (v, _) if v >= 3 => "trace",
        (_, 1) => "error",
        _ => "off",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Prints help/version as clap does, and a usage error as a single line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect();
    eprintln!("{} (see --help)", message.join(" "));
    ExitCode::from(2)
}

/// Caps glibc's malloc arenas at two. By default glibc gives busy threads arenas of their own,
/// up to eight per core; each keeps its freed memory, so a burst handled by several tokio
/// workers (one peer's unfinished streams, a handshake flood) leaves the node's resident size
/// well above what the read budgets bound. A node's allocations are small and short-lived, so
/// two arenas cost little contention. Without glibc it does nothing.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two plain integers and changes only the allocator's own settings;
    // it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
