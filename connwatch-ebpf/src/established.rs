//! A connection's change to ESTABLISHED, carried by the call that returns it (`watch` and
//! `agent`, `FLAG_ESTABLISHED_IN_CALL`).
//!
//! A blocking connect() returns, and accept() hands over a child, only once the connection is
//! ESTABLISHED; the change itself is news nobody can misjudge. So it is kept in the socket's
//! entry and reported in the connect or accept record, which a clean connection sends anyway:
//! one record fewer per connection on each side. Should another record of the socket come
//! first (the peer's FIN before accept(), a reset), the kept change is reported just before it,
//! so the order of events never changes. A non-blocking connect() returns before the change:
//! no connect record follows it, and it is reported at once, as before.

use connwatch_common::{
    config::FLAG_ESTABLISHED_IN_CALL,
    event::{KIND_STATE, StateEvent},
    socket::{SOCKET_CONNECT_RETURNED, SocketEntry, SocketInfo, established_from},
    tcp::TCP_ESTABLISHED,
};

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xchg};

use crate::{config::conf, emit, maps::SOCKETS, sock::Endpoints};

/// A change from `old` to ESTABLISHED at `now`: kept in the socket's entry for the call's
/// record. Returns whether it was; false leaves it to be reported on its own.
#[inline(always)]
pub fn keep(info: &SocketInfo, old: u8, now: u64, entry: Option<*mut SocketEntry>) -> bool {
    if conf!(flags) & FLAG_ESTABLISHED_IN_CALL == 0
        || info.flags & SOCKET_CONNECT_RETURNED != 0
        || established_from(info.birth_ns) != Some(old)
    {
        return false;
    }
    let Some(entry) = entry else {
        return false;
    };
    // SAFETY: a valid map value pointer; taken only by atomic exchange.
    unsafe { (*entry).info.kept_established_ns = now };
    true
}

/// The kept change's time, taken from the entry so exactly one record carries it (0: none).
/// `info`: the socket's as the caller read it; only a change kept then is looked for.
#[inline(always)]
pub fn take(sk: u64, info: &SocketInfo) -> u64 {
    if info.kept_established_ns == 0 {
        return 0;
    }
    match SOCKETS.get_ptr_mut(&sk) {
        // SAFETY: a valid map value pointer; the field is only ever swapped atomically once set.
        Some(entry) => unsafe {
            atomic_xchg::<u64, { Relaxed }>(&raw mut (*entry).info.kept_established_ns, 0)
        },
        None => 0,
    }
}

/// Another record of the socket is about to go out: the kept change goes first, on its own.
/// Out of line: every record's path would otherwise carry a second reservation.
#[inline(never)]
pub fn report_before(sk: u64, info: &SocketInfo, ends: &Endpoints) {
    let (Some(old), ts_ns) = (established_from(info.birth_ns), take(sk, info)) else {
        return;
    };
    if ts_ns == 0 {
        return;
    }
    emit::emit_record(
        KIND_STATE,
        (KIND_STATE, 1),
        sk,
        info,
        ends,
        ts_ns,
        |event: &mut StateEvent| {
            event.old_state = old;
            event.new_state = TCP_ESTABLISHED;
            crate::zero::zero(&mut event._pad);
        },
    );
}
