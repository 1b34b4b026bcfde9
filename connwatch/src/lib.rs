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
    match cli.into_command() {
        cli::Command::Watch(args) => {
            ingest::priority::raise_readers(args.common.nice);
            watch::run(&args).await
        }
        cli::Command::Agent(args) => {
            ingest::priority::raise_readers(args.watch.common.nice);
            agent::run(&args).await
        }
        cli::Command::Trace(args) => {
            ingest::priority::raise_readers(args.common.nice);
            trace::run(&args).await
        }
        cli::Command::Demo(args) => demo::run(&args).await,
        cli::Command::DemoProgram { name, server_netns, server, port } => {
            demo::program_main(&name, &server_netns, server, port)
        }
    }
}
