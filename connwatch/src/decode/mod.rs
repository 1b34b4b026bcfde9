//! Ring-buffer records to typed events. Every record is checked (length, kind, family, state)
//! before it is read; a bad one is an error to count, never a panic.

mod errno;
mod event;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use connwatch_common::{
    event::{
        AppEvent, DestroyEvent, ErrorEvent, EventHeader, KIND_ACCEPT, KIND_CLOSE, KIND_CONNECT,
        KIND_DESTROY, KIND_ERROR, KIND_READINESS, KIND_RECV, KIND_RESET, KIND_RETRANSMIT,
        KIND_SEND, KIND_SO_ERROR, KIND_STATE, KIND_STATES, RESET_RX, RESET_TX, ResetEvent,
        RetransmitEvent, SockSnapshot, StateEvent, StatesEvent, VIA_EPOLL, VIA_POLL, VIA_SELECT,
    },
    socket::{OWNER_UNKNOWN, established_from},
    tcp::{AF_INET, AF_INET6, TCP_ESTABLISHED},
};
use thiserror::Error;

pub use errno::Errno;
pub use event::{
    Comm, Detail, Direction, Event, Family, Io, Owner, Snapshot, SockId, TcpState, Via,
    readiness_names,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than {need}")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("invalid TCP state {0}")]
    InvalidState(u8),
    #[error("invalid reset direction {0}")]
    InvalidDirection(u8),
    #[error("invalid readiness source {0}")]
    InvalidVia(u8),
    #[error("a record standing for no calls")]
    NoCalls,
    #[error("a record of {0} state changes")]
    InvalidCount(u8),
    #[error("a change to ESTABLISHED carried by a life whose birth begins no connection")]
    EstablishedWithoutOpening,
}

/// The JSON / summary name of an event kind.
pub const fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        KIND_STATE => "state",
        KIND_RESET => "reset",
        KIND_RETRANSMIT => "retransmit",
        KIND_ERROR => "error",
        KIND_SO_ERROR => "so_error",
        KIND_READINESS => "readiness",
        KIND_RECV => "recv",
        KIND_SEND => "send",
        KIND_CONNECT => "connect",
        KIND_ACCEPT => "accept",
        KIND_CLOSE => "close",
        KIND_DESTROY => "destroy",
        _ => return None,
    })
}

pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    decode_one(&read(record)?, record)
}

