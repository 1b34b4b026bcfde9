//! The churn workload: `cw-churn` (xtask/src/bin/cw-churn.rs).

use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::Command,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::generators::run_json;

pub struct Churn {
    pub binary: PathBuf,
    pub connectors: u32,
    pub source_addresses: u32,
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
    pub fn new(binary: PathBuf, connectors: u32, source_addresses: u32) -> anyhow::Result<Self> {
        Ok(Self { binary, connectors, source_addresses, port: free_port()? })
    }

    pub fn run(&self, seconds: f64) -> anyhow::Result<ChurnResult> {
        let result: ChurnResult = run_json(
            Command::new(&self.binary)
                .args(["--seconds", &seconds.to_string()])
                .args(["--connectors", &self.connectors.to_string()])
                .args(["--source-addresses", &self.source_addresses.to_string()])
                .args(["--port", &self.port.to_string()]),
        )?;
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
