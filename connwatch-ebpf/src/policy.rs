//! The summarising policy for the hot paths (recv, send, readiness).
//!
//! Reported at once: EOF, errors other than EAGAIN, calls on a socket that is not ESTABLISHED,
//! has a pending error or is retransmitting without progress, and HUP/RDHUP/ERR readiness.
//! Everything else is tallied per socket and reported as one record standing for `calls`
//! calls, with the times of the first and the last: once per `IO_REPORT_INTERVAL_NS`, or
//! before a call that changes what is reported (state, readiness mask or mechanism) or is
//! notable, which is then reported on its own; and the recv and send tallies when the socket
//! leaves ESTABLISHED ([`report_tallies`]). A summary therefore only ever stands for calls on
//! a healthy ESTABLISHED socket, in the order they happened. `--all-io` reports every call.
//!
//! The fast path: a socket read healthy and ESTABLISHED is *trusted* until a kernel event on it
//! (state change, reset, error, retransmission) clears that; while trusted, its owner's
//! routine calls (data moved, a read or write that would block, readiness without
//! HUP/RDHUP/ERR) are tallied after one map lookup, without reading the socket.

use connwatch_common::{
    config::FLAG_ALL_IO,
    event::{AppEvent, COUNTER_IO_SUMMARISED, KIND_RECV, KIND_SEND},
    names::{ATTENTION_SLOTS, IO_REPORT_INTERVAL_NS},
    socket::{IoState, IoTally, SOCKET_APP_CLOSED, SocketInfo},
    tcp::TCP_ESTABLISHED,
};

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd, atomic_xchg};

use aya_ebpf::helpers::bpf_get_current_pid_tgid;

use crate::{
    config::conf,
    emit,
    maps::{ATTENTION, IO_STATE},
    owner::now,
    sock::{Endpoints, Health},
};

#[derive(Clone, Copy)]
pub enum Path {
    Recv,
    Send,
    Readiness,
}

/// Whether a call on this socket deserves its own report regardless of the tally.
#[inline(always)]
pub fn notable_socket(state: u8, health: &Health) -> bool {
    state != TCP_ESTABLISHED || health.sk_err != 0 || health.rto_retransmits != 0
}

/// Calls a record stands for: how many, the bytes they moved, when the first began and the
/// last was seen.
#[derive(Clone, Copy)]
pub struct Span {
    pub calls: u32,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// What a call's tally asks the hook to report.
pub struct Due {
    /// Earlier calls still tallied, reported before this one (with the state and signature
    /// they were made under).
    pub earlier: Option<(Span, u8, u32)>,
    /// This call, with any tallied calls folded into it.
    pub this: Span,
}

/// Who makes a call and when: read once per syscall, however many sockets it covers.
#[derive(Clone, Copy)]
pub struct Caller {
    pub tgid: u32,
    pub now: u64,
    /// When the call began, if it was seen beginning (0: unknown, `now` stands in).
    pub started_ns: u64,
}

impl Caller {
    #[inline(always)]
    pub fn current(started_ns: u64) -> Self {
        Self::of(bpf_get_current_pid_tgid(), started_ns)
    }

    /// The caller whose `bpf_get_current_pid_tgid()` the hook read already.
    #[inline(always)]
    pub fn of(pid_tgid: u64, started_ns: u64) -> Self {
        Self::at(pid_tgid, now(), started_ns)
    }

