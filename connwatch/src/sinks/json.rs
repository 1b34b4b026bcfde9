//! JSON Lines: `ready`, then one object per event, then `summary`. Documented in docs/json.md.

use std::{
    fmt,
    io::{self, Write},
};

use serde_json::{Map, Value, json};

use super::{Ready, Sink, Summary};
use crate::{
    correlate::Finding,
    decode::{Detail, Errno, Event, Io, readiness_names},
};

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    fn line(&mut self, value: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

/// Writes one event as a JSON object (no newline), straight into `out`: this runs for every
/// event, so it builds no intermediate value and allocates nothing but readiness names.
pub fn write_event(out: &mut impl Write, e: &Event) -> io::Result<()> {
    write!(out, "{{\"type\":\"{}\",\"ts_ns\":{}", e.detail.type_name(), e.ts_ns)?;
    if e.until_ns != e.ts_ns {
        write!(out, ",\"until_ns\":{}", e.until_ns)?;
    }
    match &e.owner {
        Some(o) => {
            let comm = String::from_utf8_lossy(o.comm.as_bytes());
            write!(out, ",\"pid\":{},\"comm\":\"{}\"", o.pid, Escaped(&comm))?
        }
        None => out.write_all(b",\"pid\":null,\"comm\":null")?,
    }
    write!(
        out,
        ",\"sock\":\"{}\",\"family\":\"{}\",\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{}",
        e.sock,
        e.family.name(),
        e.local.ip(),
        e.local.port(),
        e.remote.ip(),
        e.remote.port()
    )?;
    match &e.detail {
        Detail::State { old, new } => write!(out, ",\"old\":\"{old}\",\"new\":\"{new}\"")?,
        Detail::Reset { direction, state } => {
            write!(out, ",\"direction\":\"{}\",\"state\":\"{state}\"", direction.name())?
        }
        Detail::Retransmit { state } => write!(out, ",\"state\":\"{state}\"")?,
        Detail::Error { errno, state } => {
            write!(out, ",\"errno\":\"{errno}\",\"state\":\"{state}\"")?
        }
        Detail::SoError { value, .. } => write!(out, ",\"value\":{}", ErrnoOrZero(*value))?,
        Detail::Readiness { via, mask, calls, .. } => {
            write!(out, ",\"via\":\"{}\",\"events\":[", via.name())?;
            for (i, name) in readiness_names(*via, *mask).iter().enumerate() {
                write!(out, "{}\"{name}\"", if i == 0 { "" } else { "," })?;
            }
            write!(out, "],\"calls\":{calls}")?
        }
        Detail::Recv { io, .. } | Detail::Send { io, .. } => write_io(out, io)?,
        Detail::Connect { result, .. } => write!(out, ",\"result\":{}", ErrnoOrZero(result.err()))?,
        Detail::Close { others, .. } => write!(out, ",\"others\":{others}")?,
        Detail::Destroy { state } => write!(out, ",\"state\":\"{state}\"")?,
        Detail::Seen { state, at_start } => {
            write!(out, ",\"state\":\"{state}\",\"at_start\":{at_start}")?
        }
        Detail::Accept { .. } => {}
    }
    if let Some(fd) = e.detail.fd() {
        write!(out, ",\"fd\":{fd}")?;
    }
    if let Some(s) = e.detail.snapshot() {
        write!(
            out,
            ",\"kstate\":\"{}\",\"sk_err\":{},\"rto_retransmits\":{},\"unacked_bytes\":{},\"srtt_us\":{}",
            s.state,
            ErrnoOrZero(s.sk_err),
            s.rto_retransmits,
            s.unacked_bytes,
            s.srtt_us
        )?;
    }
    out.write_all(b"}")
}

/// `bytes` (all calls') or, when the last call failed, `errno`; and how many calls.
fn write_io(out: &mut impl Write, io: &Io) -> io::Result<()> {
    match io.last {
        Ok(_) => write!(out, ",\"bytes\":{},\"calls\":{}", io.bytes, io.calls),
        Err(e) => write!(out, ",\"errno\":\"{e}\",\"calls\":{}", io.calls),
    }
}

/// An errno's name as a JSON string, or the number 0 for none.
struct ErrnoOrZero(Option<Errno>);

impl fmt::Display for ErrnoOrZero {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => write!(f, "\"{e}\""),
            None => f.write_str("0"),
        }
    }
}

