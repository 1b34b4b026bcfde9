//! Parallel churn: 2 x cores `cw-churner` processes (the tests' correct churn program: one-byte
//! echo, SO_LINGER 0 close) at full speed, untraced, then under `connwatch trace`, `connwatch
//! watch` and `connwatch agent` (their default correlator threads). Under trace, every event's
//! socket id is checked against the port pair it carries: no id may carry two connections.
//! Under watch and the agent, a correct program must give no finding. Each run's connections
//! against the untraced run's are what the tracer kept; its lost share is lost / (seen + lost).

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{prereqs, run::workspace_root};

/// The first of the ports the churn processes listen on (one each).
const FIRST_PORT: u16 = 25_000;

#[derive(Clone, Debug, Serialize)]
pub struct ParallelRun {
    pub mode: &'static str,
    pub processes: usize,
    pub seconds: u32,
    pub connections: u64,
    /// trace: socket ids seen with a full port pair, and those seen with two or more.
    pub sock_ids_checked: u64,
    pub sock_ids_with_two_connections: u64,
    /// watch, agent: findings reported.
    pub findings: u64,
    pub events_seen: u64,
    pub events_lost: u64,
}

/// Builds cw-churner (release) and returns its path.
pub fn build_churner() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    prereqs::run(Command::new(cargo).current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "connwatch-tests",
        "--bin",
        "cw-churner",
    ]))?;
    Ok(workspace_root().join("target/release/cw-churner"))
}

pub fn run(connwatch: &Path, churner: &Path, seconds: u32) -> anyhow::Result<Vec<ParallelRun>> {
    let processes = 2 * thread::available_parallelism().map_or(2, |n| n.get());
    let ports: Vec<u16> = (0..processes as u16).map(|i| FIRST_PORT + i).collect();
    let untraced = ParallelRun {
        mode: "untraced",
        processes,
        seconds,
        connections: churn(churner, &ports, seconds)?,
        sock_ids_checked: 0,
        sock_ids_with_two_connections: 0,
        findings: 0,
        events_seen: 0,
        events_lost: 0,
    };
    let mut runs = vec![untraced];
    for mode in ["trace", "watch", "agent"] {
        runs.push(one(mode, connwatch, churner, &ports, seconds)?);
    }
    Ok(runs)
}

