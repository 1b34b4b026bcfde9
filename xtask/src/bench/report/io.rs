//! The I/O section: round trips per second on established connections under each tracer,
//! tracer costs per operation, BPF cost per hook.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    HookColumn, Spread, Target, TracerTotals, hook_table, mib, targets_markdown, thousands,
};
use crate::bench::{config::Config, io::IoResult, rounds::RoundResult};

/// The share of the untraced throughput connwatch should keep (issues 3 and 4).
const THROUGHPUT_TARGET: f64 = 0.95;

#[derive(Serialize)]
pub struct IoSettings {
    pub seconds: f64,
    pub rounds: u32,
    pub connections: u32,
    pub message_bytes: u32,
}

#[derive(Serialize)]
pub struct IoSection {
    settings: IoSettings,
    configs: Vec<ConfigSummary>,
    targets: Vec<Target>,
    rounds: Vec<RoundResult<IoResult>>,
}

#[derive(Serialize)]
struct ConfigSummary {
    config: Config,
    label: &'static str,
    rounds: usize,
    /// Round trips (a request and its reply) over all rounds.
    operations: u64,
    /// Round trips per second over the rounds.
    rate: Spread,
    /// Payload bytes per second, both directions, mean over the rounds.
    bytes_per_second: f64,
    /// rate.mean / the untraced rate.mean.
    rate_vs_untraced: f64,
    tracer: Option<TracerSummary>,
}

#[derive(Serialize)]
struct TracerSummary {
    cpu_s_per_million_operations: f64,
    /// BPF program run time (in the workload's context) per round trip.
    bpf_ns_per_operation: f64,
    #[serde(flatten)]
    totals: TracerTotals,
}

impl IoSection {
    pub fn new(settings: IoSettings, rounds: Vec<RoundResult<IoResult>>) -> Self {
        let mut configs: Vec<ConfigSummary> =
            Config::measured(&rounds).map(|config| summarize(config, &rounds)).collect();
        let untraced =
            configs.iter().find(|c| c.config == Config::Untraced).map_or(0.0, |c| c.rate.mean);
        for summary in &mut configs {
            summary.rate_vs_untraced = summary.rate.mean / untraced;
        }
        Self { settings, targets: targets(&configs), configs, rounds }
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let threads = self.rounds.first().map_or(1, |r| r.workload.threads);
        let mut md = String::from("#### I/O: small messages on established connections\n\n");
        let _ = writeln!(
            md,
            "{} rounds x {} s per configuration, round-robin; cw-io with {} connections, \
             {}-byte requests and replies, one request in flight per connection, {threads} epoll \
             thread(s) per side. An operation (op) is one round trip: a request and its reply.\n",
            s.rounds, s.seconds, s.connections, s.message_bytes,
        );
        md += "| configuration | ops/s (mean ± sd) | vs untraced | MB/s | tracer CPU s / 1M ops \
               | peak RSS | events seen | events lost | I/O calls summarised | BPF ns / op |\n";
        md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for c in &self.configs {
            let _ = write!(
                md,
                "| {} | {} | {:.1}% | {:.1} ",
                c.label,
                c.rate.markdown(),
                c.rate_vs_untraced * 100.0,
                c.bytes_per_second / 1e6
            );
            match &c.tracer {
                None => md += "| – | – | – | – | – | – |\n",
                Some(t) => {
                    let count = |n: Option<u64>| n.map_or("–".into(), |n| thousands(n as f64));
                    let _ = writeln!(
                        md,
                        "| {:.3} | {} | {} | {} | {} | {:.0} |",
                        t.cpu_s_per_million_operations,
                        mib(t.totals.peak_rss_kib),
                        count(t.totals.events_seen),
                        t.totals.events_lost,
                        count(t.totals.io_summarised),
                        t.bpf_ns_per_operation
                    );
                }
            }
        }
        if let Some(untraced) = self.configs.iter().find(|c| c.config == Config::Untraced) {
            let r = untraced.rate;
            let _ = writeln!(
                md,
                "\nUntraced spread over rounds: sd / mean = {:.1}%, min {} max {} ops/s.",
                r.stddev / r.mean * 100.0,
                thousands(r.min),
                thousands(r.max)
            );
        }
        let columns: Vec<HookColumn<'_>> = self
            .configs
            .iter()
            .filter_map(|c| {
                let totals = &c.tracer.as_ref()?.totals;
                Some(HookColumn { label: c.label, totals, units: c.operations })
            })
            .collect();
        if !columns.is_empty() {
            md += "\nBPF program cost per hook: mean ns per hit (hits per op), program type. \
                   Hooks without hits are left out.\n\n";
            md += &hook_table(&columns, None);
        }
        md += &targets_markdown(&self.targets);
        md
    }
}

fn summarize(config: Config, rounds: &[RoundResult<IoResult>]) -> ConfigSummary {
    let mine: Vec<&RoundResult<IoResult>> = rounds.iter().filter(|r| r.config == config).collect();
    let rates: Vec<f64> = mine.iter().map(|r| r.workload.per_second).collect();
    let operations: u64 = mine.iter().map(|r| r.workload.operations).sum();
    let bytes_per_second =
        mine.iter().map(|r| r.workload.bytes_per_second).sum::<f64>() / mine.len().max(1) as f64;
    let samples: Vec<_> = mine.iter().filter_map(|r| r.tracer.as_ref()).collect();
    let per_operation = |n: f64| n / operations.max(1) as f64;
    let tracer = (!samples.is_empty()).then(|| {
        let totals = TracerTotals::of(config, &samples);
        TracerSummary {
            cpu_s_per_million_operations: per_operation(totals.cpu_s()) * 1e6,
            bpf_ns_per_operation: per_operation(totals.bpf_ns as f64),
            totals,
        }
    });
    ConfigSummary {
        config,
        label: config.label(),
        rounds: mine.len(),
        operations,
        rate: Spread::of(&rates),
        bytes_per_second,
        rate_vs_untraced: 0.0,
        tracer,
    }
}

fn targets(configs: &[ConfigSummary]) -> Vec<Target> {
    let mut targets = Vec::new();
    for c in configs {
        let Some(t) = &c.tracer else { continue };
        let issue = match c.config {
            Config::ConnwatchRaw => " (issue 3)",
            Config::ConnwatchWatch => " (issue 4)",
            _ => "",
        };
        let r = c.rate_vs_untraced;
        targets.push(Target {
            target: format!("keeps >= {THROUGHPUT_TARGET} of the untraced throughput{issue}"),
            config: c.label,
            value: r,
            met: r >= THROUGHPUT_TARGET,
        });
        let lost = t.totals.events_lost;
        targets.push(Target {
            target: "loses 0 events".into(),
            config: c.label,
            value: lost as f64,
            met: lost == 0,
        });
    }
    targets
}
