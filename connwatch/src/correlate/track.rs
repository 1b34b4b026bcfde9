//! Everything the correlator keeps about one socket: facts with their times (first or last
//! occurrence, so arrival order does not matter), and a short timeline of notable events.

use std::net::SocketAddr;

use crate::decode::{Detail, Errno, Event, Family, Io, Owner, Snapshot, Via};

/// The timeline keeps at most this many events per socket (the earliest anchors stay).
pub const TIMELINE: usize = 12;

const EPOLLHUP: u32 = 0x010;
const EPOLLRDHUP: u32 = 0x2000;
const EPOLLERR: u32 = 0x008;
const EINPROGRESS: i32 = libc::EINPROGRESS;
const EAGAIN: i32 = libc::EAGAIN;

/// Earliest and latest time something happened, compactly: each is stored plus one, so 0
/// means never (16 bytes rather than two `Option<u64>`'s 32, for ~20 facts per socket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    first: u64,
    last: u64,
}

impl Span {
    fn add(&mut self, ts: u64) {
        let t = ts.saturating_add(1);
        self.first = if self.first == 0 { t } else { self.first.min(t) };
        self.last = self.last.max(t);
    }

    pub fn first(&self) -> Option<u64> {
        self.first.checked_sub(1)
    }

    pub fn last(&self) -> Option<u64> {
        self.last.checked_sub(1)
    }

    /// Whether it happened after `ts`.
    pub fn after(&self, ts: u64) -> bool {
        self.last > ts.saturating_add(1)
    }
}

/// The latest three times something happened (each stored plus one, 0: none), newest first:
/// enough to ask "did this happen at least twice after t" whatever order events arrived in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latest3([u64; 3]);

impl Latest3 {
    fn add(&mut self, ts: u64) {
        let t = ts.saturating_add(1);
        if let Some(at) = self.0.iter().position(|&kept| kept < t) {
            self.0.copy_within(at..2, at + 1);
            self.0[at] = t;
        }
    }

    /// How many of the kept times are after `ts`.
    pub fn count_after(&self, ts: u64) -> usize {
        self.0.iter().filter(|&&kept| kept > ts.saturating_add(1)).count()
    }
}

/// What the kernel did and what the application was told and did, each with its first and
/// last time. The detectors (`detect.rs`) are conditions over these.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    // What the kernel knew.
    /// The connection was established (a state change, or an observation that found it so).
    pub established: Span,
    /// A child created by a listener (LISTEN -> SYN_RECV): until accepted, its application
    /// may still come for it.
    pub from_listener: Span,
    /// The peer's FIN: the socket entered CLOSE_WAIT.
    pub fin: Span,
    /// The socket left CLOSE_WAIT (close/shutdown: LAST_ACK; or CLOSE).
    pub left_close_wait: Span,
    /// The kernel's CLOSE state.
    pub kernel_closed: Span,
    /// An RST received, or ECONNRESET stored by the kernel.
    pub reset: Span,
    /// The kernel failed the connection attempt (error in SYN_SENT, or SYN_SENT -> CLOSE).
    pub connect_failed: Span,
    /// Retransmissions.
    pub retransmit: Span,
    pub retransmits: u32,

    // What the application was told.
    /// connect() returned EINPROGRESS.
    pub connect_in_progress: Span,
    /// SO_ERROR reads (any value).
    pub so_error_read: Span,
    /// The application saw an error: SO_ERROR != 0, or a failed recv/send (not EAGAIN/EINTR).
    pub app_error: Span,
    /// recv() returned data.
    pub data_read: Span,
    /// recv() returned 0: every byte the peer sent has been read, and it sends no more.
    pub eof_read: Span,
    /// Readiness that said the peer closed or the connection failed (RDHUP, HUP or ERR).
    pub told_ready: Span,
    /// End-of-file seen: recv() == 0, or HUP readiness without ERR.
    pub eof_seen: Span,
    /// SO_ERROR reads of 0 while the socket was closing, closed or retransmitting.
    pub false_healthy_read: Span,

    // What the application did.
    /// Any application observation but close: the application holds the socket.
    pub app_touched: Span,
    /// The last holder closed its descriptor (a close that leaves other holders is not it).
    pub app_closed: Span,
    /// recv/send calls (any result).
    pub io: Span,
    /// Sends (any result).
    pub sent: Span,
    /// Successful sends that began while the peer had already closed (by the socket's own
    /// state at the start of the call).
    pub sent_ok_peer_closed: Span,
    /// Successful sends while the kernel had timed out at least `Thresholds::retransmits`
    /// times without an acknowledgement, and the worst such snapshot.
    pub sent_into_void: Span,
    pub void_snapshot: Option<Snapshot>,
    /// Readiness reports and recv calls on a socket whose peer had closed (the latest three).
    pub polled_after_peer_close: Latest3,
}

