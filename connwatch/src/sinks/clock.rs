//! Event times are CLOCK_MONOTONIC (what eBPF reads); people want wall-clock times.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Realtime minus monotonic, in nanoseconds, measured once at start.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let realtime =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        Self { offset_ns: realtime - monotonic_ns() as i128 }
    }

    /// `HH:MM:SS.mmm` (UTC) of a monotonic timestamp.
    pub fn time_of_day(&self, ts_ns: u64) -> String {
        let wall_ms = (ts_ns as i128 + self.offset_ns).max(0) / 1_000_000;
        let ms_of_day = wall_ms % 86_400_000;
        let (h, m, s, ms) = (
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000,
        );
        format!("{h:02}:{m:02}:{s:02}.{ms:03}")
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
