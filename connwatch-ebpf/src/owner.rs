//! Who owns a socket, and which life of its address an event belongs to.
//!
//! Kernel events often run in softirq context, where the task on the CPU is whoever was
//! interrupted (on loopback, often the peer). The owner is therefore recorded only where the
//! socket is touched in process context and looked up everywhere else.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_current_comm,
    },
};
use connwatch_common::{
    names::LATEST_LIFE_SLOTS,
    socket::{
        CLOSING_SLOTS, Closing, ListenerKey, Owner, SOCKET_APP_CLOSED, SocketEntry, SocketInfo,
        birth_of, route_of_life,
    },
};

use crate::maps::{LATEST_LIVES, LISTENERS, NEW_SOCKET, SOCKETS};

/// The process running this (process-context) hook. The name is written in place by the
/// helper, which fills all 16 bytes (zeroes where it fails): a byte array returned by value is
/// zeroed and copied a byte at a time.
#[inline(always)]
pub fn current() -> Owner {
    let mut owner = MaybeUninit::<Owner>::uninit();
    let at = owner.as_mut_ptr();
    // SAFETY: every field of `owner` is written before it is read: `comm` whole, by the helper.
    unsafe {
        (&raw mut (*at).tgid).write((bpf_get_current_pid_tgid() >> 32) as u32);
        (&raw mut (*at)._pad).write(0);
        let comm = &raw mut (*at).comm;
        bpf_get_current_comm(comm as *mut c_void, size_of::<[u8; 16]>() as u32);
        owner.assume_init()
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// A new life of `sk`, born at `now` by `opening` (`BIRTH_BY_CONNECT`, `BIRTH_BY_LISTEN` or
/// `BIRTH_FROM_LISTENER`, kept in the birth). Nothing of an earlier life at the same address
/// (its tallies) carries over. Any context.
#[inline(always)]
pub fn begin(sk: u64, owner: Owner, now: u64, opening: u64) -> SocketInfo {
    let birth_ns = birth_of(now, opening);
    let addr = as_number(sk);
    let route = route_of_life(addr, birth_ns);
    if let Some(latest) = LATEST_LIVES.get_ptr_mut(latest_slot(addr)) {
        // SAFETY: a valid map value pointer. A racing writer at the same slot may leave the
        // other's address with this route: an adopted identity there then takes this route.
        unsafe {
            (*latest).sk = addr;
            (*latest).route = route;
        }
    }
    remember_on_stack(sk, owner, birth_ns, route)
}

/// The route of an identity adopted at `sk` born at `birth_ns`: the latest life begun there,
/// if its slot still holds it, for that life may be this one (`LatestLife`). Out of line: its
/// locals would otherwise join the frames of the readiness programs, whose combined stack is
/// near the 512-byte limit.
#[inline(never)]
fn adopted_route(sk: u64, birth_ns: u64) -> u16 {
    let addr = as_number(sk);
    match LATEST_LIVES.get(latest_slot(addr)) {
        Some(latest) if latest.sk == addr => latest.route,
        _ => route_of_life(addr, birth_ns),
    }
}

#[inline(always)]
fn latest_slot(addr: u64) -> u32 {
    (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32 % LATEST_LIFE_SLOTS
}

/// The socket's address as a plain number, for arithmetic: fentry and fexit programs hold it
/// as a typed pointer, which the verifier lets no multiplication touch. Once per life.
#[inline(always)]
fn as_number(sk: u64) -> u64 {
    // SAFETY: reads 8 bytes of this program's own stack.
    unsafe { bpf_probe_read_kernel(&raw const sk) }.unwrap_or(0)
}

/// An identity for a socket met mid-life: born now, adopted.
#[inline(always)]
fn adopt(sk: u64, owner: Owner, in_scratch: bool) -> SocketInfo {
    let birth_ns = now() | ADOPTED;
    let route = adopted_route(sk, birth_ns);
    match in_scratch {
        true => remember_in_scratch(sk, owner, birth_ns, route),
        false => remember_on_stack(sk, owner, birth_ns, route),
    }
}

/// `birth_ns`'s lowest bit: the socket was first seen mid-life, so its true birth is unknown.
const ADOPTED: u64 = connwatch_common::socket::BIRTH_ADOPTED;

/// A new life's identity: nothing known of it yet but its birth, owner and route.
#[inline(always)]
fn fresh(birth_ns: u64, owner: Owner, route: u16) -> SocketInfo {
    SocketInfo { birth_ns, owner, sport: 0, dport: 0, flags: 0, route, established_after_ns: 0 }
}

/// Records `sk`, building its entry on the stack: for programs that may run in softirq, which
/// can interrupt a program using this CPU's `NEW_SOCKET` slot.
#[inline(always)]
fn remember_on_stack(sk: u64, owner: Owner, birth_ns: u64, route: u16) -> SocketInfo {
    let info = fresh(birth_ns, owner, route);
    let closing = Closing {
        ts_ns: [0; CLOSING_SLOTS],
        old_state: [0; CLOSING_SLOTS],
        new_state: [0; CLOSING_SLOTS],
        count: 0,
        _pad: 0,
    };
    let _ = SOCKETS.insert(&sk, &SocketEntry { info, closing }, 0);
    crate::policy::release(sk);
    info
}

/// Records `sk`, building its entry in this CPU's `NEW_SOCKET` slot rather than on the stack
/// (the readiness programs' combined stack is near the 512-byte limit): process context only.
#[inline(always)]
fn remember_in_scratch(sk: u64, owner: Owner, birth_ns: u64, route: u16) -> SocketInfo {
    let info = fresh(birth_ns, owner, route);
    if let Some(entry) = NEW_SOCKET.get_ptr_mut(0) {
        // SAFETY: this CPU's slot. Only process-context programs use it, and none of them can
        // interrupt another. Closing slots past `count` are never read.
        unsafe {
            (*entry).info = info;
            (*entry).closing.count = 0;
            let _ = SOCKETS.insert(&sk, &*entry, 0);
        }
    }
    crate::policy::release(sk);
    info
}

/// What is known of `sk`; a socket first seen mid-life (older than the agent) is adopted with
/// an unknown owner and born now. Any context.
#[inline(always)]
pub fn known(sk: u64) -> SocketInfo {
    known_in(sk, SOCKETS.get_ptr_mut(&sk))
}

/// [`known`], the socket's entry (if any) already looked up.
#[inline(always)]
pub fn known_in(sk: u64, entry: Option<*mut SocketEntry>) -> SocketInfo {
    match entry {
        // SAFETY: a valid map value pointer; SocketInfo is Copy and read whole.
        Some(entry) => unsafe { (*entry).info },
        None => adopt(sk, Owner::UNKNOWN, false),
    }
}

/// `sk` was touched by the current process (process context only): it becomes the owner.
/// Compares the tgid before anything else, so the hot paths (send, recv) usually do one map
/// lookup and no write; the name is fetched only when the owner changes.
#[inline(always)]
pub fn touch(sk: u64) -> SocketInfo {
    touch_in(sk, SOCKETS.get_ptr_mut(&sk), 0)
}

/// [`touch`], the socket's entry (if any) already looked up, adding `flags` to it in the same
/// write (not to an adopted socket's: the caller sets them).
#[inline(always)]
pub fn touch_in(sk: u64, entry: Option<*mut SocketEntry>, flags: u16) -> SocketInfo {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match entry {
        Some(entry) => {
            // SAFETY: a valid map value pointer; concurrent writers store whole owners.
            let info = unsafe { &mut (*entry).info };
            if info.owner.tgid != tgid {
                info.owner = current();
            }
            info.flags |= flags;
            *info
        }
        None => adopt(sk, current(), true),
    }
}

#[inline(always)]
fn listener_key(net: u64, port: u16) -> ListenerKey {
    ListenerKey { net, port, _pad: [0; 6] }
}

/// Records `owner` as the listener's on `port` in namespace `net`. Every accept calls this:
/// an owner already recorded costs a lookup, not an update.
pub fn remember_listener(net: u64, port: u16, owner: &Owner) {
    let key = listener_key(net, port);
    // SAFETY: a valid map value pointer; Owner is Copy and read whole.
    let known = LISTENERS.get_ptr(&key).map(|known| unsafe { *known });
    if known.is_some_and(|known| known.tgid == owner.tgid && known.comm == owner.comm) {
        return;
    }
    let _ = LISTENERS.insert(&key, owner, 0);
}

pub fn forget_listener(net: u64, port: u16) {
    let _ = LISTENERS.remove(&listener_key(net, port));
}

/// The owner of the listener on `port` in namespace `net`, which a new child inherits until a
/// process accepts it.
#[inline(always)]
pub fn listener_owner(net: u64, port: u16) -> Owner {
    match LISTENERS.get_ptr(&listener_key(net, port)) {
        // SAFETY: a valid map value pointer; Owner is Copy and read whole.
        Some(owner) => unsafe { *owner },
        None => Owner::UNKNOWN,
    }
}

/// The current process closed the last reference to `sk` in `state` (process context): it
/// becomes the owner, as [`touch`], in the same lookup that marks the socket closed by its
/// application. A socket already in CLOSE dies with it, so its identity goes now (kernels
/// without `tcp:tcp_destroy_sock` rely on this). Any other socket lives on (FIN or RST still
/// to send) and keeps its identity until the kernel destroys it; should its memory be reused,
/// the new life begins with connect, listen or a listener's child, which gives it a new birth.
/// `entry`: the socket's, as the caller looked it up.
#[inline(always)]
pub fn touch_closed(sk: u64, entry: Option<*mut SocketEntry>, state: u8) -> SocketInfo {
    if state == connwatch_common::tcp::TCP_CLOSE {
        let info = touch_in(sk, entry, 0);
        forget(sk);
        return info;
    }
    let info = touch_in(sk, entry, SOCKET_APP_CLOSED);
    if info.flags & SOCKET_APP_CLOSED == 0 {
        // Adopted just now: mark it.
        if let Some(entry) = SOCKETS.get_ptr_mut(&sk) {
            // SAFETY: a valid map value pointer.
            unsafe { (*entry).info.flags |= SOCKET_APP_CLOSED };
        }
    }
    info
}

/// The socket's life is over (`tcp:tcp_destroy_sock`, or its last close in CLOSE).
#[inline(always)]
pub fn forget(sk: u64) {
    let _ = SOCKETS.remove(&sk);
    crate::policy::release(sk);
}

/// Remembers the connection's ports while the kernel has them, and supplies them once it has
/// released the local port (on the way to CLOSE). `entry`: the socket's, if the caller looked
/// it up already.
#[inline(always)]
pub fn complete_ports(
    sk: u64,
    entry: Option<*mut SocketEntry>,
    info: &SocketInfo,
    ends: &mut crate::sock::Endpoints,
) {
    if ends.sport != 0 && ends.dport != 0 {
        if (info.sport, info.dport) != (ends.sport, ends.dport)
            && let Some(entry) = entry.or_else(|| SOCKETS.get_ptr_mut(&sk))
        {
            // SAFETY: a valid map value pointer.
            unsafe {
                (*entry).info.sport = ends.sport;
                (*entry).info.dport = ends.dport;
            }
        }
    } else if info.sport != 0 {
        ends.sport = info.sport;
        ends.dport = info.dport;
    }
}
