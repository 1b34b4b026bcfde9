//! Reading the ring buffers: every record is lent to the reader in place, decoded, and its slot
//! released at once, so the kernel never waits on output. Copying each record into a batch
//! first cost a second copy of every byte (`perf`: 4% of watch's CPU under churn).
//!
//! There is one ring buffer per correlator thread, and each socket's records all go to one of
//! them (`connwatch_common::names::ring_of`): each thread reads its own, and no single thread
//! handles every record.

pub mod loss;
pub mod priority;

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use connwatch_common::names::MAP_EVENTS;

use crate::decode::{self, Detail, Event};

/// One ring buffer with the tally of what was read from it.
pub struct Reader {
    ring: RingBuf<MapData>,
    tally: Arc<Tally>,
}

/// What a [`Reader`] has taken so far, readable from any thread.
#[derive(Default)]
pub struct Tally {
    /// Events decoded, by [`Detail::type_index`].
    events_by_type: [AtomicU64; Detail::TYPE_NAMES.len()],
    malformed: AtomicU64,
    /// Ring-buffer records taken (one may hold several events).
    records: AtomicU64,
    /// Ring-buffer bytes taken (records with their 8-byte headers, 8-byte aligned).
    bytes_taken: AtomicU64,
}

impl Tally {
    pub fn events_by_type(&self) -> [u64; Detail::TYPE_NAMES.len()] {
        std::array::from_fn(|i| self.events_by_type[i].load(Relaxed))
    }

    pub fn malformed(&self) -> u64 {
        self.malformed.load(Relaxed)
    }

    pub fn records(&self) -> u64 {
        self.records.load(Relaxed)
    }

    pub fn bytes_taken(&self) -> u64 {
        self.bytes_taken.load(Relaxed)
    }
}

impl Reader {
    /// The first `count` ring buffers of the loaded object.
    pub fn take_all(ebpf: &mut Ebpf, count: usize) -> Vec<Self> {
        MAP_EVENTS[..count]
            .iter()
            .map(|name| {
                let map = ebpf.take_map(name).expect("connwatch-ebpf defines every ring");
                let ring = RingBuf::try_from(map).expect("the rings are ring buffers");
                Self { ring, tally: Arc::default() }
            })
            .collect()
    }

    pub fn tally(&self) -> Arc<Tally> {
        Arc::clone(&self.tally)
    }

    /// Decodes up to `max` queued records into `out`; returns how many records were taken
    /// (fewer than `max`: the ring buffer is empty now).
    pub fn read(&mut self, max: usize, out: &mut Vec<Event>) -> usize {
        let mut by_type = [0u64; Detail::TYPE_NAMES.len()];
        let (mut bytes, mut malformed, mut taken) = (0, 0, 0);
        while taken < max
            && let Some(record) = self.ring.next()
        {
            bytes += (record.len() as u64 + 8).next_multiple_of(8);
            let decoded = out.len();
            match decode::decode_into(&record, out) {
                Ok(()) => out[decoded..].iter().for_each(|e| by_type[e.detail.type_index()] += 1),
                Err(_) => malformed += 1,
            }
            taken += 1;
        }
        if taken > 0 {
            let tally = &self.tally;
            for (count, n) in tally.events_by_type.iter().zip(by_type) {
                count.fetch_add(n, Relaxed);
            }
            tally.malformed.fetch_add(malformed, Relaxed);
            tally.records.fetch_add(taken as u64, Relaxed);
            tally.bytes_taken.fetch_add(bytes, Relaxed);
        }
        taken
    }
}

impl AsRawFd for Reader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for Reader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
