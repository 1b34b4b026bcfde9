//! What /proc says about a tracer process: CPU time, RSS, and its BPF programs' stats.

use std::{collections::HashMap, fs, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

/// User and system CPU time of a whole process (every thread, live or exited).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuTime {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTime {
    pub fn total_s(self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn since(self, earlier: Self) -> Self {
        Self { user_s: self.user_s - earlier.user_s, sys_s: self.sys_s - earlier.sys_s }
    }

    pub fn from_rusage(usage: &libc::rusage) -> Self {
        let seconds = |t: libc::timeval| {
            Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000).as_secs_f64()
        };
        Self { user_s: seconds(usage.ru_utime), sys_s: seconds(usage.ru_stime) }
    }
}

/// The calling thread's CPU time (getrusage RUSAGE_THREAD).
pub fn this_thread_cpu_time() -> CpuTime {
    // SAFETY: rusage is plain data that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    CpuTime::from_rusage(&usage)
}

/// utime and stime from /proc/PID/stat (clock ticks, 10 ms on most kernels).
pub fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis don't.
    let after_comm =
        stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after_comm starts at field 3.
    let ticks = |field: usize| -> anyhow::Result<f64> {
        Ok(fields.get(field - 3).context("short /proc/PID/stat")?.parse::<u64>()? as f64)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(CpuTime { user_s: ticks(14)? / per_second, sys_s: ticks(15)? / per_second })
}

/// A process's resident set size now and at its peak, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// VmRSS.
    pub rss_kib: u64,
    /// VmHWM: the peak so far.
    pub peak_kib: u64,
}

/// VmRSS and VmHWM from /proc/PID/status.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |field: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .with_context(|| format!("no {field} in /proc/PID/status"))?;
        Ok(line.trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok(Memory { rss_kib: kib("VmRSS")?, peak_kib: kib("VmHWM")? })
}

/// One BPF program a process holds, with its cumulative run-time stats.
#[derive(Clone, Debug, Serialize)]
pub struct Program {
    pub prog_id: u32,
    pub prog_type: String,
    /// The tracepoints the process's links attach it to (`tp_name` in each link's fdinfo).
    pub hook: Option<String>,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl Program {
    /// This program's counts since `earlier` (the same program sampled before).
    pub fn since(&self, earlier: Option<&Self>) -> Self {
        let (cnt, ns) = earlier.map_or((0, 0), |e| (e.run_cnt, e.run_time_ns));
        Self {
            run_cnt: self.run_cnt.saturating_sub(cnt),
            run_time_ns: self.run_time_ns.saturating_sub(ns),
            ..self.clone()
        }
    }
}

/// Every BPF program the process has a descriptor for (`anon_inode:bpf-prog`), joined by
/// program id to its links (`anon_inode:bpf_link`) to name the hook.
pub fn bpf_programs(pid: u32) -> anyhow::Result<Vec<Program>> {
    let mut programs = Vec::new();
    let mut hooks = HashMap::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        // Descriptors come and go while the process runs: skip any that vanished.
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let kind = target.to_string_lossy();
        if kind != "anon_inode:bpf-prog" && kind != "anon_inode:bpf_link" {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(&fdinfo) else { continue };
        let fields: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let number = |key: &str| -> anyhow::Result<u64> {
            let value = fields.get(key).with_context(|| format!("no {key} in {fdinfo}"))?;
            value.parse().with_context(|| format!("{key} in {fdinfo}: {value}"))
        };
        let prog_id = number("prog_id")? as u32;
        if kind == "anon_inode:bpf_link" {
            if let Some(tp_name) = fields.get("tp_name") {
                hooks.entry(prog_id).or_insert_with(Vec::new).push((*tp_name).to_owned());
            }
            continue;
        }
        if !fields.contains_key("run_cnt") {
            bail!("{fdinfo} has no run_cnt: this kernel does not report BPF program stats");
        }
        programs.push(Program {
            prog_id,
            prog_type: prog_type_name(number("prog_type")?),
            hook: None,
            run_cnt: number("run_cnt")?,
            run_time_ns: number("run_time_ns")?,
        });
    }
    // A program serving a family of hooks (poll and ppoll, say) is named after all of them.
    for program in &mut programs {
        program.hook = hooks.remove(&program.prog_id).map(|mut names| {
            names.sort();
            names.join(" / ")
        });
    }
    programs.sort_by_key(|p| p.prog_id);
    Ok(programs)
}

/// Names of `enum bpf_prog_type` values (linux/bpf.h) a tracer may use.
fn prog_type_name(value: u64) -> String {
    match value {
        2 => "kprobe".into(),
        5 => "tracepoint".into(),
        17 => "raw_tracepoint".into(),
        24 => "raw_tracepoint_writable".into(),
        26 => "tracing".into(),
        other => format!("type {other}"),
    }
}
