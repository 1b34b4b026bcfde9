//! Command-line interface. Usage errors exit with code 2 (clap's), before anything is loaded.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    correlate::{DEFAULT_MAX_SOCKETS, Shards, Thresholds, shards::MOST_SHARDS},
    ingest::priority::DEFAULT_NICE,
    probes::{
        AttachMode, Filters, LoadOptions, default_ring_bytes,
        hooks::{HOOKS, Mechanism, Role},
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "connwatch",
    version,
    about = "Watch the kernel's truth about every TCP connection, and where applications misjudge it",
    long_about = "Watch the kernel's truth about every TCP connection, and where applications \
                  misjudge it.\n\nWithout a subcommand, connwatch runs `watch` (with the flags \
                  given).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

impl Cli {
    /// The command to run: `watch` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Watch(self.watch))
    }
}

impl Command {
    /// The `--nice` of a command that reads the ring buffers (`watch`, `agent`, `trace`).
    pub fn nice(&self) -> Option<i32> {
        match self {
            Command::Watch(args) => Some(args.common.nice),
            Command::Agent(args) => Some(args.watch.common.nice),
            Command::Trace(args) => Some(args.common.nice),
            Command::Demo(_) | Command::DemoProgram { .. } => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report misjudged liveness as it happens: where an application believed a connection
    /// alive or healthy while the kernel knew otherwise (the default).
    Watch(WatchArgs),
    /// Stream the kernel's TCP events and what applications observed, one line each.
    Trace(TraceArgs),
    /// The node agent: `watch` always on, with Prometheus metrics on /metrics, findings
    /// attributed to cgroups and containers, and the sockets that predate it inventoried.
    Agent(AgentArgs),
    /// A first run: small built-in programs fall into each trap (and one does everything
    /// right) in a private network namespace, while connwatch watches.
    Demo(DemoArgs),
    /// One of the demo's programs (run by `demo` itself).
    #[command(hide = true)]
    DemoProgram { name: String, server_netns: String, server: std::net::Ipv4Addr, port: u16 },
}

/// Flags every tracing command takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// JSON Lines on stdout (documented in docs/json.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only sockets owned by this process (repeatable). Filtered in the kernel.
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Only sockets owned by processes with this name (as in /proc/PID/comm, at most 15 bytes).
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Only sockets with this local or remote port (repeatable). Filtered in the kernel.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Stop after this many seconds (fractions allowed); otherwise run until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Kernel ring buffer size: a power of two of at least 4K (suffixes K and M). With several
    /// correlator threads, their ring buffers share it equally. [default: 8M, or 1M per
    /// correlator thread where that is more]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_buffer_size: Option<u32>,
    /// How to attach to the kernel: auto picks, per hook, the cheapest mechanism this kernel
    /// offers; any other value is required of every hook that has a variant of it.
    #[arg(long, value_enum, default_value_t = AttachChoice::Auto)]
    pub attach: AttachChoice,
    /// Optional hooks not to attach, as if this kernel lacked them (`category:name`, as the
    /// ready line names them; comma-separated or repeated): `ready` lists them as degraded.
    #[arg(long, value_name = "HOOK", value_delimiter = ',', value_parser = parse_optional_hook)]
    pub leave_out: Vec<String>,
    /// Nice value of connwatch's threads, which must drain the kernel's ring buffers before
    /// they fill: on a host whose CPUs a workload keeps busy, at the default priority they got
    /// only their fair share and events were lost. -20 (highest) to 19; 0 leaves it alone.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NICE, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
    /// Keep the syscalls' arguments at their entry even where their exit can read them (as on
    /// kernels before 5.15, and without trampolines on the syscalls' functions): for comparing
    /// the two in `cargo xtask bench`.
    #[arg(long, hide = true)]
    pub args_at_entry: bool,
    /// Attach every hook as usual, each with a program that returns at once, and report
    /// nothing: what merely reaching the hooks costs this kernel, the floor under connwatch's
    /// own work (`cargo xtask bench`). Not with --attach fentry (see docs/benchmarks.md).
    #[arg(long, hide = true)]
    pub hooks_only: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Report every recv, send and readiness call. By default a busy socket's routine calls are
    /// summarised in the kernel (EOF, errors and unusual states are always reported one by one).
    #[arg(long)]
    pub all_io: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Threads that join the kernel's events to what applications saw, each owning a share of
    /// the connections and reading its own ring buffer (`auto`: one per CPU, at most 16; one
    /// below 4 CPUs).
    /// More keep up with more connections a second.
    #[arg(long, value_name = "N|auto", default_value = "auto", value_parser = parse_correlator_threads)]
    pub correlator_threads: CorrelatorThreads,
}

/// `--correlator-threads`: a number, or `None` for `auto` ([`Shards::auto_count`]).
#[derive(Clone, Copy, Debug)]
pub struct CorrelatorThreads(pub Option<usize>);

impl WatchArgs {
    pub fn correlator_count(&self) -> usize {
        self.correlator_threads.0.unwrap_or_else(Shards::auto_count)
    }