/// One tracked socket.
#[derive(Clone, Debug)]
pub struct Track {
    pub owner: Option<Owner>,
    pub fd: Option<i32>,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub first_ts: u64,
    pub last_ts: u64,
    pub facts: Facts,
    /// Notable events (from, until, what), ordered by time.
    pub timeline: Vec<(u64, u64, Detail)>,
    /// Kinds already reported (bit per `Kind as u8`).
    pub reported: u16,
    /// When the liveness audit last asked this socket for its settings.
    pub idle_audited_ns: u64,
}

impl Track {
    pub fn new(e: &Event) -> Self {
        Self {
            owner: e.owner.clone(),
            fd: e.detail.fd(),
            family: e.family,
            local: e.local,
            remote: e.remote,
            first_ts: e.ts_ns,
            last_ts: e.ts_ns,
            facts: Facts::default(),
            timeline: Vec::new(),
            reported: 0,
            idle_audited_ns: 0,
        }
    }

    pub fn apply(&mut self, e: &Event, void_threshold: u8) {
        self.first_ts = self.first_ts.min(e.ts_ns);
        self.last_ts = self.last_ts.max(e.ts_ns);
        if e.owner.is_some() {
            self.owner = e.owner.clone();
        }
        if let Some(fd) = e.detail.fd() {
            self.fd = Some(fd);
        }
        // The most complete view of the endpoints wins (ports are 0 early and late in life).
        if e.local.port() != 0 && e.remote.port() != 0 {
            (self.local, self.remote) = (e.local, e.remote);
        }
        self.last_ts = self.last_ts.max(e.until_ns);
        if note(&mut self.facts, e.ts_ns, e.until_ns, &e.detail, void_threshold) {
            self.record(e.ts_ns, e.until_ns, e.detail.clone());
        }
    }

    /// Inserts into the time-ordered timeline; when full, the newest events replace the latest
    /// but the earliest anchors (FIN, connect, first error) stay.
    fn record(&mut self, ts: u64, until: u64, detail: Detail) {
        let at = self.timeline.partition_point(|(t, _, _)| *t <= ts);
        if self.timeline.len() >= TIMELINE {
            if at < TIMELINE / 2 {
                return;
            }
            self.timeline.remove(TIMELINE / 2);
        }
        let at = at.min(self.timeline.len());
        self.timeline.insert(at, (ts, until, detail));
    }

    /// The most recent application snapshot at or before `ts`, if any is kept.
    pub fn snapshot_before(&self, ts: u64) -> Option<(u64, Snapshot)> {
        self.timeline
            .iter()
            .rev()
            .filter(|(t, _, _)| *t <= ts)
            .find_map(|(t, _, d)| d.snapshot().map(|s| (*t, *s)))
    }
}

