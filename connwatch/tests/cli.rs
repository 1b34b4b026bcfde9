//! The binary's behaviour on bad input and missing privileges: a clear message and the right
//! exit code, before anything touches the kernel.

use std::process::{Command, Output};

fn connwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_connwatch")).args(args).output().expect("run connwatch")
}

#[test]
fn unknown_flag_exits_2_naming_the_flag() {
    let out = connwatch(&["trace", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--frobnicate"), "{stderr}");
}

#[test]
fn bad_port_exits_2_naming_the_problem() {
    let out = connwatch(&["trace", "--port", "65536"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("65536") && stderr.contains("--port"), "{stderr}");
}

#[test]
fn missing_subcommand_exits_2() {
    assert_eq!(connwatch(&[]).status.code(), Some(2));
}

#[test]
fn help_exits_0() {
    let out = connwatch(&["trace", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--ring-buffer-size"));
}

/// Run as an unprivileged user (nobody), connwatch says what it needs and exits non-zero.
#[test]
fn without_privileges_it_names_what_is_needed() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let binary = env!("CARGO_BIN_EXE_connwatch");
    let out = if root {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", binary, "trace", "--duration", "1"])
            .output()
            .expect("run setpriv (util-linux)")
    } else {
        connwatch(&["trace", "--duration", "1"])
    };
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs root") && stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: no ready line without hooks");
}
