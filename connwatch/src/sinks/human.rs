//! One aligned line per event, for people watching a terminal.

use std::io::{self, Write};

use super::{Ready, Sink, Summary, WallClock};
use crate::decode::Event;

pub struct HumanSink<W: Write> {
    out: W,
    clock: WallClock,
}

impl<W: Write> HumanSink<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Self { out, clock }
    }
}

impl<W: Write> Sink for HumanSink<W> {
    fn ready(&mut self, ready: &Ready) -> io::Result<()> {
        for (hook, reason) in &ready.degraded {
            eprintln!(
                "connwatch: warning: optional hook {hook} unavailable, owners may stay unknown longer: {reason}"
            );
        }
        eprintln!("connwatch: tracing with {} hooks; Ctrl-C to stop", ready.hooks.len());
        writeln!(
            self.out,
            "{:<12} {:>7} {:<15} {:<22} {:<22} {:<10} DETAIL",
            "TIME", "PID", "COMM", "LOCAL", "REMOTE", "EVENT"
        )
    }

    fn event(&mut self, e: &Event) -> io::Result<()> {
        let (pid, comm) = match &e.owner {
            Some(owner) => (owner.pid.to_string(), owner.comm.as_str()),
            None => ("-".to_string(), "?"),
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

    fn summary(&mut self, _summary: &Summary) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