/// Updates the facts with one event seen from `ts` to `until`; returns whether it belongs in
/// the timeline (routine traffic on a healthy socket does not). What a call did counts from
/// its start; what it told the application (data, EOF, an error) counts from its return.
fn note(f: &mut Facts, ts: u64, until: u64, detail: &Detail, void_threshold: u8) -> bool {
    let established = match detail {
        Detail::State { new, .. } => new.name() == "ESTABLISHED",
        other => other.snapshot().is_some_and(|s| s.state.name() == "ESTABLISHED"),
    };
    if established {
        f.established.add(ts);
    }
    match detail {
        Detail::State { old, new } => {
            match (old.name(), new.name()) {
                ("LISTEN", "SYN_RECV") => f.from_listener.add(ts),
                (_, "CLOSE_WAIT") => f.fin.add(ts),
                ("CLOSE_WAIT", _) => f.left_close_wait.add(ts),
                _ => {}
            }
            if new.name() == "CLOSE" {
                f.kernel_closed.add(ts);
                if old.name() == "SYN_SENT" {
                    f.connect_failed.add(ts);
                }
            }
            true
        }
        Detail::Reset { direction, .. } => {
            if direction.name() == "rx" {
                f.reset.add(ts);
            }
            true
        }
        Detail::Error { errno, state } => {
            if errno.0 == libc::ECONNRESET {
                f.reset.add(ts);
            }
            if matches!(state.name(), "SYN_SENT" | "CLOSE")
                && f.connect_in_progress.first().is_some()
            {
                f.connect_failed.add(ts);
            }
            true
        }
        Detail::Retransmit { .. } => {
            f.retransmit.add(ts);
            f.retransmits += 1;
            true
        }
        Detail::SoError { value, snapshot, .. } => {
            f.app_touched.add(ts);
            f.so_error_read.add(ts);
            if value.is_some() {
                f.app_error.add(ts);
            } else if peer_gone(snapshot) || snapshot.rto_retransmits > 0 {
                f.false_healthy_read.add(ts);
            }
            true
        }
        Detail::Readiness { via, mask, snapshot, .. } => {
            span(&mut f.app_touched, ts, until);
            if peer_gone(snapshot) {
                f.polled_after_peer_close.add(until);
            }
            // HUP alone is the end of the stream; with ERR it is a failure (a refused
            // connect polls HUP|ERR), which is no EOF to ignore.
            if *via != Via::Select && mask & EPOLLHUP != 0 && mask & EPOLLERR == 0 {
                f.eof_seen.add(until);
            }
            let told = *via != Via::Select && mask & (EPOLLHUP | EPOLLRDHUP | EPOLLERR) != 0;
            if told {
                f.told_ready.add(until);
            }
            told || unhealthy(snapshot)
        }
        Detail::Recv { io, snapshot } => {
            span(&mut f.app_touched, ts, until);
            span(&mut f.io, ts, until);
            if peer_gone(snapshot) {
                f.polled_after_peer_close.add(until);
            }
            let eof = io.calls == 1 && io.last == Ok(0) && snapshot.peer_closed();
            if eof {
                f.eof_seen.add(until);
                f.eof_read.add(until);
            }
            if io.bytes > 0 {
                f.data_read.add(until);
            }
            failed(f, io, until) || eof || unhealthy(snapshot)
        }
        Detail::Send { io, snapshot } => {
            span(&mut f.app_touched, ts, until);
            span(&mut f.io, ts, until);
            span(&mut f.sent, ts, until);
            if io.last.is_ok() {
                if peer_gone(snapshot) {
                    f.sent_ok_peer_closed.add(ts);
                }
                if snapshot.rto_retransmits >= void_threshold {
                    f.sent_into_void.add(until);
                    f.void_snapshot = Some(*snapshot);
                }
            }
            failed(f, io, until) || unhealthy(snapshot) || f.fin.first().is_some()
        }
        Detail::Connect { result, .. } => {
            f.app_touched.add(ts);
            if *result == Err(Errno(EINPROGRESS)) {
                f.connect_in_progress.add(ts);
            }
            true
        }
        Detail::Accept { .. } => {
            f.app_touched.add(ts);
            true
        }
        // Every holder let go (a process exit closes its descriptors without close()).
        Detail::Destroy { .. } => {
            f.kernel_closed.add(ts);
            f.left_close_wait.add(ts);
            f.app_closed.add(ts);
            true
        }
        Detail::Seen { state, .. } => {
            match state.name() {
                // Held (the inventory joins only sockets some process holds) and peer-closed.
                "CLOSE_WAIT" => {
                    f.fin.add(ts);
                    f.app_touched.add(ts);
                }
                // Gone: no process holds it any more.
                "CLOSE" => {
                    f.left_close_wait.add(ts);
                    f.kernel_closed.add(ts);
                    f.app_closed.add(ts);
                }
                _ => f.left_close_wait.add(ts),
            }
            true
        }
        Detail::Close { others, .. } => {
            if *others == 0 {
                f.app_closed.add(ts);
            }
            true
        }
    }
}

/// A summarised record stands for calls from `ts` to `until`.
fn span(s: &mut Span, ts: u64, until: u64) {
    s.add(ts);
    s.add(until.max(ts));
}

/// A failed recv/send (EAGAIN is routine, not a failure) is an error the application saw.
fn failed(f: &mut Facts, io: &Io, ts: u64) -> bool {
    match io.last {
        Err(e) if e.0 != EAGAIN && e.0 != libc::EINTR => {
            f.app_error.add(ts);
            true
        }
        _ => false,
    }
}

/// The peer has closed its side, or the connection is gone.
fn peer_gone(s: &Snapshot) -> bool {
    s.peer_closed()
}

/// A snapshot that already shows trouble (so the observation belongs in the timeline).
fn unhealthy(s: &Snapshot) -> bool {
    s.state.name() != "ESTABLISHED" || s.sk_err.is_some() || s.rto_retransmits > 0
}