    /// [`Caller::of`] at a time the hook read already.
    #[inline(always)]
    pub fn at(pid_tgid: u64, now: u64, started_ns: u64) -> Self {
        Self { tgid: (pid_tgid >> 32) as u32, now, started_ns }
    }
}

/// The fast path: a routine call on a trusted socket, by its owner, whose tally is not due, is
/// tallied after one map lookup, without reading the socket. Returns whether it was; the caller
/// adds what it tallied to `COUNTER_IO_SUMMARISED` (once per syscall). Not inlined: the
/// readiness loops call it per entry, and as a subprogram it converges at one return instead
/// of multiplying the verifier's paths.
#[inline(never)]
pub fn fast_tally(sk: u64, path: Path, bytes: u64, signature: u32, by: &Caller) -> bool {
    if conf!(flags) & FLAG_ALL_IO != 0 {
        return false;
    }
    let Some(io) = IO_STATE.get_ptr_mut(&sk) else {
        return false;
    };
    // SAFETY: a valid map value pointer; tallies of one socket race only with themselves.
    let io = unsafe { &mut *io };
    if io.trusted == 0 || io.owner_tgid != by.tgid {
        return false;
    }
    let tally = select(io, path);
    if tally.last_state != TCP_ESTABLISHED
        || tally.last_signature != signature
        || by.now.wrapping_sub(tally.last_report_ns) >= IO_REPORT_INTERVAL_NS
    {
        return false;
    }
    if tally.calls == 0 {
        tally.first_ns = if by.started_ns != 0 { by.started_ns } else { by.now };
    }
    tally.calls += 1;
    tally.bytes += bytes;
    tally.last_ns = by.now;
    true
}

/// The kernel did something to the socket (state change, reset, error, retransmission):
/// routine calls must look again. Unless `attention_of` is 0 (an owner not known, or news
/// that needs none, such as ESTABLISHED), the socket also counts against that process in
/// `ATTENTION` until a look finds it healthy again or it is gone.
#[inline(always)]
pub fn distrust(sk: u64, attention_of: u32) {
    let io = if attention_of != 0 { io_state_or_new(sk) } else { IO_STATE.get_ptr_mut(&sk) };
    let Some(io) = io else {
        return;
    };
    // SAFETY: a valid map value pointer.
    unsafe { (*io).trusted = 0 };
    if attention_of != 0 {
        charge(io, attention_of);
    }
}

/// The socket leaves ESTABLISHED: the recv and send calls still tallied (made on the healthy
/// connection before the change) are reported now, each direction as one record, so the
/// records account for every call even where the application makes none afterwards (a peer
/// that closed, a reset). A tally is otherwise reported only before its socket's next call.
/// `ends` and `info` are what the state change's own record would carry, the filters passed.
/// Not inlined, and writing each record in place: one small frame beside the state programs'
/// large ones (Linux 6.1 allows 512 bytes for a call chain's frames together).
#[inline(never)]
pub fn report_tallies(sk: u64, ends: &Endpoints, info: &SocketInfo) {
    if conf!(flags) & FLAG_ALL_IO != 0 {
        return;
    }
    let Some(io) = IO_STATE.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: a valid map value pointer. The fast path no longer adds to these tallies: the
    // change's `distrust` came first.
    let io = unsafe { &mut *io };
    report_tally(sk, ends, info, KIND_RECV, &mut io.recv);
    report_tally(sk, ends, info, KIND_SEND, &mut io.send);
}

/// Reports one direction's tallied calls, if any, as a summary (see `Observation::summary`),
/// and empties the tally.
#[inline(always)]
fn report_tally(sk: u64, ends: &Endpoints, info: &SocketInfo, kind: u8, tally: &mut IoTally) {
    if tally.calls == 0 {
        return;
    }
    // The record is filled from the tally itself, which is emptied after: values copied out
    // before the reservation outlived its helper calls on the stack, and the frame grew past
    // what 6.1 allows beside the state programs. Nothing adds to the tally meanwhile (see above).
    emit::emit(kind, sk, info, ends, tally.last_ns, |event: &mut AppEvent| {
        // Field by field: the struct assignment of `SockSnapshot::of_state` became a `memset`
        // call, whose frame (32 bytes, however small) took the chain past 6.1's 512.
        let snapshot = &mut event.snapshot;
        snapshot.state = tally.last_state;
        snapshot.rto_retransmits = 0;
        crate::zero::zero(&mut snapshot._pad);
        snapshot.sk_err = 0;
        snapshot.unacked_bytes = 0;
        snapshot.srtt_us = 0;
        event.fd = -1;
        event.value = 0;
        event.bytes = tally.bytes;
        event.calls = tally.calls;
        event.via = 0;
        crate::zero::zero(&mut event._pad);
        event.started_ns = tally.first_ns;
    });
    // Volatile: plain stores of these neighbours became a `memset` call (see above).
    // SAFETY: each a field of the tally, aligned.
    unsafe {
        core::ptr::write_volatile(&raw mut tally.calls, 0);
        core::ptr::write_volatile(&raw mut tally.bytes, 0);
        core::ptr::write_volatile(&raw mut tally.first_ns, 0);
        core::ptr::write_volatile(&raw mut tally.last_ns, 0);
    }
}

/// The socket's tallies go (its life ended, or a new one began at its address), and with them
/// its count in `ATTENTION`. Most new lives find none, and deleting an absent key still takes
/// a bucket lock: only an entry found is deleted (none can appear meanwhile: the old life is
/// over, the new one not yet known).
#[inline(always)]
pub fn release(sk: u64) {
    if let Some(io) = IO_STATE.get_ptr_mut(&sk) {
        discharge(io);
        let _ = IO_STATE.remove(&sk);
    }
}

/// Whether process `tgid` holds a socket needing attention (or shares its `ATTENTION` slot
/// with one that does).
#[inline(always)]
pub fn needs_attention(tgid: u32) -> bool {
    ATTENTION.get_ptr(tgid % ATTENTION_SLOTS).is_some_and(|slot| {
        // SAFETY: a valid map value pointer; an aligned 8-byte load is never torn, and other
        // CPUs change it only atomically.
        (unsafe { core::ptr::read_volatile(slot) }) != 0
    })
}

/// Whom news of this socket concerns: its owner, unless the owner let go of it (closed it)
/// or is unknown (0).
#[inline(always)]
pub fn attention_of(info: &SocketInfo) -> u32 {
    if info.flags & SOCKET_APP_CLOSED != 0 { 0 } else { info.owner.tgid }
}

/// Counts the socket against `tgid` (moving any count it held against another process).
#[inline(always)]
fn charge(io: *mut IoState, tgid: u32) {
    // SAFETY: a valid map value pointer; the field is only ever swapped atomically.
    let previous =
        unsafe { atomic_xchg::<u64, { Relaxed }>(&raw mut (*io).attention_tgid, tgid as u64) };
    if previous != tgid as u64 {
        attention_add(tgid, 1);
        if previous != 0 {
            attention_add(previous as u32, u64::MAX);
        }
    }
}

/// Takes back the socket's count, if it holds one: exactly once, whoever races for it.
#[inline(always)]
fn discharge(io: *mut IoState) {
    // SAFETY: a valid map value pointer; the field is only ever swapped atomically.
    let previous = unsafe { atomic_xchg::<u64, { Relaxed }>(&raw mut (*io).attention_tgid, 0) };
    if previous != 0 {
        attention_add(previous as u32, u64::MAX);
    }
}

/// Adds `delta` (wrapping: `u64::MAX` takes one away) to `tgid`'s slot.
#[inline(always)]
fn attention_add(tgid: u32, delta: u64) {
    if let Some(slot) = ATTENTION.get_ptr_mut(tgid % ATTENTION_SLOTS) {
        // SAFETY: a valid map value pointer, changed only atomically.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(slot, delta) };
    }
}

#[inline(always)]
fn select(io: &mut IoState, path: Path) -> &mut IoTally {
    match path {
        Path::Recv => &mut io.recv,
        Path::Send => &mut io.send,
        Path::Readiness => &mut io.readiness,
    }
}

/// A new socket's tallies, copied by the map update from read-only memory: an
/// `IoState::default()` on the stack is zeroed by a byte loop (the BPF target has no memset)
/// that the verifier walks byte by byte on every path, which put the readiness programs over
/// Linux 6.1's limit of a million instructions.
#[unsafe(no_mangle)]
static ZERO_IO_STATE: IoState = unsafe { core::mem::zeroed() };

/// The socket's tallies, created empty if it has none yet.
#[inline(always)]
fn io_state_or_new(sk: u64) -> Option<*mut IoState> {
    if let Some(io) = IO_STATE.get_ptr_mut(&sk) {
        return Some(io);
    }
    let _ = IO_STATE.insert(&sk, &ZERO_IO_STATE, 0);
    IO_STATE.get_ptr_mut(&sk)
}

/// Tallies one call of `bytes` that began at `started_ns` and ended at `now` (the hit's clock
/// read, not read again here); returns what is due, or `None` when the call was folded into
/// the tally. `healthy_now`, when given, is what the caller just read of
/// the socket: it decides whether the caller's next routine calls may take the fast path.
#[inline(always)]
pub fn tally(
    sk: u64,
    path: Path,
    bytes: u64,
    notable: bool,
    state: u8,
    signature: u32,
    (started_ns, now): (u64, u64),
    healthy_now: Option<bool>,
) -> Option<Due> {
    let single = Span { calls: 1, bytes, first_ns: started_ns, last_ns: now };
    if conf!(flags) & FLAG_ALL_IO != 0 {
        return Some(Due { earlier: None, this: single });
    }
    let io = io_state_or_new(sk)?;
    // SAFETY: a valid map value pointer; tallies of one socket race only with themselves.
    let io = unsafe { &mut *io };
    if let Some(healthy) = healthy_now {
        // The caller is the owner from now on (it touches the socket), and the one whose
        // readiness must be examined while the socket is not healthy.
        let caller = (bpf_get_current_pid_tgid() >> 32) as u32;
        io.trusted = healthy as u8;
        io.owner_tgid = caller;
        if healthy {
            discharge(io);
        } else {
            charge(io, caller);
        }
    }
    let tally = select(io, path);
    let changed = notable || tally.last_state != state || tally.last_signature != signature;
    let interval = now.wrapping_sub(tally.last_report_ns) >= IO_REPORT_INTERVAL_NS;
    if !changed && !interval {
        if tally.calls == 0 {
            tally.first_ns = started_ns;
        }
        tally.calls += 1;
        tally.bytes += bytes;
        tally.last_ns = now;
        emit::count(COUNTER_IO_SUMMARISED, 1);
        return None;
    }
    let held = Span {
        calls: tally.calls,
        bytes: tally.bytes,
        first_ns: tally.first_ns,
        last_ns: tally.last_ns,
    };
    let due = if tally.calls == 0 {
        Due { earlier: None, this: single }
    } else if changed {
        Due { earlier: Some((held, tally.last_state, tally.last_signature)), this: single }
    } else {
        let folded = Span {
            calls: held.calls + 1,
            bytes: held.bytes + bytes,
            first_ns: held.first_ns,
            last_ns: now,
        };
        Due { earlier: None, this: folded }
    };
    // Field by field: a struct assignment would be zeroed through a memset loop (see `zero`).
    tally.last_report_ns = now;
    tally.first_ns = 0;
    tally.last_ns = 0;
    tally.bytes = 0;
    tally.calls = 0;
    tally.last_signature = signature;
    tally.last_state = state;
    crate::zero::zero(&mut tally._pad);
    Some(due)
}
