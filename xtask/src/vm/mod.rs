//! `cargo xtask vm-test`: the integration tests inside a Debian 6.1 kernel under QEMU, once per
//! attach mode, so a kernel other than the host's is tested on every run (the host here runs
//! 6.18; production fleets run 5.15, 6.1 and 6.6).
//!
//! The guest's whole world is an initramfs (see [`initramfs`]): no disk image, no network
//! beyond the namespaces the tests make. KVM is used when /dev/kvm works, TCG otherwise.

mod console;
mod initramfs;
mod kernel;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    prereqs,
    run::{cargo, workspace_root},
};

/// What the VM needs on the host: QEMU, cpio for the initramfs, a static busybox for the guest's
/// shell, binutils to strip the test executables, and the tools the tests call (ip, nft).
const VM_PACKAGES: &[&str] =
    &["qemu-system-x86", "cpio", "busybox-static", "binutils", "kmod", "iproute2", "nftables"];

/// Modules the tests load: veth pairs between namespaces, nftables for black holes (with the
/// crc32c that libcrc32c asks the crypto API for, a soft dependency modules.dep leaves out).
const MODULES: &[&str] = &["veth", "crc32c_generic", "nf_tables"];

#[derive(Args, Debug)]
pub struct VmArgs {
    /// Integration test files (tests/tests/*.rs) to run in the guest.
    #[arg(long, value_delimiter = ',', default_value = "kernel_events,app_observations,findings")]
    tests: Vec<String>,
    /// Attach modes to run them in (`connwatch --attach` values).
    #[arg(long, value_delimiter = ',', default_value = "auto,tracepoint,kprobe,fentry")]
    modes: Vec<String>,
    /// Only tests whose name contains one of these (libtest's filters), comma-separated.
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 3072)]
    memory: u32,
    /// Give up on a mode's guest after this many minutes (the full suite takes about six per
    /// mode under emulation here).
    #[arg(long, default_value_t = 30)]
    timeout_min: u64,
}

impl VmArgs {
    /// What `cargo xtask test` runs in the guest, in each attach mode: every hook loads and
    /// attaches as this kernel allows, and one connection's whole lifecycle, every state change
    /// with its owner (the full suite, `cargo xtask vm-test`, takes about six minutes per mode
    /// under emulation here).
    pub fn smoke() -> Self {
        Self {
            tests: vec!["kernel_events".into()],
            modes: MODES.iter().map(|m| m.to_string()).collect(),
            filter: vec![
                "every_hook_attaches_on_this_kernel".into(),
                "lifecycle_names_each_side_with_its_own_process".into(),
            ],
            memory: 3072,
            timeout_min: 15,
        }
    }
}

/// Every `--attach` value; `raw-tracepoint` is what `auto` picks wherever it can.
const MODES: &[&str] = &["auto", "tracepoint", "kprobe", "fentry"];

pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    for mode in &args.modes {
        if !MODES.contains(&mode.as_str()) && mode != "raw-tracepoint" {
            bail!(
                "--modes {mode}: connwatch attaches with auto, raw-tracepoint, tracepoint, kprobe \
                 or fentry"
            );
        }
    }
    let tests = build(&args.tests)?;
    let executables: Vec<PathBuf> =
        tests.binaries.iter().chain(&tests.executables).cloned().collect();
    // A fresh guest per mode: one mode's programs and namespaces never outlive it. (Once, in
    // fentry mode after three modes in one guest, both CPUs locked up: 2026-11-26.)
    let guest = Guest::prepare(&executables)?;
    let mut outcomes = Vec::new();
    for mode in &args.modes {
        let log = console_log(mode);
        let script = test_runs(mode, args, &tests);
        let outcome = guest.boot(&script, args.memory, args.timeout_min, &log)?;
        outcomes.push((mode, log, outcome));
    }
    let (mut passed, mut failed, mut trouble) = (0, 0, Vec::new());
    if let Some((_, _, first)) = outcomes.first() {
        println!("xtask: guest kernel {}", first.kernel.as_deref().unwrap_or("unknown"));
    }
    for (mode, log, outcome) in &outcomes {
        for (_, hooks) in &outcome.hooks {
            println!("xtask: --attach {mode}: {hooks}");
        }
        for failure in &outcome.failures {
            println!("xtask: failed: {failure}");
        }
        if let Some(report) = &outcome.kernel_trouble {
            println!("xtask: --attach {mode}: the guest kernel reported: {report}");
        }
        if !outcome.finished {
            trouble.push(format!("the {mode} guest did not finish (console: {})", log.display()));
        } else if outcome.failed > 0 || !outcome.failures.is_empty() {
            trouble.push(format!("tests failed in the {mode} guest (console: {})", log.display()));
        }
        (passed, failed) = (passed + outcome.passed, failed + outcome.failed);
    }
    println!("xtask: {passed} passed, {failed} failed");
    if !trouble.is_empty() {
        bail!("{}", trouble.join("; "));
    }
    Ok(())
}

/// Where a boot's console output is kept: `target/vm/console-NAME.log`.
pub fn console_log(name: &str) -> PathBuf {
    cache().join(format!("console-{name}.log"))
}

/// The 6.1 guest, ready to boot: its kernel, and an initramfs root holding `executables` (at
/// their host paths), the tools and the modules. Built once, booted once per script.
pub struct Guest {
    kernel: kernel::Kernel,
    root: initramfs::Root,
    modules: Vec<PathBuf>,
}

