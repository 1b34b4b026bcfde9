//! The kernel pipeline assembled: probes -> ring buffer -> decode, with loss and malformed
//! records counted. The binary and the integration tests both drive exactly this.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::{Duration, Instant},
};

use aya_log::EbpfLogger;

use crate::{
    decode::{self, Detail, Event},
    ingest::{Ring, loss::LossCounters},
    probes::{LoadOptions, ProbeError, Probes, cost::ProgramCost},
    sinks::{Ready, Summary},
};

/// Records taken from the ring buffer per [`Tracer::poll`].
pub const POLL_BATCH: usize = 4096;

pub struct Tracer {
    probes: Probes,
    ring: Ring,
    loss: LossCounters,
    logger: Option<EbpfLogger<KernelLog>>,
    /// Events decoded so far, by [`Detail::type_index`].
    events_by_type: [u64; Detail::TYPE_NAMES.len()],
    malformed: u64,
    /// Ring-buffer bytes taken so far (records with their 8-byte headers, 8-byte aligned).
    bytes_taken: u64,
    ring_buffer_bytes: u32,
    skips: RefCell<KernelSkips>,
    /// The ring buffer's loss count as last read, and whether records were taken since: a
    /// record is lost only while the buffer is full, and a full buffer's records are taken by
    /// the next drain, so after a drain that took nothing the count cannot have grown. An idle
    /// agent then reads no map (its 20 drains a second each read one per kind before).
    ring_lost: Cell<(u64, bool)>,
    /// Program costs as they stood when the programs were detached.
    cost_at_detach: Option<BTreeMap<String, ProgramCost>>,
}

/// The kernel's per-hook count of hits it skipped, read at most every [`KernelSkips::EVERY`]
/// (one fdinfo read per program) and once more at detach.
#[derive(Default)]
struct KernelSkips {
    by_hook: BTreeMap<String, u64>,
    read_at: Option<Instant>,
}

impl KernelSkips {
    const EVERY: Duration = Duration::from_millis(250);

    fn refresh(&mut self, probes: &Probes) {
        self.merge(probes.kernel_skips());
        self.read_at = Some(Instant::now());
    }

    /// Counts only grow: a reading that errs low (see `probes::skips::read`) never takes back
    /// what an earlier one counted.
    fn merge(&mut self, reading: Vec<(String, u64)>) {
        for (hook, skipped) in reading.into_iter().filter(|(_, n)| *n > 0) {
            let count = self.by_hook.entry(hook).or_default();
            *count = (*count).max(skipped);
        }
    }

    fn current(&mut self, probes: &Probes) -> &BTreeMap<String, u64> {
        let stale = self.read_at.is_none_or(|at| at.elapsed() >= Self::EVERY);
        if stale && !probes.attached.is_empty() {
            self.refresh(probes);
        }
        &self.by_hook
    }
}

impl Tracer {
    /// Loads and attaches everything; events start queueing in the kernel at once.
    pub fn start(options: &LoadOptions) -> Result<Self, ProbeError> {
        let mut probes = Probes::load(options)?;
        // Loading parsed the kernel's BTF (tens of MiB, all freed): give that memory back, or
        // the agent keeps it for its whole life.
        // SAFETY: malloc_trim has no preconditions.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
        let ring = Ring::take(&mut probes.ebpf);
        let loss = LossCounters::take(&mut probes.ebpf);
        // The programs log only on rare diagnostic paths (never on hot ones).
        let logger = match EbpfLogger::init_with_logger(&mut probes.ebpf, KernelLog) {
            Ok(logger) => Some(logger),
            Err(e) => {
                eprintln!(
                    "connwatch: warning: the kernel programs' diagnostics are unavailable: {e}"
                );
                None
            }
        };
        Ok(Self {
            probes,
            ring,
            loss,
            logger,
            events_by_type: [0; Detail::TYPE_NAMES.len()],
            malformed: 0,
            bytes_taken: 0,
            ring_buffer_bytes: options.ring_buffer_bytes,
            skips: RefCell::default(),
            ring_lost: Cell::new((0, true)),
            cost_at_detach: None,
        })
    }

    pub fn ready(&self) -> Ready {
        Ready {
            hooks: self
                .probes
                .attached
                .iter()
                .map(|a| (a.hook.id(), a.variant.mechanism.name()))
                .collect(),
            degraded: self.probes.skipped.iter().map(|s| (s.hook.id(), s.reason.clone())).collect(),
            uncounted_skips: self.probes.uncounted_skips(),
            ring_buffer_bytes: self.ring_buffer_bytes,
            epoll_registrations_seeded: self.probes.epoll_seeded,
        }
    }

