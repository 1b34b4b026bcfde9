//! `connwatch agent` end to end, as a node operator runs it: started after a CLOSE_WAIT leak
//! already exists in another network namespace (the leaking process in a cgroup of its own),
//! scraped by a real Prometheus, stopped with SIGTERM. One agent for the whole story: each
//! start costs seconds of verifier time.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use connwatch::{inventory, sinks::metrics::EXPORTED};
use connwatch_tests::{
    Peer, Topology,
    agent::{Agent, http_get, url_encode},
    require_root, servers,
    session::EVENT_TIMEOUT,
};
use serde_json::Value;

const LEAK_PORT: u16 = 26001;
const TRAP_PORT: u16 = 26002;
const RTT_PORT: u16 = 26003;
const AGENT: &str = "127.0.0.1:26742";
const PROMETHEUS: &str = "127.0.0.1:26090";

/// A cgroup v2 directory of the test's own, removed (with its processes moved out) on drop.
struct TestCgroup {
    dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it (relative to the cgroup2 mount).
    path: String,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("read mounts");
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount (unified or hybrid hierarchy)");
        let dir = root.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).expect("create the test cgroup");
        Self { path: format!("/{name}"), dir }
    }

    fn adopt(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes have exited by now (their guards dropped first); retry briefly.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn bpf_program_ids() -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool (`cargo xtask test` installs it)");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .map_or_else(BTreeSet::new, |a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
}

/// The ids of the BPF programs a process holds (its fds' `prog_id` in fdinfo, links
/// included).
fn agent_program_ids(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("list fdinfo").flatten() {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:").and_then(|v| v.trim().parse().ok()) {
                ids.insert(id);
            }
        }
    }
    ids
}

/// CapEff of each of the process's threads: (thread name, mask).
fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("list threads").flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let name = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
            out.push((name.trim().to_string(), u64::from_str_radix(hex.trim(), 16).unwrap()));
        }
    }
    out
}

/// The nice value of each of the process's threads: (thread name, nice).
fn thread_nice(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("list threads").flatten() {
        let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let name = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // Field 19, counted from after the command name's closing parenthesis.
        let nice = stat.rfind(')').and_then(|at| stat[at + 2..].split(' ').nth(16));
        if let Some(nice) = nice.and_then(|n| n.parse().ok()) {
            out.push((name.trim().to_string(), nice));
        }
    }
    out
}

/// The sample lines of one metric (name and labels), with their values.
fn samples<'a>(page: &'a str, metric: &str) -> Vec<(&'a str, f64)> {
    page.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect()
}

fn value_of(page: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(page, metric).into_iter().find_map(|(series, value)| {
        labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\""))).then_some(value)
    })
}

#[test]
fn agent_exports_what_it_finds_with_bounded_labels_and_leaves_nothing_behind() {
    require_root();
    // One correlator thread reading the one ring buffer, then three each reading their own
    // (as on a host with six CPUs or more).
    for threads in ["1", "3"] {
        println!("--correlator-threads {threads}");
        agent_run(threads);
    }
}

