//! Retransmissions: `tcp:tcp_retransmit_skb` (TP_PROTO(const struct sock *sk, const struct
//! sk_buff *skb[, int err]); the record gained `err` in 6.x). Checked against 6.1 and 6.18.
//! Or the function that fires it, `__tcp_retransmit_skb(struct sock *sk, struct sk_buff *skb,
//! int segs)`: every retransmission (timer, fast retransmit, loss probe) passes through it.
//! Entered, it counts an attempt the host may refuse to send (the original still queued), as
//! the 6.18 tracepoint does (its `err` tells them apart).

use aya_ebpf::{
    macros::{fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
};
use connwatch_common::event::{KIND_RETRANSMIT, RetransmitEvent};

use crate::{config::conf, emit, owner, policy, sock};

#[tracepoint]
pub fn tp_tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let offset = conf!(tracepoints.retransmit_skaddr) as usize;
    // SAFETY: offset from this kernel's tracefs format file.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset) } {
        on_retransmit(sk);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn raw_tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    on_retransmit(ctx.arg(0));
    0
}

#[kprobe]
pub fn kp_tcp_retransmit_skb(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        on_retransmit(sk);
    }
    0
}

#[fentry(function = "__tcp_retransmit_skb")]
pub fn fentry_tcp_retransmit_skb(ctx: FEntryContext) -> u32 {
    on_retransmit(ctx.arg(0));
    0
}

#[inline(always)]
fn on_retransmit(sk: u64) {
    let Some(mut ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    // Whatever the kernel did, routine calls must look at the socket again.
    policy::distrust(sk);
    let info = owner::known(sk);
    if emit::wanted(sk, &info, &mut ends) {
        let state = ends.state;
        emit::emit(KIND_RETRANSMIT, sk, &info, &ends, |event: &mut RetransmitEvent| {
            event.state = state;
            crate::zero::zero(&mut event._pad);
        });
    }
}
