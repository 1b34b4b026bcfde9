//! The workload: `cw-churn` (xtask/src/bin/cw-churn.rs), built in release mode.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{prereqs, run::workspace_root};

pub struct Churn {
    binary: PathBuf,
    connectors: u32,
    source_addresses: u32,
    /// One server port for every run, so that runs recycle each other's TIME_WAITs (see cw-churn).
    pub port: u16,
}

/// What one cw-churn run printed.
#[derive(Debug, Deserialize, Serialize)]
pub struct ChurnResult {
    pub connections: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl Churn {
    pub fn build(connectors: u32, source_addresses: u32) -> anyhow::Result<Self> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        prereqs::run(Command::new(cargo).current_dir(workspace_root()).args([
            "build",
            "--release",
            "--package",
            "xtask",
            "--bin",
            "cw-churn",
        ]))?;
        let binary = workspace_root().join("target/release/cw-churn");
        Ok(Self { binary, connectors, source_addresses, port: free_port()? })
    }

    pub fn run(&self, seconds: f64) -> anyhow::Result<ChurnResult> {
        let output = Command::new(&self.binary)
            .args(["--seconds", &seconds.to_string()])
            .args(["--connectors", &self.connectors.to_string()])
            .args(["--source-addresses", &self.source_addresses.to_string()])
            .args(["--port", &self.port.to_string()])
            .output()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        if !output.status.success() {
            bail!(
                "cw-churn failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let result: ChurnResult = serde_json::from_slice(&output.stdout).with_context(|| {
            format!("cw-churn printed {:?}", String::from_utf8_lossy(&output.stdout))
        })?;
        if result.failed > 0 {
            eprintln!(
                "bench: warning: {} connection attempts failed (first: {})",
                result.failed,
                result.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(result)
    }
}

/// A port free on 127.0.0.1 now; cw-churn binds it with SO_REUSEADDR in every run.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
