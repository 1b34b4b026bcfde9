//! What building and testing connwatch needs, installed when missing and left alone when present.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// bpf-linker release known to work with nightly 1.97's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything `cargo build -p connwatch` needs.
pub fn ensure_build() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    Ok(())
}

/// Debian packages, installed with apt-get when missing (fresh machines have an empty apt list,
/// so `apt-get update` runs first).
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    // Server packages start their services on install; the tests start their own servers on
    // their own ports, so the packages' services are kept from starting.
    let _no_services = NoServiceStarts::install()?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Debian's policy-rc.d hook answering "do not start" (101) while it lives; an existing hook is
/// left alone.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    const HOOK: &str = "/usr/sbin/policy-rc.d";

    fn install() -> anyhow::Result<Self> {
        let hook = PathBuf::from(Self::HOOK);
        if hook.exists() {
            return Ok(Self(None));
        }
        fs::write(
            &hook,
            "#!/bin/sh\n# connwatch's xtask: no service starts during install\nexit 101\n",
        )
        .with_context(|| format!("writing {}", hook.display()))?;
        fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Self(Some(hook)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(hook) = &self.0 {
            let _ = fs::remove_file(hook);
        }
    }
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let output = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output();
    match output {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8(o.stdout)?.trim())),
        _ => bail!(
            "the nightly Rust toolchain is missing; connwatch's eBPF programs need it \
             (install it with `rustup toolchain install nightly`)"
        ),
    }
}

fn ensure_rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!("xtask: installing the nightly rust-src component (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must link the nightly's own LLVM: the bitcode rustc emits is read by it.
fn ensure_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let llvm = nightly_llvm(sysroot)?;
    let major = llvm_major(&llvm)?;
    let prefix = cargo_home().join(format!("connwatch-llvm-{major}"));
    // bpf-linker's RUNPATH is PREFIX/lib and it asks for the versioned soname; the linker
    // wants the plain name at build time. Provide both.
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in
        [OsString::from("libLLVM.so"), llvm.file_name().context("LLVM path")?.to_os_string()]
    {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), llvm.display()))?;
        }
    }
    if bpf_linker_works() {
        return Ok(());
    }
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} ({})",
        llvm.display()
    );
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix))?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; check {}", lib.display());
    }
    Ok(())
}

fn bpf_linker_works() -> bool {
    Command::new(cargo_home().join("bin/bpf-linker")).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

/// The nightly's `libLLVM.so.<major>.<minor>-rust-...` shared library.
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("libLLVM.so.") {
            return Ok(path);
        }
    }
    bail!("no libLLVM.so.* in {}: is the nightly toolchain complete?", lib.display())
}

fn llvm_major(llvm: &Path) -> anyhow::Result<u32> {
    let name = llvm.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))
}

pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
    })
}

/// PATH with cargo's bin directory first, so builds find the bpf-linker installed above.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_home().join("bin")];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).unwrap_or_default()
}

pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
