//! The detectors: each a condition over a socket's facts, phrased as comparisons of first and
//! last occurrences so it holds the same whatever order the events arrived in.

use super::{
    finding::{Kind, Measures},
    track::Track,
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
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { close_wait_grace_ns: 10_000_000_000, reset_grace_ns: 10_000_000_000, retransmits: 3 }
    }
}

/// Conditions decided by the events themselves, checked whenever one arrives.
pub fn on_event(track: &Track) -> Vec<(Kind, Option<Measures>)> {
    let f = &track.facts;
    let mut found = Vec::new();
    if let Some(eof) = f.eof_seen.first()
        && f.polled_or_written.after(eof)
    {
        found.push((Kind::EofIgnored, None));
    }
    let after_fin = f.fin.first().is_some_and(|fin| f.sent_ok.after(fin));
    if after_fin || f.sent_ok_peer_closed.first().is_some() {
        found.push((Kind::WriteAfterPeerClose, None));
    }
    if let (Some(sent), Some(snapshot)) = (f.sent_into_void.last(), f.void_snapshot) {
        let since = f.retransmit.first().unwrap_or(sent);
        found.push((
            Kind::HalfOpenWrite,
            Some(Measures {
                retransmits: f.retransmits.max(u32::from(snapshot.rto_retransmits)),
                seconds_without_progress: sent.saturating_sub(since) as f64 / 1e9,
                unacked_bytes: snapshot.unacked_bytes,
            }),
        ));
    }
    if f.false_healthy_read.first().is_some() {
        found.push((Kind::SoErrorFalseHealthy, None));
    }
    if let Some(error) = f.app_error.first()
        && f.used.after(error)
    {
        found.push((Kind::ErrorIgnored, None));
    }
    if let (Some(_), Some(_), Some(first_io)) =
        (f.connect_in_progress.first(), f.connect_failed.first(), f.io.first())
        && f.so_error_read.first().is_none_or(|read| read > first_io)
    {
        found.push((Kind::ConnectUnverified, None));
    }
    found
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

/// The FIN's time, while the socket still sits in CLOSE_WAIT and its application has not
/// closed it.
fn close_wait_since(track: &Track) -> Option<u64> {
    let f = &track.facts;
    let fin = f.fin.first()?;
    (f.left_close_wait.first().is_none() && f.app_closed.first().is_none()).then_some(fin)
}

/// The reset's time, while the application that holds the socket (even one it accepted
/// after the reset) has neither seen an error since nor closed it. Children reset before any
/// process accepted them belong to no application.
fn reset_unnoticed_since(track: &Track) -> Option<u64> {
    let f = &track.facts;
    let reset = f.reset.first()?;
    let held = f.app_touched.first().is_some();
    let noticed = f.app_error.last().is_some_and(|e| e >= reset) || f.app_closed.first().is_some();
    (held && !noticed).then_some(reset)
}
