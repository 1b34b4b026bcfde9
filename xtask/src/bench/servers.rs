//! Real servers under their own load generators, as users run them: nginx + wrk (32 keep-alive
//! connections), redis-server + redis-benchmark GET (20 clients) and PostgreSQL + pgbench
//! select-only (8 clients), each untraced, under
//! `connwatch watch` and under `connwatch agent`, interleaved round by round. Reports median
//! throughput and the share kept, measured without the kernel's BPF statistics (a user's host
//! does not pay for them), and, from one more configuration that runs watch with them on, BPF
//! time per request and per program.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use connwatch_servers as real;
use serde::Serialize;

use super::{
    config::Config,
    report::thousands,
    rounds::{self, RoundResult, Setup, round_robin},
};

const NGINX_PORT: u16 = 25080;
const REDIS_PORT: u16 = 25379;
const POSTGRES_PORT: u16 = 25432;
/// The configurations compared.
pub const CONFIGS: [Config; 5] = [
    Config::Untraced,
    Config::ConnwatchWatch,
    Config::ConnwatchAgent,
    Config::ConnwatchWatchHooksOnly,
    Config::ConnwatchWatchCosted,
];

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Load {
    pub requests: u64,
    pub per_second: f64,
}

#[derive(Serialize)]
pub struct ServerSection {
    pub name: &'static str,
    pub load: String,
    pub rounds: Vec<RoundSummary>,
}

#[derive(Serialize)]
pub struct RoundSummary {
    pub round: usize,
    pub config: Config,
    pub load: Load,
    /// Total BPF run time during the load, per request, and per program (hook, ns per hit,
    /// hits per request).
    pub bpf_ns_per_request: Option<f64>,
    pub programs: Vec<(String, f64, f64)>,
}

pub fn nginx(setup: &Setup<'_>, rounds: u32, seconds: u32) -> anyhow::Result<ServerSection> {
    let _nginx = real::nginx(NGINX_PORT);
    let url = format!("http://127.0.0.1:{NGINX_PORT}/");
    let duration = format!("-d{seconds}s");
    let run = || -> anyhow::Result<Load> {
        let out = real::run("wrk", "wrk", &["-t2", "-c32", &duration, &url]);
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    };
    run()?; // warm-up, not recorded
    let results = round_robin("nginx+wrk", &CONFIGS, rounds, setup, run, rate)?;
    Ok(section("nginx + wrk", format!("wrk -t2 -c32 {duration} (keep-alive)"), results))
}

pub fn redis(setup: &Setup<'_>, rounds: u32, requests: u32) -> anyhow::Result<ServerSection> {
    let _redis = real::redis(REDIS_PORT);
    let (port, n) = (REDIS_PORT.to_string(), requests.to_string());
    let run = || -> anyhow::Result<Load> {
        let args = ["-h", "127.0.0.1", "-p", &port, "-n", &n, "-c", "20", "-t", "get", "--csv"];
        let out = real::run("redis-benchmark", "redis-tools", &args);
        parse_redis(&String::from_utf8_lossy(&out.stdout), requests)
    };
    run()?;
    let results = round_robin("redis GET", &CONFIGS, rounds, setup, run, rate)?;
    Ok(section(
        "redis-server + redis-benchmark GET",
        format!("redis-benchmark -n {n} -c 20 -t get"),
        results,
    ))
}

fn rate(load: &Load) -> String {
    format!("{:.0} req/s", load.per_second)
}

pub fn postgres(setup: &Setup<'_>, rounds: u32, seconds: u32) -> anyhow::Result<ServerSection> {
    let _postgres = real::postgres(POSTGRES_PORT);
    let pgbench = real::postgres_bin().join("pgbench");
    let pgbench = pgbench.to_str().context("pgbench's path is not UTF-8")?;
    let port = POSTGRES_PORT.to_string();
    let connection = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let init: Vec<&str> = ["-i", "-q", "-s", "1"].iter().chain(&connection).copied().collect();
    real::run(pgbench, "postgresql", &[&init[..], &["postgres"]].concat());
    let duration = seconds.to_string();
    // Select-only: one indexed read per transaction, bound by CPU rather than the disk.
    let load = ["-S", "-c", "8", "-j", "2", "-T", &duration];
    let args: Vec<&str> = load.iter().chain(&connection).chain(&["postgres"]).copied().collect();
    let run = || -> anyhow::Result<Load> {
        let out = real::run(pgbench, "postgresql", &args);
        parse_pgbench(&String::from_utf8_lossy(&out.stdout))
    };
    run()?;
    let results = round_robin("postgres pgbench -S", &CONFIGS, rounds, setup, run, rate)?;
    Ok(section("PostgreSQL + pgbench select-only", format!("pgbench {}", load.join(" ")), results))
}

/// `number of transactions actually processed: 123456` and `tps = 24691.2 (without initial
/// connection time)`.
fn parse_pgbench(out: &str) -> anyhow::Result<Load> {
    let value = |prefix: &str| {
        out.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(|rest| {
            rest.split_whitespace().next().unwrap_or_default().split('/').next().unwrap_or_default()
        })
    };
    let requests = value("number of transactions actually processed:").and_then(|v| v.parse().ok());
    let per_second = value("tps =").and_then(|v| v.parse().ok());
    match (requests, per_second) {
        (Some(requests), Some(per_second)) => Ok(Load { requests, per_second }),
        _ => bail!("no transactions or tps in pgbench's output: {out}"),
    }
}

