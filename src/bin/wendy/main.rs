//! The `wendy` command-line tool.
//!
//! `main.rs` holds only the command enum and the dispatch; each command lives in its own file.
//! Every failure prints one line `error: ...` on stderr and exits non-zero.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bench;
mod ca;
mod demo;
mod keys;
mod node;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wendy::node::NodeConfig;

/// Wendy: a Pastry overlay where every link is a mutually authenticated QUIC connection.
#[derive(Debug, Parser)]
#[command(name = "wendy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

/// The error every command returns; printed as one line.
type CmdResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result: CmdResult = match cli.command {
        Command::Keygen(args) => keys::keygen(args),
        Command::Id(args) => keys::id(args),
        Command::Ca(cmd) => ca::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Sim(args) => sim::run(args),
        Command::Node(args) => node::run(args),
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

/// Logs go to stderr, filtered by `RUST_LOG` (default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
