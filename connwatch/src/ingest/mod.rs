//! Reading the ring buffer: every record is lent to the caller in place, who copies out what it
//! needs (decodes it), and its slot is released at once, so the kernel never waits on output.
//! Copying each record into a batch first cost a second copy of every byte (`perf`: 4% of
//! watch's CPU under churn).

pub mod loss;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use connwatch_common::names::MAP_EVENTS;

pub struct Ring {
    ring: RingBuf<MapData>,
}

impl Ring {
    pub fn take(ebpf: &mut Ebpf) -> Self {
        let map = ebpf.take_map(MAP_EVENTS).expect("connwatch-ebpf defines EVENTS");
        let ring = RingBuf::try_from(map).expect("EVENTS is a ring buffer");
        Self { ring }
    }

    /// Lends up to `max` available records to `take`, one at a time, each released as soon as
    /// `take` returns; returns how many.
    pub fn drain(&mut self, max: usize, mut take: impl FnMut(&[u8])) -> usize {
        let mut taken = 0;
        while taken < max
            && let Some(item) = self.ring.next()
        {
            take(&item);
            taken += 1;
        }
        taken
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
