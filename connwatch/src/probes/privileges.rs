//! What connwatch needs from the process before it touches the kernel.

use std::fs;

use thiserror::Error;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
#[error(
    "connwatch needs root, or the capabilities CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN to \
     mount tracefs when it is not mounted); this process has {have}. Run it with sudo, or grant \
     them: `setcap cap_bpf,cap_perfmon,cap_sys_admin+ep $(which connwatch)`"
)]
pub struct NotPrivileged {
    pub have: String,
}

/// Checks the effective capability set (`CapEff` in /proc/self/status).
pub fn check() -> Result<(), NotPrivileged> {
    let caps = effective_caps().unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut have: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| has(*cap))
        .map(|(_, name)| name)
        .collect();
    if have.is_empty() {
        have.push("neither");
    }
    Err(NotPrivileged { have: have.join(" and ") })
}

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large maps load there too.
pub fn lift_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit struct; failure only matters on old kernels and surfaces at load.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
