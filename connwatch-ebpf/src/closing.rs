//! A closed socket's last state changes, reported together (`watch` and `agent`,
//! `FLAG_CLOSING_TOGETHER`).
//!
//! Once the application has closed a socket, the kernel's remaining state changes (FIN_WAIT1,
//! FIN_WAIT2, LAST_ACK: finishing the close) can carry no finding: they are kept in the
//! socket's `SOCKETS` entry and reported in one record with the change to CLOSE, each with its
//! own time. A clean close then costs one record per socket instead of three or two. Whatever is
//! still kept when the kernel destroys the socket (the change to CLOSE was not seen) is reported
//! then.

use connwatch_common::{
    config::FLAG_CLOSING_TOGETHER,
    event::{KIND_STATE, KIND_STATES, StatesEvent},
    socket::{CLOSING_SLOTS, Closing, SOCKET_APP_CLOSED, SocketEntry, SocketInfo},
    tcp::TCP_CLOSE,
};

use crate::{config::conf, emit, maps::SOCKETS, sock::Endpoints};

/// A state change of `sk` at `now`: kept, or reported with those kept before it. Returns
/// whether it was; false leaves it to be reported on its own. `entry`: the socket's, if the
/// caller looked it up already.
#[inline(always)]
pub fn keep_or_report(
    sk: u64,
    info: &SocketInfo,
    ends: &Endpoints,
    (old, new): (u8, u8),
    now: u64,
    entry: Option<*mut SocketEntry>,
) -> bool {
    if conf!(flags) & FLAG_CLOSING_TOGETHER == 0 || info.flags & SOCKET_APP_CLOSED == 0 {
        return false;
    }
    let Some(entry) = entry.or_else(|| SOCKETS.get_ptr_mut(&sk)) else {
        return false;
    };
    // SAFETY: a valid map value pointer; the kernel changes a socket's state under its lock,
    // so its changes come one at a time.
    let closing = unsafe { &mut (*entry).closing };
    if new != TCP_CLOSE && keep(closing, now, old, new) {
        return true;
    }
    if closing.count == 0 {
        return false;
    }
    report(sk, info, ends, closing, now, Some((old, new)));
    true
}

/// Keeps one state change in the next free slot; false when they are full. A function of its
/// own: inlined, the compiler bounds-checked the slot index in one register and then used a
/// copy reloaded from the stack, which Linux 6.1's verifier cannot tie to the check.
#[inline(never)]
fn keep(closing: &mut Closing, now: u64, old: u8, new: u8) -> bool {
    let kept = (closing.count as usize).min(CLOSING_SLOTS);
    if let (Some(ts_ns), Some(old_state), Some(new_state)) = (
        closing.ts_ns.get_mut(kept),
        closing.old_state.get_mut(kept),
        closing.new_state.get_mut(kept),
    ) {
        (*ts_ns, *old_state, *new_state) = (now, old, new);
        closing.count = kept as u8 + 1;
        return true;
    }
    false
}

/// The kernel destroys `sk` (at `now`): reports the changes still kept, if any.
#[inline(always)]
pub fn report_left(sk: u64, info: &SocketInfo, ends: &Endpoints, now: u64) {
    if let Some(entry) = SOCKETS.get_ptr_mut(&sk) {
        // SAFETY: a valid map value pointer.
        let closing = unsafe { &mut (*entry).closing };
        if closing.count != 0 {
            report(sk, info, ends, closing, now, None);
        }
    }
}

/// Reports the kept changes, then `last` (old and new state, changed `now`) if given, and
/// forgets them.
#[inline(always)]
fn report(
    sk: u64,
    info: &SocketInfo,
    ends: &Endpoints,
    closing: &mut Closing,
    now: u64,
    last: Option<(u8, u8)>,
) {
    let kept = (closing.count as usize).min(CLOSING_SLOTS);
    let count = kept + usize::from(last.is_some());
    // Lost, the record counts as the state changes it holds.
    let events = (KIND_STATE, count as u64);
    emit::emit_standing_for(KIND_STATES, events, sk, info, ends, now, |event: &mut StatesEvent| {
        for (i, change) in event.changes.iter_mut().enumerate() {
            // `get`, not indexing: a panic path would not pass the verifier.
            let kept_change =
                (closing.ts_ns.get(i), closing.old_state.get(i), closing.new_state.get(i));
            let (ts_ns, old_state, new_state) = match (kept_change, last) {
                ((Some(&ts), Some(&old), Some(&new)), _) if i < kept => (ts, old, new),
                (_, Some((old, new))) if i == kept => (now, old, new),
                _ => (0, 0, 0),
            };
            change.ts_ns = ts_ns;
            change.old_state = old_state;
            change.new_state = new_state;
            crate::zero::zero(&mut change._pad);
        }
        event.count = count as u8;
        crate::zero::zero(&mut event._pad);
    });
    closing.count = 0;
}
