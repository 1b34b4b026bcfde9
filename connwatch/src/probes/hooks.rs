//! The catalogue of kernel hooks and the mechanisms each can be attached with.
//!
//! A hook lists its variants in order of preference; the loader attaches the first that works
//! on the running kernel. Kernels without a tracepoint would add kprobe or fentry variants
//! here (this project's CI kernel has neither, so none are listed yet).

use std::fmt;

/// How a program is attached to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT`: the tracepoint's arguments, no record assembled.
    RawTracepoint,
    /// `BPF_PROG_TYPE_TRACEPOINT`: the record at tracefs `format` offsets.
    Tracepoint,
}

impl Mechanism {
    pub const fn name(self) -> &'static str {
        match self {
            Self::RawTracepoint => "raw_tracepoint",
            Self::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One program that implements a hook with one mechanism.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub mechanism: Mechanism,
    /// Program (function) name in connwatch-ebpf.
    pub program: &'static str,
    /// What this variant does not do that the first one does (a smaller bound, say).
    pub gives_up: Option<&'static str>,
}

const fn raw(program: &'static str) -> Variant {
    Variant { mechanism: Mechanism::RawTracepoint, program, gives_up: None }
}

const fn tp(program: &'static str) -> Variant {
    Variant { mechanism: Mechanism::Tracepoint, program, gives_up: None }
}

/// A smaller classic-tracepoint variant, for kernels whose verifier refuses the full one.
const fn tp_reduced(program: &'static str, gives_up: &'static str) -> Variant {
    Variant { mechanism: Mechanism::Tracepoint, program, gives_up: Some(gives_up) }
}

/// What a hook contributes; decides whether connwatch can run without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Produces events; connwatch refuses to run without it.
    Events,
    /// Keeps owners accurate and reports what applications observed; without it connwatch
    /// runs degraded (listed in `ready`): owners stay unknown longer, observations are missing.
    Observation,
    /// Sharpens what other hooks report; without it connwatch runs degraded (listed in
    /// `ready`) as the hook's `without` text says.
    Precision(&'static str),
}

impl Role {
    /// What is missing when an optional hook cannot be attached.
    pub const fn without(self) -> &'static str {
        match self {
            Self::Events => "kernel events",
            Self::Observation => "application observations (and some owners)",
            Self::Precision(without) => without,
        }
    }
}

#[derive(Debug)]
pub struct Hook {
    pub category: &'static str,
    pub name: &'static str,
    pub role: Role,
    /// In order of preference. Raw tracepoints come first: they need no tracefs record layout
    /// (the programs read what they need from the socket itself). Per hit they measured the
    /// same as classic tracepoints on Linux 6.18 (`cargo xtask bench`, raw/classic ~1.0), so
    /// classic tracepoints are an equal fallback, not a slower one.
    pub variants: &'static [Variant],
    /// A stand-in, attached only where the hook with this id could not be.
    pub instead_of: Option<&'static str>,
}

impl Hook {
    pub fn id(&self) -> String {
        format!("{}:{}", self.category, self.name)
    }
}

/// A syscall tracepoint, whose program is `tp_<name>` unless named: classic only (raw tracepoints exist
/// just for all syscalls at once, which would run on every syscall in the system).
macro_rules! syscall {
    ($name:literal) => {
        syscall!($name, concat!("tp_", $name), None)
    };
    // A call of a family served by one program (`program`, loaded once, attached to each).
    ($name:literal, program = $program:literal) => {
        syscall!($name, $program, None)
    };
    ($name:literal, $instead_of:expr) => {
        syscall!($name, concat!("tp_", $name), $instead_of)
    };
    ($name:literal, $program:expr, $instead_of:expr) => {
        Hook {
            category: "syscalls",
            name: $name,
            role: Role::Observation,
            variants: &[tp($program)],
            instead_of: $instead_of,
        }
    };
}

/// A readiness result (`sys_exit_*` of epoll_wait, poll, select and their siblings): the
/// `bpf_loop` program that examines `$all` entries (Linux 5.17 on), then unrolled loops with
/// smaller bounds where a kernel lacks the helper or its verifier refuses them.
macro_rules! readiness {
    ($name:literal, $program:literal, $all:literal) => {
        Hook {
            category: "syscalls",
            name: $name,
            role: Role::Observation,
            variants: &[
                tp($program),
                tp_reduced(
                    concat!($program, "_unrolled"),
                    concat!(
                        "examines 16 ready entries per call, not ",
                        $all,
                        " (without bpf_loop; the rest are counted in readiness_unexamined)"
                    ),
                ),
                tp_reduced(
                    concat!($program, "_few"),
                    concat!(
                        "examines 4 ready entries per call, not ",
                        $all,
                        " (the rest are counted in readiness_unexamined)"
                    ),
                ),
                tp_reduced(
                    concat!($program, "_one"),
                    concat!(
                        "examines 1 ready entry per call, not ",
                        $all,
                        " (the rest are counted in readiness_unexamined)"
                    ),
                ),
            ],
            instead_of: None,
        }
    };
}

