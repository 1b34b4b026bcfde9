use std::net::SocketAddr;

use connwatch_common::{
    event::{
        ErrorEvent, EventHeader, KIND_ERROR, KIND_RESET, KIND_RETRANSMIT, KIND_STATE, KIND_STATES,
        RESET_RX, RESET_TX, ResetEvent, RetransmitEvent, STATES_MAX, StateChange, StateEvent,
        StatesEvent,
    },
    tcp::{
        AF_INET, AF_INET6, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1,
        TCP_FIN_WAIT2, TCP_SYN_SENT,
    },
};

use super::*;

fn header(kind: u8, family: u16) -> EventHeader {
    let mut saddr = [0; 16];
    let mut daddr = [0; 16];
    saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    let mut comm = [0; 16];
    comm[..4].copy_from_slice(b"curl");
    EventHeader {
        kind,
        _pad0: 0,
        family,
        sport: 40000,
        dport: 80,
        tgid: 4242,
        established_after_ns: 0,
        ts_ns: 123_456_789,
        sk: 0xffff_8880_1234_5600,
        birth_ns: 100,
        comm,
        saddr,
        daddr,
    }
}

fn bytes_of<T>(record: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain #[repr(C)] value.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

fn state_record(old: u8, new: u8) -> Vec<u8> {
    bytes_of(&StateEvent {
        header: header(KIND_STATE, AF_INET),
        old_state: old,
        new_state: new,
        _pad: [0; 6],
    })
}

#[test]
fn state_record_decodes_with_owner_socket_and_endpoints() {
    let event = decode(&state_record(TCP_ESTABLISHED, TCP_CLOSE_WAIT)).expect("valid record");
    assert_eq!(event.ts_ns, 123_456_789);
    assert_eq!(event.owner, Some(Owner { pid: 4242, comm: "curl".into() }));
    assert_eq!(event.sock.to_string(), "ffff888012345600-64");
    assert_eq!(event.family, Family::Inet);
    assert_eq!(event.local, "10.0.0.1:40000".parse::<SocketAddr>().unwrap());
    assert_eq!(event.remote, "10.0.0.2:80".parse::<SocketAddr>().unwrap());
    assert_eq!(event.detail.to_string(), "ESTABLISHED -> CLOSE_WAIT");
    assert_eq!(event.detail.type_name(), "state");
}

/// The header layout pinned byte by byte: a change on either side of the ring buffer that
/// forgets the other fails here.
#[test]
fn header_layout_matches_fixed_bytes() {
    let mut bytes = vec![
        KIND_STATE, 0, 2, 0, // kind, pad, family AF_INET (le)
        0x40, 0x9c, 80, 0, // sport 40000, dport 80
        0x92, 0x10, 0, 0, 0, 0, 0, 0, // tgid 4242, established_after_ns 0
        0x15, 0xcd, 0x5b, 0x07, 0, 0, 0, 0, // ts_ns 123456789
        0, 0x56, 0x34, 0x12, 0x80, 0x88, 0xff, 0xff, // sk
        100, 0, 0, 0, 0, 0, 0, 0, // birth_ns
    ];
    bytes.extend(b"curl\0\0\0\0\0\0\0\0\0\0\0\0");
    bytes.extend([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend([10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend([TCP_ESTABLISHED, TCP_CLOSE_WAIT, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bytes, state_record(TCP_ESTABLISHED, TCP_CLOSE_WAIT));
    assert_eq!(decode(&bytes).unwrap().detail.to_string(), "ESTABLISHED -> CLOSE_WAIT");
}

#[test]
fn reset_records_decode_both_directions() {
    for (direction, name) in [(RESET_RX, "rx"), (RESET_TX, "tx")] {
        let record = ResetEvent {
            header: header(KIND_RESET, AF_INET),
            direction,
            state: TCP_ESTABLISHED,
            _pad: [0; 6],
        };
        let event = decode(&bytes_of(&record)).unwrap();
        match event.detail {
            Detail::Reset { direction, state } => {
                assert_eq!(direction.name(), name);
                assert_eq!(state.name(), "ESTABLISHED");
            }
            other => panic!("expected a reset, got {other:?}"),
        }
    }
}

#[test]
fn retransmit_record_decodes() {
    let record = RetransmitEvent {
        header: header(KIND_RETRANSMIT, AF_INET),
        state: TCP_ESTABLISHED,
        _pad: [0; 7],
    };
    let event = decode(&bytes_of(&record)).unwrap();
    assert_eq!(event.detail, Detail::Retransmit { state: TcpState::new(TCP_ESTABLISHED).unwrap() });
    assert_eq!(event.detail.type_name(), "retransmit");
}

#[test]
fn error_record_names_its_errno() {
    let record = ErrorEvent {
        header: header(KIND_ERROR, AF_INET),
        errno: libc::ECONNRESET,
        state: TCP_CLOSE,
        _pad: [0; 3],
    };
    let event = decode(&bytes_of(&record)).unwrap();
    assert_eq!(event.detail.to_string(), "ECONNRESET (CLOSE)");
    assert_eq!(Errno(libc::ETIMEDOUT).name(), "ETIMEDOUT");
    assert_eq!(Errno(4095).name(), "E4095");
}

#[test]
fn ipv6_and_v4_mapped_addresses() {
    let mut h = header(KIND_STATE, AF_INET6);
    h.saddr = "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    h.daddr = "::ffff:192.0.2.7".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let record = StateEvent { header: h, old_state: TCP_CLOSE, new_state: 2, _pad: [0; 6] };
    let event = decode(&bytes_of(&record)).unwrap();
    assert_eq!(event.family, Family::Inet6);
    assert_eq!(event.local.to_string(), "[2001:db8::1]:40000");
    assert_eq!(event.remote.to_string(), "192.0.2.7:80", "v4-mapped shown as IPv4");
}

#[test]
fn unknown_owner_is_none_not_pid_zero() {
    let mut h = header(KIND_STATE, AF_INET);
    h.tgid = 0;
    h.comm = [0; 16];
    let record = StateEvent {
        header: h,
        old_state: TCP_ESTABLISHED,
        new_state: TCP_CLOSE_WAIT,
        _pad: [0; 6],
    };
    assert_eq!(decode(&bytes_of(&record)).unwrap().owner, None);
}

#[test]
fn malformed_records_are_errors_not_panics() {
    let good = state_record(TCP_ESTABLISHED, TCP_CLOSE_WAIT);
    assert_eq!(decode(&[]), Err(DecodeError::Short { len: 0, need: size_of::<EventHeader>() }));
    assert_eq!(decode(&good[..90]), Err(DecodeError::Short { len: 90, need: 96 }));

    let mut unknown_kind = good.clone();
    unknown_kind[0] = 200;
    assert_eq!(decode(&unknown_kind), Err(DecodeError::UnknownKind(200)));

    let mut bad_family = good.clone();
    bad_family[2] = 1; // AF_UNIX
    assert_eq!(decode(&bad_family), Err(DecodeError::UnknownFamily(1)));

    assert_eq!(decode(&state_record(0, TCP_CLOSE)), Err(DecodeError::InvalidState(0)));
    assert_eq!(decode(&state_record(TCP_CLOSE, 13)), Err(DecodeError::InvalidState(13)));

    let bad_direction = ResetEvent {
        header: header(KIND_RESET, AF_INET),
        direction: 9,
        state: TCP_CLOSE,
        _pad: [0; 6],
    };
    assert_eq!(decode(&bytes_of(&bad_direction)), Err(DecodeError::InvalidDirection(9)));

    // Any prefix of any record, and random bytes, decode or fail; they never panic.
    for len in 0..good.len() {
        let _ = decode(&good[..len]);
    }
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2_000 {
        let bytes: Vec<u8> = (0..96)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                noise as u8
            })
            .collect();
        let _ = decode(&bytes);
    }
}

fn app_record(kind: u8, fd: i32, value: i32, calls: u32, via: u8) -> Vec<u8> {
    use connwatch_common::event::{AppEvent, SockSnapshot};
    bytes_of(&AppEvent {
        header: header(kind, AF_INET),
        snapshot: SockSnapshot {
            state: TCP_CLOSE_WAIT,
            rto_retransmits: 2,
            _pad: [0; 2],
            sk_err: libc::EPIPE,
            unacked_bytes: 1500,
            srtt_us: 250,
        },
        fd,
        value,
        bytes: 4096,
        calls,
        via,
        _pad: [0; 3],
        started_ns: 123_000_000,
    })
}

#[test]
fn application_observations_decode_with_their_snapshot() {
    use connwatch_common::event::{
        KIND_CLOSE, KIND_CONNECT, KIND_READINESS, KIND_RECV, KIND_SEND, KIND_SO_ERROR, VIA_EPOLL,
        VIA_POLL, VIA_SELECT,
    };
    let so_error = decode(&app_record(KIND_SO_ERROR, 7, libc::ECONNRESET, 1, 0)).unwrap();
    assert_eq!(so_error.detail.type_name(), "so_error");
    assert_eq!(so_error.detail.fd(), Some(7));
    let snapshot = so_error.detail.snapshot().unwrap();
    assert_eq!(snapshot.state.name(), "CLOSE_WAIT");
    assert_eq!(snapshot.sk_err.map(|e| e.name()), Some("EPIPE".into()));
    assert_eq!((snapshot.rto_retransmits, snapshot.unacked_bytes), (2, 1500));
    assert!(
        matches!(so_error.detail, Detail::SoError { value: Some(e), .. } if e.name() == "ECONNRESET")
    );
    let zero = decode(&app_record(KIND_SO_ERROR, 7, 0, 1, 0)).unwrap();
    assert!(matches!(zero.detail, Detail::SoError { value: None, .. }));

    let epoll = decode(&app_record(KIND_READINESS, 7, 0x2001, 3, VIA_EPOLL)).unwrap();
    assert_eq!(
        epoll.detail.to_string(),
        "epoll EPOLLIN|EPOLLRDHUP x3 (fd 7) [CLOSE_WAIT, pending EPIPE]"
    );
    let poll = decode(&app_record(KIND_READINESS, 7, 0x11, 1, VIA_POLL)).unwrap();
    assert!(poll.detail.to_string().starts_with("poll POLLIN|POLLHUP (fd 7)"));
    let select = decode(&app_record(KIND_READINESS, 7, 3, 1, VIA_SELECT)).unwrap();
    assert!(select.detail.to_string().starts_with("select READ|WRITE (fd 7)"));

    let eof = decode(&app_record(KIND_RECV, -1, 0, 1, 0)).unwrap();
    assert!(eof.detail.to_string().starts_with("recv 0 (EOF)"), "{}", eof.detail);
    let summary = decode(&app_record(KIND_SEND, -1, 100, 41, 0)).unwrap();
    assert_eq!(
        summary.detail.to_string(),
        "send 41 calls, 4096 bytes [CLOSE_WAIT, 2 timeouts, 1500 bytes unacked]"
    );
    let failed = decode(&app_record(KIND_SEND, -1, -libc::EPIPE, 1, 0)).unwrap();
    assert!(failed.detail.to_string().starts_with("send EPIPE"));

    let connect = decode(&app_record(KIND_CONNECT, 3, -libc::EINPROGRESS, 1, 0)).unwrap();
    assert!(connect.detail.to_string().starts_with("connect EINPROGRESS (fd 3)"));
    let close = decode(&app_record(KIND_CLOSE, 3, 0, 1, 0)).unwrap();
    assert_eq!(close.detail.type_name(), "close");
    let shared = decode(&app_record(KIND_CLOSE, 3, 2, 1, 0)).unwrap();
    assert!(matches!(shared.detail, Detail::Close { others: 2, .. }), "{:?}", shared.detail);
}

#[test]
fn observations_are_placed_at_the_start_of_their_call() {
    use connwatch_common::event::KIND_SEND;
    let send = decode(&app_record(KIND_SEND, -1, 10, 3, 0)).unwrap();
    assert_eq!((send.ts_ns, send.until_ns), (123_000_000, 123_456_789));
    // A start after the end is no start: the end is used.
    let mut record: connwatch_common::event::AppEvent =
        read(&app_record(KIND_SEND, -1, 10, 1, 0)).unwrap();
    record.started_ns = 200_000_000;
    let send = decode(&bytes_of(&record)).unwrap();
    assert_eq!((send.ts_ns, send.until_ns), (123_456_789, 123_456_789));
}

#[test]
fn malformed_observations_are_errors() {
    use connwatch_common::event::{KIND_READINESS, KIND_RECV};
    assert_eq!(decode(&app_record(KIND_READINESS, 7, 1, 1, 9)), Err(DecodeError::InvalidVia(9)));
    assert_eq!(decode(&app_record(KIND_RECV, -1, 0, 0, 0)), Err(DecodeError::NoCalls));
    let short = app_record(KIND_RECV, -1, 0, 1, 0);
    assert_eq!(decode(&short[..100]), Err(DecodeError::Short { len: 100, need: 136 }));
}

fn states_record(count: u8, changes: &[(u64, u8, u8)]) -> Vec<u8> {
    let mut record = StatesEvent {
        header: header(KIND_STATES, AF_INET),
        count,
        _pad: [0; 7],
        changes: [StateChange { ts_ns: 0, old_state: 0, new_state: 0, _pad: [0; 6] }; STATES_MAX],
    };
    for (slot, &(ts_ns, old_state, new_state)) in record.changes.iter_mut().zip(changes) {
        *slot = StateChange { ts_ns, old_state, new_state, _pad: [0; 6] };
    }
    bytes_of(&record)
}

#[test]
fn closing_state_changes_decode_as_one_event_each_at_its_own_time() {
    let closing = [
        (10, TCP_ESTABLISHED, TCP_FIN_WAIT1),
        (20, TCP_FIN_WAIT1, TCP_FIN_WAIT2),
        (30, TCP_FIN_WAIT2, TCP_CLOSE),
    ];
    let mut out = vec![decode(&state_record(TCP_SYN_SENT, TCP_ESTABLISHED)).unwrap()];
    decode_into(&states_record(3, &closing), &mut out).expect("valid record");
    let changes: Vec<(u64, u64, String, String)> = out[1..]
        .iter()
        .map(|e| match &e.detail {
            Detail::State { old, new } => (e.ts_ns, e.until_ns, old.to_string(), new.to_string()),
            other => panic!("not a state change: {other:?}"),
        })
        .collect();
    let expected = [
        (10, "ESTABLISHED", "FIN_WAIT1"),
        (20, "FIN_WAIT1", "FIN_WAIT2"),
        (30, "FIN_WAIT2", "CLOSE"),
    ]
    .map(|(ts, old, new)| (ts, ts, old.to_string(), new.to_string()));
    assert_eq!(changes, expected);
    // Every change is the same socket's, with the record's owner and endpoints.
    assert!(out[1..].iter().all(|e| e.sock == out[0].sock && e.owner == out[0].owner));
    assert!(out[1..].iter().all(|e| (e.local, e.remote) == (out[0].local, out[0].remote)));
}

#[test]
fn a_bad_record_of_state_changes_decodes_to_nothing() {
    let one = [(10, TCP_ESTABLISHED, TCP_FIN_WAIT1)];
    let bad_second = [(10, TCP_ESTABLISHED, TCP_FIN_WAIT1), (20, TCP_FIN_WAIT1, 99)];
    let cases = [
        (states_record(0, &one), DecodeError::InvalidCount(0)),
        (
            states_record(STATES_MAX as u8 + 1, &one),
            DecodeError::InvalidCount(STATES_MAX as u8 + 1),
        ),
        (states_record(2, &bad_second), DecodeError::InvalidState(99)),
    ];
    for (record, error) in cases {
        let mut out = Vec::new();
        assert_eq!(decode_into(&record, &mut out), Err(error));
        assert!(out.is_empty(), "nothing of a bad record is kept");
    }
    let mut out = Vec::new();
    assert!(matches!(
        decode_into(&states_record(1, &one)[..100], &mut out),
        Err(DecodeError::Short { .. })
    ));
}

/// A record whose header carries the change to ESTABLISHED (watch and agent) decodes to that
/// change, from the state its birth entered and at its own time, then the record's own events.
#[test]
fn a_carried_change_to_established_comes_first_at_its_own_time() {
    use connwatch_common::{
        event::{KIND_ACCEPT, KIND_CONNECT},
        socket::{BIRTH_BY_CONNECT, BIRTH_FROM_LISTENER, birth_of},
    };
    let carried = |mut record: Vec<u8>, birth_ns: u64, after_ns: u32| {
        let mut header: EventHeader = read(&record).unwrap();
        (header.birth_ns, header.established_after_ns) = (birth_ns, after_ns);
        record[..size_of::<EventHeader>()].copy_from_slice(&bytes_of(&header));
        record
    };
    let (connect_born, child_born) =
        (birth_of(1_000_000, BIRTH_BY_CONNECT), birth_of(2_000_000, BIRTH_FROM_LISTENER));
    let cases = [
        (
            app_record(KIND_CONNECT, 3, 0, 1, 0),
            connect_born,
            1_000_000 + 250,
            "SYN_SENT",
            "connect",
        ),
        (app_record(KIND_ACCEPT, 4, 0, 1, 0), child_born, 2_000_000 + 90, "SYN_RECV", "accept"),
    ];
    for (record, birth_ns, established_ns, from, call) in cases {
        let after = (established_ns - (birth_ns & !7)) as u32;
        let mut out = Vec::new();
        decode_into(&carried(record, birth_ns, after), &mut out).expect("valid record");
        let [established, own] = &out[..] else { panic!("two events: {out:?}") };
        assert_eq!(established.detail.to_string(), format!("{from} -> ESTABLISHED"));
        assert_eq!((established.ts_ns, established.until_ns), (established_ns, established_ns));
        assert_eq!(established.sock, own.sock);
        assert_eq!(own.detail.type_name(), call);
    }
    // Carried by a record of several changes: before all of them.
    let closing = [(3_000_000, TCP_ESTABLISHED, TCP_CLOSE_WAIT)];
    let mut out = Vec::new();
    decode_into(&carried(states_record(1, &closing), connect_born, 500), &mut out).unwrap();
    let names: Vec<String> = out.iter().map(|e| e.detail.to_string()).collect();
    assert_eq!(names, ["SYN_SENT -> ESTABLISHED", "ESTABLISHED -> CLOSE_WAIT"]);
    // A listener's life, or one adopted mid-life, has no handshake to carry: the record is bad.
    let listener_born = birth_of(1_000_000, connwatch_common::socket::BIRTH_BY_LISTEN);
    for birth_ns in [listener_born, 1_000_001] {
        let mut out = Vec::new();
        let record = carried(state_record(TCP_ESTABLISHED, TCP_CLOSE_WAIT), birth_ns, 500);
        assert_eq!(decode_into(&record, &mut out), Err(DecodeError::EstablishedWithoutOpening));
        assert!(out.is_empty(), "nothing of a bad record is kept");
    }
}
