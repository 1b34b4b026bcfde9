//! The kernel's accounts: events it could not reserve ring-buffer space for (per kind), and
//! what it deliberately did not report one by one (`COUNTERS`).

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray},
};
use connwatch_common::{
    event::{
        COUNTER_IO_SUMMARISED, COUNTER_READINESS_NOT_NEEDED, COUNTER_READINESS_UNEXAMINED,
        KIND_SLOTS,
    },
    names::{MAP_COUNTERS, MAP_LOST},
};

use crate::decode::kind_name;

pub struct LossCounters {
    map: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
}

/// What the kernel folded or skipped on purpose, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Ready entries of epoll_wait/poll/select results beyond the per-call bound.
    pub readiness_unexamined: u64,
    /// recv/send/readiness calls folded into summarising records.
    pub io_summarised: u64,
    /// Ready entries of processes holding no socket needing attention (`watch`, `agent`).
    pub readiness_not_needed: u64,
}

/// Lost events by kind, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    by_kind: Vec<(u8, u64)>,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.by_kind.iter().map(|(_, n)| n).sum()
    }

    /// `(kind name, count)` for every known kind, zeros included.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.by_kind.iter().filter_map(|(kind, n)| Some((kind_name(*kind)?, *n)))
    }
}

impl LossCounters {
    pub fn take(ebpf: &mut Ebpf) -> Self {
        let map = ebpf.take_map(MAP_LOST).expect("connwatch-ebpf defines LOST");
        let counters = ebpf.take_map(MAP_COUNTERS).expect("connwatch-ebpf defines COUNTERS");
        Self {
            map: PerCpuArray::try_from(map).expect("LOST is a per-CPU array of u64"),
            counters: PerCpuArray::try_from(counters).expect("COUNTERS is a per-CPU array of u64"),
        }
    }

    pub fn folded(&self) -> Result<Folded, MapError> {
        let sum =
            |slot: u32| -> Result<u64, MapError> { Ok(self.counters.get(&slot, 0)?.iter().sum()) };
        Ok(Folded {
            readiness_unexamined: sum(COUNTER_READINESS_UNEXAMINED)?,
            io_summarised: sum(COUNTER_IO_SUMMARISED)?,
            readiness_not_needed: sum(COUNTER_READINESS_NOT_NEEDED)?,
        })
    }

    pub fn read(&self) -> Result<Lost, MapError> {
        let mut by_kind = Vec::new();
        for kind in 0..KIND_SLOTS {
            let per_cpu = self.map.get(&kind, 0)?;
            let sum = per_cpu.iter().sum();
            if kind_name(kind as u8).is_some() {
                by_kind.push((kind as u8, sum));
            }
        }
        Ok(Lost { by_kind })
    }
}
