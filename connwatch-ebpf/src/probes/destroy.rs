//! The end of a socket's life: `tcp:tcp_destroy_sock` (TP_PROTO(struct sock *sk), Linux 5.x+;
//! checked against 6.18). Runs once the last holder has let go and the connection is over;
//! the socket's identity and tallies go with it, so nothing carries over to the next socket
//! allocated at the same address. When no holder's close() was seen (the process exited or was
//! killed, and the kernel closed its descriptors), the end is reported: the application let go
//! all the same. Closing state changes still kept (see `closing`) are reported too. Raw only
//! among tracepoints: the socket address is all it needs. Or the function that fires it,
//! `tcp_v4_destroy_sock(struct sock *sk)` (IPv6 sockets pass through it too).

use connwatch_common::{
    event::{DestroyEvent, KIND_DESTROY, UNDERSTUDY_DESTROY},
    socket::SOCKET_APP_CLOSED,
};

use crate::{closing, emit, maps::SOCKETS, owner, sock, understudy::raw_with_understudy};

raw_with_understudy!(
    "tcp_destroy_sock",
    UNDERSTUDY_DESTROY,
    raw_tcp_destroy_sock,
    raw_tcp_destroy_sock_understudy,
    key: |ctx| [ctx.arg(0), 0],
    |ctx, now| on_destroy(ctx.arg(0), now)
);

socket_functions! {
    |sk| on_destroy(sk, owner::now());
    kprobe kp_tcp_destroy_sock;
    fentry fentry_tcp_destroy_sock on "tcp_v4_destroy_sock";
}

/// The kernel destroys `sk` (at `now`).
#[inline(always)]
fn on_destroy(sk: u64, now: u64) {
    // SAFETY: a valid map value pointer; SocketInfo is Copy and read whole.
    if let Some((info, kept)) =
        SOCKETS.get_ptr(&sk).map(|entry| unsafe { ((*entry).info, (*entry).closing.count) })
    {
        let app_closed = info.flags & SOCKET_APP_CLOSED != 0;
        let unreported = if app_closed { kept != 0 } else { info.owner.tgid != 0 };
        if unreported
            && let Some(mut ends) = sock::tcp_endpoints(sk)
            && emit::wanted(sk, &info, &mut ends)
        {
            if app_closed {
                closing::report_left(sk, &info, &ends, now);
            } else {
                let state = ends.state;
                emit::emit(KIND_DESTROY, sk, &info, &ends, now, |event: &mut DestroyEvent| {
                    event.state = state;
                    crate::zero::zero(&mut event._pad);
                });
            }
        }
    }
    owner::forget(sk);
}
