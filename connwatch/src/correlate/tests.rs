//! Every detector on synthetic event sequences: the trap, its correct twin, shuffled
//! delivery, lost events, address reuse, and bounds.

use std::net::SocketAddr;

use super::*;
use crate::decode::{Direction, Errno, Family, Io, Owner, Snapshot, TcpState, Via};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const SOCK: SockId = SockId { addr: 0xffff_8880_0000_1000, birth_ns: 1 };

fn state(name: &str) -> TcpState {
    let value = (1..=12).find(|v| connwatch_common::tcp::state_name(*v) == Some(name)).unwrap();
    TcpState::new(value).unwrap()
}

fn snap(name: &str) -> Snapshot {
    Snapshot { state: state(name), sk_err: None, rto_retransmits: 0, unacked_bytes: 0, srtt_us: 0 }
}

fn at(sock: SockId, ms: u64, detail: Detail) -> Event {
    let local: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let remote: SocketAddr = "10.0.0.2:80".parse().unwrap();
    Event {
        ts_ns: ms * MS,
        until_ns: ms * MS,
        owner: Some(Owner { pid: 4242, comm: "app".into() }),
        sock,
        family: Family::Inet,
        local,
        remote,
        detail,
    }
}

fn change(old: &str, new: &str) -> Detail {
    Detail::State { old: state(old), new: state(new) }
}

fn io(last: Result<u32, i32>, in_state: &str) -> Io {
    let _ = in_state;
    Io { last: last.map_err(Errno), bytes: last.unwrap_or(0) as u64, calls: 1 }
}

fn recv(last: Result<u32, i32>, in_state: &str) -> Detail {
    Detail::Recv { io: io(last, in_state), snapshot: snap(in_state) }
}

fn send(last: Result<u32, i32>, in_state: &str) -> Detail {
    Detail::Send { io: io(last, in_state), snapshot: snap(in_state) }
}

fn send_retransmitting(timeouts: u8) -> Detail {
    let snapshot =
        Snapshot { rto_retransmits: timeouts, unacked_bytes: 3000, ..snap("ESTABLISHED") };
    Detail::Send { io: io(Ok(1000), "ESTABLISHED"), snapshot }
}

fn ready(mask: u32, in_state: &str) -> Detail {
    Detail::Readiness { fd: 5, via: Via::Epoll, mask, calls: 1, snapshot: snap(in_state) }
}

fn so_error(value: i32, in_state: &str) -> Detail {
    Detail::SoError { fd: 5, value: (value != 0).then_some(Errno(value)), snapshot: snap(in_state) }
}

fn connect(result: Result<(), i32>) -> Detail {
    Detail::Connect { fd: 5, result: result.map_err(Errno), snapshot: snap("SYN_SENT") }
}

fn close(in_state: &str) -> Detail {
    Detail::Close { fd: 5, others: 0, snapshot: snap(in_state) }
}

/// close() of one copy while `others` references to the open file remain (fork, dup).
fn close_copy(in_state: &str, others: u32) -> Detail {
    Detail::Close { fd: 5, others, snapshot: snap(in_state) }
}

fn rst_rx(in_state: &str) -> Detail {
    Detail::Reset { direction: Direction::Rx, state: state(in_state) }
}

fn accept() -> Detail {
    Detail::Accept { fd: 5, snapshot: snap("ESTABLISHED") }
}

const EPOLLIN: u32 = 0x1;
const EPOLLOUT: u32 = 0x4;
const EPOLLRDHUP: u32 = 0x2000;

/// Runs events through a correlator, then lets 60 s pass: every finding's kind, in order.
/// Delivered one by one and as one batch (whose runs of one socket share a look-up), the
/// events must find the same.
fn kinds(events: &[Event]) -> Vec<Kind> {
    let one_by_one = kinds_delivered(events, |c| events.iter().flat_map(|e| c.ingest(e)).collect());
    let batched = kinds_delivered(events, |c| c.ingest_all(events));
    assert_eq!(batched, one_by_one, "one batch finds what one event at a time does");
    one_by_one
}

