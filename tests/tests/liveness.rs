//! The liveness audit end to end: an idle connection nothing checks is a finding; the same
//! with a short kernel keepalive, or with an application heartbeat, is not. The settings are
//! read from the sockets themselves. Each test uses its own port.

use connwatch::correlate::Kind;
use connwatch_tests::{Peer, Topology, Watching, require_root};

/// Seconds a connection may stay idle before the audit asks.
const GRACE_S: u64 = 4;

fn connected(tag: &str, port: u16) -> (Topology, Peer, Peer, Watching) {
    require_root();
    let topology = Topology::new(tag);
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let watching = Watching::auditing(port, GRACE_S);
    server.ok(&format!("listen {} {port}", Topology::SERVER_V4));
    client.ok(&format!("connect {} {port}", Topology::SERVER_V4));
    server.ok("accept");
    (topology, server, client, watching)
}

#[test]
fn an_idle_connection_without_keepalive_is_liveness_unchecked() {
    let (_t, server, client, mut watching) = connected("liveidle", 27001);
    let finding = watching.wait_for(Kind::LivenessUnchecked);
    let pid = finding.owner.as_ref().map(|o| o.pid);
    assert!(pid == Some(client.pid()) || pid == Some(server.pid()), "{finding:#?}");
    let note = finding.notes.first().expect("the socket's settings");
    assert!(note.contains("keepalive off") && note.contains("would not be noticed"), "{note}");
}

#[test]
fn a_short_kernel_keepalive_is_a_liveness_check() {
    let (_t, mut server, mut client, mut watching) = connected("livekeep", 27002);
    // TCP_KEEPIDLE 2 s, then one probe 1 s later: a dead peer noticed after 3 s, within the
    // grace.
    client.ok("keepalive 2 1 1");
    server.ok("keepalive 2 1 1");
    // Both sockets audited once idle for the grace.
    watching.wait_for_audits(2);
    assert!(watching.settle().is_empty(), "{:#?}", watching.findings);
}

#[test]
fn an_application_heartbeat_is_a_liveness_check() {
    let (_t, mut server, mut client, mut watching) = connected("livebeat", 27003);
    // A request and its reply every second, for longer than the grace.
    let beats = (GRACE_S * 2 + 1).to_string();
    server.begin(&format!("echo {beats}"));
    watching.during(|| client.ok(&format!("ping-every 1000 {beats}")));
    server.answer();
    client.ok("close");
    server.ok("close");
    watching.wait_until("both closes", |evs| {
        evs.iter().filter(|e| e.detail.type_name() == "close").count() >= 2
    });
    let findings: Vec<Kind> = watching.settle().iter().map(|f| f.kind).collect();
    assert!(!findings.contains(&Kind::LivenessUnchecked), "{findings:?}");
}
