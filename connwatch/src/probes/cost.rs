//! What each attached program cost, in the kernel's own account: how many times it ran and
//! for how long. The kernel keeps these only while `kernel.bpf_stats_enabled` is 1 (off by
//! default: the accounting adds a clock read to every run), so they are read only then.

use std::collections::BTreeMap;

use aya::Ebpf;

use super::Attached;

/// One hook's programs, summed (a fentry hook has one program per kernel function; a raw
/// tracepoint's understudy adds its time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramCost {
    pub mechanism: &'static str,
    pub runs: u64,
    pub run_ns: u64,
}

/// Whether the kernel is keeping run counts and times.
pub fn enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// `hook -> cost` for every attached hook, when the kernel keeps the statistics. A program
/// that serves a family of hooks counts for them all under the first one's name.
pub fn read(ebpf: &Ebpf, attached: &[Attached]) -> Option<BTreeMap<String, ProgramCost>> {
    if !enabled() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let mut costs = BTreeMap::new();
    for a in attached.iter().filter(|a| seen.insert(a.variant.program)) {
        let mut cost = ProgramCost { mechanism: a.variant.mechanism.name(), ..Default::default() };
        let info = |name| ebpf.program(name).and_then(|p| p.info().ok());
        for info in a.variant.programs().filter_map(info) {
            cost.runs += info.run_count();
            cost.run_ns += info.run_time().as_nanos() as u64;
        }
        // The understudy runs on every hit too: its time is the hook's, its runs are not
        // more hits.
        let understudy = a.variant.understudy.filter(|u| u.program != a.variant.program);
        if let Some(info) = understudy.and_then(|u| info(u.program)) {
            cost.run_ns += info.run_time().as_nanos() as u64;
        }
        costs.insert(a.hook.id(), cost);
    }
    Some(costs)
}
