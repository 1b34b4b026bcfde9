//! Booting the guest and reading its serial console: every line is shown as it arrives and
//! kept in a log; the `cw-vm:` lines and libtest's own summaries make the outcome.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

const KERNEL_COMMAND_LINE: &str = "console=ttyS0 quiet loglevel=5 panic=-1 softlockup_panic=1 \
                                   hung_task_panic=1 rdinit=/init";

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub memory_mib: u32,
    pub log: &'a Path,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub kernel: Option<String>,
    /// The ready line of `connwatch trace --attach <mode>`: each hook's mechanism.
    pub hooks: Vec<(String, String)>,
    pub passed: u64,
    pub failed: u64,
    /// `mode test-file` for each test executable that exited non-zero.
    pub failures: Vec<String>,
    /// The guest reached the end of its script.
    pub finished: bool,
    /// The guest kernel's first report of a lockup, a hung task or a panic, if any.
    pub kernel_trouble: Option<String>,
}

pub fn boot(boot: &Boot<'_>) -> anyhow::Result<Outcome> {
    let accel = if kvm_works() { "kvm" } else { "tcg,thread=multi" };
    println!("xtask: booting {} under QEMU ({accel})", boot.kernel.display());
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    let mut child = Command::new("timeout")
        .args(["--signal=KILL", &boot.timeout.as_secs().to_string(), "qemu-system-x86_64"])
        .args(["-machine", "q35", "-accel", accel, "-smp", &cpus.to_string()])
        .args(["-m", &boot.memory_mib.to_string(), "-nographic", "-no-reboot"])
        .args(["-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(boot.kernel)
        .arg("-initrd")
        .arg(boot.initrd)
        // A soft lockup or hung task panics the guest, which then powers off at once
        // (panic=-1 with -no-reboot) rather than run into the timeout; loglevel=5 puts the
        // kernel's stack traces on the console.
        .args(["-append", KERNEL_COMMAND_LINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut log = File::create(boot.log)?;
    let mut outcome = Outcome::default();
    let console = BufReader::new(child.stdout.take().expect("piped"));
    for line in console.split(b'\n') {
        let line = String::from_utf8_lossy(&line?).trim_end_matches('\r').to_string();
        writeln!(log, "{line}")?;
        println!("  | {line}");
        read_line(&line, &mut outcome);
    }
    child.wait()?;
    Ok(outcome)
}

fn read_line(line: &str, outcome: &mut Outcome) {
    // The firmware clears the screen without a newline: a marker may follow escape codes.
    if let Some(marker) = line.find("cw-vm: ").map(|at| &line[at + "cw-vm: ".len()..]) {
        let mut words = marker.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("kernel"), Some(release), _) => outcome.kernel = Some(release.to_string()),
            (Some("hooks"), Some(mode), Some(ready)) => {
                outcome.hooks.push((mode.to_string(), mechanisms(ready)))
            }
            (Some("exit"), Some(mode), Some(rest)) => {
                if let Some((test, code)) = rest.rsplit_once(' ')
                    && code != "0"
                {
                    outcome.failures.push(format!("{mode} {test} (exit {code})"));
                }
            }
            (Some("done"), _, _) => outcome.finished = true,
            _ => {}
        }
    } else if outcome.kernel_trouble.is_none()
        && ["soft lockup", "hung_task", "blocked for more than", "Kernel panic"]
            .iter()
            .any(|t| line.contains(t))
    {
        outcome.kernel_trouble = Some(line.trim().to_string());
    } else if let Some(result) = line.trim().strip_prefix("test result: ") {
        // "ok. 12 passed; 0 failed; 0 ignored; ..."
        for part in result.split(';') {
            let mut words = part.split_whitespace().rev();
            if let (Some(what), Some(count)) = (words.next(), words.next())
                && let Ok(count) = count.parse::<u64>()
            {
                match what {
                    "passed" => outcome.passed += count,
                    "failed" => outcome.failed += count,
                    _ => {}
                }
            }
        }
    }
}

/// "raw_tracepoint 9, tracepoint 22" from a ready line's `hooks` object.
fn mechanisms(ready: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(ready) else {
        return format!("no ready line ({ready})");
    };
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for mechanism in
        value["hooks"].as_object().into_iter().flatten().filter_map(|(_, m)| m.as_str())
    {
        *counts.entry(mechanism.to_string()).or_default() += 1;
    }
    let degraded: Vec<&str> = value["degraded"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, r)| r.as_str())
        .collect();
    let reduced = degraded.iter().filter(|r| r.starts_with("reduced")).count();
    let parts: Vec<String> = counts.iter().map(|(m, n)| format!("{m} {n}")).collect();
    format!(
        "{} hooks ({}), {reduced} of them reduced; {} unavailable",
        counts.values().sum::<u32>(),
        parts.join(", "),
        degraded.len() - reduced
    )
}

/// /dev/kvm opens and the CPU offers hardware virtualisation (a VM without nested
/// virtualisation can have the first without the second, and a guest then never boots).
fn kvm_works() -> bool {
    let device = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virtualisation = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    device && virtualisation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_markers_and_libtest_summaries() {
        let mut outcome = Outcome::default();
        for line in [
            "\u{1b}c\u{1b}[?7l\u{1b}[2Jcw-vm: kernel 6.1.0-56-amd64",
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "cw-vm: exit auto kernel_events 0",
            "cw-vm: exit tracepoint findings 101",
            "[ 1184.905712] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [ip:3598]",
            "[ 1185.005712] Kernel panic - not syncing: softlockup: hung tasks",
            "cw-vm: done",
        ] {
            read_line(line, &mut outcome);
        }
        assert_eq!(outcome.kernel.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!((outcome.passed, outcome.failed), (15, 2));
        assert_eq!(outcome.failures, ["tracepoint findings (exit 101)"]);
        assert!(outcome.finished);
        assert_eq!(
            outcome.kernel_trouble.as_deref(),
            Some("[ 1184.905712] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [ip:3598]")
        );
    }
}
