//! The typed events the rest of connwatch works with.

use std::{fmt, net::SocketAddr};

use connwatch_common::tcp::state_name;

use super::{DecodeError, Errno};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// `None` while no process has touched the socket in process context.
    pub owner: Option<Owner>,
    pub sock: SockId,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub detail: Detail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// A socket's identity: its kernel address plus the start of this life at that address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId {
    pub addr: u64,
    pub birth_ns: u64,
}

impl fmt::Display for SockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x}", self.addr, self.birth_ns)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Inet6 => "inet6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Rx,
    Tx,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rx => "rx",
            Self::Tx => "tx",
        }
    }
}

/// A kernel TCP state, valid by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(u8);

impl TcpState {
    pub fn new(state: u8) -> Result<Self, DecodeError> {
        match state_name(state) {
            Some(_) => Ok(Self(state)),
            None => Err(DecodeError::InvalidState(state)),
        }
    }

    pub const fn value(self) -> u8 {
        self.0
    }

    pub fn name(self) -> &'static str {
        state_name(self.0).unwrap_or("UNKNOWN")
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    State { old: TcpState, new: TcpState },
    Reset { direction: Direction, state: TcpState },
    Retransmit { state: TcpState },
    Error { errno: Errno, state: TcpState },
}

impl Detail {
    /// The event's `type` in JSON output.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::State { .. } => "state",
            Self::Reset { .. } => "reset",
            Self::Retransmit { .. } => "retransmit",
            Self::Error { .. } => "error",
        }
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::State { old, new } => write!(f, "{old} -> {new}"),
            Self::Reset { direction, state } => write!(f, "RST {} ({state})", direction.name()),
            Self::Retransmit { state } => write!(f, "retransmit ({state})"),
            Self::Error { errno, state } => write!(f, "{errno} ({state})"),
        }
    }
}
