//! Building, running and testing connwatch.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::prereqs::{self, path_with_cargo_bin};

/// Packages the integration tests use: nft drops packets to make half-open connections; real
/// servers and their load generators judge the detectors against correct software; Go
/// builds the Go services (standard library only); a real Prometheus scrapes the agent, and
/// bpftool checks it leaves no program behind.
const TEST_PACKAGES: &[&str] = &[
    "nftables",
    "iproute2",
    "nginx-light",
    "wrk",
    "curl",
    "redis-server",
    "redis-tools",
    "postgresql",
    "golang-go",
    "prometheus",
    "bpftool",
];

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(workspace_root()).env("PATH", path_with_cargo_bin());
    cargo
}

/// Builds connwatch in release mode; returns the binary's path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    prereqs::ensure_build()?;
    prereqs::run(cargo().args(["build", "--release", "--package", "connwatch"]))?;
    Ok(workspace_root().join("target/release/connwatch"))
}

/// Runs connwatch with `args`; with none, the demo (a newcomer's first run).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let binary = build_release()?;
    let demo = ["demo".to_string()];
    let args = if args.is_empty() { &demo[..] } else { args };
    // exec: signals (Ctrl-C) and the exit code belong to connwatch itself.
    let error = Command::new(&binary).args(args).exec();
    Err(error).with_context(|| format!("running {}", binary.display()))
}

pub fn test(args: &[String]) -> anyhow::Result<()> {
    prereqs::ensure_build()?;
    prereqs::ensure_packages(TEST_PACKAGES)?;
    prereqs::run(cargo().arg("test").args(args))
}
