//! connwatch: an eBPF TCP connection observer.
//!
//! The data flow is the folder layout: `probes` (load and attach kernel programs) ->
//! `ingest` (ring buffer, loss counters) -> `decode` (bytes to typed events) -> `correlate`
//! (per-socket state, detectors) -> `sinks` (human, JSON Lines). [`tracer::Tracer`] assembles the first three; the binary and the
//! integration tests drive exactly that.

pub mod agent;
pub mod cli;
pub mod correlate;
pub mod decode;
pub mod demo;
pub mod ingest;
pub mod inventory;
pub mod pipeline;
pub mod probes;
pub mod sinks;
pub mod trace;
pub mod tracer;
pub mod watch;

pub use tracer::Tracer;

/// Runs a parsed command line.
pub async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let command = cli.into_command();
    // Before any thread starts: every thread inherits it.
    if let Some(nice) = command.nice() {
        ingest::priority::raise_readers(nice);
    }
    match command {
        cli::Command::Watch(args) => watch::run(&args).await,
        cli::Command::Agent(args) => agent::run(&args).await,
        cli::Command::Trace(args) => trace::run(&args).await,
        cli::Command::Demo(args) => demo::run(&args).await,
        cli::Command::DemoProgram { name, server_netns, server, port } => {
            demo::program_main(&name, &server_netns, server, port)
        }
    }
}
