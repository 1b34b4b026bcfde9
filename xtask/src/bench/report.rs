//! The report: one section per workload that ran, rendered as markdown (stdout) and JSON
//! (target/bench/report.json), and the aggregates the sections share.

mod churn;
mod io;
mod rss;

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

pub use self::{
    churn::{ChurnSection, ChurnSettings},
    io::{IoSection, IoSettings},
    rss::RssSection,
};
use super::{
    config::{Config, Tools},
    tracer::TracerSample,
};

/// The machine, as found when the measurements start.
#[derive(Serialize)]
pub struct Host {
    kernel: String,
    cpus: usize,
    /// /proc/loadavg before the first workload: other load makes every number noisier.
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
    tracer_commands: BTreeMap<&'static str, Vec<String>>,
    /// Load average when the last workload had finished.
    load_average_at_end: String,
    churn: Option<ChurnSection>,
    io: Option<IoSection>,
    rss: Option<RssSection>,
}

impl Report {
    pub fn new(
        header: (String, String, Host),
        tools: &Tools,
        churn: Option<ChurnSection>,
        io: Option<IoSection>,
        rss: Option<RssSection>,
    ) -> anyhow::Result<Self> {
        let (command, date, host) = header;
        Ok(Self {
            command,
            date,
            host,
            tracer_commands: Config::ALL
                .iter()
                .filter_map(|c| Some((c.label(), c.tracer_argv(tools)?)))
                .collect(),
            load_average_at_end: Host::current()?.load_average,
            churn,
            io,
            rss,
        })
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "### connwatch bench: kernel {}, {} CPUs, {}\n",
            self.host.kernel, self.host.cpus, self.date
        );
        let _ = writeln!(
            md,
            "`{}`. Load average at start: {}; at end: {}.",
            self.command, self.host.load_average, self.load_average_at_end
        );
        if let Some(churn) = &self.churn {
            md += "\n";
            md += &churn.markdown();
        }
        if let Some(io) = &self.io {
            md += "\n";
            md += &io.markdown();
        }
        if let Some(rss) = &self.rss {
            md += "\n";
            md += &rss.markdown();
        }
        md
    }
}

/// A goal a number is compared with; reported, never asserted.
#[derive(Serialize)]
pub struct Target {
    pub target: String,
    pub config: &'static str,
    pub value: f64,
    pub met: bool,
}

pub fn targets_markdown(targets: &[Target]) -> String {
    let mut md = String::from("\nTargets (reported, not asserted):\n\n");
    for t in targets {
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

/// Mean, sample standard deviation and extremes of per-round rates.
#[derive(Clone, Copy, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
            / (values.len().max(2) - 1) as f64;
        Self {
            mean,
            stddev: variance.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(0.0, f64::max),
        }
    }

    /// "mean ± sd" with thousands separators.
    pub fn markdown(self) -> String {
        format!("{} ± {}", thousands(self.mean), thousands(self.stddev))
    }
}

/// What one tracer configuration did, summed over its rounds.
#[derive(Serialize)]
pub struct TracerTotals {
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// CPU the bench spent reading the tracer's stdout (in the bench, not the tracer).
    pub reader_cpu_s: f64,
    /// Highest VmHWM over the rounds.
    pub peak_rss_kib: u64,
    /// Events the tracer reported (connwatch's summary; tcpstates does not count them).
    pub events_seen: Option<u64>,
    /// The ring-buffer records they came in (connwatch's summary).
    pub records_seen: Option<u64>,
    /// connwatch: its summary's `lost`; tcpstates: its `lost N events` messages.
    pub events_lost: u64,
    /// connwatch: recv/send/readiness calls folded in the kernel into summarising records.
    pub io_summarised: Option<u64>,
    /// connwatch watch: findings by kind.
    pub findings: Option<BTreeMap<String, u64>>,
    /// connwatch watch: sockets dropped from tracking because --max-sockets was reached.
    pub sockets_evicted: Option<u64>,
    /// BPF program run time during the workloads (spent in the workload's context).
    pub bpf_ns: u64,
    pub programs: Vec<ProgramTotal>,
    /// connwatch's `ready` line: the attach mechanism of every hook (first round).
    pub hooks_attached: Option<Value>,
}

/// One program type on one hook, summed over the rounds.
#[derive(Serialize)]
pub struct ProgramTotal {
    pub hook: String,
    pub prog_type: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub ns_per_hit: Option<f64>,
}

