//! Calls whose results decide what an application believes: `getsockopt(SO_ERROR)`,
//! `connect`, `accept`/`accept4` and `close`, from `syscalls:sys_enter_*`/`sys_exit_*`
//! (arguments at tracefs offsets; checked against 6.1 and 6.18), or from the exit alone where it
//! can read the call's registers. Each is reported every time: they are rare and each one is
//! evidence.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext,
};
use aya_log_ebpf::warn;
use connwatch_common::{
    event::{KIND_ACCEPT, KIND_CLOSE, KIND_CONNECT, KIND_SO_ERROR},
    socket::{CALL_CONNECT, CALL_GETSOCKOPT, PendingCall},
};

use crate::{
    emit::{self, Observation},
    established,
    maps::SOCKETS,
    owner, sock,
    syscall::{self, CallRegs, arg, ret},
};

const SOL_SOCKET: u64 = 1;
const SO_ERROR: u64 = 4;

#[tracepoint]
pub fn tp_sys_enter_getsockopt(ctx: TracePointContext) -> u32 {
    if !syscall::from_agent() && reads_so_error(arg(&ctx, 1), arg(&ctx, 2)) {
        let call = CALL_GETSOCKOPT;
        syscall::keep(PendingCall {
            call,
            fd: arg(&ctx, 0) as i32,
            ptr: arg(&ctx, 3),
            aux: 0,
            aux2: 0,
        });
    }
    0
}

/// The value the kernel copied to the caller: exactly what the application saw (a second read
/// after an error sees 0, because the first one cleared it).
#[tracepoint]
pub fn tp_sys_exit_getsockopt(ctx: TracePointContext) -> u32 {
    let Some(call) = syscall::take(CALL_GETSOCKOPT) else {
        return 0;
    };
    if ret(&ctx) == 0 {
        so_error_read(call.fd as i64, call.ptr);
    }
    0
}

/// A `getsockopt(fd, SOL_SOCKET, SO_ERROR, optval, ...)` that returned 0: reports the value it
/// copied to `optval`.
#[inline(always)]
pub(super) fn so_error_read(fd: i64, optval: u64) {
    // SAFETY: bpf_probe_read_user checks the user address and fails instead of faulting.
    if let Ok(value) = unsafe { bpf_probe_read_user(optval as *const i32) } {
        report(fd, KIND_SO_ERROR, value);
    }
}

/// The exit of a `getsockopt` that returned `result`, its arguments read from the registers it
/// was made with (no entry program: [`CallRegs`]).
#[inline(always)]
pub(super) fn getsockopt_at_exit(result: i64) {
    if result != 0 || syscall::from_agent() {
        return;
    }
    let regs = CallRegs::current();
    if reads_so_error(regs.arg(1), regs.arg(2)) {
        so_error_read(regs.arg(0) as i32 as i64, regs.arg(3));
    }
}

/// Where the registers are readable: the exit alone sees the whole call.
#[tracepoint]
pub fn tp_sys_exit_getsockopt_regs(ctx: TracePointContext) -> u32 {
    getsockopt_at_exit(ret(&ctx));
    0
}

/// Whether a `getsockopt` with these arguments reads the pending error.
#[inline(always)]
pub(super) fn reads_so_error(level: u64, optname: u64) -> bool {
    level == SOL_SOCKET && optname == SO_ERROR
}

#[tracepoint]
pub fn tp_sys_enter_connect(ctx: TracePointContext) -> u32 {
    if !syscall::from_agent() {
        syscall::keep(PendingCall {
            call: CALL_CONNECT,
            fd: arg(&ctx, 0) as i32,
            ptr: 0,
            aux: 0,
            aux2: 0,
        });
    }
    0
}

/// 0, -EINPROGRESS (a non-blocking attempt under way) or the failure.
#[tracepoint]
pub fn tp_sys_exit_connect(ctx: TracePointContext) -> u32 {
    if let Some(call) = syscall::take(CALL_CONNECT) {
        report(call.fd as i64, KIND_CONNECT, ret(&ctx) as i32);
    }
    0
}

