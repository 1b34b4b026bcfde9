//! The summarising policy for the hot paths (recv, send, readiness).
//!
//! Reported at once: EOF, errors other than EAGAIN, calls on a socket that is not ESTABLISHED,
//! has a pending error or is retransmitting without progress, and HUP/RDHUP/ERR readiness.
//! Everything else is tallied per socket and reported on the first call after a change of
//! state or of what is reported (readiness mask or mechanism), or once per
//! `IO_REPORT_INTERVAL_NS`, as one record standing for `calls` calls.
//! `--all-io` reports every call.

use connwatch_common::{
    config::FLAG_ALL_IO,
    event::COUNTER_IO_SUMMARISED,
    names::IO_REPORT_INTERVAL_NS,
    socket::{IoState, IoTally},
    tcp::TCP_ESTABLISHED,
};

use crate::{config::conf, emit, maps::IO_STATE, owner::now, sock::Health};

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

/// Tallies one call of `bytes`; returns `Some((calls, bytes))` when a record is due, covering
/// every call since the last one. `signature` stands for what the call reports beyond bytes.
#[inline(always)]
pub fn tally(
    sk: u64,
    path: Path,
    bytes: u64,
    notable: bool,
    state: u8,
    signature: u32,
) -> Option<(u32, u64)> {
    if conf!(flags) & FLAG_ALL_IO != 0 {
        return Some((1, bytes));
    }
    let io = match IO_STATE.get_ptr_mut(&sk) {
        Some(io) => io,
        None => {
            let _ = IO_STATE.insert(&sk, &IoState::default(), 0);
            IO_STATE.get_ptr_mut(&sk)?
        }
    };
    // SAFETY: a valid map value pointer; tallies of one socket race only with themselves.
    let io = unsafe { &mut *io };
    let tally: &mut IoTally = match path {
        Path::Recv => &mut io.recv,
        Path::Send => &mut io.send,
        Path::Readiness => &mut io.readiness,
    };
    tally.calls += 1;
    tally.bytes += bytes;
    let now = now();
    let due = notable
        || tally.last_state != state
        || tally.last_signature != signature
        || now.wrapping_sub(tally.last_report_ns) >= IO_REPORT_INTERVAL_NS;
    if !due {
        emit::count(COUNTER_IO_SUMMARISED, 1);
        return None;
    }
    let report = (tally.calls, tally.bytes);
    *tally = IoTally {
        last_report_ns: now,
        bytes: 0,
        calls: 0,
        last_signature: signature,
        last_state: state,
        _pad: [0; 7],
    };
    Some(report)
}
