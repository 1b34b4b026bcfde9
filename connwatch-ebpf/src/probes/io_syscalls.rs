//! Reads and writes from syscall exits, for kernels without `sock:sock_recv_length` and
//! `sock:sock_send_length` (before 6.4): `read`/`recvfrom`/`recvmsg` and
//! `write`/`sendto`/`sendmsg` (a write's socket resolved at entry, a read's fd at exit; the
//! result at exit; tracefs offsets, checked against 6.1 and 6.18). They run for every read and write in the system, so the loader attaches them
//! only where the socket-layer tracepoints are missing. Same handling as `io.rs`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use connwatch_common::socket::{CALL_RECV, CALL_SEND, PendingCall};

use super::io::on_io;
use crate::{
    policy::Path,
    sock,
    syscall::{self, arg, ret},
};

/// A read's fd, kept for its exit.
#[inline(always)]
fn enter_recv(ctx: &TracePointContext) -> u32 {
    if !syscall::from_agent() {
        let fd = arg(ctx, 0) as i32;
        syscall::keep(PendingCall { call: CALL_RECV, fd, ptr: 0, aux: 0, aux2: 0 });
    }
    0
}

/// A write's socket, resolved at entry: writes to anything but a TCP socket are let go here.
#[inline(always)]
fn enter_send(ctx: &TracePointContext) -> u32 {
    if syscall::from_agent() {
        return 0;
    }
    let fd = arg(ctx, 0) as i32;
    if let Some(sk) = sock::sock_of_fd(fd as i64)
        && sock::tcp_endpoints(sk).is_some()
    {
        syscall::keep(PendingCall { call: CALL_SEND, fd, ptr: sk, aux: 0, aux2: 0 });
    }
    0
}

/// The call's result on the socket its entry resolved (sends), or its fd resolves to now.
#[inline(always)]
fn exit(ctx: &TracePointContext, call: u32, path: Path) -> u32 {
    let Some(pending) = syscall::take(call) else {
        return 0;
    };
    let sk = match pending.ptr {
        0 => sock::sock_of_fd(pending.fd as i64),
        sk => Some(sk),
    };
    if let Some(sk) = sk {
        on_io(sk, ret(ctx) as i32, path);
    }
    0
}

macro_rules! io_syscall {
    ($enter:ident, $exit:ident, $enter_fn:ident, $call:expr, $path:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            $enter_fn(&ctx)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $call, $path)
        }
    };
}

io_syscall!(tp_sys_enter_read, tp_sys_exit_read, enter_recv, CALL_RECV, Path::Recv);
io_syscall!(tp_sys_enter_recvfrom, tp_sys_exit_recvfrom, enter_recv, CALL_RECV, Path::Recv);
io_syscall!(tp_sys_enter_recvmsg, tp_sys_exit_recvmsg, enter_recv, CALL_RECV, Path::Recv);
io_syscall!(tp_sys_enter_write, tp_sys_exit_write, enter_send, CALL_SEND, Path::Send);
io_syscall!(tp_sys_enter_sendto, tp_sys_exit_sendto, enter_send, CALL_SEND, Path::Send);
io_syscall!(tp_sys_enter_sendmsg, tp_sys_exit_sendmsg, enter_send, CALL_SEND, Path::Send);
