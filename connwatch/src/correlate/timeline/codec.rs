//! One timeline entry as bytes: variable-length integers (LEB128; signed ones zigzagged), so a
//! state change takes 6 bytes instead of the 64 of a `(u64, u64, Detail)`.

use crate::decode::{Detail, Direction, Errno, Io, Snapshot, TcpState, Via};

/// The longest entry: two times (10 bytes each at most), the tag, and a `Recv`'s fields.
const MOST_BYTES: usize = 64;

/// One entry being written (on the stack: recording an event allocates nothing).
pub struct Entry {
    bytes: [u8; MOST_BYTES],
    len: usize,
}

impl Entry {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    fn extend<const N: usize>(&mut self, bytes: [u8; N]) {
        for b in bytes {
            self.push(b);
        }
    }
}

/// `(ts, until, detail)`, written after `base`, the timeline's reference time.
pub fn encode(base: u64, ts: u64, until: u64, detail: &Detail) -> Entry {
    let mut out = Entry { bytes: [0; MOST_BYTES], len: 0 };
    put_entry(&mut out, base, ts, until, detail);
    out
}

fn put_entry(out: &mut Entry, base: u64, ts: u64, until: u64, detail: &Detail) {
    put_i64(out, ts.wrapping_sub(base) as i64);
    put_u64(out, until.wrapping_sub(ts));
    put_detail(out, detail);
}

/// Reads an entry written by [`put_entry`] with the same `base`.
pub fn entry(bytes: &[u8], base: u64) -> (u64, u64, Detail) {
    let mut r = Reader(bytes);
    let ts = base.wrapping_add(r.i64() as u64);
    let until = ts.wrapping_add(r.u64());
    (ts, until, r.detail())
}

/// Only the time of an entry (the first field).
pub fn entry_ts(bytes: &[u8], base: u64) -> u64 {
    base.wrapping_add(Reader(bytes).i64() as u64)
}

