//! A connection's change to ESTABLISHED, carried by the socket's next record (`watch` and
//! `agent`, `FLAG_ESTABLISHED_CARRIED`).
//!
//! A blocking connect() returns, and accept() hands over a child, only once the connection is
//! ESTABLISHED, and the change itself is news nobody can misjudge. So it is kept in the socket's
//! entry, and the next record of the socket, whichever it is (normally the connect or accept
//! record, which a clean connection sends anyway), carries it in its header: one record fewer
//! per connection on each side, and no second record on any path. A connect() that returned,
//! or an accept() that took the child, before the change leaves no call to carry it: the change
//! is then reported at once.
//!
//! Exactly one record carries a kept change: whoever carries it takes it from the entry by
//! atomic exchange. The call that marks the socket returned takes it the same way after
//! marking, and the change, once kept, looks at the mark again: between them, one of the two
//! sees the other (each exchange is a full barrier), so a change is never left kept behind a
//! call that has returned.

use connwatch_common::{
    config::FLAG_ESTABLISHED_CARRIED,
    socket::{SOCKET_CALL_RETURNED, SocketEntry, SocketInfo, established_from},
};

use core::intrinsics::{AtomicOrdering::SeqCst, atomic_xchg};

use crate::{config::conf, maps::SOCKETS, owner};

/// A change of the socket whose entry is `entry` (its identity `info`, as the caller read it)
/// from `old` to ESTABLISHED at `now`: kept for the socket's next record. Returns whether it
/// was; false leaves it to be reported on its own.
#[inline(always)]
pub fn keep(info: &SocketInfo, old: u8, now: u64, entry: Option<*mut SocketEntry>) -> bool {
    if conf!(flags) & FLAG_ESTABLISHED_CARRIED == 0 || info.flags & SOCKET_CALL_RETURNED != 0 {
        return false;
    }
    let Some((from, born_ns)) = established_from(info.birth_ns) else {
        return false;
    };
    // A handshake of over 4 s (SYNs retransmitted) does not fit the header's 32 bits.
    let after = now.wrapping_sub(born_ns);
    if from != old || after == 0 || after > u32::MAX as u64 {
        return false;
    }
    let Some(entry) = entry else {
        return false;
    };
    // SAFETY: a valid map value pointer; the field changes only by atomic exchange.
    let slot = unsafe { &raw mut (*entry).info.established_after_ns };
    // SAFETY: as above.
    unsafe { atomic_xchg::<u64, { SeqCst }>(slot, after) };
    // SAFETY: as above; an aligned 2-byte load.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*entry).info.flags) };
    if flags & SOCKET_CALL_RETURNED == 0 {
        return true;
    }
    // The call returned meanwhile: whoever takes the change back reports it (0: the call did).
    // SAFETY: as above.
    unsafe { atomic_xchg::<u64, { SeqCst }>(slot, 0) == 0 }
}

/// Set above the 32 bits of a change's time in a caller's copy of [`SocketInfo`]: the caller
/// took the change already ([`call_returns`]), and its record carries that. Never in the map.
const TAKEN: u64 = 1 << 32;

/// The kept change `sk`'s record carries, taken from its entry (0: none). `info`: the
/// socket's, as the caller read it; only a change kept then is looked for, so records after
/// the first cost nothing.
#[inline(always)]
pub fn take(sk: u64, info: &SocketInfo) -> u32 {
    let kept = info.established_after_ns;
    if kept == 0 || kept & TAKEN != 0 {
        return kept as u32;
    }
    match SOCKETS.get_ptr_mut(&sk) {
        Some(entry) => take_from(entry),
        None => 0,
    }
}

/// A connect() or accept() about to be reported returns with `sk`, whose entry is `entry`: the
/// caller touches it ([`owner::touch_in`]) and marks it returned, then takes any kept change.
/// Returns the socket's identity for the call's record, which carries what was taken.
#[inline(always)]
pub fn call_returns(sk: u64, entry: Option<*mut SocketEntry>) -> SocketInfo {
    let mut info = owner::touch_in(sk, entry, SOCKET_CALL_RETURNED);
    info.established_after_ns = match entry {
        Some(entry) => TAKEN | take_from(entry) as u64,
        None => 0,
    };
    info
}

/// Takes the kept change from `entry`.
#[inline(always)]
fn take_from(entry: *mut SocketEntry) -> u32 {
    // SAFETY: a valid map value pointer; the field changes only by atomic exchange.
    unsafe { atomic_xchg::<u64, { SeqCst }>(&raw mut (*entry).info.established_after_ns, 0) as u32 }
}
