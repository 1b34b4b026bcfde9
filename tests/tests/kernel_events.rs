//! The kernel pipeline against real sockets in throwaway namespaces: every event, its socket
//! identity and its owner; resets, retransmissions, IPv6, loss accounting and filters.
//! Runs as root (see `require_root`); each test uses its own namespaces and ports.

use std::collections::BTreeMap;

use connwatch::{
    decode::{Detail, Event, Family, SockId},
    probes::{
        AttachMode, Filters, LoadOptions,
        hooks::{HOOKS, Hook, Mechanism},
        tracefs,
    },
};
use connwatch_common::{socket::opening_of, tcp::state_name};
use connwatch_tests::{
    Netns, Peer, Session, Topology,
    firewall::drop_tcp_input,
    require_root,
    session::{attach_from_env, describe, transition},
};

const CLIENT_STATES: &[(&str, &str)] = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];
const SERVER_STATES: &[(&str, &str)] = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];
const LISTENER_STATES: &[(&str, &str)] = &[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")];

fn options(filters: Filters) -> LoadOptions {
    LoadOptions { filters, ..LoadOptions::default() }
}

fn pids(pids: &[u32]) -> Filters {
    Filters { pids: pids.to_vec(), ..Filters::default() }
}

/// Events grouped by socket, in arrival order.
fn by_socket(events: &[Event]) -> BTreeMap<SockId, Vec<&Event>> {
    let mut sockets: BTreeMap<SockId, Vec<&Event>> = BTreeMap::new();
    for e in events {
        sockets.entry(e.sock).or_default().push(e);
    }
    sockets
}

/// The socket whose first state change is `first`, owned by `pid`.
fn socket_starting<'a>(
    events: &'a [Event],
    first: (&str, &str),
    pid: u32,
) -> Option<Vec<&'a Event>> {
    by_socket(events).into_values().find(|evs| {
        evs.iter().find_map(|e| transition(e)) == Some(first)
            && evs[0].owner.as_ref().map(|o| o.pid) == Some(pid)
    })
}

fn transitions(events: &[&Event]) -> Vec<(&'static str, &'static str)> {
    events.iter().filter_map(|e| transition(e)).collect()
}

fn has_transitions(
    events: &[Event],
    first: (&str, &str),
    pid: u32,
    expected: &[(&str, &str)],
) -> bool {
    socket_starting(events, first, pid).is_some_and(|evs| transitions(&evs).len() >= expected.len())
}

/// Every state change of a connection's three sockets (client, accepted child, listener), each
/// named with its own process.
///
/// The kernel skips a classic tracepoint's program while another BPF program runs on that CPU
/// (the client's FIN_WAIT2 comes in a softirq that may interrupt one) and counts the skip (from
/// Linux 6.7; before, it goes uncounted); an attempt in which the state hook was skipped, or
/// timed out while its skips go uncounted, is repeated, at most [`ATTEMPTS`] times.
fn full_lifecycle(tag: &str, server_addr: &str, port: u16, attach: AttachMode) {
    require_root();
    let topology = Topology::new(tag);
    until_not_skipped(|| lifecycle_once(&topology, server_addr, port, attach));
}

/// Runs `once` until it returns true (the kernel skipped no state-change hit it needed), at
/// most [`ATTEMPTS`] times.
fn until_not_skipped(mut once: impl FnMut() -> bool) {
    for attempt in 1..=ATTEMPTS {
        if once() {
            return;
        }
        eprintln!("attempt {attempt}: the kernel skipped {STATE_HOOK} hits; trying again");
    }
    panic!("the kernel skipped {STATE_HOOK} hits in each of {ATTEMPTS} attempts");
}

const ATTEMPTS: u32 = 3;
const STATE_HOOK: &str = "sock:inet_sock_set_state";

