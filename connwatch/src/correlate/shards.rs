//! Correlators side by side, each owning the sockets at its share of kernel addresses, so that
//! a busy many-core host's events are joined on several cores.
//!
//! A socket's every life lives at one kernel address, and the only join across identities (an
//! adopted identity to the seen-born life at its address) stays within that address, so each
//! shard is a whole [`Correlator`] and needs nothing from the others. With more than one, each
//! runs on a thread of its own. Either it reads its own ring buffer, which the kernel fills
//! with its sockets' records alone ([`Shards::read_rings`]), or it takes its share of every
//! batch the caller drains, in order. A shard with its own ring buffer waits on it, so the
//! kernel wakes that thread itself. Findings come back from [`Shards::ingest`] as the shards
//! complete them, and all of them by the end of the next [`Shards::tick`].

use std::{
    collections::BTreeMap,
    mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender, SyncSender, TryRecvError},
    },
    thread::{self, JoinHandle},
};

use connwatch_common::names::MAX_RINGS;

use super::{Correlator, Finding, Kind};
use crate::{
    decode::{Event, SockId},
    ingest::Reader,
    pipeline::DRAIN_INTERVAL,
    tracer::POLL_BATCH,
};

/// The most shards `--correlator-threads` accepts (and auto chooses): one ring buffer each.
pub const MOST_SHARDS: usize = MAX_RINGS;
/// The fewest CPUs `auto` runs several correlator threads on.
pub const SHARDED_FROM_CPUS: usize = 4;
/// Batches a shard may have queued before the drain waits for it (and the ring buffer, not
/// memory, absorbs the excess: what it cannot hold is counted as lost).
const QUEUED_BATCHES: usize = 8;

pub struct Shards {
    inner: Inner,
}

enum Inner {
    One(Box<Correlator>),
    Many(Box<Workers>),
}

impl Shards {
    /// `count` correlators made by `make`, given the number of sockets each may track (an
    /// equal share of `max_sockets`).
    pub fn new(count: usize, max_sockets: usize, make: impl Fn(usize) -> Correlator) -> Self {
        let count = count.clamp(1, MOST_SHARDS);
        let each = max_sockets.div_ceil(count);
        let inner = if count == 1 {
            Inner::One(Box::new(make(each)))
        } else {
            Inner::Many(Box::new(Workers::start((0..count).map(|_| make(each)).collect())))
        };
        Self { inner }
    }

    /// How many correlators `auto` runs on this host: one per CPU, at most [`MOST_SHARDS`]; one
    /// below [`SHARDED_FROM_CPUS`]. Each reads its own ring buffer, and a thread costs nothing
    /// while its sockets are quiet. On a host whose CPUs a workload saturates, each thread gets
    /// only its fair share of a CPU: one per two CPUs fell behind on 16 CPUs, the work of each
    /// a little more than its share (docs/benchmarks.md, session 17). On 2 CPUs one keeps up,
    /// and a second one's malloc arena took watch over its memory target (48.7 MiB with
    /// 65,536 sockets tracked, against 47.2 with one; target 48).
    pub fn auto_count() -> usize {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < SHARDED_FROM_CPUS { 1 } else { cpus.min(MOST_SHARDS) }
    }

    /// Joins `events` (in the order the kernel delivered them); returns the findings completed
    /// so far: with several shards, some of these events' findings may come with a later call.
    pub fn ingest(&mut self, events: &[Event]) -> Vec<Finding> {
        match &mut self.inner {
            Inner::One(one) => one.ingest_all(events),
            Inner::Many(workers) => workers.ingest(events.iter().cloned()),
        }
    }

    /// [`Self::ingest`], taking the events (emptied) instead of copying them to the shards.
    pub fn ingest_taken(&mut self, events: &mut Vec<Event>) -> Vec<Finding> {
        let findings = match &mut self.inner {
            Inner::Many(workers) => workers.ingest(events.drain(..)),
            Inner::One(_) => self.ingest(events),
        };
        events.clear();
        findings
    }

    pub fn ingest_one(&mut self, event: &Event) -> Vec<Finding> {
        self.ingest(std::slice::from_ref(event))
    }

