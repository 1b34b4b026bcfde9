//! The end-of-run account: what was seen, what was lost, what could not be decoded.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde_json::{Value, json};

use crate::probes::cost::ProgramCost;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub duration: Duration,
    /// Events delivered, by type.
    pub events: BTreeMap<&'static str, u64>,
    /// Ring-buffer records they came in (a record may carry several: a socket's closing state
    /// changes, a change to ESTABLISHED with the next record).
    pub records: u64,
    /// Events the kernel could not queue (ring buffer full), by type; every type listed.
    pub lost: BTreeMap<&'static str, u64>,
    /// Hook hits the kernel skipped (a BPF program was already running on that CPU), by hook;
    /// only hooks with skips. Each is an event lost.
    pub skipped: BTreeMap<String, u64>,
    /// Records that failed decoding.
    pub malformed: u64,
    /// Each hook's program runs and run time, when the kernel keeps them
    /// (`kernel.bpf_stats_enabled=1`); read before the programs are detached.
    pub program_cost: Option<BTreeMap<String, ProgramCost>>,
    /// Ready entries of epoll_wait/poll/select results beyond the per-call bound (not reported).
    pub readiness_unexamined: u64,
    /// recv/send/readiness calls folded into summarising records (reported as `calls`).
    pub io_summarised: u64,
    /// Ready entries not examined because their process held no socket needing attention
    /// (`watch`, `agent`; always 0 for `trace`).
    pub readiness_not_needed: u64,
    /// `watch` only: findings by kind (every kind listed) and sockets evicted from tracking.
    pub watch: Option<WatchSummary>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSummary {
    pub findings: BTreeMap<&'static str, u64>,
    pub sockets_evicted: u64,
    /// Timer findings not reported because events were lost while they ripened.
    pub findings_withheld: u64,
}

impl Summary {
    pub fn total_events(&self) -> u64 {
        self.events.values().sum()
    }

    /// Events lost: no room in the ring buffer, or skipped by the kernel.
    pub fn total_lost(&self) -> u64 {
        self.lost.values().sum::<u64>() + self.skipped.values().sum::<u64>()
    }

    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "type": "summary",
            "duration_s": self.duration.as_secs_f64(),
            "events": self.events,
            "records": self.records,
            "lost": self.lost,
            "skipped": self.skipped,
            "malformed": self.malformed,
            "readiness_unexamined": self.readiness_unexamined,
            "io_summarised": self.io_summarised,
            "readiness_not_needed": self.readiness_not_needed,
        });
        if let Some(costs) = &self.program_cost {
            let costs: BTreeMap<_, _> = costs
                .iter()
                .map(|(hook, c)| {
                    (hook, json!({"mechanism": c.mechanism, "runs": c.runs, "run_ns": c.run_ns}))
                })
                .collect();
            value["program_cost"] = json!(costs);
        }
        if let Some(watch) = &self.watch {
            value["findings"] = json!(watch.findings);
            value["sockets_evicted"] = json!(watch.sockets_evicted);
            value["findings_withheld"] = json!(watch.findings_withheld);
        }
        value
    }
}

fn counts<K: fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connwatch: {} events from {} records in {:.1} s ({}); lost {} ({}; skipped by \
             the kernel: {}); malformed {}; readiness unexamined {}; I/O calls summarised {}; \
             readiness not needed {}",
            self.total_events(),
            self.records,
            self.duration.as_secs_f64(),
            counts(&self.events),
            self.total_lost(),
            counts(&self.lost),
            counts(&self.skipped),
            self.malformed,
            self.readiness_unexamined,
            self.io_summarised,
            self.readiness_not_needed
        )?;
        if let Some(watch) = &self.watch {
            let total: u64 = watch.findings.values().sum();
            write!(
                f,
                "; {total} findings ({}); sockets evicted {}; findings withheld for lost events {}",
                counts(&watch.findings),
                watch.sockets_evicted,
                watch.findings_withheld
            )?;
        }
        Ok(())
    }
}
