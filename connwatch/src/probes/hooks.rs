//! The catalogue of kernel hooks and the mechanisms each can be attached with.
//!
//! A hook lists its variants in order of preference; the loader attaches the first that works
//! on the running kernel. The kernel's own events also come as kprobe and fentry variants on
//! the functions that fire their tracepoints, and the syscalls as fentry and fexit variants on
//! the syscalls' own functions: same handler, same events, whichever runs.

use std::fmt;

use connwatch_common::event;

/// How a program is attached to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT`: the tracepoint's arguments, no record assembled.
    RawTracepoint,
    /// `BPF_PROG_TYPE_TRACING` at a function's entry (BPF trampoline; Linux 5.5+, needs BTF).
    Fentry,
    /// `BPF_PROG_TYPE_TRACING` at a function's return, with its result (as fentry).
    Fexit,
    /// `BPF_PROG_TYPE_TRACEPOINT`: the record at tracefs `format` offsets.
    Tracepoint,
    /// `BPF_PROG_TYPE_KPROBE` at a function's entry (CONFIG_KPROBES).
    Kprobe,
}

impl Mechanism {
    pub const fn name(self) -> &'static str {
        match self {
            Self::RawTracepoint => "raw_tracepoint",
            Self::Fentry => "fentry",
            Self::Fexit => "fexit",
            Self::Tracepoint => "tracepoint",
            Self::Kprobe => "kprobe",
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
    /// Program (function) name in connwatch-ebpf; for fentry and fexit, the first of
    /// `per_function`.
    pub program: &'static str,
    /// What this variant does not do that the first one does (a smaller bound, say).
    pub gives_up: Option<&'static str>,
    /// The kernel functions a kprobe, fentry or fexit variant attaches to (none for
    /// tracepoints).
    pub functions: &'static [&'static str],
    /// fentry and fexit only: the program for each of `functions`, in order (the kernel binds
    /// such a program to one function when it loads it); empty otherwise.
    pub per_function: &'static [&'static str],
    /// A syscall exit program that reads the call's arguments from the registers it was made
    /// with (x86-64, Linux 5.15), or a trampoline on the syscall's own function: its hook's
    /// entry program (`Hook::keeps_args_for`) is not attached.
    pub args_at_exit: bool,
    /// A raw tracepoint variant's second program, for the hits the kernel skips this one on.
    pub understudy: Option<Understudy>,
}

/// A program attached after a raw tracepoint variant's own (the lead) that handles the hits
/// the kernel skips the lead on: those of a softirq that interrupted it on its CPU. It counts
/// each in the `COVERED` map's `slot` (connwatch-ebpf's `understudy` module).
#[derive(Clone, Copy, Debug)]
pub struct Understudy {
    pub program: &'static str,
    pub slot: u32,
}

impl Variant {
    /// Every program this variant loads.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> {
        let one = self.per_function.is_empty().then_some(self.program);
        one.into_iter().chain(self.per_function.iter().copied())
    }

    /// The same attachment with a program that returns at once in place of each of its own
    /// (`--hooks-only`: what reaching the hook costs), or why the mechanism has none.
    pub fn reaching_only(self) -> Result<Self, &'static str> {
        let program = match self.mechanism {
            Mechanism::RawTracepoint => "reach_raw",
            Mechanism::Tracepoint => "reach_tp",
            Mechanism::Kprobe => "reach_kprobe",
            Mechanism::Fentry | Mechanism::Fexit => {
                return Err(
                    "--hooks-only has no empty fentry or fexit program (the kernel binds each to one \
                     function)",
                );
            }
        };
        let understudy = self.understudy.map(|u| Understudy { program, ..u });
        Ok(Self { program, understudy, ..self })
    }
}

const fn raw(program: &'static str) -> Variant {
    Variant {
        mechanism: Mechanism::RawTracepoint,
        program,
        gives_up: None,
        functions: &[],
        per_function: &[],
        args_at_exit: false,
        understudy: None,
    }
}

