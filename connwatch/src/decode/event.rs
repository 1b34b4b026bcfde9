//! The typed events the rest of connwatch works with.

use std::{fmt, net::SocketAddr};

use connwatch_common::tcp::state_name;

use super::{DecodeError, Errno};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds: when it happened; for an application observation, when
    /// its (first) call began.
    pub ts_ns: u64,
    /// When it was over: the end of the (last) call an observation stands for; `ts_ns` for
    /// kernel events.
    pub until_ns: u64,
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
    pub comm: Comm,
}

/// A process name as the kernel keeps it: at most 15 bytes, stored inline (no allocation per
/// event).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// No name.
    pub const EMPTY: Self = Self { bytes: [0; 16], len: 0 };

    /// From the kernel's NUL-padded `comm`.
    pub fn from_kernel(raw: &[u8; 16]) -> Self {
        let len = raw.iter().take(15).position(|&b| b == 0).unwrap_or(15);
        Self { bytes: *raw, len: len as u8 }
    }

    /// The name (bytes that are not UTF-8 are shown as U+FFFD by `Display`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Self {
        let mut bytes = [0; 16];
        let len = name.len().min(15);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self { bytes, len: len as u8 }
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
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

/// The socket as the application's call found it (carried by every observation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: TcpState,
    /// Pending socket error (`sk_err`), if any.
    pub sk_err: Option<Errno>,
    /// Consecutive retransmission timeouts without an acknowledgement.
    pub rto_retransmits: u8,
    /// Bytes the application wrote that the peer has not acknowledged (sent or queued).
    pub unacked_bytes: u32,
    /// Smoothed round-trip time, microseconds (0: not measured yet).
    pub srtt_us: u32,
}

impl Snapshot {
    /// Whether the peer's FIN (or a reset) had arrived: the states a socket reaches only
    /// then. A recv() of 0 bytes is end-of-file only in these; before the FIN it is a
    /// zero-length read.
    pub fn peer_closed(&self) -> bool {
        matches!(self.state.name(), "CLOSE_WAIT" | "LAST_ACK" | "CLOSING" | "TIME_WAIT" | "CLOSE")
    }
}

/// How readiness was learnt; decides how its mask is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Epoll,
    Poll,
    Select,
}

impl Via {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::Poll => "poll",
            Self::Select => "select",
        }
    }
}

/// What one recv or send record stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    /// The last call's result: bytes (0 = EOF for recv) or the error.
    pub last: Result<u32, Errno>,
    /// Bytes moved by all `calls` calls.
    pub bytes: u64,
    /// Calls this record stands for (more than 1 when summarised).
    pub calls: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    State {
        old: TcpState,
        new: TcpState,
    },
    Reset {
        direction: Direction,
        state: TcpState,
    },
    Retransmit {
        state: TcpState,
    },
    Error {
        errno: Errno,
        state: TcpState,
    },
    /// getsockopt(SO_ERROR) returned `value` (None = 0) to the application.
    SoError {
        fd: i32,
        value: Option<Errno>,
        snapshot: Snapshot,
    },
    /// epoll/poll/select told the application the socket was ready.
    Readiness {
        fd: i32,
        via: Via,
        mask: u32,
        calls: u32,
        snapshot: Snapshot,
    },
    Recv {
        io: Io,
        snapshot: Snapshot,
    },
    Send {
        io: Io,
        snapshot: Snapshot,
    },
    /// connect() returned: Ok(()) connected, Err(EINPROGRESS) under way, Err(other) failed.
    Connect {
        fd: i32,
        result: Result<(), Errno>,
        snapshot: Snapshot,
    },
    Accept {
        fd: i32,
        snapshot: Snapshot,
    },
    /// The kernel destroyed the socket and no close() by its last holder was seen: the process
    /// exited (or was killed) and the kernel let go for it.
    Destroy {
        state: TcpState,
    },
    /// Not from the ring buffer: the inventory (netlink sock_diag) found the socket in `state`,
    /// at the agent's start (`at_start`) or on a later look. A socket that has gone shows as
    /// CLOSE.
    Seen {
        state: TcpState,
        at_start: bool,
    },
    /// close(fd). `others`: references to the open file that remain (a forked child, a dup,
    /// a passed descriptor); 0 when this close lets go of the connection.
    Close {
        fd: i32,
        others: u32,
        snapshot: Snapshot,
    },
}

impl Detail {
    /// The event's `type` in JSON output.
    pub const fn type_name(&self) -> &'static str {
        Self::TYPE_NAMES[self.type_index()]
    }

    /// Every event type's name, at its [`Self::type_index`].
    pub const TYPE_NAMES: [&'static str; 13] = [
        "state",
        "reset",
        "retransmit",
        "error",
        "so_error",
        "readiness",
        "recv",
        "send",
        "connect",
        "accept",
        "close",
        "seen",
        "destroy",
    ];

    /// The event's type as a small number, for counting without a lookup.
    pub const fn type_index(&self) -> usize {
        match self {
            Self::State { .. } => 0,
            Self::Reset { .. } => 1,
            Self::Retransmit { .. } => 2,
            Self::Error { .. } => 3,
            Self::SoError { .. } => 4,
            Self::Readiness { .. } => 5,
            Self::Recv { .. } => 6,
            Self::Send { .. } => 7,
            Self::Connect { .. } => 8,
            Self::Accept { .. } => 9,
            Self::Close { .. } => 10,
            Self::Seen { .. } => 11,
            Self::Destroy { .. } => 12,
        }
    }

    /// The socket snapshot of an application observation; `None` for kernel events.
    pub const fn snapshot(&self) -> Option<&Snapshot> {
        match self {
            Self::SoError { snapshot, .. }
            | Self::Readiness { snapshot, .. }
            | Self::Recv { snapshot, .. }
            | Self::Send { snapshot, .. }
            | Self::Connect { snapshot, .. }
            | Self::Accept { snapshot, .. }
            | Self::Close { snapshot, .. } => Some(snapshot),
            _ => None,
        }
    }

    /// The application's fd, where the observation names one.
    pub const fn fd(&self) -> Option<i32> {
        match self {
            Self::SoError { fd, .. }
            | Self::Readiness { fd, .. }
            | Self::Connect { fd, .. }
            | Self::Accept { fd, .. }
            | Self::Close { fd, .. } => Some(*fd),
            _ => None,
        }
    }
}

