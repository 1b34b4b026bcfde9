//! The workload generators (xtask/src/bin/cw-*.rs), built in release mode, and how the bench
//! runs the ones that print a single JSON result.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

use crate::{prereqs, run::workspace_root};

pub struct Generators {
    pub churn: PathBuf,
    pub io: PathBuf,
    pub hold: PathBuf,
    pub syscall: PathBuf,
}

impl Generators {
    pub fn build() -> anyhow::Result<Self> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let names = ["cw-churn", "cw-io", "cw-hold", "cw-syscall"];
        let mut build = Command::new(cargo);
        build.current_dir(workspace_root()).args(["build", "--release", "--package", "xtask"]);
        for name in names {
            build.args(["--bin", name]);
        }
        prereqs::run(&mut build)?;
        let [churn, io, hold, syscall] =
            names.map(|name| workspace_root().join("target/release").join(name));
        Ok(Self { churn, io, hold, syscall })
    }
}

/// Runs a generator to completion and parses the JSON object it prints.
pub fn run_json<T: DeserializeOwned>(command: &mut Command) -> anyhow::Result<T> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().with_context(|| format!("starting {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{program} printed {:?}", String::from_utf8_lossy(&output.stdout)))
}
