//! Soak: `connwatch agent` under minutes of churn (2 x cores cw-churner processes, paced),
//! its RSS sampled every few seconds and its /metrics scraped as Prometheus would. Reports the
//! RSS after the warm-up minute, the peak, the last sample and the growth in between.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::procfs;

const LISTEN: &str = "127.0.0.1:25742";
const FIRST_PORT: u16 = 25_100;
/// Connections a second per churn process: steady load, not a saturation test.
const RATE_PER_PROCESS: &str = "2000";
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize)]
pub struct Soak {
    pub minutes: u32,
    pub processes: usize,
    pub connections: u64,
    /// (seconds since start, VmRSS KiB).
    pub samples: Vec<(u64, u64)>,
    pub rss_after_warm_up_kib: u64,
    pub rss_last_kib: u64,
    pub rss_peak_kib: u64,
    pub scrapes: u64,
    pub findings_total: f64,
    /// Findings written, by "kind by comm".
    pub findings_by: BTreeMap<String, u64>,
    pub events_lost_total: f64,
}

pub fn run(connwatch: &Path, churner: &Path, minutes: u32) -> anyhow::Result<Soak> {
    let processes = 2 * thread::available_parallelism().map_or(2, |n| n.get());
    let ports: Vec<String> = (0..processes as u16).map(|i| (FIRST_PORT + i).to_string()).collect();
    let mut agent = Command::new(connwatch);
    agent.args(["agent", "--json", "--listen", LISTEN]);
    let mut agent = Guard(
        agent
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting connwatch agent")?,
    );
    let pid = agent.0.id();
    // Every finding it writes, by kind and process name: on a host where only correct
    // programs run, there should be none; anything else running shows here.
    let stdout = agent.0.stdout.take().expect("piped");
    let findings = thread::spawn(move || {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["type"] == "finding"
            {
                *seen
                    .entry(format!(
                        "{} by {}",
                        v["kind"].as_str().unwrap_or("?"),
                        v["comm"].as_str().unwrap_or("?")
                    ))
                    .or_default() += 1;
            }
        }
        seen
    });
    let ready_by = Instant::now() + Duration::from_secs(60);
    while scrape().is_err() {
        if Instant::now() > ready_by {
            bail!("connwatch agent never served /metrics on {LISTEN}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let seconds = (u64::from(minutes) * 60).to_string();
    let churners: Vec<Child> = ports
        .iter()
        .map(|port| {
            Command::new(churner)
                .args([port.as_str(), seconds.as_str(), RATE_PER_PROCESS])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting cw-churner")
        })
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(minutes) * 60);
    let (mut samples, mut scrapes, mut last_page) = (Vec::new(), 0, String::new());
    while Instant::now() < end {
        thread::sleep(SAMPLE_EVERY);
        samples.push((start.elapsed().as_secs(), procfs::memory(pid)?.rss_kib));
        last_page = scrape()?;
        scrapes += 1;
        eprintln!(
            "bench: soak: {} s, VmRSS {} KiB",
            start.elapsed().as_secs(),
            samples.last().map_or(0, |s| s.1)
        );
    }
    let mut connections = 0;
    for churner in churners {
        let out = churner.wait_with_output()?;
        connections += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0);
    }
    let peak = procfs::memory(pid)?.peak_kib;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = agent.0.wait();
    let findings_by = findings.join().unwrap_or_default();
    let after_warm_up = samples
        .iter()
        .find(|(s, _)| *s >= WARM_UP.as_secs())
        .or(samples.first())
        .map_or(0, |s| s.1);
    Ok(Soak {
        minutes,
        processes,
        connections,
        rss_after_warm_up_kib: after_warm_up,
        rss_last_kib: samples.last().map_or(0, |s| s.1),
        rss_peak_kib: peak,
        samples,
        scrapes,
        findings_total: sum(&last_page, "connwatch_findings_total"),
        findings_by,
        events_lost_total: sum(&last_page, "connwatch_events_lost_total"),
    })
}

/// Kills the agent if the soak fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape() -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(LISTEN)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {LISTEN}\r\n\r\n")?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    Ok(page)
}

/// The sum of a metric's samples on a page.
fn sum(page: &str, metric: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        // Not `sum()`: over no samples it gives -0.0, which the table printed as "-0".
        .fold(0.0, |total, v| total + v)
}

pub fn markdown(s: &Soak) -> String {
    let growth = s.rss_last_kib as f64 - s.rss_after_warm_up_kib as f64;
    let by: Vec<String> = s.findings_by.iter().map(|(what, n)| format!("{what}: {n}")).collect();
    let by = if by.is_empty() { "none".to_string() } else { by.join(", ") };
    format!(
        "#### Soak: connwatch agent under {} minutes of churn\n\n\
         {} cw-churner processes at {RATE_PER_PROCESS} connections/s each; VmRSS sampled every \
         {} s, /metrics scraped each time ({} scrapes).\n\n\
         | connections | RSS after 1 min | RSS at end | growth after 1 min | peak RSS | findings | events lost |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {:.1} MiB | {:.1} MiB | {:+.1} MiB ({:+.1}%) | {:.1} MiB | {} | {} |\n\n\
         Findings written (the agent watches the whole host): {by}.\n",
        s.minutes,
        s.processes,
        SAMPLE_EVERY.as_secs(),
        s.scrapes,
        s.connections,
        s.rss_after_warm_up_kib as f64 / 1024.0,
        s.rss_last_kib as f64 / 1024.0,
        growth / 1024.0,
        100.0 * growth / (s.rss_after_warm_up_kib.max(1) as f64),
        s.rss_peak_kib as f64 / 1024.0,
        s.findings_total,
        s.events_lost_total,
    )
}
