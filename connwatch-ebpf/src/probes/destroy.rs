//! The end of a socket's life: `tcp:tcp_destroy_sock` (TP_PROTO(struct sock *sk), Linux 5.x+;
//! checked against 6.18). Runs once the last holder has let go and the connection is over;
//! the socket's identity and tallies go with it, so nothing carries over to the next socket
//! allocated at the same address. Raw only: the socket address is all it needs.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::owner;

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn raw_tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    owner::forget(ctx.arg(0));
    0
}