fn put_u64(out: &mut Entry, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i64(out: &mut Entry, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_errno(out: &mut Entry, e: Option<Errno>) {
    match e {
        None => out.push(0),
        Some(Errno(v)) => {
            out.push(1);
            put_i64(out, v.into());
        }
    }
}

fn put_snapshot(out: &mut Entry, s: &Snapshot) {
    out.extend([s.state.value(), s.rto_retransmits]);
    put_errno(out, s.sk_err);
    put_u64(out, s.unacked_bytes.into());
    put_u64(out, s.srtt_us.into());
}

fn put_io(out: &mut Entry, io: &Io) {
    match io.last {
        Ok(n) => {
            out.push(0);
            put_u64(out, n.into());
        }
        Err(e) => put_errno(out, Some(e)),
    }
    put_u64(out, io.bytes);
    put_u64(out, io.calls.into());
}

// Tags of the variants.
const STATE: u8 = 0;
const RESET: u8 = 1;
const RETRANSMIT: u8 = 2;
const ERROR: u8 = 3;
const SO_ERROR: u8 = 4;
const READINESS: u8 = 5;
const RECV: u8 = 6;
const SEND: u8 = 7;
const CONNECT: u8 = 8;
const ACCEPT: u8 = 9;
const DESTROY: u8 = 10;
const SEEN: u8 = 11;
const CLOSE: u8 = 12;

fn put_detail(out: &mut Entry, detail: &Detail) {
    let fd = |out: &mut Entry, fd: i32| put_i64(out, fd.into());
    match detail {
        Detail::State { old, new } => out.extend([STATE, old.value(), new.value()]),
        Detail::Reset { direction, state } => {
            out.extend([RESET, matches!(direction, Direction::Tx).into(), state.value()]);
        }
        Detail::Retransmit { state } => out.extend([RETRANSMIT, state.value()]),
        Detail::Error { errno, state } => {
            out.extend([ERROR, state.value()]);
            put_i64(out, errno.0.into());
        }
        Detail::SoError { fd: f, value, snapshot } => {
            out.push(SO_ERROR);
            fd(out, *f);
            put_errno(out, *value);
            put_snapshot(out, snapshot);
        }
        Detail::Readiness { fd: f, via, mask, calls, snapshot } => {
            out.extend([READINESS, *via as u8]);
            fd(out, *f);
            put_u64(out, (*mask).into());
            put_u64(out, (*calls).into());
            put_snapshot(out, snapshot);
        }
        Detail::Recv { io, snapshot } | Detail::Send { io, snapshot } => {
            out.push(if matches!(detail, Detail::Recv { .. }) { RECV } else { SEND });
            put_io(out, io);
            put_snapshot(out, snapshot);
        }
        Detail::Connect { fd: f, result, snapshot } => {
            out.push(CONNECT);
            fd(out, *f);
            put_errno(out, result.err());
            put_snapshot(out, snapshot);
        }
        Detail::Accept { fd: f, snapshot } => {
            out.push(ACCEPT);
            fd(out, *f);
            put_snapshot(out, snapshot);
        }
        Detail::Destroy { state } => out.extend([DESTROY, state.value()]),
        Detail::Seen { state, at_start } => out.extend([SEEN, state.value(), (*at_start).into()]),
        Detail::Close { fd: f, others, snapshot } => {
            out.push(CLOSE);
            fd(out, *f);
            put_u64(out, (*others).into());
            put_snapshot(out, snapshot);
        }
    }
}

/// Reads what the `put_` functions wrote. The bytes never leave the timeline that wrote
/// them, so a value out of range is a bug here, not bad input: it panics.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().expect("a timeline entry ends early");
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        let mut v = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }

    fn i64(&mut self) -> i64 {
        let v = self.u64();
        (v >> 1) as i64 ^ -((v & 1) as i64)
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn i32(&mut self) -> i32 {
        self.i64() as i32
    }

    fn state(&mut self) -> TcpState {
        TcpState::new(self.byte()).expect("written from a TcpState")
    }

    fn errno(&mut self) -> Option<Errno> {
        (self.byte() != 0).then(|| Errno(self.i32()))
    }

    fn snapshot(&mut self) -> Snapshot {
        let (state, rto_retransmits) = (self.state(), self.byte());
        let sk_err = self.errno();
        Snapshot { state, sk_err, rto_retransmits, unacked_bytes: self.u32(), srtt_us: self.u32() }
    }

    fn io(&mut self) -> Io {
        let last = match self.errno() {
            None => Ok(self.u32()),
            Some(e) => Err(e),
        };
        Io { last, bytes: self.u64(), calls: self.u32() }
    }

    fn detail(&mut self) -> Detail {
        match self.byte() {
            STATE => Detail::State { old: self.state(), new: self.state() },
            RESET => {
                let direction = if self.byte() == 1 { Direction::Tx } else { Direction::Rx };
                Detail::Reset { direction, state: self.state() }
            }
            RETRANSMIT => Detail::Retransmit { state: self.state() },
            ERROR => {
                let state = self.state();
                Detail::Error { errno: Errno(self.i32()), state }
            }
            SO_ERROR => {
                Detail::SoError { fd: self.i32(), value: self.errno(), snapshot: self.snapshot() }
            }
            READINESS => {
                let via = match self.byte() {
                    0 => Via::Epoll,
                    1 => Via::Poll,
                    _ => Via::Select,
                };
                let (fd, mask, calls) = (self.i32(), self.u32(), self.u32());
                Detail::Readiness { fd, via, mask, calls, snapshot: self.snapshot() }
            }
            RECV => Detail::Recv { io: self.io(), snapshot: self.snapshot() },
            SEND => Detail::Send { io: self.io(), snapshot: self.snapshot() },
            CONNECT => {
                let fd = self.i32();
                let result = self.errno().map_or(Ok(()), Err);
                Detail::Connect { fd, result, snapshot: self.snapshot() }
            }
            ACCEPT => Detail::Accept { fd: self.i32(), snapshot: self.snapshot() },
            DESTROY => Detail::Destroy { state: self.state() },
            SEEN => Detail::Seen { state: self.state(), at_start: self.byte() != 0 },
            CLOSE => {
                Detail::Close { fd: self.i32(), others: self.u32(), snapshot: self.snapshot() }
            }
            tag => unreachable!("timeline entry tag {tag} was never written"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(state: u8, sk_err: Option<i32>, rto: u8, unacked: u32, srtt: u32) -> Snapshot {
        Snapshot {
            state: TcpState::new(state).unwrap(),
            sk_err: sk_err.map(Errno),
            rto_retransmits: rto,
            unacked_bytes: unacked,
            srtt_us: srtt,
        }
    }

    /// Every variant, with values at the edges of their types.
    fn details() -> Vec<Detail> {
        let st = |v| TcpState::new(v).unwrap();
        let quiet = snapshot(1, None, 0, 0, 0);
        let loud = snapshot(8, Some(i32::MAX), u8::MAX, u32::MAX, u32::MAX);
        let odd = snapshot(12, Some(-1), 3, 1 << 31, 127);
        vec![
            Detail::State { old: st(7), new: st(2) },
            Detail::Reset { direction: Direction::Rx, state: st(1) },
            Detail::Reset { direction: Direction::Tx, state: st(8) },
            Detail::Retransmit { state: st(1) },
            Detail::Error { errno: Errno(i32::MIN), state: st(2) },
            Detail::SoError { fd: -1, value: None, snapshot: quiet },
            Detail::SoError { fd: i32::MAX, value: Some(Errno(0)), snapshot: loud },
            Detail::Readiness { fd: 3, via: Via::Epoll, mask: u32::MAX, calls: 1, snapshot: odd },
            Detail::Readiness { fd: 0, via: Via::Poll, mask: 0, calls: u32::MAX, snapshot: quiet },
            Detail::Readiness { fd: 9, via: Via::Select, mask: 1, calls: 2, snapshot: loud },
            Detail::Recv { io: Io { last: Ok(0), bytes: u64::MAX, calls: 1 }, snapshot: odd },
            Detail::Recv {
                io: Io { last: Err(Errno(104)), bytes: 0, calls: u32::MAX },
                snapshot: quiet,
            },
            Detail::Send { io: Io { last: Ok(u32::MAX), bytes: 1, calls: 7 }, snapshot: loud },
            Detail::Connect { fd: 5, result: Ok(()), snapshot: quiet },
            Detail::Connect { fd: 5, result: Err(Errno(115)), snapshot: odd },
            Detail::Accept { fd: i32::MIN, snapshot: loud },
            Detail::Destroy { state: st(7) },
            Detail::Seen { state: st(8), at_start: true },
            Detail::Seen { state: st(1), at_start: false },
            Detail::Close { fd: 4, others: u32::MAX, snapshot: odd },
            // The longest entry there can be.
            Detail::Send {
                io: Io { last: Err(Errno(i32::MIN)), bytes: u64::MAX, calls: u32::MAX },
                snapshot: snapshot(8, Some(i32::MIN), u8::MAX, u32::MAX, u32::MAX),
            },
        ]
    }

    #[test]
    fn every_variant_comes_back_as_written() {
        let times = [
            (0, 0),
            (5, 5),
            (u64::MAX, u64::MAX),
            (1 << 40, (1 << 40) + 999),
            (3, 2),
            (1 << 63, u64::MAX),
        ];
        for base in [0, 1 << 40, u64::MAX] {
            for detail in details() {
                for (ts, until) in times {
                    let written = encode(base, ts, until, &detail);
                    assert_eq!(entry(written.bytes(), base), (ts, until, detail.clone()));
                    assert_eq!(entry_ts(written.bytes(), base), ts);
                }
            }
        }
    }

    #[test]
    fn a_state_change_near_the_base_takes_five_bytes() {
        let change =
            Detail::State { old: TcpState::new(2).unwrap(), new: TcpState::new(1).unwrap() };
        let written = encode(1_000, 1_050, 1_050, &change);
        assert_eq!(written.bytes().len(), 5, "ts, until, tag, old, new");
    }
}
