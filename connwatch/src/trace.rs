//! `connwatch trace`: stream the kernel's TCP events until a deadline or a signal.

use std::{
    io::{self, BufWriter, Write},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    cli::TraceArgs,
    decode::Event,
    sinks::{HumanSink, JsonSink, Sink, WallClock},
    tracer::Tracer,
};

/// How often the ring buffer is drained when the kernel has not woken us (it wakes userspace
/// only once a quarter of the buffer is full). Bounds the delay of a lone event.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

pub async fn run(args: &TraceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tracer = Tracer::start(&args.load_options())?;
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(HumanSink::new(stdout, WallClock::now()))
    };
    let outcome = match sink.ready(&tracer.ready()) {
        Ok(()) => stream(&mut tracer, sink.as_mut(), args.duration).await,
        Err(e) => Err(e),
    };
    tracer.detach();
    let mut events = Vec::new();
    let last = forward(&mut tracer, &mut events, sink.as_mut());

    let summary = tracer.summary(started.elapsed());
    eprintln!("{summary}");
    // stdout may be gone (`| head`); the summary above already reached stderr.
    let _ = sink.summary(&summary);
    match outcome.and(last) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing events to stdout"),
    }
}

/// Forwards events until the deadline, SIGINT or SIGTERM.
async fn stream(
    tracer: &mut Tracer,
    sink: &mut dyn Sink,
    duration: Option<Duration>,
) -> io::Result<()> {
    // A duplicate of the ring buffer's fd: readiness without borrowing the tracer.
    let ring_fd = tracer.ring_fd().try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns this duplicate; nothing else closes or replaces it.
    let ring = unsafe { AsyncFd::register(ring_fd)? };
    let mut tick = interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut events = Vec::new();
    loop {
        tokio::select! {
            ready = ring.readable() => ready?.clear_ready(),
            _ = tick.tick() => {}
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = &mut deadline, if duration.is_some() => return Ok(()),
        }
        forward(tracer, &mut events, sink)?;
    }
}

fn forward(tracer: &mut Tracer, events: &mut Vec<Event>, sink: &mut dyn Sink) -> io::Result<()> {
    events.clear();
    tracer.poll(events);
    for event in events.iter() {
        sink.event(event)?;
    }
    sink.flush()
}

impl<W: Write> Drop for HumanSink<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
