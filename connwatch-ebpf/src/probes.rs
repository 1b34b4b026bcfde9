//! One module per group of hooks. Each program finds its arguments (from a classic tracepoint
//! record at tracefs offsets, or from raw tracepoint arguments) and calls the group's handler.

mod calls;
mod destroy;
mod error;
mod io;
mod io_syscalls;
mod readiness;
mod reset;
mod retransmit;
mod state;