impl TracerTotals {
    pub fn of(config: Config, samples: &[&TracerSample]) -> Self {
        let connwatch = config.is_connwatch();
        let watch = config == Config::ConnwatchWatch;
        let sum =
            |key: &str| -> u64 { samples.iter().map(|s| summary_total(&s.last_line, key)).sum() };
        let events_lost = if connwatch {
            sum("lost") + sum("skipped")
        } else {
            samples.iter().map(|s| s.lost_on_stderr).sum()
        };

        let mut findings = BTreeMap::new();
        for sample in samples {
            let counts = sample.last_line.get("findings").and_then(Value::as_object);
            for (kind, count) in counts.into_iter().flatten() {
                *findings.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
            }
        }

        // Hits and time per hook. A raw tracepoint's understudy runs on every hit of its lead's
        // hook: its time counts, its runs are the same hits again (the most runs of any
        // program on a hook in one sample are that hook's hits).
        let mut by_hook: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for sample in samples {
            let mut in_sample: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
            for program in &sample.programs {
                let hook = program
                    .hook
                    .clone()
                    .unwrap_or_else(|| format!("(unattached #{})", program.prog_id));
                let entry = in_sample.entry((hook, program.prog_type.clone())).or_default();
                entry.0 = entry.0.max(program.run_cnt);
                entry.1 += program.run_time_ns;
            }
            for (key, (run_cnt, run_time_ns)) in in_sample {
                let entry = by_hook.entry(key).or_default();
                entry.0 += run_cnt;
                entry.1 += run_time_ns;
            }
        }
        let programs: Vec<ProgramTotal> = by_hook
            .into_iter()
            .map(|((hook, prog_type), (run_cnt, run_time_ns))| ProgramTotal {
                hook,
                prog_type,
                run_cnt,
                run_time_ns,
                ns_per_hit: (run_cnt > 0).then(|| run_time_ns as f64 / run_cnt as f64),
            })
            .collect();

        Self {
            cpu_user_s: samples.iter().map(|s| s.cpu.user_s).sum(),
            cpu_sys_s: samples.iter().map(|s| s.cpu.sys_s).sum(),
            reader_cpu_s: samples.iter().map(|s| s.reader_cpu.total_s()).sum(),
            peak_rss_kib: samples.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0),
            events_seen: connwatch.then(|| sum("events")),
            records_seen: connwatch.then(|| sum("records")),
            events_lost,
            io_summarised: connwatch.then(|| sum("io_summarised")),
            findings: watch.then_some(findings),
            sockets_evicted: watch.then(|| sum("sockets_evicted")),
            bpf_ns: programs.iter().map(|p| p.run_time_ns).sum(),
            programs,
            hooks_attached: connwatch
                .then(|| samples.first()?.first_line.get("hooks").cloned())
                .flatten(),
        }
    }

    pub fn cpu_s(&self) -> f64 {
        self.cpu_user_s + self.cpu_sys_s
    }

    /// "kind N, kind N" for the findings reported, or "none".
    pub fn findings_markdown(&self) -> String {
        let found: Vec<String> = self
            .findings
            .iter()
            .flatten()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        if found.is_empty() { "none".into() } else { found.join(", ") }
    }
}

/// A number in a connwatch summary line, or the sum of an object of numbers (`events`, `lost`).
fn summary_total(summary: &Value, key: &str) -> u64 {
    match summary.get(key) {
        Some(Value::Object(map)) => map.values().filter_map(Value::as_u64).sum(),
        Some(value) => value.as_u64().unwrap_or(0),
        None => 0,
    }
}

/// One tracer's column of a per-hook cost table: hits are divided by `units` (connections,
/// operations) of the same configuration.
pub struct HookColumn<'a> {
    pub label: &'static str,
    pub totals: &'a TracerTotals,
    pub units: u64,
}

/// A last column of a per-hook table: its header and its cell for a hook.
pub struct ExtraColumn<'a> {
    pub header: &'a str,
    pub cell: &'a dyn Fn(&str) -> String,
}

/// One row per hook that some column hit; cells are "mean ns per hit (hits per unit) type".
pub fn hook_table(columns: &[HookColumn<'_>], extra: Option<ExtraColumn<'_>>) -> String {
    // Hooks nothing hit (errors, resets on a clean run) would only add empty rows.
    let mut hooks: Vec<&str> = columns
        .iter()
        .flat_map(|c| &c.totals.programs)
        .filter(|p| p.run_cnt > 0)
        .map(|p| p.hook.as_str())
        .collect();
    hooks.sort_unstable();
    hooks.dedup();

    let mut md = String::from("| hook |");
    for c in columns {
        let _ = write!(md, " {} |", c.label);
    }
    if let Some(extra) = &extra {
        let _ = write!(md, " {} |", extra.header);
    }
    md += "\n|---|";
    md += &"---:|".repeat(columns.len() + usize::from(extra.is_some()));
    md += "\n";
    for hook in hooks {
        let _ = write!(md, "| {hook} |");
        for c in columns {
            // "–" also for a program this column has but never ran.
            let hit = c.totals.programs.iter().find(|p| p.hook == hook && p.run_cnt > 0);
            let cell = hit.map_or("–".into(), |p| {
                let per_unit = p.run_cnt as f64 / c.units.max(1) as f64;
                let ns = p.run_time_ns as f64 / p.run_cnt as f64;
                format!("{ns:.0} ns ({per_unit:.1}) {}", short_type(&p.prog_type))
            });
            let _ = write!(md, " {cell} |");
        }
        if let Some(extra) = &extra {
            let _ = write!(md, " {} |", (extra.cell)(hook));
        }
        md += "\n";
    }
    md
}

fn short_type(prog_type: &str) -> &str {
    match prog_type {
        "raw_tracepoint" => "raw_tp",
        "tracepoint" => "tp",
        other => other,
    }
}

/// 61234.5 -> "61,235".
pub fn thousands(value: f64) -> String {
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

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