/// One connection's lifecycle, checked; false if the kernel skipped (or may have skipped)
/// state-change hits.
fn lifecycle_once(topology: &Topology, server_addr: &str, port: u16, attach: AttachMode) -> bool {
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let (spid, cpid) = (server.pid(), client.pid());
    let mut session = Session::start(LoadOptions { attach, ..options(pids(&[spid, cpid])) });

    server.ok(&format!("listen {server_addr} {port}"));
    let client_port: u16 = client
        .ok(&format!("connect {server_addr} {port}"))
        .trim_start_matches("connected ")
        .parse()
        .unwrap();
    server.ok("accept");
    client.ok("close");
    server.ok("read-eof");
    // The server closes only once the client has seen its FIN acknowledged, so the client
    // passes through FIN_WAIT2 on every run.
    if !session.wait_until_unless_skipped("client FIN_WAIT2", STATE_HOOK, |evs| {
        has_transitions(evs, CLIENT_STATES[0], cpid, &CLIENT_STATES[..4])
    }) {
        return false;
    }
    server.ok("close");
    server.ok("close-listener");
    if !session.wait_until_unless_skipped(
        "every state change of the three sockets",
        STATE_HOOK,
        |evs| {
            has_transitions(evs, CLIENT_STATES[0], cpid, CLIENT_STATES)
                && has_transitions(evs, SERVER_STATES[0], spid, SERVER_STATES)
                && has_transitions(evs, LISTENER_STATES[0], spid, LISTENER_STATES)
        },
    ) {
        return false;
    }

    let events = &session.events;
    for (name, first, pid, expected) in [
        ("client", CLIENT_STATES[0], cpid, CLIENT_STATES),
        ("server", SERVER_STATES[0], spid, SERVER_STATES),
        ("listener", LISTENER_STATES[0], spid, LISTENER_STATES),
    ] {
        let socket = socket_starting(events, first, pid).unwrap();
        assert_eq!(transitions(&socket), expected, "{name} transitions:\n{}", session.dump());
        for e in &socket {
            let owner = e
                .owner
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: unknown owner in {}", describe(e)));
            assert_eq!(owner.pid, pid, "{name} event owned by the wrong process: {}", describe(e));
            assert_eq!(owner.comm, "cw-peer");
        }
    }

    // The established sockets name both ends correctly.
    let family = if server_addr.contains(':') { Family::Inet6 } else { Family::Inet };
    let client_addr =
        if family == Family::Inet6 { Topology::CLIENT_V6 } else { Topology::CLIENT_V4 };
    let established = |pid: u32, first| {
        let socket = socket_starting(events, first, pid).unwrap();
        *socket.iter().find(|e| transition(e).is_some_and(|(_, new)| new == "ESTABLISHED")).unwrap()
    };
    let c = established(cpid, CLIENT_STATES[0]);
    assert_eq!(c.family, family);
    assert_eq!((c.local.ip().to_string(), c.local.port()), (client_addr.to_string(), client_port));
    assert_eq!((c.remote.ip().to_string(), c.remote.port()), (server_addr.to_string(), port));
    let s = established(spid, SERVER_STATES[0]);
    assert_eq!((s.local.ip().to_string(), s.local.port()), (server_addr.to_string(), port));
    assert_eq!(
        (s.remote.ip().to_string(), s.remote.port()),
        (client_addr.to_string(), client_port)
    );

    // Skips after the waits are of other sockets' hits (every one is counted, not filtered).
    let summary = session.finish();
    let ring_lost: u64 = summary.lost.values().sum();
    assert_eq!((ring_lost, summary.malformed), (0, 0), "{summary}");
    true
}

#[test]
fn lifecycle_names_each_side_with_its_own_process() {
    full_lifecycle("life4", Topology::SERVER_V4, 21001, AttachMode::Auto);
}

#[test]
fn lifecycle_with_classic_tracepoints_reads_tracefs_layouts() {
    full_lifecycle("lifetp", Topology::SERVER_V4, 21002, AttachMode::Prefer(Mechanism::Tracepoint));
}

