//! The churn section: connections per second under each tracer, tracer costs per connection,
//! BPF cost per hook.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    ExtraColumn, HookColumn, Spread, Target, TracerTotals, hook_table, mib, targets_markdown,
    thousands,
};
use crate::bench::{churn::ChurnResult, config::Config, rounds::RoundResult};

#[derive(Serialize)]
pub struct ChurnSettings {
    pub seconds: f64,
    pub rounds: u32,
    pub connectors: u32,
    pub source_addresses: u32,
    pub server_port: u16,
}

#[derive(Serialize)]
pub struct ChurnSection {
    settings: ChurnSettings,
    configs: Vec<ConfigSummary>,
    targets: Vec<Target>,
    rounds: Vec<RoundResult<ChurnResult>>,
}

#[derive(Serialize)]
struct ConfigSummary {
    config: Config,
    label: &'static str,
    rounds: usize,
    connections: u64,
    /// Connections per second over the rounds.
    rate: Spread,
    /// rate.mean / the untraced rate.mean.
    rate_vs_untraced: f64,
    tracer: Option<TracerSummary>,
}

#[derive(Serialize)]
struct TracerSummary {
    cpu_s_per_1k_connections: f64,
    /// cpu_s_per_1k_connections / tcpstates' value.
    cpu_vs_tcpstates: f64,
    events_per_connection: Option<f64>,
    records_per_connection: Option<f64>,
    /// BPF program run time (in the workload's context) per connection.
    bpf_ns_per_connection: f64,
    #[serde(flatten)]
    totals: TracerTotals,
}

impl ChurnSection {
    pub fn new(settings: ChurnSettings, rounds: Vec<RoundResult<ChurnResult>>) -> Self {
        let mut configs: Vec<ConfigSummary> =
            Config::measured(&rounds).map(|config| summarize(config, &rounds)).collect();
        let untraced = rate_of(&configs, Config::Untraced);
        let tcpstates_cpu = configs
            .iter()
            .find(|c| c.config == Config::Tcpstates)
            .and_then(|c| c.tracer.as_ref())
            .map_or(0.0, |t| t.cpu_s_per_1k_connections);
        for summary in &mut configs {
            summary.rate_vs_untraced = summary.rate.mean / untraced;
            if let Some(tracer) = &mut summary.tracer {
                tracer.cpu_vs_tcpstates = tracer.cpu_s_per_1k_connections / tcpstates_cpu;
            }
        }
        Self { settings, targets: targets(&configs), configs, rounds }
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut md = String::from("#### Churn: connections opened and closed\n\n");
        let _ = writeln!(
            md,
            "{} rounds x {} s per configuration, round-robin; cw-churn with {} connector threads, \
             {} client addresses, server port {}.\n",
            s.rounds, s.seconds, s.connectors, s.source_addresses, s.server_port,
        );
        md += "| configuration | conn/s (mean ± sd) | vs untraced | tracer CPU s / 1k conn | vs tcpstates \
               | peak RSS | events seen (per conn) | records / conn | events lost | BPF ns / conn |\n";
        md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for c in &self.configs {
            let _ = write!(
                md,
                "| {} | {} | {:.0}% ",
                c.label,
                c.rate.markdown(),
                c.rate_vs_untraced * 100.0
            );
            match &c.tracer {
                None => md += "| – | – | – | – | – | – | – |\n",
                Some(t) => {
                    let seen = match (t.totals.events_seen, t.events_per_connection) {
                        (Some(n), Some(per)) => format!("{} ({per:.1})", thousands(n as f64)),
                        _ => "–".into(),
                    };
                    let records =
                        t.records_per_connection.map_or("–".into(), |r| format!("{r:.1}"));
                    // The floor reports nothing to lose; the kernel's skips of its empty
                    // programs (one serves every hook) cost nothing.
                    let lost = match c.config.reaches_only() {
                        true => "–".into(),
                        false => t.totals.events_lost.to_string(),
                    };
                    let _ = writeln!(
                        md,
                        "| {:.4} | {:.2}x | {} | {seen} | {records} | {lost} | {:.0} |",
                        t.cpu_s_per_1k_connections,
                        t.cpu_vs_tcpstates,
                        mib(t.totals.peak_rss_kib),
                        t.bpf_ns_per_connection
                    );
                }
            }
        }
        if let Some(untraced) = self.summary(Config::Untraced) {
            let r = untraced.rate;
            let _ = writeln!(
                md,
                "\nUntraced spread over rounds: sd / mean = {:.1}%, min {} max {} conn/s \
                 (more than a few % suggests other load on the machine).",
                r.stddev / r.mean * 100.0,
                thousands(r.min),
                thousands(r.max)
            );
        }
        if let Some(watch) = self.summary(Config::ConnwatchWatch).and_then(|c| c.tracer.as_ref()) {
            let _ = writeln!(
                md,
                "\nconnwatch watch during churn (every connection a clean FIN/FIN close): \
                 findings: {}; sockets evicted from tracking: {}.",
                watch.totals.findings_markdown(),
                thousands(watch.totals.sockets_evicted.unwrap_or(0) as f64)
            );
        }
        md += "\nBPF program cost per hook: mean ns per hit (hits per connection), program type; \
               raw / classic = connwatch trace's raw tracepoint ns per hit over its classic \
               tracepoint's. Hooks without hits are left out (report.json lists them).\n\n";
        md += &self.hook_table();
        md += &targets_markdown(&self.targets);
        md
    }

