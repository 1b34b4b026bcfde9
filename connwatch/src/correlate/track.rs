//! Everything the correlator keeps about one socket: facts with their times (first or last
//! occurrence, so arrival order does not matter), and a short timeline of notable events.

use super::{ends::Ends, room, timeline::Timeline};
use crate::decode::{Comm, Detail, Errno, Event, Io, Owner, Snapshot, SockId, Via};

/// Room for the first facts (a held connection has three), then doubled.
const SPANS_FIRST: usize = 3;
/// `Track::fd` before any observation names a descriptor (none is negative).
const NO_FD: i32 = -1;
/// `Track::owner` before any process touched the socket.
const NO_OWNER: Owner = Owner { pid: 0, comm: Comm::EMPTY };
const NS_PER_S: u64 = 1_000_000_000;

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

/// Declares the facts kept as spans: `Fact`'s variants, and an accessor on `Facts` for each.
macro_rules! span_facts {
    ($($(#[$doc:meta])* $name:ident => $fact:ident,)*) => {
        /// A fact kept as a [`Span`] (see [`Facts`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Fact {
            $($fact,)*
        }

        // One bit each in `Spans::present`.
        const _: () = assert!([$(Fact::$fact),*].len() <= 32);

        impl Facts {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Span {
                    self.spans.get(Fact::$fact)
                }
            )*
        }
    };
}

span_facts! {
    // What the kernel knew.
    /// The connection was established (a state change, or an observation that found it so).
    established => Established,
    /// A child created by a listener (LISTEN -> SYN_RECV): until accepted, its application
    /// may still come for it.
    from_listener => FromListener,
    /// The peer's FIN: the socket entered CLOSE_WAIT.
    fin => Fin,
    /// The socket left CLOSE_WAIT (close/shutdown: LAST_ACK; or CLOSE).
    left_close_wait => LeftCloseWait,
    /// The kernel's CLOSE state.
    kernel_closed => KernelClosed,
    /// An RST received, or ECONNRESET stored by the kernel.
    reset => Reset,
    /// The kernel failed the connection attempt (error in SYN_SENT, or SYN_SENT -> CLOSE).
    connect_failed => ConnectFailed,
    /// Retransmissions.
    retransmit => Retransmit,
    // What the application was told.
    /// connect() returned EINPROGRESS.
    connect_in_progress => ConnectInProgress,
    /// SO_ERROR reads (any value).
    so_error_read => SoErrorRead,
    /// The application saw an error: SO_ERROR != 0, or a failed recv/send (not EAGAIN/EINTR).
    app_error => AppError,
    /// recv() returned data.
    data_read => DataRead,
    /// recv() returned 0: every byte the peer sent has been read, and it sends no more.
    eof_read => EofRead,
    /// Readiness that said the peer closed or the connection failed (RDHUP, HUP or ERR).
    told_ready => ToldReady,
    /// End-of-file seen: recv() == 0, or HUP readiness without ERR.
    eof_seen => EofSeen,
    /// SO_ERROR reads of 0 while the socket was closing, closed or retransmitting.
    false_healthy_read => FalseHealthyRead,
    // What the application did.
    /// Any application observation but close: the application holds the socket.
    app_touched => AppTouched,
    /// The last holder closed its descriptor (a close that leaves other holders is not it).
    app_closed => AppClosed,
    /// recv/send calls (any result).
    io => Io,
    /// Sends (any result).
    sent => Sent,
    /// Successful sends that began while the peer had already closed (by the socket's own
    /// state at the start of the call).
    sent_ok_peer_closed => SentOkPeerClosed,
    /// Successful sends while the kernel had timed out at least `Thresholds::retransmits`
    /// times without an acknowledgement.
    sent_into_void => SentIntoVoid,
}

/// What the kernel did and what the application was told and did, each with its first and
/// last time. The detectors (`detect.rs`) are conditions over these.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The facts that happened (a socket sees a handful of the twenty-odd).
    spans: Spans,
    /// Counts and snapshots of trouble: most sockets never need them.
    rare: Option<Box<Rare>>,
}

/// The facts a healthy socket does not have, kept apart so that it carries one pointer for
/// them rather than 48 bytes.
#[derive(Clone, Debug, Default)]
struct Rare {
    retransmits: u32,
    void_snapshot: Option<Snapshot>,
    polled_after_peer_close: Latest3,
}