#[test]
fn lifecycle_over_ipv6() {
    full_lifecycle("life6", Topology::SERVER_V6, 21003, AttachMode::Auto);
}

/// Under watch and agent, the change that begins each life is not reported: every later record
/// carries it in the life's birth (connect, a listener's child, listen), as the correlator reads
/// it back.
#[test]
fn watch_leaves_each_opening_to_the_birth() {
    require_root();
    let topology = Topology::new("open4");
    until_not_skipped(|| openings_once(&topology, 21004));
}

fn openings_once(topology: &Topology, port: u16) -> bool {
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let (spid, cpid) = (server.pid(), client.pid());
    let mut session =
        Session::start(LoadOptions { opening_in_birth: true, ..options(pids(&[spid, cpid])) });
    server.ok(&format!("listen {} {port}", Topology::SERVER_V4));
    client.ok(&format!("connect {} {port}", Topology::SERVER_V4));
    server.ok("accept");
    server.ok("close-listener");
    let (client_first, child_first, listener_first) =
        (("SYN_SENT", "ESTABLISHED"), ("SYN_RECV", "ESTABLISHED"), ("LISTEN", "CLOSE"));
    if !session.wait_until_unless_skipped(
        "each socket's first reported change",
        STATE_HOOK,
        |evs| {
            socket_starting(evs, client_first, cpid).is_some()
                && socket_starting(evs, child_first, spid).is_some()
                && socket_starting(evs, listener_first, spid).is_some()
        },
    ) {
        return false;
    }
    let events = &session.events;
    let openings = [CLIENT_STATES[0], SERVER_STATES[0], LISTENER_STATES[0]];
    let reported: Vec<_> = events.iter().filter_map(transition).collect();
    assert!(
        openings.iter().all(|opening| !reported.contains(opening)),
        "no opening reported on its own:\n{}",
        session.dump()
    );
    for (name, first, pid, opening) in [
        ("client", client_first, cpid, CLIENT_STATES[0]),
        ("child", child_first, spid, SERVER_STATES[0]),
        ("listener", listener_first, spid, LISTENER_STATES[0]),
    ] {
        for e in socket_starting(events, first, pid).unwrap() {
            let (old, new, born) = opening_of(e.sock.birth_ns)
                .unwrap_or_else(|| panic!("{name}: no opening in the birth of {}", describe(e)));
            let names = (state_name(old).unwrap(), state_name(new).unwrap());
            assert_eq!(names, opening, "{name}: {}", describe(e));
            assert!(born <= e.ts_ns, "{name}: born after its event: {}", describe(e));
        }
    }
    true
}

/// Under watch and agent, a connection's change to ESTABLISHED takes no record of its own: the
/// socket's next record carries it, normally the connect or accept record, and otherwise any
/// record the kernel sends first (here the peer's FIN, before anyone accepted the child).
#[test]
fn watch_carries_each_change_to_established_in_the_next_record() {
    require_root();
    let topology = Topology::new("estb4");
    until_not_skipped(|| established_once(&topology, 21005));
}

