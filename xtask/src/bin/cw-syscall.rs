//! `cw-syscall`: times `--calls` calls of `getppid`, a syscall connwatch never hooks, and prints
//! the nanoseconds per call. With any `syscalls:*` tracepoint attached, every syscall takes the
//! kernel's traced entry and exit path; `cargo xtask bench --only mechanisms` runs it in the
//! guest untraced and under each attach mode to see what that costs, and what is left of it
//! where the syscall hooks sit on the syscalls' own functions instead.

use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Nanoseconds per getppid call")]
struct Args {
    /// Calls to time.
    #[arg(long, default_value_t = 2_000_000)]
    calls: u64,
}

fn main() {
    let args = Args::parse();
    let start = Instant::now();
    for _ in 0..args.calls {
        // SAFETY: getppid takes no arguments and changes nothing.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let ns = start.elapsed().as_nanos() as f64 / args.calls.max(1) as f64;
    println!("{ns:.1}");
}
