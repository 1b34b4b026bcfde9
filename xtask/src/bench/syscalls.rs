//! The cost every enabled syscall tracepoint puts on every syscall of every process: with any
//! `syscalls:sys_enter_*`/`sys_exit_*` program attached, each task takes the traced (slow)
//! syscall entry and exit path, whether or not its syscall is one connwatch hooks. Measured as
//! the time of a syscall connwatch does not hook (`getppid`), untraced and under `connwatch
//! watch`, interleaved.

use std::{fmt::Write as _, time::Instant};

use serde::Serialize;

use super::{
    config::Config,
    rounds::{Setup, round_robin},
};

const CALLS: u64 = 5_000_000;
const CONFIGS: [Config; 2] = [Config::Untraced, Config::ConnwatchWatch];

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    pub ns_per_call: f64,
}

#[derive(Serialize)]
pub struct SyscallSection {
    pub calls: u64,
    pub rounds: Vec<(Config, f64)>,
}

pub fn run(setup: &Setup<'_>, rounds: u32) -> anyhow::Result<SyscallSection> {
    let measure = || -> anyhow::Result<Timing> {
        let start = Instant::now();
        for _ in 0..CALLS {
            // SAFETY: getppid has no arguments and no side effects.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok(Timing { ns_per_call: start.elapsed().as_nanos() as f64 / CALLS as f64 })
    };
    measure()?; // warm-up
    let results = round_robin("syscalls", &CONFIGS, rounds, setup, measure, |t| {
        format!("{:.0} ns/call", t.ns_per_call)
    })?;
    Ok(SyscallSection {
        calls: CALLS,
        rounds: results.into_iter().map(|r| (r.config, r.workload.ns_per_call)).collect(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

pub fn markdown(s: &SyscallSection) -> String {
    let of = |c: Config| median(s.rounds.iter().filter(|r| r.0 == c).map(|r| r.1).collect());
    let (base, traced) = (of(Config::Untraced), of(Config::ConnwatchWatch));
    let mut md = String::from("#### Syscalls connwatch does not hook: the traced entry path\n\n");
    let _ = writeln!(
        md,
        "{} `getppid` calls per run, medians over rounds.\n\n| configuration | ns / syscall |\n|---|---:|\n| untraced | {base:.1} |\n| connwatch watch | {traced:.1} |\n\nEvery syscall of every process pays {:.1} ns more ({:.2}x) while connwatch's syscall tracepoints are attached.\n",
        s.calls,
        traced - base,
        traced / base
    );
    md
}
