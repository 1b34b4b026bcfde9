//! connwatch's correlator fed by a live session, as `connwatch watch` runs it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use connwatch::{
    correlate::{Correlator, DEFAULT_MAX_SOCKETS, Finding, Kind, Shards, Tap, Thresholds},
    decode::Event,
    inventory::socket_settings::PidfdProber,
    probes::{Filters, LoadOptions},
    sinks::clock::monotonic_ns,
};

use crate::{Session, session::EVENT_TIMEOUT};

/// Short graces, so timer findings come within the tests' patience.
pub const TEST_THRESHOLDS: Thresholds = Thresholds {
    close_wait_grace_ns: 1_000_000_000,
    reset_grace_ns: 1_000_000_000,
    retransmits: 3,
    // The liveness audit needs a prober: only `Watching::auditing` runs it.
    idle_grace_ns: 300_000_000_000,
};

/// As `watch` runs them: sockets can be asked for their settings (the liveness audit,
/// half-open-write's give-up time).
fn correlators(threads: usize, thresholds: Thresholds) -> Shards {
    Shards::new(threads, DEFAULT_MAX_SOCKETS, |each| {
        Correlator::new(thresholds, each).with_prober(Box::new(PidfdProber))
    })
}

pub struct Watching {
    pub session: Session,
    pub correlator: Shards,
    thresholds: Thresholds,
    options: LoadOptions,
    pub findings: Vec<Finding>,
    fed: usize,
    /// With several correlator threads, each reads its own ring buffer and the events it
    /// reads are copied here (for the tests' own checks), not fed from this thread.
    read_by_shards: Option<Arc<Mutex<Vec<Event>>>>,
}

/// Copies every event a correlator thread reads.
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Tap for Recorder {
    fn tap(&mut self, event: &mut Event) {
        self.0.lock().expect("recorded events").push(event.clone());
    }
}

impl Watching {
    /// Watches the sockets of these processes.
    pub fn start(pids: &[u32]) -> Self {
        Self::with_filters(Filters { pids: pids.to_vec(), ..Filters::default() })
    }

    /// Watches every connection to or from `port`, whichever process holds it.
    pub fn on_port(port: u16) -> Self {
        Self::with_filters(Filters { ports: vec![port], ..Filters::default() })
    }

    /// Watches every connection to or from these ports with `connwatch watch`'s own defaults,
    /// as a user runs it against real software.
    pub fn as_deployed(ports: &[u16]) -> Self {
        let filters = Filters { ports: ports.to_vec(), ..Filters::default() };
        Self::with(filters, Thresholds::default())
    }

    /// Watches `port` with a short liveness audit grace: connections idle for `idle_grace_s`
    /// are asked for their settings.
    pub fn auditing(port: u16, idle_grace_s: u64) -> Self {
        let filters = Filters { ports: vec![port], ..Filters::default() };
        let thresholds =
            Thresholds { idle_grace_ns: idle_grace_s * 1_000_000_000, ..TEST_THRESHOLDS };
        Self::with(filters, thresholds)
    }

    /// Feeds events until the liveness audit has asked `sockets` sockets for their settings.
    pub fn wait_for_audits(&mut self, sockets: u64) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.correlator.audited() < sockets {
            assert!(Instant::now() < deadline, "the liveness audit never asked {sockets} sockets");
            self.session.tracer.wait(Duration::from_millis(100));
            self.pump(monotonic_ns());
        }
    }

    fn with_filters(filters: Filters) -> Self {
        Self::with(filters, TEST_THRESHOLDS)
    }

    fn with(filters: Filters, thresholds: Thresholds) -> Self {
        let options = LoadOptions {
            filters,
            healthy_readiness: false,
            closing_together: true,
            opening_in_birth: true,
            established_carried: true,
            ..LoadOptions::default()
        };
        Self {
            session: Session::start(options.clone()),
            correlator: correlators(1, thresholds),
            thresholds,
            options,
            findings: Vec::new(),
            fed: 0,
            read_by_shards: None,
        }
    }

    /// Joins events on `threads` correlator threads (`connwatch watch --correlator-threads`),
    /// each reading its own ring buffer where the kernel allows (the programs are loaded again
    /// with that many); elsewhere they share one, split on this thread.
    pub fn sharded(mut self, threads: usize) -> Self {
        assert_eq!(self.fed, 0, "sharded before any event is fed");
        self.correlator = correlators(threads, self.thresholds);
        let rings = connwatch::probes::ring_count(threads);
        if rings > 1 {
            drop(self.session);
            self.session = Session::start(LoadOptions { rings, ..self.options.clone() });
            let recorded = Arc::new(Mutex::new(Vec::new()));
            let rings = self.session.tracer.hand_over_rings();
            self.correlator.read_rings(rings, || Box::new(Recorder(Arc::clone(&recorded))));
            self.read_by_shards = Some(recorded);
        }
        self
    }

    /// Feeds new events and lets the correlator's timers run at `now`.
    fn pump(&mut self, now: u64) {
        if let Some(recorded) = &self.read_by_shards {
            // Each shard reads its ring buffer before it ticks.
            self.correlator.note_lost_total(monotonic_ns(), self.session.tracer.lost_total());
            self.findings.extend(self.correlator.tick(now));
            self.session.events.append(&mut recorded.lock().expect("recorded events"));
            self.fed = self.session.events.len();
            return;
        }
        self.session.tracer.poll(&mut self.session.events);
        self.findings.extend(self.correlator.ingest(&self.session.events[self.fed..]));
        self.fed = self.session.events.len();
        self.correlator.note_lost_total(monotonic_ns(), self.session.tracer.lost_total());
        self.findings.extend(self.correlator.tick(now));
    }

    /// Waits for a finding of `kind`, in real time.
    pub fn wait_for(&mut self, kind: Kind) -> Finding {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            self.pump(monotonic_ns());
            if let Some(found) = self.findings.iter().find(|f| f.kind == kind) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} finding; events:\n{}",
                self.session.dump()
            );
            self.session.tracer.wait(Duration::from_millis(50));
        }
    }

    /// Waits until an event matching `what` has arrived.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&[Event]) -> bool) {
        if self.read_by_shards.is_none() {
            self.session.wait_until(what, done);
            self.pump(monotonic_ns());
            return;
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            self.pump(monotonic_ns());
            if done(&self.session.events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; events:
{}",
                self.session.dump()
            );
            self.session.tracer.wait(Duration::from_millis(50));
        }
    }

    /// Runs `load` (a benchmark, a client) on another thread while feeding events, as
    /// `connwatch watch` drains its ring buffer while applications run; returns its result.
    pub fn during<T: Send>(&mut self, load: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let running = scope.spawn(load);
            while !running.is_finished() {
                self.session.tracer.wait(Duration::from_millis(50));
                self.pump(monotonic_ns());
            }
            running.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Feeds events until none has arrived for `QUIET`: the programs watched have finished
    /// what they were doing (their last closes and resets are in).
    pub fn quiesce(&mut self) {
        const QUIET: Duration = Duration::from_millis(1000);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut seen = self.session.events.len();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < QUIET {
            assert!(Instant::now() < deadline, "events never stopped arriving");
            self.session.tracer.wait(Duration::from_millis(100));
            self.pump(monotonic_ns());
            if self.session.events.len() != seen {
                seen = self.session.events.len();
                quiet_since = Instant::now();
            }
        }
    }

    /// Everything found once every timer has had a minute more to fire: the application's
    /// story is over, so waiting longer could change nothing.
    pub fn settle(&mut self) -> &[Finding] {
        self.pump(monotonic_ns() + 60_000_000_000);
        &self.findings
    }
}