    /// Decodes up to [`POLL_BATCH`] queued records into `out`; returns how many records were
    /// taken (fewer than `POLL_BATCH`: the ring buffer is empty now). Bounded, so a burst is
    /// handled in steps rather than all held in memory at once.
    pub fn poll(&mut self, out: &mut Vec<Event>) -> usize {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        let (bytes_taken, events_by_type, malformed) =
            (&mut self.bytes_taken, &mut self.events_by_type, &mut self.malformed);
        let taken = self.ring.drain(POLL_BATCH, |record| {
            *bytes_taken += (record.len() as u64 + 8).next_multiple_of(8);
            let decoded = out.len();
            match decode::decode_into(record, out) {
                Ok(()) => {
                    for event in &out[decoded..] {
                        events_by_type[event.detail.type_index()] += 1;
                    }
                }
                Err(_) => *malformed += 1,
            }
        });
        if taken > 0 {
            self.ring_lost.set((self.ring_lost.get().0, true));
        }
        taken
    }

    /// Ring-buffer bytes taken so far: the growth between two drains is how full the buffer
    /// was when drained.
    pub fn bytes_taken(&self) -> u64 {
        self.bytes_taken
    }

    /// Blocks until the kernel wakes the ring buffer or `timeout` passes. Submissions wake
    /// userspace only in batches, so callers poll again after a timeout too.
    pub fn wait(&self, timeout: Duration) {
        let mut fd = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut fd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    }

    /// The ring buffer's fd, for async readiness.
    pub fn ring_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Detaches every program; what is queued can still be polled.
    pub fn detach(&mut self) {
        self.skips.get_mut().refresh(&self.probes);
        self.cost_at_detach = self.probes.cost();
        self.probes.detach();
    }

    /// Events lost so far, as of the last [`Tracer::poll`]: those the ring buffer had no room
    /// for and hits the kernel skipped.
    pub fn lost_total(&self) -> u64 {
        let skipped: u64 = self.skips.borrow_mut().current(&self.probes).values().sum();
        self.ring_lost_total() + skipped
    }

    /// Records lost so far for want of ring-buffer space, as of the last [`Tracer::poll`].
    pub fn ring_lost_total(&self) -> u64 {
        let (mut ring_lost, stale) = self.ring_lost.get();
        if stale && let Ok(lost) = self.loss.read() {
            ring_lost = lost.total();
            self.ring_lost.set((ring_lost, false));
        }
        ring_lost
    }

    /// Hits the kernel skipped so far, by hook (only hooks with skips; see `probes::skips`).
    pub fn kernel_skips(&self) -> BTreeMap<String, u64> {
        self.skips.borrow_mut().current(&self.probes).clone()
    }

    /// Hits the kernel skipped a lead raw tracepoint program on that its understudy handled,
    /// by hook (every hook with an understudy).
    pub fn kernel_covered(&self) -> BTreeMap<String, u64> {
        self.probes.kernel_covered().into_iter().collect()
    }

    pub fn summary(&self, duration: Duration) -> Summary {
        let lost = match self.loss.read() {
            Ok(lost) => lost.named().collect(),
            Err(e) => {
                eprintln!("connwatch: warning: cannot read loss counters: {e}");
                BTreeMap::new()
            }
        };
        let folded = self.loss.folded().unwrap_or_else(|e| {
            eprintln!("connwatch: warning: cannot read kernel counters: {e}");
            Default::default()
        });
        Summary {
            duration,
            events: Detail::TYPE_NAMES
                .into_iter()
                .zip(self.events_by_type)
                .filter(|(_, n)| *n != 0)
                .collect(),
            lost,
            malformed: self.malformed,
            readiness_unexamined: folded.readiness_unexamined,
            io_summarised: folded.io_summarised,
            readiness_not_needed: folded.readiness_not_needed,
            skipped: self.kernel_skips(),
            program_cost: match self.probes.attached.is_empty() {
                true => self.cost_at_detach.clone(),
                false => self.probes.cost(),
            },
            watch: None,
        }
    }
}

/// Forwards the programs' rare diagnostics to stderr.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!(
            "connwatch: kernel {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_counts_never_go_back() {
        let mut skips = KernelSkips::default();
        let hook = "sock:inet_sock_set_state".to_string();
        skips.merge(vec![(hook.clone(), 5), ("tcp:tcp_destroy_sock".into(), 0)]);
        // A later reading that errs low (an understudy's cover counted before its skip).
        skips.merge(vec![(hook.clone(), 4)]);
        assert_eq!(skips.by_hook, BTreeMap::from([(hook.clone(), 5)]));
        skips.merge(vec![(hook.clone(), 7)]);
        assert_eq!(skips.by_hook[&hook], 7);
    }
}
