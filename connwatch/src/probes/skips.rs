//! Hits the kernel did not run a program for: it skips a classic tracepoint (or kprobe) program
//! while any other BPF program runs on that CPU (a softirq that interrupts one, say), and a raw
//! tracepoint program that interrupts itself. The kernel counts each skip per program as
//! `recursion_misses` in the program's fdinfo. A raw tracepoint lead with an understudy lost
//! only the skipped hits its understudy did not cover (none, unless hits nest deeper than a
//! softirq in process context: connwatch-ebpf's `understudy` module). Linux counts a
//! classic tracepoint's skips only from 6.7 on: before, they go unseen (see [`uncounted`]).

use std::os::fd::{AsFd, AsRawFd};

use aya::{Ebpf, maps::PerCpuArray};
use connwatch_common::names::MAP_COVERED;

use super::{Attached, hooks::Mechanism};

/// The first release whose classic tracepoint (and kprobe) skips are counted.
const COUNTS_CLASSIC_SKIPS: (u32, u32) = (6, 7);

/// `(hook, hits lost to skips)` for every attached program, read from its fdinfo. A program
/// that serves a family of hooks counts for them all under the first one's name.
pub fn read(ebpf: &Ebpf, attached: &[Attached]) -> Vec<(String, u64)> {
    let mut programs = std::collections::HashSet::new();
    attached
        .iter()
        .filter(|a| programs.insert(a.variant.program))
        .filter_map(|a| {
            let counts: Option<Vec<u64>> = a.variant.programs().map(|p| misses(ebpf, p)).collect();
            let skipped: u64 = counts?.iter().sum();
            // Every hit an understudy covered was first a skip of its lead, so nothing skipped
            // means nothing covered. Read after the skips, the covered count may include a hit
            // whose skip was not yet read: the difference errs low, never high.
            let covered = match (skipped, a.variant.understudy) {
                (1.., Some(understudy)) => covered_in(ebpf, understudy.slot),
                _ => 0,
            };
            Some((a.hook.id(), skipped.saturating_sub(covered)))
        })
        .collect()
}

/// `(hook, hits its understudy handled for its skipped lead)` for every attached hook with an
/// understudy.
pub fn covered(ebpf: &Ebpf, attached: &[Attached]) -> Vec<(String, u64)> {
    let understudied = attached.iter().filter_map(|a| Some((a.hook.id(), a.variant.understudy?)));
    understudied.map(|(hook, understudy)| (hook, covered_in(ebpf, understudy.slot))).collect()
}

/// Hits an understudy handled, over every CPU.
fn covered_in(ebpf: &Ebpf, slot: u32) -> u64 {
    let map = ebpf.map(MAP_COVERED).and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok());
    map.and_then(|m| m.get(&slot, 0).ok()).map_or(0, |per_cpu| per_cpu.iter().sum())
}

fn misses(ebpf: &Ebpf, program: &str) -> Option<u64> {
    let fd = ebpf.program(program)?.fd().ok()?.as_fd().as_raw_fd();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    recursion_misses(&fdinfo)
}

/// The attached hooks whose skipped hits this kernel does not count: classic tracepoints and
/// kprobes before Linux 6.7. Raw tracepoints either never skip or count it (the check and the
/// count came together, in 6.2); fentry programs count theirs (5.12 on).
pub fn uncounted(attached: &[Attached]) -> Vec<String> {
    if kernel_at_least(COUNTS_CLASSIC_SKIPS) {
        return Vec::new();
    }
    attached
        .iter()
        .filter(|a| matches!(a.variant.mechanism, Mechanism::Tracepoint | Mechanism::Kprobe))
        .map(|a| a.hook.id())
        .collect()
}

/// Whether the running kernel is `(major, minor)` or newer (`/proc/sys/kernel/osrelease`).
pub fn kernel_at_least(version: (u32, u32)) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, version)
}

/// Whether a release string such as `6.1.0-56-amd64` is `(major, minor)` or newer; an
/// unreadable one is taken as older, the cautious answer.
fn release_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// The `recursion_misses` line of a BPF program's fdinfo (Linux 5.12 on; absent before).
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| line.strip_prefix("recursion_misses:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_count_and_nothing_else() {
        let fdinfo =
            "pos:\t0\nprog_type:\t5\nrun_cnt:\t12\nrecursion_misses:\t3\nverified_insns:\t9\n";
        assert_eq!(recursion_misses(fdinfo), Some(3));
        assert_eq!(recursion_misses("prog_type:\t5\nrun_cnt:\t12\n"), None);
    }

    #[test]
    fn classic_skips_are_counted_from_linux_6_7() {
        assert!(!release_at_least("6.1.0-56-amd64", COUNTS_CLASSIC_SKIPS));
        assert!(!release_at_least("5.15.0", COUNTS_CLASSIC_SKIPS));
        assert!(release_at_least("6.7.0", COUNTS_CLASSIC_SKIPS));
        assert!(release_at_least("6.18.1-cloud", COUNTS_CLASSIC_SKIPS));
        assert!(release_at_least("7.0-rc1", COUNTS_CLASSIC_SKIPS));
        assert!(!release_at_least("garbage", COUNTS_CLASSIC_SKIPS));
    }
}
