//! Filtering, reservation, loss counting and wake-up policy shared by every hook.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufEntry,
};
use connwatch_common::{
    config::{FILTER_COMM, FILTER_PIDS, FILTER_PORTS},
    event::EventHeader,
    socket::{OWNER_UNKNOWN, SocketInfo},
};

use crate::{
    config::conf,
    maps::{EVENTS, LOST, PID_FILTER, PORT_FILTER},
    owner::now,
    sock::{self, Endpoints},
};

/// Whether an event about this socket is wanted: never the agent's own, and only what the
/// `--pid`, `--comm` and `--port` filters let through. Runs before any reservation.
#[inline(always)]
pub fn wanted(info: &SocketInfo, ends: &Endpoints) -> bool {
    let tgid = info.owner.tgid;
    if tgid != OWNER_UNKNOWN && tgid == conf!(self_tgid) {
        return false;
    }
    let filters = conf!(filters);
    if filters & FILTER_PIDS != 0 && (tgid == OWNER_UNKNOWN || PID_FILTER.get_ptr(&tgid).is_none())
    {
        return false;
    }
    if filters & FILTER_COMM != 0 && info.owner.comm != conf!(comm) {
        return false;
    }
    if filters & FILTER_PORTS != 0
        && PORT_FILTER.get_ptr(&ends.sport).is_none()
        && PORT_FILTER.get_ptr(&ends.dport).is_none()
    {
        return false;
    }
    true
}

/// Reserves a `T` (a record starting with an [`EventHeader`]), fills the header, lets `body`
/// fill the rest and submits it. A full ring buffer is counted in `LOST[kind]`.
#[inline(always)]
pub fn emit<T: 'static>(
    kind: u8,
    sk: u64,
    info: &SocketInfo,
    ends: &Endpoints,
    body: impl FnOnce(&mut T),
) {
    let Some(mut entry): Option<RingBufEntry<T>> = EVENTS.reserve::<T>(0) else {
        count_lost(kind);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: every record type is #[repr(C)] and starts with an EventHeader; the entry is
    // exclusively ours until submit.
    let header = unsafe { &mut *(record as *mut EventHeader) };
    header.kind = kind;
    header._pad0 = 0;
    header.family = ends.family;
    header.sport = ends.sport;
    header.dport = ends.dport;
    header.tgid = info.owner.tgid;
    header._pad1 = 0;
    header.ts_ns = now();
    header.sk = sk;
    header.birth_ns = info.birth_ns;
    header.comm = info.owner.comm;
    sock::fill_addresses(sk, ends.family, header);
    // SAFETY: as above; `body` writes the remaining fields, including padding.
    body(unsafe { &mut *record });
    entry.submit(wakeup_flags());
}

/// Wakes userspace only when enough has piled up; otherwise it drains on its own timer.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= conf!(wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn count_lost(kind: u8) {
    if let Some(counter) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot; no other writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
}