/// A string escaped for inside JSON quotes (process names may hold anything).
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

pub fn ready_json(ready: &Ready) -> Value {
    let hooks: Map<String, Value> =
        ready.hooks.iter().map(|(h, m)| (h.clone(), (*m).into())).collect();
    let degraded: Map<String, Value> =
        ready.degraded.iter().map(|(h, r)| (h.clone(), r.clone().into())).collect();
    json!({
        "type": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "hooks": hooks,
        "degraded": degraded,
        "uncounted_skips": ready.uncounted_skips,
        "ring_buffer_bytes": ready.ring_buffer_bytes,
        "epoll_registrations_seeded": ready.epoll_registrations_seeded,
    })
}

impl<W: Write> Sink for JsonSink<W> {
    fn ready(&mut self, ready: &Ready) -> io::Result<()> {
        self.line(&ready_json(ready))?;
        // Scripts wait for this line: it must not sit in a buffer.
        self.out.flush()
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        write_event(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        self.line(&super::findings::finding_json(finding))?;
        // A finding is news: it must not wait in a buffer.
        self.out.flush()
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(&summary.to_json())?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Comm, Family, Owner, Snapshot, SockId, TcpState, Via};

    fn event(detail: Detail, comm: &str) -> Event {
        Event {
            ts_ns: 7,
            until_ns: 7,
            owner: Some(Owner { pid: 42, comm: Comm::from(comm) }),
            sock: SockId { addr: 0xabc, birth_ns: 0x10 },
            family: Family::Inet6,
            local: "[2001:db8::1]:8080".parse().unwrap(),
            remote: "192.0.2.1:5555".parse().unwrap(),
            detail,
        }
    }

    fn parsed(e: &Event) -> Value {
        let mut out = Vec::new();
        write_event(&mut out, e).unwrap();
        serde_json::from_slice(&out)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn events_are_valid_json_with_every_field() {
        let state = TcpState::new(8).unwrap();
        let snapshot = Snapshot {
            state,
            sk_err: Some(Errno(32)),
            rto_retransmits: 1,
            unacked_bytes: 9,
            srtt_us: 40,
        };
        let readiness =
            Detail::Readiness { fd: 3, via: Via::Epoll, mask: 0x2001, calls: 2, snapshot };
        let v = parsed(&event(readiness, "quo\"te\\n"));
        assert_eq!(v["type"], "readiness");
        assert_eq!(v["comm"], "quo\"te\\n", "escaped and restored");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["sock"], "abc-10");
        assert_eq!((v["saddr"].as_str(), v["sport"].as_u64()), (Some("2001:db8::1"), Some(8080)));
        assert_eq!(v["events"], json!(["EPOLLIN", "EPOLLRDHUP"]));
        assert_eq!((v["calls"].as_u64(), v["fd"].as_u64()), (Some(2), Some(3)));
        assert_eq!(
            (v["kstate"].as_str(), v["sk_err"].as_str()),
            (Some("CLOSE_WAIT"), Some("EPIPE"))
        );
        assert_eq!(
            (v["rto_retransmits"].as_u64(), v["unacked_bytes"].as_u64()),
            (Some(1), Some(9))
        );

        let so_error = Detail::SoError { fd: 3, value: None, snapshot };
        assert_eq!(parsed(&event(so_error, "x"))["value"], 0);
        let failed = Detail::Send { io: Io { last: Err(Errno(32)), bytes: 0, calls: 1 }, snapshot };
        let v = parsed(&event(failed, "x"));
        assert_eq!((v["errno"].as_str(), v.get("bytes")), (Some("EPIPE"), None));
        let mut unknown = event(Detail::State { old: state, new: state }, "x");
        unknown.owner = None;
        let v = parsed(&unknown);
        assert!(v["pid"].is_null() && v["comm"].is_null());
        assert_eq!(
            (v["old"].as_str(), v["new"].as_str()),
            (Some("CLOSE_WAIT"), Some("CLOSE_WAIT"))
        );
    }
}
