//! Syscall tracepoints: arguments at their tracefs offsets, and the arguments a syscall's exit
//! needs kept from its entry.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use connwatch_common::socket::PendingCall;

use crate::{config::conf, maps::PENDING};

/// Argument `n` of a `syscalls:sys_enter_*` record.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: u32) -> u64 {
    let offset = (conf!(tracepoints.sys_enter_arg0) + 8 * n) as usize;
    // SAFETY: the loader checked this syscall's arguments sit at arg0 + 8n.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

/// The return value of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    let offset = conf!(tracepoints.sys_exit_ret) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    unsafe { ctx.read_at::<i64>(offset) }.unwrap_or(-1)
}

/// The agent's own syscalls (it polls its ring buffer constantly) are never examined.
#[inline(always)]
pub fn from_agent() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == conf!(self_tgid)
}

#[inline(always)]
pub fn keep(call: PendingCall) {
    let _ = PENDING.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

/// The arguments this thread's `call` kept at entry, removed from the map.
#[inline(always)]
pub fn take(call: u32) -> Option<PendingCall> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: a valid map value pointer; PendingCall is Copy and read whole.
    let pending = unsafe { *PENDING.get_ptr(&key)? };
    let _ = PENDING.remove(&key);
    (pending.call == call).then_some(pending)
}
