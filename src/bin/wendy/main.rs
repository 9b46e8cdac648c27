//! The `wendy` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod sim;

/// Wendy: a Pastry overlay network over mutually authenticated QUIC.
#[derive(Debug, Parser)]
#[command(name = "wendy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a Pastry overlay deterministically (no sockets): hops, stretch, failures, churn.
    Sim(sim::SimArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sim(args) => sim::run(args),
    }
}
