//! `cw-hold`: opens many established loopback connections and holds them, for
//! `cargo xtask bench` to measure connwatch's memory with every socket tracked.
//!
//! Both ends of a connection live in one process, so N connections take 2N sockets and 2N
//! descriptors. It raises RLIMIT_NOFILE to fit them; where even root may not raise the hard
//! limit (no CAP_SYS_RESOURCE, as in many containers) it shares the connections out among
//! worker processes (itself, with a smaller `--connections`), each within the limit.
//! Connections are spread over several listeners so that no destination runs out of
//! ephemeral ports.
//!
//! Once every connection is established on both sides it prints one JSON line (connections,
//! sockets, processes, seconds taken), then holds them until stdin closes, or at most `--hold`
//! seconds. It gives up after `--timeout` seconds if they are not all established by then.

use std::{
    io::{self, BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;

/// Connections per listener: well under the ~28,000 ephemeral ports the default
/// ip_local_port_range offers per destination, so connect() finds a free port quickly.
const CONNECTIONS_PER_LISTENER: u32 = 8192;
/// Accept queue length (the kernel caps it at net.core.somaxconn); std listens with 128.
const BACKLOG: libc::c_int = 4096;
/// Descriptors kept free for everything but the connections (stdio, listeners, the runtime).
const SPARE_FDS: u64 = 64;

#[derive(Parser)]
#[command(name = "cw-hold", about = "Open many established loopback connections and hold them")]
struct Args {
    /// Connections to establish (two sockets each).
    #[arg(long, default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(1..=262_144))]
    connections: u32,
    /// Give up (exit 1) if they are not all established after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Stop holding (exit 0) after this many seconds even if stdin stays open.
    #[arg(long, default_value_t = 120)]
    hold: u64,
}

/// What is printed once everything is established.
struct Established {
    sockets: u64,
    listeners: u64,
    processes: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fds = raise_fd_limit(u64::from(args.connections) * 2 + SPARE_FDS)?;
    let per_process = (fds.saturating_sub(SPARE_FDS) / 2).clamp(1, u64::from(u32::MAX)) as u32;
    let (established_tx, established_rx) = mpsc::channel();
    let started = Instant::now();
    let (held, established) = if args.connections <= per_process {
        let progress = Progress::default();
        spawn_watchdog(established_rx, Some(progress.clone()), &args);
        let (streams, established) = open_here(args.connections, &progress)?;
        (Held::Streams(streams), established)
    } else {
        // The workers bound their own time; this process's watchdog only ends the hold.
        spawn_watchdog(established_rx, None, &args);
        let (workers, established) = open_in_workers(&args, per_process)?;
        (Held::Workers(workers), established)
    };
    let elapsed = started.elapsed().as_secs_f64();
    let _ = established_tx.send(());

    println!(
        "{}",
        serde_json::json!({
            "connections": args.connections,
            "sockets": established.sockets,
            "listeners": established.listeners,
            "processes": established.processes,
            "fd_limit": fds,
            "elapsed_s": elapsed,
        })
    );
    // Hold until the bench closes our stdin (or the watchdog's --hold runs out).
    let _ = io::stdin().read_to_end(&mut Vec::new());
    held.release();
    Ok(())
}

/// What keeps the connections open.
enum Held {
    Streams(Vec<TcpStream>),
    Workers(Vec<Child>),
}

impl Held {
    fn release(self) {
        match self {
            Self::Streams(streams) => drop(streams),
            // Closing a worker's stdin ends its hold.
            Self::Workers(workers) => {
                for mut worker in workers {
                    drop(worker.stdin.take());
                    let _ = worker.wait();
                }
            }
        }
    }
}

/// Connections established so far in this process, on each side.
#[derive(Clone, Default)]
struct Progress {
    connected: Arc<AtomicU32>,
    accepted: Arc<AtomicU32>,
}

/// Opens `connections` connections in this process; returns both ends of each.
fn open_here(
    connections: u32,
    progress: &Progress,
) -> anyhow::Result<(Vec<TcpStream>, Established)> {
    let listeners = connections.div_ceil(CONNECTIONS_PER_LISTENER);
    let mut threads = Vec::new();
    for index in 0..listeners {
        // Share the connections out; the first listeners take one more when they do not divide.
        let share = connections / listeners + u32::from(index < connections % listeners);
        let listener = listen()?;
        let addr = listener.local_addr()?;
        threads.push(spawn_counted(share, &progress.connected, move || TcpStream::connect(addr)));
        threads.push(spawn_counted(share, &progress.accepted, move || {
            listener.accept().map(|(stream, _)| stream)
        }));
    }
    let mut streams = Vec::new();
    for thread in threads {
        streams.extend(thread.join().expect("connection thread panicked")?);
    }
    let established =
        Established { sockets: streams.len() as u64, listeners: listeners.into(), processes: 1 };
    Ok((streams, established))
}

/// A loopback listener on a free port with a long accept queue.
fn listen() -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback listener")?;
    // listen() again on a listening socket only changes its backlog.
    // SAFETY: listen on a descriptor the listener owns.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } < 0 {
        return Err(io::Error::last_os_error()).context("raising the listen backlog");
    }
    Ok(listener)
}