fn established_once(topology: &Topology, port: u16) -> bool {
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let (spid, cpid) = (server.pid(), client.pid());
    let mut session = Session::start(LoadOptions {
        opening_in_birth: true,
        established_carried: true,
        ..options(pids(&[spid, cpid]))
    });
    let (client_first, child_first) = (("SYN_SENT", "ESTABLISHED"), ("SYN_RECV", "ESTABLISHED"));
    server.ok(&format!("listen {} {port}", Topology::SERVER_V4));
    client.ok(&format!("connect {} {port}", Topology::SERVER_V4));
    let connected = |evs: &[Event]| {
        socket_starting(evs, client_first, cpid)
            .is_some_and(|s| s.iter().any(|e| e.detail.type_name() == "connect"))
    };
    if !session.wait_until_unless_skipped("the client's connect", STATE_HOOK, connected) {
        return false;
    }
    // Two events, one record: the connect carried the change.
    assert_eq!(
        (session.events.len(), session.records),
        (2, 1),
        "the change to ESTABLISHED and connect() in one record:\n{}",
        session.dump()
    );
    let client_events = socket_starting(&session.events, client_first, cpid).unwrap();
    assert_eq!(sequence(&client_events), ["SYN_SENT -> ESTABLISHED", "connect"]);
    assert!(client_events[0].ts_ns <= client_events[1].ts_ns, "{}", session.dump());
    client.ok("close");
    let peer_closed = |evs: &[Event]| {
        socket_starting(evs, child_first, spid)
            .is_some_and(|s| transitions(&s).contains(&("ESTABLISHED", "CLOSE_WAIT")))
    };
    if !session.wait_until_unless_skipped("the child's CLOSE_WAIT", STATE_HOOK, peer_closed) {
        return false;
    }
    // No call of the child's to carry it yet: the FIN's record carried it, before the FIN.
    let child = socket_starting(&session.events, child_first, spid).unwrap();
    let [established, fin] = child[..] else {
        panic!("the child's two changes, nothing else yet:\n{}", session.dump());
    };
    assert!(established.ts_ns < fin.ts_ns, "{}", session.dump());
    server.ok("accept");
    session.wait_until("the accept", |evs| evs.iter().any(|e| e.detail.type_name() == "accept"));
    let child = socket_starting(&session.events, child_first, spid).unwrap();
    assert_eq!(
        sequence(&child),
        ["SYN_RECV -> ESTABLISHED", "ESTABLISHED -> CLOSE_WAIT", "accept"],
        "the accept had no change left to carry:\n{}",
        session.dump()
    );
    // The summary counts the records as they were taken, not the events they held.
    let summary = session.finish();
    assert_eq!(summary.records, session.records);
    assert!(summary.total_events() > summary.records, "{summary}");
    true
}

/// Each event as its transition (`OLD -> NEW`) or its type.
fn sequence(events: &[&Event]) -> Vec<String> {
    let name = |e: &&Event| match transition(e) {
        Some((old, new)) => format!("{old} -> {new}"),
        None => e.detail.type_name().to_string(),
    };
    events.iter().map(name).collect()
}

#[test]
fn classic_tracepoint_mode_attaches_tracepoints_where_offered() {
    require_root();
    let session = Session::start(LoadOptions {
        attach: AttachMode::Prefer(Mechanism::Tracepoint),
        ..options(pids(&[1]))
    });
    let hooks: BTreeMap<String, &str> = session.tracer.ready().hooks.into_iter().collect();
    assert_eq!(hooks["sock:inet_sock_set_state"], "tracepoint");
    assert_eq!(hooks["tcp:tcp_retransmit_skb"], "tracepoint");
    assert_eq!(hooks["sock:inet_sk_error_report"], "raw_tracepoint", "its record has no socket");
}

