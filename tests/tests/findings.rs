//! Misjudged liveness, end to end: a small program falls into each trap and connwatch reports
//! exactly that finding for that process and socket; correct programs get no finding at all.
//! Runs as root in throwaway namespaces; each test uses its own ports.

use connwatch::{
    correlate::{Finding, Kind},
    decode::{Detail, Event, SockId},
};
use connwatch_tests::{
    Peer, Topology, Watching, firewall::drop_tcp_input, require_root, session::transition,
};

/// A client and a server, connected, watched.
struct Scene {
    topology: Topology,
    server: Peer,
    client: Peer,
    watching: Watching,
    port: u16,
}

impl Scene {
    fn connected(tag: &str, port: u16) -> Self {
        Self::connected_sharded(tag, port, 1)
    }

    /// Joined on `threads` correlator threads.
    fn connected_sharded(tag: &str, port: u16, threads: usize) -> Self {
        require_root();
        let topology = Topology::new(tag);
        let mut server = Peer::spawn(&topology.server);
        let mut client = Peer::spawn(&topology.client);
        // By port: a process the test forks must be seen too.
        let watching = Watching::on_port(port).sharded(threads);
        server.ok(&format!("listen {} {port}", Topology::SERVER_V4));
        client.ok(&format!("connect {} {port}", Topology::SERVER_V4));
        server.ok("accept");
        Self { topology, server, client, watching, port }
    }

    /// The socket `peer` accepted or connected.
    fn socket_of(&self, pid: u32) -> SockId {
        self.watching
            .session
            .events
            .iter()
            .find(|e| owned_by(e, pid) && matches!(e.detail.type_name(), "accept" | "connect"))
            .map(|e| e.sock)
            .unwrap_or_else(|| panic!("no socket of {pid}:\n{}", self.watching.session.dump()))
    }

    /// Waits for `kind`, then checks it is the only finding and names `pid` and its socket.
    fn expect_only(&mut self, kind: Kind, pid: u32) -> Finding {
        let finding = self.watching.wait_for(kind);
        let sock = self.socket_of(pid);
        let all: Vec<Kind> = self.watching.settle().iter().map(|f| f.kind).collect();
        assert_eq!(all, [kind], "exactly one finding");
        assert_eq!(finding.owner.as_ref().map(|o| o.pid), Some(pid), "the process that misjudged");
        assert_eq!(finding.sock, sock, "on its socket");
        assert!(finding.remote.port() == self.port || finding.local.port() == self.port);
        assert!(!finding.evidence.is_empty() && !finding.evidence_incomplete);
        finding
    }

    /// Waits for `pid` to close its connection, then checks nothing at all was found.
    fn expect_none_after_close(&mut self, pid: u32) {
        self.watching.wait_until("the close", |evs| {
            evs.iter().any(|e| owned_by(e, pid) && e.detail.type_name() == "close")
        });
        let findings = self.watching.settle();
        assert!(findings.is_empty(), "a correct program has no finding: {findings:#?}");
    }

    fn drop_server_input(&self) {
        drop_tcp_input(&self.topology.server, self.port);
    }
}

fn owned_by(e: &Event, pid: u32) -> bool {
    e.owner.as_ref().is_some_and(|o| o.pid == pid)
}

#[test]
fn close_wait_leak_names_the_server_that_never_closed() {
    let mut s = Scene::connected("cwleak", 23001);
    s.client.ok("close");
    // The server never looks: its socket sits in CLOSE_WAIT.
    let spid = s.server.pid();
    s.expect_only(Kind::CloseWaitLeak, spid);
}

#[test]
fn reading_to_eof_and_closing_finds_nothing() {
    let mut s = Scene::connected("eofok", 23002);
    s.client.ok("close");
    s.server.ok("read-eof");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_none_after_close(spid);
}

type Change = (&'static str, &'static str);

/// The last `n` of a socket's timed state changes.
fn last(changes: &[(u64, Change)], n: usize) -> Vec<Change> {
    changes[changes.len().saturating_sub(n)..].iter().map(|c| c.1).collect()
}

