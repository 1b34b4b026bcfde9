//! Load-time configuration: the eBPF programs' `CONFIG` global, written by the loader.
//!
//! Offsets come from the running kernel (tracefs `format` files and BTF), never from one
//! kernel's headers.

use crate::assert_size;

/// Bits of [`Config::flags`].
pub const FILTER_PIDS: u32 = 1;
pub const FILTER_PORTS: u32 = 2;
pub const FILTER_COMM: u32 = 4;
/// `--all-io`: report every recv, send and readiness call instead of summarising.
pub const FLAG_ALL_IO: u32 = 8;
/// Readiness results are examined only in processes that hold a socket needing attention
/// (`ATTENTION`); `watch` and `agent` set it, `trace` reports every readiness.
pub const FLAG_READINESS_ON_ATTENTION: u32 = 16;
/// Once the application has closed a socket, its remaining state changes (the kernel finishing
/// the close) are kept in the socket's entry and reported in one record when it reaches CLOSE
/// ([`crate::event::StatesEvent`]); `watch` and `agent` set it, `trace` reports each at once.
pub const FLAG_CLOSING_TOGETHER: u32 = 32;
/// The state change that begins a life (connect, listen, a listener's child) is not reported:
/// the life's birth records it ([`crate::socket::opening_of`]), and the correlator takes it
/// from there. `watch` and `agent` set it, `trace` reports it.
pub const FLAG_OPENING_IN_BIRTH: u32 = 64;
/// The programs may read the current syscall's number from the registers it was made with
/// (`bpf_task_pt_regs`, Linux 5.15; x86-64): the loader sets it where the kernel has the helper.
/// Without it, a send is judged by the socket as it left it ([`crate::socket::SendStart`]).
pub const FLAG_CALL_REGS: u32 = 128;
/// A connection's change to ESTABLISHED (from the state its birth entered, before its connect()
/// returned or its accept()) is not reported on its own: it is kept in the socket's entry
/// ([`crate::socket::SocketInfo::established_after_ns`]) and the socket's next record carries
/// it in its header ([`crate::event::EventHeader::established_after_ns`]), normally the connect
/// or accept record. `watch` and `agent` set it, `trace` reports the change at once.
pub const FLAG_ESTABLISHED_CARRIED: u32 = 256;

/// A struct member the running kernel does not have (for example IPv6 fields without
/// CONFIG_IPV6); programs skip reads at this offset.
pub const OFFSET_ABSENT: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent itself: its sockets are never reported.
    pub self_tgid: u32,
    pub flags: u32,
    pub comm: [u8; 16],
    /// Submissions wake userspace only once this many bytes wait in the ring buffer; below it
    /// userspace drains on its own timer. Batching wake-ups is what keeps the hot paths cheap.
    pub wakeup_bytes: u64,
    /// How many ring buffers carry the records (one per correlator thread, at most
    /// [`crate::names::MAX_RINGS`]): a socket's records all go to the one its address picks
    /// ([`crate::names::ring_of`]).
    pub rings: u32,
    pub _pad: u32,
    pub tracepoints: TracepointFields,
    pub sock: SockOffsets,
    pub task: TaskOffsets,
}
assert_size!(Config, 40 + 48 + 76 + 44);

/// Byte offsets of the fields the classic tracepoint programs read from their records, taken
/// from `/sys/kernel/tracing/events/<category>/<name>/format`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracepointFields {
    pub set_state_skaddr: u32,
    pub set_state_oldstate: u32,
    pub set_state_newstate: u32,
    pub receive_reset_skaddr: u32,
    pub send_reset_skaddr: u32,
    pub retransmit_skaddr: u32,
    pub send_length_sk: u32,
    pub send_length_ret: u32,
    pub recv_length_sk: u32,
    pub recv_length_ret: u32,
    /// `ret` of `syscalls:sys_exit_*`.
    pub sys_exit_ret: u32,
    /// First argument of `syscalls:sys_enter_*`; the loader checks each hooked syscall's
    /// arguments follow it at 8-byte steps.
    pub sys_enter_arg0: u32,
}

/// Byte offsets inside `struct sock`, from the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockOffsets {
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    pub family: u32,
    pub state: u32,
    pub net: u32,
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    pub err: u32,
    pub protocol: u32,
    pub sk_type: u32,
    /// `inet_connection_sock.icsk_retransmits` (u8).
    pub rto_retransmits: u32,
    /// `tcp_sock.snd_una` / `write_seq` (u32): acknowledged up to / written by the application
    /// up to.
    pub snd_una: u32,
    pub write_seq: u32,
    /// Start of the window [`SOCK_HEAD_BYTES`] long that holds addresses, ports, family and
    /// state (the head of `struct sock_common`), read with one helper call.
    pub head: u32,
    /// Start of the 8-byte window holding `sk_type` and `sk_protocol`.
    pub proto_type: u32,
    /// `tcp_sock.srtt_us` (u32): smoothed round-trip time, microseconds << 3.
    pub srtt_us: u32,
    /// `sock.sk_lock.owned` (int): a process holds the socket's lock (`lock_sock`), so the
    /// kernel's work on it runs in that process's call, not in softirq.
    pub lock_owned: u32,
}

/// Bytes read at [`SockOffsets::head`].
pub const SOCK_HEAD_BYTES: u32 = 24;
/// Bytes read at [`SockOffsets::proto_type`].
pub const PROTO_TYPE_BYTES: u32 = 8;

/// Byte offsets along task -> files -> fd table -> file -> socket -> sock, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    /// The open file's reference count: `file.f_ref` (a `file_ref_t`, one less than the
    /// references, since 6.13) or `file.f_count` (an `atomic_long_t`, the references, before).
    pub file_count: u32,
    /// Added to the value read at `file_count` to give the references (1 for `file_ref_t`).
    pub file_count_bias: u32,
    /// `task_struct.nvcsw`, with `nivcsw` right after it: the thread's context switches,
    /// voluntary and not, read as one 16-byte window.
    pub switches: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding.
unsafe impl aya::Pod for Config {}
