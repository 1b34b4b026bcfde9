//! Correct real software under real load gives no finding; Go services that fall into the traps
//! real Go code falls into each give exactly their finding. Servers come from Debian packages
//! (`cargo xtask test` installs them) and run on loopback or in the tests' own namespaces.
//! Each test uses its own ports (below the ephemeral range).

use connwatch::{
    correlate::{Finding, Kind},
    decode::Event,
};
use connwatch_tests::{
    Topology, Watching,
    firewall::drop_tcp_input,
    require_root,
    servers::{self, Service},
};

/// Lets the watched programs finish, then checks nothing was found and that there was real
/// traffic to judge: `min_sockets` sockets, their application observations included.
fn expect_no_findings(watching: &mut Watching, what: &str, min_sockets: usize) {
    watching.quiesce();
    let sockets: std::collections::HashSet<_> =
        watching.session.events.iter().map(|e| e.sock).collect();
    let observed = watching.session.events.iter().filter(|e| e.detail.snapshot().is_some()).count();
    assert!(
        sockets.len() >= min_sockets && observed > 0,
        "{what}: too little traffic to judge ({} sockets, {observed} observations)",
        sockets.len()
    );
    let findings = watching.settle();
    assert!(
        findings.is_empty(),
        "{what} is correct software, yet {} finding(s):\n{}",
        findings.len(),
        findings.iter().map(describe).collect::<Vec<_>>().join("\n")
    );
    // The verdict rests on every event, but for the rare hits the kernel skipped (counted).
    let skips = watching.session.assert_nothing_lost_but_rare_skips(what);
    println!(
        "{what}: {} sockets, {} events, no findings (skipped by the kernel: {skips:?})",
        sockets.len(),
        watching.session.events.len()
    );
}

fn describe(f: &Finding) -> String {
    let owner = f.owner.as_ref().map_or("?".into(), |o| format!("{} ({})", o.pid, o.comm));
    let timeline: Vec<String> = f.evidence.iter().map(|e| format!("    {}", e.detail)).collect();
    format!("{} by {owner} {} -> {}\n{}", f.kind, f.local, f.remote, timeline.join("\n"))
}

fn owned_by(e: &Event, pid: u32) -> bool {
    e.owner.as_ref().is_some_and(|o| o.pid == pid)
}

#[test]
fn nginx_under_wrk_and_curl_gives_no_findings() {
    require_root();
    let port = 24080;
    let _nginx = servers::nginx(port);
    let mut watching = Watching::as_deployed(&[port]);
    let url = format!("http://127.0.0.1:{port}/");
    // 32 keep-alive connections; wrk closes them while nginx may still be answering.
    watching.during(|| {
        servers::run("wrk", "wrk", &["-t2", "-c32", "-d4s", &url]);
        // curl: one request per connection, then several over one connection.
        for _ in 0..5 {
            servers::run("curl", "curl", &["-sf", "-o", "/dev/null", &url]);
        }
        servers::run("curl", "curl", &["-sf", "-o", "/dev/null", &url, "-o", "/dev/null", &url]);
    });
    expect_no_findings(&mut watching, "nginx + wrk + curl", 38);
}

#[test]
fn redis_under_redis_benchmark_gives_no_findings() {
    require_root();
    let port = 24379;
    let _redis = servers::redis(port);
    let mut watching = Watching::as_deployed(&[port]);
    let p = port.to_string();
    let base = ["-h", "127.0.0.1", "-p", &p, "-q"];
    let mut keepalive = base.to_vec();
    keepalive.extend(["-n", "50000", "-c", "20", "-t", "get,set"]);
    // -k 0: a new connection for every request.
    let mut churn = base.to_vec();
    churn.extend(["-n", "2000", "-c", "10", "-k", "0", "-t", "ping"]);
    watching.during(|| {
        servers::run("redis-benchmark", "redis-tools", &keepalive);
        servers::run("redis-benchmark", "redis-tools", &churn);
        servers::run("redis-cli", "redis-tools", &["-h", "127.0.0.1", "-p", &p, "ping"]);
    });
    expect_no_findings(&mut watching, "redis-server + redis-benchmark", 1000);
}

