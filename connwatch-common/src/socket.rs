//! Values of the kernel maps that give each socket its identity and owner.

use crate::{
    assert_size,
    tcp::{TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT},
};

/// `tgid` of an owner nobody has seen in process context yet. Never a real process: pid 0 is the
/// idle task, which owns no sockets.
pub const OWNER_UNKNOWN: u32 = 0;

/// The process that last touched a socket in process context (connect, accept, send, recv,
/// close, listen).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
assert_size!(Owner, 24);

impl Owner {
    pub const UNKNOWN: Self = Self { tgid: OWNER_UNKNOWN, _pad: 0, comm: [0; 16] };
}

/// Set in [`SocketInfo::birth_ns`] (its lowest bit) for a socket first seen mid-life: older
/// than the agent, or forgotten by the LRU. Its true birth, and so its age, is unknown.
pub const BIRTH_ADOPTED: u64 = 1;

/// How a life seen born began, in [`SocketInfo::birth_ns`]'s bits 1 and 2 (the adopted bit
/// clear): the state change that began it. `watch` and `agent` do not report that change on its
/// own ([`crate::config::FLAG_OPENING_IN_BIRTH`]); the birth on every later record carries it.
pub const BIRTH_OPENING: u64 = 0b110;
/// CLOSE -> SYN_SENT: connect().
pub const BIRTH_BY_CONNECT: u64 = 1 << 1;
/// CLOSE -> LISTEN: listen().
pub const BIRTH_BY_LISTEN: u64 = 2 << 1;
/// LISTEN -> SYN_RECV: a child created by a listener.
pub const BIRTH_FROM_LISTENER: u64 = 3 << 1;

/// The birth of a life beginning at `now_ns` by `opening` (a `BIRTH_BY_*` or
/// `BIRTH_FROM_LISTENER`): the time gives up its lowest three bits (8 ns) to the opening and the
/// adopted bit.
#[inline(always)]
pub fn birth_of(now_ns: u64, opening: u64) -> u64 {
    (now_ns & !(BIRTH_OPENING | BIRTH_ADOPTED)) | (opening & BIRTH_OPENING)
}

/// The state change (old, new) that began the life born at `birth_ns`, and when, if the birth
/// records it.
pub fn opening_of(birth_ns: u64) -> Option<(u8, u8, u64)> {
    if birth_ns & BIRTH_ADOPTED != 0 {
        return None;
    }
    let (old, new) = match birth_ns & BIRTH_OPENING {
        BIRTH_BY_CONNECT => (TCP_CLOSE, TCP_SYN_SENT),
        BIRTH_BY_LISTEN => (TCP_CLOSE, TCP_LISTEN),
        BIRTH_FROM_LISTENER => (TCP_LISTEN, TCP_SYN_RECV),
        _ => return None,
    };
    Some((old, new, birth_ns & !BIRTH_OPENING))
}

/// One socket's life as the kernel map records it, keyed by the `struct sock` address.
///
/// The address alone is not an identity: sockets are freed and their memory reused. `birth_ns`
/// (set when a connection starts: connect, listen, or a child created from a listener) tells two
/// lives at one address apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub birth_ns: u64,
    pub owner: Owner,
    /// The connection's ports once known: the kernel releases the local port on the way to
    /// CLOSE, and events after that still belong to (and are filtered as) this connection.
    pub sport: u16,
    pub dport: u16,
    /// `SOCKET_*` bits.
    pub flags: u16,
    /// Which correlator thread joins this life's events, as [`route_of_life`] gave it at the
    /// life's start: the ring buffer its records go to is `route % rings`.
    pub route: u16,
    /// The change to ESTABLISHED, while it is kept for the socket's next record: how long after
    /// the birth it came, in ns, under `u32::MAX` (0: none kept;
    /// [`crate::config::FLAG_ESTABLISHED_CARRIED`]). A whole word: it is taken by atomic exchange.
    pub established_after_ns: u64,
}
assert_size!(SocketInfo, 48);

/// The route of the life of the socket at `sk` born at `birth_ns`: the lives at one address
/// spread over the correlator threads (under churn a few addresses carry every connection).
#[inline(always)]
pub fn route_of_life(sk: u64, birth_ns: u64) -> u16 {
    ((sk ^ birth_ns.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u16
}

/// The latest life begun at an address, for an identity the kernel adopts there later (its
/// entry dropped by the LRU while the life went on): the adopted identity takes the same
/// route, so the correlator thread that tracks that life can join the two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatestLife {
    pub sk: u64,
    pub route: u16,
    pub _pad: [u8; 6],
}
assert_size!(LatestLife, 16);

/// State changes after the application's close, not reported yet ([`SocketEntry::closing`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    pub ts_ns: [u64; CLOSING_SLOTS],
    pub old_state: [u8; CLOSING_SLOTS],
    pub new_state: [u8; CLOSING_SLOTS],
    /// How many of the slots are in use.
    pub count: u8,
    pub _pad: u8,
}
assert_size!(Closing, 32);

/// State changes kept per socket: a clean close passes through at most three before CLOSE
/// (FIN_WAIT1, FIN_WAIT2 / CLOSING, TIME_WAIT's CLOSE; or LAST_ACK).
pub const CLOSING_SLOTS: usize = 3;

/// The `SOCKETS` map's value: who the socket is, and its closing state changes not yet
/// reported. Kept apart so hooks copy only the `info` they read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub info: SocketInfo,
    pub closing: Closing,
}
assert_size!(SocketEntry, 80);

