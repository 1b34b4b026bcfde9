//! The kernel pipeline assembled: probes -> ring buffer -> decode, with loss and malformed
//! records counted. The binary and the integration tests both drive exactly this.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use aya_log::EbpfLogger;

use crate::{
    decode::{Detail, Event},
    ingest::{Reader, Tally, loss::LossCounters},
    probes::{LoadOptions, ProbeError, Probes, cost::ProgramCost},
    sinks::{Ready, Summary},
};

/// Records taken from the ring buffer per [`Tracer::poll`].
pub const POLL_BATCH: usize = 4096;

pub struct Tracer {
    probes: Probes,
    /// The ring buffers this thread reads; empty once handed to the correlator threads.
    readers: Vec<Reader>,
    /// What has been read from each ring buffer, by whichever thread reads it.
    tallies: Vec<Arc<Tally>>,
    /// A duplicate of each ring buffer's fd: its readiness, wherever it is read.
    wake_fds: Vec<OwnedFd>,
    loss: LossCounters,
    logger: Option<EbpfLogger<KernelLog>>,
    ring_buffer_bytes: u32,
    skips: RefCell<KernelSkips>,
    /// The ring buffers' loss count as last read, and the bytes taken then: a record is lost
    /// only while a buffer is full, and a full buffer's records are taken by the next drain,
    /// so while nothing was taken the count cannot have grown. An idle agent then reads no map
    /// (its 20 drains a second each read one per kind before).
    ring_lost: Cell<(u64, u64)>,
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
        if options.hooks_only {
            eprintln!(
                "connwatch: warning: --hooks-only: every hook runs a program that returns at \
                 once; nothing will be reported"
            );
        }
        // Loading parsed the kernel's BTF (tens of MiB, all freed): give that memory back, or
        // the agent keeps it for its whole life.
        // SAFETY: malloc_trim has no preconditions.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
        let readers = Reader::take_all(&mut probes.ebpf, options.rings);
        let wake_fds = readers
            .iter()
            .map(|r| r.as_fd().try_clone_to_owned())
            .collect::<Result<_, _>>()
            .map_err(|e| ProbeError::Option(format!("duplicating a ring buffer's fd: {e}")))?;
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
            tallies: readers.iter().map(Reader::tally).collect(),
            readers,
            wake_fds,
            loss,
            logger,
            ring_buffer_bytes: options.ring_bytes_total(),
            skips: RefCell::default(),
            ring_lost: Cell::new((0, u64::MAX)),
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

    /// Decodes up to [`POLL_BATCH`] records queued in the ring buffers this thread still
    /// holds into `out`; returns how many records were taken (fewer than `POLL_BATCH`: they
    /// are empty now). Bounded, so a burst is handled in steps rather than all held in memory
    /// at once.
    pub fn poll(&mut self, out: &mut Vec<Event>) -> usize {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        let mut taken = 0;
        for reader in &mut self.readers {
            taken += reader.read(POLL_BATCH - taken, out);
        }
        taken
    }

    /// Hands the ring buffers over, to be read on the correlator threads, where there are
    /// several (one per thread): [`Self::poll`] then takes nothing. A single ring buffer stays
    /// here (the result is empty).
    pub fn hand_over_rings(&mut self) -> Vec<Reader> {
        match self.readers.len() {
            0 | 1 => Vec::new(),
            _ => std::mem::take(&mut self.readers),
        }
    }

    /// Whether [`Self::poll`] reads the ring buffers (they were not handed over).
    pub fn reads_rings(&self) -> bool {
        !self.readers.is_empty()
    }

    /// Ring-buffer bytes taken so far: the growth between two drains is how full the buffers
    /// were when drained.
    pub fn bytes_taken(&self) -> u64 {
        self.tallies.iter().map(|t| t.bytes_taken()).sum()
    }

    /// Blocks until the kernel wakes a ring buffer or `timeout` passes. Submissions wake
    /// userspace only in batches, so callers poll again after a timeout too.
    pub fn wait(&self, timeout: Duration) {
        let mut fds: Vec<_> = self
            .wake_fds
            .iter()
            .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let timeout = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` holds valid pollfds, as many as passed.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    }

    /// Each ring buffer's fd, in ring order, for async readiness.
    pub fn ring_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.wake_fds.iter().map(|fd| fd.as_fd())
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
        let (mut ring_lost, taken_then) = self.ring_lost.get();
        let taken = self.bytes_taken();
        if taken != taken_then
            && let Ok(lost) = self.loss.read()
        {
            ring_lost = lost.total();
            self.ring_lost.set((ring_lost, taken));
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
                .zip(self.events_by_type())
                .filter(|(_, n)| *n != 0)
                .collect(),
            records: self.tallies.iter().map(|t| t.records()).sum(),
            lost,
            malformed: self.tallies.iter().map(|t| t.malformed()).sum(),
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

impl Tracer {
    /// Events decoded so far, from every ring buffer, by [`Detail::type_index`].
    fn events_by_type(&self) -> [u64; Detail::TYPE_NAMES.len()] {
        let mut sum = [0; Detail::TYPE_NAMES.len()];
        for tally in &self.tallies {
            for (total, n) in sum.iter_mut().zip(tally.events_by_type()) {
                *total += n;
            }
        }
        sum
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