#[test]
fn linger_zero_close_resets_the_client() {
    require_root();
    let topology = Topology::new("rst");
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let (spid, cpid) = (server.pid(), client.pid());
    let mut session = Session::start(options(pids(&[spid, cpid])));
    server.ok(&format!("listen {} 21010", Topology::SERVER_V4));
    client.ok(&format!("connect {} 21010", Topology::SERVER_V4));
    server.ok("accept");
    server.ok("linger0");
    server.ok("close");

    let client_socket = |evs: &[Event]| {
        socket_starting(evs, CLIENT_STATES[0], cpid)
            .map(|s| s.iter().map(|e| (*e).clone()).collect::<Vec<_>>())
    };
    let is_reset_rx =
        |e: &Event| matches!(e.detail, Detail::Reset { direction, .. } if direction.name() == "rx");
    let is_econnreset = |e: &Event| matches!(&e.detail, Detail::Error { errno, .. } if errno.name() == "ECONNRESET");
    session.wait_until("RST and ECONNRESET on the client socket", |evs| {
        client_socket(evs).is_some_and(|s| s.iter().any(is_reset_rx) && s.iter().any(is_econnreset))
    });
    let socket = client_socket(&session.events).unwrap();
    for e in socket.iter().filter(|e| is_reset_rx(e) || is_econnreset(e)) {
        assert_eq!(
            e.owner.as_ref().map(|o| o.pid),
            Some(cpid),
            "owned by the client: {}",
            describe(e)
        );
        assert_eq!(e.local.ip().to_string(), Topology::CLIENT_V4);
        assert_eq!(e.remote.port(), 21010);
    }
    assert!(
        transitions(&socket.iter().collect::<Vec<_>>()).contains(&("ESTABLISHED", "CLOSE")),
        "the reset closes the client socket:\n{}",
        session.dump()
    );
    session.wait_until("RST sent by the server", |evs| {
        evs.iter().any(|e| {
            matches!(e.detail, Detail::Reset { direction, .. } if direction.name() == "tx")
                && e.owner.as_ref().map(|o| o.pid) == Some(spid)
        })
    });
}

#[test]
fn writes_into_a_black_hole_are_retransmitted() {
    require_root();
    let topology = Topology::new("rtx");
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let cpid = client.pid();
    let mut session = Session::start(options(pids(&[server.pid(), cpid])));
    server.ok(&format!("listen {} 21020", Topology::SERVER_V4));
    client.ok(&format!("connect {} 21020", Topology::SERVER_V4));
    server.ok("accept");
    // The server's host now drops everything the client sends: a half-open connection.
    drop_tcp_input(&topology.server, 21020);
    assert_eq!(
        client.ok("write 1000"),
        "wrote 1000",
        "the write succeeds: bytes only reach the send buffer"
    );

    session.wait_until("retransmissions of the client's data", |evs| {
        evs.iter()
            .filter(|e| {
                matches!(e.detail, Detail::Retransmit { .. })
                    && e.local.ip().to_string() == Topology::CLIENT_V4
            })
            .count()
            >= 2
    });
    let retransmits: Vec<&Event> =
        session.events.iter().filter(|e| matches!(e.detail, Detail::Retransmit { .. })).collect();
    let client_sock = socket_starting(&session.events, CLIENT_STATES[0], cpid).unwrap()[0].sock;
    for e in retransmits {
        assert_eq!(e.sock, client_sock, "retransmission on the client's socket: {}", describe(e));
        assert_eq!(e.owner.as_ref().map(|o| o.pid), Some(cpid));
        assert_eq!(e.detail.to_string(), "retransmit (ESTABLISHED)");
        assert_eq!(e.remote.port(), 21020);
    }
}

/// Connection attempts to a closed port: exactly four events each on the client socket
/// (SYN_SENT, RST rx, CLOSE, ECONNREFUSED), so the expected count is known in advance.
/// Returns the summary and the running loss count the pipeline gives the correlator, read
/// once before the flood (as a drain that took nothing would) and once after the last drain.
fn refused_flood(ring_buffer_bytes: u32, attempts: u32) -> (connwatch::sinks::Summary, u64) {
    let ns = Netns::new(format!("cw-loss-{ring_buffer_bytes}-{}", std::process::id()));
    let mut flooder = Peer::spawn(&ns);
    let mut session = Session::start(LoadOptions {
        ring_buffer_bytes,
        ..options(Filters { ports: vec![21030], ..Filters::default() })
    });
    assert_eq!(session.tracer.lost_total(), 0, "nothing lost before the flood");
    // Nothing is read while the flood runs: a small ring buffer must overflow.
    flooder.ok(&format!("refuse-flood 127.0.0.1 21030 {attempts}"));
    let summary = session.finish();
    (summary, session.tracer.lost_total())
}

