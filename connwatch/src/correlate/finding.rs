//! What connwatch reports: a misjudged liveness, with its proof and its remedy.

use std::{fmt, net::SocketAddr};

use crate::decode::{Detail, Family, Owner, SockId};

/// The kinds of misjudged liveness (../shared/TRAPS.md). Names are a stable interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CloseWaitLeak,
    EofIgnored,
    WriteAfterPeerClose,
    HalfOpenWrite,
    SoErrorFalseHealthy,
    ResetUnnoticed,
    ErrorIgnored,
    ConnectUnverified,
    LivenessUnchecked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Self::CloseWaitLeak,
        Self::EofIgnored,
        Self::WriteAfterPeerClose,
        Self::HalfOpenWrite,
        Self::SoErrorFalseHealthy,
        Self::ResetUnnoticed,
        Self::ErrorIgnored,
        Self::ConnectUnverified,
        Self::LivenessUnchecked,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "close-wait-leak",
            Self::EofIgnored => "eof-ignored",
            Self::WriteAfterPeerClose => "write-after-peer-close",
            Self::HalfOpenWrite => "half-open-write",
            Self::SoErrorFalseHealthy => "so-error-false-healthy",
            Self::ResetUnnoticed => "reset-unnoticed",
            Self::ErrorIgnored => "error-ignored",
            Self::ConnectUnverified => "connect-unverified",
            Self::LivenessUnchecked => "liveness-unchecked",
        }
    }

    /// Data is being lost or a dead connection is being used: errors. Leaks and
    /// misreadings that have not yet cost data: warnings.
    pub const fn severity(self) -> Severity {
        match self {
            Self::HalfOpenWrite | Self::ErrorIgnored | Self::ConnectUnverified => Severity::Error,
            _ => Severity::Warning,
        }
    }

    /// What the application believed.
    pub const fn belief(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "the connection is fine (or never looked)",
            Self::EofIgnored => "EPOLLIN / POLLIN meant data",
            Self::WriteAfterPeerClose => "its write succeeded, so the peer is there",
            Self::HalfOpenWrite => "writes succeed, so the peer is alive",
            Self::SoErrorFalseHealthy => "SO_ERROR == 0, so the connection is healthy",
            Self::ResetUnnoticed => "nothing happened",
            Self::ErrorIgnored => "the error was a one-off",
            Self::ConnectUnverified => "writable after connect means connected",
            Self::LivenessUnchecked => "the connection is alive, since nothing said otherwise",
        }
    }

    /// What the kernel knew.
    pub const fn truth(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "the peer closed (FIN) long ago; the socket sits in CLOSE_WAIT",
            Self::EofIgnored => "it was end-of-file, and the application kept polling or writing",
            Self::WriteAfterPeerClose => {
                "the peer had already closed; the data will be answered with RST"
            }
            Self::HalfOpenWrite => "every segment is being retransmitted, nothing acknowledged",
            Self::SoErrorFalseHealthy => {
                "the socket was closing, closed, or retransmitting without progress"
            }
            Self::ResetUnnoticed => {
                "an RST arrived; the application neither saw the error nor closed"
            }
            Self::ErrorIgnored => "the connection is dead; the application keeps using it",
            Self::ConnectUnverified => "the connect failed; SO_ERROR was never read",
            Self::LivenessUnchecked => {
                "nothing crosses it and nothing checks it: a vanished peer would go unnoticed"
            }
        }
    }

    /// The one-line remedy.
    pub const fn hint(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "read until recv() returns 0, then close the socket",
            Self::EofIgnored => {
                "treat recv() == 0 (and EPOLLRDHUP/EPOLLHUP) as end-of-stream: close the socket"
            }
            Self::WriteAfterPeerClose => {
                "check for EOF (recv() == 0 / EPOLLRDHUP) before writing, and close on it"
            }
            Self::HalfOpenWrite => {
                "set TCP_USER_TIMEOUT or use an application heartbeat, and close when it fires"
            }
            Self::SoErrorFalseHealthy => {
                "SO_ERROR == 0 is not liveness: read for EOF, bound unacknowledged data with TCP_USER_TIMEOUT"
            }
            Self::ResetUnnoticed => {
                "watch for errors (EPOLLERR, failed recv/send) and close the socket on ECONNRESET"
            }
            Self::ErrorIgnored => {
                "close the socket on ECONNRESET, EPIPE or ETIMEDOUT; it will not recover"
            }
            Self::ConnectUnverified => {
                "after EINPROGRESS and writability, read SO_ERROR before using the socket"
            }
            Self::LivenessUnchecked => {
                "enable SO_KEEPALIVE with a short TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, set TCP_USER_TIMEOUT, or send an application heartbeat with a deadline"
            }
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of a finding's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// When it happened (for an observation, when its first call began) and until when (its
    /// last call's end; `ts_ns` for a single event).
    pub ts_ns: u64,
    pub until_ns: u64,
    /// `kernel` or `app`: whose view this line is.
    pub source: &'static str,
    pub detail: Detail,
}

/// Numbers some findings carry (half-open-write).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measures {
    pub retransmits: u32,
    pub seconds_without_progress: f64,
    pub unacked_bytes: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    /// When the condition was found to hold (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    pub sock: SockId,
    pub owner: Option<Owner>,
    pub fd: Option<i32>,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel and application events that prove it, oldest first.
    pub evidence: Vec<Evidence>,
    pub measures: Option<Measures>,
    /// Events were lost while this socket was tracked: the timeline may miss some.
    pub evidence_incomplete: bool,
    /// Explanations read from the socket itself (its keepalive settings, when the kernel gives
    /// up), one line each.
    pub notes: Vec<String>,
    /// The owner's cgroup and what it shows (container, pod, unit); filled in by the agent.
    pub attribution: Option<crate::sinks::attribution::Attribution>,
}
