//! `connwatch agent`: the always-on node agent. The same pipeline as `watch`, plus Prometheus
//! metrics on `/metrics`, attribution of every finding to its process's cgroup (container,
//! pod, unit), a startup inventory of the sockets that predate it, de-duplicated finding logs,
//! and no capability kept that it no longer needs.

pub mod caps;
pub mod http;
mod inventory_feed;
pub mod report;
mod series;
mod tap;

use std::{
    collections::HashMap,
    io::{self, Write as _},
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard},
    time::Instant,
};

use anyhow::Context as _;

use self::{
    inventory_feed::{InventoryFeed, Update},
    report::{FindingLog, Line},
    tap::{AgentTap, Joins, Labeler},
};
use crate::{
    cli::AgentArgs,
    correlate::{Correlator, Finding, Kind, Shards, Tap},
    decode::{Event, SockId},
    pipeline::{self, Consumer},
    sinks::{
        Sink,
        clock::monotonic_ns,
        metrics::{FindingLabels, HookLabels, Metrics, StateLabels, TypeLabels},
        summary::WatchSummary,
    },
    trace::{output, quiet_broken_pipe},
    tracer::Tracer,
};

pub async fn run(args: &AgentArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Bound first: a taken address fails before anything is loaded.
    let listener = http::bind(args.listen).await?;
    let options = args.watch.load_options();
    let mut tracer = Tracer::start(&options)?;
    // What predates the agent, read once the probes see everything that happens after.
    let feed = InventoryFeed::start(args.inventory_interval)?;
    caps::keep_only(&[]).context("dropping capabilities after attaching")?;
    let (metrics, registry) = Metrics::new(options.ring_bytes_total());
    let server = tokio::spawn(http::serve(listener, registry));
    let mut sink = output(args.watch.common.json, false);
    let thresholds = args.watch.thresholds.thresholds();
    let mut correlator =
        Shards::new(args.watch.correlator_count(), args.watch.thresholds.max_sockets, |each| {
            Correlator::new(thresholds, each).with_prober(Box::new(feed.prober()))
        });
    let labeler = Arc::new(Mutex::new(Labeler::new(args.max_label_values)));
    let joins = Arc::new(RwLock::new(Joins::default()));
    let make_tap = || AgentTap::new(metrics.clone(), Arc::clone(&labeler), Arc::clone(&joins));
    correlator.read_rings(tracer.hand_over_rings(), || Box::new(make_tap()));
    let mut agent = Agent {
        correlator,
        tap: make_tap(),
        ended: Vec::new(),
        json: args.watch.common.json,
        sink: sink.as_mut(),
        metrics: metrics.clone(),
        labeler: Arc::clone(&labeler),
        joins: Arc::clone(&joins),
        problems: HashMap::new(),
        log: FindingLog::default(),
        feed,
        filters: options.filters.clone(),
        counted: Counted::default(),
    };
    let mut ready = tracer.ready();
    ready.degraded.extend(agent.feed.problem().map(|p| ("inventory".to_string(), p)));
    let outcome = match agent.sink.ready(&ready).and_then(|()| agent.sink.flush()) {
        Ok(()) => pipeline::run(&mut tracer, args.watch.common.duration, &mut agent).await,
        Err(e) => Err(e),
    };
    server.abort();
    let mut summary = tracer.summary(started.elapsed());
    summary.watch = Some(agent.summary());
    eprintln!("{summary}");
    let _ = agent.sink.summary(&summary);
    quiet_broken_pipe(outcome).context("writing findings to stdout")
}

/// Ended connections held for settling before the agent waits for its correlators.
const ENDED_HELD: usize = 65_536;

/// Running totals already added to counters that the tracer reports as totals.
#[derive(Default)]
struct Counted {
    events: HashMap<&'static str, u64>,
    lost: HashMap<&'static str, u64>,
    skipped: HashMap<String, u64>,
    evicted: u64,
    withheld: u64,
    bytes_taken: u64,
    /// When the counters were last brought up to date.
    at_ns: u64,
}