#[test]
fn every_event_is_either_delivered_or_counted_lost() {
    require_root();
    const ATTEMPTS: u32 = 500;
    let expected =
        [("error", ATTEMPTS as u64), ("reset", ATTEMPTS as u64), ("state", 2 * ATTEMPTS as u64)];

    let (roomy, _) = refused_flood(8 << 20, ATTEMPTS);
    assert_eq!(roomy.total_lost(), 0, "{roomy}");
    for (kind, count) in expected {
        assert_eq!(
            roomy.events.get(kind).copied().unwrap_or(0),
            count,
            "{kind} with a roomy ring buffer: {roomy}"
        );
    }

    let (tiny, lost_total) = refused_flood(4096, ATTEMPTS);
    assert!(tiny.total_lost() > 0, "a 4 KiB ring buffer must overflow: {tiny}");
    assert_eq!(lost_total, tiny.total_lost(), "the running count after the drains: {tiny}");
    for (kind, count) in expected {
        let seen = tiny.events.get(kind).copied().unwrap_or(0);
        let lost = tiny.lost.get(kind).copied().unwrap_or(0);
        assert_eq!(seen + lost, count, "{kind}: seen {seen} + lost {lost}: {tiny}");
    }
    assert_eq!(tiny.malformed, 0);
}

#[test]
fn pid_filter_keeps_only_that_process() {
    require_root();
    let topology = Topology::new("fpid");
    let mut server = Peer::spawn(&topology.server);
    let mut wanted = Peer::spawn(&topology.client);
    let mut other = Peer::spawn(&topology.client);
    let wpid = wanted.pid();
    let mut session = Session::start(options(pids(&[wpid])));
    server.ok(&format!("listen {} 21040", Topology::SERVER_V4));
    // The other client goes first: had its events passed the filter, they would arrive first.
    other.ok(&format!("connect {} 21040", Topology::SERVER_V4));
    other.ok("close");
    wanted.ok(&format!("connect {} 21040", Topology::SERVER_V4));
    wanted.ok("close");
    session.wait_until("the wanted client's close", |evs| {
        has_transitions(evs, CLIENT_STATES[0], wpid, &CLIENT_STATES[..3])
    });
    for e in &session.events {
        assert_eq!(
            e.owner.as_ref().map(|o| o.pid),
            Some(wpid),
            "filtered in the kernel: {}",
            describe(e)
        );
    }
}

#[test]
fn port_filter_keeps_only_that_port() {
    require_root();
    let topology = Topology::new("fport");
    let mut server_a = Peer::spawn(&topology.server);
    let mut server_b = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let cpid = client.pid();
    let mut session = Session::start(options(Filters { ports: vec![21051], ..Filters::default() }));
    server_a.ok(&format!("listen {} 21051", Topology::SERVER_V4));
    server_b.ok(&format!("listen {} 21052", Topology::SERVER_V4));
    client.ok(&format!("connect {} 21052", Topology::SERVER_V4));
    client.ok("close");
    client.ok(&format!("connect {} 21051", Topology::SERVER_V4));
    client.ok("close");
    session.wait_until("the connection to port 21051", |evs| {
        evs.iter().any(|e| {
            e.remote.port() == 21051
                && transition(e) == Some(("ESTABLISHED", "FIN_WAIT1"))
                && e.owner.as_ref().map(|o| o.pid) == Some(cpid)
        })
    });
    for e in &session.events {
        assert!(
            e.local.port() == 21051 || e.remote.port() == 21051,
            "filtered in the kernel: {}",
            describe(e)
        );
    }
}