    /// One ring buffer per correlator thread, each reading its own, where the kernel allows
    /// ([`crate::probes::ring_count`]).
    pub fn load_options(&self) -> LoadOptions {
        self.common.load_options_for(crate::probes::ring_count(self.correlator_count()))
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Where to serve /metrics. Another address than loopback is an explicit choice.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9742")]
    pub listen: std::net::SocketAddr,
    /// Distinct values each of the comm and cgroup labels may take; later ones become `other`.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = parse_label_values)]
    pub max_label_values: usize,
    /// Seconds between looks at the host's sockets (connwatch_sockets{state}). Each look dumps
    /// every TCP socket in every namespace: about 0.1 s of CPU per 65,536 sockets.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "15")]
    pub inventory_interval: Duration,
}

#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// Seconds a socket may stay in CLOSE_WAIT (peer closed) before its owner is flagged.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "10")]
    pub close_wait_grace: Duration,
    /// Seconds an application may take to notice a reset before it is flagged.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "10")]
    pub reset_grace: Duration,
    /// Retransmission timeouts without an acknowledgement after which a successful write is
    /// "into the void" (half-open-write).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=30))]
    pub retrans_threshold: u8,
    /// Seconds an established connection may carry nothing before the liveness audit asks
    /// whether anything (keepalive, TCP_USER_TIMEOUT) would notice its peer vanish.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "300")]
    pub idle_grace: Duration,
    /// Sockets tracked at once; beyond it the least recently active are evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS, value_parser = parse_max_sockets)]
    pub max_sockets: usize,
}

impl ThresholdArgs {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            close_wait_grace_ns: self.close_wait_grace.as_nanos() as u64,
            reset_grace_ns: self.reset_grace.as_nanos() as u64,
            retransmits: self.retrans_threshold,
            idle_grace_ns: self.idle_grace.as_nanos() as u64,
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// JSON Lines instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttachChoice {
    /// The cheapest mechanism that works, per hook.
    Auto,
    /// Raw tracepoints where offered.
    RawTracepoint,
    /// Classic tracepoints (record layouts from tracefs) where offered.
    Tracepoint,
    /// kprobes on the kernel functions behind the kernel's own events (CONFIG_KPROBES).
    Kprobe,
    /// fentry programs on those functions (BPF trampolines, Linux 5.5+ with BTF).
    Fentry,
}

impl CommonArgs {
    /// With one ring buffer (`trace`).
    pub fn load_options(&self) -> LoadOptions {
        self.load_options_for(1)
    }

    /// With `rings` ring buffers, sized together as `--ring-buffer-size` says or by default.
    pub fn load_options_for(&self, rings: usize) -> LoadOptions {
        LoadOptions {
            attach: match self.attach {
                AttachChoice::Auto => AttachMode::Auto,
                AttachChoice::RawTracepoint => AttachMode::Prefer(Mechanism::RawTracepoint),
                AttachChoice::Tracepoint => AttachMode::Prefer(Mechanism::Tracepoint),
                AttachChoice::Kprobe => AttachMode::Prefer(Mechanism::Kprobe),
                AttachChoice::Fentry => AttachMode::Prefer(Mechanism::Fentry),
            },
            ring_buffer_bytes: self.ring_buffer_size.unwrap_or_else(|| default_ring_bytes(rings)),
            rings,
            filters: Filters {
                pids: self.pids.clone(),
                ports: self.ports.clone(),
                comm: self.comm.clone(),
            },
            all_io: false,
            // watch and agent: findings only (trace overrides both).
            healthy_readiness: false,
            closing_together: true,
            opening_in_birth: true,
            established_carried: true,
            left_out: self.leave_out.clone(),
            args_at_entry: self.args_at_entry,
            hooks_only: self.hooks_only,
        }
    }
}

impl TraceArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            all_io: self.all_io,
            healthy_readiness: true,
            closing_together: false,
            opening_in_birth: false,
            established_carried: false,
            ..self.common.load_options()
        }
    }
}

