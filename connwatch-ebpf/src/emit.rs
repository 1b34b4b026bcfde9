//! Filtering, reservation, loss counting and wake-up policy shared by every hook.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_comm,
    maps::ring_buf::RingBufEntry,
};
use connwatch_common::{
    config::{FILTER_COMM, FILTER_PIDS, FILTER_PORTS},
    event::{AppEvent, EventHeader, SockSnapshot},
    names::ring_of,
    socket::{OWNER_UNKNOWN, SocketEntry, SocketInfo},
};

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

use crate::{
    config::conf,
    established,
    maps::{
        COUNTERS, EVENTS, EVENTS_1, EVENTS_2, EVENTS_3, EVENTS_4, EVENTS_5, EVENTS_6, EVENTS_7,
        EVENTS_8, EVENTS_9, EVENTS_10, EVENTS_11, EVENTS_12, EVENTS_13, EVENTS_14, EVENTS_15, LOST,
        PID_FILTER, PORT_FILTER,
    },
    owner::{self, now},
    policy::Span,
    sock::{self, Endpoints},
};

/// Whether an event about this socket is wanted: never the agent's own, and only what the
/// `--pid`, `--comm` and `--port` filters let through. Runs before any reservation; completes
/// `ends` with the connection's remembered ports first.
#[inline(always)]
pub fn wanted(sk: u64, info: &SocketInfo, ends: &mut Endpoints) -> bool {
    wanted_in(sk, None, info, ends)
}

/// [`wanted`], with the socket's `SOCKETS` entry if the caller looked it up already.
#[inline(always)]
pub fn wanted_in(
    sk: u64,
    entry: Option<*mut SocketEntry>,
    info: &SocketInfo,
    ends: &mut Endpoints,
) -> bool {
    owner::complete_ports(sk, entry, info, ends);
    let tgid = info.owner.tgid;
    if tgid != OWNER_UNKNOWN && tgid == conf!(self_tgid) {
        return false;
    }
    let filters = conf!(flags);
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

/// Whether the `--pid` and `--comm` filters let the current process (`tgid`) through: for what
/// is counted per call, before any socket is known. Not inlined: a subprogram's frame keeps the
/// name it reads off the stack of the readiness programs, which is near the limit.
#[inline(never)]
pub fn process_wanted(tgid: u32) -> bool {
    let filters = conf!(flags);
    if filters & FILTER_PIDS != 0 && PID_FILTER.get_ptr(&tgid).is_none() {
        return false;
    }
    filters & FILTER_COMM == 0 || bpf_get_current_comm().unwrap_or([0; 16]) == conf!(comm)
}

/// Reserves a `T` (a record starting with an [`EventHeader`]), fills the header with time
/// `ts_ns` (the hit's, read once per hit: a clock read costs about 30 ns), lets `body` fill the
/// rest and submits it. A full ring buffer is counted in `LOST[kind]`.
#[inline(always)]
pub fn emit<T: 'static>(
    kind: u8,
    sk: u64,
    info: &SocketInfo,
    ends: &Endpoints,
    ts_ns: u64,
    body: impl FnOnce(&mut T),
) {
    emit_standing_for(kind, (kind, 1), sk, info, ends, ts_ns, body);
}

