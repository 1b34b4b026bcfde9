//! The binary's behaviour on bad input and missing privileges: a clear message and the right
//! exit code, before anything touches the kernel.

use std::process::{Command, Output};

fn connwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_connwatch")).args(args).output().expect("run connwatch")
}

#[test]
fn unknown_flag_exits_2_naming_the_flag() {
    let out = connwatch(&["trace", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--frobnicate"), "{stderr}");
}

#[test]
fn bad_port_exits_2_naming_the_problem() {
    let out = connwatch(&["trace", "--port", "65536"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("65536") && stderr.contains("--port"), "{stderr}");
}

/// Without a subcommand connwatch watches (here briefly, on a port nothing uses).
#[test]
fn watch_is_the_default_command() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF programs: run it as root (cargo xtask test)"
    );
    let out = connwatch(&["--json", "--port", "21071", "--duration", "0.5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.first().map(|l| l["type"].clone()), Some("ready".into()));
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(
        summary["findings"]["close-wait-leak"], 0,
        "watch's summary counts findings: {summary}"
    );
}

/// An explicit mode is all or nothing: where the kernel offers it, every kernel event comes
/// through it; where it does not (this host: no kprobes, fentry refused), connwatch stops at
/// once, naming the hook, what the kernel lacks, and the way out.
#[test]
fn an_attach_mode_the_kernel_lacks_exits_1_naming_hook_and_cause() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF programs: run it as root (cargo xtask test)"
    );
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    for (mode, mechanism) in [("kprobe", "kprobe"), ("fentry", "fentry")] {
        let out = connwatch(&["trace", "--json", "--attach", mode, "--duration", "0.5"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let ready: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap())
                .expect("the first line is the ready line");
            assert_eq!(ready["hooks"]["sock:inet_sock_set_state"], mechanism, "{ready}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "--attach {mode}: {stderr}");
        for needed in [&format!("--attach {mode}"), "sock:inet_sock_set_state", "--attach auto"] {
            assert!(stderr.contains(needed), "--attach {mode} should name {needed:?}: {stderr}");
        }
        if mode == "kprobe" {
            assert!(!has_kprobes, "kprobes exist, yet --attach kprobe failed: {stderr}");
            assert!(stderr.contains("CONFIG_KPROBES"), "{stderr}");
        }
    }
}

#[test]
fn help_exits_0() {
    let out = connwatch(&["trace", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--ring-buffer-size"));
}

/// Run as an unprivileged user (nobody), connwatch says what it needs and exits non-zero.
#[test]
fn without_privileges_it_names_what_is_needed() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let binary = env!("CARGO_BIN_EXE_connwatch");
    let out = if root {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                binary,
                "trace",
                "--duration",
                "1",
            ])
            .output()
            .expect("run setpriv (util-linux)")
    } else {
        connwatch(&["trace", "--duration", "1"])
    };
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs root")
            && stderr.contains("CAP_BPF")
            && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout: no ready line without hooks");
}

/// The JSON protocol scripts rely on: `ready` first (only once attached), events, and on
/// SIGTERM a clean exit with every program detached and a `summary` line last.
#[test]
fn json_run_starts_with_ready_and_ends_with_summary_on_sigterm() {
    use std::{
        io::{BufRead, BufReader},
        process::Stdio,
    };
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF programs: run it as root (cargo xtask test)"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_connwatch"))
        .args(["trace", "--json", "--port", "21070"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start connwatch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["hooks"]["sock:inet_sock_set_state"], "raw_tracepoint");

    // A refused connection on the filtered port: the kernel's state, reset, state and error,
    // and what this process did and saw: connect (ECONNREFUSED) and close.
    let refused = std::net::TcpStream::connect("127.0.0.1:21070");
    assert!(refused.is_err(), "nothing listens on 21070");
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(event["dport"], 21070, "{event}");
        seen.push(event["type"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["close", "connect", "error", "reset", "state", "state"]);

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let summary: serde_json::Value =
        serde_json::from_str(rest.last().expect("a summary line")).unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["events"]["state"], 2);
    let lost = summary["lost"].as_object().expect("lost by kind");
    assert_eq!(lost.values().filter_map(serde_json::Value::as_u64).sum::<u64>(), 0);
    assert_eq!(lost["state"], 0, "every kind is listed, zeros included");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("connwatch: 6 events"), "{stderr}");
}

/// The newcomer's first run: every trap found, nothing for the well-behaved program, and no
/// namespace left behind.
#[test]
fn demo_finds_every_trap_and_cleans_up() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the demo loads eBPF programs: run it as root (cargo xtask test)"
    );
    let out = connwatch(&["demo", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("found 8 of 8 traps; the well-behaved program: 0 findings"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "ready");
    let mut kinds: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "finding")
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "close-wait-leak",
            "connect-unverified",
            "eof-ignored",
            "error-ignored",
            "half-open-write",
            "reset-unnoticed",
            "so-error-false-healthy",
            "write-after-peer-close"
        ]
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["sockets_evicted"], 0);
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).lines().any(|ns| ns.starts_with("cw-dm")),
        "the demo removes its namespaces"
    );
}

#[test]
fn agent_bad_listen_address_exits_2_naming_it() {
    let out = connwatch(&["agent", "--listen", "localhost"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen") && stderr.contains("localhost"), "{stderr}");
}

#[test]
fn agent_on_a_taken_address_exits_1_saying_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let out = connwatch(&["agent", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr) && stderr.contains("--listen"), "{stderr}");
}
