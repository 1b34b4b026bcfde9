//! Reads and writes as the application saw them: `sock:sock_recv_length` and
//! `sock:sock_send_length` (TP_PROTO(struct sock *sk, int ret, int flags), Linux 6.4+; checked
//! against 6.18). Process context: they also keep the socket's owner current. These are hot
//! paths, so reports follow the summarising policy (`policy.rs`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, raw_tracepoint, tracepoint},
    programs::{FExitContext, RawTracePointContext, TracePointContext},
};
use connwatch_common::event::{COUNTER_IO_SUMMARISED, KIND_RECV, KIND_SEND};

use crate::{
    config::conf,
    emit::{self, Observation},
    owner,
    policy::{self, Caller, Path},
    record, send_start,
    sock::{self, Health},
};

/// `-EAGAIN`: a non-blocking call with nothing to do, routine on event-driven servers.
const EAGAIN: i32 = -11;

#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    let (sk, ret) = (conf!(tracepoints.send_length_sk), conf!(tracepoints.send_length_ret));
    if let (Some(sk), Some(ret)) = (record::u64_at(&ctx, sk), record::u32_at(&ctx, ret)) {
        on_io(sk, ret as i32, Path::Send);
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
    if let (Some(sk), Some(ret)) = (record::u64_at(&ctx, sk), record::u32_at(&ctx, ret)) {
        on_io(sk, ret as i32, Path::Recv);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn raw_sock_recv_length(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0), ctx.arg(1), Path::Recv);
    0
}

/// Where the socket-layer tracepoints are missing (before 6.4) but BPF trampolines work: the
/// return of `tcp_recvmsg(struct sock *sk, ...)` and `tcp_sendmsg(struct sock *sk, ...)`, the
/// TCP calls under every read and write of a TCP socket (checked against 6.1 and 6.18), with
/// the same result the tracepoints report. The result is read with `bpf_get_func_ret` (5.17+),
/// so the argument count may differ between kernels. Instead of twelve syscall tracepoints,
/// which put every syscall of every process on the traced path.
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        on_io(ctx.arg(0), ret as i32, Path::Recv);
    }
    0
}

#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        on_io(ctx.arg(0), ret as i32, Path::Send);
    }
    0
}

#[inline(always)]
pub(super) fn on_io(sk: u64, ret: i32, path: Path) {
    let thread = bpf_get_current_pid_tgid();
    let start = match path {
        Path::Send => send_start::take(sk, thread),
        _ => send_start::NO_START,
    };
    // Routine: data moved, or none to move yet (EAGAIN: event-driven servers read and write
    // until the call would block, once per request). EOF and errors take the full look.
    let routine = ret > 0 || ret == EAGAIN;
    let bytes = ret.max(0) as u64;
    let caller = Caller::of(thread, start.started_ns);
    if routine && policy::fast_tally(sk, path, bytes, 0, &caller) {
        emit::count(COUNTER_IO_SUMMARISED, 1);
        return;
    }
    let Some(mut ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    let health = sock::health(sk);
    // Trust follows the socket as it is now, whatever state the call began in.
    let healthy_now = !policy::notable_socket(ends.state, &health);
    // A send that changed the socket itself is judged as it found the socket, at its kept
    // start; the kernel's reaction comes after.
    let (started_ns, snapshot, health) = match start.started_ns {
        0 => (caller.now, None, health),
        began => {
            let s = start.snapshot;
            ends.state = s.state;
            (began, Some(s), Health { sk_err: s.sk_err, rto_retransmits: s.rto_retransmits })
        }
    };
    let eof = matches!(path, Path::Recv) && ret == 0;
    let failed = ret < 0 && ret != EAGAIN;
    let notable = eof || failed || policy::notable_socket(ends.state, &health);
    let at = (started_ns, caller.now);
    let due = policy::tally(sk, path, bytes, notable, ends.state, 0, at, Some(healthy_now));
    let info = owner::touch(sk);
    let Some(due) = due else {
        return;
    };
    let kind = if matches!(path, Path::Recv) { KIND_RECV } else { KIND_SEND };
    if let Some((earlier, state, _)) = due.earlier {
        let obs = Observation::summary(kind, -1, 0, 0, earlier, state);
        emit::observed_as(sk, &ends, &obs, &info);
    }
    let this = due.this;
    let snapshot = snapshot.unwrap_or_else(|| sock::snapshot(sk, ends.state, health));
    let obs = Observation {
        kind,
        fd: -1,
        value: ret,
        bytes: this.bytes,
        calls: this.calls,
        via: 0,
        snapshot,
        started_ns: this.first_ns,
        ended_ns: this.last_ns,
    };
    emit::observed_as(sk, &ends, &obs, &info);
}