/// Under watch, a closed socket's last state changes come in one record when it reaches CLOSE;
/// each still arrives, in order, at the time it happened.
#[test]
fn a_clean_close_delivers_every_closing_state_change() {
    let mut s = Scene::connected("closing", 23017);
    let (cpid, spid) = (s.client.pid(), s.server.pid());
    s.client.ok("close");
    s.server.ok("read-eof");
    s.server.ok("close");
    s.watching.wait_until("both closes", |evs| {
        [cpid, spid]
            .iter()
            .all(|&pid| evs.iter().any(|e| owned_by(e, pid) && e.detail.type_name() == "close"))
    });
    let (client, server) = (s.socket_of(cpid), s.socket_of(spid));
    let closed = |evs: &[Event], sock: SockId| {
        evs.iter().any(|e| e.sock == sock && transition(e).is_some_and(|(_, new)| new == "CLOSE"))
    };
    s.watching.wait_until("both sockets' CLOSE", |evs| closed(evs, client) && closed(evs, server));
    let changes = |sock: SockId| -> Vec<(u64, Change)> {
        let events = &s.watching.session.events;
        events
            .iter()
            .filter(|e| e.sock == sock)
            .filter_map(|e| Some((e.ts_ns, transition(e)?)))
            .collect()
    };
    let (client, server) = (changes(client), changes(server));
    assert_eq!(
        last(&client, 3),
        [("ESTABLISHED", "FIN_WAIT1"), ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE")],
        "{client:?}"
    );
    assert_eq!(last(&server, 2), [("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE")], "{server:?}");
    for changes in [&client, &server] {
        assert!(changes.windows(2).all(|w| w[0].0 <= w[1].0), "in time order: {changes:?}");
    }
    let findings = s.watching.settle();
    assert!(findings.is_empty(), "a clean close has no finding: {findings:#?}");
}

#[test]
fn eof_ignored_names_the_server_that_kept_polling() {
    let mut s = Scene::connected("eofign", 23003);
    s.server.ok("epoll-add fd");
    s.client.ok("close");
    s.server.ok("epoll-wait");
    assert_eq!(s.server.ok("recv"), "received 0");
    // Back to the event loop, as if the EOF had been data, and again.
    s.server.ok("epoll-wait");
    assert_eq!(s.server.ok("recv"), "received 0");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_only(Kind::EofIgnored, spid);
}

#[test]
fn write_after_peer_close_names_the_writer_that_had_read_eof() {
    let mut s = Scene::connected("wapc", 23004);
    s.client.ok("close");
    assert_eq!(s.server.ok("read-eof"), "eof", "told: the peer has closed");
    // Writes anyway; the peer has gone and answers with RST.
    assert_eq!(s.server.ok("write 10"), "wrote 10");
    s.server.ok("close");
    let spid = s.server.pid();
    let finding = s.expect_only(Kind::WriteAfterPeerClose, spid);
    // Judged at the start of the write: the write in CLOSE_WAIT, then the RST it provoked.
    let lines: Vec<String> = finding.evidence.iter().map(|e| e.detail.to_string()).collect();
    let send = lines.iter().position(|l| l == "send 10 bytes [CLOSE_WAIT]");
    let rst = lines.iter().position(|l| l.starts_with("RST rx"));
    assert!(send.is_some() && rst.is_some() && send < rst, "{lines:#?}");
}

/// The same trap joined on three correlator threads, each owning a share of the sockets.
#[test]
fn write_after_peer_close_is_found_on_several_correlator_threads() {
    let mut s = Scene::connected_sharded("wapc3", 23018, 3);
    s.client.ok("close");
    assert_eq!(s.server.ok("read-eof"), "eof");
    assert_eq!(s.server.ok("write 10"), "wrote 10");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_only(Kind::WriteAfterPeerClose, spid);
}

#[test]
fn a_write_racing_the_peers_close_finds_nothing() {
    let mut s = Scene::connected("wrace", 23013);
    s.client.ok("close");
    s.watching.wait_until("the FIN at the server", |evs| {
        evs.iter().any(|e| e.detail.to_string() == "ESTABLISHED -> CLOSE_WAIT")
    });
    // Nothing told the server yet (it never read or polled): its reply crossed the FIN.
    assert_eq!(s.server.ok("write 10"), "wrote 10");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_none_after_close(spid);
}

#[test]
fn half_open_write_names_the_client_writing_into_the_void() {
    let mut s = Scene::connected("halfopn", 23005);
    s.drop_server_input();
    // A periodic writer that never reads: its writes keep succeeding.
    s.client.ok("write-every 250 12 100");
    let cpid = s.client.pid();
    let finding = s.expect_only(Kind::HalfOpenWrite, cpid);
    let measures = finding.measures.expect("retransmissions, time, bytes");
    assert!(measures.retransmits >= 3 && measures.unacked_bytes > 0, "{measures:?}");
    // When the kernel would give up, from the socket's own settings (no TCP_USER_TIMEOUT:
    // tcp_retries2).
    let note = finding.notes.first().expect("the give-up time");
    assert!(note.contains("gives up") && note.contains("tcp_retries2"), "{note}");
}

#[test]
fn a_heartbeat_that_detects_the_dead_peer_finds_nothing() {
    let mut s = Scene::connected("hbeat", 23006);
    s.drop_server_input();
    assert_eq!(s.client.ok("heartbeat 8 1000"), "dead-peer-closed");
    let cpid = s.client.pid();
    s.expect_none_after_close(cpid);
}

#[test]
fn so_error_false_healthy_names_the_checker() {
    let mut s = Scene::connected("soerrfh", 23007);
    s.client.ok("close");
    s.watching.wait_until("the FIN at the server", |evs| {
        evs.iter().any(|e| e.detail.to_string() == "ESTABLISHED -> CLOSE_WAIT")
    });
    assert_eq!(s.server.ok("so-error"), "0", "SO_ERROR says healthy");
    // So the request goes out.
    assert_eq!(s.server.ok("write 10"), "wrote 10");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_only(Kind::SoErrorFalseHealthy, spid);
}

#[test]
fn reading_so_error_twice_after_a_reset_then_closing_finds_nothing() {
    let mut s = Scene::connected("soerr2", 23014);
    s.client.ok("linger0");
    s.client.ok("close");
    s.watching.wait_until("the reset at the server", |evs| {
        evs.iter().any(|e| e.detail.to_string().starts_with("RST rx"))
    });
    assert_eq!(s.server.ok("so-error"), "ECONNRESET");
    assert_eq!(s.server.ok("so-error"), "0", "the first read cleared it");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_none_after_close(spid);
}

#[test]
fn a_forked_child_holding_the_connection_is_its_owner_and_the_parents_close_is_not_the_end() {
    let mut s = Scene::connected("forkcw", 23015);
    let child: u32 = s.server.ok("fork-writer").trim_start_matches("forked ").parse().unwrap();
    // The parent lets go of its copy; the child still holds the connection.
    s.server.ok("close");
    assert_eq!(s.client.ok("recv"), "received 1", "the child's byte");
    s.client.ok("close");
    let finding = s.watching.wait_for(Kind::CloseWaitLeak);
    assert_eq!(finding.owner.as_ref().map(|o| o.pid), Some(child), "the holder that uses it");
    let parent = s.server.pid();
    let copies: Vec<u32> = s
        .watching
        .session
        .events
        .iter()
        .filter_map(|e| match e.detail {
            Detail::Close { others, .. } if e.sock == finding.sock => Some(others),
            _ => None,
        })
        .collect();
    assert_eq!(copies, [1], "the parent's close left one other reference (pid {parent})");
}

#[test]
fn a_server_that_exits_holding_a_peer_closed_socket_leaks_nothing() {
    let mut s = Scene::connected("exitcw", 23016);
    s.client.ok("close");
    s.watching.wait_until("the FIN at the server", |evs| {
        evs.iter().any(|e| e.detail.to_string() == "ESTABLISHED -> CLOSE_WAIT")
    });
    // The process exits without close(): the kernel closes its descriptors.
    s.server.begin("exit");
    s.watching.wait_until("the socket's end", |evs| {
        evs.iter().any(|e| e.detail.type_name() == "destroy")
    });
    let findings = s.watching.settle();
    assert!(findings.is_empty(), "exiting is letting go: {findings:#?}");
}

#[test]
fn reset_unnoticed_names_the_server_that_never_looked() {
    let mut s = Scene::connected("rstun", 23008);
    s.client.ok("linger0");
    s.client.ok("close");
    let spid = s.server.pid();
    s.expect_only(Kind::ResetUnnoticed, spid);
}

#[test]
fn closing_on_the_reset_finds_nothing() {
    let mut s = Scene::connected("rstok", 23009);
    s.client.ok("linger0");
    s.client.ok("close");
    assert_eq!(s.server.send("recv"), "err ECONNRESET");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_none_after_close(spid);
}

#[test]
fn error_ignored_names_the_server_that_kept_reading() {
    let mut s = Scene::connected("errign", 23010);
    s.client.ok("linger0");
    s.client.ok("close");
    assert_eq!(s.server.send("recv"), "err ECONNRESET");
    // As if it were a one-off: read again.
    s.server.send("recv");
    s.server.ok("close");
    let spid = s.server.pid();
    s.expect_only(Kind::ErrorIgnored, spid);
}

fn refused_async_connect(tag: &str, port: u16) -> (Topology, Peer, Watching) {
    require_root();
    let topology = Topology::new(tag);
    let mut client = Peer::spawn(&topology.client);
    let watching = Watching::start(&[client.pid()]);
    assert_eq!(client.send(&format!("connect-nb {} {port}", Topology::SERVER_V4)), "err E115");
    client.ok("wait-writable");
    (topology, client, watching)
}

#[test]
fn connect_unverified_names_the_client_that_wrote_without_checking() {
    let (_t, mut client, mut watching) = refused_async_connect("connun", 23011);
    // Writable, so connected, it thinks.
    client.send("write 10");
    client.ok("close");
    let cpid = client.pid();
    let finding = watching.wait_for(Kind::ConnectUnverified);
    assert_eq!(finding.owner.as_ref().map(|o| o.pid), Some(cpid));
    let all: Vec<Kind> = watching.settle().iter().map(|f| f.kind).collect();
    assert_eq!(all, [Kind::ConnectUnverified]);
}

#[test]
fn reading_so_error_after_async_connect_finds_nothing() {
    let (_t, mut client, mut watching) = refused_async_connect("connok", 23012);
    assert_eq!(client.ok("so-error"), "ECONNREFUSED");
    client.ok("close");
    let cpid = client.pid();
    watching.wait_until("the close", |evs| {
        evs.iter().any(|e| owned_by(e, cpid) && e.detail.type_name() == "close")
    });
    let findings = watching.settle();
    assert!(findings.is_empty(), "{findings:#?}");
}