fn kinds_delivered(
    events: &[Event],
    deliver: impl Fn(&mut Correlator) -> Vec<Finding>,
) -> Vec<Kind> {
    let mut c = Correlator::new(Thresholds::default(), DEFAULT_MAX_SOCKETS);
    let mut found: Vec<Kind> = deliver(&mut c).into_iter().map(|f| f.kind).collect();
    let end = events.iter().map(|e| e.ts_ns).max().unwrap_or(0) + 60 * S;
    found.extend(c.tick(end).into_iter().map(|f| f.kind));
    found.sort();
    found
}

/// The same events delivered in reverse and interleaved orders find the same.
fn order_independent(events: &[Event]) {
    let expected = kinds(events);
    let mut reversed = events.to_vec();
    reversed.reverse();
    assert_eq!(kinds(&reversed), expected, "reversed delivery");
    let (even, odd): (Vec<_>, Vec<_>) =
        events.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    let interleaved: Vec<Event> = odd.into_iter().chain(even).map(|(_, e)| e).collect();
    assert_eq!(kinds(&interleaved), expected, "interleaved delivery");
}

fn established(sock: SockId) -> Vec<Event> {
    vec![
        at(sock, 0, change("LISTEN", "SYN_RECV")),
        at(sock, 1, change("SYN_RECV", "ESTABLISHED")),
        at(sock, 2, accept()),
    ]
}

fn with(mut base: Vec<Event>, more: Vec<Event>) -> Vec<Event> {
    base.extend(more);
    base
}

// close-wait-leak

fn peer_closed_and_left(sock: SockId) -> Vec<Event> {
    with(established(sock), vec![at(sock, 1000, change("ESTABLISHED", "CLOSE_WAIT"))])
}

#[test]
fn close_wait_leak_after_the_grace() {
    let events = peer_closed_and_left(SOCK);
    assert_eq!(kinds(&events), [Kind::CloseWaitLeak]);
    order_independent(&events);
    // Not before the grace has passed.
    let mut c = Correlator::new(Thresholds::default(), 16);
    events.iter().for_each(|e| assert!(c.ingest(e).is_empty()));
    assert!(c.tick(1000 * MS + 9 * S).is_empty());
    assert_eq!(c.tick(1000 * MS + 10 * S)[0].kind, Kind::CloseWaitLeak);
}

#[test]
fn reading_to_eof_and_closing_is_no_close_wait_leak() {
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1001, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
            at(SOCK, 1002, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1003, close("CLOSE_WAIT")),
            at(SOCK, 1003, change("CLOSE_WAIT", "LAST_ACK")),
            at(SOCK, 1004, change("LAST_ACK", "CLOSE")),
        ],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

// eof-ignored

#[test]
fn eof_ignored_when_polling_goes_on_after_recv_0() {
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1001, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
            at(SOCK, 1002, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1003, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
            at(SOCK, 1004, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1005, close("CLOSE_WAIT")),
            at(SOCK, 1005, change("CLOSE_WAIT", "LAST_ACK")),
        ],
    );
    assert_eq!(kinds(&events), [Kind::EofIgnored]);
    order_independent(&events);
}

