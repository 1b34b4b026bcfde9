//! `connwatch watch`: findings as they happen.

use std::{io, time::Instant};

use anyhow::Context as _;

use crate::{
    cli::WatchArgs,
    correlate::{Correlator, Kind, NoTap, Shards},
    decode::Event,
    inventory::socket_settings::PidfdProber,
    pipeline::{self, Consumer},
    probes::LoadOptions,
    sinks::{Sink, summary::WatchSummary},
    trace::{output, quiet_broken_pipe},
    tracer::Tracer,
};

pub async fn run(args: &WatchArgs) -> anyhow::Result<()> {
    let options = args.load_options();
    let thresholds = args.thresholds.thresholds();
    let max_sockets = args.thresholds.max_sockets;
    let correlators = Shards::new(args.correlator_count(), max_sockets, |each| {
        Correlator::new(thresholds, each).with_prober(Box::new(PidfdProber))
    });
    let mut sink = output(args.common.json, false);
    watch(&options, correlators, args.common.duration, sink.as_mut()).await
}

/// Runs the watcher on `sink` until the deadline or a signal; used by `watch` and `demo`.
pub async fn watch(
    options: &LoadOptions,
    correlators: Shards,
    duration: Option<std::time::Duration>,
    sink: &mut dyn Sink,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tracer = Tracer::start(options)?;
    let mut watcher = Watcher::new(correlators, sink);
    watcher.correlator.read_rings(tracer.hand_over_rings(), || Box::new(NoTap));
    let outcome = match watcher.sink.ready(&tracer.ready()) {
        Ok(()) => pipeline::run(&mut tracer, duration, &mut watcher).await,
        Err(e) => Err(e),
    };
    let mut summary = tracer.summary(started.elapsed());
    summary.watch = Some(watcher.summary());
    eprintln!("{summary}");
    let _ = watcher.sink.summary(&summary);
    quiet_broken_pipe(outcome).context("writing findings to stdout")
}

/// What the correlators found, for the `summary` line: every kind listed.
pub fn summary_of(correlator: &Shards) -> WatchSummary {
    let reported = correlator.reported();
    WatchSummary {
        findings: Kind::ALL
            .iter()
            .map(|k| (k.name(), reported.get(k).copied().unwrap_or(0)))
            .collect(),
        sockets_evicted: correlator.evicted(),
        findings_withheld: correlator.withheld(),
    }
}

/// Feeds the correlator and reports what it finds.
pub struct Watcher<'a> {
    pub correlator: Shards,
    /// Every finding reported: its kind and process.
    pub found: Vec<(Kind, Option<u32>)>,
    sink: &'a mut dyn Sink,
}

impl<'a> Watcher<'a> {
    pub fn new(correlator: impl Into<Shards>, sink: &'a mut dyn Sink) -> Self {
        Self { correlator: correlator.into(), found: Vec::new(), sink }
    }

    pub fn summary(&self) -> WatchSummary {
        summary_of(&self.correlator)
    }
}

impl Watcher<'_> {
    fn report(&mut self, finding: &crate::correlate::Finding) -> io::Result<()> {
        self.found.push((finding.kind, finding.owner.as_ref().map(|o| o.pid)));
        self.sink.finding(finding)
    }
}

impl Consumer for Watcher<'_> {
    fn events(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        for finding in self.correlator.ingest_taken(events) {
            self.report(&finding)?;
        }
        Ok(())
    }

    fn tick(&mut self, now_ns: u64, lost_total: u64) -> io::Result<()> {
        self.correlator.note_lost_total(now_ns, lost_total);
        for finding in self.correlator.tick(now_ns) {
            self.report(&finding)?;
        }
        self.sink.flush()
    }
}