impl Facts {
    /// How many retransmissions (the `retransmit` fact's count).
    pub fn retransmits(&self) -> u32 {
        self.rare.as_ref().map_or(0, |r| r.retransmits)
    }

    /// The snapshot of the last `sent_into_void` send to arrive.
    pub fn void_snapshot(&self) -> Option<Snapshot> {
        self.rare.as_ref()?.void_snapshot
    }

    /// Readiness reports and recv calls on a socket whose peer had closed (the latest three).
    pub fn polled_after_peer_close(&self) -> Latest3 {
        self.rare.as_ref().map(|r| r.polled_after_peer_close).unwrap_or_default()
    }

    /// No facts, with the room they had.
    fn emptied(self) -> Self {
        Self { spans: Spans { present: 0, spans: self.spans.spans }, rare: None }
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    pub fn add(&mut self, fact: Fact, ts: u64) {
        self.spans.get_mut(fact).add(ts);
    }

    /// A summarised record stands for calls from `ts` to `until`.
    pub fn add_span(&mut self, fact: Fact, ts: u64, until: u64) {
        let span = self.spans.get_mut(fact);
        span.add(ts);
        span.add(until.max(ts));
    }
}

/// Spans of the facts that happened, in `Fact` order, one bit each in `present`: a tracked
/// socket costs 16 bytes per fact it has room for, not per fact there is (65,536 tracked
/// sockets held 23 spans each, 368 bytes, mostly never set).
#[derive(Clone, Debug, Default)]
struct Spans {
    present: u32,
    /// The first `present.count_ones()` are in use.
    spans: Box<[Span]>,
}

impl Spans {
    fn index(&self, fact: Fact) -> usize {
        (self.present & ((1u32 << fact as u32) - 1)).count_ones() as usize
    }

    fn has(&self, fact: Fact) -> bool {
        self.present & (1 << fact as u32) != 0
    }

    fn get(&self, fact: Fact) -> Span {
        if !self.has(fact) {
            return Span::default();
        }
        self.spans[self.index(fact)]
    }

    fn get_mut(&mut self, fact: Fact) -> &mut Span {
        let at = self.index(fact);
        if !self.has(fact) {
            let used = self.present.count_ones() as usize;
            room::make_room(&mut self.spans, used, 1, SPANS_FIRST);
            self.spans.copy_within(at..used, at + 1);
            self.spans[at] = Span::default();
            self.present |= 1 << fact as u32;
        }
        &mut self.spans[at]
    }
}

/// One tracked socket.
#[derive(Clone, Debug)]
pub struct Track {
    /// Which life of which socket (the tracks' key).
    pub sock: SockId,
    /// The holding process, pid 0 while unknown (see [`Track::owner`]; no process has pid 0).
    owner: Owner,
    /// The holder's descriptor, `NO_FD` until an observation names one (see [`Track::fd`]).
    fd: i32,
    /// Family and endpoints (see [`Track::ends`]).
    ends: Ends,
    pub first_ts: u64,
    pub last_ts: u64,
    pub facts: Facts,
    /// Notable events (from, until, what), ordered by time.
    pub timeline: Timeline,
    /// Kinds already reported (bit per `Kind as u8`).
    pub reported: u16,
    /// When the liveness audit last asked this socket for its settings, in seconds (see
    /// [`Track::idle_audited_ns`]).
    idle_audited_s: u32,
}

impl Track {
    pub fn new(e: &Event) -> Self {
        Self {
            sock: e.sock,
            owner: e.owner.clone().unwrap_or(NO_OWNER),
            fd: e.detail.fd().unwrap_or(NO_FD),
            ends: Ends::new(e.family, e.local, e.remote),
            first_ts: e.ts_ns,
            last_ts: e.ts_ns,
            facts: Facts::default(),
            timeline: Timeline::default(),
            reported: 0,
            idle_audited_s: 0,
        }
    }

    /// Becomes `fresh` (a new track), keeping the room this one's facts and timeline had,
    /// emptied: a spare track taken for a new socket then allocates nothing for its first
    /// facts and events.
    pub fn reuse_for(&mut self, fresh: Track) {
        let facts = std::mem::take(&mut self.facts).emptied();
        let timeline = std::mem::take(&mut self.timeline).emptied();
        *self = Track { facts, timeline, ..fresh };
    }

