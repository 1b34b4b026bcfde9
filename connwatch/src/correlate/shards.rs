//! Correlators side by side, each owning the sockets at its share of kernel addresses, so that
//! a busy many-core host's events are joined on several cores.
//!
//! A socket's every life lives at one kernel address, and the only join across identities (an
//! adopted identity to the seen-born life at its address) stays within that address, so each
//! shard is a whole [`Correlator`] and needs nothing from the others. With more than one, each
//! runs on a thread of its own and takes its share of every batch in order, while the caller
//! goes back to draining the ring buffer: findings come back from [`Shards::ingest`] as the
//! shards complete them, and all of them by the end of the next [`Shards::tick`].

use std::{
    collections::BTreeMap,
    mem,
    sync::mpsc::{self, Receiver, Sender, SyncSender},
    thread::{self, JoinHandle},
};

use super::{Correlator, Finding, Kind};
use crate::decode::{Event, SockId};

/// The most shards `--correlator-threads` accepts (and auto chooses).
pub const MOST_SHARDS: usize = 16;
/// Batches a shard may have queued before the drain waits for it (and the ring buffer, not
/// memory, absorbs the excess: what it cannot hold is counted as lost).
const QUEUED_BATCHES: usize = 8;

pub struct Shards {
    inner: Inner,
}

enum Inner {
    One(Box<Correlator>),
    Many(Workers),
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
            Inner::Many(Workers::start((0..count).map(|_| make(each)).collect()))
        };
        Self { inner }
    }

    /// How many correlators `auto` runs on this host: one per four CPUs (one below eight), so
    /// the traced workload keeps most of the machine.
    pub fn auto_count() -> usize {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        (cpus / 4).clamp(1, MOST_SHARDS)
    }

    /// Joins `events` (in the order the kernel delivered them); returns the findings completed
    /// so far: with several shards, some of these events' findings may come with a later call.
    pub fn ingest(&mut self, events: &[Event]) -> Vec<Finding> {
        match &mut self.inner {
            Inner::One(one) => events.iter().flat_map(|event| one.ingest(event)).collect(),
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

    /// The kernel's running loss count at `now` (see [`Correlator::note_lost_total`]).
    pub fn note_lost_total(&mut self, now: u64, lost_total: u64) {
        match &mut self.inner {
            Inner::One(one) => one.note_lost_total(now, lost_total),
            Inner::Many(workers) => workers.send_all(|| Work::Lost { now, lost_total }),
        }
    }

    /// Every shard's timers due at `now`; with several shards, waits until each has joined
    /// everything given before, and returns every finding not yet returned.
    pub fn tick(&mut self, now: u64) -> Vec<Finding> {
        match &mut self.inner {
            Inner::One(one) => one.tick(now),
            Inner::Many(workers) => {
                workers.send_all(|| Work::Tick { now });
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

/// What a shard is asked to do, in order.
enum Work {
    Events(Vec<Event>),
    Lost { now: u64, lost_total: u64 },
    Tick { now: u64 },
}

/// A shard's answer to one piece of work: its findings, its counts after it, and the batch
/// it was given, emptied, for the next one.
struct Done {
    shard: usize,
    findings: Vec<Finding>,
    counts: Counts,
    emptied: Option<Vec<Event>>,
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
                    .spawn(move || serve(index, correlator, &work, &answer))
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
        }
    }

    fn ingest(&mut self, events: impl Iterator<Item = Event>) -> Vec<Finding> {
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
        let mut findings = Vec::new();
        while let Ok(done) = self.answers.try_recv() {
            self.take(done, &mut findings);
        }
        findings
    }

    fn send_all(&mut self, work: impl Fn() -> Work) {
        for shard in 0..self.queues.len() {
            self.send(shard, work());
        }
    }

    fn send(&mut self, shard: usize, work: Work) {
        self.queues[shard].send(work).expect("a correlator thread stopped");
        self.pending += 1;
    }

    /// Waits for every answer still due.
    fn settle(&mut self) -> Vec<Finding> {
        let mut findings = Vec::new();
        while self.pending > 0 {
            let done = self.answers.recv().expect("a correlator thread stopped");
            self.take(done, &mut findings);
        }
        findings
    }

    fn take(&mut self, done: Done, findings: &mut Vec<Finding>) {
        self.pending -= 1;
        self.counts[done.shard] = done.counts;
        findings.extend(done.findings);
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

/// A shard's thread: work in, answers out, until the queue closes.
fn serve(shard: usize, mut correlator: Correlator, work: &Receiver<Work>, answer: &Sender<Done>) {
    while let Ok(next) = work.recv() {
        let (findings, emptied) = match next {
            Work::Events(mut events) => {
                let findings = events.iter().flat_map(|e| correlator.ingest(e)).collect();
                events.clear();
                (findings, Some(events))
            }
            Work::Lost { now, lost_total } => {
                correlator.note_lost_total(now, lost_total);
                (Vec::new(), None)
            }
            Work::Tick { now } => (correlator.tick(now), None),
        };
        let done = Done { shard, findings, counts: Counts::of(&correlator), emptied };
        if answer.send(done).is_err() {
            return;
        }
    }
}

/// The shard that owns every life at `sock`'s kernel address. Slab addresses share their low
/// bits, so the address is mixed (Fibonacci hashing) before it is divided.
fn shard_of(sock: &SockId, count: usize) -> usize {
    let mixed = sock.addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % count as u64) as usize
}

#[cfg(test)]
mod tests {
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
}
