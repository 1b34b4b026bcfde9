//! Hits the kernel did not run a program for: it skips a classic tracepoint (or kprobe) program
//! while any other BPF program runs on that CPU (a softirq that interrupts one, say), and a raw
//! tracepoint program that interrupts itself. Each skip is an event never seen, counted by the
//! kernel per program as `recursion_misses` in the program's fdinfo.

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;

use super::Attached;

/// `(hook, hits skipped)` for every attached program, read from its fdinfo. A program that
/// serves a family of hooks counts for them all under the first one's name.
pub fn read(ebpf: &Ebpf, attached: &[Attached]) -> Vec<(String, u64)> {
    let mut programs = std::collections::HashSet::new();
    attached
        .iter()
        .filter(|a| programs.insert(a.variant.program))
        .filter_map(|a| {
            let fd = ebpf.program(a.variant.program)?.fd().ok()?.as_fd().as_raw_fd();
            let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            Some((a.hook.id(), recursion_misses(&fdinfo)?))
        })
        .collect()
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
}
