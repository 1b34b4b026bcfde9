//! Joins the kernel's truth with each application's view, socket by socket, and reports where
//! they disagree. Pure code: events in, findings out; time comes from the events and from
//! `tick`, never from a clock of its own.

pub mod detect;
mod ends;
pub mod finding;
pub mod liveness;
mod opening;
mod retiring;
mod room;
pub mod shards;
mod table;
mod timeline;
pub mod track;

use std::collections::{BTreeMap, BTreeSet};

use retiring::{Retiring, Window};

pub use detect::Thresholds;
pub use finding::{Evidence, Finding, Kind, Measures, Severity};
pub use shards::{NoTap, Shards, Tap};
use table::Tracks;
use track::Track;

use connwatch_common::socket::BIRTH_ADOPTED;

use crate::decode::{Detail, Event, SockId};

/// Default `--max-sockets`.
pub const DEFAULT_MAX_SOCKETS: usize = 65_536;
/// How many tracked sockets are sampled to choose one to evict (an approximate LRU).
const EVICTION_SAMPLE: usize = 32;
/// A finished socket is forgotten only after this long without events: late arrivals (events
/// of other CPUs, drained up to `pipeline::DRAIN_INTERVAL` apart) still find its facts.
const REORDER_WINDOW_NS: u64 = 500_000_000;
/// A listener's child that no process has accepted yet may still be accepted (and its fate,
/// say a reset, matter to that process): it is kept this long.
const ACCEPT_WINDOW_NS: u64 = 10_000_000_000;

pub struct Correlator {
    /// Reads sockets' own settings for the liveness audit and the half-open-write evidence;
    /// without one, neither runs (unit tests, `--idle-grace 0`).
    prober: Option<Box<dyn liveness::SocketProber + Send>>,
    /// When the liveness audit last looked for idle connections, and how many sockets it has
    /// asked for their settings.
    last_idle_sweep: u64,
    audited: u64,
    tracks: Tracks,
    thresholds: Thresholds,
    max_sockets: usize,
    /// Timer detectors' deadlines.
    deadlines: BTreeSet<(u64, SockId)>,
    /// Sockets both sides are done with, forgotten once quiet for their window.
    finished: Retiring,
    /// Windows in which the kernel lost events (CLOCK_MONOTONIC ns).
    losses: Vec<(u64, u64)>,
    evicted: u64,
    /// When the kernel's loss count was last given, and what it was then.
    loss_seen: (u64, u64),
    /// Timer findings not reported because events were lost while they ripened.
    withheld: u64,
    reported: BTreeMap<Kind, u64>,
}

impl Correlator {
    pub fn new(thresholds: Thresholds, max_sockets: usize) -> Self {
        Self {
            prober: None,
            last_idle_sweep: 0,
            audited: 0,
            tracks: Tracks::default(),
            thresholds,
            max_sockets: max_sockets.max(1),
            deadlines: BTreeSet::new(),
            finished: Retiring::default(),
            losses: Vec::new(),
            evicted: 0,
            loss_seen: (0, 0),
            withheld: 0,
            reported: BTreeMap::new(),
        }
    }

    /// Lets the correlator ask sockets for their settings (the liveness audit).
    pub fn with_prober(mut self, prober: Box<dyn liveness::SocketProber + Send>) -> Self {
        self.prober = Some(prober);
        self
    }

