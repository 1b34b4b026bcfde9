//! A tracer process under measurement: started, waited for until it traces, sampled, stopped.

use std::{
    io::{self, BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    os::unix::process::ExitStatusExt as _,
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use super::procfs::{self, CpuTime, Program};

/// How long a tracer may take to load, attach and print its first line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to drain and exit after SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// While waiting for a tracer's first line, one loopback connection this often gives it
/// something to trace (tcpstates prints nothing until its stdout buffer fills).
const POKE_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes of the end of stdout kept to find the last line (connwatch's summary).
const STDOUT_TAIL: usize = 1 << 16;
const STDERR_TAIL_LINES: usize = 20;
/// The tracer's stdout pipe capacity (the default fs.pipe-max-size): room for bursts while the
/// reader waits for a CPU, so that the bench's reader is not what slows the tracer down.
const STDOUT_PIPE_BYTES: libc::c_int = 1 << 20;

/// A loopback listener that accepts and drops connections, to make TCP events on demand.
pub struct Poker {
    addr: SocketAddr,
}

impl Poker {
    pub fn start() -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the poke listener")?;
        let addr = listener.local_addr()?;
        thread::spawn(move || listener.incoming().for_each(drop));
        Ok(Self { addr })
    }

    fn poke(&self) {
        // Only the TCP state changes matter, not whether this succeeds.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// What a tracer did during one workload window.
#[derive(Debug, Serialize)]
pub struct TracerSample {
    /// The first stdout line (connwatch: the `ready` object; tcpstates: its header), as JSON
    /// when it is JSON.
    pub first_line: serde_json::Value,
    /// The last stdout line (connwatch: the `summary` object).
    pub last_line: serde_json::Value,
    pub stdout_bytes: u64,
    /// CPU time the bench's thread spent reading that stdout (not part of `cpu`).
    pub reader_cpu: CpuTime,
    /// From spawning the tracer to its first line (loading, verifying, attaching).
    pub ready_after_s: f64,
    /// From the workload's start until the tracer exited (so it includes draining its backlog).
    pub cpu: CpuTime,
    /// VmHWM just before the tracer was stopped.
    pub peak_rss_kib: u64,
    /// Run counts and times during the workload, per program.
    pub programs: Vec<Program>,
    /// Sum of `lost N events` lines on stderr (libbpf-tools' perf buffer loss reports).
    pub lost_on_stderr: u64,
    pub stderr_tail: Vec<String>,
    pub exit_status: String,
}

/// The state sampled when the workload starts.
pub struct Window {
    cpu: CpuTime,
    programs: Vec<Program>,
}

pub struct Tracer {
    name: &'static str,
    child: Child,
    pid: u32,
    first_line: String,
    ready_after_s: f64,
    stdout: Option<JoinHandle<io::Result<Drained>>>,
    stderr: Option<JoinHandle<Stderr>>,
    reaped: bool,
}

impl Tracer {
    /// Starts the tracer and returns once it has printed its first stdout line, which for both
    /// tracers means its programs are attached: connwatch prints `ready` after attaching, and
    /// tcpstates' output only appears once it has traced enough `poker` connections to flush
    /// its buffer. connwatch gets no pokes: they would only add sockets to its tracking.
    pub fn start(
        name: &'static str,
        mut command: Command,
        poker: Option<&Poker>,
    ) -> anyhow::Result<Self> {
        let spawned = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let (first_tx, first_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        // SAFETY: fcntl on a pipe descriptor we own; failure only leaves the default size.
        unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, STDOUT_PIPE_BYTES) };
        let stderr = child.stderr.take().expect("piped");
        let mut tracer = Self {
            name,
            pid: child.id(),
            child,
            first_line: String::new(),
            ready_after_s: 0.0,
            stdout: Some(thread::spawn(move || drain_stdout(stdout, &first_tx))),
            stderr: Some(thread::spawn(move || collect_stderr(stderr))),
            reaped: false,
        };
        let deadline = spawned + READY_TIMEOUT;
        loop {
            match first_rx.recv_timeout(POKE_INTERVAL) {
                Ok(line) => {
                    tracer.first_line = line;
                    tracer.ready_after_s = spawned.elapsed().as_secs_f64();
                    return Ok(tracer);
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(poker) = poker {
                        poker.poke();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(tracer
                        .abort(&format!("printed nothing within {} s", READY_TIMEOUT.as_secs())));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(tracer.abort("exited before printing anything"));
                }
            }
        }
    }

    pub const fn pid(&self) -> u32 {
        self.pid
    }

    pub fn begin_window(&self) -> anyhow::Result<Window> {
        Ok(Window { cpu: procfs::cpu_time(self.pid)?, programs: procfs::bpf_programs(self.pid)? })
    }

    /// Samples what only a live process shows (program stats, VmHWM), then stops the tracer.
    pub fn finish(mut self, window: Window) -> anyhow::Result<TracerSample> {
        if let Some(status) = self.reap(libc::WNOHANG)?.map(|(status, _)| status) {
            return Err(self.abort(&format!("exited during the workload ({status})")));
        }
        let programs = procfs::bpf_programs(self.pid)?
            .iter()
            .map(|p| p.since(window.programs.iter().find(|b| b.prog_id == p.prog_id)))
            .collect();
        let peak_rss_kib = procfs::memory(self.pid)?.peak_kib;

        // SAFETY: the child is not reaped yet, so the pid is still ours.
        unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let (status, usage) = loop {
            if let Some(exited) = self.reap(libc::WNOHANG)? {
                break exited;
            }
            if Instant::now() > deadline {
                return Err(self.abort(&format!(
                    "did not exit within {} s of SIGINT",
                    EXIT_TIMEOUT.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        };
        let drained =
            self.stdout.take().expect("joined once").join().expect("stdout thread panicked");
        let drained = drained.with_context(|| format!("reading {}'s stdout", self.name))?;
        let stderr =
            self.stderr.take().expect("joined once").join().expect("stderr thread panicked");
        Ok(TracerSample {
            first_line: json_or_text(&self.first_line),
            last_line: json_or_text(&drained.last_line),
            stdout_bytes: drained.bytes,
            reader_cpu: drained.cpu,
            ready_after_s: self.ready_after_s,
            cpu: CpuTime::from_rusage(&usage).since(window.cpu),
            peak_rss_kib,
            programs,
            lost_on_stderr: stderr.lost,
            stderr_tail: stderr.tail,
            exit_status: status.to_string(),
        })
    }

    /// wait4(2): unlike std's wait, it returns the child's resource usage (every thread's CPU).
    fn reap(&mut self, flags: libc::c_int) -> anyhow::Result<Option<(ExitStatus, libc::rusage)>> {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: status and usage are valid for writes.
        match unsafe { libc::wait4(self.pid as i32, &mut status, flags, &mut usage) } {
            0 => Ok(None),
            pid if pid > 0 => {
                self.reaped = true;
                Ok(Some((ExitStatus::from_raw(status), usage)))
            }
            _ => Err(io::Error::last_os_error())
                .with_context(|| format!("waiting for {}", self.name)),
        }
    }

    /// Kills the tracer and explains the failure with the end of its stderr.
    fn abort(mut self, what: &str) -> anyhow::Error {
        self.kill();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .map(|s| s.tail.join("\n"))
            .unwrap_or_default();
        anyhow!("{} {what}; its stderr:\n{stderr}", self.name)
    }

    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Drained {
    bytes: u64,
    last_line: String,
    cpu: CpuTime,
}

/// Reads stdout to the end so the tracer never blocks on a full pipe. Only the first line is
/// parsed and only the tail kept: the rest (millions of lines) is not scanned byte by byte.
fn drain_stdout(stdout: ChildStdout, first_line: &mpsc::Sender<String>) -> io::Result<Drained> {
    let mut reader = BufReader::with_capacity(STDOUT_TAIL, stdout);
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(Drained { bytes: 0, last_line: String::new(), cpu: CpuTime::default() });
    }
    let _ = first_line.send(String::from_utf8_lossy(&line).trim_end().to_owned());
    let mut bytes = line.len() as u64;
    let mut tail = line;
    let mut buf = vec![0; STDOUT_TAIL];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        bytes += n as u64;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDOUT_TAIL {
            tail.drain(..tail.len() - STDOUT_TAIL);
        }
    }
    let text = String::from_utf8_lossy(&tail);
    let last_line = text.trim_end().rsplit('\n').next().unwrap_or_default().to_owned();
    Ok(Drained { bytes, last_line, cpu: procfs::this_thread_cpu_time() })
}

struct Stderr {
    lost: u64,
    tail: Vec<String>,
}

fn collect_stderr(stderr: ChildStderr) -> Stderr {
    let mut result = Stderr { lost: 0, tail: Vec::new() };
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        // libbpf-tools: "lost 12 events on CPU #1".
        if let Some(count) = line.strip_prefix("lost ").and_then(|rest| rest.split(' ').next()) {
            result.lost += count.parse::<u64>().unwrap_or(0);
        }
        if result.tail.len() == STDERR_TAIL_LINES {
            result.tail.remove(0);
        }
        result.tail.push(line);
    }
    result
}

fn json_or_text(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|_| line.into())
}

/// A connwatch sample's `ready` and `summary` lines, or why they are not there.
pub fn check_connwatch_lines(sample: &TracerSample) -> anyhow::Result<()> {
    let type_of = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()).map(str::to_owned);
    if type_of(&sample.first_line).as_deref() != Some("ready") {
        bail!("connwatch's first line is not `ready`: {}", sample.first_line);
    }
    if type_of(&sample.last_line).as_deref() != Some("summary") {
        bail!(
            "connwatch's last line is not `summary` ({}): {}\n{}",
            sample.exit_status,
            sample.last_line,
            sample.stderr_tail.join("\n")
        );
    }
    Ok(())
}