fn parse_label_values(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: the label value limit must be a number from 1 to 100000")),
    }
}

fn parse_correlator_threads(s: &str) -> Result<CorrelatorThreads, String> {
    if s == "auto" {
        return Ok(CorrelatorThreads(None));
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=MOST_SHARDS).contains(&n) => Ok(CorrelatorThreads(Some(n))),
        _ => Err(format!(
            "{s:?}: correlator threads must be `auto` or a number from 1 to {MOST_SHARDS}"
        )),
    }
}

fn parse_max_sockets(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=16_777_216).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: the socket limit must be a number from 1 to 16777216")),
    }
}

fn parse_optional_hook(s: &str) -> Result<String, String> {
    match HOOKS.iter().find(|h| h.id() == s) {
        Some(hook) if hook.role == Role::Events => {
            Err(format!("{s} carries the kernel's own events: connwatch cannot run without it"))
        }
        Some(_) => Ok(s.to_string()),
        None => Err(format!(
            "{s:?} is not one of connwatch's hooks (`category:name`, as the ready line lists them)"
        )),
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    match s.len() {
        1..=15 => Ok(s.to_string()),
        _ => {
            Err(format!("the kernel keeps 1 to 15 bytes of a process name; {s:?} has {}", s.len()))
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?}: the duration must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let (digits, unit) = match s.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1 << 10),
        None => match s.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (s, 1),
        },
    };
    let bytes = digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?} is not a size (examples: 4096, 64K, 8M)"))?;
    if !bytes.is_power_of_two() || bytes < 4096 {
        return Err(format!("{s:?}: the ring buffer size must be a power of two of at least 4K"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;
    use crate::probes::DEFAULT_RING_BUFFER_BYTES;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("connwatch").chain(args.iter().copied()))
    }

    fn trace(args: &[&str]) -> TraceArgs {
        match parse(args).expect("valid arguments").into_command() {
            Command::Trace(t) => t,
            other => panic!("expected trace, got {other:?}"),
        }
    }

    fn watch(args: &[&str]) -> WatchArgs {
        match parse(args).expect("valid arguments").into_command() {
            Command::Watch(w) => w,
            other => panic!("expected watch, got {other:?}"),
        }
    }

    #[test]
    fn watch_is_the_default_and_takes_thresholds() {
        let w = watch(&[
            "--json",
            "--port",
            "80",
            "--close-wait-grace",
            "2.5",
            "--retrans-threshold",
            "5",
            "--max-sockets",
            "1000",
        ]);
        assert!(w.common.json);
        assert_eq!(w.common.ports, [80]);
        let t = w.thresholds.thresholds();
        assert_eq!(
            (t.close_wait_grace_ns, t.reset_grace_ns, t.retransmits),
            (2_500_000_000, 10_000_000_000, 5)
        );
        assert_eq!(w.thresholds.max_sockets, 1000);
        let defaults = watch(&[]).thresholds.thresholds();
        assert_eq!(defaults, Thresholds::default());
        assert_eq!(
            watch(&["watch", "--reset-grace", "1"]).thresholds.reset_grace,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn trace_flags_become_load_options() {
        let t = trace(&[
            "trace",
            "--json",
            "--pid",
            "7",
            "--pid",
            "9",
            "--port",
            "443",
            "--comm",
            "nginx",
            "--duration",
            "1.5",
            "--ring-buffer-size",
            "64K",
            "--attach",
            "tracepoint",
            "--leave-out",
            "syscalls:sys_exit_select,syscalls:sys_exit_pselect6",
        ]);
        assert!(t.common.json);
        assert_eq!(t.common.duration, Some(Duration::from_millis(1500)));
        let o = t.load_options();
        assert_eq!(o.filters.pids, [7, 9]);
        assert_eq!(o.filters.ports, [443]);
        assert_eq!(o.filters.comm.as_deref(), Some("nginx"));
        assert_eq!(o.ring_buffer_bytes, 65536);
        assert_eq!(o.attach, AttachMode::Prefer(Mechanism::Tracepoint));
        assert_eq!(o.left_out, ["syscalls:sys_exit_select", "syscalls:sys_exit_pselect6"]);
        assert!(o.healthy_readiness, "trace reports every readiness");
        assert!(!watch(&["watch"]).common.load_options().healthy_readiness);
        assert!(!o.closing_together, "trace reports every state change as it happens");
        assert!(watch(&["watch"]).common.load_options().closing_together);
        assert!(!o.opening_in_birth, "trace reports the change that begins a life");
        assert!(watch(&["watch"]).common.load_options().opening_in_birth);
        assert!(!o.established_carried, "trace reports the change to ESTABLISHED");
        assert!(watch(&["watch"]).common.load_options().established_carried);
    }

    #[test]
    fn the_default_ring_size_gives_each_of_many_rings_a_mebibyte() {
        assert_eq!(default_ring_bytes(1), DEFAULT_RING_BUFFER_BYTES);
        assert_eq!(default_ring_bytes(8), DEFAULT_RING_BUFFER_BYTES);
        assert_eq!(default_ring_bytes(12), 16 << 20);
        assert_eq!(default_ring_bytes(16), 16 << 20);
        let sixteen = LoadOptions {
            rings: 16,
            ring_buffer_bytes: default_ring_bytes(16),
            ..LoadOptions::default()
        };
        assert_eq!(sixteen.each_ring_bytes(), 1 << 20);
        let asked = watch(&["watch", "--correlator-threads", "16", "--ring-buffer-size", "4M"]);
        assert_eq!(asked.load_options().ring_buffer_bytes, 4 << 20, "a size asked for is kept");
    }

    #[test]
    fn the_readers_run_at_nice_minus_ten_unless_told_otherwise() {
        assert_eq!(watch(&["watch"]).common.nice, -10);
        assert_eq!(trace(&["trace"]).common.nice, -10);
        assert_eq!(watch(&["watch", "--nice", "-5"]).common.nice, -5);
        assert_eq!(watch(&["watch", "--nice", "0"]).common.nice, 0);
    }

    #[test]
    fn defaults_are_auto_attach_and_default_ring() {
        let o = trace(&["trace"]).load_options();
        assert_eq!(o.attach, AttachMode::Auto);
        assert_eq!(o.ring_buffer_bytes, DEFAULT_RING_BUFFER_BYTES);
        assert!(
            o.filters.pids.is_empty() && o.filters.ports.is_empty() && o.filters.comm.is_none()
        );
    }

    #[test]
    fn bad_input_is_a_usage_error_with_exit_code_2() {
        let cases: &[(&[&str], ErrorKind)] = &[
            (&["trace", "--frobnicate"], ErrorKind::UnknownArgument),
            (&["trace", "--port", "70000"], ErrorKind::ValueValidation),
            (&["trace", "--port", "0"], ErrorKind::ValueValidation),
            (&["trace", "--port", "http"], ErrorKind::ValueValidation),
            (&["trace", "--pid", "-3"], ErrorKind::UnknownArgument),
            (&["trace", "--pid", "0"], ErrorKind::ValueValidation),
            (&["trace", "--duration", "0"], ErrorKind::ValueValidation),
            (&["trace", "--duration", "soon"], ErrorKind::ValueValidation),
            (&["trace", "--ring-buffer-size", "1000"], ErrorKind::ValueValidation),
            (&["trace", "--ring-buffer-size", "2K"], ErrorKind::ValueValidation),
            (&["trace", "--comm", "a-name-longer-than-15"], ErrorKind::ValueValidation),
            (&["watch", "--nice", "-21"], ErrorKind::ValueValidation),
            (&["watch", "--nice", "20"], ErrorKind::ValueValidation),
            (&["trace", "--attach", "uprobe"], ErrorKind::InvalidValue),
            (&["trace", "--leave-out", "syscalls:sys_exit_nothing"], ErrorKind::ValueValidation),
            (&["trace", "--leave-out", "tcp:tcp_receive_reset"], ErrorKind::ValueValidation),
            (&["bogus"], ErrorKind::InvalidSubcommand),
            (&["watch", "--retrans-threshold", "0"], ErrorKind::ValueValidation),
            (&["watch", "--max-sockets", "0"], ErrorKind::ValueValidation),
            (&["watch", "--correlator-threads", "0"], ErrorKind::ValueValidation),
            (&["watch", "--correlator-threads", "17"], ErrorKind::ValueValidation),
            (&["watch", "--close-wait-grace", "-1"], ErrorKind::UnknownArgument),
            (&["--json", "trace"], ErrorKind::ArgumentConflict),
        ];
        for (args, kind) in cases {
            let err = parse(args).expect_err(&format!("{args:?} must be rejected"));
            assert_eq!(err.kind(), *kind, "{args:?}: {err}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