/// `Requests/sec:  12345.67` and `123456 requests in 5.00s`.
fn parse_wrk(out: &str) -> anyhow::Result<Load> {
    let per_second = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {out}"))?;
    let requests = out
        .lines()
        .find_map(|l| l.split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0);
    Ok(Load { requests, per_second })
}

/// `"GET","86580.09",...` (redis-benchmark --csv).
fn parse_redis(out: &str, requests: u32) -> anyhow::Result<Load> {
    let Some(line) = out.lines().find(|l| l.starts_with("\"GET\"")) else {
        bail!("no GET line in redis-benchmark's output: {out}");
    };
    let per_second =
        line.split(',').nth(1).map(|v| v.trim_matches('"')).and_then(|v| v.parse().ok());
    let per_second = per_second.with_context(|| format!("cannot read {line}"))?;
    Ok(Load { requests: u64::from(requests), per_second })
}

fn section(name: &'static str, load: String, results: Vec<RoundResult<Load>>) -> ServerSection {
    let rounds = results
        .into_iter()
        .map(|r| {
            let programs: Vec<(String, f64, f64)> = r
                .tracer
                .as_ref()
                .map(|t| {
                    t.programs
                        .iter()
                        .filter(|p| p.run_cnt > 0)
                        .map(|p| {
                            let hook =
                                p.hook.clone().unwrap_or_else(|| format!("prog {}", p.prog_id));
                            let per_hit = p.run_time_ns as f64 / p.run_cnt as f64;
                            let per_request = p.run_cnt as f64 / r.workload.requests.max(1) as f64;
                            (hook, per_hit, per_request)
                        })
                        .collect()
                })
                .unwrap_or_default();
            // Program time is counted only in the run that turned the statistics on.
            let bpf_ns_per_request =
                r.tracer.as_ref().filter(|_| r.config.counts_bpf_time()).map(|t| {
                    let total: u64 = t.programs.iter().map(|p| p.run_time_ns).sum();
                    total as f64 / r.workload.requests.max(1) as f64
                });
            RoundSummary {
                round: r.round,
                config: r.config,
                load: r.workload,
                bpf_ns_per_request,
                programs,
            }
        })
        .collect();
    ServerSection { name, load, rounds }
}

fn median(values: Vec<f64>) -> f64 {
    rounds::median(values).unwrap_or(f64::NAN)
}

pub fn markdown(sections: &[ServerSection]) -> String {
    let mut md = String::from("#### Real servers: throughput kept\n\n");
    md += "Each round runs every configuration once, in a rotating order; medians over rounds. \
           Throughput is measured with the kernel's BPF statistics off, except in the last \
           configuration, which turns them on (`kernel.bpf_stats_enabled`) for watch's run alone: \
           its BPF time is summed over connwatch's programs during the load, per request, and \
           its throughput shows what the statistics themselves cost.\n\n";
    for s in sections {
        let _ = writeln!(md, "**{}** (`{}`)\n", s.name, s.load);
        md += "| configuration | req/s (median) | vs untraced | BPF ns / request (median) |\n|---|---:|---:|---:|\n";
        let of = |c: Config| s.rounds.iter().filter(move |r| r.config == c);
        let base = median(of(Config::Untraced).map(|r| r.load.per_second).collect());
        for config in CONFIGS {
            let rps = median(of(config).map(|r| r.load.per_second).collect());
            let bpf: Vec<f64> = of(config).filter_map(|r| r.bpf_ns_per_request).collect();
            let bpf = if bpf.is_empty() { "–".into() } else { format!("{:.0}", median(bpf)) };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {bpf} |",
                config.label(),
                thousands(rps),
                rps / base
            );
        }
        // The heaviest programs under watch, per hit and per request.
        if let Some(r) = of(Config::ConnwatchWatchCosted).next_back() {
            let mut programs = r.programs.clone();
            programs.sort_by(|a, b| (b.1 * b.2).total_cmp(&(a.1 * a.2)));
            md += "\nUnder watch with BPF statistics on (last round), the programs that cost most per request:\n\n| hook | ns / hit | hits / request | ns / request |\n|---|---:|---:|---:|\n";
            for (hook, per_hit, hits) in programs.iter().take(8) {
                let _ =
                    writeln!(md, "| {hook} | {per_hit:.0} | {hits:.2} | {:.0} |", per_hit * hits);
            }
        }
        md += "\n";
    }
    md
}

#[cfg(test)]
mod tests {
    use super::parse_pgbench;

    #[test]
    fn reads_pgbench_transactions_and_tps() {
        let out = "transaction type: <builtin: select only>\n\
                   number of transactions actually processed: 123456\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 0.324 ms\n\
                   tps = 24691.234567 (without initial connection time)\n";
        let load = parse_pgbench(out).unwrap();
        assert_eq!((load.requests, load.per_second), (123_456, 24_691.234_567));
        assert!(parse_pgbench("pgbench: error: connection refused\n").is_err());
    }
}
