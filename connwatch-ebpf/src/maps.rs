//! The kernel maps. Names match `connwatch_common::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use connwatch_common::{
    event::{COUNTER_SLOTS, KIND_SLOTS, UNDERSTUDY_SLOTS},
    names::{
        ATTENTION_SLOTS, LATEST_LIFE_SLOTS, MAX_EPOLL_REGISTRATIONS, MAX_FILTER_PIDS,
        MAX_FILTER_PORTS, MAX_LISTENERS, MAX_PENDING_CALLS, MAX_SOCKETS,
    },
    socket::{
        EpollKey, EpollTarget, IoState, LatestLife, ListenerKey, Owner, SendStart, SocketEntry,
    },
};

use crate::{syscall::KeptCall, understudy::LeadNotes};

/// Declares the ring buffers, each a static named as its map (`connwatch_common::names`).
macro_rules! rings {
    ($($ring:ident),+) => {
        $(
            #[map]
            pub static $ring: RingBuf = RingBuf::with_byte_size(4 << 20, 0);
        )+
    };
}

// Every record, in order, when one ring buffer carries them all; else each goes to the ring
// `ring_of` gives its socket life. The loader sizes every ring (`--ring-buffer-size`; a page
// if unused).
rings!(
    EVENTS, EVENTS_1, EVENTS_2, EVENTS_3, EVENTS_4, EVENTS_5, EVENTS_6, EVENTS_7, EVENTS_8,
    EVENTS_9, EVENTS_10, EVENTS_11, EVENTS_12, EVENTS_13, EVENTS_14, EVENTS_15
);

/// Failed reservations, per CPU and per event kind: nothing is lost without being counted.
#[map(name = "LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(KIND_SLOTS, 0);

/// The hits a hook's lead raw tracepoint program took on this CPU that its understudy has not
/// run for yet (`UNDERSTUDY_*` slots).
#[map(name = "LEAD_NOTES")]
pub static LEAD_NOTES: PerCpuArray<LeadNotes> = PerCpuArray::with_max_entries(UNDERSTUDY_SLOTS, 0);

/// Hits an understudy handled because the kernel skipped its lead, per CPU (`UNDERSTUDY_*`
/// slots).
#[map(name = "COVERED")]
pub static COVERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(UNDERSTUDY_SLOTS, 0);

/// Identity (birth) and owner of every socket seen, and its closing state changes not reported
/// yet, keyed by `struct sock` address. LRU keeps it bounded: the least recently touched
/// socket goes first.
#[map(name = "SOCKETS")]
pub static SOCKETS: LruHashMap<u64, SocketEntry> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// A new `SOCKETS` entry, built here (one slot per CPU) rather than on the stack.
#[map(name = "NEW_SOCKET")]
pub static NEW_SOCKET: PerCpuArray<SocketEntry> = PerCpuArray::with_max_entries(1, 0);

/// Owners of listening sockets, so children created in softirq context inherit them.
#[map(name = "LISTENERS")]
pub static LISTENERS: LruHashMap<ListenerKey, Owner> =
    LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// `--pid` values (tgid -> 1).
#[map(name = "PID_FILTER")]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_PIDS, 0);

/// `--port` values (host order -> 1).
#[map(name = "PORT_FILTER")]
pub static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(MAX_FILTER_PORTS, 0);

/// Per-CPU counts of what is deliberately not reported one by one (see `COUNTER_*`).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// recv/send/readiness activity not yet reported, per socket (the summarising policy).
#[map(name = "IO_STATE")]
pub static IO_STATE: LruHashMap<u64, IoState> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Sockets the kernel had news of, per process (slot `tgid % ATTENTION_SLOTS`, changed only
/// atomically): under `watch` and `agent`, a process with none skips the look at its readiness.
#[map(name = "ATTENTION")]
pub static ATTENTION: Array<u64> = Array::with_max_entries(ATTENTION_SLOTS, 0);

/// The latest life begun at each address (by a hash of it; a collision replaces the older).
#[map(name = "LATEST_LIVES")]
pub static LATEST_LIVES: Array<LatestLife> = Array::with_max_entries(LATEST_LIFE_SLOTS, 0);

/// epoll registrations: (process, epfd, user data) -> socket, learnt at epoll_ctl.
#[map(name = "EPOLL_WATCH")]
pub static EPOLL_WATCH: LruHashMap<EpollKey, EpollTarget> =
    LruHashMap::with_max_entries(MAX_EPOLL_REGISTRATIONS, 0);

/// Syscall arguments kept from entry to exit, per thread.
#[map(name = "PENDING")]
pub static PENDING: LruHashMap<u64, KeptCall> = LruHashMap::with_max_entries(MAX_PENDING_CALLS, 0);

/// The socket as the send running on this CPU found it, where the send changed it itself (one
/// slot per CPU; `send_start.rs`).
#[map(name = "SEND_START")]
pub static SEND_START: PerCpuArray<SendStart> = PerCpuArray::with_max_entries(1, 0);