    fn summary(&self, config: Config) -> Option<&ConfigSummary> {
        self.configs.iter().find(|c| c.config == config)
    }

    fn totals(&self, config: Config) -> Option<&TracerTotals> {
        Some(&self.summary(config)?.tracer.as_ref()?.totals)
    }

    /// The shared per-hook table, plus connwatch's raw tracepoint over its classic tracepoint
    /// on the same hook, and the yardstick row.
    fn hook_table(&self) -> String {
        let columns: Vec<HookColumn<'_>> = self
            .configs
            .iter()
            .filter(|c| !c.config.reaches_only())
            .filter_map(|c| {
                let totals = &c.tracer.as_ref()?.totals;
                Some(HookColumn { label: c.label, totals, units: c.connections })
            })
            .collect();
        let ns_per_hit = |config: Config, hook: &str, prog_type: &str| {
            self.totals(config)?
                .programs
                .iter()
                .find(|p| p.hook == hook && p.prog_type == prog_type)?
                .ns_per_hit
        };
        let raw_over_classic = |hook: &str| {
            let raw = ns_per_hit(Config::ConnwatchRaw, hook, "raw_tracepoint");
            let classic = ns_per_hit(Config::ConnwatchTracepoint, hook, "tracepoint");
            match (raw, classic) {
                (Some(raw), Some(classic)) => format!("{:.2}", raw / classic),
                _ => "–".into(),
            }
        };
        let extra = ExtraColumn { header: "raw / classic", cell: &raw_over_classic };
        let mut md = hook_table(&columns, Some(extra));
        if let Some(yardstick) = self.same_program_ratio() {
            let _ = writeln!(
                md,
                "| *yardstick: hooks on classic tracepoints in both connwatch trace runs* |{} {yardstick:.2} |",
                " |".repeat(columns.len())
            );
        }
        md
    }

    /// connwatch trace's ns per hit over connwatch trace --attach tracepoint's, for the hooks
    /// that run the same classic-tracepoint program in both: how much the configurations differ
    /// for reasons other than the attach mechanism (ring-buffer wake-ups, load, noise).
    fn same_program_ratio(&self) -> Option<f64> {
        let (raw, classic) =
            (self.totals(Config::ConnwatchRaw)?, self.totals(Config::ConnwatchTracepoint)?);
        let (mut raw_sum, mut classic_sum) = ((0, 0), (0, 0));
        for r in raw.programs.iter().filter(|p| p.prog_type == "tracepoint") {
            let Some(c) =
                classic.programs.iter().find(|c| c.hook == r.hook && c.prog_type == "tracepoint")
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

fn rate_of(configs: &[ConfigSummary], config: Config) -> f64 {
    configs.iter().find(|c| c.config == config).map_or(0.0, |c| c.rate.mean)
}

fn summarize(config: Config, rounds: &[RoundResult<ChurnResult>]) -> ConfigSummary {
    let mine: Vec<&RoundResult<ChurnResult>> =
        rounds.iter().filter(|r| r.config == config).collect();
    let rates: Vec<f64> = mine.iter().map(|r| r.workload.per_second).collect();
    let connections: u64 = mine.iter().map(|r| r.workload.connections).sum();
    let samples: Vec<_> = mine.iter().filter_map(|r| r.tracer.as_ref()).collect();
    let per_connection = |n: f64| n / connections.max(1) as f64;
    let tracer = (!samples.is_empty()).then(|| {
        let totals = TracerTotals::of(config, &samples);
        TracerSummary {
            cpu_s_per_1k_connections: per_connection(totals.cpu_s()) * 1000.0,
            cpu_vs_tcpstates: 0.0,
            events_per_connection: totals.events_seen.map(|n| per_connection(n as f64)),
            records_per_connection: totals.records_seen.map(|n| per_connection(n as f64)),
            bpf_ns_per_connection: per_connection(totals.bpf_ns as f64),
            totals,
        }
    });
    ConfigSummary {
        config,
        label: config.label(),
        rounds: mine.len(),
        connections,
        rate: Spread::of(&rates),
        rate_vs_untraced: 0.0,
        tracer,
    }
}

fn targets(configs: &[ConfigSummary]) -> Vec<Target> {
    let mut targets = Vec::new();
    for c in configs {
        let Some(t) = c.tracer.as_ref().filter(|_| !c.config.reaches_only()) else { continue };
        let mut target = |target: &str, value: f64, met: bool| {
            targets.push(Target { target: target.into(), config: c.label, value, met });
        };
        let r = c.rate_vs_untraced;
        if c.config == Config::Tcpstates {
            target(
                "keeps roughly half of the untraced rate (0.40-0.60)",
                r,
                (0.40..=0.60).contains(&r),
            );
        } else {
            target("keeps >= 0.85 of the untraced rate", r, r >= 0.85);
            target(
                "CPU per connection <= 0.25x tcpstates'",
                t.cpu_vs_tcpstates,
                t.cpu_vs_tcpstates <= 0.25,
            );
            target("loses 0 events", t.totals.events_lost as f64, t.totals.events_lost == 0);
        }
    }
    targets
}
