//! Agent memory with every socket tracked: `connwatch watch --json` while `cw-hold`
//! (xtask/src/bin/cw-hold.rs) opens and holds established loopback connections; then what
//! `connwatch agent` costs at rest beside the same connections.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{
    config::Config,
    procfs::{self, CpuTime, Memory},
    rounds::Setup,
    tracer::{self, TracerSample},
};

/// From starting cw-hold until connwatch has taken in every connection.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How often connwatch's CPU time and VmRSS are sampled while waiting for it to settle.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// connwatch has settled once, over this long, it used at most `IDLE_CPU` of one CPU and its
/// VmRSS did not change.
const SETTLE_WINDOW: Duration = Duration::from_secs(1);
/// Idle connwatch still drains its ring buffer every 50 ms: a few ms of CPU per second. Two
/// clock ticks per window (/proc/PID/stat's resolution) is far below a draining connwatch.
const IDLE_CPU: f64 = 0.02;
/// The agent at rest: measured from this long after its `ready` line (past its start-up
/// inventory) for `IDLE_WINDOW`, which holds two of its periodic looks at every socket at the
/// default `--inventory-interval` (15 s).
const IDLE_WARMUP: Duration = Duration::from_secs(3);
const IDLE_WINDOW: Duration = Duration::from_secs(30);

pub struct Hold {
    pub binary: PathBuf,
    pub connections: u32,
}

/// What cw-hold printed once every connection was established on both sides.
#[derive(Debug, Deserialize, Serialize)]
pub struct Established {
    pub connections: u64,
    pub sockets: u64,
    pub listeners: u64,
    pub processes: u64,
    pub fd_limit: u64,
    /// From cw-hold's start until every connection was established.
    pub elapsed_s: f64,
}

#[derive(Serialize)]
pub struct RssResult {
    pub established: Established,
    /// connwatch's memory once it printed `ready`, before any connection was opened.
    pub at_ready: Memory,
    /// connwatch's memory once it had settled with every connection held.
    pub settled: Memory,
    /// From everything established until the start of connwatch's quiet window: how long it
    /// took to catch up with the events (0: it kept up while the connections were opened).
    pub caught_up_s: f64,
    /// From everything established until connwatch was found settled (includes the window).
    pub settle_s: f64,
    pub tracer: TracerSample,
    /// connwatch watch at rest once settled, every held socket tracked.
    pub idle_watch: AtRest,
    pub idle_agent: AtRest,
}

/// A connwatch at rest beside the held connections, nothing else happening.
#[derive(Serialize)]
pub struct AtRest {
    pub window_s: f64,
    pub cpu: CpuTime,
    pub rss_kib: u64,
}

/// Starts connwatch watch, then cw-hold; once all connections are established and connwatch
/// has settled, reads its memory, stops connwatch, then releases the connections.
pub fn measure(hold: &Hold, setup: &Setup<'_>) -> anyhow::Result<RssResult> {
    let config = Config::ConnwatchWatch;
    let tracer = setup.start_tracer(config)?.expect("connwatch is a tracer");
    let window = tracer.begin_window()?;
    let at_ready = procfs::memory(tracer.pid())?;

    let deadline = Instant::now() + TIMEOUT;
    let mut generator = Generator::start(hold)?;
    let established = generator.established(deadline)?;
    let settling = Instant::now();
    let (settled, quiet_since) = settle(tracer.pid(), deadline)?;
    let settle_s = settling.elapsed().as_secs_f64();
    let caught_up_s = quiet_since.duration_since(settling).as_secs_f64();
    let idle_watch = at_rest(tracer.pid())?;

    // Stop connwatch first: the connections' closing would only add events after the fact.
    let sample = tracer.finish(window)?;
    tracer::check_connwatch_lines(&sample)?;
    let idle_agent = idle_agent(setup)?;
    generator.stop()?;
    Ok(RssResult {
        established,
        at_ready,
        settled,
        caught_up_s,
        settle_s,
        tracer: sample,
        idle_watch,
        idle_agent,
    })
}