impl Guest {
    pub fn prepare(executables: &[PathBuf]) -> anyhow::Result<Self> {
        prereqs::ensure_packages(VM_PACKAGES)?;
        let kernel = kernel::fetch(&cache())?;
        println!("xtask: guest kernel package {}", kernel.release);
        let mut root = initramfs::Root::new(&cache().join("root"))?;
        root.place(&PathBuf::from("/bin/busybox"), &PathBuf::from("/bin/busybox"))?;
        for executable in executables {
            root.executable(executable)?;
        }
        for tool in GUEST_TOOLS {
            root.executable(std::path::Path::new(tool))?;
        }
        let modules = initramfs::modules_in_order(&kernel.modules, MODULES)?;
        for module in &modules {
            let guest = PathBuf::from("/modules").join(module.file_name().expect("a module file"));
            root.place(module, &guest)?;
        }
        Ok(Self { kernel, root, modules })
    }

    /// Boots a fresh guest that runs `script` as root once its file systems, modules and
    /// loopback are up, and reads the console (kept in `log`) until the guest powers off.
    pub fn boot(
        &self,
        script: &str,
        memory_mib: u32,
        timeout_min: u64,
        log: &std::path::Path,
    ) -> anyhow::Result<console::Outcome> {
        self.root.write("/init", &init_script(&self.modules, script), 0o755)?;
        let initrd = cache().join("initramfs.cpio");
        self.root.archive(&initrd)?;
        console::boot(&console::Boot {
            kernel: &self.kernel.image,
            initrd: &initrd,
            memory_mib,
            log,
            timeout: std::time::Duration::from_secs(timeout_min * 60),
        })
    }
}

/// Where the kernel package, the initramfs and the consoles are kept.
fn cache() -> PathBuf {
    workspace_root().join("target/vm")
}

/// Host tools the tests run inside the guest.
const GUEST_TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/nft"];

struct Built {
    /// Test executables, by test file name.
    executables: Vec<PathBuf>,
    /// connwatch and the test helper binaries (cw-peer, ...), next to the executables' deps/.
    binaries: Vec<PathBuf>,
    connwatch: PathBuf,
}

/// Builds connwatch and the test helper binaries (cw-peer, cw-churner) for a guest, optimised;
/// returns the directory that holds them.
pub fn build_release_binaries() -> anyhow::Result<PathBuf> {
    prereqs::ensure_build()?;
    prereqs::run(cargo().args([
        "build",
        "--release",
        "--package",
        "connwatch",
        "--package",
        "connwatch-tests",
    ]))?;
    Ok(workspace_root().join("target/release"))
}

/// Builds connwatch, the helper binaries and the chosen test executables, optimised: under
/// emulation, a debug build's userspace (reading the kernel's BTF) takes minutes per test.
fn build(tests: &[String]) -> anyhow::Result<Built> {
    let release = build_release_binaries()?;
    let mut command = cargo();
    command.args([
        "test",
        "--release",
        "--no-run",
        "--message-format=json",
        "--package",
        "connwatch-tests",
    ]);
    for test in tests {
        command.args(["--test", test]);
    }
    let output = command.output().context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the tests failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test =
            message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(path)) = (is_test, message["executable"].as_str()) {
            executables.push(PathBuf::from(path));
        }
    }
    if executables.len() != tests.len() {
        bail!("expected {} test executables, cargo built {}", tests.len(), executables.len());
    }
    let binaries = ["connwatch", "cw-peer", "cw-churner"].iter().map(|b| release.join(b)).collect();
    Ok(Built { executables, binaries, connwatch: release.join("connwatch") })
}

/// Every test executable in `mode`, each bracketed by `cw-vm:` lines the host reads.
fn test_runs(mode: &str, args: &VmArgs, tests: &Built) -> String {
    let connwatch = &tests.connwatch;
    let filter: String = args.filter.iter().map(|f| format!(" '{f}'")).collect();
    let mut runs = format!(
        "echo \"cw-vm: hooks {mode} $({} trace --attach {mode} --duration 1 --json 2>/dev/null | grep -m1 '\"ready\"')\"\n",
        connwatch.display()
    );
    for test in &tests.executables {
        let name = test_name(test);
        runs.push_str(&format!(
            "echo \"cw-vm: run {mode} {name}\"\n\
             CONNWATCH_TEST_ATTACH={mode} {} --test-threads=2{filter}\n\
             echo \"cw-vm: exit {mode} {name} $?\"\n",
            test.display()
        ));
    }
    runs
}

/// The guest's PID 1: mounts, modules, loopback, then `script`. Nothing is mounted over /tmp:
/// a checkout there (CI's is) has its executables at their host paths inside the initramfs.
fn init_script(modules: &[PathBuf], script: &str) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /modules/{}\n", m.file_name().unwrap().to_string_lossy()))
        .collect();
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_BACKTRACE=1 HOME=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs run /run\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mkdir -p /var && ln -s /run /var/run\n\
         {insmods}\
         ip link set lo up\n\
         echo \"cw-vm: kernel $(uname -r)\"\n\
         {script}\
         echo cw-vm: done\n\
         poweroff -f\n"
    )
}

/// `kernel_events` from `target/debug/deps/kernel_events-0123abcd`.
fn test_name(executable: &std::path::Path) -> String {
    let file = executable.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    file.rsplit_once('-').map_or(file.clone(), |(name, _)| name.to_string())
}
