//! Programs that return at once, one per program type (`--hooks-only`): attached in place of
//! every hook's own programs, they measure what merely reaching the hooks costs a kernel, the
//! floor under any work connwatch's programs do (`cargo xtask bench`). fentry and fexit have
//! none: the kernel binds such a program to one function when it loads it.

use aya_ebpf::{
    macros::{kprobe, raw_tracepoint, tracepoint},
    programs::{ProbeContext, RawTracePointContext, TracePointContext},
};

#[raw_tracepoint]
pub fn reach_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[tracepoint]
pub fn reach_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[kprobe]
pub fn reach_kprobe(_ctx: ProbeContext) -> u32 {
    0
}
