//! Reads and writes from syscall exits, for kernels without `sock:sock_recv_length` and
//! `sock:sock_send_length` (before 6.4): `read`/`recvfrom`/`recvmsg` and
//! `write`/`sendto`/`sendmsg` (fd at entry, result at exit; tracefs offsets, checked against
//! 6.1 and 6.18). They run for every read and write in the system, so the loader attaches them
//! only where the socket-layer tracepoints are missing. Same handling as `io.rs`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use connwatch_common::socket::{CALL_RECV, CALL_SEND, PendingCall};

use super::io::on_io;
use crate::{
    policy::Path,
    sock,
    syscall::{self, arg, ret},
};

#[inline(always)]
fn enter(ctx: &TracePointContext, call: u32) -> u32 {
    if !syscall::from_agent() {
        syscall::keep(PendingCall { call, fd: arg(ctx, 0) as i32, ptr: 0, aux: 0, aux2: 0 });
    }
    0
}

#[inline(always)]
fn exit(ctx: &TracePointContext, call: u32, path: Path) -> u32 {
    let Some(pending) = syscall::take(call) else {
        return 0;
    };
    if let Some(sk) = sock::sock_of_fd(pending.fd as i64) {
        on_io(sk, ret(ctx) as i32, path);
    }
    0
}

macro_rules! io_syscall {
    ($enter:ident, $exit:ident, $call:expr, $path:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(&ctx, $call)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $call, $path)
        }
    };
}

io_syscall!(tp_sys_enter_read, tp_sys_exit_read, CALL_RECV, Path::Recv);
io_syscall!(tp_sys_enter_recvfrom, tp_sys_exit_recvfrom, CALL_RECV, Path::Recv);
io_syscall!(tp_sys_enter_recvmsg, tp_sys_exit_recvmsg, CALL_RECV, Path::Recv);
io_syscall!(tp_sys_enter_write, tp_sys_exit_write, CALL_SEND, Path::Send);
io_syscall!(tp_sys_enter_sendto, tp_sys_exit_sendto, CALL_SEND, Path::Send);
io_syscall!(tp_sys_enter_sendmsg, tp_sys_exit_sendmsg, CALL_SEND, Path::Send);
