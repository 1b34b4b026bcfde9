//! One module per group of hooks. Each program finds its arguments (from a classic tracepoint
//! record at tracefs offsets, or from raw tracepoint arguments) and calls the group's handler.

/// The kprobe and fentry programs of a hook whose handler needs only the socket, the first
/// argument of each kernel function behind the hook's tracepoint: one kprobe program serves
/// every function, and each function has its own fentry program (the kernel binds a fentry
/// program to one function when it loads it).
macro_rules! socket_functions {
    ($handler:expr; kprobe $kprobe:ident; $(fentry $fentry:ident on $function:literal;)+) => {
        #[aya_ebpf::macros::kprobe]
        pub fn $kprobe(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            if let Some(sk) = ctx.arg::<u64>(0) {
                ($handler)(sk);
            }
            0
        }
        $(
            #[aya_ebpf::macros::fentry(function = $function)]
            pub fn $fentry(ctx: aya_ebpf::programs::FEntryContext) -> u32 {
                ($handler)(ctx.arg(0));
                0
            }
        )+
    };
}

mod calls;
mod destroy;
mod error;
mod io;
mod io_syscalls;
mod reach;
mod readiness;
mod reset;
mod retransmit;
mod state;
mod syscall_functions;
