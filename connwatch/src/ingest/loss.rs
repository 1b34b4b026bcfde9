//! The kernel's count of events it could not reserve ring-buffer space for, per kind.

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray},
};
use connwatch_common::{event::KIND_SLOTS, names::MAP_LOST};

use crate::decode::kind_name;

pub struct LossCounters {
    map: PerCpuArray<MapData, u64>,
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
        Self { map: PerCpuArray::try_from(map).expect("LOST is a per-CPU array of u64") }
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
