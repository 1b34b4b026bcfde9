//! Map and program names, used by the eBPF side (`#[map(name = ..)]`) and the loader.

/// The ring buffers, in order: records go to `EVENTS` alone unless the loader asks for more
/// (one per correlator thread).
pub const MAP_EVENTS: [&str; MAX_RINGS] = [
    "EVENTS",
    "EVENTS_1",
    "EVENTS_2",
    "EVENTS_3",
    "EVENTS_4",
    "EVENTS_5",
    "EVENTS_6",
    "EVENTS_7",
    "EVENTS_8",
    "EVENTS_9",
    "EVENTS_10",
    "EVENTS_11",
    "EVENTS_12",
    "EVENTS_13",
    "EVENTS_14",
    "EVENTS_15",
];
pub const MAX_RINGS: usize = 16;
pub const MAP_LOST: &str = "LOST";
pub const MAP_SOCKETS: &str = "SOCKETS";
pub const MAP_LISTENERS: &str = "LISTENERS";
pub const MAP_PID_FILTER: &str = "PID_FILTER";
pub const MAP_PORT_FILTER: &str = "PORT_FILTER";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_ATTENTION: &str = "ATTENTION";
pub const MAP_EPOLL_WATCH: &str = "EPOLL_WATCH";
pub const MAP_COVERED: &str = "COVERED";

/// The global the loader overrides with a [`crate::config::Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Upper bounds of the kernel maps' sizes; userspace may lower them at load time.
pub const MAX_SOCKETS: u32 = 65_536;
pub const MAX_LISTENERS: u32 = 4_096;
pub const MAX_FILTER_PIDS: u32 = 64;
pub const MAX_FILTER_PORTS: u32 = 64;
pub const MAX_PENDING_CALLS: u32 = 16_384;
pub const MAX_EPOLL_REGISTRATIONS: u32 = 65_536;
/// Slots of the `ATTENTION` array, indexed by process id modulo this: processes that share a
/// slot share a count, so a collision can only make a process look at readiness it need not.
pub const ATTENTION_SLOTS: u32 = 65_536;
/// Slots of the `LATEST_LIVES` array, indexed by a hash of the socket address.
pub const LATEST_LIFE_SLOTS: u32 = 65_536;

/// How many entries of one epoll_wait/poll/select result the unrolled programs examine; the
/// rest are counted in `COUNTER_READINESS_UNEXAMINED`.
pub const READINESS_PER_CALL: u32 = 16;
/// How many entries of one epoll_wait result the `bpf_loop` program (Linux 5.17 on) examines:
/// the verifier checks its step once, whatever the count.
pub const READINESS_PER_CALL_LOOPED: u32 = 1_024;
/// select() sets are examined for descriptors below this.
pub const SELECT_FDS: u32 = 64;
/// With summarising, a busy socket reports recv, send and readiness at most this often.
pub const IO_REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// The ring buffer, of `rings`, that carries every record of a socket life with this route
/// ([`crate::socket::route_of_life`]).
#[inline(always)]
pub fn ring_of(route: u16, rings: u32) -> u32 {
    if rings <= 1 {
        return 0;
    }
    u32::from(route) % rings
}
