//! `cargo xtask bench`: connwatch's cost, measured side by side with no tracer (and with
//! libbpf-tools' `tcpstates` for churn), in one run:
//!
//! - churn: loopback connections opened and closed as fast as possible;
//! - io: small request/response round trips on established loopback connections;
//! - rss: connwatch watch's memory while it tracks 65,536 held sockets;
//! - parallel: 2 x cores churn processes under trace, watch and agent: socket identity, findings
//!   and loss.
//!
//! See docs/benchmarks.md for what is measured and how.

mod bpf_stats;
mod churn;
mod config;
mod generators;
mod io;
mod mechanisms;
mod parallel;
mod procfs;
mod report;
mod rounds;
mod rss;
mod servers;
mod soak;
mod syscalls;
mod tracer;

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use self::{
    churn::Churn,
    config::{Config, Tools},
    generators::Generators,
    io::Io,
    report::{ChurnSection, ChurnSettings, Host, IoSection, IoSettings, Report, RssSection},
    rounds::{Setup, round_robin},
    rss::Hold,
    tracer::Poker,
};
use crate::{prereqs, run::workspace_root};

const TCPSTATES: &str = "/usr/sbin/tcpstates";
/// Tracer start-up and shutdown per traced run, for the time estimate.
const TRACER_OVERHEAD_S: f64 = 2.5;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated (`soak` and `mechanisms` run only when named).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Workload::DEFAULT)]
    only: Vec<Workload>,
    /// Rounds of churn and of I/O; each runs every configuration once, in a rotating order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Seconds of churn per configuration and round.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    seconds: f64,
    /// Churn connector threads (cw-churn --connectors).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    connectors: u32,
    /// Churn client source addresses (cw-churn --source-addresses).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=249))]
    source_addresses: u32,
    /// Seconds of I/O per configuration and round.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    io_seconds: f64,
    /// I/O connections (cw-io --connections).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    io_connections: u32,
    /// I/O request and reply size in bytes (cw-io --message-bytes).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    message_bytes: u32,
    /// Rounds of the real-server workloads (each runs untraced, watch, agent and watch with BPF
    /// statistics once).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    server_rounds: u32,
    /// Seconds of wrk load per run, and of pgbench's.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
    wrk_seconds: u32,
    /// redis-benchmark requests per run.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1000..=10_000_000))]
    redis_requests: u32,
    /// Minutes of the agent soak (`--only soak`; not part of the default run).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    soak_minutes: u32,
    /// Seconds of churn per run in the guest (`--only mechanisms`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=120))]
    mechanism_seconds: u32,
    /// Seconds of parallel churn per mode.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
    parallel_seconds: u32,
    /// Connections held for the memory measurement, two sockets each (cw-hold --connections).
    #[arg(long, default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(1..=131_072))]
    rss_connections: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Churn,
    Io,
    Rss,
    Parallel,
    Servers,
    Syscalls,
    Soak,
    /// In the 6.1 guest of `vm-test`: every attach mechanism, side by side.
    Mechanisms,
}

impl Workload {
    const DEFAULT: [Self; 6] =
        [Self::Churn, Self::Io, Self::Rss, Self::Parallel, Self::Servers, Self::Syscalls];
}

