//! Per-configuration aggregates, the targets, and the markdown and JSON renderings.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::{
    churn::ChurnResult,
    config::{Config, Tools},
    tracer::TracerSample,
};

#[derive(Serialize)]
pub struct Settings {
    pub seconds: f64,
    pub rounds: u32,
    pub connectors: u32,
    pub source_addresses: u32,
    pub server_port: u16,
}

/// One configuration measured once.
#[derive(Serialize)]
pub struct RoundResult {
    pub round: usize,
    pub config: Config,
    pub churn: ChurnResult,
    pub tracer: Option<TracerSample>,
}

/// The machine, as found when the measurements start.
#[derive(Serialize)]
pub struct Host {
    kernel: String,
    cpus: usize,
    /// /proc/loadavg before the warm-up: other load makes every number noisier.
    load_average: String,
}

impl Host {
    pub fn current() -> anyhow::Result<Self> {
        let read = |path: &str| -> anyhow::Result<String> {
            Ok(std::fs::read_to_string(path)
                .with_context(|| format!("reading {path}"))?
                .trim()
                .to_owned())
        };
        Ok(Self {
            kernel: read("/proc/sys/kernel/osrelease")?,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            load_average: read("/proc/loadavg")?,
        })
    }
}

#[derive(Serialize)]
pub struct Report {
    command: String,
    date: String,
    host: Host,
    settings: Settings,
    tracer_commands: BTreeMap<&'static str, Vec<String>>,
    configs: Vec<ConfigSummary>,
    targets: Vec<Target>,
    rounds: Vec<RoundResult>,
}

#[derive(Serialize)]
struct ConfigSummary {
    config: Config,
    label: &'static str,
    rounds: usize,
    connections: u64,
    /// Connections per second: mean, sample standard deviation, extremes over the rounds.
    rate_mean: f64,
    rate_stddev: f64,
    rate_min: f64,
    rate_max: f64,
    /// rate_mean / the untraced rate_mean.
    rate_vs_untraced: f64,
    tracer: Option<TracerSummary>,
}

#[derive(Serialize)]
struct TracerSummary {
    cpu_user_s: f64,
    cpu_sys_s: f64,
    cpu_s_per_1k_connections: f64,
    /// cpu_s_per_1k_connections / tcpstates' value.
    cpu_vs_tcpstates: f64,
    /// CPU the bench spent reading the tracer's stdout (in the bench, not the tracer).
    reader_cpu_s: f64,
    /// Highest VmHWM over the rounds.
    peak_rss_kib: u64,
    /// Events the tracer reported (connwatch's summary; tcpstates does not count them).
    events_seen: Option<u64>,
    events_per_connection: Option<f64>,
    /// connwatch: its summary's `lost`; tcpstates: its `lost N events` messages.
    events_lost: u64,
    /// BPF program run time (in the workload's context) per connection.
    bpf_ns_per_connection: f64,
    programs: Vec<ProgramCost>,
    /// connwatch's `ready` line: the attach mechanism of every hook (first round).
    hooks_attached: Option<Value>,
}

/// One program type on one hook, summed over the rounds.
#[derive(Serialize)]
struct ProgramCost {
    hook: String,
    prog_type: String,
    run_cnt: u64,
    run_time_ns: u64,
    ns_per_hit: Option<f64>,
    hits_per_connection: f64,
}

#[derive(Serialize)]
struct Target {
    target: String,
    config: &'static str,
    value: f64,
    met: bool,
}

