//! Process-context touches that keep the owner map true: a socket's owner is whoever last
//! accepted, sent on or received from it.
//! - `sock:sock_send_length` / `sock:sock_recv_length` (TP_PROTO(struct sock *sk, int ret,
//!   int flags), Linux 6.4+; checked against 6.18).
//! - `syscalls:sys_exit_accept4` / `sys_exit_accept` (record `ret` at its tracefs offset).

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{config::conf, owner, sock};

#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    let offset = conf!(tracepoints.send_length_sk) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset) } {
        on_io(sk);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn raw_sock_send_length(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0));
    0
}

#[tracepoint]
pub fn tp_sock_recv_length(ctx: TracePointContext) -> u32 {
    let offset = conf!(tracepoints.recv_length_sk) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset) } {
        on_io(sk);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn raw_sock_recv_length(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0));
    0
}

#[inline(always)]
fn on_io(sk: u64) {
    if sock::tcp_endpoints(sk).is_some() {
        owner::touch(sk);
    }
}

#[tracepoint]
pub fn tp_sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept(&ctx)
}

#[tracepoint]
pub fn tp_sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept(&ctx)
}

/// The accepted fd's socket now belongs to the accepting process (which may differ from the
/// listener's, as in pre-forked servers). The child shares its listener's namespace and port,
/// so the listener is (re)registered too: listeners older than the agent were never seen in
/// listen(), and from now on their children have an owner before they are accepted.
#[inline(always)]
fn on_accept(ctx: &TracePointContext) -> u32 {
    let offset = conf!(tracepoints.sys_exit_ret) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(offset) }) else {
        return 0;
    };
    let Some(sk) = sock::sock_of_fd(fd) else {
        return 0;
    };
    if let Some(ends) = sock::tcp_endpoints(sk) {
        let info = owner::touch(sk);
        owner::remember_listener(sock::net(sk), ends.sport, &info.owner);
    }
    0
}