/// The configurations of the I/O workload (tcpstates traces no I/O).
const IO_CONFIGS: [Config; 3] = [Config::Untraced, Config::ConnwatchRaw, Config::ConnwatchWatch];

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
    let selected = |w: Workload| args.only.contains(&w);
    if selected(Workload::Churn) {
        prereqs::ensure_packages(&["libbpf-tools"])?;
        if !Path::new(TCPSTATES).is_file() {
            bail!(
                "{TCPSTATES} is missing although libbpf-tools is installed; reinstall libbpf-tools"
            );
        }
    }
    let tools = Tools { connwatch: crate::run::build_release()?, tcpstates: TCPSTATES.into() };
    let generators = Generators::build()?;
    eprintln!("bench: about {:.0} s of measurements", estimate_s(args));

    // Program run time is counted only while stats are enabled (see bpf_stats). They cost every
    // program run two clock reads, so they are on only for the workloads that report program
    // time per hook; the real servers turn them on for one configuration of their own
    // (`Config::ConnwatchWatchCosted`), and measure throughput without them.
    let stats = bpf_stats::enable()?;
    let poker = Poker::start()?;
    let setup = Setup { tools: &tools, poker: &poker };
    let header = (command_line(), utc_now()?, Host::current()?);

    let churn = selected(Workload::Churn).then(|| churn(args, &generators, &setup)).transpose()?;
    let io = selected(Workload::Io).then(|| io(args, &generators, &setup)).transpose()?;
    let rss = selected(Workload::Rss).then(|| rss(args, &generators, &setup)).transpose()?;
    drop(stats);

    let parallel = selected(Workload::Parallel)
        .then(|| {
            eprintln!("bench: parallel: 2 x cores churn processes under trace, watch, then agent");
            parallel::run(&tools.connwatch, &parallel::build_churner()?, args.parallel_seconds)
        })
        .transpose()?;
    let servers = selected(Workload::Servers)
        .then(|| -> anyhow::Result<Vec<servers::ServerSection>> {
            prereqs::ensure_packages(&[
                "nginx-light",
                "wrk",
                "redis-server",
                "redis-tools",
                "postgresql",
            ])?;
            Ok(vec![
                servers::nginx(&setup, args.server_rounds, args.wrk_seconds)?,
                servers::redis(&setup, args.server_rounds, args.redis_requests)?,
                servers::postgres(&setup, args.server_rounds, args.wrk_seconds)?,
            ])
        })
        .transpose()?;
    let syscalls = selected(Workload::Syscalls)
        .then(|| syscalls::run(&setup, args.server_rounds))
        .transpose()?;
    let soak = selected(Workload::Soak)
        .then(|| {
            eprintln!("bench: soak: connwatch agent under {} min of churn", args.soak_minutes);
            soak::run(&tools.connwatch, &parallel::build_churner()?, args.soak_minutes)
        })
        .transpose()?;

    let mechanisms = selected(Workload::Mechanisms)
        .then(|| {
            eprintln!("bench: mechanisms: churn in the 6.1 guest under each --attach mode");
            mechanisms::run(args.rounds, args.mechanism_seconds)
        })
        .transpose()?;

    let report = Report::new(header, &tools, churn, io, rss)?;
    write_section("report", Some(report), Report::markdown)?;
    write_section("parallel", parallel, |runs| parallel::markdown(runs))?;
    write_section("servers", servers, |sections| servers::markdown(sections))?;
    write_section("syscalls", syscalls, syscalls::markdown)?;
    write_section("soak", soak, soak::markdown)?;
    write_section("mechanisms", mechanisms, mechanisms::markdown)?;
    eprintln!("bench: raw numbers in {}", workspace_root().join("target/bench").display());
    Ok(())
}

