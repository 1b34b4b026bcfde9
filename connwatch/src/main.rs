use std::process::ExitCode;

use clap::Parser as _;
use connwatch::cli::Cli;

/// How far glibc grows the main heap (the draining thread's) beyond a request: 8 MiB instead of
/// 128 KiB, so it changes the process's memory map in a few large steps. Each change takes
/// the map's lock, and a thread kept waiting inside one held up the drain for hundreds of
/// milliseconds. (Other threads' arenas grow only by what they need, whatever this says.)
/// Pages grown into but not touched take no memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_GROWTH_BYTES: libc::c_int = 8 << 20;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, HEAP_GROWTH_BYTES);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // 0 for --help/--version, 2 for usage errors.
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("connwatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(connwatch::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
