//! Retransmissions: `tcp:tcp_retransmit_skb` (TP_PROTO(const struct sock *sk, const struct
//! sk_buff *skb[, int err]); the record gained `err` in 6.x). Checked against 6.1 and 6.18.
//! Or `tcp_retransmit_skb(struct sock *sk, struct sk_buff *skb, int segs)`, which timeouts and
//! fast retransmits call: not `__tcp_retransmit_skb`, which fires the tracepoint but is inlined
//! into it on 6.1 (a kprobe there saw only the loss probes that call it directly). Loss probes
//! are therefore not seen this way. Entered, it counts an attempt the host may refuse to send
//! (the original still queued), as the 6.18 tracepoint does (its `err` tells them apart).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use connwatch_common::event::{KIND_RETRANSMIT, RetransmitEvent, UNDERSTUDY_RETRANSMIT};

use crate::{
    config::conf, emit, owner, policy, record, send_start, sock, understudy::raw_with_understudy,
};

#[tracepoint]
pub fn tp_tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    if let Some(sk) = record::u64_at(&ctx, conf!(tracepoints.retransmit_skaddr)) {
        on_retransmit(sk, owner::now());
    }
    0
}

raw_with_understudy!(
    "tcp_retransmit_skb",
    UNDERSTUDY_RETRANSMIT,
    raw_tcp_retransmit_skb,
    raw_tcp_retransmit_skb_understudy,
    key: |ctx| [ctx.arg(0), ctx.arg(1)],
    |ctx, now| on_retransmit(ctx.arg(0), now)
);

socket_functions! {
    |sk| on_retransmit(sk, owner::now());
    kprobe kp_tcp_retransmit_skb;
    fentry fentry_tcp_retransmit_skb on "tcp_retransmit_skb";
}

/// The kernel retransmits on `sk` (at `now`).
#[inline(always)]
fn on_retransmit(sk: u64, now: u64) {
    let Some(mut ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    send_start::before_event(sk, ends.state, false, now);
    // Whatever the kernel did, routine calls must look at the socket again.
    let info = owner::known(sk);
    policy::distrust(sk, policy::attention_of(&info));
    if emit::wanted(sk, &info, &mut ends) {
        let state = ends.state;
        emit::emit(KIND_RETRANSMIT, sk, &info, &ends, now, |event: &mut RetransmitEvent| {
            event.state = state;
            crate::zero::zero(&mut event._pad);
        });
    }
}
