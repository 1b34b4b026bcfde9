//! The state change that began a life, taken from its birth. Under `watch` and `agent` the
//! kernel does not report connect's CLOSE -> SYN_SENT, listen's CLOSE -> LISTEN or a listener
//! child's LISTEN -> SYN_RECV on its own: it keeps the change in the life's birth, which every
//! later record carries (`connwatch_common::socket::opening_of`). A new track starts with it.

use connwatch_common::socket::opening_of;

use crate::decode::{Detail, Event, TcpState};

/// The change that began `first`'s life, as an event of its own, unless `first` is that change
/// (as `trace` reports it) or the birth does not record one (an adopted socket).
pub fn implied_by(first: &Event) -> Option<Event> {
    let (old, new, ts_ns) = opening_of(first.sock.birth_ns)?;
    let (old, new) = (TcpState::new(old).ok()?, TcpState::new(new).ok()?);
    if let Detail::State { old: was, new: is } = first.detail
        && (was, is) == (old, new)
    {
        return None;
    }
    Some(Event { ts_ns, until_ns: ts_ns, detail: Detail::State { old, new }, ..first.clone() })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use connwatch_common::{
        socket::{BIRTH_ADOPTED, BIRTH_BY_CONNECT, BIRTH_FROM_LISTENER, birth_of},
        tcp::{TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT},
    };

    use super::*;
    use crate::decode::{Family, SockId};

    fn event(birth_ns: u64, ts_ns: u64, old: u8, new: u8) -> Event {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        Event {
            ts_ns,
            until_ns: ts_ns,
            owner: None,
            sock: SockId { addr: 0xffff_8880_0000_2000, birth_ns },
            family: Family::Inet,
            local,
            remote,
            detail: Detail::State {
                old: TcpState::new(old).unwrap(),
                new: TcpState::new(new).unwrap(),
            },
        }
    }

    #[test]
    fn a_listeners_child_begins_with_its_syn_recv_at_its_birth() {
        let birth = birth_of(1_000_007, BIRTH_FROM_LISTENER);
        let first = event(birth, 1_500_000, TCP_SYN_RECV, TCP_ESTABLISHED);
        let opening = implied_by(&first).expect("the birth records the opening");
        assert_eq!(opening.ts_ns, 1_000_000, "the birth's time, its low bits cleared");
        assert_eq!(opening.until_ns, opening.ts_ns);
        assert_eq!(opening.sock, first.sock);
        assert_eq!((opening.local, opening.remote), (first.local, first.remote));
        let Detail::State { old, new } = opening.detail else { panic!("{opening:?}") };
        assert_eq!((old.name(), new.name()), ("LISTEN", "SYN_RECV"));
    }

    #[test]
    fn the_opening_reported_itself_is_not_made_twice() {
        let birth = birth_of(2_000_000, BIRTH_BY_CONNECT);
        assert!(implied_by(&event(birth, 2_000_000, 7, TCP_SYN_SENT)).is_none());
        assert!(implied_by(&event(birth, 2_100_000, TCP_SYN_SENT, TCP_ESTABLISHED)).is_some());
    }

    #[test]
    fn an_adopted_socket_or_an_unrecorded_birth_has_no_opening() {
        let adopted = 3_000_000 | BIRTH_ADOPTED | BIRTH_FROM_LISTENER;
        assert!(implied_by(&event(adopted, 3_000_001, TCP_LISTEN, TCP_SYN_RECV)).is_none());
        assert!(implied_by(&event(3_000_000, 3_000_001, TCP_SYN_RECV, TCP_ESTABLISHED)).is_none());
    }
}