const fn tp(program: &'static str) -> Variant {
    Variant {
        mechanism: Mechanism::Tracepoint,
        program,
        gives_up: None,
        functions: &[],
        per_function: &[],
        args_at_exit: false,
        understudy: None,
    }
}

/// A raw tracepoint variant with an understudy.
const fn raw_understudied(program: &'static str, understudy: &'static str, slot: u32) -> Variant {
    Variant { understudy: Some(Understudy { program: understudy, slot }), ..raw(program) }
}

/// A syscall exit's classic-tracepoint variant that reads the call's arguments at exit.
const fn tp_args_at_exit(program: &'static str) -> Variant {
    Variant { args_at_exit: true, ..tp(program) }
}

/// A smaller classic-tracepoint variant, for kernels whose verifier refuses the full one.
const fn tp_reduced(program: &'static str, gives_up: &'static str) -> Variant {
    Variant { gives_up: Some(gives_up), ..tp(program) }
}

/// One kprobe program on each of `functions`.
const fn kprobe(program: &'static str, functions: &'static [&'static str]) -> Variant {
    Variant {
        mechanism: Mechanism::Kprobe,
        program,
        gives_up: None,
        functions,
        per_function: &[],
        args_at_exit: false,
        understudy: None,
    }
}

/// One fentry program per function: `programs[i]` on `functions[i]`.
const fn fentry(functions: &'static [&'static str], programs: &'static [&'static str]) -> Variant {
    trampoline(Mechanism::Fentry, functions, programs)
}

/// One fexit program per function, as [`fentry`].
const fn fexit(functions: &'static [&'static str], programs: &'static [&'static str]) -> Variant {
    trampoline(Mechanism::Fexit, functions, programs)
}

const fn trampoline(
    mechanism: Mechanism,
    functions: &'static [&'static str],
    programs: &'static [&'static str],
) -> Variant {
    assert!(functions.len() == programs.len() && !programs.is_empty());
    Variant {
        mechanism,
        program: programs[0],
        gives_up: None,
        functions,
        per_function: programs,
        args_at_exit: false,
        understudy: None,
    }
}

/// A syscall's own entry function (`__x64_sys_*`) with a BPF trampoline program that sees the
/// call whole: no entry program needed (`Hook::keeps_args_for`), and no `syscalls:*` tracepoint
/// enabled, which would put every syscall of every process on the traced slow path.
const fn at_syscall_function(
    mechanism: Mechanism,
    function: &'static [&'static str],
    program: &'static [&'static str],
) -> Variant {
    Variant { args_at_exit: true, ..trampoline(mechanism, function, program) }
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
    /// In order of preference (see [`kernel_hook`] for the kernel's own events).
    pub variants: &'static [Variant],
    /// A stand-in, attached only where the hook with this id could not be.
    pub instead_of: Option<&'static str>,
    /// A syscall entry that keeps arguments for the exit hook with this id: attached only where
    /// that hook is, in a variant that does not read them at exit itself. Listed after it.
    pub keeps_args_for: Option<&'static str>,
}

impl Hook {
    pub fn id(&self) -> String {
        format!("{}:{}", self.category, self.name)
    }
}

/// A syscall tracepoint, whose program is `tp_<name>` unless named: classic only (raw tracepoints exist
/// just for all syscalls at once, which would run on every syscall in the system).
macro_rules! syscall {
    ($name:literal, $instead_of:expr) => {
        syscall!($name, concat!("tp_", $name), $instead_of, None)
    };
    ($name:literal, $program:expr, $instead_of:expr, $keeps_args_for:expr) => {
        Hook {
            category: "syscalls",
            name: $name,
            role: Role::Observation,
            variants: &[tp($program)],
            instead_of: $instead_of,
            keeps_args_for: $keeps_args_for,
        }
    };
}