/// [`SocketInfo::flags`]: the last holder's close() was seen (so the kernel's destruction of
/// the socket needs no report).
pub const SOCKET_APP_CLOSED: u16 = 1;
/// [`SocketInfo::flags`]: the application's connect() returned, or accept() handed the
/// connection over, before it was ESTABLISHED (a non-blocking connect, a TCP Fast Open child):
/// the change is reported at once, as no call's record will carry it.
pub const SOCKET_CALL_RETURNED: u16 = 2;

/// Where a kept change to ESTABLISHED counts from ([`SocketInfo::established_after_ns`]): the
/// state the connection left, the one its birth's opening entered (SYN_SENT after connect(),
/// SYN_RECV for a listener's child), and the birth's time. `None` for a life whose birth begins
/// no connection (a listener's, an adopted one).
pub fn established_from(birth_ns: u64) -> Option<(u8, u64)> {
    match opening_of(birth_ns)? {
        (_, old @ (TCP_SYN_SENT | TCP_SYN_RECV), born_ns) => Some((old, born_ns)),
        _ => None,
    }
}

/// recv/send/readiness activity on a socket not yet reported (the summarising policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTally {
    pub last_report_ns: u64,
    /// When the first call tallied since the last report was seen (0: none tallied).
    pub first_ns: u64,
    /// When the last call tallied was seen (a send whose start was kept: when it began).
    pub last_ns: u64,
    pub bytes: u64,
    pub calls: u32,
    /// What the last report said (readiness: mask and mechanism): a change is always reported.
    pub last_signature: u32,
    /// State at the last report: a change of state is always reported.
    pub last_state: u8,
    pub _pad: [u8; 7],
}
assert_size!(IoTally, 48);

/// Per-socket tallies, keyed by `struct sock` address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoState {
    pub recv: IoTally,
    pub send: IoTally,
    pub readiness: IoTally,
    /// 1 while the socket is known ESTABLISHED with no error and no retransmission timeout:
    /// set by a hook that read it so, cleared by every kernel event on the socket (state
    /// change, reset, error, retransmit). While set, a routine call is tallied after this one
    /// map lookup, without reading the socket.
    pub trusted: u8,
    pub _pad: [u8; 3],
    /// The owner the last slow path saw, so the fast path can tell the owner is unchanged.
    pub owner_tgid: u32,
    /// The process this socket is counted against in `ATTENTION` (0: none): set when the
    /// kernel has something to say about the socket, cleared when a look finds it healthy
    /// again or it is destroyed. Swapped atomically (64 bits: the BPF instruction set has no
    /// narrower exchange before its v3), so each count is taken back once.
    pub attention_tgid: u64,
}
assert_size!(IoState, 160);

/// The socket as a send found it, for a send that changed it itself: kept per CPU by the first
/// kernel event the send caused (a reset its write provoked, say), until the call's
/// `sock:sock_send_length` takes it. Thread, socket and the thread's context switches are
/// checked on taking: a call that slept, was preempted or moved to another CPU after its first
/// event is judged by the socket as it left it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SendStart {
    pub pid_tgid: u64,
    /// 0 once taken.
    pub sk: u64,
    /// Just before the first event the send caused.
    pub started_ns: u64,
    /// The thread's context switches (voluntary and not) when the event kept it.
    pub switches: u64,
    pub snapshot: crate::event::SockSnapshot,
}
assert_size!(SendStart, 48);

/// An epoll registration: which socket a (process, epfd, user data) triple stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollKey {
    pub tgid: u32,
    pub epfd: i32,
    pub data: u64,
}
assert_size!(EpollKey, 16);

/// The descriptor an epoll registration was made for. Its socket is resolved when epoll
/// reports it, inside the process: the descriptor may have been closed and reused since, by
/// a new connection an event loop registers with the same user data (`data.fd`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollTarget {
    pub fd: i32,
    pub _pad: u32,
}
assert_size!(EpollTarget, 8);

/// A syscall's arguments kept from its entry to its exit, keyed by thread (`pid_tgid`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCall {
    /// `CALL_*`: which syscall these arguments belong to.
    pub call: u32,
    pub fd: i32,
    /// A user pointer (getsockopt optval, epoll events, pollfd array, select read set).
    pub ptr: u64,
    /// A count or second pointer (poll nfds, select write set).
    pub aux: u64,
    /// select's exception set.
    pub aux2: u64,
}
assert_size!(PendingCall, 32);

pub const CALL_GETSOCKOPT: u32 = 1;
pub const CALL_EPOLL_WAIT: u32 = 2;
pub const CALL_POLL: u32 = 3;
pub const CALL_SELECT: u32 = 4;
pub const CALL_CONNECT: u32 = 5;
/// read/recvfrom/recvmsg and write/sendto/sendmsg, for kernels without the sock_*_length
/// tracepoints.
pub const CALL_RECV: u32 = 6;
pub const CALL_SEND: u32 = 7;

/// A listening socket, found again when it spawns a child in softirq context. Keyed by network
/// namespace (the `struct net` address) and port because the child has no pointer to its parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub net: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}
assert_size!(ListenerKey, 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::SocketInfo {}
    unsafe impl aya::Pod for super::SocketEntry {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::IoState {}
    unsafe impl aya::Pod for super::EpollKey {}
    unsafe impl aya::Pod for super::EpollTarget {}
    unsafe impl aya::Pod for super::PendingCall {}
    unsafe impl aya::Pod for super::SendStart {}
}
