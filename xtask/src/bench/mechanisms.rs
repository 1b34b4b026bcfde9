//! The cost of each attach mechanism, on a kernel that offers them all: the 6.1 guest of
//! `cargo xtask vm-test` (this host has neither kprobes nor fentry). In each round the guest
//! runs the same loopback churn (`cw-churner`: connect, one byte each way, close with a reset)
//! untraced and under `connwatch trace --attach <mode>` for every mode, in a rotating order.
//! The kernel's own statistics (`kernel.bpf_stats_enabled=1`) give each hook's program runs
//! and run time; they leave out what reaching the program costs (a kprobe's ftrace detour, a
//! trampoline), which the churn rate kept against the untraced runs includes. After each churn,
//! with the tracer still attached, `cw-syscall` times `getppid`, which connwatch never hooks:
//! what the mode's syscall hooks cost every other syscall in the system. Under emulation (TCG)
//! every figure is slower than on hardware; the ratios between mechanisms are the point.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::rounds::median;
use crate::vm;

/// The kernel's own events, which every mechanism can reach.
const KERNEL_HOOKS: &[&str] = &[
    "sock:inet_sock_set_state",
    "tcp:tcp_receive_reset",
    "tcp:tcp_send_reset",
    "sock:inet_sk_error_report",
    "tcp:tcp_destroy_sock",
];
const MODES: &[&str] = &["raw-tracepoint", "fentry", "tracepoint", "kprobe"];
const PORT: u16 = 7411;
/// A traced run in the guest: connwatch's start-up under emulation, the churn, the drain.
const TRACED_RUN_S: u32 = 150;

#[derive(Debug, Serialize)]
pub struct Run {
    pub mode: String,
    pub round: u32,
    pub connections: u64,
    /// ns per `getppid` call, timed after the churn.
    pub getppid_ns: f64,
    /// `hook -> (mechanism, runs, run_ns)` from the summary (traced runs only).
    pub cost: BTreeMap<String, (String, u64, u64)>,
}

#[derive(Debug, Serialize)]
pub struct MechanismSection {
    pub kernel: String,
    pub seconds: u32,
    pub runs: Vec<Run>,
}

pub fn run(rounds: u32, seconds: u32) -> anyhow::Result<MechanismSection> {
    let binaries = build()?;
    let script = guest_script(&binaries, rounds, seconds);
    let per_round = MODES.len() as u32 * (TRACED_RUN_S + seconds) + seconds;
    let timeout_min = 10 + u64::from(rounds * per_round) / 60;
    let log = vm::console_log("mechanisms");
    let outcome = vm::Guest::prepare(&binaries.all())?.boot(&script, 2048, timeout_min, &log)?;
    if !outcome.finished {
        bail!("the guest did not finish (console: {})", log.display());
    }
    let console = std::fs::read_to_string(&log)?;
    let runs = parse(&console)?;
    let expected = rounds as usize * (MODES.len() + 1);
    if runs.len() != expected {
        bail!(
            "expected {expected} runs in the guest, read {} (console: {})",
            runs.len(),
            log.display()
        );
    }
    Ok(MechanismSection { kernel: outcome.kernel.unwrap_or_default(), seconds, runs })
}

struct Binaries {
    connwatch: PathBuf,
    churner: PathBuf,
    syscall: PathBuf,
}

impl Binaries {
    fn all(&self) -> Vec<PathBuf> {
        vec![self.connwatch.clone(), self.churner.clone(), self.syscall.clone()]
    }
}

fn build() -> anyhow::Result<Binaries> {
    let release = vm::build_release_binaries()?;
    let syscall = super::generators::Generators::build()?.syscall;
    Ok(Binaries {
        connwatch: release.join("connwatch"),
        churner: release.join("cw-churner"),
        syscall,
    })
}

/// Each round: untraced, then every mode, the order rotated by one per round. A traced run
/// starts churning once connwatch has printed its ready line, and ends with SIGINT, which
/// makes connwatch print its summary (with `program_cost`).
fn guest_script(binaries: &Binaries, rounds: u32, seconds: u32) -> String {
    let (connwatch, churner) = (binaries.connwatch.display(), binaries.churner.display());
    let syscall = binaries.syscall.display();
    let mut script = format!(
        "echo 1 > /proc/sys/kernel/bpf_stats_enabled\n\
         {churner} {PORT} 2 0 > /dev/null\n"
    );
    let configurations: Vec<&str> =
        std::iter::once("untraced").chain(MODES.iter().copied()).collect();
    for round in 0..rounds {
        let n = configurations.len();
        for i in 0..n {
            let mode = configurations[(i + round as usize) % n];
            if mode == "untraced" {
                let _ = writeln!(
                    script,
                    "made=$({churner} {PORT} {seconds} 0)\n\
                     echo \"cw-bench: run untraced {round} $made $({syscall})\""
                );
                continue;
            }
            let _ = write!(
                script,
                "{connwatch} trace --attach {mode} --json > /tmp/trace.out 2> /tmp/trace.err &\n\
                 tracer=$!\n\
                 until grep -q '\"ready\"' /tmp/trace.out; do\n\
                   kill -0 $tracer 2> /dev/null || {{ cat /tmp/trace.err; break; }}\n\
                   sleep 0.2\n\
                 done\n\
                 made=$({churner} {PORT} {seconds} 0)\n\
                 getppid=$({syscall})\n\
                 kill -INT $tracer; wait $tracer\n\
                 echo \"cw-bench: run {mode} {round} $made $getppid $(grep -m1 '\"summary\"' /tmp/trace.out)\"\n"
            );
        }
    }
    script
}

