//! Builds connwatch-ebpf for the BPF target (nightly, bpf-linker) and leaves the object in
//! OUT_DIR, where `probes` embeds it. `cargo xtask` installs the prerequisites first.

use std::{env, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("connwatch lives inside the workspace")?;
    let ebpf_dir = workspace.join("connwatch-ebpf");
    // The programs embed connwatch-common's records and config: rebuild when they change.
    println!("cargo:rerun-if-changed={}", workspace.join("connwatch-common").display());
    let ebpf_dir = ebpf_dir.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "connwatch-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building connwatch-ebpf (run `cargo xtask prereqs` to install nightly rust-src and bpf-linker)")
}