/// The exit of a `connect` that returned `result`, its descriptor read from the registers it
/// was made with (no entry program: [`CallRegs`]).
#[inline(always)]
pub(super) fn connect_at_exit(result: i64) {
    if !syscall::from_agent() {
        report(CallRegs::current().arg(0) as i32 as i64, KIND_CONNECT, result as i32);
    }
}

/// Where the registers are readable: the exit alone sees the whole call.
#[tracepoint]
pub fn tp_sys_exit_connect_regs(ctx: TracePointContext) -> u32 {
    connect_at_exit(ret(&ctx));
    0
}

/// Attached to `sys_exit_accept` as well.
#[tracepoint]
pub fn tp_sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept(&ctx, ret(&ctx));
    0
}

/// The accepted socket now belongs to the accepting process (which may differ from the
/// listener's, as in pre-forked servers). The child shares its listener's namespace and port,
/// so the listener is (re)registered too: listeners older than the agent were never seen in
/// listen(), and from now on their children have an owner before they are accepted.
#[inline(always)]
pub(super) fn on_accept<C: EbpfContext>(ctx: &C, fd: i64) {
    if syscall::from_agent() || fd < 0 {
        return;
    }
    let Some(sk) = sock::sock_of_fd(fd) else {
        // accept() only returns sockets: the walk's offsets must be wrong for this kernel.
        warn!(ctx, "accepted fd {} did not resolve to a socket: owners will be missing", fd);
        return;
    };
    let entry = SOCKETS.get_ptr_mut(&sk);
    let Some(ends) = sock::endpoints_of(sk, entry) else {
        return;
    };
    let info = established::call_returns(sk, entry);
    owner::remember_listener(sock::net(sk), ends.sport, &info.owner);
    let obs = Observation::single(KIND_ACCEPT, sk, &ends, fd as i32, 0);
    emit::observed_as(sk, &ends, &obs, &info);
}

/// The application lets go of its descriptor (at entry: the fd still resolves). Only the last
/// reference to the open file closes the connection: after fork(), dup() or a descriptor
/// passed over a Unix socket, a close by one holder leaves the others (and the owner) as they
/// were; the record says how many references remain.
#[tracepoint]
pub fn tp_sys_enter_close(ctx: TracePointContext) -> u32 {
    on_close(arg(&ctx, 0) as i32 as i64);
    0
}

#[inline(always)]
pub(super) fn on_close(fd: i64) {
    if syscall::from_agent() {
        return;
    }
    let Some(file) = sock::file_of_fd(fd) else {
        return;
    };
    let Some(sk) = sock::sock_of_file(file) else {
        return;
    };
    let entry = SOCKETS.get_ptr_mut(&sk);
    let Some(ends) = sock::endpoints_of(sk, entry) else {
        return;
    };
    let others = (sock::file_references(file) - 1).clamp(0, i32::MAX as i64) as i32;
    let obs = Observation::single(KIND_CLOSE, sk, &ends, fd as i32, others);
    let info = match others {
        0 => owner::touch_closed(sk, entry, obs.snapshot.state),
        _ => owner::known_in(sk, entry),
    };
    emit::observed_as(sk, &ends, &obs, &info);
}

/// Reports call `kind` on `fd` with its result, if `fd` is a TCP socket.
#[inline(always)]
pub(super) fn report(fd: i64, kind: u8, value: i32) {
    let Some(sk) = sock::sock_of_fd(fd) else {
        return;
    };
    let entry = SOCKETS.get_ptr_mut(&sk);
    if let Some(ends) = sock::endpoints_of(sk, entry) {
        let obs = Observation::single(kind, sk, &ends, fd as i32, value);
        let info = match kind {
            KIND_CONNECT => established::call_returns(sk, entry),
            _ => owner::touch_in(sk, entry, 0),
        };
        emit::observed_as(sk, &ends, &obs, &info);
    }
}
