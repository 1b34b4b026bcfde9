//! Sockets both sides are done with, waiting to be forgotten once quiet.
//!
//! Two first-in-first-out queues, one per quiet window, instead of one ordered set: a socket
//! joins its window's queue as its events arrive, so each queue is in arrival order, which is
//! the order its deadlines fall in up to how far events of different CPUs interleave (a few
//! milliseconds). A deadline stuck behind a later one waits that much longer, never less. Under
//! churn every connection passes through here twice; an ordered set allocated and rebalanced
//! tree nodes for each.

use std::collections::VecDeque;

use crate::decode::SockId;

/// Which quiet window a socket waits out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Late events of other CPUs may still arrive.
    Reorder,
    /// A listener's child nobody accepted yet may still be accepted.
    Accept,
}

#[derive(Default)]
pub struct Retiring {
    reorder: VecDeque<(u64, SockId)>,
    accept: VecDeque<(u64, SockId)>,
}

impl Retiring {
    /// `sock` may be forgotten from `quiet_at` on, if nothing about it arrives meanwhile.
    pub fn push(&mut self, window: Window, quiet_at: u64, sock: SockId) {
        match window {
            Window::Reorder => self.reorder.push_back((quiet_at, sock)),
            Window::Accept => self.accept.push_back((quiet_at, sock)),
        }
    }

    /// The next socket whose quiet time has come by `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<SockId> {
        for queue in [&mut self.reorder, &mut self.accept] {
            if queue.front().is_some_and(|&(quiet_at, _)| quiet_at <= now) {
                return queue.pop_front().map(|(_, sock)| sock);
            }
        }
        None
    }

    /// The socket due soonest, whether or not its time has come (to make room).
    pub fn pop_soonest(&mut self) -> Option<SockId> {
        let soonest = match (self.reorder.front(), self.accept.front()) {
            (Some(reorder), Some(accept)) if accept.0 < reorder.0 => &mut self.accept,
            (Some(_), _) => &mut self.reorder,
            (None, _) => &mut self.accept,
        };
        soonest.pop_front().map(|(_, sock)| sock)
    }
}

#[cfg(test)]
mod tests {
    use super::{Retiring, Window};
    use crate::decode::SockId;

    fn sock(addr: u64) -> SockId {
        SockId { addr, birth_ns: 2 }
    }

    #[test]
    fn due_sockets_come_out_in_arrival_order_per_window() {
        let mut r = Retiring::default();
        r.push(Window::Reorder, 10, sock(1));
        r.push(Window::Accept, 5, sock(2));
        r.push(Window::Reorder, 12, sock(3));
        assert_eq!(r.pop_due(4), None, "nothing due yet");
        assert_eq!(r.pop_due(11), Some(sock(1)));
        assert_eq!(r.pop_due(11), Some(sock(2)));
        assert_eq!(r.pop_due(11), None, "sock 3 not quiet until 12");
        assert_eq!(r.pop_due(12), Some(sock(3)));
    }

    #[test]
    fn a_deadline_behind_a_later_one_waits_for_it() {
        let mut r = Retiring::default();
        r.push(Window::Reorder, 20, sock(1));
        r.push(Window::Reorder, 15, sock(2));
        assert_eq!(r.pop_due(16), None, "never earlier than its own deadline");
        assert_eq!(r.pop_due(20), Some(sock(1)));
        assert_eq!(r.pop_due(20), Some(sock(2)));
    }

    #[test]
    fn room_is_made_from_the_soonest_of_both_windows() {
        let mut r = Retiring::default();
        r.push(Window::Reorder, 30, sock(1));
        r.push(Window::Accept, 20, sock(2));
        assert_eq!(r.pop_soonest(), Some(sock(2)));
        assert_eq!(r.pop_soonest(), Some(sock(1)));
        assert_eq!(r.pop_soonest(), None);
    }
}
