//! The I/O workload: `cw-io` (xtask/src/bin/cw-io.rs), small request/response round trips on
//! established loopback connections.

use std::{path::PathBuf, process::Command};

use serde::{Deserialize, Serialize};

use super::generators::run_json;

pub struct Io {
    pub binary: PathBuf,
    pub connections: u32,
    pub message_bytes: u32,
}

/// What one cw-io run printed. An operation is one round trip: a request and its reply.
#[derive(Debug, Deserialize, Serialize)]
pub struct IoResult {
    pub operations: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    pub bytes: u64,
    pub bytes_per_second: f64,
    pub threads: u32,
}

impl Io {
    pub fn run(&self, seconds: f64) -> anyhow::Result<IoResult> {
        run_json(
            Command::new(&self.binary)
                .args(["--seconds", &seconds.to_string()])
                .args(["--connections", &self.connections.to_string()])
                .args(["--message-bytes", &self.message_bytes.to_string()]),
        )
    }
}
