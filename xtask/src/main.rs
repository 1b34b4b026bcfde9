//! `cargo xtask`: the project's entry points. Each command installs what a fresh machine lacks
//! (saying what it does) before it builds.

mod bench;
mod prereqs;
mod run;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark connwatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building connwatch needs: nightly rust-src and a bpf-linker on nightly's LLVM.
    Prereqs,
    /// Build connwatch (release) with its embedded eBPF programs.
    Build,
    /// Build, then run connwatch with the given arguments (`cargo xtask run -- trace --json`);
    /// with none, `connwatch demo`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install prerequisites and test packages, then run every test (integration tests need root).
    Test {
        /// Skip the smoke run in Debian's 6.1 kernel under QEMU (`cargo xtask vm-test`) that
        /// follows the host's tests.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the integration tests inside Debian's 6.1 kernel under QEMU, once per attach mode.
    VmTest(vm::VmArgs),
    /// Measure connwatch against no tracer and libbpf-tools' tcpstates (not run in CI).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Prereqs => prereqs::ensure_build(),
        Command::Build => run::build_release().map(drop),
        Command::Run { args } => run::run(&args),
        Command::Test { no_vm, args } => run::test(&args).and_then(|()| match no_vm {
            true => Ok(()),
            false => vm::run(&vm::VmArgs::smoke()),
        }),
        Command::Bench(args) => bench::run(&args),
        Command::VmTest(args) => vm::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