/// A syscall hook served first by a trampoline program on the syscall's own function (fentry
/// where the arguments suffice, fexit where the result counts), then by its tracepoint, whose
/// program is `tp_<name>` unless named (a family served by one program, loaded once). With
/// `regs`, a tracepoint program that reads the call's arguments at exit (`tp_<name>_regs`,
/// x86-64, Linux 5.15) comes between them: the hook's entry program is attached only where
/// neither that nor the trampoline can be.
macro_rules! syscall_function {
    (@hook $name:literal, $($variant:expr),+) => {
        Hook {
            category: "syscalls",
            name: $name,
            role: Role::Observation,
            variants: &[$($variant),+],
            instead_of: None,
            keeps_args_for: None,
        }
    };
    ($name:literal, $mechanism:ident $function:literal => $program:literal, regs) => {
        syscall_function!(@hook $name,
            at_syscall_function(Mechanism::$mechanism, &[$function], &[$program]),
            tp_args_at_exit(concat!("tp_", $name, "_regs")),
            tp(concat!("tp_", $name)))
    };
    ($name:literal, $mechanism:ident $function:literal => $program:literal) => {
        syscall_function!($name, $mechanism $function => $program, concat!("tp_", $name))
    };
    ($name:literal, $mechanism:ident $function:literal => $program:literal, $tracepoint:expr) => {
        syscall_function!(@hook $name,
            at_syscall_function(Mechanism::$mechanism, &[$function], &[$program]),
            tp($tracepoint))
    };
}

/// A readiness call's entry (`sys_enter_*` of epoll_wait, poll, select and their siblings),
/// whose program keeps the arguments for `$exit` where that reads them only from its entry.
macro_rules! readiness_entry {
    ($name:literal, $program:literal, $exit:literal) => {
        syscall!($name, $program, None, Some(concat!("syscalls:", $exit)))
    };
}

