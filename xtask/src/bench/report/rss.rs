//! The agent memory section: connwatch watch's RSS with every held socket tracked.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Target, TracerTotals, mib, targets_markdown, thousands};
use crate::bench::{
    config::Config,
    rss::{AtRest, RssResult},
};

/// Peak RSS connwatch watch should stay within while tracking 65,536 sockets (issue 9; 64 MiB
/// before it). 16 MiB of it is the default 8 MiB ring buffer, which the process maps twice.
const PEAK_RSS_TARGET_MIB: f64 = 48.0;

#[derive(Serialize)]
pub struct RssSection {
    result: RssResult,
    /// Sockets held (both ends of every connection).
    sockets: u64,
    peak_rss_kib: u64,
    /// (settled VmRSS - VmRSS at ready) / sockets.
    rss_growth_bytes_per_socket: f64,
    /// Events seen and lost, findings and sockets evicted, from connwatch's summary.
    totals: TracerTotals,
    targets: Vec<Target>,
}

impl RssSection {
    pub fn new(result: RssResult) -> Self {
        let sockets = result.established.sockets;
        let peak_rss_kib = result.tracer.peak_rss_kib.max(result.settled.peak_kib);
        let growth_kib = result.settled.rss_kib.saturating_sub(result.at_ready.rss_kib);
        let peak_mib = peak_rss_kib as f64 / 1024.0;
        let label = Config::ConnwatchWatch.label();
        Self {
            sockets,
            peak_rss_kib,
            rss_growth_bytes_per_socket: (growth_kib * 1024) as f64 / sockets.max(1) as f64,
            totals: TracerTotals::of(Config::ConnwatchWatch, &[&result.tracer]),
            targets: vec![Target {
                target: format!(
                    "peak RSS <= {PEAK_RSS_TARGET_MIB:.0} MiB with {} sockets tracked",
                    thousands(sockets as f64)
                ),
                config: label,
                value: peak_mib,
                met: peak_mib <= PEAK_RSS_TARGET_MIB,
            }],
            result,
        }
    }

    pub fn markdown(&self) -> String {
        let r = &self.result;
        let e = &r.established;
        let mut md = String::from("#### Agent memory: every socket tracked\n\n");
        let _ = writeln!(
            md,
            "`connwatch watch --json` (default `--max-sockets` 65,536) started first; after its \
             `ready` line, cw-hold opened {} loopback connections ({} sockets, in {} process(es), \
             {} listeners) and held them. Memory was read once every connection was established \
             on both sides and connwatch had settled (idle, VmRSS unchanged, for 1 s); it caught \
             up when that quiet second began.\n",
            thousands(e.connections as f64),
            thousands(self.sockets as f64),
            e.processes,
            e.listeners
        );
        md += "| sockets held | established in | caught up after | RSS at ready | RSS settled \
               | peak RSS (VmHWM) | RSS growth / socket | events seen | events lost | sockets evicted | findings |\n";
        md += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
        let _ = writeln!(
            md,
            "| {} | {:.2} s | {:.2} s | {} | {} | {} | {:.0} B | {} | {} | {} | {} |",
            thousands(self.sockets as f64),
            e.elapsed_s,
            r.caught_up_s,
            mib(r.at_ready.rss_kib),
            mib(r.settled.rss_kib),
            mib(self.peak_rss_kib),
            self.rss_growth_bytes_per_socket,
            thousands(self.totals.events_seen.unwrap_or(0) as f64),
            thousands(self.totals.events_lost as f64),
            thousands(self.totals.sockets_evicted.unwrap_or(0) as f64),
            self.totals.findings_markdown()
        );
        let _ = writeln!(
            md,
            "\nThe held sockets alone fill `--max-sockets`: cw-hold's {} listener(s) and any other \
             TCP socket with events on the host during the run each push a held one out \
             (`sockets evicted`).",
            e.listeners
        );
        let per_s = |a: &AtRest| a.cpu.total_s() * 1000.0 / a.window_s;
        let (watch, agent) = (&r.idle_watch, &r.idle_agent);
        let _ = writeln!(
            md,
            "\nAt rest, nothing else happening, CPU over {:.0} s: `connwatch watch` once settled, \
             every held socket tracked, {:.1} ms per second ({:.2}% of one CPU), its liveness \
             audit's sweeps included; then `connwatch agent` (its defaults) started beside the \
             same connections (held before it started, so untracked), {:.1} ms per second \
             ({:.2}%), two looks at every socket on the host included (`--inventory-interval`), \
             RSS {}.",
            watch.window_s,
            per_s(watch),
            per_s(watch) / 10.0,
            per_s(agent),
            per_s(agent) / 10.0,
            mib(agent.rss_kib)
        );
        if self.totals.events_lost > 0 {
            md += "\nEvents were lost, so some sockets may not have been tracked: the RSS \
                   understates the fully tracked case.\n";
        }
        md += &targets_markdown(&self.targets);
        md
    }
}