/// [`emit`] for a record that stands for `events.1` events of kind `events.0`: that many are
/// counted lost if the ring buffer is full.
#[inline(always)]
pub fn emit_standing_for<T: 'static>(
    kind: u8,
    events: (u8, u64),
    sk: u64,
    info: &SocketInfo,
    ends: &Endpoints,
    ts_ns: u64,
    body: impl FnOnce(&mut T),
) {
    let route = info.route;
    let Some(mut entry) = reserve::<T>(route) else {
        count_lost(events.0, events.1);
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
    header.established_after_ns = established::take(sk, info);
    header.ts_ns = ts_ns;
    header.sk = sk;
    header.birth_ns = info.birth_ns;
    header.comm = info.owner.comm;
    sock::fill_addresses(sk, ends, header);
    // SAFETY: as above; `body` writes the remaining fields, including padding.
    body(unsafe { &mut *record });
    entry.submit(wakeup_flags(route));
}

/// The ring buffer that carries the records of the socket life with this `route`. Each ring is
/// named in a branch of its own: the verifier takes a map only as a constant. With one ring
/// (`CONFIG` is read-only), the verifier follows the first branch alone.
macro_rules! in_ring_of {
    (@use $map:ident, $ring:ident, $use:expr) => {{
        let $ring = &$map;
        $use
    }};
    ($route:expr, |$ring:ident| $use:expr) => {
        match ring_of($route, conf!(rings)) {
            0 => in_ring_of!(@use EVENTS, $ring, $use),
            1 => in_ring_of!(@use EVENTS_1, $ring, $use),
            2 => in_ring_of!(@use EVENTS_2, $ring, $use),
            3 => in_ring_of!(@use EVENTS_3, $ring, $use),
            4 => in_ring_of!(@use EVENTS_4, $ring, $use),
            5 => in_ring_of!(@use EVENTS_5, $ring, $use),
            6 => in_ring_of!(@use EVENTS_6, $ring, $use),
            7 => in_ring_of!(@use EVENTS_7, $ring, $use),
            8 => in_ring_of!(@use EVENTS_8, $ring, $use),
            9 => in_ring_of!(@use EVENTS_9, $ring, $use),
            10 => in_ring_of!(@use EVENTS_10, $ring, $use),
            11 => in_ring_of!(@use EVENTS_11, $ring, $use),
            12 => in_ring_of!(@use EVENTS_12, $ring, $use),
            13 => in_ring_of!(@use EVENTS_13, $ring, $use),
            14 => in_ring_of!(@use EVENTS_14, $ring, $use),
            _ => in_ring_of!(@use EVENTS_15, $ring, $use),
        }
    };
}

#[inline(always)]
fn reserve<T: 'static>(route: u16) -> Option<RingBufEntry<T>> {
    in_ring_of!(route, |ring| ring.reserve::<T>(0))
}

/// Wakes userspace only when enough has piled up; otherwise it drains on its own timer.
#[inline(always)]
fn wakeup_flags(route: u16) -> u64 {
    let waiting = in_ring_of!(route, |ring| ring.query(BPF_RB_AVAIL_DATA as u64));
    if waiting >= conf!(wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn count_lost(kind: u8, events: u64) {
    if let Some(counter) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: this CPU's slot. Atomic: a softirq's program may interrupt ours and count
        // into the same slot.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(counter, events) };
    }
}

/// One application observation, as it will be reported.
pub struct Observation {
    pub kind: u8,
    pub fd: i32,
    pub value: i32,
    pub bytes: u64,
    pub calls: u32,
    pub via: u8,
    pub snapshot: SockSnapshot,
    /// When the (first) call began and the (last) one ended.
    pub started_ns: u64,
    pub ended_ns: u64,
}

impl Observation {
    /// One call, seen now.
    #[inline(always)]
    pub fn single(kind: u8, sk: u64, ends: &Endpoints, fd: i32, value: i32) -> Self {
        let snapshot = sock::snapshot(sk, ends.state, sock::health(sk));
        let now = now();
        Self {
            kind,
            fd,
            value,
            bytes: 0,
            calls: 1,
            via: 0,
            snapshot,
            started_ns: now,
            ended_ns: now,
        }
    }
}

impl Observation {
    /// Tallied calls on a healthy socket in `state`, reported as one record.
    #[inline(always)]
    pub fn summary(kind: u8, fd: i32, value: i32, via: u8, span: Span, state: u8) -> Self {
        Self {
            kind,
            fd,
            value,
            bytes: span.bytes,
            calls: span.calls,
            via,
            snapshot: SockSnapshot::of_state(state),
            started_ns: span.first_ns,
            ended_ns: span.last_ns,
        }
    }
}

/// Reports an observation on `sk` under the owner already known (`info`).
#[inline(always)]
pub fn observed_as(sk: u64, ends: &Endpoints, obs: &Observation, info: &SocketInfo) {
    let mut ends = *ends;
    if !wanted(sk, info, &mut ends) {
        return;
    }
    emit(obs.kind, sk, info, &ends, obs.ended_ns, |event: &mut AppEvent| {
        event.snapshot = obs.snapshot;
        event.fd = obs.fd;
        event.value = obs.value;
        event.bytes = obs.bytes;
        event.calls = obs.calls;
        event.via = obs.via;
        crate::zero::zero(&mut event._pad);
        event.started_ns = obs.started_ns;
    });
}

/// Adds `n` to a `COUNTERS` slot on this CPU.
#[inline(always)]
pub fn count(slot: u32, n: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; only process-context programs count (summarised I/O and
        // readiness), and none of them can interrupt another.
        unsafe { *counter += n };
    }
}
