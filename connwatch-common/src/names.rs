//! Map and program names, used by the eBPF side (`#[map(name = ..)]`) and the loader.

pub const MAP_EVENTS: &str = "EVENTS";
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
