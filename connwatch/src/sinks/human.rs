//! One aligned line per event, for people watching a terminal.

use std::io::{self, Write};

use super::{Ready, Sink, Summary, WallClock};
use crate::{correlate::Finding, decode::Event};

pub struct HumanSink<W: Write> {
    out: W,
    clock: WallClock,
    /// Events (a table with a header) or findings (blocks).
    events: bool,
}

impl<W: Write> HumanSink<W> {
    /// A sink for `trace` (`events`) or `watch`.
    pub fn new(out: W, clock: WallClock, events: bool) -> Self {
        Self { out, clock, events }
    }
}

impl<W: Write> Sink for HumanSink<W> {
    fn ready(&mut self, ready: &Ready) -> io::Result<()> {
        for (hook, reason) in &ready.degraded {
            eprintln!("connwatch: warning: optional hook {hook} {reason}");
        }
        if !ready.uncounted_skips.is_empty() {
            eprintln!(
                "connwatch: warning: this kernel does not count the hits it skips on classic \
                 tracepoints ({} hooks; Linux 6.7 and later count them): events lost there go \
                 unreported",
                ready.uncounted_skips.len()
            );
        }
        let doing = if self.events { "tracing" } else { "watching for misjudged liveness" };
        eprintln!("connwatch: {doing} with {} hooks; Ctrl-C to stop", ready.hooks.len());
        if !self.events {
            return Ok(());
        }
        writeln!(
            self.out,
            "{:<12} {:>7} {:<15} {:<22} {:<22} {:<10} DETAIL",
            "TIME", "PID", "COMM", "LOCAL", "REMOTE", "EVENT"
        )
    }

    fn event(&mut self, e: &Event) -> io::Result<()> {
        let (pid, comm) = match &e.owner {
            Some(owner) => (owner.pid.to_string(), owner.comm.to_string()),
            None => ("-".to_string(), "?".to_string()),
        };
        writeln!(
            self.out,
            "{:<12} {:>7} {:<15} {:<22} {:<22} {:<10} {}",
            self.clock.time_of_day(e.ts_ns),
            pid,
            comm,
            e.local.to_string(),
            e.remote.to_string(),
            e.detail.type_name(),
            e.detail
        )
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        writeln!(self.out, "{}", super::findings::human_block(finding))
    }

    fn summary(&mut self, _summary: &Summary) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
