//! `connwatch demo`: a newcomer's first run. Small built-in programs fall into each trap (and
//! one does everything right) in private network namespaces, while connwatch watches; then
//! everything is cleaned up.

pub mod netns;
pub mod programs;

use std::{
    io::{self, BufRead, BufReader, Write},
    net::Ipv4Addr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cli::DemoArgs,
    correlate::{Correlator, DEFAULT_MAX_SOCKETS, Kind, Thresholds},
    decode::Event,
    pipeline::{self, Consumer},
    probes::{Filters, LoadOptions, privileges},
    trace::output,
    tracer::Tracer,
    watch::Watcher,
};
use netns::Topology;
use programs::PROGRAMS;

/// Short graces: the demo should not make a newcomer wait ten seconds per trap.
const DEMO_THRESHOLDS: Thresholds = Thresholds {
    close_wait_grace_ns: 2_000_000_000,
    reset_grace_ns: 2_000_000_000,
    retransmits: 3,
    idle_grace_ns: 300_000_000_000,
};
/// The demo ends when every trap was found, or after this long.
const DEMO_TIMEOUT: Duration = Duration::from_secs(40);
const DEMO_PORT: u16 = 7070;

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    privileges::check()?;
    if Command::new("ip").arg("-V").output().is_err() {
        bail!(
            "connwatch demo needs iproute2's `ip` to create network namespaces (apt-get install iproute2)"
        );
    }
    eprintln!(
        "connwatch demo: {} small programs in private network namespaces; {} fall into a trap, one \
         does everything right. Findings appear as connwatch sees them.\n",
        PROGRAMS.len(),
        PROGRAMS.len() - 1
    );
    let exe = std::env::current_exe().context("locating the connwatch binary")?;
    let mut programs = Vec::new();
    for (i, (name, expected)) in PROGRAMS.iter().enumerate() {
        let tag = format!("dm{i}{}", std::process::id() % 10_000);
        programs.push(Program::start(&exe, name, *expected, Topology::new(&tag))?);
    }
    let pids: Vec<u32> = programs.iter().map(|p| p.child.id()).collect();
    let options = LoadOptions {
        filters: Filters { pids: pids.clone(), ..Filters::default() },
        ..LoadOptions::default()
    };
    let mut tracer = Tracer::start(&options)?;
    let mut sink = output(args.json, false);
    sink.ready(&tracer.ready())?;
    for program in &programs {
        program.send("go")?;
    }
    let expected: Vec<(Kind, u32)> =
        programs.iter().filter_map(|p| Some((p.expected?, p.child.id()))).collect();
    let mut demo = Demo {
        watcher: Watcher::new(Correlator::new(DEMO_THRESHOLDS, DEFAULT_MAX_SOCKETS), sink.as_mut()),
        expected: expected.clone(),
        deadline: Instant::now() + DEMO_TIMEOUT,
    };
    let started = Instant::now();
    let outcome = pipeline::run(&mut tracer, Some(DEMO_TIMEOUT), &mut demo).await;
    let found = demo.watcher.found.clone();
    let mut summary = tracer.summary(started.elapsed());
    summary.watch = Some(demo.watcher.summary());
    let _ = sink.summary(&summary);
    drop(programs);
    outcome?;
    report(&expected, &pids, &found)
}

/// The demo's verdict on stderr: which traps were found, and whether the well-behaved program
/// stayed clean.
fn report(
    expected: &[(Kind, u32)],
    pids: &[u32],
    found: &[(Kind, Option<u32>)],
) -> anyhow::Result<()> {
    let hits = expected.iter().filter(|(kind, pid)| found.contains(&(*kind, Some(*pid)))).count();
    let well_behaved = pids.last().copied();
    let false_alarms = found.iter().filter(|(_, pid)| *pid == well_behaved).count();
    eprintln!(
        "\nconnwatch demo: found {hits} of {} traps; the well-behaved program: {} findings. \
         Namespaces removed.",
        expected.len(),
        false_alarms
    );
    for (kind, pid) in expected {
        if !found.contains(&(*kind, Some(*pid))) {
            eprintln!("  not found: {kind} (pid {pid})");
        }
    }
    if hits < expected.len() || false_alarms > 0 {
        bail!("the demo did not go as expected (see above)");
    }
    Ok(())
}

struct Demo<'a> {
    watcher: Watcher<'a>,
    expected: Vec<(Kind, u32)>,
    deadline: Instant,
}

impl Consumer for Demo<'_> {
    fn events(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        self.watcher.events(events)
    }

    fn tick(&mut self, now_ns: u64, lost_total: u64) -> io::Result<()> {
        self.watcher.tick(now_ns, lost_total)
    }

    fn done(&self) -> bool {
        let all = self
            .expected
            .iter()
            .all(|(kind, pid)| self.watcher.found.contains(&(*kind, Some(*pid))));
        all || Instant::now() >= self.deadline
    }
}

/// One demo program: its process (client side in one namespace, server thread in the other).
struct Program {
    child: Child,
    stdin: Arc<Mutex<ChildStdin>>,
    expected: Option<Kind>,
    /// Reads the program's requests; holds the topology too, so it is joined before the
    /// namespaces can go.
    reader: Option<thread::JoinHandle<()>>,
    _topology: Arc<Topology>,
}

impl Program {
    fn start(
        exe: &std::path::Path,
        name: &str,
        expected: Option<Kind>,
        topology: Topology,
    ) -> anyhow::Result<Self> {
        let server_netns = format!("/run/netns/{}", topology.server.name);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topology.client.name])
            .arg(exe)
            .args([
                "demo-program",
                name,
                &server_netns,
                Topology::SERVER_V4,
                &DEMO_PORT.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a demo program")?;
        let stdin = Arc::new(Mutex::new(child.stdin.take().expect("piped stdin")));
        let stdout = child.stdout.take().expect("piped stdout");
        let topology = Arc::new(topology);
        // The half-open program asks for its server's link to be cut once connected.
        let (link, reply) = (Arc::clone(&topology), Arc::clone(&stdin));
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "cut-link" {
                    link.cut_server_link();
                    let _ = writeln!(reply.lock().expect("stdin lock"), "ok");
                }
            }
        });
        Ok(Self { child, stdin, expected, reader: Some(reader), _topology: topology })
    }

    fn send(&self, line: &str) -> io::Result<()> {
        let mut stdin = self.stdin.lock().expect("stdin lock");
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The program's stdout is closed now, so its reader ends and lets go of the topology.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Entry point of a demo program process (`connwatch demo-program ...`, hidden).
pub fn program_main(
    name: &str,
    server_netns: &str,
    server: Ipv4Addr,
    port: u16,
) -> anyhow::Result<()> {
    let place = programs::Place { server_netns: server_netns.to_string(), server, port };
    programs::run(name, &place).with_context(|| format!("demo program {name}"))
}
