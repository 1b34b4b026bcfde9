//! TCP state changes: `sock:inet_sock_set_state` (TP_PROTO(const struct sock *sk, const int
//! oldstate, const int newstate); record and arguments checked against Linux 6.1 and 6.18), or
//! the two functions that fire it, `inet_sk_state_store` and `inet_sk_set_state` (both
//! `(struct sock *sk, int state)`, out of line in af_inet.c on 6.1 and 6.18), where the state
//! before the change is still in the socket.

use aya_ebpf::{
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use connwatch_common::{
    config::FLAG_OPENING_IN_BIRTH,
    event::{KIND_STATE, StateEvent, UNDERSTUDY_STATE},
    socket::{BIRTH_BY_CONNECT, BIRTH_BY_LISTEN, BIRTH_FROM_LISTENER, SocketEntry, SocketInfo},
    tcp::{
        TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_LISTEN,
        TCP_SYN_RECV, TCP_SYN_SENT,
    },
};

use crate::{
    closing, config::conf, emit, established, maps::SOCKETS, owner, policy, record, send_start,
    sock, understudy::raw_with_understudy,
};

#[tracepoint]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let args = (
        record::u64_at(&ctx, conf!(tracepoints.set_state_skaddr)),
        record::u32_at(&ctx, conf!(tracepoints.set_state_oldstate)),
        record::u32_at(&ctx, conf!(tracepoints.set_state_newstate)),
    );
    if let (Some(sk), Some(old), Some(new)) = args {
        on_state_change(sk, old as i32, new as i32, owner::now());
    }
    0
}

raw_with_understudy!(
    "inet_sock_set_state",
    UNDERSTUDY_STATE,
    raw_inet_sock_set_state,
    raw_inet_sock_set_state_understudy,
    key: |ctx| [ctx.arg(0), state_pair(ctx.arg(1), ctx.arg(2))],
    |ctx, now| on_state_change(ctx.arg(0), ctx.arg(1), ctx.arg(2), now)
);

/// A state change's two states as one word (the second half of its hit key).
#[inline(always)]
fn state_pair(old: i32, new: i32) -> u64 {
    ((old as u32 as u64) << 32) | new as u32 as u64
}

/// Both state-setting functions: one kprobe program serves them.
#[kprobe]
pub fn kp_inet_sk_state_store(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(new)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1)) {
        on_state_store(sk, new, owner::now());
    }
    0
}

#[fentry(function = "inet_sk_state_store")]
pub fn fentry_inet_sk_state_store(ctx: FEntryContext) -> u32 {
    on_state_store(ctx.arg(0), ctx.arg(1), owner::now());
    0
}

#[fentry(function = "inet_sk_set_state")]
pub fn fentry_inet_sk_set_state(ctx: FEntryContext) -> u32 {
    on_state_store(ctx.arg(0), ctx.arg(1), owner::now());
    0
}

/// A state about to be stored (at `now`): the socket still holds the old one.
#[inline(always)]
fn on_state_store(sk: u64, new: i32, now: u64) {
    on_hit(sk, None, new as u8, now);
}

#[inline(always)]
fn on_state_change(sk: u64, old: i32, new: i32, now: u64) {
    on_hit(sk, Some(old as u8), new as u8, now);
}

/// A change of `sk` to `new` from `old`, or from the state it still holds where `old` is not
/// given.
#[inline(always)]
fn on_hit(sk: u64, old: Option<u8>, new: u8, now: u64) {
    let entry = SOCKETS.get_ptr_mut(&sk);
    if let Some(ends) = sock::endpoints_of(sk, entry) {
        changed(sk, ends, old.unwrap_or(ends.state), new, now, entry);
    }
}

/// `sk` changed from `old` to `new` at `now` (the hit's one clock read); `entry` is its
/// `SOCKETS` entry as the hit began, looked up once for everything below.
#[inline(always)]
fn changed(
    sk: u64,
    mut ends: sock::Endpoints,
    old: u8,
    new: u8,
    now: u64,
    entry: Option<*mut SocketEntry>,
) {
    // Inside a send, only a reset or a timeout (to CLOSE) or the peer's FIN (to CLOSE_WAIT) can
    // change the socket: the other changes need not ask whether they run in one.
    if matches!(new, TCP_CLOSE | TCP_CLOSE_WAIT) {
        send_start::before_event(sk, old, false, now);
    }
    // Whatever the kernel did, routine calls must look at the socket again.
    let (info, entry, began) = identify(sk, (old, new), ends.sport, now, entry);
    // ESTABLISHED, a listener's stages and a connect under way are news nobody can misjudge
    // yet: a connect's readiness matters once it failed, and the change to CLOSE says so.
    let routine = matches!(new, TCP_ESTABLISHED | TCP_LISTEN | TCP_SYN_RECV | TCP_SYN_SENT);
    policy::distrust(sk, if routine { 0 } else { policy::attention_of(&info) });
    if new == TCP_LISTEN {
        owner::remember_listener(sock::net(sk), ends.sport, &info.owner);
    } else if old == TCP_LISTEN {
        owner::forget_listener(sock::net(sk), ends.sport);
    }
    // watch and agent: the change that began the life is in its birth, on every later record.
    let in_birth = began && conf!(flags) & FLAG_OPENING_IN_BIRTH != 0;
    let wanted = !in_birth && emit::wanted_in(sk, entry, &info, &mut ends);
    if wanted && old == TCP_ESTABLISHED {
        policy::report_tallies(sk, &ends, &info);
    }
    if wanted
        && !(new == TCP_ESTABLISHED && established::keep(&info, old, now, entry))
        && !closing::keep_or_report(sk, &info, &ends, (old, new), now, entry)
    {
        emit::emit(KIND_STATE, sk, &info, &ends, now, |event: &mut StateEvent| {
            event.old_state = old;
            event.new_state = new;
            crate::zero::zero(&mut event._pad);
        });
    }
}

/// Which life of `sk` this change (at `now`) belongs to and who owns it, from what the
/// transition implies about the context it runs in; with the entry still to be used (none once
/// a new life replaced it) and whether the change began that life.
#[inline(always)]
fn identify(
    sk: u64,
    (old, new): (u8, u8),
    port: u16,
    now: u64,
    entry: Option<*mut SocketEntry>,
) -> (SocketInfo, Option<*mut SocketEntry>, bool) {
    match (old, new) {
        // connect() and listen(): process context, a new life.
        (TCP_CLOSE, TCP_SYN_SENT) => {
            (owner::begin(sk, owner::current(), now, BIRTH_BY_CONNECT), None, true)
        }
        (TCP_CLOSE, TCP_LISTEN) => {
            (owner::begin(sk, owner::current(), now, BIRTH_BY_LISTEN), None, true)
        }
        // A child created from a listener in softirq: inherits the listener's owner.
        (TCP_LISTEN, TCP_SYN_RECV) => {
            let owner = owner::listener_owner(sock::net(sk), port);
            (owner::begin(sk, owner, now, BIRTH_FROM_LISTENER), None, true)
        }
        // close() or shutdown() by the application: process context.
        (TCP_ESTABLISHED, TCP_FIN_WAIT1) | (TCP_CLOSE_WAIT, TCP_LAST_ACK) => {
            (owner::touch_in(sk, entry, 0), entry, false)
        }
        // Everything else may run in softirq: the task on the CPU is not the owner.
        _ => (owner::known_in(sk, entry), entry, false),
    }
}