impl Report {
    pub fn new(
        settings: Settings,
        host: Host,
        command: String,
        date: String,
        tools: &Tools,
        rounds: Vec<RoundResult>,
    ) -> Self {
        let mut configs: Vec<ConfigSummary> = Config::ALL
            .iter()
            .map(|&config| {
                summarize(config, rounds.iter().filter(|r| r.config == config).collect())
            })
            .collect();
        let rate_of = |c: Config, s: &[ConfigSummary]| {
            s.iter().find(|x| x.config == c).map_or(0.0, |x| x.rate_mean)
        };
        let untraced = rate_of(Config::Untraced, &configs);
        let tcpstates_cpu = configs
            .iter()
            .find(|c| c.config == Config::Tcpstates)
            .and_then(|c| c.tracer.as_ref())
            .map_or(0.0, |t| t.cpu_s_per_1k_connections);
        for summary in &mut configs {
            summary.rate_vs_untraced = summary.rate_mean / untraced;
            if let Some(tracer) = &mut summary.tracer {
                tracer.cpu_vs_tcpstates = tracer.cpu_s_per_1k_connections / tcpstates_cpu;
            }
        }
        Self {
            command,
            date,
            host,
            settings,
            tracer_commands: Config::ALL
                .iter()
                .filter_map(|c| Some((c.label(), c.tracer_argv(tools)?)))
                .collect(),
            targets: targets(&configs),
            configs,
            rounds,
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let _ = writeln!(
            md,
            "### connwatch bench: kernel {}, {} CPUs, {}\n",
            self.host.kernel, self.host.cpus, self.date
        );
        let _ = writeln!(
            md,
            "`{}`: {} rounds x {} s per configuration, round-robin; cw-churn with {} connector threads, \
             {} client addresses, server port {}. Load average at start: {}.\n",
            self.command,
            s.rounds,
            s.seconds,
            s.connectors,
            s.source_addresses,
            s.server_port,
            self.host.load_average
        );
        md += "| configuration | conn/s (mean ± sd) | vs untraced | tracer CPU s / 1k conn | vs tcpstates \
               | peak RSS | events seen (per conn) | events lost | BPF ns / conn |\n";
        md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for c in &self.configs {
            let _ = write!(
                md,
                "| {} | {} ± {} | {:.0}% ",
                c.label,
                thousands(c.rate_mean),
                thousands(c.rate_stddev),
                c.rate_vs_untraced * 100.0
            );
            match &c.tracer {
                None => md += "| – | – | – | – | – | – |\n",
                Some(t) => {
                    let seen = match (t.events_seen, t.events_per_connection) {
                        (Some(n), Some(per)) => format!("{} ({per:.1})", thousands(n as f64)),
                        _ => "–".into(),
                    };
                    let _ = writeln!(
                        md,
                        "| {:.4} | {:.2}x | {:.1} MiB | {seen} | {} | {:.0} |",
                        t.cpu_s_per_1k_connections,
                        t.cpu_vs_tcpstates,
                        t.peak_rss_kib as f64 / 1024.0,
                        t.events_lost,
                        t.bpf_ns_per_connection
                    );
                }
            }
        }
        if let Some(untraced) = self.configs.iter().find(|c| c.config == Config::Untraced) {
            let _ = writeln!(
                md,
                "\nUntraced spread over rounds: sd / mean = {:.1}%, min {} max {} conn/s \
                 (more than a few % suggests other load on the machine).",
                untraced.rate_stddev / untraced.rate_mean * 100.0,
                thousands(untraced.rate_min),
                thousands(untraced.rate_max)
            );
        }
        md += "\nBPF program cost per hook: mean ns per hit (hits per connection), program type; \
               raw / classic = connwatch's raw tracepoint ns per hit over its classic tracepoint's. \
               Hooks without hits are left out (report.json lists them).\n\n";
        md += &self.hook_table();
        md += "\nTargets (reported, not asserted):\n\n";
        for t in &self.targets {
            let _ = writeln!(
                md,
                "- {}: {}: {:.2} ({})",
                t.config,
                t.target,
                t.value,
                if t.met { "met" } else { "NOT met" }
            );
        }
        md
    }

    /// One row per hook, one column per tracer configuration; the last-but-one column compares
    /// connwatch's raw tracepoint with its classic tracepoint on the same hook.
    fn hook_table(&self) -> String {
        let tracers: Vec<&ConfigSummary> =
            self.configs.iter().filter(|c| c.tracer.is_some()).collect();
        let cost = |config: Config, hook: &str| {
            let summary = tracers.iter().find(|c| c.config == config)?;
            summary.tracer.as_ref()?.programs.iter().find(|p| p.hook == hook)
        };
        // Hooks nothing hit (errors, resets on a clean run) would only add empty rows.
        let mut hooks: Vec<&str> = tracers
            .iter()
            .flat_map(|c| c.tracer.iter().flat_map(|t| &t.programs))
            .filter(|p| p.run_cnt > 0)
            .map(|p| p.hook.as_str())
            .collect();
        hooks.sort_unstable();
        hooks.dedup();

        let mut md = String::from("| hook |");
        for c in &tracers {
            let _ = write!(md, " {} |", c.label);
        }
        md += " raw / classic |\n|---|";
        md += &"---:|".repeat(tracers.len() + 1);
        md += "\n";
        for hook in hooks {
            let _ = write!(md, "| {hook} |");
            for c in &tracers {
                let cell = cost(c.config, hook).map_or("–".into(), |p| {
                    let ns = p.ns_per_hit.map_or("–".into(), |ns| format!("{ns:.0} ns"));
                    format!("{ns} ({:.1}) {}", p.hits_per_connection, short_type(&p.prog_type))
                });
                let _ = write!(md, " {cell} |");
            }
            let raw = cost(Config::ConnwatchRaw, hook).filter(|p| p.prog_type == "raw_tracepoint");
            let classic =
                cost(Config::ConnwatchTracepoint, hook).filter(|p| p.prog_type == "tracepoint");
            let ratio = match (raw.and_then(|p| p.ns_per_hit), classic.and_then(|p| p.ns_per_hit)) {
                (Some(raw), Some(classic)) => format!("{:.2}", raw / classic),
                _ => "–".into(),
            };
            let _ = writeln!(md, " {ratio} |");
        }
        if let Some(yardstick) = self.same_program_ratio() {
            let _ = writeln!(
                md,
                "| *yardstick: hooks on classic tracepoints in both connwatch runs* | | | | {yardstick:.2} |"
            );
        }
        md
    }

    /// connwatch's ns per hit over connwatch --attach tracepoint's, for the hooks that run the
    /// same classic-tracepoint program in both: how much the configurations differ for reasons
    /// other than the attach mechanism (ring-buffer wake-ups, load, noise).
    fn same_program_ratio(&self) -> Option<f64> {
        let programs = |config: Config| {
            let summary = self.configs.iter().find(|c| c.config == config)?;
            Some(&summary.tracer.as_ref()?.programs)
        };
        let (raw, classic) =
            (programs(Config::ConnwatchRaw)?, programs(Config::ConnwatchTracepoint)?);
        let (mut raw_sum, mut classic_sum) = ((0, 0), (0, 0));
        for r in raw.iter().filter(|p| p.prog_type == "tracepoint") {
            let Some(c) = classic.iter().find(|c| c.hook == r.hook && c.prog_type == "tracepoint")
            else {
                continue;
            };
            raw_sum = (raw_sum.0 + r.run_time_ns, raw_sum.1 + r.run_cnt);
            classic_sum = (classic_sum.0 + c.run_time_ns, classic_sum.1 + c.run_cnt);
        }
        let per_hit = |(ns, cnt): (u64, u64)| (cnt > 0).then(|| ns as f64 / cnt as f64);
        Some(per_hit(raw_sum)? / per_hit(classic_sum)?)
    }
}

fn summarize(config: Config, rounds: Vec<&RoundResult>) -> ConfigSummary {
    let rates: Vec<f64> = rounds.iter().map(|r| r.churn.per_second).collect();
    let connections: u64 = rounds.iter().map(|r| r.churn.connections).sum();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let variance =
        rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len().max(2) - 1) as f64;
    let samples: Vec<&TracerSample> = rounds.iter().filter_map(|r| r.tracer.as_ref()).collect();
    ConfigSummary {
        config,
        label: config.label(),
        rounds: rounds.len(),
        connections,
        rate_mean: mean,
        rate_stddev: variance.sqrt(),
        rate_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        rate_max: rates.iter().copied().fold(0.0, f64::max),
        rate_vs_untraced: 0.0,
        tracer: (!samples.is_empty()).then(|| summarize_tracer(config, &samples, connections)),
    }
}

