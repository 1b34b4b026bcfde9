//! `connwatch agent` as a process: started from the binary the workspace built, its JSON Lines
//! read as they come, its /metrics fetched over HTTP, stopped with SIGTERM.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::session::EVENT_TIMEOUT;

/// The connwatch binary next to this test executable (`cargo test` at the workspace root, as
/// `cargo xtask test` runs it, builds it).
pub fn connwatch_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let binary = dir.join("connwatch");
    assert!(
        binary.exists(),
        "{} is missing: run the tests from the workspace root (`cargo xtask test`), which builds it",
        binary.display()
    );
    binary
}

pub struct Agent {
    child: Child,
    lines: Receiver<Value>,
    pub seen: Vec<Value>,
    pub listen: String,
}

impl Agent {
    /// Starts `connwatch agent --json --listen LISTEN ARGS..` and waits for its `ready` line.
    pub fn start(listen: &str, args: &[&str]) -> Self {
        let mut child = Command::new(connwatch_binary())
            .args(["agent", "--json", "--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start connwatch agent");
        let stdout = child.stdout.take().expect("piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent printed a line that is not JSON ({e}): {line}")
                });
                if send.send(value).is_err() {
                    return;
                }
            }
        });
        let mut agent = Self { child, lines, seen: Vec::new(), listen: listen.to_string() };
        agent.wait_for("the ready line", |v| v["type"] == "ready");
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a JSON line matching `what`; returns it.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|v| matches(v)) {
            return found.clone();
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => {
                    self.seen.push(value.clone());
                    if matches(&value) {
                        return value;
                    }
                }
                Err(_) => panic!("the agent never printed {what}; it printed:\n{:#?}", self.seen),
            }
        }
    }

    /// The metrics page, as Prometheus would scrape it.
    pub fn metrics(&self) -> String {
        http_get(&self.listen, "/metrics", None)
    }

    /// Fetches /metrics until `holds` is true of it.
    pub fn metrics_until(&self, what: &str, holds: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let page = self.metrics();
            if holds(&page) {
                return page;
            }
            assert!(Instant::now() < deadline, "/metrics never showed {what}:\n{page}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET; returns the body (panics on anything but 200).
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Percent-encodes a query parameter.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