    /// Gives each shard its ring buffer (`readers`, in ring order, one per shard) to read on its
    /// own thread; each event it reads passes a tap made by `tap` first. No readers: the
    /// caller reads the one ring buffer and hands the events over.
    pub fn read_rings(&mut self, readers: Vec<Reader>, tap: impl Fn() -> Box<dyn Tap>) {
        if readers.is_empty() {
            return;
        }
        let Inner::Many(workers) = &mut self.inner else {
            panic!("one correlator reads its ring buffer on the caller's thread");
        };
        assert_eq!(readers.len(), workers.queues.len(), "one ring buffer per shard");
        for (shard, reader) in readers.into_iter().enumerate() {
            let wake = Arc::new(eventfd());
            let source = Source { reader, tap: tap(), batch: Vec::new(), wake: Arc::clone(&wake) };
            workers.send(shard, Work::Read(Box::new(source)));
            workers.wakes[shard] = Some(wake);
        }
    }

    /// Sockets whose connection ended, as the shards' taps reported them so far.
    pub fn take_ended(&mut self) -> Vec<SockId> {
        match &mut self.inner {
            Inner::One(_) => Vec::new(),
            Inner::Many(workers) => mem::take(&mut workers.ended),
        }
    }

    /// The kernel's running loss count at `now` (see [`Correlator::note_lost_total`]). With
    /// several shards it goes with the next tick (or before the next events), so a quiet shard
    /// is woken once per drain, not twice.
    pub fn note_lost_total(&mut self, now: u64, lost_total: u64) {
        match &mut self.inner {
            Inner::One(one) => one.note_lost_total(now, lost_total),
            Inner::Many(workers) => workers.lost = Some((now, lost_total)),
        }
    }

    /// Every shard's timers due at `now`; with several shards, waits until each has joined
    /// everything given before, and returns every finding not yet returned.
    pub fn tick(&mut self, now: u64) -> Vec<Finding> {
        match &mut self.inner {
            Inner::One(one) => one.tick(now),
            Inner::Many(workers) => {
                let lost = workers.lost.take();
                workers.send_all(|| Work::Tick { now, lost });
                workers.settle()
            }
        }
    }

    /// Waits until every shard has joined everything given before; returns the findings not
    /// yet returned.
    pub fn finish_pending(&mut self) -> Vec<Finding> {
        match &mut self.inner {
            Inner::One(_) => Vec::new(),
            Inner::Many(workers) => workers.settle(),
        }
    }

    pub fn tracked(&self) -> usize {
        self.sum(|c| c.tracked as u64) as usize
    }

    pub fn audited(&self) -> u64 {
        self.sum(|c| c.audited)
    }

    pub fn evicted(&self) -> u64 {
        self.sum(|c| c.evicted)
    }

    pub fn withheld(&self) -> u64 {
        self.sum(|c| c.withheld)
    }

    /// Findings reported so far, by kind (with several shards: as of their last answers).
    pub fn reported(&self) -> BTreeMap<Kind, u64> {
        let mut all = BTreeMap::new();
        for counts in self.counts() {
            for (kind, n) in &counts.reported {
                *all.entry(*kind).or_default() += n;
            }
        }
        all
    }

    fn counts(&self) -> Vec<Counts> {
        match &self.inner {
            Inner::One(one) => vec![Counts::of(one)],
            Inner::Many(workers) => workers.counts.clone(),
        }
    }

    fn sum(&self, field: impl Fn(&Counts) -> u64) -> u64 {
        self.counts().iter().map(field).sum()
    }
}

impl From<Correlator> for Shards {
    fn from(one: Correlator) -> Self {
        Self { inner: Inner::One(Box::new(one)) }
    }
}

/// What a command does with each event a shard reads from its ring buffer, on that shard's
/// thread, before its correlator joins it.
pub trait Tap: Send {
    fn tap(&mut self, event: &mut Event);

    /// Sockets whose connection ended among the events tapped since the last call.
    fn ended(&mut self) -> Vec<SockId> {
        Vec::new()
    }

    /// After each batch of events read: what the tap holds for others to see is published.
    fn flush(&mut self) {}
}

/// A tap that leaves every event as it is.
pub struct NoTap;

impl Tap for NoTap {
    fn tap(&mut self, _: &mut Event) {}
}