struct Agent<'a> {
    correlator: Shards,
    /// The tap of the events this thread reads (where one ring buffer carries them all; the
    /// correlator threads have their own otherwise).
    tap: AgentTap,
    /// Sockets whose connection ended since the last tick: they stop counting as problems
    /// once every finding about them is in (several correlator threads answer late).
    ended: Vec<SockId>,
    json: bool,
    sink: &'a mut dyn Sink,
    metrics: Metrics,
    labeler: Arc<Mutex<Labeler>>,
    joins: Arc<RwLock<Joins>>,
    /// Sockets counted in `connwatch_problem_sockets`, with their label sets.
    problems: HashMap<SockId, Vec<FindingLabels>>,
    log: FindingLog,
    feed: InventoryFeed,
    /// `--pid`, `--port`, `--comm`: the kernel applies them to events, the agent to what the
    /// inventory finds.
    filters: crate::probes::Filters,
    counted: Counted,
}

impl Agent<'_> {
    fn summary(&self) -> WatchSummary {
        crate::watch::summary_of(&self.correlator)
    }

    fn labeler(&self) -> MutexGuard<'_, Labeler> {
        self.labeler.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn joins(&self) -> RwLockWriteGuard<'_, Joins> {
        self.joins.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn report(&mut self, mut finding: Finding) -> io::Result<()> {
        let pid = finding.owner.as_ref().map(|o| o.pid);
        let comm = finding.owner.as_ref().map(|o| o.comm.to_string()).unwrap_or_default();
        let (comm, cgroup, attribution) = self.labeler().labels(pid, &comm);
        let labels = FindingLabels { kind: finding.kind.name().into(), comm, cgroup };
        self.metrics.findings.get_or_create(&labels).inc();
        self.metrics.problem_sockets.get_or_create(&labels).inc();
        self.problems.entry(finding.sock).or_default().push(labels);
        finding.attribution = Some(attribution);
        match self.log.admit(&finding, monotonic_ns()) {
            Line::Counted => Ok(()),
            Line::Full if self.json => self.sink.finding(&finding),
            Line::Full => self.one_line(&finding),
        }
    }

    /// One human line per finding (the agent's log is read by log shippers, not people at a
    /// terminal; `watch` prints the full story).
    fn one_line(&mut self, f: &Finding) -> io::Result<()> {
        self.sink.flush()?;
        let owner =
            f.owner.as_ref().map_or("pid ?".into(), |o| format!("pid {} ({})", o.pid, o.comm));
        let cgroup = f.attribution.as_ref().map_or("", |a| a.cgroup.as_str());
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "{} {} {owner} cgroup {cgroup} fd {} {} -> {}: {} [sock {}]",
            f.kind.severity().name().to_uppercase(),
            f.kind,
            f.fd.map_or("?".into(), |fd| fd.to_string()),
            f.local,
            f.remote,
            f.kind.hint(),
            f.sock
        )
    }

    /// Every finding given so far is in: the ended sockets settle after theirs.
    fn settle_ended(&mut self) {
        for sock in std::mem::take(&mut self.ended) {
            self.settle_problems(sock);
        }
    }

    /// A finding's socket closed: it no longer counts as a problem.
    fn settle_problems(&mut self, sock: SockId) {
        if let Some(labels) = self.problems.remove(&sock) {
            for l in labels {
                self.metrics.problem_sockets.get_or_create(&l).dec();
            }
        }
    }

    fn apply_inventory(&mut self, update: Update) -> io::Result<()> {
        self.metrics.network_namespaces.set(update.namespaces as i64);
        self.metrics.sockets.clear();
        for (state, count) in &update.by_state {
            let labels = StateLabels { state: (*state).to_string() };
            self.metrics.sockets.get_or_create(&labels).set(*count as i64);
        }
        let now = monotonic_ns();
        let wanted: Vec<_> =
            update.at_start.into_iter().filter(|s| s.wanted(&self.filters)).collect();
        for seen in wanted {
            let sock = SockId { addr: seen.socket.cookie, birth_ns: 0 };
            self.joins()
                .seen_at_start
                .insert((seen.socket.local, seen.socket.remote), (seen.socket.cookie, sock));
            let event = seen.event(sock, now);
            for finding in self.correlator.ingest_one(&event) {
                self.report(finding)?;
            }
        }
        // Sockets known from the start that have left CLOSE_WAIT or gone.
        let gone: Vec<_> = self
            .joins()
            .seen_at_start
            .iter()
            .filter(|(_, (cookie, _))| update.close_wait_cookies.binary_search(cookie).is_err())
            .map(|(key, (_, sock))| (*key, *sock))
            .collect();
        for ((local, remote), sock) in gone {
            let mut joins = self.joins();
            joins.seen_at_start.remove(&(local, remote));
            joins.aliases.retain(|_, known| *known != sock);
            drop(joins);
            let event = inventory_feed::gone(sock, local, remote, now);
            for finding in self.correlator.ingest_one(&event) {
                self.report(finding)?;
            }
            self.ended.push(sock);
        }
        Ok(())
    }
}

