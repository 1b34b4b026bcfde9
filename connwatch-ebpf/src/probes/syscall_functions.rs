//! The syscall hooks at the syscalls' own entry functions (`__x64_sys_*`), where BPF trampolines
//! work. Once any `syscalls:*` tracepoint has a program, every syscall of every process takes
//! the traced slow path (`cargo xtask bench`, syscalls); with these instead, no syscall
//! tracepoint is enabled and syscalls connwatch does not hook pay nothing.
//!
//! An exit program sees the call's result and reads its arguments from the registers it was
//! made with ([`CallRegs`]), so one program per call replaces an entry and an exit tracepoint.
//! x86-64 only, 64-bit callers only (32-bit callers enter through `__ia32_*` and
//! `__x64_compat_*`; x86-64 kernels run no syscall tracepoint for them either).

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use super::{calls, readiness};
use crate::syscall::CallRegs;

/// The result an exit program sees, as the syscall returns it.
#[inline(always)]
fn result(ctx: &FExitContext) -> i64 {
    ctx.ret::<i64>().unwrap_or(-1)
}

#[fexit(function = "__x64_sys_accept4")]
pub fn fexit_sys_accept4(ctx: FExitContext) -> u32 {
    calls::on_accept(&ctx, result(&ctx));
    0
}

#[fexit(function = "__x64_sys_accept")]
pub fn fexit_sys_accept(ctx: FExitContext) -> u32 {
    calls::on_accept(&ctx, result(&ctx));
    0
}

#[fexit(function = "__x64_sys_connect")]
pub fn fexit_sys_connect(ctx: FExitContext) -> u32 {
    calls::connect_at_exit(result(&ctx));
    0
}

#[fexit(function = "__x64_sys_getsockopt")]
pub fn fexit_sys_getsockopt(ctx: FExitContext) -> u32 {
    calls::getsockopt_at_exit(result(&ctx));
    0
}

/// At entry: the descriptor still resolves.
#[fentry(function = "__x64_sys_close")]
pub fn fentry_sys_close(_ctx: FEntryContext) -> u32 {
    calls::on_close(CallRegs::current().arg(0) as i32 as i64);
    0
}

#[fentry(function = "__x64_sys_epoll_ctl")]
pub fn fentry_sys_epoll_ctl(_ctx: FEntryContext) -> u32 {
    let regs = CallRegs::current();
    if regs.arg(1) == readiness::EPOLL_CTL_ADD {
        readiness::on_epoll_add(regs.arg(0) as i32, regs.arg(2) as i32, regs.arg(3));
    }
    0
}

/// One exit program per readiness call: the kernel binds a trampoline program to one function.
macro_rules! readiness_exits {
    ($($program:ident on $function:literal => $handler:ident;)+) => {
        $(
            #[fexit(function = $function)]
            pub fn $program(ctx: FExitContext) -> u32 {
                readiness::$handler(result(&ctx));
                0
            }
        )+
    };
}

readiness_exits! {
    fexit_sys_epoll_wait on "__x64_sys_epoll_wait" => epoll_result_at_exit;
    fexit_sys_epoll_pwait on "__x64_sys_epoll_pwait" => epoll_result_at_exit;
    fexit_sys_epoll_pwait2 on "__x64_sys_epoll_pwait2" => epoll_result_at_exit;
    fexit_sys_poll on "__x64_sys_poll" => poll_result_at_exit;
    fexit_sys_ppoll on "__x64_sys_ppoll" => poll_result_at_exit;
    fexit_sys_select on "__x64_sys_select" => select_result_at_exit;
    fexit_sys_pselect6 on "__x64_sys_pselect6" => select_result_at_exit;
}