/// Prints a workload's markdown and writes its raw numbers to target/bench/NAME.json.
fn write_section<T: serde::Serialize>(
    name: &str,
    section: Option<T>,
    markdown: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    let Some(section) = section else {
        return Ok(());
    };
    println!("{}", markdown(&section));
    let path = workspace_root().join(format!("target/bench/{name}.json"));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&section)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn estimate_s(args: &BenchArgs) -> f64 {
    let rounds = f64::from(args.rounds);
    let traced = |configs: &[Config]| configs.iter().filter(|c| **c != Config::Untraced).count();
    let mut total = 0.0;
    if args.only.contains(&Workload::Churn) {
        let runs = Config::ALL.len() as f64;
        total +=
            3.0 + rounds * (runs * args.seconds + traced(&Config::ALL) as f64 * TRACER_OVERHEAD_S);
    }
    if args.only.contains(&Workload::Io) {
        let runs = IO_CONFIGS.len() as f64;
        total += 1.0
            + rounds * (runs * args.io_seconds + traced(&IO_CONFIGS) as f64 * TRACER_OVERHEAD_S);
    }
    if args.only.contains(&Workload::Rss) {
        total += 10.0;
    }
    if args.only.contains(&Workload::Servers) {
        let per_round =
            servers::CONFIGS.len() as f64 * (f64::from(args.wrk_seconds) + 3.0 + TRACER_OVERHEAD_S);
        total += f64::from(args.server_rounds) * 3.0 * per_round;
    }
    if args.only.contains(&Workload::Syscalls) {
        total += f64::from(args.server_rounds) * 2.0 * (2.0 + TRACER_OVERHEAD_S);
    }
    if args.only.contains(&Workload::Soak) {
        total += f64::from(args.soak_minutes) * 60.0 + TRACER_OVERHEAD_S;
    }
    if args.only.contains(&Workload::Mechanisms) {
        // Boot, and connwatch's start-up under emulation (about a minute per traced run).
        total += 60.0 + f64::from(args.rounds) * 5.0 * (f64::from(args.mechanism_seconds) + 150.0);
    }
    if args.only.contains(&Workload::Parallel) {
        total += 4.0 * f64::from(args.parallel_seconds) + 3.0 * TRACER_OVERHEAD_S;
    }
    total
}

fn churn(
    args: &BenchArgs,
    generators: &Generators,
    setup: &Setup<'_>,
) -> anyhow::Result<ChurnSection> {
    let churn = Churn::new(generators.churn.clone(), args.connectors, args.source_addresses)?;
    eprintln!(
        "bench: churn: {} rounds x {} configurations x {} s",
        args.rounds,
        Config::ALL.len(),
        args.seconds
    );
    // Warm-up, not recorded: first-run effects (page cache, TIME_WAIT table, CPU frequency).
    churn.run(args.seconds.min(3.0))?;
    let rounds = round_robin(
        "churn",
        &Config::ALL,
        args.rounds,
        setup,
        || churn.run(args.seconds),
        |r| format!("{:.0} conn/s", r.per_second),
    )?;
    let settings = ChurnSettings {
        seconds: args.seconds,
        rounds: args.rounds,
        connectors: args.connectors,
        source_addresses: args.source_addresses,
        server_port: churn.port,
    };
    Ok(ChurnSection::new(settings, rounds))
}

fn io(args: &BenchArgs, generators: &Generators, setup: &Setup<'_>) -> anyhow::Result<IoSection> {
    let io = Io {
        binary: generators.io.clone(),
        connections: args.io_connections,
        message_bytes: args.message_bytes,
    };
    eprintln!(
        "bench: io: {} rounds x {} configurations x {} s",
        args.rounds,
        IO_CONFIGS.len(),
        args.io_seconds
    );
    io.run(1.0)?; // warm-up, not recorded
    let rounds = round_robin(
        "io",
        &IO_CONFIGS,
        args.rounds,
        setup,
        || io.run(args.io_seconds),
        |r| format!("{:.0} ops/s", r.per_second),
    )?;
    let settings = IoSettings {
        seconds: args.io_seconds,
        rounds: args.rounds,
        connections: args.io_connections,
        message_bytes: args.message_bytes,
    };
    Ok(IoSection::new(settings, rounds))
}

fn rss(args: &BenchArgs, generators: &Generators, setup: &Setup<'_>) -> anyhow::Result<RssSection> {
    let hold = Hold { binary: generators.hold.clone(), connections: args.rss_connections };
    eprintln!(
        "bench: rss: connwatch watch while cw-hold holds {} connections",
        args.rss_connections
    );
    let result = rss::measure(&hold, setup).context("rss")?;
    eprintln!(
        "bench: rss: established in {:.2} s, connwatch caught up after {:.2} s, VmRSS {} KiB",
        result.established.elapsed_s, result.caught_up_s, result.settled.rss_kib
    );
    Ok(RssSection::new(result))
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