/// A thread that makes `count` streams with `open`, counting each in `made`.
fn spawn_counted(
    count: u32,
    made: &Arc<AtomicU32>,
    open: impl Fn() -> io::Result<TcpStream> + Send + 'static,
) -> JoinHandle<anyhow::Result<Vec<TcpStream>>> {
    let made = Arc::clone(made);
    thread::spawn(move || {
        let mut streams = Vec::with_capacity(count as usize);
        for _ in 0..count {
            streams.push(open().with_context(|| format!("after {} connections", streams.len()))?);
            made.fetch_add(1, Ordering::Relaxed);
        }
        Ok(streams)
    })
}

/// Starts enough copies of this program, each with at most `per_process` connections, and
/// waits until every one has established its share (they run in parallel).
fn open_in_workers(args: &Args, per_process: u32) -> anyhow::Result<(Vec<Child>, Established)> {
    let count = args.connections.div_ceil(per_process);
    let me = std::env::current_exe().context("finding cw-hold's own path")?;
    let mut workers = Vec::new();
    for index in 0..count {
        let share = args.connections / count + u32::from(index < args.connections % count);
        let worker = Command::new(&me)
            .args(["--connections", &share.to_string()])
            .args(["--timeout", &args.timeout.to_string()])
            .args(["--hold", &args.hold.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", me.display()))?;
        workers.push(worker);
    }
    let mut total = Established { sockets: 0, listeners: 0, processes: 0 };
    for worker in &mut workers {
        // Each worker prints its line once established, or exits (its stderr says why).
        let mut line = String::new();
        BufReader::new(worker.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        let report: Value = serde_json::from_str(&line)
            .with_context(|| format!("a worker failed (it printed {line:?})"))?;
        let field = |key: &str| report.get(key).and_then(Value::as_u64).unwrap_or(0);
        total.sockets += field("sockets");
        total.listeners += field("listeners");
        total.processes += field("processes");
    }
    Ok((workers, total))
}

/// Bounds the run: exits 1 if the connections are not established within --timeout (only
/// when opening them here: `progress`), and 0 after holding them for --hold seconds.
fn spawn_watchdog(established: mpsc::Receiver<()>, progress: Option<Progress>, args: &Args) {
    let (timeout, hold, total) = (args.timeout, args.hold, args.connections);
    thread::spawn(move || {
        let outcome = match &progress {
            Some(_) => established.recv_timeout(Duration::from_secs(timeout)),
            None => established.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match (outcome, progress) {
            (Ok(()), _) => {}
            (Err(RecvTimeoutError::Timeout), Some(progress)) => {
                eprintln!(
                    "cw-hold: only {} of {total} connections connected and {} accepted after \
                     {timeout} s; giving up",
                    progress.connected.load(Ordering::Relaxed),
                    progress.accepted.load(Ordering::Relaxed),
                );
                std::process::exit(1);
            }
            // main ended (with an error) before establishing everything.
            _ => return,
        }
        thread::sleep(Duration::from_secs(hold));
        eprintln!("cw-hold: held the connections for {hold} s without being told to stop; exiting");
        std::process::exit(0);
    });
}

/// Raises RLIMIT_NOFILE towards `wanted` descriptors: the soft limit, and the hard limit when
/// allowed (CAP_SYS_RESOURCE). Returns the soft limit now in effect.
fn raise_fd_limit(wanted: u64) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let set = |limit: libc::rlimit| {
        // SAFETY: `limit` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(limit.rlim_cur)
        }
    };
    match set(libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max.max(wanted) }) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            set(libc::rlimit { rlim_cur: limit.rlim_max, ..limit })
                .context("raising RLIMIT_NOFILE to its hard limit")
        }
        result => result.with_context(|| format!("raising RLIMIT_NOFILE to {wanted}")),
    }
}