fn agent_run(threads: &str) {
    let topology = Topology::new("agentcw");
    let cgroup = TestCgroup::new(&format!("connwatch-test-{}", std::process::id()));
    // The leak, before the agent: a server that never reads its peer's FIN.
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    cgroup.adopt(server.pid());
    server.ok(&format!("listen {} {LEAK_PORT}", Topology::SERVER_V4));
    client.ok(&format!("connect {} {LEAK_PORT}", Topology::SERVER_V4));
    server.ok("accept");
    client.ok("close");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !inventory::sockets()
        .expect("sock_diag")
        .iter()
        .any(|s| s.state == 8 && s.local.port() == LEAK_PORT)
    {
        assert!(Instant::now() < deadline, "the server's socket never reached CLOSE_WAIT");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Only the test's ports, so no other socket on the host takes the one label value.
    let ports = [LEAK_PORT, TRAP_PORT, RTT_PORT].map(|p| p.to_string());
    let mut args = vec!["--close-wait-grace", "1", "--max-label-values", "1"];
    args.extend(["--correlator-threads", threads]);
    args.extend(["--inventory-interval", "1"]);
    for port in &ports {
        args.extend(["--port", port.as_str()]);
    }
    let mut agent = Agent::start(AGENT, &args);
    let prometheus = servers::prometheus(PROMETHEUS, AGENT);
    // The programs the agent holds (other tools on the host may load their own meanwhile).
    let programs = agent_program_ids(agent.pid());
    assert!(!programs.is_empty(), "the agent holds its programs");

    // The leak that predates the agent, attributed to its process and cgroup.
    let leak = agent.wait_for("the pre-existing CLOSE_WAIT leak", |v| {
        v["type"] == "finding" && v["kind"] == "close-wait-leak" && v["sport"] == LEAK_PORT
    });
    assert_eq!(leak["pid"].as_u64(), Some(u64::from(server.pid())));
    assert_eq!(leak["comm"], "cw-peer");
    assert_eq!(leak["cgroup"], cgroup.path.as_str());
    assert!(
        leak["evidence"][0]["event"].as_str().unwrap_or("").contains("predates connwatch"),
        "{leak:#}"
    );
    let leak_labels =
        [("kind", "close-wait-leak"), ("comm", "cw-peer"), ("cgroup", cgroup.path.as_str())];
    let page = agent.metrics_until("the leak", |p| {
        value_of(p, "connwatch_problem_sockets", &leak_labels) == Some(1.0)
            && value_of(p, "connwatch_sockets", &[("state", "CLOSE_WAIT")])
                .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(value_of(&page, "connwatch_findings_total", &leak_labels), Some(1.0));

    // Connection quality: a request and reply between two more cw-peer processes give the
    // RTT histogram a series for cw-peer (the one comm value the cap allows).
    let mut rtt_server = Peer::spawn(&topology.server);
    let mut rtt_client = Peer::spawn(&topology.client);
    rtt_server.ok(&format!("listen {} {RTT_PORT}", Topology::SERVER_V4));
    rtt_client.ok(&format!("connect {} {RTT_PORT}", Topology::SERVER_V4));
    rtt_server.ok("accept");
    rtt_server.begin("echo 3");
    rtt_client.ok("ping-every 10 3");
    rtt_server.answer();
    rtt_client.ok("close");
    rtt_server.ok("close");
    agent.metrics_until("the RTT and duration histograms for cw-peer", |p| {
        p.lines().any(|l| {
            l.starts_with("connwatch_tcp_rtt_seconds_count{comm=\"cw-peer\"") && !l.ends_with(" 0")
        }) && p.contains("connwatch_connection_duration_seconds_count{comm=\"cw-peer\"")
    });

    // A trap started afterwards (another process name and cgroup: beyond --max-label-values 1,
    // both labels read `other`).
    let addr = format!("127.0.0.1:{TRAP_PORT}");
    let trap = servers::go_service(None, &["eof-loop", &addr]);
    drop(std::net::TcpStream::connect(&addr).expect("connect to the Go trap"));
    agent.wait_for("the trap's finding", |v| {
        v["type"] == "finding" && v["kind"] == "eof-ignored" && v["pid"] == trap.pid()
    });
    let page = agent.metrics_until("the trap", |p| {
        value_of(p, "connwatch_findings_total", &[("kind", "eof-ignored"), ("comm", "other")])
            .is_some()
    });

    println!("/metrics after the leak, the RTT exchange and the trap:\n{page}");

    // Bounded labels only: no per-connection label, and comm capped at one value plus `other`.
    let mut label_names = HashSet::new();
    let mut comms = HashSet::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = line.split_once('{') {
            for pair in labels.split("\",") {
                if let Some((name, value)) = pair.split_once("=\"") {
                    label_names.insert(name.trim_start_matches(',').to_string());
                    if name.ends_with("comm") {
                        comms.insert(value.trim_end_matches(['"', '}', ' ']).to_string());
                    }
                }
            }
        }
    }
    for forbidden in ["pid", "port", "sport", "dport", "saddr", "daddr", "fd", "sock"] {
        assert!(!label_names.contains(forbidden), "unbounded label {forbidden}: {label_names:?}");
    }
    assert!(comms.len() <= 2 && comms.contains("other"), "{comms:?}");

    // Capabilities: none on the agent's threads but the inventory's three on its thread.
    const INVENTORY: u64 = (1 << 21) | (1 << 19) | (1 << 2);
    for (thread, caps) in thread_caps(agent.pid()) {
        let allowed = if thread == "inventory" { INVENTORY } else { 0 };
        assert_eq!(caps & !allowed, 0, "thread {thread} kept capabilities {caps:#x}");
    }
    // Every thread, the ring-buffer readers among them, at the default --nice.
    let niceness = thread_nice(agent.pid());
    assert!(
        threads == "1" || niceness.iter().any(|(thread, _)| thread.starts_with("correlate-")),
        "no correlator thread among {niceness:?}"
    );
    for (thread, nice) in niceness {
        assert_eq!(nice, -10, "thread {thread} runs at nice {nice}");
    }

    // A real Prometheus scraped it: the series read back through its HTTP API.
    let query = "connwatch_findings_total{kind=\"close-wait-leak\"}";
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let series = loop {
        let body =
            http_get(PROMETHEUS, &format!("/api/v1/query?query={}", url_encode(query)), None);
        let answer: Value = serde_json::from_str(&body).expect("Prometheus API JSON");
        if let Some(first) = answer["data"]["result"].as_array().and_then(|r| r.first()) {
            break first.clone();
        }
        assert!(Instant::now() < deadline, "Prometheus never had {query}: {body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(series["metric"]["comm"], "cw-peer");
    assert_eq!(series["metric"]["cgroup"], cgroup.path.as_str());
    assert_eq!(series["value"][1], "1");

    // Every metric the dashboard queries is one the agent exports.
    let dashboard = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )
    .expect("read the dashboard");
    // (Families without a series yet are not on the page; EXPORTED lists them all, and what
    // the page shows must be among them.)
    let exported: HashSet<&str> = EXPORTED.iter().copied().collect();
    for on_page in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = on_page.split(' ').next().unwrap_or_default();
        assert!(exported.contains(name), "{name} is exported but not listed in EXPORTED");
    }
    let queried = metric_names(&dashboard);
    assert!(queried.len() >= 8, "the dashboard queries {queried:?}");
    for name in &queried {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which the agent does not export ({exported:?})"
        );
    }

    // The leak ends: the problem gauge falls.
    server.ok("close");
    agent.metrics_until("the leak closed", |p| {
        value_of(p, "connwatch_problem_sockets", &leak_labels) == Some(0.0)
    });

    // SIGTERM: exit 0, no program left behind.
    drop(prometheus);
    let status = agent.stop();
    assert!(status.success(), "SIGTERM ends the agent with 0: {status}");
    let left: Vec<u64> = bpf_program_ids().intersection(&programs).copied().collect();
    assert!(left.is_empty(), "the agent's BPF programs outlived it: {left:?}");
    drop(trap);
    drop(server);
    drop(client);
}

/// Every `connwatch_*` name in the dashboard's queries.
fn metric_names(dashboard: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = dashboard;
    while let Some(at) = rest.find("connwatch_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}