/// A record of one event, its header already read.
fn decode_one(header: &EventHeader, record: &[u8]) -> Result<Event, DecodeError> {
    let mut ts_ns = header.ts_ns;
    let detail = match header.kind {
        KIND_STATE => {
            let e: StateEvent = read(record)?;
            Detail::State { old: TcpState::new(e.old_state)?, new: TcpState::new(e.new_state)? }
        }
        KIND_RESET => {
            let e: ResetEvent = read(record)?;
            let direction = match e.direction {
                RESET_RX => Direction::Rx,
                RESET_TX => Direction::Tx,
                other => return Err(DecodeError::InvalidDirection(other)),
            };
            Detail::Reset { direction, state: TcpState::new(e.state)? }
        }
        KIND_RETRANSMIT => {
            let e: RetransmitEvent = read(record)?;
            Detail::Retransmit { state: TcpState::new(e.state)? }
        }
        KIND_ERROR => {
            let e: ErrorEvent = read(record)?;
            Detail::Error { errno: Errno(e.errno), state: TcpState::new(e.state)? }
        }
        KIND_DESTROY => {
            let e: DestroyEvent = read(record)?;
            Detail::Destroy { state: TcpState::new(e.state)? }
        }
        KIND_SO_ERROR..=KIND_ACCEPT => {
            let e: AppEvent = read(record)?;
            // An observation is placed at the start of its (first) call: before the kernel
            // events that the call itself caused.
            if e.started_ns != 0 && e.started_ns <= header.ts_ns {
                ts_ns = e.started_ns;
            }
            observation(header.kind, &e)?
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    event(header, ts_ns, header.ts_ns, detail)
}

/// Decodes one record into the events it holds, appended to `out`: one, or for a
/// [`KIND_STATES`] record each of its state changes, at its own time; first, the change to
/// ESTABLISHED its header carries, if any. A bad record appends nothing.
pub fn decode_into(record: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
    let header: EventHeader = read(record)?;
    let decoded = out.len();
    let all = carried_established(&header, out).and_then(|()| record_events(&header, record, out));
    if all.is_err() {
        out.truncate(decoded);
    }
    all
}

/// The record's own events.
fn record_events(
    header: &EventHeader,
    record: &[u8],
    out: &mut Vec<Event>,
) -> Result<(), DecodeError> {
    if header.kind != KIND_STATES {
        out.push(decode_one(header, record)?);
        return Ok(());
    }
    let e: StatesEvent = read(record)?;
    let changes = e.changes.get(..usize::from(e.count)).filter(|c| !c.is_empty());
    let changes = changes.ok_or(DecodeError::InvalidCount(e.count))?;
    changes.iter().try_for_each(|c| {
        let detail =
            Detail::State { old: TcpState::new(c.old_state)?, new: TcpState::new(c.new_state)? };
        out.push(event(header, c.ts_ns, c.ts_ns, detail)?);
        Ok(())
    })
}

/// The change to ESTABLISHED the header carries (`established_after_ns` after the birth), from
/// the state the birth's opening entered.
fn carried_established(h: &EventHeader, out: &mut Vec<Event>) -> Result<(), DecodeError> {
    if h.established_after_ns == 0 {
        return Ok(());
    }
    let (old, born_ns) =
        established_from(h.birth_ns).ok_or(DecodeError::EstablishedWithoutOpening)?;
    let ts_ns = born_ns + u64::from(h.established_after_ns);
    let detail = Detail::State { old: TcpState::new(old)?, new: TcpState::new(TCP_ESTABLISHED)? };
    out.push(event(h, ts_ns, ts_ns, detail)?);
    Ok(())
}

fn event(h: &EventHeader, ts_ns: u64, until_ns: u64, detail: Detail) -> Result<Event, DecodeError> {
    let (family, local, remote) = endpoints(h)?;
    let owner =
        (h.tgid != OWNER_UNKNOWN).then(|| Owner { pid: h.tgid, comm: Comm::from_kernel(&h.comm) });
    Ok(Event {
        ts_ns,
        until_ns,
        owner,
        sock: SockId { addr: h.sk, birth_ns: h.birth_ns },
        family,
        local,
        remote,
        detail,
    })
}

fn observation(kind: u8, e: &AppEvent) -> Result<Detail, DecodeError> {
    let snapshot = snapshot(&e.snapshot)?;
    let fd = e.fd;
    if e.calls == 0 {
        return Err(DecodeError::NoCalls);
    }
    let io = || Io {
        last: if e.value < 0 { Err(Errno(-e.value)) } else { Ok(e.value as u32) },
        bytes: e.bytes,
        calls: e.calls,
    };
    Ok(match kind {
        KIND_SO_ERROR => Detail::SoError { fd, value: errno(e.value), snapshot },
        KIND_READINESS => {
            let via = match e.via {
                VIA_EPOLL => Via::Epoll,
                VIA_POLL => Via::Poll,
                VIA_SELECT => Via::Select,
                other => return Err(DecodeError::InvalidVia(other)),
            };
            Detail::Readiness { fd, via, mask: e.value as u32, calls: e.calls, snapshot }
        }
        KIND_RECV => Detail::Recv { io: io(), snapshot },
        KIND_SEND => Detail::Send { io: io(), snapshot },
        KIND_CONNECT => {
            let result = if e.value < 0 { Err(Errno(-e.value)) } else { Ok(()) };
            Detail::Connect { fd, result, snapshot }
        }
        KIND_ACCEPT => Detail::Accept { fd, snapshot },
        _ => Detail::Close { fd, others: e.value.max(0) as u32, snapshot },
    })
}

fn snapshot(s: &SockSnapshot) -> Result<Snapshot, DecodeError> {
    Ok(Snapshot {
        state: TcpState::new(s.state)?,
        sk_err: errno(s.sk_err),
        rto_retransmits: s.rto_retransmits,
        unacked_bytes: s.unacked_bytes,
        srtt_us: s.srtt_us,
    })
}

/// A positive errno, or `None` for 0.
fn errno(value: i32) -> Option<Errno> {
    (value != 0).then_some(Errno(value.abs()))
}

/// Reads a `#[repr(C)]` record of plain integers from the front of `bytes`.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { len: bytes.len(), need });
    }
    // SAFETY: length checked; every T used here is #[repr(C)] integers and byte arrays, for
    // which any bit pattern is valid; read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn endpoints(h: &EventHeader) -> Result<(Family, SocketAddr, SocketAddr), DecodeError> {
    let (family, saddr, daddr) = match h.family {
        AF_INET => (Family::Inet, ipv4(&h.saddr), ipv4(&h.daddr)),
        // v4-mapped addresses (dual-stack sockets talking IPv4) are shown as IPv4.
        AF_INET6 => (Family::Inet6, ipv6(&h.saddr), ipv6(&h.daddr)),
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok((family, SocketAddr::new(saddr, h.sport), SocketAddr::new(daddr, h.dport)))
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn ipv6(bytes: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests;
