//! How findings are shown: a block for people, an object for JSON Lines.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::correlate::Finding;

/// A finding as a block of text: kind, process, socket, what each side believed, the
/// timeline that proves it, and the remedy.
pub fn human_block(f: &Finding) -> String {
    let mut out = String::new();
    let owner = f
        .owner
        .as_ref()
        .map_or("pid ? (owner unknown)".into(), |o| format!("pid {} ({})", o.pid, o.comm));
    let fd = f.fd.map_or(String::new(), |fd| format!("  fd {fd}"));
    let _ = writeln!(
        out,
        "{} {}  {owner}{fd}  {} -> {}  [sock {}]",
        f.kind.severity().name().to_uppercase(),
        f.kind,
        f.local,
        f.remote,
        f.sock
    );
    let _ = writeln!(out, "  the app believed: {}", f.kind.belief());
    let _ = writeln!(out, "  the kernel knew:  {}", f.kind.truth());
    if let Some(m) = f.measures {
        let _ = writeln!(
            out,
            "  {} retransmissions, {:.1} s without progress, {} bytes written into the void",
            m.retransmits, m.seconds_without_progress, m.unacked_bytes
        );
    }
    for note in &f.notes {
        let _ = writeln!(out, "  {note}");
    }
    let start = f.evidence.first().map_or(f.ts_ns, |e| e.ts_ns);
    let _ = writeln!(out, "  timeline:");
    for e in &f.evidence {
        let _ = writeln!(
            out,
            "    +{:.3}s {:<6} {}",
            e.ts_ns.saturating_sub(start) as f64 / 1e9,
            e.source,
            e.detail
        );
    }
    let _ = writeln!(out, "  remedy: {}", f.kind.hint());
    if f.evidence_incomplete {
        let _ = writeln!(
            out,
            "  (events were lost while this socket was tracked: the timeline may be incomplete)"
        );
    }
    out
}

pub fn finding_json(f: &Finding) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), "finding".into());
    object.insert("kind".into(), f.kind.name().into());
    object.insert("severity".into(), f.kind.severity().name().into());
    object.insert("ts_ns".into(), f.ts_ns.into());
    object.insert("pid".into(), f.owner.as_ref().map(|o| o.pid).into());
    object.insert("comm".into(), f.owner.as_ref().map(|o| o.comm.to_string()).into());
    object.insert("sock".into(), f.sock.to_string().into());
    object.insert("fd".into(), f.fd.into());
    object.insert("family".into(), f.family.name().into());
    object.insert("saddr".into(), f.local.ip().to_string().into());
    object.insert("sport".into(), f.local.port().into());
    object.insert("daddr".into(), f.remote.ip().to_string().into());
    object.insert("dport".into(), f.remote.port().into());
    object.insert("believed".into(), f.kind.belief().into());
    object.insert("knew".into(), f.kind.truth().into());
    let evidence: Vec<Value> = f
        .evidence
        .iter()
        .map(|e| {
            let mut line = json!({"ts_ns": e.ts_ns, "source": e.source, "type": e.detail.type_name(), "event": e.detail.to_string()});
            if e.until_ns != e.ts_ns {
                line["until_ns"] = e.until_ns.into();
            }
            line
        })
        .collect();
    object.insert("evidence".into(), evidence.into());
    if let Some(m) = f.measures {
        object.insert("retransmits".into(), m.retransmits.into());
        object.insert("seconds_without_progress".into(), m.seconds_without_progress.into());
        object.insert("unacked_bytes".into(), m.unacked_bytes.into());
    }
    if !f.notes.is_empty() {
        object.insert("notes".into(), f.notes.clone().into());
    }
    object.insert("evidence_incomplete".into(), f.evidence_incomplete.into());
    if let Some(a) = &f.attribution {
        object.insert("cgroup".into(), a.cgroup.clone().into());
        for (name, value) in [("container", &a.container), ("pod", &a.pod), ("unit", &a.unit)] {
            if let Some(value) = value {
                object.insert(name.into(), value.clone().into());
            }
        }
    }
    object.insert("hint".into(), f.kind.hint().into());
    Value::Object(object)
}