    /// Takes one event (in any order); returns the findings it completes.
    pub fn ingest(&mut self, event: &Event) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.ingest_run(std::slice::from_ref(event), &mut findings);
        findings
    }

    /// Takes a batch of events (in any order); returns the findings they complete. Consecutive
    /// events of one socket (those of one record: a closing report's changes, a call with the
    /// change to ESTABLISHED it carries) share one look-up of its track.
    pub fn ingest_all(&mut self, events: &[Event]) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut rest = events;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|e| e.sock == first.sock).count();
            let (now, later) = rest.split_at(run);
            self.ingest_run(now, &mut findings);
            rest = later;
        }
        findings
    }

    /// Events of one socket identity, in delivery order: applied to its track, found once.
    fn ingest_run(&mut self, run: &[Event], findings: &mut Vec<Finding>) {
        let Some(first) = run.first() else { return };
        let joined;
        let first = match self.joined(first) {
            Some(sock) => {
                joined = Event { sock, ..first.clone() };
                &joined
            }
            None => first,
        };
        if self.tracks.len() >= self.max_sockets && !self.tracks.contains(&first.sock) {
            self.make_room();
        }
        let threshold = self.thresholds.retransmits;
        // A new life begins with the change its birth records (watch and agent).
        let mut opening = None;
        let track = self.tracks.get_or_insert_with(first.sock, || {
            opening = opening::implied_by(first);
            Track::new(opening.as_ref().unwrap_or(first))
        });
        if let Some(opening) = &opening {
            track.apply(opening, threshold);
        }
        for (at, event) in run.iter().enumerate() {
            track.apply(event, threshold);
            let found = detect::on_event(track);
            if found.is_empty() {
                continue;
            }
            // The evidence runs to the latest event known: the proof may have arrived before
            // the observation it completes (a reset provoked inside a send is delivered
            // first).
            let (sock, now) = (track.sock, track.last_ts.max(event.ts_ns));
            self.report_found(sock, now, found, findings);
            // Reporting needed the whole table: the rest of the run looks the track up again
            // (an adopted identity is joined to the same life again).
            self.ingest_run(&run[at + 1..], findings);
            return;
        }
        // Nearly every run: the track in hand is scheduled without a second lookup.
        schedule_or_retire(track, &self.thresholds, &mut self.deadlines, &mut self.finished);
    }

    /// Reports what the detectors `found` on `sock` at `now`.
    fn report_found(
        &mut self,
        sock: SockId,
        now: u64,
        found: Vec<(Kind, Option<Measures>)>,
        findings: &mut Vec<Finding>,
    ) {
        for (kind, measures) in found {
            if let Some(mut finding) = self.report(sock, kind, now, measures) {
                if kind == Kind::HalfOpenWrite
                    && let Some(settings) = self.probe(sock)
                {
                    finding.notes.push(settings.give_up_note());
                }
                findings.push(finding);
            }
        }
        if let Some(track) = self.tracks.get(&sock) {
            schedule_or_retire(track, &self.thresholds, &mut self.deadlines, &mut self.finished);
        }
    }

    /// The tracked life an *adopted* identity belongs to. The kernel gives a socket a new,
    /// adopted identity (odd birth) when it meets it with no entry in its table: a socket older
    /// than connwatch, or one whose entry its LRU table dropped under pressure. New lives always
    /// begin with a birth the kernel saw (even), so an adopted identity at an address whose
    /// seen-born life is still tracked is that same life.
    fn joined(&self, event: &Event) -> Option<SockId> {
        if event.sock.birth_ns & BIRTH_ADOPTED == 0 || self.tracks.contains(&event.sock) {
            return None;
        }
        self.tracks.seen_born_at(event.sock.addr)
    }

    /// Checks the timer detectors due at `now` (CLOCK_MONOTONIC ns).
    pub fn tick(&mut self, now: u64) -> Vec<Finding> {
        let mut findings = self.audit_idle(now);
        while let Some(&(deadline, sock)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(track) = self.tracks.get(&sock) else {
                continue;
            };
            // A timer finding rests on something that did not happen (no close, no error
            // seen); when events were lost meanwhile, the missing event may be among them.
            let lost_meanwhile = self.lost_between(track.first_ts, now);
            for kind in detect::on_tick(track, now, &self.thresholds) {
                if lost_meanwhile {
                    self.withhold(sock, kind);
                } else {
                    findings.extend(self.report(sock, kind, now, None));
                }
            }
            self.schedule_after(sock, now);
        }
        while let Some(sock) = self.finished.pop_due(now) {
            // Unless an event came meanwhile (it queued the socket again).
            self.tracks.remove_if(&sock, |t| t.last_ts + quiet_window(t).1 <= now);
        }
        self.tracks.tidy(now);
        findings
    }

    /// The liveness audit, every [`idle_sweep_every`]: established connections idle for the
    /// grace are asked for their settings, and those nothing would check are reported.
    fn audit_idle(&mut self, now: u64) -> Vec<Finding> {
        let mut findings = Vec::new();
        let grace = self.thresholds.idle_grace_ns;
        if self.prober.is_none()
            || grace == 0
            || now < self.last_idle_sweep + idle_sweep_every(grace)
        {
            return findings;
        }
        self.last_idle_sweep = now;
        let due: Vec<SockId> = self
            .tracks
            .iter()
            .filter(|t| detect::idle_candidate(t, now, &self.thresholds))
            .map(|t| t.sock)
            .collect();
        let grace_s = self.thresholds.idle_grace_ns / 1_000_000_000;
        for sock in due {
            if let Some(track) = self.tracks.get_mut(&sock) {
                track.mark_idle_audited(now);
            }
            self.audited += 1;
            let Some(settings) = self.probe(sock) else { continue };
            if settings.unchecked(grace_s)
                && let Some(mut finding) = self.report(sock, Kind::LivenessUnchecked, now, None)
            {
                finding.notes.push(settings.liveness_note());
                findings.push(finding);
            }
        }
        findings
    }

    /// Asks the socket's holder's copy for its settings.
    fn probe(&mut self, sock: SockId) -> Option<liveness::Settings> {
        let track = self.tracks.get(&sock)?;
        let (pid, fd) = (track.owner()?.pid, track.fd()?);
        let (local, remote) = (track.ends().local(), track.ends().remote());
        self.prober.as_mut()?.settings(pid, fd, local, remote)
    }

    /// The kernel's running loss count at `now`: if it grew since the last call, events were
    /// lost in between.
    pub fn note_lost_total(&mut self, now: u64, lost_total: u64) {
        let (checked_at, lost_then) = self.loss_seen;
        if lost_total > lost_then {
            self.note_loss(checked_at, now);
        }
        self.loss_seen = (now, lost_total);
    }

    /// The kernel lost events between `from` and `to`: findings whose sockets were tracked
    /// then say their evidence may be incomplete.
    pub fn note_loss(&mut self, from: u64, to: u64) {
        match self.losses.last_mut() {
            Some(last) if last.1 >= from => last.1 = last.1.max(to),
            _ => self.losses.push((from, to)),
        }
        // Bounded: old windows matter only to sockets that old.
        if self.losses.len() > 1024 {
            self.losses.drain(..512);
        }
    }

    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Sockets the liveness audit has asked for their settings so far.
    pub fn audited(&self) -> u64 {
        self.audited
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Timer findings (close-wait-leak, reset-unnoticed) not reported because events were lost
    /// while they ripened: the close or error that would have cleared them may have been lost.
    pub fn withheld(&self) -> u64 {
        self.withheld
    }

    fn lost_between(&self, from: u64, to: u64) -> bool {
        self.losses.iter().any(|&(lost_from, lost_to)| lost_to >= from && lost_from <= to)
    }

    /// Marks the kind as decided for this socket without reporting it.
    fn withhold(&mut self, sock: SockId, kind: Kind) {
        if let Some(track) = self.tracks.get_mut(&sock) {
            let bit = 1 << kind as u16;
            if track.reported & bit == 0 {
                track.reported |= bit;
                self.withheld += 1;
            }
        }
    }

    /// Findings reported so far, by kind.
    pub fn reported(&self) -> &BTreeMap<Kind, u64> {
        &self.reported
    }

    fn report(
        &mut self,
        sock: SockId,
        kind: Kind,
        ts: u64,
        measures: Option<Measures>,
    ) -> Option<Finding> {
        let track = self.tracks.get_mut(&sock)?;
        let bit = 1 << kind as u16;
        if track.reported & bit != 0 {
            return None;
        }
        track.reported |= bit;
        *self.reported.entry(kind).or_default() += 1;
        let evidence = track
            .timeline
            .iter()
            .take_while(|(t, _, _)| *t <= ts)
            .map(|(t, until, detail)| Evidence {
                ts_ns: t,
                until_ns: until,
                source: source(&detail),
                detail,
            })
            .collect();
        let first_ts = track.first_ts;
        let evidence_incomplete = self.lost_between(first_ts, ts);
        let track = self.tracks.get(&sock)?;
        Some(Finding {
            kind,
            ts_ns: ts,
            sock,
            owner: track.owner().cloned(),
            fd: track.fd(),
            family: track.ends().family(),
            local: track.ends().local(),
            remote: track.ends().remote(),
            evidence,
            measures,
            evidence_incomplete,
            notes: Vec::new(),
            attribution: None,
        })
    }

    /// Schedules the socket's next timer, if one is pending and later than `now`.
    fn schedule_after(&mut self, sock: SockId, now: u64) {
        if let Some(track) = self.tracks.get(&sock)
            && let Some(deadline) = detect::next_deadline(track, &self.thresholds)
            && deadline > now
        {
            self.deadlines.insert((deadline, sock));
        }
    }

    /// Frees one place: a finished socket waiting out the reorder window if there is one (no
    /// loss), otherwise the least recently active socket (counted as evicted).
    fn make_room(&mut self) {
        while let Some(sock) = self.finished.pop_soonest() {
            if self.tracks.remove(&sock) {
                return;
            }
        }
        self.evict_one();
    }

    /// Evicts the least recently active of a sample of tracked sockets.
    fn evict_one(&mut self) {
        let oldest = self
            .tracks
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|track| track.last_ts)
            .map(|track| track.sock);
        if let Some(sock) = oldest {
            self.tracks.remove(&sock);
            self.evicted += 1;
        }
    }
}

