//! Records the eBPF programs write into the ring buffer.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which body follows. Userspace checks
//! the kind and the length before it reads a body.

use crate::assert_size;

pub const KIND_STATE: u8 = 1;
pub const KIND_RESET: u8 = 2;
pub const KIND_RETRANSMIT: u8 = 3;
pub const KIND_ERROR: u8 = 4;
// What the application itself observed (syscalls and socket-layer calls), as [`AppEvent`]s.
pub const KIND_SO_ERROR: u8 = 5;
pub const KIND_READINESS: u8 = 6;
pub const KIND_RECV: u8 = 7;
pub const KIND_SEND: u8 = 8;
pub const KIND_CONNECT: u8 = 9;
pub const KIND_CLOSE: u8 = 10;
pub const KIND_ACCEPT: u8 = 11;
/// `tcp:tcp_destroy_sock` on a socket whose last holder never called close() on it (the process
/// exited, or was killed): every holder has let go.
pub const KIND_DESTROY: u8 = 12;
/// A socket's state changes since its application closed it, reported together when it
/// reaches CLOSE ([`crate::config::FLAG_CLOSING_TOGETHER`]); a lost one counts as that many
/// `KIND_STATE` events.
pub const KIND_STATES: u8 = 13;
/// Slots of the per-CPU loss counter; every kind's value is below it.
pub const KIND_SLOTS: u32 = 16;

pub const RESET_RX: u8 = 1;
pub const RESET_TX: u8 = 2;

/// How a readiness observation was made ([`AppEvent::via`]).
pub const VIA_EPOLL: u8 = 1;
pub const VIA_POLL: u8 = 2;
pub const VIA_SELECT: u8 = 3;

/// Readiness bits reported for `select()` (its sets carry no poll mask).
pub const SELECT_READ: i32 = 1;
pub const SELECT_WRITE: i32 = 2;
pub const SELECT_EXCEPT: i32 = 4;

/// Slots of the per-CPU `COUNTERS` map (things not lost, but not reported one by one either).
/// Readiness entries beyond the per-call bound (epoll_wait/poll/select return more than the
/// programs examine).
pub const COUNTER_READINESS_UNEXAMINED: u32 = 0;
/// recv/send/readiness calls folded into summarising records rather than reported singly.
pub const COUNTER_IO_SUMMARISED: u32 = 1;
/// Ready entries of epoll_wait/poll/select results not examined because the process held no
/// socket the kernel had anything to say about (`watch` and `agent`: no finding rests on
/// readiness of a healthy connection).
pub const COUNTER_READINESS_NOT_NEEDED: u32 = 2;
pub const COUNTER_SLOTS: u32 = 4;

/// Slots of the per-CPU `LEAD_NOTES` and `COVERED` maps: the kernel's own events whose raw
/// tracepoint program has an understudy (connwatch-ebpf's `understudy` module).
pub const UNDERSTUDY_STATE: u32 = 0;
pub const UNDERSTUDY_RECEIVE_RESET: u32 = 1;
pub const UNDERSTUDY_SEND_RESET: u32 = 2;
pub const UNDERSTUDY_RETRANSMIT: u32 = 3;
pub const UNDERSTUDY_ERROR_REPORT: u32 = 4;
pub const UNDERSTUDY_DESTROY: u32 = 5;
pub const UNDERSTUDY_SLOTS: u32 = 6;

/// Common to every record: what happened when, to which socket, owned by whom.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u8,
    pub _pad0: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Owning process; [`crate::socket::OWNER_UNKNOWN`] when no process context has been seen.
    pub tgid: u32,
    /// A change to ESTABLISHED this record carries, reported before it: how long after the
    /// birth it came, in ns (0: none; [`crate::config::FLAG_ESTABLISHED_CARRIED`]). The state it
    /// left is the one the birth's opening entered ([`crate::socket::established_from`]).
    pub established_after_ns: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// `struct sock` address; with `birth_ns` the socket's identity.
    pub sk: u64,
    pub birth_ns: u64,
    pub comm: [u8; 16],
    /// IPv4 addresses use the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
assert_size!(EventHeader, 88);

/// `sock:inet_sock_set_state`: a TCP state change.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateEvent {
    pub header: EventHeader,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: [u8; 6],
}
assert_size!(StateEvent, 96);