    pub fn apply(&mut self, e: &Event, void_threshold: u8) {
        self.first_ts = self.first_ts.min(e.ts_ns);
        self.last_ts = self.last_ts.max(e.ts_ns);
        if let Some(owner) = &e.owner {
            self.owner = owner.clone();
        }
        if let Some(fd) = e.detail.fd() {
            self.fd = fd;
        }
        // The most complete view of the endpoints wins (ports are 0 early and late in life).
        if e.local.port() != 0 && e.remote.port() != 0 {
            self.ends = Ends::new(self.ends.family(), e.local, e.remote);
        }
        self.last_ts = self.last_ts.max(e.until_ns);
        if note(&mut self.facts, e.ts_ns, e.until_ns, &e.detail, void_threshold) {
            self.timeline.record(e.ts_ns, e.until_ns, &e.detail);
        }
    }

    /// The process holding the socket, once one touched it in process context.
    pub fn owner(&self) -> Option<&Owner> {
        (self.owner.pid != 0).then_some(&self.owner)
    }

    /// When the liveness audit last asked this socket for its settings (0: never).
    pub fn idle_audited_ns(&self) -> u64 {
        u64::from(self.idle_audited_s) * NS_PER_S
    }

    /// The liveness audit asked the socket at `now`: kept in whole seconds, rounded up (the
    /// audit runs at most once a second).
    pub fn mark_idle_audited(&mut self, now: u64) {
        self.idle_audited_s = u32::try_from(now.div_ceil(NS_PER_S)).unwrap_or(u32::MAX);
    }

    /// The application's descriptor of the socket, once an observation named it.
    pub fn fd(&self) -> Option<i32> {
        (self.fd != NO_FD).then_some(self.fd)
    }

