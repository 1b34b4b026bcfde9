//! A cw-peer process inside a namespace, driven one command at a time.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::Duration,
};

use crate::Netns;

/// How long a peer may take to answer one command before the test fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Peer {
    /// Starts cw-peer in `ns`. Its pid is the process that will own its sockets (`ip netns
    /// exec` execs in place).
    pub fn spawn(ns: &Netns) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns.name]).arg(peer_binary());
        Self::start(command)
    }

    /// Starts cw-peer in the test's own network namespace (for loopback tests).
    pub fn spawn_host() -> Self {
        Self::start(Command::new(peer_binary()))
    }

    fn start(mut command: Command) -> Self {
        let mut child =
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn cw-peer");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stdin, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command and returns the peer's answer (`ok ...` or `err ...`).
    pub fn send(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to cw-peer");
        self.stdin.flush().expect("flush cw-peer stdin");
        self.lines
            .recv_timeout(ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("cw-peer did not answer `{command}`: {e}"))
    }

    /// Sends a command without waiting for its answer (the peer works on it meanwhile).
    pub fn begin(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to cw-peer");
        self.stdin.flush().expect("flush cw-peer stdin");
    }

    /// The answer to a command sent with `begin`, which must have succeeded.
    pub fn answer(&mut self) -> String {
        let answer = self.lines.recv_timeout(ANSWER_TIMEOUT).expect("cw-peer's answer");
        assert!(answer.starts_with("ok "), "cw-peer failed: {answer}");
        answer[3..].to_string()
    }

    /// Sends a command that must succeed; returns the text after `ok `.
    pub fn ok(&mut self, command: &str) -> String {
        let answer = self.send(command);
        match answer.strip_prefix("ok ") {
            Some(rest) => rest.to_string(),
            None => panic!("cw-peer `{command}` failed: {answer}"),
        }
    }
}

/// cw-peer is built with the tests (a bin of this package); cargo puts it one level above the
/// test executables in `deps/`.
fn peer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps layout");
    let peer = dir.join("cw-peer");
    assert!(peer.exists(), "{} not built: run the tests through cargo", peer.display());
    peer
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