impl Consumer for Agent<'_> {
    fn events(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        for event in events.iter_mut() {
            self.tap.tap(event);
        }
        self.tap.flush();
        self.ended.extend(self.tap.ended());
        for finding in self.correlator.ingest_taken(events) {
            self.report(finding)?;
        }
        if self.ended.len() >= ENDED_HELD {
            // A drain that never empties the ring buffer reaches no tick: settle here.
            for finding in self.correlator.finish_pending() {
                self.report(finding)?;
            }
            self.settle_ended();
        }
        Ok(())
    }

    fn tick(&mut self, now_ns: u64, lost_total: u64) -> io::Result<()> {
        self.correlator.note_lost_total(now_ns, lost_total);
        while let Some(update) = self.feed.next() {
            self.apply_inventory(update)?;
        }
        for finding in self.correlator.tick(now_ns) {
            self.report(finding)?;
        }
        self.ended.extend(self.correlator.take_ended());
        self.settle_ended();
        for (kind, pid, count) in self.log.closed(now_ns) {
            self.window_line(kind, pid, count)?;
        }
        self.sink.flush()
    }

    fn account(&mut self, tracer: &Tracer) {
        // What this drain took is how full the ring buffer was: measured every drain.
        let taken = tracer.bytes_taken();
        let used = taken - self.counted.bytes_taken;
        self.metrics.ring_buffer_used_bytes.set(used as i64);
        self.counted.bytes_taken = taken;
        // The other counters serve scrapes, not every 50 ms drain: once a second is plenty.
        let now = monotonic_ns();
        if now < self.counted.at_ns + 1_000_000_000 {
            return;
        }
        self.counted.at_ns = now;
        let summary = tracer.summary(std::time::Duration::ZERO);
        for (name, total) in summary.events {
            let labels = TypeLabels { r#type: name.to_string() };
            add_total(&self.metrics.events, &mut self.counted.events, name, labels, total);
        }
        for (name, total) in summary.lost {
            let labels = TypeLabels { r#type: name.to_string() };
            add_total(&self.metrics.events_lost, &mut self.counted.lost, name, labels, total);
        }
        for (hook, total) in summary.skipped {
            let labels = HookLabels { hook: hook.clone() };
            add_total(&self.metrics.events_skipped, &mut self.counted.skipped, hook, labels, total);
        }
        self.metrics.tracked_sockets.set(self.correlator.tracked() as i64);
        let evicted = self.correlator.evicted();
        self.metrics.sockets_evicted.inc_by(evicted - self.counted.evicted);
        self.counted.evicted = evicted;
        let withheld = self.correlator.withheld();
        self.metrics.findings_withheld.inc_by(withheld - self.counted.withheld);
        self.counted.withheld = withheld;
    }
}

impl Agent<'_> {
    /// The count of findings of one (kind, process) not written one by one.
    fn window_line(&mut self, kind: Kind, pid: Option<u32>, count: u64) -> io::Result<()> {
        self.sink.flush()?;
        let pid = pid.map_or("?".to_string(), |p| p.to_string());
        let mut out = io::stdout().lock();
        if self.json {
            let line = serde_json::json!({
                "type": "findings_repeated", "kind": kind.name(), "pid": pid.parse::<u32>().ok(),
                "count": count, "window_s": report::WINDOW.as_secs(),
            });
            writeln!(out, "{line}")
        } else {
            writeln!(
                out,
                "{} {kind} pid {pid}: {count} more on other sockets in the last {} s",
                kind.severity().name().to_uppercase(),
                report::WINDOW.as_secs()
            )
        }
    }
}

/// Adds what a running total grew by since last time to a counter.
fn add_total<K: std::hash::Hash + Eq, L: Clone + std::hash::Hash + Eq>(
    family: &prometheus_client::metrics::family::Family<
        L,
        prometheus_client::metrics::counter::Counter,
    >,
    counted: &mut HashMap<K, u64>,
    key: K,
    labels: L,
    total: u64,
) {
    let before = counted.insert(key, total).unwrap_or(0);
    family.get_or_create(&labels).inc_by(total.saturating_sub(before));
}