#[test]
fn the_agents_own_sockets_are_never_reported() {
    require_root();
    // This test process is the agent: its listener and accepted socket must not appear; the
    // peer's client socket on the same connection must.
    let mut session = Session::start(options(Filters { ports: vec![21060], ..Filters::default() }));
    let listener = std::net::TcpListener::bind("127.0.0.1:21060").expect("bind 127.0.0.1:21060");
    let mut peer = Peer::spawn_host();
    let ppid = peer.pid();
    peer.ok("connect 127.0.0.1 21060");
    let (accepted, _) = listener.accept().expect("accept");
    peer.ok("close");
    drop(accepted);
    session.wait_until("the peer's close", |evs| {
        has_transitions(evs, CLIENT_STATES[0], ppid, &CLIENT_STATES[..3])
    });
    let me = std::process::id();
    for e in &session.events {
        assert_ne!(
            e.owner.as_ref().map(|o| o.pid),
            Some(me),
            "the agent's own socket: {}",
            describe(e)
        );
        assert!(e.owner.is_some(), "every event here has a known owner: {}", describe(e));
    }
}

#[test]
fn comm_filter_keeps_only_that_name() {
    require_root();
    let topology = Topology::new("fcomm");
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let cpid = client.pid();
    let filter = |comm: &str| {
        options(Filters { comm: Some(comm.into()), ports: vec![21080], ..Filters::default() })
    };
    let mut named = Session::start(filter("cw-peer"));
    let mut other = Session::start(filter("not-cw-peer"));
    server.ok(&format!("listen {} 21080", Topology::SERVER_V4));
    client.ok(&format!("connect {} 21080", Topology::SERVER_V4));
    client.ok("close");
    named.wait_until("the client's close", |evs| {
        has_transitions(evs, CLIENT_STATES[0], cpid, &CLIENT_STATES[..3])
    });
    assert!(named.events.iter().all(|e| e.owner.as_ref().is_some_and(|o| o.comm == "cw-peer")));
    // Both tracers' programs ran on the same hooks at the same moments.
    other.tracer.poll(&mut other.events);
    assert!(other.events.is_empty(), "filtered in the kernel:\n{}", other.dump());
}

/// Every hook whose tracepoint this kernel has must load and attach at full strength: an
/// optional hook only degrades connwatch, so a program the verifier rejects (too complex after
/// a change) would otherwise pass unnoticed as a warning. The exceptions are the kernels'
/// own, listed in docs/kernels.md: tracepoints and functions a kernel lacks.
#[test]
fn every_hook_attaches_on_this_kernel() {
    require_root();
    let session = Session::start(LoadOptions::default());
    let ready = session.tracer.ready();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for (hook, why) in &ready.degraded {
        let brief: String = why.chars().take(400).collect();
        assert!(
            kernel_lacks_every_way(why),
            "{hook} did not attach in full on {}: {brief}",
            release.trim()
        );
    }
    for (category, name) in [("tcp", "tcp_destroy_sock"), ("sock", "sock_send_length")] {
        let hook = format!("{category}:{name}");
        if tracefs::exists(category, name) {
            assert!(ready.hooks.iter().any(|(h, _)| *h == hook), "{hook}: {:?}", ready.hooks);
        }
    }
    // Where the kernel loads BPF trampolines (any hook got one), the syscall hooks sit on the
    // syscalls' own functions: no syscall tracepoint puts every syscall on the traced path.
    let trampoline = |m: &str| m == "fentry" || m == "fexit";
    if cfg!(target_arch = "x86_64")
        && matches!(attach_from_env(), AttachMode::Auto)
        && ready.hooks.iter().any(|(_, m)| trampoline(m))
    {
        for (hook, mechanism) in ready.hooks.iter().filter(|(h, _)| h.starts_with("syscalls:")) {
            assert!(trampoline(mechanism), "{hook} on a {mechanism}: {:?}", ready.hooks);
        }
    } else {
        println!(
            "syscall hooks on the syscalls' functions not checked: needs x86-64, --attach auto \
             and a kernel that loads BPF trampolines (no hook got one here)"
        );
    }
    // An explicit mode names its mechanism for every hook that has a variant of it, where the
    // kernel has what that variant attaches to (a hook without its tracepoint falls back, to
    // fexit say, or is among the degraded ones checked above).
    if let AttachMode::Prefer(wanted) = attach_from_env() {
        let offered = |h: &&Hook| h.variants.iter().any(|v| v.mechanism == wanted);
        let tracepoint = matches!(wanted, Mechanism::Tracepoint | Mechanism::RawTracepoint);
        let attached = |id: &str| ready.hooks.iter().any(|(h, _)| h == id);
        let present = |h: &&Hook| {
            !ready.degraded.iter().any(|(d, _)| *d == h.id())
                && (!tracepoint || tracefs::exists(h.category, h.name))
                && h.instead_of.is_none_or(|primary| !attached(primary))
                // Attached only where its exit cannot read the arguments itself (checked in
                // app_observations' entry_programs_attach_only_where_needed).
                && h.keeps_args_for.is_none()
        };
        for hook in HOOKS.iter().filter(offered).filter(present) {
            let got = ready.hooks.iter().find(|(h, _)| *h == hook.id()).map(|(_, m)| m.to_string());
            assert_eq!(got.as_deref(), Some(wanted.name()), "{}: {:?}", hook.id(), ready.hooks);
        }
    }
}