/// How often the liveness audit looks through every tracked socket: a thirtieth of the grace,
/// between 1 and 10 s. Each sweep reads every track (a cache miss each: 20 ms a second with
/// 65,536 tracked sockets, when it ran every second), and a connection idle for the grace is
/// then asked about at most a thirtieth of the grace late (10 s of the default 300).
fn idle_sweep_every(grace_ns: u64) -> u64 {
    (grace_ns / 30).clamp(1_000_000_000, 10_000_000_000)
}

/// After an event: schedules the socket's next timer if one is pending; otherwise, once both
/// sides are done with it (no finding can follow), it is forgotten when no late event has
/// arrived for a while.
fn schedule_or_retire(
    track: &Track,
    thresholds: &Thresholds,
    deadlines: &mut BTreeSet<(u64, SockId)>,
    finished: &mut Retiring,
) {
    let sock = track.sock;
    // Off the schedule as soon as moot: under churn every connection's server side would
    // otherwise hold a close-wait deadline for the whole grace.
    for ended in detect::ended_deadlines(track, thresholds).into_iter().flatten() {
        deadlines.remove(&(ended, sock));
    }
    if let Some(deadline) = detect::next_deadline(track, thresholds) {
        deadlines.insert((deadline, sock));
        return;
    }
    let f = &track.facts;
    let kernel_done = f.kernel_closed().first().is_some();
    let app_done = f.app_closed().first().is_some() || f.app_touched().first().is_none();
    if kernel_done && app_done {
        let (window, quiet_ns) = quiet_window(track);
        finished.push(window, track.last_ts + quiet_ns, sock);
    }
}

/// How long a finished socket must stay quiet before it is forgotten, and why.
fn quiet_window(track: &Track) -> (Window, u64) {
    let f = &track.facts;
    let unaccepted = f.from_listener().first().is_some() && f.app_touched().first().is_none();
    if unaccepted {
        (Window::Accept, ACCEPT_WINDOW_NS)
    } else {
        (Window::Reorder, REORDER_WINDOW_NS)
    }
}

/// Whose view an event is.
fn source(detail: &Detail) -> &'static str {
    match detail {
        Detail::State { .. }
        | Detail::Reset { .. }
        | Detail::Retransmit { .. }
        | Detail::Error { .. }
        | Detail::Destroy { .. } => "kernel",
        Detail::Seen { .. } => "inventory",
        _ => "app",
    }
}

#[cfg(test)]
mod tests;
