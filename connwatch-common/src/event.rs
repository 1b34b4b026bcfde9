//! Records the eBPF programs write into the ring buffer.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which body follows. Userspace checks
//! the kind and the length before it reads a body.

use crate::assert_size;

pub const KIND_STATE: u8 = 1;
pub const KIND_RESET: u8 = 2;
pub const KIND_RETRANSMIT: u8 = 3;
pub const KIND_ERROR: u8 = 4;
/// Slots of the per-CPU loss counter; every kind's value is below it.
pub const KIND_SLOTS: u32 = 16;

pub const RESET_RX: u8 = 1;
pub const RESET_TX: u8 = 2;

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
    pub _pad1: u32,
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