    /// The socket's family and endpoints.
    pub fn ends(&self) -> Ends {
        self.ends
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
        f.add(Fact::Established, ts);
    }
    match detail {
        Detail::State { old, new } => {
            match (old.name(), new.name()) {
                ("LISTEN", "SYN_RECV") => f.add(Fact::FromListener, ts),
                (_, "CLOSE_WAIT") => f.add(Fact::Fin, ts),
                ("CLOSE_WAIT", _) => f.add(Fact::LeftCloseWait, ts),
                _ => {}
            }
            if new.name() == "CLOSE" {
                f.add(Fact::KernelClosed, ts);
                if old.name() == "SYN_SENT" {
                    f.add(Fact::ConnectFailed, ts);
                }
            }
            true
        }
        Detail::Reset { direction, .. } => {
            if direction.name() == "rx" {
                f.add(Fact::Reset, ts);
            }
            true
        }
        Detail::Error { errno, state } => {
            if errno.0 == libc::ECONNRESET {
                f.add(Fact::Reset, ts);
            }
            if matches!(state.name(), "SYN_SENT" | "CLOSE")
                && f.connect_in_progress().first().is_some()
            {
                f.add(Fact::ConnectFailed, ts);
            }
            true
        }
        Detail::Retransmit { .. } => {
            f.add(Fact::Retransmit, ts);
            f.rare().retransmits += 1;
            true
        }
        Detail::SoError { value, snapshot, .. } => {
            f.add(Fact::AppTouched, ts);
            f.add(Fact::SoErrorRead, ts);
            if value.is_some() {
                f.add(Fact::AppError, ts);
            } else if peer_gone(snapshot) || snapshot.rto_retransmits > 0 {
                f.add(Fact::FalseHealthyRead, ts);
            }
            true
        }
        Detail::Readiness { via, mask, snapshot, .. } => {
            f.add_span(Fact::AppTouched, ts, until);
            if peer_gone(snapshot) {
                f.rare().polled_after_peer_close.add(until);
            }
            // HUP alone is the end of the stream; with ERR it is a failure (a refused
            // connect polls HUP|ERR), which is no EOF to ignore.
            if *via != Via::Select && mask & EPOLLHUP != 0 && mask & EPOLLERR == 0 {
                f.add(Fact::EofSeen, until);
            }
            let told = *via != Via::Select && mask & (EPOLLHUP | EPOLLRDHUP | EPOLLERR) != 0;
            if told {
                f.add(Fact::ToldReady, until);
            }
            told || unhealthy(snapshot)
        }
        Detail::Recv { io, snapshot } => {
            f.add_span(Fact::AppTouched, ts, until);
            f.add_span(Fact::Io, ts, until);
            if peer_gone(snapshot) {
                f.rare().polled_after_peer_close.add(until);
            }
            let eof = io.calls == 1 && io.last == Ok(0) && snapshot.peer_closed();
            if eof {
                f.add(Fact::EofSeen, until);
                f.add(Fact::EofRead, until);
            }
            if io.bytes > 0 {
                f.add(Fact::DataRead, until);
            }
            failed(f, io, until) || eof || unhealthy(snapshot)
        }
        Detail::Send { io, snapshot } => {
            f.add_span(Fact::AppTouched, ts, until);
            f.add_span(Fact::Io, ts, until);
            f.add_span(Fact::Sent, ts, until);
            if io.last.is_ok() {
                if peer_gone(snapshot) {
                    f.add(Fact::SentOkPeerClosed, ts);
                }
                if snapshot.rto_retransmits >= void_threshold {
                    f.add(Fact::SentIntoVoid, until);
                    f.rare().void_snapshot = Some(*snapshot);
                }
            }
            failed(f, io, until) || unhealthy(snapshot) || f.fin().first().is_some()
        }
        Detail::Connect { result, .. } => {
            f.add(Fact::AppTouched, ts);
            if *result == Err(Errno(EINPROGRESS)) {
                f.add(Fact::ConnectInProgress, ts);
            }
            true
        }
        Detail::Accept { .. } => {
            f.add(Fact::AppTouched, ts);
            true
        }
        // Every holder let go (a process exit closes its descriptors without close()).
        Detail::Destroy { .. } => {
            f.add(Fact::KernelClosed, ts);
            f.add(Fact::LeftCloseWait, ts);
            f.add(Fact::AppClosed, ts);
            true
        }
        Detail::Seen { state, .. } => {
            match state.name() {
                // Held (the inventory joins only sockets some process holds) and peer-closed.
                "CLOSE_WAIT" => {
                    f.add(Fact::Fin, ts);
                    f.add(Fact::AppTouched, ts);
                }
                // Gone: no process holds it any more.
                "CLOSE" => {
                    f.add(Fact::LeftCloseWait, ts);
                    f.add(Fact::KernelClosed, ts);
                    f.add(Fact::AppClosed, ts);
                }
                _ => f.add(Fact::LeftCloseWait, ts),
            }
            true
        }
        Detail::Close { others, .. } => {
            if *others == 0 {
                f.add(Fact::AppClosed, ts);
            }
            true
        }
    }
}

/// A failed recv/send (EAGAIN is routine, not a failure) is an error the application saw.
fn failed(f: &mut Facts, io: &Io, ts: u64) -> bool {
    match io.last {
        Err(e) if e.0 != EAGAIN && e.0 != libc::EINTR => {
            f.add(Fact::AppError, ts);
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

#[cfg(test)]
mod tests {
    use super::{Fact, Facts};

    #[test]
    fn facts_added_in_any_order_keep_their_own_times() {
        let mut f = Facts::default();
        f.add(Fact::SentIntoVoid, 50);
        f.add(Fact::Established, 10);
        f.add_span(Fact::Io, 20, 40);
        f.add(Fact::Fin, 30);
        f.add(Fact::Established, 5);
        assert_eq!((f.established().first(), f.established().last()), (Some(5), Some(10)));
        assert_eq!((f.io().first(), f.io().last()), (Some(20), Some(40)));
        assert_eq!((f.fin().first(), f.sent_into_void().last()), (Some(30), Some(50)));
        assert_eq!((f.reset().first(), f.app_closed().last()), (None, None));
    }

    #[test]
    fn emptied_facts_keep_their_room_and_nothing_else() {
        let mut f = Facts::default();
        f.add(Fact::Established, 10);
        f.add(Fact::Fin, 30);
        f.add(Fact::SentIntoVoid, 50);
        let room = f.spans.spans.len();
        let mut f = f.emptied();
        assert_eq!(f.spans.spans.len(), room);
        assert_eq!((f.established().first(), f.fin().first()), (None, None));
        assert_eq!(f.sent_into_void().first(), None);
        f.add(Fact::Fin, 70);
        assert_eq!((f.fin().first(), f.established().first()), (Some(70), None));
    }
}
