//! The socket as a send found it, kept only for sends that changed it themselves.
//!
//! A send is judged by the socket as the call found it, and placed before the kernel events it
//! caused: a write into CLOSE_WAIT provokes the RST that closes the socket before the call
//! returns (loopback and veth deliver the answer within the call). Nothing runs when a send
//! begins. Instead, the kernel's own event hooks (state change, reset, retransmission, error)
//! notice when they run inside the send: the socket's lock is held by a process (the kernel
//! then works on it only in that process's call, never in softirq) and the current thread is
//! in a send syscall. The first such event keeps the socket as it was before the event, per
//! CPU, for the send's end ([`take`]); a send that changed nothing left the socket as it found
//! it.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task};
use connwatch_common::{config::FLAG_CALL_REGS, event::SockSnapshot, socket::SendStart};

use crate::{config::conf, maps::SEND_START, sock, syscall::CallRegs};

/// The send syscalls (x86-64 numbers) whose socket calls end in `sock:sock_send_length`, and
/// that only write to the sockets they lock: write, writev, sendfile, sendto, sendmsg,
/// sendmmsg, pwritev2 (offset -1). Not splice: it also reads sockets, and a read's events
/// would be kept for a send that never takes them.
#[inline(always)]
fn is_send(number: u64) -> bool {
    matches!(number, 1 | 20 | 40 | 44 | 46 | 307 | 328)
}

/// A kernel event on `sk` (at `now`) is about to change it: if it runs inside the send of the
/// thread holding the socket's lock, and is that send's first, keep the socket as it was,
/// `state` and, unless the event is the news of the error itself, its pending error.
#[inline(always)]
pub fn before_event(sk: u64, state: u8, error_is_news: bool, now: u64) {
    if conf!(flags) & FLAG_CALL_REGS == 0 || !is_send(CallRegs::current().number()) {
        return;
    }
    if sock::read::<i32>(sk, conf!(sock.lock_owned)).unwrap_or(0) == 0 {
        return; // softirq or a timer: not the send's doing
    }
    let Some(slot) = SEND_START.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    let slot = unsafe { &mut *slot };
    let thread = bpf_get_current_pid_tgid();
    let switches = switches();
    if slot.sk == sk && slot.pid_tgid == thread && slot.switches == switches {
        return; // an earlier event of the same call kept it
    }
    let mut health = sock::health(sk);
    if error_is_news {
        health.sk_err = 0;
    }
    *slot = SendStart {
        pid_tgid: thread,
        sk,
        started_ns: now - 1,
        switches,
        snapshot: sock::snapshot(sk, state, health),
    };
}

/// No start kept: `started_ns` 0.
pub const NO_START: SendStart = SendStart {
    pid_tgid: 0,
    sk: 0,
    started_ns: 0,
    switches: 0,
    snapshot: SockSnapshot::of_state(0),
};

/// The start kept for `thread`'s send on `sk`, taken (cleared), or [`NO_START`] where none was
/// kept, or the call slept or moved since (its slot may be another call's). A plain value, not
/// an `Option`: the compiler may copy a `None`'s undefined payload through registers, and the
/// verifier refuses to read a register never written (`R9 !read_ok`).
#[inline(always)]
pub fn take(sk: u64, thread: u64) -> SendStart {
    let Some(slot) = SEND_START.get_ptr_mut(0) else {
        return NO_START;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    let slot = unsafe { &mut *slot };
    if slot.sk != sk || slot.pid_tgid != thread {
        return NO_START;
    }
    slot.sk = 0;
    if slot.switches != switches() {
        return NO_START;
    }
    *slot
}

/// The current thread's context switches, voluntary and not (0 where unreadable).
#[inline(always)]
fn switches() -> u64 {
    // SAFETY: the helper returns the current task's address; the read checks it.
    let task = unsafe { bpf_get_current_task() };
    sock::read::<[u64; 2]>(task, conf!(task.switches))
        .map_or(0, |[voluntary, involuntary]| voluntary.wrapping_add(involuntary))
}