/// Names of the bits set in a readiness mask (`EPOLLIN`, `POLLHUP`, `READ`, ...).
pub fn readiness_names(via: Via, mask: u32) -> Vec<String> {
    const POLL_BITS: &[(u32, &str)] = &[
        (0x001, "IN"),
        (0x002, "PRI"),
        (0x004, "OUT"),
        (0x008, "ERR"),
        (0x010, "HUP"),
        (0x020, "NVAL"),
        (0x040, "RDNORM"),
        (0x080, "RDBAND"),
        (0x100, "WRNORM"),
        (0x200, "WRBAND"),
        (0x400, "MSG"),
        (0x2000, "RDHUP"),
    ];
    const SELECT_BITS: &[(u32, &str)] = &[(1, "READ"), (2, "WRITE"), (4, "EXCEPT")];
    let (prefix, bits) = match via {
        Via::Epoll => ("EPOLL", POLL_BITS),
        Via::Poll => ("POLL", POLL_BITS),
        Via::Select => ("", SELECT_BITS),
    };
    let mut names: Vec<String> = bits
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, n)| format!("{prefix}{n}"))
        .collect();
    let known: u32 = bits.iter().map(|(bit, _)| bit).sum();
    if mask & !known != 0 {
        names.push(format!("{:#x}", mask & !known));
    }
    names
}

fn fd_note(f: &mut fmt::Formatter<'_>, fd: i32, snapshot: &Snapshot) -> fmt::Result {
    write!(f, " (fd {fd}) [{}", snapshot.state)?;
    if let Some(err) = snapshot.sk_err {
        write!(f, ", pending {err}")?;
    }
    f.write_str("]")
}

fn io_note(f: &mut fmt::Formatter<'_>, verb: &str, io: &Io, snapshot: &Snapshot) -> fmt::Result {
    match (io.calls, io.last) {
        (1, Ok(0)) if verb == "recv" && snapshot.peer_closed() => write!(f, "recv 0 (EOF)")?,
        (1, Ok(n)) => write!(f, "{verb} {n} bytes")?,
        (1, Err(e)) => write!(f, "{verb} {e}")?,
        (calls, last) => {
            write!(f, "{verb} {calls} calls, {} bytes", io.bytes)?;
            if let Err(e) = last {
                write!(f, ", last {e}")?;
            }
        }
    }
    write!(f, " [{}", snapshot.state)?;
    if snapshot.rto_retransmits > 0 {
        write!(
            f,
            ", {} timeouts, {} bytes unacked",
            snapshot.rto_retransmits, snapshot.unacked_bytes
        )?;
    }
    f.write_str("]")
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::State { old, new } => write!(f, "{old} -> {new}"),
            Self::Reset { direction, state } => write!(f, "RST {} ({state})", direction.name()),
            Self::Retransmit { state } => write!(f, "retransmit ({state})"),
            Self::Error { errno, state } => write!(f, "{errno} ({state})"),
            Self::SoError { fd, value, snapshot } => {
                match value {
                    Some(e) => write!(f, "SO_ERROR {e}")?,
                    None => f.write_str("SO_ERROR 0")?,
                }
                fd_note(f, *fd, snapshot)
            }
            Self::Readiness { fd, via, mask, calls, snapshot } => {
                write!(f, "{} {}", via.name(), readiness_names(*via, *mask).join("|"))?;
                if *calls > 1 {
                    write!(f, " x{calls}")?;
                }
                fd_note(f, *fd, snapshot)
            }
            Self::Recv { io, snapshot } => io_note(f, "recv", io, snapshot),
            Self::Send { io, snapshot } => io_note(f, "send", io, snapshot),
            Self::Connect { fd, result, snapshot } => {
                match result {
                    Ok(()) => f.write_str("connect 0")?,
                    Err(e) => write!(f, "connect {e}")?,
                }
                fd_note(f, *fd, snapshot)
            }
            Self::Accept { fd, snapshot } => {
                f.write_str("accept")?;
                fd_note(f, *fd, snapshot)
            }
            Self::Destroy { state } => {
                write!(f, "destroyed in {state}: its holders let go without close() (exit)")
            }
            Self::Seen { state, at_start: true } => {
                write!(f, "seen in {state} when connwatch started (it predates connwatch)")
            }
            Self::Seen { state, at_start: false } => write!(f, "seen in {state} (inventory)"),
            Self::Close { fd, others, snapshot } => {
                f.write_str("close")?;
                fd_note(f, *fd, snapshot)?;
                match others {
                    0 => Ok(()),
                    n => write!(f, ", {n} other holder(s) keep it open"),
                }
            }
        }
    }
}
