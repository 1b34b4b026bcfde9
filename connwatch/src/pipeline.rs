//! The loop every command runs: drain the ring buffers when the kernel wakes us or the drain
//! timer fires, hand the events to the command, and stop on the deadline, SIGINT or SIGTERM.
//! Where the command's correlator threads read the ring buffers themselves, only the timer
//! runs here: it ticks the command.

use std::{
    future::poll_fn,
    io,
    os::fd::OwnedFd,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    decode::Event,
    sinks::clock::monotonic_ns,
    tracer::{POLL_BATCH, Tracer},
};

/// How often the ring buffer is drained when the kernel has not woken us (it wakes userspace
/// only once a quarter of the buffer is full). Bounds the delay of a lone event.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// What a command does with the stream.
pub trait Consumer {
    /// One drained batch, in the order the kernel delivered it. The consumer may take the
    /// events (the batch is cleared before the next drain either way).
    fn events(&mut self, events: &mut Vec<Event>) -> io::Result<()>;

    /// After every drain: the current CLOCK_MONOTONIC time and the kernel's loss count so far.
    fn tick(&mut self, _now_ns: u64, _lost_total: u64) -> io::Result<()> {
        Ok(())
    }

    /// After every drain, with the tracer itself: for consumers that export its counters.
    fn account(&mut self, _tracer: &Tracer) {}

    /// Whether the command has what it came for (the stream then ends as on a signal).
    fn done(&self) -> bool {
        false
    }
}

/// Streams until the deadline or a signal, then detaches every program and drains what is
/// left. An output error (stdout closed) ends the stream early and is returned.
pub async fn run(
    tracer: &mut Tracer,
    duration: Option<Duration>,
    consumer: &mut dyn Consumer,
) -> io::Result<()> {
    let outcome = stream(tracer, duration, consumer).await;
    tracer.detach();
    let last = drain(tracer, &mut Vec::new(), consumer);
    outcome.and(last)
}

async fn stream(
    tracer: &mut Tracer,
    duration: Option<Duration>,
    consumer: &mut dyn Consumer,
) -> io::Result<()> {
    // Duplicates of the fds of the ring buffers read here (none where the correlator threads
    // read them): readiness without borrowing the tracer.
    let mut rings = Vec::new();
    if tracer.reads_rings() {
        for fd in tracer.ring_fds() {
            // SAFETY: the AsyncFd owns this duplicate; nothing else closes or replaces it.
            rings.push(unsafe { AsyncFd::register(fd.try_clone_to_owned()?)? });
        }
    }
    let mut tick = interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut events = Vec::new();
    loop {
        tokio::select! {
            woken = poll_fn(|cx| poll_woken(&rings, cx)) => woken?,
            _ = tick.tick() => {}
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = &mut deadline, if duration.is_some() => return Ok(()),
        }
        drain(tracer, &mut events, consumer)?;
        if consumer.done() {
            return Ok(());
        }
    }
}

/// Ready once the kernel has woken any of `rings` (their readiness cleared).
fn poll_woken(rings: &[AsyncFd<OwnedFd>], cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    for ring in rings {
        match ring.poll_read_ready(cx) {
            Poll::Ready(Ok(mut ready)) => {
                ready.clear_ready();
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// Hands everything queued to the consumer, one bounded batch at a time.
fn drain(
    tracer: &mut Tracer,
    events: &mut Vec<Event>,
    consumer: &mut dyn Consumer,
) -> io::Result<()> {
    loop {
        events.clear();
        let taken = tracer.poll(events);
        consumer.events(events)?;
        if taken < POLL_BATCH {
            break;
        }
    }
    consumer.tick(monotonic_ns(), tracer.lost_total())?;
    consumer.account(tracer);
    Ok(())
}