/// A readiness result (`sys_exit_*` of epoll_wait, poll, select and their siblings): the
/// `bpf_loop` program that examines `$all` entries (Linux 5.17 on), first in the variant that
/// reads the call's arguments at exit (x86-64, Linux 5.15), then in the one whose entry program
/// keeps them; then unrolled loops with smaller bounds where a kernel lacks the helper or its
/// verifier refuses them.
macro_rules! readiness {
    ($name:literal, $program:literal, $all:literal, fexit $function:literal => $fexit:literal) => {
        Hook {
            category: "syscalls",
            name: $name,
            role: Role::Observation,
            variants: &[
                at_syscall_function(Mechanism::Fexit, &[$function], &[$fexit]),
                tp_args_at_exit(concat!($program, "_regs")),
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
            keeps_args_for: None,
        }
    };
}

/// One of the kernel's own events: its raw tracepoint, fentry on the functions that fire it,
/// its classic tracepoint, then kprobes on those functions. Raw tracepoints and fentry are
/// direct calls into the program and need no tracefs record layout; classic tracepoints
/// assemble a record first and, like kprobes, are skipped while another BPF program runs on
/// the CPU. A kprobe adds an ftrace (or breakpoint) detour to every hit. Measured per hit
/// with `cargo xtask bench` (docs/kernels.md).
macro_rules! kernel_hook {
    (
        $category:literal, $name:literal, $role:expr, raw: $raw:literal,
        $(understudy: $slot:ident,)? $(tracepoint: $tp:literal,)?
        kprobe: $kprobe:literal on [$($function:literal),+], fentry: [$($fentry:literal),+]
    ) => {
        Hook {
            category: $category,
            name: $name,
            role: $role,
            variants: &[
                kernel_hook!(@raw $raw $(, $slot)?),
                fentry(&[$($function),+], &[$($fentry),+]),
                $(tp($tp),)?
                kprobe($kprobe, &[$($function),+]),
            ],
            instead_of: None,
            keeps_args_for: None,
        }
    };
    (@raw $raw:literal) => { raw($raw) };
    (@raw $raw:literal, $slot:ident) => {
        raw_understudied($raw, concat!($raw, "_understudy"), event::$slot)
    };
}

const RECV: Option<&str> = Some("sock:sock_recv_length");
const SEND: Option<&str> = Some("sock:sock_send_length");

pub static HOOKS: &[Hook] = &[
    kernel_hook!("sock", "inet_sock_set_state", Role::Events,
        raw: "raw_inet_sock_set_state", understudy: UNDERSTUDY_STATE, tracepoint: "tp_inet_sock_set_state",
        kprobe: "kp_inet_sk_state_store" on ["inet_sk_state_store", "inet_sk_set_state"],
        fentry: ["fentry_inet_sk_state_store", "fentry_inet_sk_set_state"]),
    kernel_hook!("tcp", "tcp_receive_reset", Role::Events,
        raw: "raw_tcp_receive_reset", understudy: UNDERSTUDY_RECEIVE_RESET, tracepoint: "tp_tcp_receive_reset",
        kprobe: "kp_tcp_reset" on ["tcp_reset"], fentry: ["fentry_tcp_reset"]),
    kernel_hook!("tcp", "tcp_send_reset", Role::Events,
        raw: "raw_tcp_send_reset", understudy: UNDERSTUDY_SEND_RESET, tracepoint: "tp_tcp_send_reset",
        kprobe: "kp_tcp_send_reset" on ["tcp_v4_send_reset", "tcp_v6_send_reset", "tcp_send_active_reset"],
        fentry: ["fentry_tcp_v4_send_reset", "fentry_tcp_v6_send_reset", "fentry_tcp_send_active_reset"]),
    kernel_hook!("tcp", "tcp_retransmit_skb", Role::Events,
        raw: "raw_tcp_retransmit_skb", understudy: UNDERSTUDY_RETRANSMIT, tracepoint: "tp_tcp_retransmit_skb",
        kprobe: "kp_tcp_retransmit_skb" on ["tcp_retransmit_skb"],
        fentry: ["fentry_tcp_retransmit_skb"]),
    // The classic record has no socket address, so it cannot be joined to a socket.
    kernel_hook!("sock", "inet_sk_error_report", Role::Events,
        raw: "raw_inet_sk_error_report", understudy: UNDERSTUDY_ERROR_REPORT,
        kprobe: "kp_sk_error_report" on ["sk_error_report"], fentry: ["fentry_sk_error_report"]),
    Hook {
        category: "sock",
        name: "sock_send_length",
        role: Role::Observation,
        variants: &[
            raw("raw_sock_send_length"),
            fexit(&["tcp_sendmsg"], &["fexit_tcp_sendmsg"]),
            tp("tp_sock_send_length"),
        ],
        instead_of: None,
        keeps_args_for: None,
    },
    kernel_hook!("tcp", "tcp_destroy_sock", Role::Precision(
            "the kernel's end-of-life marker (identities end at the last close in CLOSE \
             instead, or when the socket tables' LRU pushes them out)",
        ),
        raw: "raw_tcp_destroy_sock", understudy: UNDERSTUDY_DESTROY,
        kprobe: "kp_tcp_destroy_sock" on ["tcp_v4_destroy_sock"],
        fentry: ["fentry_tcp_destroy_sock"]),
    Hook {
        category: "sock",
        name: "sock_recv_length",
        role: Role::Observation,
        variants: &[
            raw("raw_sock_recv_length"),
            fexit(&["tcp_recvmsg"], &["fexit_tcp_recvmsg"]),
            tp("tp_sock_recv_length"),
        ],
        instead_of: None,
        keeps_args_for: None,
    },
    syscall_function!("sys_exit_accept4", Fexit "__x64_sys_accept4" => "fexit_sys_accept4"),
    syscall_function!("sys_exit_accept", Fexit "__x64_sys_accept" => "fexit_sys_accept",
        "tp_sys_exit_accept4"),
    syscall_function!("sys_exit_connect", Fexit "__x64_sys_connect" => "fexit_sys_connect", regs),
    syscall!("sys_enter_connect", "tp_sys_enter_connect", None, Some("syscalls:sys_exit_connect")),
    syscall_function!("sys_enter_close", Fentry "__x64_sys_close" => "fentry_sys_close"),
    syscall_function!("sys_exit_getsockopt", Fexit "__x64_sys_getsockopt" => "fexit_sys_getsockopt",
        regs),
    syscall!(
        "sys_enter_getsockopt",
        "tp_sys_enter_getsockopt",
        None,
        Some("syscalls:sys_exit_getsockopt")
    ),
    syscall_function!("sys_enter_epoll_ctl", Fentry "__x64_sys_epoll_ctl" => "fentry_sys_epoll_ctl"),
    readiness!("sys_exit_epoll_wait", "tp_sys_exit_epoll_wait", "1,024",
        fexit "__x64_sys_epoll_wait" => "fexit_sys_epoll_wait"),
    readiness_entry!("sys_enter_epoll_wait", "tp_sys_enter_epoll_wait", "sys_exit_epoll_wait"),
    readiness!("sys_exit_epoll_pwait", "tp_sys_exit_epoll_wait", "1,024",
        fexit "__x64_sys_epoll_pwait" => "fexit_sys_epoll_pwait"),
    readiness_entry!("sys_enter_epoll_pwait", "tp_sys_enter_epoll_wait", "sys_exit_epoll_pwait"),
    readiness!("sys_exit_epoll_pwait2", "tp_sys_exit_epoll_wait", "1,024",
        fexit "__x64_sys_epoll_pwait2" => "fexit_sys_epoll_pwait2"),
    readiness_entry!("sys_enter_epoll_pwait2", "tp_sys_enter_epoll_wait", "sys_exit_epoll_pwait2"),
    readiness!("sys_exit_poll", "tp_sys_exit_poll", "1,024",
        fexit "__x64_sys_poll" => "fexit_sys_poll"),
    readiness_entry!("sys_enter_poll", "tp_sys_enter_poll", "sys_exit_poll"),
    readiness!("sys_exit_ppoll", "tp_sys_exit_poll", "1,024",
        fexit "__x64_sys_ppoll" => "fexit_sys_ppoll"),
    readiness_entry!("sys_enter_ppoll", "tp_sys_enter_poll", "sys_exit_ppoll"),
    readiness!("sys_exit_select", "tp_sys_exit_select", "64",
        fexit "__x64_sys_select" => "fexit_sys_select"),
    readiness_entry!("sys_enter_select", "tp_sys_enter_select", "sys_exit_select"),
    readiness!("sys_exit_pselect6", "tp_sys_exit_select", "64",
        fexit "__x64_sys_pselect6" => "fexit_sys_pselect6"),
    readiness_entry!("sys_enter_pselect6", "tp_sys_enter_select", "sys_exit_pselect6"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaching_only_swaps_every_program_and_keeps_the_attachment() {
        let state = HOOKS.iter().find(|h| h.name == "inet_sock_set_state").unwrap();
        let [raw, fentry, tracepoint, kprobe] = state.variants else { panic!("{state:?}") };
        let empty = raw.reaching_only().unwrap();
        assert_eq!(
            (empty.program, empty.understudy.map(|u| u.program)),
            ("reach_raw", Some("reach_raw"))
        );
        assert_eq!(empty.understudy.map(|u| u.slot), raw.understudy.map(|u| u.slot));
        assert_eq!(tracepoint.reaching_only().unwrap().program, "reach_tp");
        let empty = kprobe.reaching_only().unwrap();
        assert_eq!((empty.program, empty.functions), ("reach_kprobe", kprobe.functions));
        assert!(fentry.reaching_only().unwrap_err().contains("fentry"));
    }
}
