//! The configurations compared, and the tracer command each runs.

use std::{path::PathBuf, process::Command};

use serde::Serialize;

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
}

impl Config {
    pub const ALL: [Self; 4] =
        [Self::Untraced, Self::Tcpstates, Self::ConnwatchRaw, Self::ConnwatchTracepoint];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Tcpstates => "tcpstates",
            Self::ConnwatchRaw => "connwatch",
            Self::ConnwatchTracepoint => "connwatch --attach tracepoint",
        }
    }

    pub const fn is_connwatch(self) -> bool {
        matches!(self, Self::ConnwatchRaw | Self::ConnwatchTracepoint)
    }

    /// The tracer's argv (program first), or None for the untraced baseline.
    pub fn tracer_argv(self, tools: &Tools) -> Option<Vec<String>> {
        let connwatch =
            || vec![tools.connwatch.display().to_string(), "trace".into(), "--json".into()];
        match self {
            Self::Untraced => None,
            Self::Tcpstates => Some(vec![tools.tcpstates.display().to_string()]),
            Self::ConnwatchRaw => Some(connwatch()),
            Self::ConnwatchTracepoint => {
                Some([connwatch(), vec!["--attach".into(), "tracepoint".into()]].concat())
            }
        }
    }

    pub fn tracer_command(self, tools: &Tools) -> Option<Command> {
        let argv = self.tracer_argv(tools)?;
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        Some(command)
    }
}
