//! The detectors, as one decision matrix: for what the kernel knew, what the application had
//! been told, and what it did next, which finding follows (docs/json.md has the same table).
//!
//! | kernel truth | the application was told | and then | finding |
//! |---|---|---|---|
//! | FIN (CLOSE_WAIT) | anything or nothing | kept the socket open past `--close-wait-grace` | close-wait-leak |
//! | FIN | EOF (recv 0, HUP) | polled or read on at least twice more | eof-ignored |
//! | FIN | EOF (recv 0; RDHUP/HUP/ERR with no data read since), or an error | wrote, and the peer answered with RST (or the next call failed) | write-after-peer-close |
//! | FIN | nothing (a race: the FIN arrived as it wrote) | wrote | none |
//! | FIN, peer half-closed (no RST follows) | EOF | wrote a reply | none |
//! | `--retrans-threshold` timeouts without an ACK | writes succeed | wrote | half-open-write |
//! | closing, closed or retransmitting | SO_ERROR 0, no error seen before | wrote | so-error-false-healthy |
//! | closing, closed or retransmitting | SO_ERROR 0, an error seen before | wrote or read | error-ignored |
//! | closing, closed or retransmitting | SO_ERROR 0 | closed, or did nothing | none |
//! | RST or stored error | an error (failed call, SO_ERROR != 0) | read or wrote again | error-ignored |
//! | RST or stored error | an error | closed | none |
//! | RST | nothing (no error seen) | held the socket past `--reset-grace` | reset-unnoticed |
//! | connect failed | EINPROGRESS, then writable | used the socket without reading SO_ERROR | connect-unverified |
//!
//! Every condition compares first and last occurrences, so it holds whatever order the events
//! arrived in. Observations are placed at the start of their call, before the kernel events
//! the call itself caused.

use super::{
    finding::{Kind, Measures},
    track::{Facts, Track},
};

/// Detector thresholds (`connwatch watch` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// `--close-wait-grace`: how long an application may leave a peer-closed socket open.
    pub close_wait_grace_ns: u64,
    /// `--reset-grace`: how long an application may take to notice a reset.
    pub reset_grace_ns: u64,
    /// `--retrans-threshold`: retransmission timeouts without progress that make a write
    /// "into the void".
    pub retransmits: u8,
    /// `--idle-grace`: how long an established connection may carry nothing before the audit
    /// asks whether anything would notice its peer vanish.
    pub idle_grace_ns: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            close_wait_grace_ns: 10_000_000_000,
            reset_grace_ns: 10_000_000_000,
            retransmits: 3,
            idle_grace_ns: 300_000_000_000,
        }
    }
}

/// Conditions decided by the events themselves, checked whenever one arrives.
pub fn on_event(track: &Track) -> Vec<(Kind, Option<Measures>)> {
    let f = &track.facts;
    let mut found = Vec::new();
    if eof_ignored(f) {
        found.push((Kind::EofIgnored, None));
    }
    if write_after_peer_close(f) {
        found.push((Kind::WriteAfterPeerClose, None));
    }
    if let Some(measures) = half_open_write(f) {
        found.push((Kind::HalfOpenWrite, Some(measures)));
    }
    match zero_so_error_then_used(f) {
        Some(ZeroThenUsed { error_seen_before: false }) => {
            found.push((Kind::SoErrorFalseHealthy, None))
        }
        Some(ZeroThenUsed { error_seen_before: true }) => found.push((Kind::ErrorIgnored, None)),
        None => {}
    }
    if error_ignored(f) {
        found.push((Kind::ErrorIgnored, None));
    }
    if connect_unverified(f) {
        found.push((Kind::ConnectUnverified, None));
    }
    found
}

/// Told the stream had ended, the application came back for more, twice or more.
fn eof_ignored(f: &Facts) -> bool {
    f.eof_seen().first().is_some_and(|eof| f.polled_after_peer_close().count_after(eof) >= 2)
}

/// A successful write that began after the peer had closed and after the application had been
/// told so, proven unwanted by the peer's RST (or a failure) after it.
fn write_after_peer_close(f: &Facts) -> bool {
    let Some(write) = f.sent_ok_peer_closed().last() else {
        return false;
    };
    let refused = f.reset().after(write) || f.app_error().after(write);
    refused && told_peer_closed_before(f, write)
}

/// Whether, before `t`, the application had been told the peer closed or the connection
/// failed: recv() returned 0, a call failed, or readiness said RDHUP/HUP/ERR and no data was
/// read between it and `t` (data read after it is what the application was answering).
fn told_peer_closed_before(f: &Facts, t: u64) -> bool {
    let before = |at: Option<u64>| at.is_some_and(|at| at < t);
    if before(f.eof_read().first()) || before(f.app_error().first()) {
        return true;
    }
    let told = match (f.told_ready().first(), f.told_ready().last()) {
        (_, Some(last)) if last < t => last,
        (Some(first), _) if first < t => first,
        _ => return false,
    };
    !f.data_read().last().is_some_and(|read| read > told && read < t)
}

