//! `connwatch trace`: stream every event until a deadline or a signal.

use std::{
    io::{self, BufWriter},
    time::Instant,
};

use anyhow::Context as _;

use crate::{
    cli::TraceArgs,
    decode::Event,
    pipeline::{self, Consumer},
    sinks::{HumanSink, JsonSink, Sink, WallClock},
    tracer::Tracer,
};

pub async fn run(args: &TraceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tracer = Tracer::start(&args.load_options())?;
    let mut sink = output(args.common.json, true);
    let outcome = match sink.ready(&tracer.ready()) {
        Ok(()) => {
            pipeline::run(&mut tracer, args.common.duration, &mut Printer(sink.as_mut())).await
        }
        Err(e) => Err(e),
    };
    let summary = tracer.summary(started.elapsed());
    eprintln!("{summary}");
    // stdout may be gone (`| head`); the summary above already reached stderr.
    let _ = sink.summary(&summary);
    quiet_broken_pipe(outcome).context("writing events to stdout")
}

/// Human or JSON Lines output on a buffered stdout, for events or for findings.
pub fn output(json: bool, events: bool) -> Box<dyn Sink> {
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    if json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(HumanSink::new(stdout, WallClock::now(), events))
    }
}

/// A reader that went away (`| head`) ends the run normally.
pub fn quiet_broken_pipe(outcome: io::Result<()>) -> io::Result<()> {
    match outcome {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

struct Printer<'a>(&'a mut dyn Sink);

impl Consumer for Printer<'_> {
    fn events(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        for event in events.iter() {
            self.0.event(event)?;
        }
        self.0.flush()
    }
}
