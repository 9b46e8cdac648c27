//! `wendy bench ...`: benchmarks that compare Wendy with a baseline in the same run.

use clap::{Args, Subcommand};
use wendy::bench::link::{self, LinkBenchConfig, LinkBenchReport};

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// One-way message throughput between two nodes: Wendy transport vs raw quinn (one uni
    /// stream per message, one connection, same TLS setup).
    Link(LinkArgs),
}

/// Arguments of `wendy bench link`.
#[derive(Debug, Args)]
pub(crate) struct LinkArgs {
    /// Messages per round.
    #[arg(long, default_value_t = LinkBenchConfig::default().messages)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = LinkBenchConfig::default().size)]
    size: usize,
    /// Rounds of each side (the best round of each is reported).
    #[arg(long, default_value_t = LinkBenchConfig::default().rounds)]
    rounds: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: BenchCommand) -> crate::CmdResult {
    match command {
        BenchCommand::Link(args) => run_link(args),
    }
}

fn run_link(args: LinkArgs) -> crate::CmdResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(link::run(LinkBenchConfig {
        messages: args.messages,
        size: args.size,
        rounds: args.rounds,
    }))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &LinkBenchReport) {
    println!(
        "link benchmark: {} one-way messages of {} bytes, best of {} rounds",
        report.messages, report.size, report.rounds
    );
    println!("{:<12} {:>12} {:>14}", "transport", "seconds", "msgs/s");
    println!(
        "{:<12} {:>12.3} {:>14.0}",
        "wendy", report.ours_seconds, report.ours_msgs_per_s
    );
    println!(
        "{:<12} {:>12.3} {:>14.0}",
        "raw quinn", report.raw_quinn_seconds, report.raw_quinn_msgs_per_s
    );
    println!(
        "ratio (wendy / raw quinn): {:.3} (best rounds), {:.3} (median round)",
        report.ratio, report.ratio_median
    );
    if let Some(cpu_ratio) = report.cpu_ratio {
        println!("cpu efficiency (raw quinn cpu / wendy cpu): {cpu_ratio:.3}");
    }
}
