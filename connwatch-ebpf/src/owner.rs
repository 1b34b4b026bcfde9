//! Who owns a socket, and which life of its address an event belongs to.
//!
//! Kernel events often run in softirq context, where the task on the CPU is whoever was
//! interrupted (on loopback, often the peer). The owner is therefore recorded only where the
//! socket is touched in process context and looked up everywhere else.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use connwatch_common::socket::{ListenerKey, Owner, SocketInfo};

use crate::maps::{LISTENERS, SOCKETS};

/// The process running this (process-context) hook.
#[inline(always)]
pub fn current() -> Owner {
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// A new life of `sk`: connect, listen, or a child spawned by a listener.
#[inline(always)]
pub fn begin(sk: u64, owner: Owner) -> SocketInfo {
    let info = SocketInfo { birth_ns: now(), owner };
    let _ = SOCKETS.insert(&sk, &info, 0);
    info
}

/// What is known of `sk`; a socket first seen mid-life (older than the agent) is adopted with
/// an unknown owner and born now.
#[inline(always)]
pub fn known(sk: u64) -> SocketInfo {
    match SOCKETS.get_ptr(&sk) {
        // SAFETY: a valid map value pointer; SocketInfo is Copy and read whole.
        Some(info) => unsafe { *info },
        None => begin(sk, Owner::UNKNOWN),
    }
}

/// `sk` was touched by the current process (process context only): it becomes the owner.
/// Looks before it writes, so the hot paths (send, recv) rarely update the map.
#[inline(always)]
pub fn touch(sk: u64) -> SocketInfo {
    let owner = current();
    match SOCKETS.get_ptr_mut(&sk) {
        Some(info) => {
            // SAFETY: a valid map value pointer; concurrent writers store whole owners.
            let info = unsafe { &mut *info };
            if info.owner.tgid != owner.tgid || info.owner.comm != owner.comm {
                info.owner = owner;
            }
            *info
        }
        None => begin(sk, owner),
    }
}

#[inline(always)]
fn listener_key(net: u64, port: u16) -> ListenerKey {
    ListenerKey { net, port, _pad: [0; 6] }
}

pub fn remember_listener(net: u64, port: u16, owner: &Owner) {
    let _ = LISTENERS.insert(&listener_key(net, port), owner, 0);
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
