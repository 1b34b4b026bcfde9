//! Resets: `tcp:tcp_receive_reset` (TP_PROTO(struct sock *sk)) and `tcp:tcp_send_reset`
//! (TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, enum sk_rst_reason reason])).
//! Only `skaddr` is read from the records: the address fields changed shape in 6.10, so
//! addresses come from the socket itself. Checked against Linux 6.1 and 6.18.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use connwatch_common::event::{KIND_RESET, RESET_RX, RESET_TX, ResetEvent};

use crate::{config::conf, emit, owner, policy, sock};

#[tracepoint]
pub fn tp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let offset = conf!(tracepoints.receive_reset_skaddr) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset) } {
        on_reset(sk, RESET_RX);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn raw_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    on_reset(ctx.arg(0), RESET_RX);
    0
}

#[tracepoint]
pub fn tp_tcp_send_reset(ctx: TracePointContext) -> u32 {
    let offset = conf!(tracepoints.send_reset_skaddr) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset) } {
        on_reset(sk, RESET_TX);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn raw_tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    on_reset(ctx.arg(0), RESET_TX);
    0
}

/// `sk` is NULL for resets answering segments that match no socket: nothing to attribute.
#[inline(always)]
fn on_reset(sk: u64, direction: u8) {
    let Some(mut ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    // Whatever the kernel did, routine calls must look at the socket again.
    policy::distrust(sk);
    let info = owner::known(sk);
    if emit::wanted(sk, &info, &mut ends) {
        let state = ends.state;
        emit::emit(KIND_RESET, sk, &info, &ends, |event: &mut ResetEvent| {
            event.direction = direction;
            event.state = state;
            crate::zero::zero(&mut event._pad);
        });
    }
}
