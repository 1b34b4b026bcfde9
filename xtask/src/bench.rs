//! `cargo xtask bench`: connection churn on loopback with no tracer, libbpf-tools' `tcpstates`,
//! and connwatch on raw and on classic tracepoints, interleaved round-robin in one run.
//! See docs/benchmarks.md for what is measured and how.

mod bpf_stats;
mod churn;
mod config;
mod procfs;
mod report;
mod tracer;

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use self::{
    churn::Churn,
    config::{Config, Tools},
    report::{Host, Report, RoundResult, Settings},
    tracer::{Poker, Tracer},
};
use crate::{prereqs, run::workspace_root};

const TCPSTATES: &str = "/usr/sbin/tcpstates";

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds of churn per configuration and round.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    seconds: f64,
    /// Rounds; each runs every configuration once, in a rotating order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Churn connector threads (cw-churn --connectors).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    connectors: u32,
    /// Churn client source addresses (cw-churn --source-addresses).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=249))]
    source_addresses: u32,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=120.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds between 1 and 120")),
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask bench needs root: it loads eBPF programs (connwatch, tcpstates) and reads their stats"
        );
    }
    prereqs::ensure_packages(&["libbpf-tools"])?;
    if !Path::new(TCPSTATES).is_file() {
        bail!("{TCPSTATES} is missing although libbpf-tools is installed; reinstall libbpf-tools");
    }
    let tools = Tools { connwatch: crate::run::build_release()?, tcpstates: TCPSTATES.into() };
    let churn = Churn::build(args.connectors, args.source_addresses)?;

    let settings = Settings {
        seconds: args.seconds,
        rounds: args.rounds,
        connectors: args.connectors,
        source_addresses: args.source_addresses,
        server_port: churn.port,
    };
    let estimate = f64::from(args.rounds) * (args.seconds * Config::ALL.len() as f64 + 8.0);
    eprintln!(
        "bench: {} rounds x {} configurations x {} s of churn (about {:.0} s)",
        args.rounds,
        Config::ALL.len(),
        args.seconds,
        estimate
    );

    // Program run time is counted only while stats are enabled (see bpf_stats).
    let _stats = bpf_stats::enable()?;
    let poker = Poker::start()?;
    let host = Host::current()?;

    // Warm-up, not recorded: first-run effects (page cache, TIME_WAIT table, CPU frequency).
    churn.run(args.seconds.min(3.0))?;

    let mut rounds = Vec::new();
    for round in 0..args.rounds as usize {
        // Rotate the order so that no configuration always follows the same one.
        for index in 0..Config::ALL.len() {
            let config = Config::ALL[(round + index) % Config::ALL.len()];
            let result = measure(config, round, &tools, &churn, args.seconds, &poker)
                .with_context(|| format!("round {}, {}", round + 1, config.label()))?;
            let ready = result.tracer.as_ref().map_or(String::new(), |t| {
                format!(" (tracer ready after {:.1} s)", t.ready_after_s)
            });
            eprintln!(
                "bench: round {}/{} {:<30} {:>9.0} conn/s{ready}",
                round + 1,
                args.rounds,
                config.label(),
                result.churn.per_second
            );
            rounds.push(result);
        }
    }

    let report = Report::new(settings, host, command_line(), utc_now()?, &tools, rounds);
    println!("{}", report.markdown());
    let path = workspace_root().join("target/bench/report.json");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: raw numbers in {}", path.display());
    Ok(())
}

/// One configuration for one round: start the tracer (if any) and wait until it traces, churn,
/// sample the tracer, stop it.
fn measure(
    config: Config,
    round: usize,
    tools: &Tools,
    churn: &Churn,
    seconds: f64,
    poker: &Poker,
) -> anyhow::Result<RoundResult> {
    let Some(command) = config.tracer_command(tools) else {
        return Ok(RoundResult { round, config, churn: churn.run(seconds)?, tracer: None });
    };
    let tracer = Tracer::start(config.label(), command, poker)?;
    let window = tracer.begin_window()?;
    let churn_result = churn.run(seconds)?;
    let sample = tracer.finish(window)?;
    if config.is_connwatch() {
        tracer::check_connwatch_lines(&sample)?;
    }
    Ok(RoundResult { round, config, churn: churn_result, tracer: Some(sample) })
}

/// How this bench was invoked, as typed.
fn command_line() -> String {
    let args = std::env::args()
        .skip(1)
        .map(|a| if a.contains(char::is_whitespace) { format!("'{a}'") } else { a });
    std::iter::once("cargo xtask".to_owned()).chain(args).collect::<Vec<_>>().join(" ")
}

fn utc_now() -> anyhow::Result<String> {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