#[test]
fn a_zero_length_read_before_the_fin_is_no_eof() {
    // nginx reads with an empty buffer before the FIN arrives: 0 bytes, not end-of-file.
    let events = with(
        established(SOCK),
        vec![
            at(SOCK, 500, recv(Ok(0), "ESTABLISHED")),
            at(SOCK, 1000, change("ESTABLISHED", "CLOSE_WAIT")),
            at(SOCK, 1001, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
            at(SOCK, 1002, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1003, close("CLOSE_WAIT")),
        ],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

#[test]
fn one_readiness_report_racing_the_close_is_no_eof_ignored() {
    // Another thread's epoll_wait reports the socket once more before this one closes it.
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1001, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
            at(SOCK, 1002, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1003, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
            at(SOCK, 1004, close("CLOSE_WAIT")),
            at(SOCK, 1004, change("CLOSE_WAIT", "LAST_ACK")),
        ],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

// write-after-peer-close

/// The peer closed, the application was told (`told`), wrote into CLOSE_WAIT, and the peer
/// answered the data with RST.
fn told_then_wrote(told: Vec<Event>) -> Vec<Event> {
    let mut events = peer_closed_and_left(SOCK);
    events.extend(told);
    events.extend([
        at(SOCK, 1099, send(Ok(10), "CLOSE_WAIT")),
        at(SOCK, 1100, rst_rx("CLOSE_WAIT")),
        at(SOCK, 1100, change("CLOSE_WAIT", "CLOSE")),
        at(SOCK, 1101, close("CLOSE")),
    ]);
    events
}

#[test]
fn write_after_peer_close_when_told_by_readiness_or_eof() {
    let by_rdhup = told_then_wrote(vec![at(SOCK, 1001, ready(EPOLLRDHUP, "CLOSE_WAIT"))]);
    assert_eq!(kinds(&by_rdhup), [Kind::WriteAfterPeerClose]);
    order_independent(&by_rdhup);
    let by_eof = told_then_wrote(vec![at(SOCK, 1001, recv(Ok(0), "CLOSE_WAIT"))]);
    assert_eq!(kinds(&by_eof), [Kind::WriteAfterPeerClose]);
    order_independent(&by_eof);
}

#[test]
fn a_finding_inside_a_run_of_one_socket_leaves_the_rest_of_the_run_applied() {
    // One batch, one socket: the write completes the finding halfway; the close after it must
    // still count, or the grace would end in a CLOSE_WAIT leak.
    let events = told_then_wrote(vec![at(SOCK, 1001, recv(Ok(0), "CLOSE_WAIT"))]);
    let mut c = Correlator::new(Thresholds::default(), DEFAULT_MAX_SOCKETS);
    let found: Vec<Kind> = c.ingest_all(&events).into_iter().map(|f| f.kind).collect();
    assert_eq!(found, [Kind::WriteAfterPeerClose]);
    let track = c.tracks.get(&SOCK).expect("tracked");
    assert!(track.facts.app_closed().first().is_some(), "the close after the finding");
    assert_eq!(c.tick(60 * S), [], "no leak: the application closed");
}

#[test]
fn a_write_racing_the_fin_is_no_finding() {
    // nginx under wrk: the response goes out as the client's FIN arrives; nothing had told
    // the server. The RST that answers it is the kernel's business.
    let race = told_then_wrote(vec![]);
    assert_eq!(kinds(&race), []);
    order_independent(&race);
}

#[test]
fn answering_a_request_that_arrived_with_the_fin_is_no_finding() {
    // EPOLLIN|EPOLLRDHUP with the request still unread: the server reads it and replies.
    let answered = told_then_wrote(vec![
        at(SOCK, 1001, ready(EPOLLIN | EPOLLRDHUP, "CLOSE_WAIT")),
        at(SOCK, 1002, recv(Ok(120), "CLOSE_WAIT")),
    ]);
    assert_eq!(kinds(&answered), []);
    order_independent(&answered);
}

#[test]
fn replying_to_a_half_closed_peer_is_no_finding() {
    // The peer shut down its sending side only: the reply is acknowledged, no RST comes.
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1001, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1002, send(Ok(10), "CLOSE_WAIT")),
            at(SOCK, 1003, close("CLOSE_WAIT")),
            at(SOCK, 1003, change("CLOSE_WAIT", "LAST_ACK")),
        ],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

#[test]
fn a_write_is_judged_by_the_state_it_began_in() {
    // Sends are placed at their start: one that began in ESTABLISHED, was told nothing and
    // was answered by RST (ts 1100) inside the call is no write after the peer closed.
    let mut events = established(SOCK);
    events.extend([
        at(SOCK, 1099, send(Ok(10), "ESTABLISHED")),
        at(SOCK, 1100, rst_rx("ESTABLISHED")),
        at(SOCK, 1100, change("ESTABLISHED", "CLOSE")),
        at(SOCK, 1101, recv(Err(libc::ECONNRESET), "CLOSE")),
        at(SOCK, 1102, close("CLOSE")),
    ]);
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

// half-open-write

fn black_hole(sends_after: Vec<Event>) -> Vec<Event> {
    let mut events = with(established(SOCK), vec![at(SOCK, 100, send(Ok(1000), "ESTABLISHED"))]);
    for (i, ms) in [300, 700, 1500].into_iter().enumerate() {
        events.push(at(SOCK, ms, Detail::Retransmit { state: state("ESTABLISHED") }));
        let _ = i;
    }
    events.extend(sends_after);
    events
}

#[test]
fn half_open_write_reports_retransmissions_time_and_bytes() {
    let events = black_hole(vec![at(SOCK, 1600, send_retransmitting(3))]);
    let mut c = Correlator::new(Thresholds::default(), 16);
    let findings: Vec<Finding> = events.iter().flat_map(|e| c.ingest(e)).collect();
    assert_eq!(findings.len(), 1);
    let f = &findings[0];
    assert_eq!((f.kind, f.kind.severity()), (Kind::HalfOpenWrite, Severity::Error));
    let m = f.measures.unwrap();
    assert_eq!((m.retransmits, m.unacked_bytes), (3, 3000));
    assert!((m.seconds_without_progress - 1.3).abs() < 1e-9, "{m:?}");
    assert!(
        f.evidence
            .iter()
            .any(|e| e.source == "kernel" && matches!(e.detail, Detail::Retransmit { .. }))
    );
    order_independent(&events);
}

#[test]
fn a_heartbeat_that_gives_up_is_no_half_open_write() {
    // One timeout, then the application closes: below the threshold, nothing written after.
    let events = black_hole(vec![
        at(SOCK, 400, send_retransmitting(1)),
        at(SOCK, 1600, close("ESTABLISHED")),
    ]);
    assert_eq!(kinds(&events), []);
}

// so-error-false-healthy

#[test]
fn so_error_zero_then_a_write_is_false_healthy() {
    let trap = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1001, so_error(0, "CLOSE_WAIT")),
            at(SOCK, 1002, send(Ok(4), "CLOSE_WAIT")),
            at(SOCK, 1003, close("CLOSE_WAIT")),
        ],
    );
    assert_eq!(kinds(&trap), [Kind::SoErrorFalseHealthy]);
    order_independent(&trap);
    let healthy = with(established(SOCK), vec![at(SOCK, 500, so_error(0, "ESTABLISHED"))]);
    assert_eq!(kinds(&healthy), []);
}

#[test]
fn so_error_zero_then_close_is_no_finding() {
    let checked = with(
        peer_closed_and_left(SOCK),
        vec![at(SOCK, 1001, so_error(0, "CLOSE_WAIT")), at(SOCK, 1002, close("CLOSE_WAIT"))],
    );
    assert_eq!(kinds(&checked), []);
}

#[test]
fn reading_so_error_twice_after_a_reset_and_closing_is_no_finding() {
    let events = with(
        with(established(SOCK), reset(SOCK, 1000)),
        vec![
            at(SOCK, 1001, so_error(libc::ECONNRESET, "CLOSE")),
            at(SOCK, 1002, so_error(0, "CLOSE")),
            at(SOCK, 1003, close("CLOSE")),
        ],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

// reset-unnoticed

fn reset(sock: SockId, ms: u64) -> Vec<Event> {
    vec![
        at(sock, ms, Detail::Reset { direction: Direction::Rx, state: state("ESTABLISHED") }),
        at(sock, ms, Detail::Error { errno: Errno(libc::ECONNRESET), state: state("ESTABLISHED") }),
        at(sock, ms, change("ESTABLISHED", "CLOSE")),
    ]
}

#[test]
fn reset_unnoticed_after_the_grace() {
    let events = with(established(SOCK), reset(SOCK, 1000));
    assert_eq!(kinds(&events), [Kind::ResetUnnoticed]);
    order_independent(&events);
}

#[test]
fn a_connection_reset_before_it_was_accepted_is_still_unnoticed() {
    let mut events = vec![
        at(SOCK, 0, change("LISTEN", "SYN_RECV")),
        at(SOCK, 1, change("SYN_RECV", "ESTABLISHED")),
    ];
    events.extend(reset(SOCK, 5));
    events.push(at(SOCK, 10, accept()));
    assert_eq!(kinds(&events), [Kind::ResetUnnoticed]);
    // Never accepted: no application to blame.
    assert_eq!(kinds(&events[..events.len() - 1]), []);
    // Accepted seconds after the reset (a busy server): the socket was still remembered.
    let mut c = Correlator::new(Thresholds::default(), 16);
    for e in &events[..events.len() - 1] {
        c.ingest(e);
    }
    c.tick(5 * S);
    c.ingest(&at(SOCK, 5000, accept()));
    assert_eq!(
        c.tick(20 * S).into_iter().map(|f| f.kind).collect::<Vec<_>>(),
        [Kind::ResetUnnoticed]
    );
}

/// Under watch and agent the kernel leaves a life's opening to its birth: a listener's child
/// whose first record is its handshake's end still waits to be accepted, and its evidence
/// begins with the opening.
#[test]
fn a_child_known_by_its_birth_waits_for_its_accept() {
    use connwatch_common::socket::{BIRTH_FROM_LISTENER, birth_of};
    let child = SockId { addr: SOCK.addr, birth_ns: birth_of(MS / 2, BIRTH_FROM_LISTENER) };
    let mut events = vec![at(child, 1, change("SYN_RECV", "ESTABLISHED"))];
    events.extend(reset(child, 5));
    let mut c = Correlator::new(Thresholds::default(), 16);
    for e in &events {
        c.ingest(e);
    }
    c.tick(5 * S);
    c.ingest(&at(child, 5000, accept()));
    let findings = c.tick(20 * S);
    assert_eq!(findings.iter().map(|f| f.kind).collect::<Vec<_>>(), [Kind::ResetUnnoticed]);
    let first = &findings[0].evidence[0];
    assert_eq!((first.ts_ns, first.source), (MS / 2, "kernel"));
    assert_eq!(first.detail, change("LISTEN", "SYN_RECV"));
}

#[test]
fn a_process_that_exits_after_the_reset_let_go_of_its_socket() {
    // The process exited (the kernel closed its descriptors, no close() call): the kernel's
    // destruction of the socket says every holder let go.
    let events = with(
        with(established(SOCK), reset(SOCK, 1000)),
        vec![at(SOCK, 1002, Detail::Destroy { state: state("CLOSE") })],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

#[test]
fn closing_on_the_reset_is_no_finding() {
    let events = with(
        with(established(SOCK), reset(SOCK, 1000)),
        vec![at(SOCK, 1001, recv(Err(libc::ECONNRESET), "CLOSE")), at(SOCK, 1002, close("CLOSE"))],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

// error-ignored

#[test]
fn error_ignored_when_the_socket_is_used_after_its_error() {
    let events = with(
        with(established(SOCK), reset(SOCK, 1000)),
        vec![
            at(SOCK, 1001, recv(Err(libc::ECONNRESET), "CLOSE")),
            at(SOCK, 1002, so_error(0, "CLOSE")),
            at(SOCK, 1003, send(Err(libc::EPIPE), "CLOSE")),
        ],
    );
    // The 0 read came after the error it cleared: the error is what was ignored. (Not checked
    // in shuffled order: the calls are the application's own, one after another, and reach the
    // ring buffer in that order.)
    assert_eq!(kinds(&events), [Kind::ErrorIgnored]);
}

// connect-unverified

fn refused_async_connect(sock: SockId) -> Vec<Event> {
    vec![
        at(sock, 0, change("CLOSE", "SYN_SENT")),
        at(sock, 1, connect(Err(libc::EINPROGRESS))),
        at(sock, 2, Detail::Reset { direction: Direction::Rx, state: state("SYN_SENT") }),
        at(sock, 2, change("SYN_SENT", "CLOSE")),
        at(sock, 2, Detail::Error { errno: Errno(libc::ECONNREFUSED), state: state("CLOSE") }),
        at(sock, 3, ready(EPOLLOUT, "CLOSE")),
    ]
}

#[test]
fn connect_unverified_when_io_comes_before_so_error() {
    let events = with(
        refused_async_connect(SOCK),
        vec![at(SOCK, 4, send(Err(libc::ECONNREFUSED), "CLOSE"))],
    );
    assert!(kinds(&events).contains(&Kind::ConnectUnverified), "{:?}", kinds(&events));
    order_independent(&events);
}

#[test]
fn reading_so_error_after_async_connect_is_no_finding() {
    let events = with(
        refused_async_connect(SOCK),
        vec![at(SOCK, 4, so_error(libc::ECONNREFUSED, "CLOSE")), at(SOCK, 5, close("CLOSE"))],
    );
    assert_eq!(kinds(&events), []);
    order_independent(&events);
}

// Cross-cutting properties

#[test]
fn each_kind_is_reported_once_per_socket() {
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1001, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1100, send(Ok(1), "CLOSE_WAIT")),
            at(SOCK, 1200, send(Ok(1), "CLOSE_WAIT")),
            at(SOCK, 1300, send(Ok(1), "CLOSE_WAIT")),
            at(SOCK, 1301, rst_rx("CLOSE_WAIT")),
        ],
    );
    let found = kinds(&events);
    assert_eq!(found.iter().filter(|k| **k == Kind::WriteAfterPeerClose).count(), 1, "{found:?}");
}

// Sockets shared between processes

#[test]
fn closing_one_copy_of_a_shared_socket_is_not_closing_it() {
    // A forking server: the parent closes its copy, the child leaks the connection.
    let events =
        with(peer_closed_and_left(SOCK), vec![at(SOCK, 999, close_copy("ESTABLISHED", 1))]);
    assert_eq!(kinds(&events), [Kind::CloseWaitLeak]);
    order_independent(&events);
    // The last holder's close is the connection's.
    let released = with(events, vec![at(SOCK, 1002, close("CLOSE_WAIT"))]);
    assert_eq!(kinds(&released), []);
}

#[test]
fn a_summary_stands_where_its_calls_were() {
    // 40 sends summarised from before the FIN: none of them began after it.
    let mut summary = at(SOCK, 500, send(Ok(1), "ESTABLISHED"));
    summary.until_ns = 990 * MS;
    if let Detail::Send { io, .. } = &mut summary.detail {
        io.calls = 40;
    }
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            summary,
            at(SOCK, 1001, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1002, close("CLOSE_WAIT")),
            at(SOCK, 1002, rst_rx("CLOSE_WAIT")),
        ],
    );
    assert_eq!(kinds(&events), []);
}

#[test]
fn findings_say_when_events_were_lost_around_their_socket() {
    let events = told_then_wrote(vec![at(SOCK, 1001, recv(Ok(0), "CLOSE_WAIT"))]);
    let run = |loss: Option<(u64, u64)>| {
        let mut c = Correlator::new(Thresholds::default(), 16);
        if let Some((from, to)) = loss {
            c.note_loss(from, to);
        }
        events.iter().flat_map(|e| c.ingest(e)).next().expect("a finding")
    };
    assert!(!run(None).evidence_incomplete);
    assert!(run(Some((900 * MS, 1050 * MS))).evidence_incomplete, "loss during the socket's life");
    assert!(!run(Some((5000 * MS, 6000 * MS))).evidence_incomplete, "loss after the finding");
}

#[test]
fn timer_findings_are_withheld_when_events_were_lost_meanwhile() {
    // The close that would have ended the CLOSE_WAIT may be among the lost events.
    let mut c = Correlator::new(Thresholds::default(), 16);
    for e in peer_closed_and_left(SOCK) {
        c.ingest(&e);
    }
    c.note_loss(1500 * MS, 1600 * MS);
    assert!(c.tick(60 * S).is_empty());
    assert_eq!(c.withheld(), 1);
    // Without loss, the leak is reported.
    let mut c = Correlator::new(Thresholds::default(), 16);
    for e in peer_closed_and_left(SOCK) {
        c.ingest(&e);
    }
    assert_eq!(c.tick(60 * S).len(), 1);
    assert_eq!(c.withheld(), 0);
}

#[test]
fn a_reused_address_is_a_new_socket() {
    let first = SOCK;
    let second = SockId { birth_ns: 2_000 * MS, ..SOCK };
    // The first life ends by RST and is closed properly; the second only sends.
    let mut events = with(established(first), reset(first, 1000));
    events.extend([
        at(first, 1001, recv(Err(libc::ECONNRESET), "CLOSE")),
        at(first, 1002, close("CLOSE")),
    ]);
    events.extend([
        at(second, 2000, change("CLOSE", "SYN_SENT")),
        at(second, 2001, change("SYN_SENT", "ESTABLISHED")),
        at(second, 2002, connect(Ok(()))),
        at(second, 2003, send(Ok(10), "ESTABLISHED")),
    ]);
    assert_eq!(kinds(&events), [], "the first life's error does not taint the second");
}

#[test]
fn an_adopted_identity_joins_the_live_socket_at_its_address() {
    // The kernel's table dropped the entry (LRU pressure) before the server closed: the close
    // comes under an adopted (odd) birth, and still ends the reset's story.
    let seen_born = SockId { birth_ns: 2, ..SOCK };
    let mut events = with(established(seen_born), reset(seen_born, 1000));
    let adopted = SockId { birth_ns: 5001, ..SOCK };
    events.push(at(adopted, 1001, close("CLOSE")));
    assert_eq!(kinds(&events), [], "the close is the same socket's");
    // A new life at the address (an even birth) stays a new socket.
    let reborn = SockId { birth_ns: 5000, ..SOCK };
    let mut again = with(established(seen_born), reset(seen_born, 1000));
    again.push(at(reborn, 1001, close("CLOSE")));
    assert_eq!(kinds(&again), [Kind::ResetUnnoticed]);
}

#[test]
fn tracking_is_bounded_and_evictions_are_counted() {
    let mut c = Correlator::new(Thresholds::default(), 4);
    for i in 0..10 {
        let sock = SockId { addr: i, birth_ns: 1 };
        c.ingest(&at(sock, i, change("CLOSE", "SYN_SENT")));
    }
    assert_eq!(c.tracked(), 4);
    assert_eq!(c.evicted(), 6);
}

#[test]
fn finished_sockets_are_forgotten() {
    let mut c = Correlator::new(Thresholds::default(), 16);
    let events = with(
        peer_closed_and_left(SOCK),
        vec![
            at(SOCK, 1002, recv(Ok(0), "CLOSE_WAIT")),
            at(SOCK, 1003, close("CLOSE_WAIT")),
            at(SOCK, 1004, change("LAST_ACK", "CLOSE")),
        ],
    );
    events.iter().for_each(|e| {
        c.ingest(e);
    });
    assert_eq!(c.tracked(), 1, "kept while late events may still arrive");
    c.tick(1004 * MS + 2 * S);
    assert_eq!(c.tracked(), 0);
}

#[test]
fn a_deadline_made_moot_leaves_the_schedule() {
    let mut c = Correlator::new(Thresholds::default(), 16);
    for e in peer_closed_and_left(SOCK) {
        c.ingest(&e);
    }
    assert_eq!(c.deadlines.len(), 1, "a close-wait-leak deadline while in CLOSE_WAIT");
    c.ingest(&at(SOCK, 1001, close("CLOSE_WAIT")));
    assert!(c.deadlines.is_empty(), "closed: nothing left to wait for");

    let noticed = SockId { addr: 2, birth_ns: 2 };
    for e in with(established(noticed), reset(noticed, 1000)) {
        c.ingest(&e);
    }
    assert_eq!(c.deadlines.len(), 1, "a reset-unnoticed deadline");
    c.ingest(&at(noticed, 1001, recv(Err(libc::ECONNRESET), "CLOSE")));
    assert!(c.deadlines.is_empty(), "the application saw the error");
    assert!(c.tick(30 * S).is_empty());
}

#[test]
fn at_capacity_finished_sockets_go_first_and_are_not_evictions() {
    let mut c = Correlator::new(Thresholds::default(), 2);
    let done = SOCK;
    for e in with(
        peer_closed_and_left(done),
        vec![
            at(done, 1002, recv(Ok(0), "CLOSE_WAIT")),
            at(done, 1003, close("CLOSE_WAIT")),
            at(done, 1004, change("LAST_ACK", "CLOSE")),
        ],
    ) {
        c.ingest(&e);
    }
    let live = SockId { addr: 2, birth_ns: 1 };
    c.ingest(&at(live, 1005, change("CLOSE", "SYN_SENT")));
    let another = SockId { addr: 3, birth_ns: 1 };
    c.ingest(&at(another, 1006, change("CLOSE", "SYN_SENT")));
    assert_eq!((c.tracked(), c.evicted()), (2, 0), "the finished socket made room");
    c.ingest(&at(SockId { addr: 4, birth_ns: 1 }, 1007, change("CLOSE", "SYN_SENT")));
    assert_eq!((c.tracked(), c.evicted()), (2, 1), "then a live one is evicted, and counted");
}

#[test]
fn the_liveness_audit_sweeps_a_thirtieth_of_the_grace_apart_between_1_and_10_s() {
    use super::idle_sweep_every;
    assert_eq!(idle_sweep_every(300 * S), 10 * S, "the default grace: every 10 s");
    assert_eq!(idle_sweep_every(60 * S), 2 * S);
    assert_eq!(idle_sweep_every(4 * S), S, "short graces (the tests'): every second");
    assert_eq!(idle_sweep_every(3_600 * S), 10 * S, "never sparser than 10 s");
}

// shards

/// Three kinds of socket, interleaved in one batch: a write after the peer's close, a
/// CLOSE_WAIT left behind, and a correct close; with adopted identities at reused addresses.
fn a_busy_batch(sockets: u64) -> Vec<Event> {
    let mut lives: Vec<Vec<Event>> = Vec::new();
    for i in 0..sockets {
        let sock = SockId { addr: 0xffff_8881_0000_0000 + i * 2048, birth_ns: 2 };
        let life = match i % 3 {
            0 => with(
                peer_closed_and_left(sock),
                vec![
                    at(sock, 1001, recv(Ok(0), "CLOSE_WAIT")),
                    at(sock, 1099, send(Ok(10), "CLOSE_WAIT")),
                    // The kernel met this life again under an adopted identity.
                    at(SockId { birth_ns: 3, ..sock }, 1100, rst_rx("CLOSE_WAIT")),
                    at(sock, 1100, change("CLOSE_WAIT", "CLOSE")),
                    at(sock, 1101, close("CLOSE")),
                ],
            ),
            1 => peer_closed_and_left(sock),
            _ => with(
                peer_closed_and_left(sock),
                vec![
                    at(sock, 1002, recv(Ok(0), "CLOSE_WAIT")),
                    at(sock, 1003, close("CLOSE_WAIT")),
                    at(sock, 1004, change("LAST_ACK", "CLOSE")),
                ],
            ),
        };
        lives.push(life);
    }
    // Round-robin across sockets, each socket's events in order.
    let longest = lives.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|n| lives.iter().filter_map(move |life| life.get(n).cloned())).collect()
}

/// Every finding of `events` joined on `count` correlators, given by reference or `taken`.
fn sharded_findings(count: usize, events: &[Event], taken: bool) -> Vec<(SockId, Kind)> {
    let mut shards =
        shards::Shards::new(count, 1 << 16, |each| Correlator::new(Thresholds::default(), each));
    let mut given = events.to_vec();
    let found = if taken { shards.ingest_taken(&mut given) } else { shards.ingest(events) };
    assert!(!taken || given.is_empty(), "taken events are emptied");
    let mut found: Vec<(SockId, Kind)> = found.into_iter().map(|f| (f.sock, f.kind)).collect();
    let end = events.iter().map(|e| e.ts_ns).max().unwrap_or(0) + 60 * S;
    found.extend(shards.tick(end).into_iter().map(|f| (f.sock, f.kind)));
    assert_eq!(shards.reported().values().sum::<u64>(), found.len() as u64);
    found.sort();
    found
}

#[test]
fn shards_find_what_one_correlator_finds() {
    let events = a_busy_batch(900);
    assert!(events.len() > 4 * 1024, "large enough to run on several threads");
    let one = sharded_findings(1, &events, false);
    assert_eq!(one.len(), 600, "300 writes after close and 300 CLOSE_WAIT leaks");
    assert_eq!(one.iter().filter(|(_, k)| *k == Kind::WriteAfterPeerClose).count(), 300);
    for (count, taken) in [(1, true), (3, false), (3, true), (4, false)] {
        let sharded = sharded_findings(count, &events, taken);
        let differ = sharded.iter().zip(&one).find(|(a, b)| a != b);
        assert!(sharded.len() == one.len() && differ.is_none(), "{count} shards: {differ:?}");
    }
}