fn half_open_write(f: &Facts) -> Option<Measures> {
    let (sent, snapshot) = (f.sent_into_void().last()?, f.void_snapshot()?);
    let since = f.retransmit().first().unwrap_or(sent);
    Some(Measures {
        retransmits: f.retransmits().max(u32::from(snapshot.rto_retransmits)),
        seconds_without_progress: sent.saturating_sub(since) as f64 / 1e9,
        unacked_bytes: snapshot.unacked_bytes,
    })
}

struct ZeroThenUsed {
    error_seen_before: bool,
}

/// SO_ERROR read 0 on a dead or dying socket, and the application went on to write. With an
/// error seen before the 0 (the read cleared it), it is the error that was ignored.
fn zero_so_error_then_used(f: &Facts) -> Option<ZeroThenUsed> {
    let zero = f.false_healthy_read().first()?;
    f.sent().after(zero).then(|| ZeroThenUsed {
        error_seen_before: f.app_error().first().is_some_and(|e| e < zero),
    })
}

/// After an error it saw, the application read or wrote again.
fn error_ignored(f: &Facts) -> bool {
    f.app_error().first().is_some_and(|error| f.io().after(error))
}

/// After EINPROGRESS the connect failed, and the application used the socket before reading
/// SO_ERROR (or never read it).
fn connect_unverified(f: &Facts) -> bool {
    match (f.connect_in_progress().first(), f.connect_failed().first(), f.io().first()) {
        (Some(_), Some(_), Some(first_io)) => {
            f.so_error_read().first().is_none_or(|read| read > first_io)
        }
        _ => false,
    }
}

/// A held, established connection that has carried nothing for the idle grace and was not
/// audited within it: the liveness audit asks the socket for its settings. The track's own
/// fields are checked before its facts (which live apart from it): the audit asks this of
/// every tracked socket.
pub fn idle_candidate(track: &Track, now: u64, t: &Thresholds) -> bool {
    let held_idle = track.reported & (1 << Kind::LivenessUnchecked as u16) == 0
        && track.last_ts.saturating_add(t.idle_grace_ns) <= now
        && track.idle_audited_ns().saturating_add(t.idle_grace_ns) <= now
        && track.owner().is_some()
        && track.fd().is_some();
    if !held_idle {
        return false;
    }
    let f = &track.facts;
    let over = f.fin().first().is_some()
        || f.reset().first().is_some()
        || f.kernel_closed().first().is_some()
        || f.app_closed().first().is_some();
    f.established().first().is_some() && !over
}

/// Conditions that hold once time has passed without the application reacting.
pub fn on_tick(track: &Track, now: u64, t: &Thresholds) -> Vec<Kind> {
    let mut found = Vec::new();
    if close_wait_since(track).is_some_and(|fin| now >= fin + t.close_wait_grace_ns) {
        found.push(Kind::CloseWaitLeak);
    }
    if reset_unnoticed_since(track).is_some_and(|reset| now >= reset + t.reset_grace_ns) {
        found.push(Kind::ResetUnnoticed);
    }
    found
}

/// When a timer detector not yet reported could next fire for this socket.
pub fn next_deadline(track: &Track, t: &Thresholds) -> Option<u64> {
    let pending = |kind: Kind| track.reported & (1 << kind as u16) == 0;
    let close_wait = close_wait_since(track)
        .filter(|_| pending(Kind::CloseWaitLeak))
        .map(|fin| fin + t.close_wait_grace_ns);
    let reset = reset_unnoticed_since(track)
        .filter(|_| pending(Kind::ResetUnnoticed))
        .map(|r| r + t.reset_grace_ns);
    match (close_wait, reset) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Deadlines [`next_deadline`] may have given earlier whose condition has since ended (the
/// application closed the socket, or noticed the reset): they can be taken off the schedule.
pub fn ended_deadlines(track: &Track, t: &Thresholds) -> [Option<u64>; 2] {
    let f = &track.facts;
    let ended = |began: Option<u64>, ongoing: Option<u64>, grace: u64| {
        began.filter(|_| ongoing.is_none()).map(|at| at + grace)
    };
    [
        ended(f.fin().first(), close_wait_since(track), t.close_wait_grace_ns),
        ended(f.reset().first(), reset_unnoticed_since(track), t.reset_grace_ns),
    ]
}

/// The FIN's time, while the socket still sits in CLOSE_WAIT and its application has not
/// closed it.
/// A socket already reported as eof-ignored is not reported again as a leak: the application
/// was told, and that finding says more.
fn close_wait_since(track: &Track) -> Option<u64> {
    let f = &track.facts;
    let fin = f.fin().first()?;
    let told = track.reported & (1 << Kind::EofIgnored as u16) != 0;
    (f.left_close_wait().first().is_none() && f.app_closed().first().is_none() && !told)
        .then_some(fin)
}

/// The reset's time, while the application that holds the socket (even one it accepted
/// after the reset) has neither seen an error since nor closed it. Children reset before any
/// process accepted them belong to no application.
fn reset_unnoticed_since(track: &Track) -> Option<u64> {
    let f = &track.facts;
    let reset = f.reset().first()?;
    let held = f.app_touched().first().is_some();
    let noticed =
        f.app_error().last().is_some_and(|e| e >= reset) || f.app_closed().first().is_some();
    (held && !noticed).then_some(reset)
}