/// CPU of the process `pid` over `IDLE_WINDOW` from now, and its VmRSS at the end.
fn at_rest(pid: u32) -> anyhow::Result<AtRest> {
    let (started, before) = (Instant::now(), procfs::cpu_time(pid)?);
    thread::sleep(IDLE_WINDOW);
    let cpu = procfs::cpu_time(pid)?.since(before);
    Ok(AtRest {
        window_s: started.elapsed().as_secs_f64(),
        cpu,
        rss_kib: procfs::memory(pid)?.rss_kib,
    })
}

/// Starts `connwatch agent` beside the held connections and measures its CPU at rest.
fn idle_agent(setup: &Setup<'_>) -> anyhow::Result<AtRest> {
    let agent = setup.start_tracer(Config::ConnwatchAgent)?.expect("connwatch is a tracer");
    let window = agent.begin_window()?;
    thread::sleep(IDLE_WARMUP);
    let at_rest = at_rest(agent.pid())?;
    let sample = agent.finish(window)?;
    tracer::check_connwatch_lines(&sample)?;
    Ok(at_rest)
}

/// A running cw-hold.
struct Generator {
    child: Child,
    first_line: mpsc::Receiver<String>,
}

impl Generator {
    fn start(hold: &Hold) -> anyhow::Result<Self> {
        let mut child = Command::new(&hold.binary)
            .args(["--connections", &hold.connections.to_string()])
            .args(["--timeout", &TIMEOUT.as_secs().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", hold.binary.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, first_line) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            if BufReader::new(stdout).read_line(&mut line).is_ok() && !line.is_empty() {
                let _ = tx.send(line);
            }
        });
        Ok(Self { child, first_line })
    }

    /// Waits for cw-hold's line saying that every connection is established.
    fn established(&mut self, deadline: Instant) -> anyhow::Result<Established> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.first_line.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line)
                .with_context(|| format!("cw-hold printed {:?}", line.trim_end())),
            Err(RecvTimeoutError::Timeout) => Err(anyhow!(
                "cw-hold did not establish its connections within {} s; aborted",
                TIMEOUT.as_secs()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                Err(anyhow!("cw-hold exited ({status}) before establishing every connection"))
            }
        }
    }

    /// Closes cw-hold's stdin, which ends its hold, and reaps it.
    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait().context("waiting for cw-hold")?;
        if !status.success() {
            bail!("cw-hold failed ({status})");
        }
        Ok(())
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // After stop() the child is already reaped and this does nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until connwatch has drained every event: it is then idle (see IDLE_CPU) and its
/// VmRSS has stopped changing. Returns its memory then, and when its quiet window began.
fn settle(pid: u32, deadline: Instant) -> anyhow::Result<(Memory, Instant)> {
    let mut samples: VecDeque<(Instant, f64, Memory)> = VecDeque::new();
    loop {
        let now = Instant::now();
        let memory = procfs::memory(pid)?;
        samples.push_back((now, procfs::cpu_time(pid)?.total_s(), memory));
        // Keep exactly one sample at least a window old, the reference for the window.
        while samples.len() > 1 && now.duration_since(samples[1].0) >= SETTLE_WINDOW {
            samples.pop_front();
        }
        let (since, cpu_then, _) = samples[0];
        let span = now.duration_since(since);
        let cpu_now = samples.back().expect("just pushed").1;
        if span >= SETTLE_WINDOW
            && cpu_now - cpu_then <= IDLE_CPU * span.as_secs_f64()
            && samples.iter().all(|(_, _, m)| m.rss_kib == memory.rss_kib)
        {
            return Ok((memory, since));
        }
        if now >= deadline {
            bail!(
                "connwatch did not settle (idle, VmRSS steady) within {} s of starting cw-hold; \
                 aborted",
                TIMEOUT.as_secs()
            );
        }
        thread::sleep(SETTLE_POLL);
    }
}