/// A shard's own ring buffer, with the tap its events pass.
struct Source {
    reader: Reader,
    tap: Box<dyn Tap>,
    batch: Vec<Event>,
    /// Written when work is queued for the shard, which waits on this and its ring buffer.
    wake: Arc<OwnedFd>,
}

impl Source {
    /// Waits until the ring buffer has records, work is queued or [`DRAIN_INTERVAL`] passes.
    /// The ring buffer is ready as long as it holds anything: under load the thread reads on
    /// without sleeping, and the kernel's batched wake-ups only matter to a quiet one.
    fn wait(&self) {
        let mut fds = [self.reader.as_raw_fd(), self.wake.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = DRAIN_INTERVAL.as_millis() as i32;
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if fds[1].revents & libc::POLLIN != 0 {
            let mut count = 0u64;
            // SAFETY: an eventfd is read 8 bytes at a time into a u64.
            unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut count).cast(), 8) };
        }
    }
}

/// A non-blocking eventfd.
fn eventfd() -> OwnedFd {
    // SAFETY: eventfd has no preconditions; the fd returned is ours alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a new, valid fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What a shard is asked to do, in order. A shard with its own ring buffer reads it before
/// the loss count and the tick, so they come after every event queued.
enum Work {
    Events(Vec<Event>),
    Lost {
        now: u64,
        lost_total: u64,
    },
    /// Timers due at `now`, after the loss count noted since the last tick, if any.
    Tick {
        now: u64,
        lost: Option<(u64, u64)>,
    },
    Read(Box<Source>),
}

/// A shard's answer to one piece of work (or, unasked, what reading its ring buffer found):
/// its findings, its counts after it, and the batch it was given, emptied, for the next one.
struct Done {
    shard: usize,
    /// Whether this answers work sent (the rest report what a ring buffer held).
    answers: bool,
    findings: Vec<Finding>,
    counts: Counts,
    emptied: Option<Vec<Event>>,
    /// Events the tap gave another shard's identity (a socket the inventory knew first).
    redirected: Vec<Event>,
    /// Sockets whose connection ended (on ticks: the tap's since the last).
    ended: Vec<SockId>,
}

impl Done {
    fn new(shard: usize, answers: bool) -> Self {
        Self {
            shard,
            answers,
            findings: Vec::new(),
            counts: Counts::default(),
            emptied: None,
            redirected: Vec::new(),
            ended: Vec::new(),
        }
    }
}

#[derive(Clone, Default)]
struct Counts {
    tracked: usize,
    audited: u64,
    evicted: u64,
    withheld: u64,
    reported: BTreeMap<Kind, u64>,
}

impl Counts {
    fn of(c: &Correlator) -> Self {
        Self {
            tracked: c.tracked(),
            audited: c.audited(),
            evicted: c.evicted(),
            withheld: c.withheld(),
            reported: c.reported().clone(),
        }
    }
}

struct Workers {
    queues: Vec<SyncSender<Work>>,
    answers: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Work sent and not yet answered.
    pending: usize,
    counts: Vec<Counts>,
    /// Each shard's part of the batch being split.
    parts: Vec<Vec<Event>>,
    /// Batches the shards have emptied, kept for their room: in a steady stream no batch is
    /// allocated or freed, so the threads do not contend for the process's memory map.
    spare: Vec<Vec<Event>>,
    /// Each shard's wake-up, once it reads its own ring buffer.
    wakes: Vec<Option<Arc<OwnedFd>>>,
    redirected: Vec<Event>,
    ended: Vec<SockId>,
    /// The loss count noted and not sent yet: `(now, lost_total)`.
    lost: Option<(u64, u64)>,
}

impl Workers {
    fn start(shards: Vec<Correlator>) -> Self {
        let (answer, answers) = mpsc::channel();
        let count = shards.len();
        let (queues, threads) = shards
            .into_iter()
            .enumerate()
            .map(|(index, correlator)| {
                let (queue, work) = mpsc::sync_channel(QUEUED_BATCHES);
                let answer = answer.clone();
                let thread = thread::Builder::new()
                    .name(format!("correlate-{index}"))
                    .spawn(move || serve(index, count, correlator, &work, &answer))
                    .expect("starting a correlator thread");
                (queue, thread)
            })
            .unzip();
        Self {
            queues,
            answers,
            threads,
            pending: 0,
            counts: vec![Counts::default(); count],
            parts: vec![Vec::new(); count],
            spare: Vec::new(),
            wakes: vec![None; count],
            redirected: Vec::new(),
            ended: Vec::new(),
            lost: None,
        }
    }

    fn ingest(&mut self, events: impl Iterator<Item = Event>) -> Vec<Finding> {
        // A loss noted before these events is known to the shards before them.
        if let Some((now, lost_total)) = self.lost.take() {
            self.send_all(|| Work::Lost { now, lost_total });
        }
        self.split(events);
        self.collect()
    }

    /// Sends each shard its part of `events`.
    fn split(&mut self, events: impl Iterator<Item = Event>) {
        let count = self.queues.len();
        for event in events {
            self.parts[shard_of(&event.sock, count)].push(event);
        }
        for shard in 0..count {
            if !self.parts[shard].is_empty() {
                let next = self.spare.pop().unwrap_or_default();
                let part = mem::replace(&mut self.parts[shard], next);
                self.send(shard, Work::Events(part));
            }
        }
    }

    /// The answers already in, their redirected events passed on.
    fn collect(&mut self) -> Vec<Finding> {
        let mut findings = Vec::new();
        while let Ok(done) = self.answers.try_recv() {
            self.take(done, &mut findings);
        }
        self.pass_redirected();
        findings
    }

    fn pass_redirected(&mut self) {
        if !self.redirected.is_empty() {
            let redirected = mem::take(&mut self.redirected);
            self.split(redirected.into_iter());
        }
    }

    fn send_all(&mut self, work: impl Fn() -> Work) {
        for shard in 0..self.queues.len() {
            self.send(shard, work());
        }
    }

    fn send(&mut self, shard: usize, work: Work) {
        self.queues[shard].send(work).expect("a correlator thread stopped");
        self.pending += 1;
        if let Some(wake) = &self.wakes[shard] {
            let one = 1u64;
            // SAFETY: an eventfd is written 8 bytes at a time from a u64.
            unsafe { libc::write(wake.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Waits for every answer still due.
    fn settle(&mut self) -> Vec<Finding> {
        let mut findings = Vec::new();
        loop {
            while self.pending > 0 {
                let done = self.answers.recv().expect("a correlator thread stopped");
                self.take(done, &mut findings);
            }
            if self.redirected.is_empty() {
                return findings;
            }
            self.pass_redirected();
        }
    }

    fn take(&mut self, done: Done, findings: &mut Vec<Finding>) {
        if done.answers {
            self.pending -= 1;
        }
        self.counts[done.shard] = done.counts;
        findings.extend(done.findings);
        self.redirected.extend(done.redirected);
        self.ended.extend(done.ended);
        // Enough spares for every batch that can be queued; more would only hold memory.
        if let Some(emptied) = done.emptied
            && self.spare.len() < self.queues.len() * (QUEUED_BATCHES + 1)
        {
            self.spare.push(emptied);
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A shard's thread: work in, answers out, until the queue closes; with its own ring buffer,
/// also whatever reading it finds.
fn serve(
    index: usize,
    count: usize,
    correlator: Correlator,
    work: &Receiver<Work>,
    answer: &Sender<Done>,
) {
    let mut shard = Shard { index, count, correlator, source: None, ended: Vec::new() };
    loop {
        let next = match &shard.source {
            None => work.recv().ok(),
            Some(source) => match work.try_recv() {
                Ok(next) => Some(next),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    source.wait();
                    let mut found = Done::new(index, false);
                    shard.read_ring(&mut found);
                    if (found.findings.is_empty() && found.redirected.is_empty())
                        || shard.answer(found, answer)
                    {
                        continue;
                    }
                    return;
                }
            },
        };
        let Some(next) = next else { return };
        let mut done = Done::new(index, true);
        if !matches!(next, Work::Events(_)) {
            shard.read_ring(&mut done);
        }
        match next {
            Work::Events(mut events) => {
                done.findings = shard.correlator.ingest_all(&events);
                events.clear();
                done.emptied = Some(events);
            }
            Work::Lost { now, lost_total } => shard.correlator.note_lost_total(now, lost_total),
            Work::Tick { now, lost } => {
                if let Some((at, lost_total)) = lost {
                    shard.correlator.note_lost_total(at, lost_total);
                }
                done.findings.extend(shard.correlator.tick(now));
                done.ended = mem::take(&mut shard.ended);
            }
            Work::Read(source) => {
                shard.source = Some(*source);
                shard.read_ring(&mut done);
            }
        }
        if !shard.answer(done, answer) {
            return;
        }
    }
}

/// One correlator thread's state.
struct Shard {
    index: usize,
    count: usize,
    correlator: Correlator,
    source: Option<Source>,
    /// Sockets whose connection ended since the last tick, as the tap saw them.
    ended: Vec<SockId>,
}

impl Shard {
    /// Joins everything queued in the shard's own ring buffer, if it has one.
    fn read_ring(&mut self, done: &mut Done) {
        let Some(source) = &mut self.source else { return };
        loop {
            let taken = source.reader.read(POLL_BATCH, &mut source.batch);
            // In place: moving each event out of the batch cost a copy of it (perf: 4%).
            let mut moving = Vec::new();
            for (at, event) in source.batch.iter_mut().enumerate() {
                // The kernel chose this shard for the event's life; an identity the tap gives
                // it instead (one the inventory made) is joined where that one lives.
                let sock = event.sock;
                source.tap.tap(event);
                if event.sock != sock && shard_of(&event.sock, self.count) != self.index {
                    moving.push(at);
                }
            }
            let first_moved = done.redirected.len();
            for at in moving.into_iter().rev() {
                done.redirected.push(source.batch.remove(at));
            }
            done.redirected[first_moved..].reverse();
            done.findings.extend(self.correlator.ingest_all(&source.batch));
            source.batch.clear();
            if taken < POLL_BATCH {
                break;
            }
        }
        source.tap.flush();
        self.ended.extend(source.tap.ended());
    }

    /// Sends `done` with the counts as they are now; false once nobody listens.
    fn answer(&self, mut done: Done, answer: &Sender<Done>) -> bool {
        done.counts = Counts::of(&self.correlator);
        answer.send(done).is_ok()
    }
}

/// The shard that owns every life at `sock`'s address, for events split here rather than by
/// the kernel (one ring buffer for several shards, and identities userspace made). Slab
/// addresses share their low bits, so the address is mixed (Fibonacci hashing) before it is
/// divided.
fn shard_of(sock: &SockId, count: usize) -> usize {
    let mixed = sock.addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % count as u64) as usize
}

#[cfg(test)]
mod tests {
    use connwatch_common::{names::ring_of, socket::route_of_life};

    use super::*;

    #[test]
    fn lives_at_one_address_share_a_shard_and_addresses_spread() {
        let count = 4;
        let mut used = [0usize; 4];
        for i in 0..4096u64 {
            // Slab-like addresses: 2 KiB apart.
            let addr = 0xffff_8881_0000_0000 + i * 2048;
            let shard = shard_of(&SockId { addr, birth_ns: 2 }, count);
            assert_eq!(shard, shard_of(&SockId { addr, birth_ns: 7 }, count));
            used[shard] += 1;
        }
        assert!(used.iter().all(|&n| n > 4096 / 8), "uneven shards: {used:?}");
    }

    #[test]
    fn lives_at_a_few_busy_addresses_spread_over_the_rings() {
        // Churn reuses a handful of slab addresses for every connection: routing by address
        // alone put 45% of one run's events on one of four rings and 0.01% on another.
        let (rings, mut used) = (4, [0usize; 4]);
        for life in 0..4096u64 {
            let addr = 0xffff_8881_2400_0000 + (life % 3) * 2560;
            let birth_ns = 1_000_000 + life * 7_919 * 2;
            let route = route_of_life(addr, birth_ns);
            assert_eq!(route, route_of_life(addr, birth_ns), "one life, one route");
            used[ring_of(route, rings) as usize] += 1;
        }
        assert!(used.iter().all(|&n| n > 4096 / 8), "uneven rings: {used:?}");
        assert_eq!(ring_of(route_of_life(7, 8), 1), 0, "one ring takes every route");
    }
}
