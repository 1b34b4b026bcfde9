//! JSON Lines: `ready`, then one object per event, then `summary`. Documented in docs/json.md.

use std::io::{self, Write};

use serde_json::{Map, Value, json};

use super::{Ready, Sink, Summary};
use crate::decode::{Detail, Event};

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
    }
    Value::Object(object)
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

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(&summary.to_json())?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
