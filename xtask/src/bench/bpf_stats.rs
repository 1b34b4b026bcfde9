//! BPF program run-time statistics (`run_cnt`, `run_time_ns` in a program's fdinfo).
//!
//! The kernel counts them only while `kernel.bpf_stats_enabled` is on. Instead of writing the
//! sysctl and restoring it afterwards, this holds a `BPF_ENABLE_STATS` file descriptor: a
//! reference on the same kernel switch the sysctl flips (the sysctl file keeps showing its own
//! value), which the kernel drops when the descriptor closes, even if the bench is killed.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;

/// `BPF_ENABLE_STATS` from `enum bpf_cmd` (linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME` from `enum bpf_stats_type`.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Stats stay enabled while this lives.
pub struct StatsEnabled(#[allow(dead_code, reason = "held for its Drop (close)")] OwnedFd);

pub fn enable() -> anyhow::Result<StatsEnabled> {
    // union bpf_attr's enable_stats member: { __u32 type; }. The kernel zero-fills the rest.
    let attr: [u32; 1] = [BPF_STATS_RUN_TIME];
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), size_of_val(&attr))
    };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .context("enabling BPF run-time stats (BPF_ENABLE_STATS)");
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(StatsEnabled(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}
