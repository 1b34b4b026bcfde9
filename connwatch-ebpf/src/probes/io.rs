//! Reads and writes as the application saw them: `sock:sock_recv_length` and
//! `sock:sock_send_length` (TP_PROTO(struct sock *sk, int ret, int flags), Linux 6.4+; checked
//! against 6.18). Process context: they also keep the socket's owner current. These are hot
//! paths, so reports follow the summarising policy (`policy.rs`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, raw_tracepoint, tracepoint},
    programs::{FExitContext, RawTracePointContext, TracePointContext},
};
use connwatch_common::{
    event::{COUNTER_IO_SUMMARISED, KIND_RECV, KIND_SEND, SockSnapshot},
    socket::SendStart,
    tcp::TCP_ESTABLISHED,
};

use crate::{
    config::conf,
    emit::{self, Observation},
    maps::SEND_START,
    owner,
    policy::{self, Caller, Path},
    record,
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

/// `tcp:tcp_sendmsg_locked` (TP_PROTO(const struct sock *sk, const struct msghdr *msg, const
/// struct sk_buff *skb, int size_goal), Linux 6.10+; checked against 6.18): runs inside a send
/// before any data moves, once per segment. Its first hit in a call keeps the socket as the
/// send found it, so the send is judged by the state at its start (a write into CLOSE_WAIT
/// provokes the RST that closes the socket before the call returns). Raw only: the classic
/// record carries no socket address.
#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn raw_tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    on_sendmsg_locked(ctx.arg(0));
    0
}

// The function itself, `tcp_sendmsg_locked(struct sock *sk, struct msghdr *msg, size_t size)`
// (on every kernel connwatch runs on; entered once per call, before any data moves).
socket_functions! {
    on_sendmsg_locked;
    kprobe kp_tcp_sendmsg_locked;
    fentry fentry_tcp_sendmsg_locked on "tcp_sendmsg_locked";
}

#[inline(always)]
fn on_sendmsg_locked(sk: u64) {
    let Some(slot) = SEND_START.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    let slot = unsafe { &mut *slot };
    let thread = bpf_get_current_pid_tgid();
    if slot.sk == sk && slot.pid_tgid == thread {
        return; // A later segment of the same call, or its syscall's entry kept it already.
    }
    keep_in(slot, sk, thread);
}

/// Keeps `sk` as the current thread's send finds it, in this CPU's slot, for the send's end
/// (`take_send_start`) to judge the call by; false if `sk` is not a TCP socket. Called from
/// `tcp_sendmsg_locked`, or from the send syscalls' entry where that tracepoint is missing
/// (a send that sleeps and wakes on another CPU is then judged by its end, as without either).
#[inline(always)]
pub(super) fn keep_send_start(sk: u64) -> bool {
    let Some(slot) = SEND_START.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    keep_in(unsafe { &mut *slot }, sk, bpf_get_current_pid_tgid())
}

/// [`keep_send_start`] into this CPU's `slot`, for `thread`.
#[inline(always)]
fn keep_in(slot: &mut SendStart, sk: u64, thread: u64) -> bool {
    // A trusted socket is ESTABLISHED with no error and no timeout: nothing to read.
    let snapshot = if policy::trusted(sk) {
        SockSnapshot::of_state(TCP_ESTABLISHED)
    } else {
        let Some(ends) = sock::tcp_endpoints(sk) else {
            return false;
        };
        sock::snapshot(sk, ends.state, sock::health(sk))
    };
    *slot = SendStart { pid_tgid: thread, sk, started_ns: owner::now(), snapshot };
    true
}

/// No start kept: `started_ns` 0.
const NO_START: SendStart =
    SendStart { pid_tgid: 0, sk: 0, started_ns: 0, snapshot: SockSnapshot::of_state(0) };

/// The start this CPU kept for `thread`'s send on `sk`, taken (cleared), or
/// [`NO_START`]. A plain value, not an `Option`: the compiler may copy a `None`'s undefined
/// payload through registers, and the verifier refuses to read a register never written
/// (`R9 !read_ok`, which kept the raw and fexit send programs from loading).
#[inline(always)]
fn take_send_start(sk: u64, thread: u64) -> SendStart {
    let Some(slot) = SEND_START.get_ptr_mut(0) else {
        return NO_START;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    let slot = unsafe { &mut *slot };
    if slot.sk != sk || slot.pid_tgid != thread {
        return NO_START;
    }
    slot.sk = 0;
    *slot
}

#[inline(always)]
pub(super) fn on_io(sk: u64, ret: i32, path: Path) {
    let thread = bpf_get_current_pid_tgid();
    let start = match path {
        Path::Send => take_send_start(sk, thread),
        _ => NO_START,
    };
    // Routine: data moved, or none to move yet (EAGAIN: event-driven servers read and write
    // until the call would block, once per request). EOF and errors take the full look.
    let routine = ret > 0 || ret == EAGAIN;
    let bytes = ret.max(0) as u64;
    // A send kept at its start is tallied at that time: one clock read per send, not two.
    let caller = match start.started_ns {
        0 => Caller::of(thread, 0),
        began => Caller::at(thread, began, began),
    };
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
    let mut snapshot = None;
    // The hit's time, or a send's start where it was kept.
    let started_ns = caller.now;
    if start.started_ns != 0 {
        // Judged as the call found the socket; the kernel's reaction comes after.
        ends.state = start.snapshot.state;
        snapshot = Some(start.snapshot);
    }
    let health = match snapshot {
        Some(s) => Health { sk_err: s.sk_err, rto_retransmits: s.rto_retransmits },
        None => health,
    };
    let eof = matches!(path, Path::Recv) && ret == 0;
    let failed = ret < 0 && ret != EAGAIN;
    let notable = eof || failed || policy::notable_socket(ends.state, &health);
    let due = policy::tally(sk, path, bytes, notable, ends.state, 0, started_ns, Some(healthy_now));
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
    let mut snapshot = snapshot.unwrap_or_else(|| sock::snapshot(sk, ends.state, health));
    if snapshot.srtt_us == 0 {
        snapshot.srtt_us = sock::srtt_us(sk);
    }
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