#[test]
fn postgresql_under_pgbench_with_and_without_reconnects_gives_no_findings() {
    require_root();
    let port = 24432;
    let _postgres = servers::postgres(port);
    let pgbench = servers::postgres_bin().join("pgbench");
    let pgbench = pgbench.to_str().expect("a UTF-8 path");
    let p = port.to_string();
    let conn = ["-h", "127.0.0.1", "-p", &p, "-U", "postgres"];
    let mut init = vec!["-i", "-q", "-s", "1"];
    init.extend(conn);
    init.push("postgres");
    servers::run(pgbench, "postgresql", &init);
    // Three correlator threads, each reading its own ring buffer: every backend pgbench -C
    // forks is a new connection, and their lives spread over the threads.
    let mut watching = Watching::as_deployed(&[port]).sharded(3);
    watching.during(|| {
        for reconnect in [false, true] {
            let mut args = vec!["-T", "3", "-c", "4", "-j", "2"];
            if reconnect {
                // -C: a new connection (and a forked backend) for every transaction.
                args.push("-C");
            }
            args.extend(conn);
            args.push("postgres");
            servers::run(pgbench, "postgresql", &args);
        }
    });
    expect_no_findings(&mut watching, "PostgreSQL + pgbench (with and without -C)", 100);
}

#[test]
fn go_http_client_pool_against_a_short_idle_timeout_gives_no_findings() {
    require_root();
    let port = 24090;
    let addr = format!("127.0.0.1:{port}");
    let _server = servers::go_service(None, &["serve-idle", &addr]);
    let mut watching = Watching::as_deployed(&[port]);
    // The server closes pooled connections after 300 ms idle; the pool must notice.
    let url = format!("http://{addr}/");
    let _pool = watching.during(|| servers::go_service(None, &["pool", &url, "4"]));
    expect_no_findings(&mut watching, "Go net/http pool + server with IdleTimeout", 8);
}

/// Waits for `kind` on `pid`'s socket, lets the story finish, and checks it was the only one.
fn expect_only(watching: &mut Watching, kind: Kind, pid: u32) -> Finding {
    let finding = watching.wait_for(kind);
    assert_eq!(finding.owner.as_ref().map(|o| o.pid), Some(pid), "{}", describe(&finding));
    let all: Vec<Kind> = watching.settle().iter().map(|f| f.kind).collect();
    assert_eq!(all, [kind], "exactly one finding");
    finding
}

#[test]
fn go_writer_without_deadline_into_a_half_open_connection_is_half_open_write() {
    require_root();
    let port = 24091;
    let topology = Topology::new("gohalf");
    let addr = format!("{}:{port}", Topology::SERVER_V4);
    let _server = servers::go_service(Some(&topology.server.name), &["hold", &addr]);
    let mut watching = Watching::on_port(port);
    let writer = servers::go_service(Some(&topology.client.name), &["write-forever", &addr]);
    // Connected; from now on nothing reaches the server.
    drop_tcp_input(&topology.server, port);
    let finding = expect_only(&mut watching, Kind::HalfOpenWrite, writer.pid());
    let measures = finding.measures.expect("retransmissions, time, bytes");
    assert!(measures.retransmits >= 3 && measures.unacked_bytes > 0, "{measures:?}");
}

#[test]
fn go_response_body_never_closed_is_a_close_wait_leak() {
    require_root();
    let port = 24092;
    let addr = format!("127.0.0.1:{port}");
    let _server = servers::go_service(None, &["serve-idle", &addr]);
    let mut watching = Watching::on_port(port);
    let client = servers::go_service(None, &["leak-body", &format!("http://{addr}/")]);
    // The server's idle timeout closes the connection; the client never reads the FIN.
    let finding = expect_only(&mut watching, Kind::CloseWaitLeak, client.pid());
    assert_eq!(finding.remote.port(), port);
}

#[test]
fn go_read_loop_that_ignores_eof_is_eof_ignored() {
    require_root();
    let port = 24093;
    let addr = format!("127.0.0.1:{port}");
    let server = servers::go_service(None, &["eof-loop", &addr]);
    let mut watching = Watching::on_port(port);
    // A client that connects and leaves.
    drop(std::net::TcpStream::connect(&addr).expect("connect to the Go server"));
    let spid = server.pid();
    watching.wait_until("the Go server's reads of EOF", |evs| {
        evs.iter()
            .filter(|e| owned_by(e, spid) && e.detail.to_string().starts_with("recv 0"))
            .count()
            >= 3
    });
    let finding = expect_only(&mut watching, Kind::EofIgnored, spid);
    assert_eq!(finding.local.port(), port);
    drop::<Service>(server);
}
