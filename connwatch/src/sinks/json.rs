//! JSON Lines: `ready`, then one object per event, then `summary`. Documented in docs/json.md.

use std::io::{self, Write};

use serde_json::{Map, Value, json};

use super::{Ready, Sink, Summary, json_line::JsonLine};
use crate::{
    correlate::Finding,
    decode::{Detail, Errno, Event, Io, readiness_names},
};

pub struct JsonSink<W: Write> {
    out: W,
    /// The event being written, reused.
    line: JsonLine,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self { out, line: JsonLine::default() }
    }

    fn line(&mut self, value: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

/// One event as a JSON object (no newline), into `line`: this runs for every event, so it
/// builds no intermediate value and allocates nothing but readiness and errno names.
pub fn encode_event(line: &mut JsonLine, e: &Event) {
    line.raw("{\"type\":\"").raw(e.detail.type_name()).raw("\",\"ts_ns\":").uint(e.ts_ns);
    if e.until_ns != e.ts_ns {
        line.raw(",\"until_ns\":").uint(e.until_ns);
    }
    match &e.owner {
        Some(o) => {
            let comm = String::from_utf8_lossy(o.comm.as_bytes());
            line.raw(",\"pid\":").uint(o.pid).raw(",\"comm\":").string(&comm);
        }
        None => _ = line.raw(",\"pid\":null,\"comm\":null"),
    }
    line.raw(",\"sock\":\"").hex(e.sock.addr).raw("-").hex(e.sock.birth_ns);
    line.raw("\",\"family\":\"").raw(e.family.name());
    line.raw("\",\"saddr\":\"").ip(e.local.ip()).raw("\",\"sport\":").uint(e.local.port());
    line.raw(",\"daddr\":\"").ip(e.remote.ip()).raw("\",\"dport\":").uint(e.remote.port());
    match &e.detail {
        Detail::State { old, new } => {
            line.raw(",\"old\":\"").raw(old.name()).raw("\",\"new\":\"").raw(new.name()).raw("\"");
        }
        Detail::Reset { direction, state } => {
            line.raw(",\"direction\":\"").raw(direction.name());
            line.raw("\",\"state\":\"").raw(state.name()).raw("\"");
        }
        Detail::Retransmit { state } | Detail::Destroy { state } => {
            line.raw(",\"state\":\"").raw(state.name()).raw("\"");
        }
        Detail::Error { errno, state } => {
            line.raw(",\"errno\":\"").raw(&errno.name());
            line.raw("\",\"state\":\"").raw(state.name()).raw("\"");
        }
        Detail::SoError { value, .. } => errno_or_zero(line.raw(",\"value\":"), *value),
        Detail::Readiness { via, mask, calls, .. } => {
            line.raw(",\"via\":\"").raw(via.name()).raw("\",\"events\":[");
            for (i, name) in readiness_names(*via, *mask).iter().enumerate() {
                line.raw(if i == 0 { "\"" } else { ",\"" }).raw(name).raw("\"");
            }
            line.raw("],\"calls\":").uint(*calls);
        }
        Detail::Recv { io, .. } | Detail::Send { io, .. } => encode_io(line, io),
        Detail::Connect { result, .. } => errno_or_zero(line.raw(",\"result\":"), result.err()),
        Detail::Close { others, .. } => _ = line.raw(",\"others\":").uint(*others),
        Detail::Seen { state, at_start } => {
            line.raw(",\"state\":\"").raw(state.name()).raw("\",\"at_start\":");
            line.raw(if *at_start { "true" } else { "false" });
        }
        Detail::Accept { .. } => {}
    }
    if let Some(fd) = e.detail.fd() {
        line.raw(",\"fd\":").uint(fd);
    }
    if let Some(s) = e.detail.snapshot() {
        line.raw(",\"kstate\":\"").raw(s.state.name()).raw("\"");
        errno_or_zero(line.raw(",\"sk_err\":"), s.sk_err);
        line.raw(",\"rto_retransmits\":").uint(s.rto_retransmits);
        line.raw(",\"unacked_bytes\":").uint(s.unacked_bytes);
        line.raw(",\"srtt_us\":").uint(s.srtt_us);
    }
    line.raw("}");
}

/// `bytes` (all calls') or, when the last call failed, `errno`; and how many calls.
fn encode_io(line: &mut JsonLine, io: &Io) {
    match io.last {
        Ok(_) => line.raw(",\"bytes\":").uint(io.bytes),
        Err(e) => line.raw(",\"errno\":\"").raw(&e.name()).raw("\""),
    };
    line.raw(",\"calls\":").uint(io.calls);
}

/// An errno's name as a JSON string, or the number 0 for none.
fn errno_or_zero(line: &mut JsonLine, errno: Option<Errno>) {
    match errno {
        Some(e) => line.raw("\"").raw(&e.name()).raw("\""),
        None => line.raw("0"),
    };
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
        self.line.clear();
        encode_event(&mut self.line, event);
        self.line.raw("\n");
        self.out.write_all(self.line.as_bytes())
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
        let mut line = JsonLine::default();
        encode_event(&mut line, e);
        let out = line.as_bytes();
        serde_json::from_slice(out)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(out)))
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
