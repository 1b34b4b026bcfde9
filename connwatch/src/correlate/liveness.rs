//! The liveness audit: a connection that carries nothing and that nothing checks. A peer that
//! vanishes while the connection is idle goes unnoticed until the next write (and then for
//! up to `tcp_retries2`'s ~15 minutes) unless kernel keepalive, TCP_USER_TIMEOUT or an
//! application heartbeat would notice first. The settings come from the socket itself
//! (`SocketProber`); the judgement is pure.

use std::{fmt, net::SocketAddr};

/// A socket's own settings and kernel view, read with getsockopt on a duplicate of its fd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Kernel TCP state (TCP_INFO).
    pub state: u8,
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL (seconds) and TCP_KEEPCNT: the socket's own or the
    /// namespace's defaults.
    pub keep_idle_s: u32,
    pub keep_intvl_s: u32,
    pub keep_cnt: u32,
    /// TCP_USER_TIMEOUT, milliseconds (0: not set).
    pub user_timeout_ms: u32,
    /// Milliseconds since data was last sent and last received (TCP_INFO): the shorter one.
    pub idle_ms: u32,
    /// Smoothed RTT, microseconds (TCP_INFO).
    pub rtt_us: u32,
    /// net.ipv4.tcp_retries2 where the agent runs.
    pub retries2: u32,
}

/// Reads a socket's settings: the process `pid` holds it as `fd`, with these endpoints (a
/// reused fd number shows other endpoints and gives `None`).
pub trait SocketProber {
    fn settings(
        &mut self,
        pid: u32,
        fd: i32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<Settings>;
}

impl Settings {
    /// How long after the peer vanishes an idle connection would notice: keepalive's idle
    /// time plus its probes, cut short by TCP_USER_TIMEOUT once probing starts; `None` when
    /// nothing would (keepalive off: an idle connection sends nothing).
    pub fn noticed_after_s(&self) -> Option<u64> {
        if !self.keepalive {
            return None;
        }
        let probing = u64::from(self.keep_intvl_s) * u64::from(self.keep_cnt);
        let probing = match self.user_timeout_ms {
            0 => probing,
            ms => probing.min(u64::from(ms).div_ceil(1000)),
        };
        Some(u64::from(self.keep_idle_s) + probing)
    }

    /// Whether an idle connection with these settings is a finding after `grace_s` of quiet.
    pub fn unchecked(&self, grace_s: u64) -> bool {
        const ESTABLISHED: u8 = 1;
        self.state == ESTABLISHED
            && u64::from(self.idle_ms) >= grace_s * 1000
            && self.noticed_after_s().is_none_or(|after| after > grace_s)
    }

    /// How long the kernel retransmits unacknowledged data before it gives up: TCP_USER_TIMEOUT
    /// when set, otherwise `tcp_retries2` timeouts backing off from 200 ms to 120 s.
    pub fn gives_up_after_s(&self) -> f64 {
        if self.user_timeout_ms > 0 {
            return f64::from(self.user_timeout_ms) / 1000.0;
        }
        (0..=self.retries2).map(|i| (0.2 * 2f64.powi(i as i32)).min(120.0)).sum()
    }

    /// The evidence line of a liveness-unchecked finding.
    pub fn liveness_note(&self) -> String {
        let keepalive = if self.keepalive {
            format!(
                "keepalive on: idle {} s, then {} probes {} s apart",
                self.keep_idle_s, self.keep_cnt, self.keep_intvl_s
            )
        } else {
            "keepalive off".to_string()
        };
        let noticed = match self.noticed_after_s() {
            Some(s) => format!("a dead peer would be noticed after {}", Approx(s as f64)),
            None => "a dead peer would not be noticed until the next write".to_string(),
        };
        format!(
            "{keepalive}; TCP_USER_TIMEOUT {}; idle {}; {noticed}",
            user_timeout(self.user_timeout_ms),
            Approx(f64::from(self.idle_ms) / 1000.0)
        )
    }

    /// The evidence line of a half-open-write finding.
    pub fn give_up_note(&self) -> String {
        let why = match self.user_timeout_ms {
            0 => format!("tcp_retries2 = {}, TCP_USER_TIMEOUT not set", self.retries2),
            ms => format!("TCP_USER_TIMEOUT {}", user_timeout(ms)),
        };
        format!(
            "the kernel gives up on the unacknowledged data after {} ({why}); until then \
             every write succeeds",
            Approx(self.gives_up_after_s())
        )
    }
}

fn user_timeout(ms: u32) -> String {
    match ms {
        0 => "not set".into(),
        ms => format!("{} ms", ms),
    }
}

/// A duration as people say it: "about 2 h 11 min", "about 15 min 25 s", "4 s".
pub struct Approx(pub f64);

impl fmt::Display for Approx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.round() as u64;
        match s {
            0..60 => write!(f, "{s} s"),
            60..3600 => write!(f, "about {} min {} s", s / 60, s % 60),
            _ => write!(f, "about {} h {} min", s / 3600, s % 3600 / 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(keepalive: bool, idle_s: u32, intvl_s: u32, cnt: u32) -> Settings {
        Settings {
            state: 1,
            keepalive,
            keep_idle_s: idle_s,
            keep_intvl_s: intvl_s,
            keep_cnt: cnt,
            idle_ms: 400_000,
            retries2: 15,
            ..Settings::default()
        }
    }

    #[test]
    fn keepalive_off_or_slow_is_unchecked_short_keepalive_is_not() {
        assert!(idle(false, 7200, 75, 9).unchecked(300));
        let default = idle(true, 7200, 75, 9);
        assert!(default.unchecked(300));
        assert_eq!(default.noticed_after_s(), Some(7875));
        assert_eq!(Approx(7875.0).to_string(), "about 2 h 11 min");
        assert!(!idle(true, 60, 10, 3).unchecked(300), "noticed after 90 s");
        let mut busy = idle(false, 0, 0, 0);
        busy.idle_ms = 1000;
        assert!(!busy.unchecked(300), "traffic is a liveness check");
    }

    #[test]
    fn user_timeout_cuts_probing_short_and_bounds_retransmission() {
        let mut s = idle(true, 60, 75, 9);
        s.user_timeout_ms = 20_000;
        assert_eq!(s.noticed_after_s(), Some(80));
        assert_eq!(s.gives_up_after_s(), 20.0);
        s.user_timeout_ms = 0;
        assert!((s.gives_up_after_s() - 924.6).abs() < 0.01, "{}", s.gives_up_after_s());
        assert!(s.give_up_note().contains("about 15 min 25 s"), "{}", s.give_up_note());
    }
}
