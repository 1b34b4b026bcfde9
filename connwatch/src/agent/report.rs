//! Findings as log lines, de-duplicated: the correlator already reports each socket and kind
//! once; here a pattern repeating across many sockets of one process becomes one line per
//! (kind, process) and window, followed by a count, not a flood.

use std::{collections::HashMap, time::Duration};

use crate::correlate::{Finding, Kind};

/// How long after a (kind, process) line further ones are only counted.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Window {
    opened_ns: u64,
    suppressed: u64,
}

#[derive(Default)]
pub struct FindingLog {
    windows: HashMap<(Kind, Option<u32>), Window>,
}

/// What to write for one finding.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The finding in full: the first of its (kind, process) in a window.
    Full,
    /// Counted only.
    Counted,
}

impl FindingLog {
    pub fn admit(&mut self, finding: &Finding, now_ns: u64) -> Line {
        let key = (finding.kind, finding.owner.as_ref().map(|o| o.pid));
        let window = self.windows.entry(key).or_default();
        if window.opened_ns != 0 && now_ns < window.opened_ns + WINDOW.as_nanos() as u64 {
            window.suppressed += 1;
            return Line::Counted;
        }
        window.opened_ns = now_ns.max(1);
        Line::Full
    }

    /// Windows that closed with findings only counted: (kind, pid, count), reported once.
    pub fn closed(&mut self, now_ns: u64) -> Vec<(Kind, Option<u32>, u64)> {
        let mut out = Vec::new();
        self.windows.retain(|(kind, pid), w| {
            let open = now_ns < w.opened_ns + WINDOW.as_nanos() as u64;
            if !open && w.suppressed > 0 {
                out.push((*kind, *pid, w.suppressed));
            }
            open
        });
        out
    }
}