/// One state change of a [`StatesEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateChange {
    pub ts_ns: u64,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: [u8; 6],
}
assert_size!(StateChange, 16);

/// The most changes one [`StatesEvent`] carries: those kept while closing, and the last.
pub const STATES_MAX: usize = crate::socket::CLOSING_SLOTS + 1;

/// [`KIND_STATES`]: `count` state changes in order, each with its own time (the header's is the
/// last's).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StatesEvent {
    pub header: EventHeader,
    pub count: u8,
    pub _pad: [u8; 7],
    pub changes: [StateChange; STATES_MAX],
}
assert_size!(StatesEvent, 160);

/// `tcp:tcp_receive_reset` / `tcp:tcp_send_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetEvent {
    pub header: EventHeader,
    /// [`RESET_RX`] or [`RESET_TX`].
    pub direction: u8,
    /// The socket's state when the reset was received or sent.
    pub state: u8,
    pub _pad: [u8; 6],
}
assert_size!(ResetEvent, 96);

/// `tcp:tcp_retransmit_skb`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RetransmitEvent {
    pub header: EventHeader,
    pub state: u8,
    pub _pad: [u8; 7],
}
assert_size!(RetransmitEvent, 96);

/// `tcp:tcp_destroy_sock`, reported only when no close() by the last holder was seen.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DestroyEvent {
    pub header: EventHeader,
    pub state: u8,
    pub _pad: [u8; 7],
}
assert_size!(DestroyEvent, 96);

/// `sock:inet_sk_error_report`: the kernel stored an error in the socket (`sk_err`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ErrorEvent {
    pub header: EventHeader,
    /// Positive errno, as stored in `sk->sk_err`.
    pub errno: i32,
    pub state: u8,
    pub _pad: [u8; 3],
}
assert_size!(ErrorEvent, 96);

/// The socket as it was when the application made its call: every observation carries it, so
/// each is self-describing even when other events were lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockSnapshot {
    /// Kernel TCP state.
    pub state: u8,
    /// Consecutive retransmission timeouts without an acknowledgement (`icsk_retransmits`).
    pub rto_retransmits: u8,
    pub _pad: [u8; 2],
    /// Pending socket error (`sk_err`), positive errno or 0.
    pub sk_err: i32,
    /// Bytes the application wrote that the peer has not acknowledged (`write_seq - snd_una`),
    /// sent or still queued.
    pub unacked_bytes: u32,
    /// Smoothed round-trip time in microseconds (0: not measured yet).
    pub srtt_us: u32,
}
assert_size!(SockSnapshot, 16);

impl SockSnapshot {
    /// A socket known only by its state (healthy otherwise), built field by field.
    pub const fn of_state(state: u8) -> Self {
        Self { state, rto_retransmits: 0, _pad: [0; 2], sk_err: 0, unacked_bytes: 0, srtt_us: 0 }
    }
}

/// An application's observation on a socket: `KIND_SO_ERROR` .. `KIND_ACCEPT`.
///
/// `header.ts_ns` is when the (last) call ended; `started_ns` when the (first) call began.
/// The snapshot is the socket as the call left it, except for a send that caused kernel events
/// itself: then it is the socket as the send found it, and `started_ns` is just before the
/// first of those events ([`crate::socket::SendStart`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AppEvent {
    pub header: EventHeader,
    pub snapshot: SockSnapshot,
    /// The application's file descriptor; -1 where the hook does not know it (recv, send).
    pub fd: i32,
    /// Per kind: SO_ERROR value read (positive errno or 0); connect/recv/send return value
    /// (bytes, 0, or -errno); readiness event mask; close: how many other references to the
    /// open file remain (0: this close lets go of the connection; more: a forked child, a
    /// dup() or a descriptor passed over a Unix socket still holds it); 0 for accept.
    pub value: i32,
    /// recv/send: bytes transferred by the `calls` this record stands for.
    pub bytes: u64,
    /// How many calls this record stands for (1, or more when summarised).
    pub calls: u32,
    /// Readiness: `VIA_EPOLL`, `VIA_POLL` or `VIA_SELECT`.
    pub via: u8,
    pub _pad: [u8; 3],
    /// CLOCK_MONOTONIC time the first call this record stands for began (or was seen).
    pub started_ns: u64,
}
assert_size!(AppEvent, 136);