const RECV: Option<&str> = Some("sock:sock_recv_length");
const SEND: Option<&str> = Some("sock:sock_send_length");

pub static HOOKS: &[Hook] = &[
    Hook {
        category: "sock",
        name: "inet_sock_set_state",
        role: Role::Events,
        variants: &[raw("raw_inet_sock_set_state"), tp("tp_inet_sock_set_state")],
        instead_of: None,
    },
    Hook {
        category: "tcp",
        name: "tcp_receive_reset",
        role: Role::Events,
        variants: &[raw("raw_tcp_receive_reset"), tp("tp_tcp_receive_reset")],
        instead_of: None,
    },
    Hook {
        category: "tcp",
        name: "tcp_send_reset",
        role: Role::Events,
        variants: &[raw("raw_tcp_send_reset"), tp("tp_tcp_send_reset")],
        instead_of: None,
    },
    Hook {
        category: "tcp",
        name: "tcp_retransmit_skb",
        role: Role::Events,
        variants: &[raw("raw_tcp_retransmit_skb"), tp("tp_tcp_retransmit_skb")],
        instead_of: None,
    },
    Hook {
        category: "sock",
        name: "inet_sk_error_report",
        role: Role::Events,
        // The classic record has no socket address, so it cannot be joined to a socket.
        variants: &[raw("raw_inet_sk_error_report")],
        instead_of: None,
    },
    Hook {
        category: "sock",
        name: "sock_send_length",
        role: Role::Observation,
        variants: &[raw("raw_sock_send_length"), tp("tp_sock_send_length")],
        instead_of: None,
    },
    Hook {
        category: "tcp",
        name: "tcp_sendmsg_locked",
        role: Role::Precision(
            "the socket's state at the start of each send (sends are judged by the state at \
             their end, after any reset they provoked)",
        ),
        // The classic record carries no socket address.
        variants: &[raw("raw_tcp_sendmsg_locked")],
        instead_of: None,
    },
    Hook {
        category: "tcp",
        name: "tcp_destroy_sock",
        role: Role::Precision(
            "the kernel's end-of-life marker (identities end at the last close in CLOSE \
             instead, or when the socket tables' LRU pushes them out)",
        ),
        variants: &[raw("raw_tcp_destroy_sock")],
        instead_of: None,
    },
    Hook {
        category: "sock",
        name: "sock_recv_length",
        role: Role::Observation,
        variants: &[raw("raw_sock_recv_length"), tp("tp_sock_recv_length")],
        instead_of: None,
    },
    syscall!("sys_exit_accept4"),
    syscall!("sys_exit_accept", program = "tp_sys_exit_accept4"),
    syscall!("sys_enter_connect"),
    syscall!("sys_exit_connect"),
    syscall!("sys_enter_close"),
    syscall!("sys_enter_getsockopt"),
    syscall!("sys_exit_getsockopt"),
    syscall!("sys_enter_epoll_ctl"),
    syscall!("sys_enter_epoll_wait"),
    readiness!("sys_exit_epoll_wait", "tp_sys_exit_epoll_wait", "1,024"),
    syscall!("sys_enter_epoll_pwait", program = "tp_sys_enter_epoll_wait"),
    readiness!("sys_exit_epoll_pwait", "tp_sys_exit_epoll_wait", "1,024"),
    syscall!("sys_enter_epoll_pwait2", program = "tp_sys_enter_epoll_wait"),
    readiness!("sys_exit_epoll_pwait2", "tp_sys_exit_epoll_wait", "1,024"),
    syscall!("sys_enter_poll"),
    readiness!("sys_exit_poll", "tp_sys_exit_poll", "1,024"),
    syscall!("sys_enter_ppoll", program = "tp_sys_enter_poll"),
    readiness!("sys_exit_ppoll", "tp_sys_exit_poll", "1,024"),
    syscall!("sys_enter_select"),
    readiness!("sys_exit_select", "tp_sys_exit_select", "64"),
    syscall!("sys_enter_pselect6", program = "tp_sys_enter_select"),
    readiness!("sys_exit_pselect6", "tp_sys_exit_select", "64"),
    syscall!("sys_enter_read", RECV),
    syscall!("sys_exit_read", RECV),
    syscall!("sys_enter_recvfrom", RECV),
    syscall!("sys_exit_recvfrom", RECV),
    syscall!("sys_enter_recvmsg", RECV),
    syscall!("sys_exit_recvmsg", RECV),
    syscall!("sys_enter_write", SEND),
    syscall!("sys_exit_write", SEND),
    syscall!("sys_enter_sendto", SEND),
    syscall!("sys_exit_sendto", SEND),
    syscall!("sys_enter_sendmsg", SEND),
    syscall!("sys_exit_sendmsg", SEND),
];