fn summarize_tracer(config: Config, samples: &[&TracerSample], connections: u64) -> TracerSummary {
    let per_connection = |n: f64| n / connections.max(1) as f64;
    let cpu_user_s: f64 = samples.iter().map(|s| s.cpu.user_s).sum();
    let cpu_sys_s: f64 = samples.iter().map(|s| s.cpu.sys_s).sum();
    // Sum of a connwatch summary's `events` or `lost` object.
    let summary_total = |s: &TracerSample, key: &str| -> u64 {
        s.last_line
            .get(key)
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    };
    let events_seen = config
        .is_connwatch()
        .then(|| samples.iter().map(|s| summary_total(s, "events")).sum::<u64>());
    let events_lost = if config.is_connwatch() {
        samples.iter().map(|s| summary_total(s, "lost")).sum()
    } else {
        samples.iter().map(|s| s.lost_on_stderr).sum()
    };

    let mut by_hook: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for program in samples.iter().flat_map(|s| &s.programs) {
        let hook =
            program.hook.clone().unwrap_or_else(|| format!("(unattached #{})", program.prog_id));
        let entry = by_hook.entry((hook, program.prog_type.clone())).or_default();
        entry.0 += program.run_cnt;
        entry.1 += program.run_time_ns;
    }
    let bpf_ns: u64 = by_hook.values().map(|(_, ns)| ns).sum();
    let programs = by_hook
        .into_iter()
        .map(|((hook, prog_type), (run_cnt, run_time_ns))| ProgramCost {
            hook,
            prog_type,
            run_cnt,
            run_time_ns,
            ns_per_hit: (run_cnt > 0).then(|| run_time_ns as f64 / run_cnt as f64),
            hits_per_connection: per_connection(run_cnt as f64),
        })
        .collect();

    TracerSummary {
        cpu_user_s,
        cpu_sys_s,
        cpu_s_per_1k_connections: per_connection(cpu_user_s + cpu_sys_s) * 1000.0,
        cpu_vs_tcpstates: 0.0,
        reader_cpu_s: samples.iter().map(|s| s.reader_cpu.user_s + s.reader_cpu.sys_s).sum(),
        peak_rss_kib: samples.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0),
        events_per_connection: events_seen.map(|n| per_connection(n as f64)),
        events_seen,
        events_lost,
        bpf_ns_per_connection: per_connection(bpf_ns as f64),
        programs,
        hooks_attached: config
            .is_connwatch()
            .then(|| samples[0].first_line.get("hooks").cloned())
            .flatten(),
    }
}

fn targets(configs: &[ConfigSummary]) -> Vec<Target> {
    let mut targets = Vec::new();
    for c in configs {
        let Some(t) = &c.tracer else { continue };
        let mut target = |target: &str, value: f64, met: bool| {
            targets.push(Target { target: target.into(), config: c.label, value, met });
        };
        if c.config == Config::Tcpstates {
            let r = c.rate_vs_untraced;
            target(
                "keeps roughly half of the untraced rate (0.40-0.60)",
                r,
                (0.40..=0.60).contains(&r),
            );
        } else {
            let r = c.rate_vs_untraced;
            target("keeps >= 0.85 of the untraced rate", r, r >= 0.85);
            target(
                "CPU per connection <= 0.25x tcpstates'",
                t.cpu_vs_tcpstates,
                t.cpu_vs_tcpstates <= 0.25,
            );
            target("loses 0 events", t.events_lost as f64, t.events_lost == 0);
        }
    }
    targets
}

fn short_type(prog_type: &str) -> &str {
    match prog_type {
        "raw_tracepoint" => "raw_tp",
        "tracepoint" => "tp",
        other => other,
    }
}

/// 61234.5 -> "61,235".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
