//! Socket errors: `sock:inet_sk_error_report` (TP_PROTO(const struct sock *sk), Linux 5.14+;
//! checked against 6.1 and 6.18). Raw tracepoint only: the classic record carries the error
//! and the 4-tuple but no socket address, so it could not be joined to a socket. Or the function
//! that fires it, `sk_error_report(struct sock *sk)` (5.14+), entered after the error is stored.

use connwatch_common::event::{ErrorEvent, KIND_ERROR, UNDERSTUDY_ERROR_REPORT};

use crate::{emit, owner, policy, send_start, sock, understudy::raw_with_understudy};

raw_with_understudy!(
    "inet_sk_error_report",
    UNDERSTUDY_ERROR_REPORT,
    raw_inet_sk_error_report,
    raw_inet_sk_error_report_understudy,
    key: |ctx| [ctx.arg(0), 0],
    |ctx, now| on_error_report(ctx.arg(0), now)
);

socket_functions! {
    |sk| on_error_report(sk, owner::now());
    kprobe kp_sk_error_report;
    fentry fentry_sk_error_report on "sk_error_report";
}

/// The kernel reports an error on `sk` (at `now`).
#[inline(always)]
fn on_error_report(sk: u64, now: u64) {
    let Some(mut ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    // tcp_disconnect() (run when a failed connect() is unwound) reports even when no error
    // is stored: that is not an error the application can see.
    let errno = sock::error(sk);
    if errno == 0 {
        return;
    }
    send_start::before_event(sk, ends.state, true, now);
    // Whatever the kernel did, routine calls must look at the socket again.
    let info = owner::known(sk);
    policy::distrust(sk, policy::attention_of(&info));
    if emit::wanted(sk, &info, &mut ends) {
        let state = ends.state;
        emit::emit(KIND_ERROR, sk, &info, &ends, now, |event: &mut ErrorEvent| {
            event.errno = errno;
            event.state = state;
            crate::zero::zero(&mut event._pad);
        });
    }
}
