//! Resets: `tcp:tcp_receive_reset` (TP_PROTO(struct sock *sk)) and `tcp:tcp_send_reset`
//! (TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, enum sk_rst_reason reason])).
//! Only `skaddr` is read from the records: the address fields changed shape in 6.10, so
//! addresses come from the socket itself. Checked against Linux 6.1 and 6.18.
//!
//! Or the functions that fire them: `tcp_reset(struct sock *sk, struct sk_buff *skb)` for a
//! reset received; for one sent, `tcp_send_active_reset(struct sock *sk, ...)` and the static
//! `tcp_v4_send_reset`/`tcp_v6_send_reset(const struct sock *sk, struct sk_buff *skb, ...)`.
//! Those two are entered, and return at once, for the rare segment that must not be answered
//! (a reset, or a stray one off-host): a sent reset is timeline evidence only, never a finding.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use connwatch_common::event::{
    KIND_RESET, RESET_RX, RESET_TX, ResetEvent, UNDERSTUDY_RECEIVE_RESET, UNDERSTUDY_SEND_RESET,
};

use crate::{
    config::conf, emit, owner, policy, record, send_start, sock, understudy::raw_with_understudy,
};

#[tracepoint]
pub fn tp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if let Some(sk) = record::u64_at(&ctx, conf!(tracepoints.receive_reset_skaddr)) {
        on_reset(sk, RESET_RX, owner::now());
    }
    0
}

raw_with_understudy!(
    "tcp_receive_reset",
    UNDERSTUDY_RECEIVE_RESET,
    raw_tcp_receive_reset,
    raw_tcp_receive_reset_understudy,
    key: |ctx| [ctx.arg(0), 0],
    |ctx, now| on_reset(ctx.arg(0), RESET_RX, now)
);

#[tracepoint]
pub fn tp_tcp_send_reset(ctx: TracePointContext) -> u32 {
    if let Some(sk) = record::u64_at(&ctx, conf!(tracepoints.send_reset_skaddr)) {
        on_reset(sk, RESET_TX, owner::now());
    }
    0
}

raw_with_understudy!(
    "tcp_send_reset",
    UNDERSTUDY_SEND_RESET,
    raw_tcp_send_reset,
    raw_tcp_send_reset_understudy,
    key: |ctx| [ctx.arg(0), ctx.arg(1)],
    |ctx, now| on_reset(ctx.arg(0), RESET_TX, now)
);

socket_functions! {
    |sk| on_reset(sk, RESET_RX, owner::now());
    kprobe kp_tcp_reset;
    fentry fentry_tcp_reset on "tcp_reset";
}

// The three reset senders.
socket_functions! {
    |sk| on_reset(sk, RESET_TX, owner::now());
    kprobe kp_tcp_send_reset;
    fentry fentry_tcp_v4_send_reset on "tcp_v4_send_reset";
    fentry fentry_tcp_v6_send_reset on "tcp_v6_send_reset";
    fentry fentry_tcp_send_active_reset on "tcp_send_active_reset";
}

/// `sk` is NULL for resets answering segments that match no socket: nothing to attribute.
#[inline(always)]
fn on_reset(sk: u64, direction: u8, now: u64) {
    let Some(mut ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    send_start::before_event(sk, ends.state, false, now);
    // Whatever the kernel did, routine calls must look at the socket again.
    let info = owner::known(sk);
    policy::distrust(sk, policy::attention_of(&info));
    if emit::wanted(sk, &info, &mut ends) {
        let state = ends.state;
        emit::emit(KIND_RESET, sk, &info, &ends, now, |event: &mut ResetEvent| {
            event.direction = direction;
            event.state = state;
            crate::zero::zero(&mut event._pad);
        });
    }
}
