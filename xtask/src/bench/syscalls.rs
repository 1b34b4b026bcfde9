//! What connwatch's syscall tracepoints cost the syscalls of every process, untraced and under
//! `connwatch watch`, interleaved:
//! - a syscall connwatch does not hook (`getppid`): with any `syscalls:sys_enter_*`/`sys_exit_*`
//!   program attached, each task takes the traced (slow) entry and exit path;
//! - the two hooked calls an event loop makes on every request when nothing is wrong:
//!   `epoll_ctl(EPOLL_CTL_MOD)` re-arming interest with the same data word (redis's `ae`, wrk),
//!   and `epoll_wait` with nothing ready (timeout 0);
//! - the registration clients built on `ae` (redis-benchmark) drop and make again per request:
//!   `EPOLL_CTL_DEL`, then `EPOLL_CTL_ADD` with the same data word, per pair;
//! - and the same under watch with the readiness arguments kept at entry (`--args-at-entry`, as
//!   on kernels before 5.15): what reading them at exit saves;
//! - and under watch's hooks with programs that return at once (`--hooks-only`): what reaching
//!   them costs, whatever the programs do.

use std::{fmt::Write as _, os::fd::AsRawFd, time::Instant};

use serde::Serialize;

use super::{
    config::Config,
    rounds::{self, Setup, round_robin},
};

const CALLS: u64 = 5_000_000;
const EPOLL_CALLS: u64 = 2_000_000;
const CONFIGS: [Config; 4] = [
    Config::Untraced,
    Config::ConnwatchWatch,
    Config::ConnwatchWatchArgsAtEntry,
    Config::ConnwatchWatchHooksOnly,
];

/// ns per call of each syscall measured, in one round.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    pub getppid: f64,
    pub epoll_ctl_mod: f64,
    pub epoll_wait_idle: f64,
    /// One `EPOLL_CTL_DEL` and one `EPOLL_CTL_ADD` of the same registration.
    pub epoll_ctl_del_add: f64,
}

#[derive(Serialize)]
pub struct SyscallSection {
    pub calls: u64,
    pub epoll_calls: u64,
    pub rounds: Vec<(Config, Timing)>,
}

/// An epoll instance watching an idle listening TCP socket (never ready), with `data` = fd.
struct IdleEpoll {
    epfd: i32,
    listener: std::net::TcpListener,
    event: libc::epoll_event,
}

impl IdleEpoll {
    fn new() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        // SAFETY: plain syscalls on descriptors this struct owns.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        anyhow::ensure!(epfd >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        let fd = listener.as_raw_fd();
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        // SAFETY: as above; `event` outlives the call.
        let added = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) };
        anyhow::ensure!(added == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Ok(Self { epfd, listener, event })
    }

    /// Re-arms the listener with the same data word, alternating the interest mask.
    fn modify(&mut self, i: u64) {
        let out = if i.is_multiple_of(2) { libc::EPOLLOUT as u32 } else { 0 };
        self.event.events = libc::EPOLLIN as u32 | out;
        let fd = self.listener.as_raw_fd();
        // SAFETY: both descriptors are open; `event` outlives the call.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, &mut self.event) };
    }

    /// Drops the listener's registration and makes it again, with the same data word.
    fn register_again(&mut self) {
        let fd = self.listener.as_raw_fd();
        // SAFETY: both descriptors are open; `event` outlives the calls.
        unsafe {
            libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, &mut self.event);
            libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut self.event);
        }
    }

    fn wait(&self) {
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `ready` holds 4 entries.
        unsafe { libc::epoll_wait(self.epfd, ready.as_mut_ptr(), 4, 0) };
    }
}

impl Drop for IdleEpoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this struct's.
        unsafe { libc::close(self.epfd) };
    }
}

fn per_call(calls: u64, mut call: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..calls {
        call(i);
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

pub fn run(setup: &Setup<'_>, rounds: u32) -> anyhow::Result<SyscallSection> {
    let mut epoll = IdleEpoll::new()?;
    let mut measure = || -> anyhow::Result<Timing> {
        Ok(Timing {
            // SAFETY: getppid has no arguments and no side effects.
            getppid: per_call(CALLS, |_| unsafe {
                libc::syscall(libc::SYS_getppid);
            }),
            epoll_ctl_mod: per_call(EPOLL_CALLS, |i| epoll.modify(i)),
            epoll_wait_idle: per_call(EPOLL_CALLS, |_| epoll.wait()),
            epoll_ctl_del_add: per_call(EPOLL_CALLS / 2, |_| epoll.register_again()),
        })
    };
    measure()?; // warm-up
    let results = round_robin("syscalls", &CONFIGS, rounds, setup, measure, |t| {
        format!(
            "getppid {:.0}, epoll_ctl MOD {:.0}, epoll_wait {:.0} ns/call, DEL+ADD {:.0} ns/pair",
            t.getppid, t.epoll_ctl_mod, t.epoll_wait_idle, t.epoll_ctl_del_add
        )
    })?;
    Ok(SyscallSection {
        calls: CALLS,
        epoll_calls: EPOLL_CALLS,
        rounds: results.into_iter().map(|r| (r.config, r.workload)).collect(),
    })
}

fn median(values: Vec<f64>) -> f64 {
    rounds::median(values).unwrap_or(f64::NAN)
}

/// A table row: its label and the timing it shows.
type Row = (&'static str, fn(&Timing) -> f64);

pub fn markdown(s: &SyscallSection) -> String {
    let of = |c: Config, pick: fn(&Timing) -> f64| {
        median(s.rounds.iter().filter(|r| r.0 == c).map(|r| pick(&r.1)).collect())
    };
    let rows: [Row; 4] = [
        ("`getppid` (not hooked)", |t| t.getppid),
        ("`epoll_ctl` MOD, same data", |t| t.epoll_ctl_mod),
        ("`epoll_wait`, nothing ready", |t| t.epoll_wait_idle),
        ("`epoll_ctl` DEL + ADD of a known registration (per pair)", |t| t.epoll_ctl_del_add),
    ];
    let mut md =
        String::from("#### Syscalls: the traced entry path and the hooked routine calls\n\n");
    let _ = writeln!(
        md,
        "{} `getppid`, {} of each epoll call and half as many DEL + ADD pairs per run, medians over rounds.\n\n\
         | syscall | untraced ns | connwatch watch ns | added ns | ratio | watch, arguments kept at entry: added ns | hooks only (the floor): added ns |\n|---|---:|---:|---:|---:|---:|---:|",
        s.calls, s.epoll_calls
    );
    for (name, pick) in rows {
        let (base, traced) = (of(Config::Untraced, pick), of(Config::ConnwatchWatch, pick));
        let at_entry = of(Config::ConnwatchWatchArgsAtEntry, pick);
        let floor = of(Config::ConnwatchWatchHooksOnly, pick);
        let _ = writeln!(
            md,
            "| {name} | {base:.1} | {traced:.1} | {:.1} | {:.2}x | {:.1} | {:.1} |",
            traced - base,
            traced / base,
            at_entry - base,
            floor - base
        );
    }
    md
}
