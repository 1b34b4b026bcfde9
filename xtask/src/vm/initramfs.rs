//! The guest's whole root file system, as an initramfs: busybox for the shell and mounts,
//! connwatch and the test executables (debug info stripped) at their host paths, so they find
//! each other as they do on the host, the host's `ip` and `nft`, every shared library these
//! need, and the kernel modules the tests load.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

pub struct Root {
    dir: PathBuf,
    copied: BTreeSet<PathBuf>,
}

impl Root {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        for sub in ["bin", "proc", "sys", "dev", "tmp", "run", "etc"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Self { dir: dir.to_path_buf(), copied: BTreeSet::new() })
    }

    /// `host` at `guest` (an absolute path inside the guest).
    pub fn place(&mut self, host: &Path, guest: &Path) -> anyhow::Result<()> {
        let target = self.dir.join(guest.strip_prefix("/").unwrap_or(guest));
        fs::create_dir_all(target.parent().expect("an absolute path has a parent"))?;
        fs::copy(host, &target)
            .with_context(|| format!("copying {} into the initramfs", host.display()))?;
        Ok(())
    }

    /// An executable at its own path, without debug info, with the libraries it loads.
    pub fn executable(&mut self, host: &Path) -> anyhow::Result<()> {
        if !self.copied.insert(host.to_path_buf()) {
            return Ok(());
        }
        let target = self.dir.join(host.strip_prefix("/").context("an absolute path")?);
        fs::create_dir_all(target.parent().expect("an absolute path has a parent"))?;
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(host)
            .arg(&target)
            .status()
            .context("running objcopy (binutils)")?;
        if !status.success() {
            bail!("objcopy --strip-debug {} failed", host.display());
        }
        for library in shared_libraries(host)? {
            if self.copied.insert(library.clone()) {
                self.place(&library, &library)?;
            }
        }
        Ok(())
    }

    pub fn write(&self, guest: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.dir.join(guest.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("a path inside the root"))?;
        fs::write(&path, contents)?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    }

    /// The tree as an uncompressed newc cpio archive (what the kernel unpacks as initramfs).
    pub fn archive(&self, out: &Path) -> anyhow::Result<()> {
        let list = Command::new("find")
            .arg(".")
            .current_dir(&self.dir)
            .output()
            .context("listing the initramfs tree")?;
        let archive = fs::File::create(out)?;
        let mut cpio = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc"])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(archive)
            .spawn()
            .context("running cpio")?;
        std::io::Write::write_all(cpio.stdin.as_mut().expect("piped"), &list.stdout)?;
        drop(cpio.stdin.take());
        if !cpio.wait()?.success() {
            bail!("cpio failed writing {}", out.display());
        }
        Ok(())
    }
}

/// What the dynamic loader would load for `binary` (ldd), the loader itself included.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(listing
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `wanted` modules and everything they depend on, in loading order, from `modules.dep`.
pub fn modules_in_order(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let dep = fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules.display()))?;
    let deps: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|line| {
            let (module, needs) = line.split_once(':')?;
            Some((module.to_string(), needs.split_whitespace().map(str::to_string).collect()))
        })
        .collect();
    let mut ordered: Vec<String> = Vec::new();
    fn visit(
        module: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        ordered: &mut Vec<String>,
    ) {
        if ordered.iter().any(|m| m == module) {
            return;
        }
        for need in deps.get(module).into_iter().flatten() {
            visit(need, deps, ordered);
        }
        ordered.push(module.to_string());
    }
    for name in wanted {
        let file = format!("/{name}.ko");
        let module = deps
            .keys()
            .find(|m| m.ends_with(&file))
            .with_context(|| format!("module {name} is not in {}", modules.display()))?;
        visit(module, &deps, &mut ordered);
    }
    Ok(ordered.into_iter().map(|m| modules.join(m)).collect())
}
