//! Reading the ring buffer: copy every record out (into a [`RecordBatch`]) and release its slot
//! at once, so the kernel never waits on decoding or output.

pub mod batch;
pub mod loss;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use connwatch_common::names::MAP_EVENTS;

pub use batch::RecordBatch;

pub struct Ring {
    ring: RingBuf<MapData>,
}

impl Ring {
    pub fn take(ebpf: &mut Ebpf) -> Self {
        let map = ebpf.take_map(MAP_EVENTS).expect("connwatch-ebpf defines EVENTS");
        let ring = RingBuf::try_from(map).expect("EVENTS is a ring buffer");
        Self { ring }
    }

    /// Copies up to `max` available records into `batch`; returns how many.
    pub fn drain(&mut self, batch: &mut RecordBatch, max: usize) -> usize {
        let mut copied = 0;
        while copied < max
            && let Some(item) = self.ring.next()
        {
            batch.push(&item);
            copied += 1;
        }
        copied
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
