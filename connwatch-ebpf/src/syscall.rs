//! Syscall tracepoints: arguments at their tracefs offsets, the arguments a syscall's exit
//! needs kept from its entry, or read at its exit from the registers the call was made with.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    programs::TracePointContext,
};
use connwatch_common::socket::PendingCall;

use crate::{config::conf, maps::PENDING, record};

/// Argument `n` of a `syscalls:sys_enter_*` record.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: u32) -> u64 {
    // The loader checked this syscall's arguments sit at arg0 + 8n.
    record::u64_at(ctx, conf!(tracepoints.sys_enter_arg0) + 8 * n).unwrap_or(0)
}

/// The return value of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    record::u64_at(ctx, conf!(tracepoints.sys_exit_ret)).map_or(-1, |ret| ret as i64)
}

/// The user registers the current thread entered its syscall with (`bpf_task_pt_regs`, Linux
/// 5.15). A syscall leaves its argument registers as it found them, so an exit program can read
/// its arguments here and needs no entry program: one hit per call instead of two. x86-64 only
/// (arm64 overwrites its first argument with the result); elsewhere the loader keeps arguments
/// at entry instead. Always a 64-bit call's registers: x86-64 kernels do not run syscall
/// tracepoints for 32-bit callers (`ARCH_TRACE_IGNORE_COMPAT_SYSCALLS`), whose arguments sit
/// in other registers, and the trampolines sit on the 64-bit entry points.
pub struct CallRegs(*const pt_regs);

impl CallRegs {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: helpers; the verifier types both results (a trusted task, its pt_regs).
        Self(unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs)
    }

    /// Argument `n` (0 to 3) of the syscall.
    #[cfg(bpf_target_arch = "x86_64")]
    #[inline(always)]
    pub fn arg(&self, n: u32) -> u64 {
        // SAFETY: a pointer the kernel typed as `struct pt_regs`; the verifier checks each load
        // against that type.
        unsafe {
            match n {
                0 => (*self.0).rdi,
                1 => (*self.0).rsi,
                2 => (*self.0).rdx,
                _ => (*self.0).r10,
            }
        }
    }

    /// Never loaded off x86-64 (the loader does not offer these variants there).
    #[cfg(not(bpf_target_arch = "x86_64"))]
    #[inline(always)]
    pub fn arg(&self, _n: u32) -> u64 {
        0
    }

    /// The syscall's number; anything, in a thread that is not in a syscall (softirq on an
    /// idle CPU, a kernel thread).
    #[cfg(bpf_target_arch = "x86_64")]
    #[inline(always)]
    pub fn number(&self) -> u64 {
        // SAFETY: as in `arg`.
        unsafe { (*self.0).orig_rax }
    }

    /// Never called off x86-64 (the loader does not set `FLAG_CALL_REGS` there).
    #[cfg(not(bpf_target_arch = "x86_64"))]
    #[inline(always)]
    pub fn number(&self) -> u64 {
        u64::MAX
    }
}

/// The agent's own syscalls (it polls its ring buffer constantly) are never examined.
#[inline(always)]
pub fn from_agent() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == conf!(self_tgid)
}

/// A thread's kept arguments, with the thread they belong to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KeptCall {
    /// The `pid_tgid` that kept them: an element the LRU map evicted and gave to another thread
    /// while this one wrote it is then not taken as that thread's.
    thread: u64,
    call: PendingCall,
}

/// Keeps this thread's arguments for its exit. The thread's element is written in place once it
/// exists: a map update allocates a new element and takes a bucket lock every time, and event
/// loops enter epoll_wait for every batch of work.
#[inline(always)]
pub fn keep(call: PendingCall) {
    let thread = bpf_get_current_pid_tgid();
    let kept = KeptCall { thread, call };
    match PENDING.get_ptr_mut(&thread) {
        // SAFETY: a valid map value pointer; only this thread writes its element.
        Some(slot) => unsafe { *slot = kept },
        None => {
            let _ = PENDING.insert(&thread, &kept, 0);
        }
    }
}

/// The arguments this thread's `call` kept at entry, marked taken (the element stays for the
/// thread's next call; threads that are gone age out of the LRU map).
#[inline(always)]
pub fn take(call: u32) -> Option<PendingCall> {
    let thread = bpf_get_current_pid_tgid();
    let slot = PENDING.get_ptr_mut(&thread)?;
    // SAFETY: a valid map value pointer; only this thread writes its element.
    let kept = unsafe {
        let kept = *slot;
        (*slot).call.call = CALL_TAKEN;
        kept
    };
    (kept.thread == thread && kept.call.call == call).then_some(kept.call)
}

/// No call's arguments: `CALL_*` codes start at 1.
const CALL_TAKEN: u32 = 0;