/// Whether every clause of an unavailable hook's reason is something this kernel lacks: the
/// tracepoint, the function, kprobes, or the program type itself (never a refusal of ours).
fn kernel_lacks_every_way(why: &str) -> bool {
    let Some(reasons) = why.strip_prefix("unavailable: ") else {
        return false;
    };
    let reasons = reasons.rsplit_once(" (").map_or(reasons, |(r, _consequence)| r);
    reasons.split("; ").all(|clause| {
        clause.contains(": this kernel has no ")
            || clause.starts_with("fentry: the kernel refused to load this program type")
    })
}

/// `--hooks-only` (the bench's floor) attaches the hooks a working session attaches, each
/// through the same mechanism, with programs that return at once: a connection the working
/// session sees whole passes its hooks, and it reports nothing. It has no empty trampoline
/// program: `--attach fentry` refuses it, and where the working session's hooks are on
/// trampolines (`auto` on kernels that load them) it takes the next mechanism of each.
#[test]
fn hooks_only_attaches_the_same_hooks_and_reports_nothing() {
    require_root();
    let mode = attach_from_env();
    if mode == AttachMode::Prefer(Mechanism::Fentry) {
        let refused = connwatch::tracer::Tracer::start(&LoadOptions {
            attach: mode,
            hooks_only: true,
            ..options(pids(&[1]))
        });
        let error = refused.err().expect("--attach fentry --hooks-only must be refused");
        assert!(error.to_string().contains("--hooks-only"), "{error}");
        return;
    }
    let topology = Topology::new("hooks");
    let mut server = Peer::spawn(&topology.server);
    let mut client = Peer::spawn(&topology.client);
    let cpid = client.pid();
    let filters = pids(&[cpid, server.pid()]);
    let mut working = Session::start(options(filters.clone()));
    let mut reaching = Session::start(LoadOptions { hooks_only: true, ..options(filters) });
    let (worked, reached) = (working.tracer.ready().hooks, reaching.tracer.ready().hooks);
    let trampoline = |(_, m): &(String, &str)| matches!(*m, "fentry" | "fexit");
    if worked.iter().any(trampoline) {
        assert!(!reached.iter().any(trampoline), "{reached:?}");
    } else {
        assert_eq!(reached, worked);
    }
    server.ok(&format!("listen {} 21062", Topology::SERVER_V4));
    client.ok(&format!("connect {} 21062", Topology::SERVER_V4));
    client.ok("close");
    working.wait_until("the client's close", |evs| {
        has_transitions(evs, CLIENT_STATES[0], cpid, &CLIENT_STATES[..3])
    });
    let summary = reaching.finish();
    assert_eq!((reaching.records, summary.records), (0, 0), "{}", reaching.dump());
}
