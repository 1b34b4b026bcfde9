//! The configurations compared, and the tracer command each runs.

use std::{path::PathBuf, process::Command};

use serde::Serialize;

use super::rounds::RoundResult;

pub struct Tools {
    pub connwatch: PathBuf,
    pub tcpstates: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    Untraced,
    Tcpstates,
    /// `connwatch trace --json`: the default attach mode, raw tracepoints where they exist.
    ConnwatchRaw,
    /// `connwatch trace --json --attach tracepoint`: classic tracepoints where they exist.
    ConnwatchTracepoint,
    /// `connwatch watch --json`: the same programs, events correlated into findings.
    ConnwatchWatch,
    /// `connwatch agent --json`: watch plus metrics, inventory and attribution.
    ConnwatchAgent,
    /// `connwatch watch --json --args-at-entry`: watch as on kernels before 5.15, whose
    /// readiness programs keep the calls' arguments at entry (one more hit per call).
    ConnwatchWatchArgsAtEntry,
    /// `connwatch watch --json` with the kernel's BPF statistics on for its run alone: where
    /// the others' throughput is measured without them, the run that reports program time.
    ConnwatchWatchCosted,
    /// `connwatch watch --json --hooks-only`: watch's hooks, each with a program that returns
    /// at once: what reaching them costs, the floor under any work the programs do.
    ConnwatchWatchHooksOnly,
}

impl Config {
    pub const ALL: [Self; 6] = [
        Self::Untraced,
        Self::Tcpstates,
        Self::ConnwatchRaw,
        Self::ConnwatchTracepoint,
        Self::ConnwatchWatch,
        Self::ConnwatchWatchHooksOnly,
    ];

    /// The configurations some round measured, in the order of ALL.
    pub fn measured<T>(rounds: &[RoundResult<T>]) -> impl Iterator<Item = Self> {
        Self::ALL.into_iter().filter(|&c| rounds.iter().any(|r| r.config == c))
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Tcpstates => "tcpstates",
            Self::ConnwatchRaw => "connwatch trace",
            Self::ConnwatchTracepoint => "connwatch trace --attach tracepoint",
            Self::ConnwatchWatch => "connwatch watch",
            Self::ConnwatchAgent => "connwatch agent",
            Self::ConnwatchWatchArgsAtEntry => "connwatch watch, readiness arguments kept at entry",
            Self::ConnwatchWatchCosted => "connwatch watch, BPF statistics on",
            Self::ConnwatchWatchHooksOnly => "connwatch watch --hooks-only (the floor)",
        }
    }

    /// Whether the tracer prints its first line only once it has traced something (tcpstates
    /// buffers its output), so that the bench must make connections while waiting for it.
    pub const fn needs_pokes(self) -> bool {
        matches!(self, Self::Tcpstates)
    }

    pub const fn is_connwatch(self) -> bool {
        matches!(
            self,
            Self::ConnwatchRaw
                | Self::ConnwatchTracepoint
                | Self::ConnwatchWatch
                | Self::ConnwatchAgent
                | Self::ConnwatchWatchArgsAtEntry
                | Self::ConnwatchWatchCosted
                | Self::ConnwatchWatchHooksOnly
        )
    }

    /// Whether its programs only reach the hooks (`--hooks-only`): no targets apply, and its
    /// one program per type serves every hook, so its time cannot be told apart by hook.
    pub const fn reaches_only(self) -> bool {
        matches!(self, Self::ConnwatchWatchHooksOnly)
    }

    /// Whether its run turns the kernel's BPF statistics on itself: they cost two clock reads
    /// per program run, which a user's host does not pay.
    pub const fn counts_bpf_time(self) -> bool {
        matches!(self, Self::ConnwatchWatchCosted)
    }

    /// The tracer's argv (program first), or None for the untraced baseline.
    pub fn tracer_argv(self, tools: &Tools) -> Option<Vec<String>> {
        let connwatch = |args: &[&str]| {
            let program = tools.connwatch.display().to_string();
            Some([program].into_iter().chain(args.iter().map(|&a| a.to_owned())).collect())
        };
        match self {
            Self::Untraced => None,
            Self::Tcpstates => Some(vec![tools.tcpstates.display().to_string()]),
            Self::ConnwatchRaw => connwatch(&["trace", "--json"]),
            Self::ConnwatchTracepoint => connwatch(&["trace", "--json", "--attach", "tracepoint"]),
            Self::ConnwatchWatch | Self::ConnwatchWatchCosted => connwatch(&["watch", "--json"]),
            Self::ConnwatchAgent => connwatch(&["agent", "--json", "--listen", "127.0.0.1:25743"]),
            Self::ConnwatchWatchArgsAtEntry => connwatch(&["watch", "--json", "--args-at-entry"]),
            Self::ConnwatchWatchHooksOnly => connwatch(&["watch", "--json", "--hooks-only"]),
        }
    }

    pub fn tracer_command(self, tools: &Tools) -> Option<Command> {
        let argv = self.tracer_argv(tools)?;
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        Some(command)
    }
}
