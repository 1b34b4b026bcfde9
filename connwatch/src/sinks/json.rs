//! JSON Lines: `ready`, then one object per event, then `summary`. Documented in docs/json.md.

use std::io::{self, Write};

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

/// The JSON object of one event.
pub fn event_json(e: &Event) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), e.detail.type_name().into());
    object.insert("ts_ns".into(), e.ts_ns.into());
    object.insert("pid".into(), e.owner.as_ref().map(|o| o.pid).into());
    object.insert("comm".into(), e.owner.as_ref().map(|o| o.comm.clone()).into());
    object.insert("sock".into(), e.sock.to_string().into());
    object.insert("family".into(), e.family.name().into());
    object.insert("saddr".into(), e.local.ip().to_string().into());
    object.insert("sport".into(), e.local.port().into());
    object.insert("daddr".into(), e.remote.ip().to_string().into());
    object.insert("dport".into(), e.remote.port().into());
    match &e.detail {
        Detail::State { old, new } => {
            object.insert("old".into(), old.name().into());
            object.insert("new".into(), new.name().into());
        }
        Detail::Reset { direction, state } => {
            object.insert("direction".into(), direction.name().into());
            object.insert("state".into(), state.name().into());
        }
        Detail::Retransmit { state } => {
            object.insert("state".into(), state.name().into());
        }
        Detail::Error { errno, state } => {
            object.insert("errno".into(), errno.name().into());
            object.insert("state".into(), state.name().into());
        }
        Detail::SoError { value, .. } => {
            object.insert("value".into(), errno_or_zero(*value));
        }
        Detail::Readiness { via, mask, calls, .. } => {
            object.insert("via".into(), via.name().into());
            object.insert("events".into(), readiness_names(*via, *mask).into());
            object.insert("calls".into(), (*calls).into());
        }
        Detail::Recv { io, .. } | Detail::Send { io, .. } => insert_io(&mut object, io),
        Detail::Connect { result, .. } => {
            object.insert("result".into(), errno_or_zero(result.err()));
        }
        Detail::Accept { .. } | Detail::Close { .. } => {}
    }
    if let Some(fd) = e.detail.fd() {
        object.insert("fd".into(), fd.into());
    }
    if let Some(snapshot) = e.detail.snapshot() {
        object.insert("kstate".into(), snapshot.state.name().into());
        object.insert("sk_err".into(), errno_or_zero(snapshot.sk_err));
        object.insert("rto_retransmits".into(), snapshot.rto_retransmits.into());
        object.insert("unacked_bytes".into(), snapshot.unacked_bytes.into());
    }
    Value::Object(object)
}

/// An errno's name, or the number 0 for none.
fn errno_or_zero(errno: Option<Errno>) -> Value {
    errno.map_or(0.into(), |e| e.name().into())
}

/// `bytes` (all calls') or, when the last call failed, `errno`; and how many calls.
fn insert_io(object: &mut Map<String, Value>, io: &Io) {
    match io.last {
        Ok(_) => object.insert("bytes".into(), io.bytes.into()),
        Err(e) => object.insert("errno".into(), e.name().into()),
    };
    object.insert("calls".into(), io.calls.into());
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
        "ring_buffer_bytes": ready.ring_buffer_bytes,
    })
}

impl<W: Write> Sink for JsonSink<W> {
    fn ready(&mut self, ready: &Ready) -> io::Result<()> {
        self.line(&ready_json(ready))?;
        // Scripts wait for this line: it must not sit in a buffer.
        self.out.flush()
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.line(&event_json(event))
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