/// Runs one churner per port for `seconds`; returns the connections they made.
fn churn(churner: &Path, ports: &[u16], seconds: u32) -> anyhow::Result<u64> {
    let churners: Vec<Child> = ports
        .iter()
        .map(|port| {
            Command::new(churner)
                .args([&port.to_string(), &seconds.to_string(), "0"])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting cw-churner")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut connections = 0;
    for churner in churners {
        let out = churner.wait_with_output()?;
        if !out.status.success() {
            bail!("cw-churner failed ({})", out.status);
        }
        connections += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
    }
    Ok(connections)
}

fn one(
    mode: &'static str,
    connwatch: &Path,
    churner: &Path,
    ports: &[u16],
    seconds: u32,
) -> anyhow::Result<ParallelRun> {
    let mut command = Command::new(connwatch);
    command.args([mode, "--json"]);
    if mode == "agent" {
        // Any free port: nothing scrapes it here.
        command.args(["--listen", "127.0.0.1:0"]);
    }
    for port in ports {
        command.args(["--port", &port.to_string()]);
    }
    let mut tracer = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting connwatch {mode}"))?;
    let stdout = tracer.stdout.take().expect("piped");
    // SAFETY: fcntl on a pipe descriptor we own; failure only leaves the default size.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&stdout), libc::F_SETPIPE_SZ, 1 << 20) };
    let mut lines = BufReader::with_capacity(1 << 20, stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.contains("\"ready\"") => {}
        other => bail!("connwatch {mode} did not get ready: {other:?}"),
    }
    let reader = thread::spawn(move || Tally::read(lines));
    let connections = churn(churner, ports, seconds)?;
    // SAFETY: signalling our own child; SIGTERM makes connwatch drain and print its summary.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGTERM) };
    tracer.wait()?;
    let tally = reader.join().expect("the reader thread")?;
    let reused = tally.pairs.values().filter(|pairs| pairs.len() > 1).count() as u64;
    Ok(ParallelRun {
        mode,
        processes: ports.len(),
        seconds,
        connections,
        sock_ids_checked: tally.pairs.len() as u64,
        sock_ids_with_two_connections: reused,
        findings: tally.findings,
        events_seen: tally.seen,
        events_lost: tally.lost,
    })
}

#[derive(Default)]
struct Tally {
    pairs: HashMap<String, HashSet<(u16, u16)>>,
    findings: u64,
    seen: u64,
    lost: u64,
}

impl Tally {
    /// Reads connwatch's JSON Lines; events are picked apart by field, not parsed whole (a few
    /// million lines arrive in seconds, and a slow reader would make connwatch lose events).
    fn read(lines: impl Iterator<Item = std::io::Result<String>>) -> anyhow::Result<Self> {
        let mut tally = Self::default();
        for line in lines {
            let line = line?;
            if line.starts_with("{\"type\":\"finding\"") {
                tally.findings += 1;
            } else if line.starts_with("{\"type\":\"summary\"") {
                let summary: serde_json::Value = serde_json::from_str(&line)?;
                let events = summary["events"].as_object().into_iter().flat_map(|e| e.values());
                tally.seen = events.filter_map(|v| v.as_u64()).sum();
                tally.lost = ["lost", "skipped"]
                    .iter()
                    .filter_map(|key| summary[key].as_object())
                    .flat_map(|counts| counts.values().filter_map(|v| v.as_u64()))
                    .sum();
            } else if let (Some(sock), Some(sport), Some(dport)) =
                (field(&line, "sock"), field(&line, "sport"), field(&line, "dport"))
            {
                let (a, b): (u16, u16) = (sport.parse()?, dport.parse()?);
                if a != 0 && b != 0 {
                    tally.pairs.entry(sock.to_owned()).or_default().insert((a.min(b), a.max(b)));
                }
            }
        }
        Ok(tally)
    }
}

/// The raw value of `"name":` in a flat JSON object (quotes stripped).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    let end = rest.find([',', '}'])?;
    Some(rest[..end].trim_matches('"'))
}

pub fn markdown(runs: &[ParallelRun]) -> String {
    let mut md = String::from("#### Parallel churn: socket identity under concurrency\n\n");
    if let Some(first) = runs.first() {
        md += &format!(
            "{} cw-churner processes (2 x cores) at full speed for {} s each run, every connection \
             a one-byte echo closed with SO_LINGER 0.\n\n",
            first.processes, first.seconds
        );
    }
    md += "| mode | connections | kept | socket ids checked | ids with two connections | findings | events lost | share lost |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    let untraced = runs.iter().find(|r| r.mode == "untraced").map(|r| r.connections);
    for r in runs {
        let kept = match untraced {
            Some(base) if base > 0 && r.mode != "untraced" => {
                format!("{:.2}", r.connections as f64 / base as f64)
            }
            _ => "–".into(),
        };
        let all = r.events_seen + r.events_lost;
        let share = if all > 0 {
            format!("{:.1}%", 100.0 * r.events_lost as f64 / all as f64)
        } else {
            "–".into()
        };
        let checked = if r.mode == "trace" { r.sock_ids_checked.to_string() } else { "–".into() };
        let reused = if r.mode == "trace" {
            r.sock_ids_with_two_connections.to_string()
        } else {
            "–".into()
        };
        let (findings, lost) = match r.mode {
            "untraced" => ("–".into(), "–".into()),
            _ => (r.findings.to_string(), r.events_lost.to_string()),
        };
        md += &format!(
            "| {} | {} | {kept} | {checked} | {reused} | {findings} | {lost} | {share} |\n",
            r.mode, r.connections
        );
    }
    md
}
