//! Reads and writes as the application saw them: `sock:sock_recv_length` and
//! `sock:sock_send_length` (TP_PROTO(struct sock *sk, int ret, int flags), Linux 6.4+; checked
//! against 6.18). Process context: they also keep the socket's owner current. These are hot
//! paths, so reports follow the summarising policy (`policy.rs`).

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use connwatch_common::event::{KIND_RECV, KIND_SEND};

use crate::{
    config::conf,
    emit::{self, Observation},
    owner,
    policy::{self, Path},
    sock,
};

/// `-EAGAIN`: a non-blocking call with nothing to do, routine on event-driven servers.
const EAGAIN: i32 = -11;

#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    let (sk, ret) = (conf!(tracepoints.send_length_sk), conf!(tracepoints.send_length_ret));
    // SAFETY: offsets from this kernel's tracefs format file.
    if let (Ok(sk), Ok(ret)) =
        unsafe { (ctx.read_at::<u64>(sk as usize), ctx.read_at::<i32>(ret as usize)) }
    {
        on_io(sk, ret, Path::Send);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn raw_sock_send_length(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0), ctx.arg(1), Path::Send);
    0
}

#[tracepoint]
pub fn tp_sock_recv_length(ctx: TracePointContext) -> u32 {
    let (sk, ret) = (conf!(tracepoints.recv_length_sk), conf!(tracepoints.recv_length_ret));
    // SAFETY: offsets from this kernel's tracefs format file.
    if let (Ok(sk), Ok(ret)) =
        unsafe { (ctx.read_at::<u64>(sk as usize), ctx.read_at::<i32>(ret as usize)) }
    {
        on_io(sk, ret, Path::Recv);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn raw_sock_recv_length(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0), ctx.arg(1), Path::Recv);
    0
}

#[inline(always)]
pub(super) fn on_io(sk: u64, ret: i32, path: Path) {
    let Some(ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    let health = sock::health(sk);
    let eof = matches!(path, Path::Recv) && ret == 0;
    let failed = ret < 0 && ret != EAGAIN;
    let notable = eof || failed || policy::notable_socket(ends.state, &health);
    let bytes = if ret > 0 { ret as u64 } else { 0 };
    let Some((calls, bytes)) = policy::tally(sk, path, bytes, notable, ends.state, 0) else {
        // Not reported now, but the caller is still the owner.
        owner::touch(sk);
        return;
    };
    let kind = if matches!(path, Path::Recv) { KIND_RECV } else { KIND_SEND };
    let snapshot = sock::snapshot(sk, ends.state, health);
    let obs = Observation { kind, fd: -1, value: ret, bytes, calls, via: 0, snapshot };
    emit::observed(sk, ends, &obs);
}
