//! The guest kernel: Debian's newest `linux-image-6.1.0-*-amd64-unsigned` package, fetched with
//! apt and unpacked once under `target/vm/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::prereqs;

pub struct Kernel {
    /// `6.1.0-56-amd64`
    pub release: String,
    pub image: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
}

/// Fetches and unpacks the newest 6.1 kernel package the configured apt sources offer.
pub fn fetch(cache: &Path) -> anyhow::Result<Kernel> {
    let package = newest_package()?;
    let release = package
        .strip_prefix("linux-image-")
        .and_then(|p| p.strip_suffix("-unsigned"))
        .context("unexpected kernel package name")?
        .to_string();
    let unpacked = cache.join(&package);
    let image = unpacked.join(format!("boot/vmlinuz-{release}"));
    if !image.exists() {
        fs::create_dir_all(cache)?;
        println!("xtask: fetching {package}");
        prereqs::run(Command::new("apt-get").args(["download", &package]).current_dir(cache))?;
        let deb = fs::read_dir(cache)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package} .deb"))?;
        prereqs::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::remove_file(&deb)?;
    }
    let modules = unpacked.join(format!("lib/modules/{release}"));
    if !modules.join("modules.dep").exists() {
        // The package leaves modules.dep to depmod at install time.
        prereqs::run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&release))?;
    }
    Ok(Kernel { release, image, modules })
}

/// `linux-image-6.1.0-<abi>-amd64-unsigned` with the highest ABI number.
fn newest_package() -> anyhow::Result<String> {
    let output = Command::new("apt-cache")
        .args(["search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"])
        .output()
        .context("running apt-cache")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let abi = |name: &str| -> Option<u32> {
        name.strip_prefix("linux-image-6.1.0-")?.split('-').next()?.parse().ok()
    };
    let newest = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((abi(name)?, name.to_string())))
        .max();
    match newest {
        Some((_, name)) => Ok(name),
        None => bail!(
            "no linux-image-6.1.0-*-amd64-unsigned package in the apt sources (Debian 12's main \
             archive carries it); run `apt-get update` or add bookworm's sources"
        ),
    }
}