/// `cw-bench: run MODE ROUND CONNECTIONS GETPPID-NS [SUMMARY-JSON]` lines.
fn parse(console: &str) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.find("cw-bench: run ").map(|at| &line[at + 14..]) else { continue };
        let mut words = rest.splitn(5, ' ');
        let (Some(mode), Some(round), Some(made), Some(getppid)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            bail!("malformed guest line: {line}");
        };
        let connections = made.trim().parse().with_context(|| format!("connections in: {line}"))?;
        let getppid_ns =
            getppid.trim().parse().with_context(|| format!("getppid ns in: {line}"))?;
        let mut cost = BTreeMap::new();
        if let Some(summary) = words.next().filter(|s| !s.trim().is_empty()) {
            let summary: serde_json::Value =
                serde_json::from_str(summary).with_context(|| format!("summary in: {line}"))?;
            let Some(costs) = summary["program_cost"].as_object() else {
                bail!("no program_cost in the guest's summary (was bpf_stats enabled?): {line}");
            };
            for (hook, c) in costs {
                let mechanism = c["mechanism"].as_str().unwrap_or_default().to_string();
                let field = |name: &str| c[name].as_u64().unwrap_or(0);
                cost.insert(hook.clone(), (mechanism, field("runs"), field("run_ns")));
            }
        } else if mode != "untraced" {
            bail!("connwatch --attach {mode} printed no summary in the guest: {line}");
        }
        runs.push(Run {
            mode: mode.to_string(),
            round: round.parse()?,
            connections,
            getppid_ns,
            cost,
        });
    }
    Ok(runs)
}

fn runs_of<'a>(section: &'a MechanismSection, mode: &'a str) -> impl Iterator<Item = &'a Run> {
    section.runs.iter().filter(move |r| r.mode == mode)
}

pub fn markdown(section: &MechanismSection) -> String {
    let rate = |mode: &str| {
        median(
            runs_of(section, mode)
                .map(|r| r.connections as f64 / f64::from(section.seconds))
                .collect(),
        )
    };
    let untraced = rate("untraced");
    let mut md = format!(
        "#### Attach mechanisms on Linux {} (the vm-test guest, under emulation)\n\n\
         Loopback churn ({} s per run) untraced and under `connwatch trace --attach <mode>`, \
         medians over rounds. ns / hit is the kernel's run time per program run \
         (`kernel.bpf_stats_enabled`), which leaves out the cost of reaching the program; the \
         churn rate kept includes it.\n\n| hook |",
        section.kernel, section.seconds
    );
    for mode in MODES {
        let _ = write!(md, " {mode} ns / hit |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(MODES.len()));
    md.push('\n');
    for hook in KERNEL_HOOKS {
        let _ = write!(md, "| {hook} |");
        for mode in MODES {
            let per_hit = median(
                runs_of(section, mode)
                    .filter_map(|r| r.cost.get(*hook))
                    .filter(|(_, runs, _)| *runs > 0)
                    .map(|(_, runs, ns)| *ns as f64 / *runs as f64)
                    .collect(),
            );
            let mechanism =
                runs_of(section, mode).find_map(|r| r.cost.get(*hook)).map(|(m, _, _)| m.as_str());
            let _ = match (per_hit, mechanism) {
                (Some(ns), Some(m)) if m == mode.replace('-', "_") => write!(md, " {ns:.0} |"),
                (Some(ns), Some(m)) => write!(md, " {ns:.0} ({m}) |"),
                _ => write!(md, " – |"),
            };
        }
        md.push('\n');
    }
    let _ = write!(md, "| *churn kept (untraced {:.0} conn/s)* |", untraced.unwrap_or(f64::NAN));
    for mode in MODES {
        let kept = rate(mode).zip(untraced).map(|(traced, base)| traced / base);
        let _ = match kept {
            Some(kept) => write!(md, " {kept:.2} |"),
            None => write!(md, " – |"),
        };
    }
    let getppid = |mode: &str| median(runs_of(section, mode).map(|r| r.getppid_ns).collect());
    let _ = write!(
        md,
        "\n| *`getppid` ns / call, not hooked (untraced {:.0})* |",
        getppid("untraced").unwrap_or(f64::NAN)
    );
    for mode in MODES {
        let _ = match getppid(mode) {
            Some(ns) => write!(md, " {ns:.0} |"),
            None => write!(md, " – |"),
        };
    }
    md.push_str("\n\nA hook whose mode it did not get shows the mechanism it had (in brackets).\n");
    md
}
