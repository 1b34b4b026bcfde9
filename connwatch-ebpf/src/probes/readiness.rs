//! What the application was told was ready: epoll (registrations learnt at `epoll_ctl`, results
//! of `epoll_wait`/`epoll_pwait`/`epoll_pwait2`), `poll`/`ppoll` and `select`/`pselect6`, from
//! `syscalls:sys_enter_*`/`sys_exit_*` (checked against 6.1 and 6.18). Results are walked with
//! `bpf_loop` (Linux 5.17 on), up to `READINESS_PER_CALL_LOOPED` entries per call (select: its
//! 64 descriptors); the unrolled variants, for kernels without it, stop at smaller bounds. What
//! is not examined is counted, never silently dropped.
//!
//! Each program serves a family of calls (the userspace loader attaches `tp_sys_exit_poll` to
//! `sys_exit_ppoll` too, and so on): their records agree on every field read, and the verifier
//! then checks each loop once rather than once per call.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_loop, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use connwatch_common::{
    config::FLAG_READINESS_ON_ATTENTION,
    event::{
        COUNTER_IO_SUMMARISED, COUNTER_READINESS_NOT_NEEDED, COUNTER_READINESS_UNEXAMINED,
        KIND_READINESS, SELECT_EXCEPT, SELECT_READ, SELECT_WRITE, VIA_EPOLL, VIA_POLL, VIA_SELECT,
    },
    names::{READINESS_PER_CALL, READINESS_PER_CALL_LOOPED, SELECT_FDS},
    socket::{CALL_EPOLL_WAIT, CALL_POLL, CALL_SELECT, EpollKey, EpollTarget, PendingCall},
};

use crate::{
    config::conf,
    emit::{self, Observation},
    maps::EPOLL_WATCH,
    owner,
    policy::{self, Caller, Path},
    sock,
    syscall::{self, CallRegs, arg, ret},
};

pub(super) const EPOLL_CTL_ADD: u64 = 1;
/// EPOLLERR, EPOLLHUP, EPOLLRDHUP (the same bits as POLLERR, POLLHUP, POLLRDHUP).
const HANGUP_OR_ERROR: i32 = 0x008 | 0x010 | 0x2000;

/// `struct epoll_event`: packed on x86-64 (data right after the 4-byte mask), naturally
/// aligned elsewhere. Read whole, one helper call per entry.
#[cfg_attr(bpf_target_arch = "x86_64", repr(C, packed))]
#[cfg_attr(not(bpf_target_arch = "x86_64"), repr(C))]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}
const EPOLL_EVENT_SIZE: u64 = core::mem::size_of::<EpollEvent>() as u64;
/// Where `data` sits in an `epoll_event`.
const EPOLL_DATA: u64 = EPOLL_EVENT_SIZE - 8;
const POLLFD_SIZE: u64 = 8;
/// The bound of the smaller variants the loader falls back to where the verifier refuses the
/// full one (Linux 6.1 counts a million instructions for the 16-entry loops that 6.18 checks
/// in 60k); entries beyond any bound are counted in `COUNTER_READINESS_UNEXAMINED`.
const FEW: u64 = 4;

/// Registrations are learnt at ADD only, as the descriptor each (process, epfd, data) stands
/// for; its socket is resolved when epoll reports it (`epoll_entry`). MOD, which event loops
/// built like redis's `ae` call several times per request to re-arm write interest, returns at
/// once: it keeps the data word in every event loop we know of. A MOD that changed it would
/// leave the new word unknown (its readiness unreported) or, should the new word be one an
/// earlier, since closed registration used, standing for whatever that registration's
/// descriptor holds now. Registrations older than connwatch are seeded from `/proc` at start.
#[tracepoint]
pub fn tp_sys_enter_epoll_ctl(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 1) == EPOLL_CTL_ADD {
        on_epoll_add(arg(&ctx, 0) as i32, arg(&ctx, 2) as i32, arg(&ctx, 3));
    }
    0
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, event)`, `event` a user address.
#[inline(always)]
pub(super) fn on_epoll_add(epfd: i32, fd: i32, event: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == conf!(self_tgid) {
        return;
    }
    // SAFETY: bpf_probe_read_user checks the user address and fails instead of faulting.
    let Ok(data) = (unsafe { bpf_probe_read_user((event + EPOLL_DATA) as *const u64) }) else {
        return;
    };
    let key = EpollKey { tgid, epfd, data };
    // Clients built on `ae` (redis-benchmark) delete and add the same registration per request:
    // one that is known already costs one lookup, no look at the descriptor.
    if EPOLL_WATCH
        .get_ptr(&key)
        // SAFETY: a valid map value pointer; EpollTarget is Copy and read whole.
        .is_some_and(|known| unsafe { (*known).fd } == fd)
    {
        return;
    }
    learn_registration(&key, fd);
}

/// A registration not known yet: kept if `fd` is a TCP socket (not an eventfd, timer, pipe or
/// other socket). Its own subprogram, so that the ADD's frame stays under the 64 bytes from
/// which Linux 6.13+ moves a frame to a per-CPU private stack: a user read into a private
/// stack takes the hardened-usercopy check's heap path (`__virt_addr_valid`), into the task's
/// own stack the short stack path.
#[inline(never)]
fn learn_registration(key: &EpollKey, fd: i32) {
    if sock::sock_of_fd(fd as i64).is_some_and(|sk| sock::tcp_endpoints(sk).is_some()) {
        let _ = EPOLL_WATCH.insert(key, &EpollTarget { fd, _pad: 0 }, 0);
    }
}

#[tracepoint]
pub fn tp_sys_enter_epoll_wait(ctx: TracePointContext) -> u32 {
    keep_wait(&ctx)
}

#[inline(always)]
fn keep_wait(ctx: &TracePointContext) -> u32 {
    if !syscall::from_agent() {
        let (epfd, events) = (arg(ctx, 0) as i32, arg(ctx, 1));
        syscall::keep(PendingCall {
            call: CALL_EPOLL_WAIT,
            fd: epfd,
            ptr: events,
            aux: 0,
            aux2: 0,
        });
    }
    0
}

/// The arguments read at exit ([`CallRegs`], x86-64, Linux 5.15): the epoll_wait family needs
/// no entry program, and a result that is not examined costs one hit that reads nothing but
/// its return value. Otherwise as [`tp_sys_exit_epoll_wait`].
#[tracepoint]
pub fn tp_sys_exit_epoll_wait_regs(ctx: TracePointContext) -> u32 {
    epoll_result_at_exit(ret(&ctx));
    0
}

/// An epoll_wait-family result of `ready` entries, its arguments read from the registers.
#[inline(always)]
pub(super) fn epoll_result_at_exit(ready: i64) {
    if examined_at_exit(ready) {
        let regs = CallRegs::current();
        epoll_looped(ready, regs.arg(0) as i32, regs.arg(1));
    }
}

/// Every ready entry, up to `READINESS_PER_CALL_LOOPED`, one `bpf_loop` step each (Linux 5.17
/// on; the loader falls back to the unrolled variants below where the helper is missing).
#[tracepoint]
pub fn tp_sys_exit_epoll_wait(ctx: TracePointContext) -> u32 {
    let Some(call) = syscall::take(CALL_EPOLL_WAIT) else {
        return 0;
    };
    let ready = ret(&ctx);
    if examined(ready) {
        epoll_looped(ready, call.fd, call.ptr);
    }
    0
}

/// Walks the `ready` entries of the result array at `events` with `bpf_loop`.
#[inline(always)]
fn epoll_looped(ready: i64, epfd: i32, events: u64) {
    let mut scan =
        EpollScan { events, caller: Caller::current(0), epfd, _pad: 0, examined: 0, tallied: 0 };
    let steps = (ready as u64).min(READINESS_PER_CALL_LOOPED as u64) as u32;
    // SAFETY: the step is a static function of the helper's callback type; `scan` outlives the
    // call.
    unsafe {
        bpf_loop(steps, epoll_step as *mut c_void, &mut scan as *mut EpollScan as *mut c_void, 0)
    };
    finish_epoll(ready as u64, scan.examined, scan.tallied);
}

#[tracepoint]
pub fn tp_sys_exit_epoll_wait_unrolled(ctx: TracePointContext) -> u32 {
    on_epoll_result::<{ READINESS_PER_CALL as u64 }>(&ctx)
}

#[tracepoint]
pub fn tp_sys_exit_epoll_wait_few(ctx: TracePointContext) -> u32 {
    on_epoll_result::<FEW>(&ctx)
}

#[tracepoint]
pub fn tp_sys_exit_epoll_wait_one(ctx: TracePointContext) -> u32 {
    on_epoll_result::<1>(&ctx)
}

/// One epoll_wait result as the `bpf_loop` steps walk it.
#[repr(C)]
struct EpollScan {
    events: u64,
    caller: Caller,
    epfd: i32,
    _pad: u32,
    examined: u64,
    tallied: u64,
}

/// One `bpf_loop` step: entry `index`; returns 1 (stop) where the entry cannot be read.
#[inline(never)]
extern "C" fn epoll_step(index: u32, scan: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the pointer the program gave it, to its live `EpollScan`.
    let scan = unsafe { &mut *(scan as *mut EpollScan) };
    match epoll_entry(scan.events, index as u64, scan.epfd, &scan.caller) {
        Entry::Unreadable => return 1,
        Entry::Tallied => scan.tallied += 1,
        Entry::Examined => {}
    }
    scan.examined += 1;
    0
}

#[inline(always)]
fn on_epoll_result<const BOUND: u64>(ctx: &TracePointContext) -> u32 {
    let Some(call) = syscall::take(CALL_EPOLL_WAIT) else {
        return 0;
    };
    let ready = ret(ctx);
    if !examined(ready) {
        return 0;
    }
    let caller = Caller::current(0);
    let (mut examined, mut tallied) = (0, 0);
    for i in 0..BOUND {
        if i >= ready as u64 {
            break;
        }
        match epoll_entry(call.ptr, i, call.fd, &caller) {
            Entry::Unreadable => break,
            Entry::Tallied => tallied += 1,
            Entry::Examined => {}
        }
        examined += 1;
    }
    finish_epoll(ready as u64, examined, tallied);
    0
}

/// What became of one ready entry.
enum Entry {
    Unreadable,
    /// A trusted socket's routine readiness, tallied on the fast path.
    Tallied,
    /// Looked at in full (or not a watched TCP socket).
    Examined,
}

/// Ready entry `index` of the result array at `events`.
#[inline(always)]
fn epoll_entry(events: u64, index: u64, epfd: i32, caller: &Caller) -> Entry {
    // SAFETY: bpf_probe_read_user checks the user address and fails instead of faulting.
    let Ok(entry) =
        (unsafe { bpf_probe_read_user((events + index * EPOLL_EVENT_SIZE) as *const EpollEvent) })
    else {
        return Entry::Unreadable;
    };
    let (mask, data) = (entry.events as i32, entry.data);
    let key = EpollKey { tgid: caller.tgid, epfd, data };
    let Some(known) = EPOLL_WATCH.get_ptr(&key) else {
        return Entry::Examined;
    };
    // SAFETY: a valid map value pointer; EpollTarget is Copy and read whole.
    let fd = unsafe { (*known).fd };
    // The descriptor's socket now, in the process epoll just told: a registration whose
    // descriptor is gone (closed, the kernel dropped it) is let go of.
    let sk = socket_of_registered(fd);
    if sk == 0 {
        let _ = EPOLL_WATCH.remove(&key);
        return Entry::Examined;
    }
    // Busy event loops: a trusted socket's routine readiness is tallied after one more lookup.
    let routine = mask & HANGUP_OR_ERROR == 0;
    if routine && policy::fast_tally(sk, Path::Readiness, 0, VIA_EPOLL as u32, caller) {
        return Entry::Tallied;
    }
    on_ready(sk, fd, mask, VIA_EPOLL);
    Entry::Examined
}

/// The socket behind a registration's descriptor, or 0. Not inlined: its reads stay off the
/// stack of the loop step that calls it, which Linux 6.1 counts together with [`on_ready`]'s
/// (512 bytes for the whole chain).
#[inline(never)]
fn socket_of_registered(fd: i32) -> u64 {
    sock::sock_of_fd(fd as i64).unwrap_or(0)
}

/// Counts what one epoll result's walk tallied and what it left unexamined.
#[inline(always)]
fn finish_epoll(ready: u64, examined: u64, tallied: u64) {
    if tallied > 0 {
        emit::count(COUNTER_IO_SUMMARISED, tallied);
    }
    unexamined(ready.saturating_sub(examined));
}

#[tracepoint]
pub fn tp_sys_enter_poll(ctx: TracePointContext) -> u32 {
    keep_poll(&ctx)
}

#[inline(always)]
fn keep_poll(ctx: &TracePointContext) -> u32 {
    if !syscall::from_agent() {
        let (fds, nfds) = (arg(ctx, 0), arg(ctx, 1));
        syscall::keep(PendingCall { call: CALL_POLL, fd: -1, ptr: fds, aux: nfds, aux2: 0 });
    }
    0
}

/// [`tp_sys_exit_poll`] with the arguments read at exit, as [`tp_sys_exit_epoll_wait_regs`].
#[tracepoint]
pub fn tp_sys_exit_poll_regs(ctx: TracePointContext) -> u32 {
    poll_result_at_exit(ret(&ctx));
    0
}

/// A poll-family result of `ready` descriptors, its arguments read from the registers.
#[inline(always)]
pub(super) fn poll_result_at_exit(ready: i64) {
    if examined_at_exit(ready) {
        let regs = CallRegs::current();
        // `nfds` is an unsigned int: the register's upper half is not the caller's.
        poll_looped(ready, regs.arg(0), regs.arg(1) as u32 as u64);
    }
}

/// Every descriptor of the array, up to `READINESS_PER_CALL_LOOPED`, one `bpf_loop` step each.
#[tracepoint]
pub fn tp_sys_exit_poll(ctx: TracePointContext) -> u32 {
    let Some(call) = syscall::take(CALL_POLL) else {
        return 0;
    };
    let ready = ret(&ctx);
    if examined(ready) {
        poll_looped(ready, call.ptr, call.aux);
    }
    0
}

/// Walks the `nfds` descriptors of the array at `fds` with `bpf_loop`.
#[inline(always)]
fn poll_looped(ready: i64, fds: u64, nfds: u64) {
    let mut scan = PollScan { fds, seen: 0 };
    let steps = nfds.min(READINESS_PER_CALL_LOOPED as u64) as u32;
    // SAFETY: the step is a static function of the helper's callback type; `scan` outlives the
    // call.
    unsafe {
        bpf_loop(steps, poll_step as *mut c_void, &mut scan as *mut PollScan as *mut c_void, 0)
    };
    unexamined((ready as u64).saturating_sub(scan.seen));
}

#[tracepoint]
pub fn tp_sys_exit_poll_unrolled(ctx: TracePointContext) -> u32 {
    on_poll_result::<{ READINESS_PER_CALL as u64 }>(&ctx)
}

/// One poll result as the `bpf_loop` steps walk it.
#[repr(C)]
struct PollScan {
    fds: u64,
    seen: u64,
}

/// One `bpf_loop` step: descriptor `index`; returns 1 (stop) where the array cannot be read.
/// It does not stop once every ready descriptor was seen: comparing that count would make the
/// verifier tell every step's states apart (the program was refused at a million instructions).
#[inline(never)]
extern "C" fn poll_step(index: u32, scan: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the pointer the program gave it, to its live `PollScan`.
    let scan = unsafe { &mut *(scan as *mut PollScan) };
    let Some((fd, revents)) = pollfd(scan.fds, index as u64) else {
        return 1;
    };
    if revents != 0 && fd >= 0 {
        on_ready_fd(fd, revents as i32, VIA_POLL);
        scan.seen += 1;
    }
    0
}

/// `struct pollfd { int fd; short events; short revents; }` number `index`: its fd and revents.
#[inline(always)]
fn pollfd(fds: u64, index: u64) -> Option<(i32, i16)> {
    // SAFETY: bpf_probe_read_user checks the user address and fails instead of faulting.
    let pollfd = unsafe { bpf_probe_read_user((fds + index * POLLFD_SIZE) as *const u64) }.ok()?;
    Some((pollfd as u32 as i32, (pollfd >> 48) as u16 as i16))
}

#[tracepoint]
pub fn tp_sys_exit_poll_few(ctx: TracePointContext) -> u32 {
    on_poll_result::<FEW>(&ctx)
}

#[tracepoint]
pub fn tp_sys_exit_poll_one(ctx: TracePointContext) -> u32 {
    on_poll_result::<1>(&ctx)
}

#[inline(always)]
fn on_poll_result<const BOUND: u64>(ctx: &TracePointContext) -> u32 {
    let Some(call) = syscall::take(CALL_POLL) else {
        return 0;
    };
    let ready = ret(ctx);
    if !examined(ready) {
        return 0;
    }
    // Each ready entry is resolved where it is found: the verifier's work stays linear in the
    // bound (an array of found entries, indexed by their count, multiplied it).
    let mut seen: u64 = 0;
    for i in 0..BOUND {
        // Not also stopped once `ready` entries were seen: comparing that count made the
        // verifier tell every iteration's states apart (685k instructions checked, not 104k).
        if i >= call.aux {
            break;
        }
        let Some((fd, revents)) = pollfd(call.ptr, i) else {
            break;
        };
        if revents != 0 && fd >= 0 {
            on_ready_fd(fd, revents as i32, VIA_POLL);
            seen += 1;
        }
    }
    unexamined((ready as u64).saturating_sub(seen));
    0
}

#[tracepoint]
pub fn tp_sys_enter_select(ctx: TracePointContext) -> u32 {
    keep_select(&ctx)
}

#[inline(always)]
fn keep_select(ctx: &TracePointContext) -> u32 {
    if !syscall::from_agent() {
        let (read, write, except) = (arg(ctx, 1), arg(ctx, 2), arg(ctx, 3));
        syscall::keep(PendingCall {
            call: CALL_SELECT,
            fd: -1,
            ptr: read,
            aux: write,
            aux2: except,
        });
    }
    0
}

/// [`tp_sys_exit_select`] with the arguments read at exit, as [`tp_sys_exit_epoll_wait_regs`].
#[tracepoint]
pub fn tp_sys_exit_select_regs(ctx: TracePointContext) -> u32 {
    select_result_at_exit(ret(&ctx));
    0
}

/// A select-family result of `ready` descriptors, its arguments read from the registers.
#[inline(always)]
pub(super) fn select_result_at_exit(ready: i64) {
    if examined_at_exit(ready) {
        let regs = CallRegs::current();
        select_looped(ready as u64, SelectSets::read(regs.arg(1), regs.arg(2), regs.arg(3)));
    }
}

/// Every descriptor below 64 in the three sets, one `bpf_loop` step each: the step's index is
/// the descriptor.
#[tracepoint]
pub fn tp_sys_exit_select(ctx: TracePointContext) -> u32 {
    if let Some((ready, sets)) = select_result(&ctx) {
        select_looped(ready, sets);
    }
    0
}

#[inline(always)]
fn select_looped(ready: u64, mut sets: SelectSets) {
    // SAFETY: the step is a static function of the helper's callback type; `sets` outlives
    // the call.
    unsafe {
        bpf_loop(
            SELECT_FDS,
            select_step as *mut c_void,
            &mut sets as *mut SelectSets as *mut c_void,
            0,
        )
    };
    // select returns the number of set bits in all three sets, up to its nfds.
    unexamined(ready.saturating_sub(sets.seen));
}

#[tracepoint]
pub fn tp_sys_exit_select_unrolled(ctx: TracePointContext) -> u32 {
    on_select_result::<{ READINESS_PER_CALL as u64 }>(&ctx)
}

#[tracepoint]
pub fn tp_sys_exit_select_few(ctx: TracePointContext) -> u32 {
    on_select_result::<FEW>(&ctx)
}

#[tracepoint]
pub fn tp_sys_exit_select_one(ctx: TracePointContext) -> u32 {
    on_select_result::<1>(&ctx)
}

/// The first word of each set the kernel rewrote (descriptors below 64, `SELECT_FDS`), and how
/// many descriptors were reported so far.
#[repr(C)]
struct SelectSets {
    read: u64,
    write: u64,
    except: u64,
    seen: u64,
}

impl SelectSets {
    /// The first word of each set at these user addresses (0: no such set).
    #[inline(always)]
    fn read(read: u64, write: u64, except: u64) -> Self {
        let word = |ptr: u64| -> u64 {
            // SAFETY: bpf_probe_read_user checks the user address and fails instead of faulting.
            if ptr == 0 {
                0
            } else {
                unsafe { bpf_probe_read_user(ptr as *const u64) }.unwrap_or(0)
            }
        };
        Self { read: word(read), write: word(write), except: word(except), seen: 0 }
    }

    /// Reports the lowest descriptor still set and clears it; false once none is. Visits set
    /// bits only, without branching on each bit: unrolled, a branch per descriptor would
    /// multiply the verifier's work.
    #[inline(always)]
    fn report_next(&mut self) -> bool {
        let any = self.read | self.write | self.except;
        if any == 0 {
            return false;
        }
        let lowest = any & any.wrapping_neg();
        let fd = (lowest - 1).count_ones();
        on_ready_fd(fd as i32, self.mask_of(fd), VIA_SELECT);
        self.read &= !lowest;
        self.write &= !lowest;
        self.except &= !lowest;
        self.seen += 1;
        true
    }

    /// What the sets say of descriptor `fd` (below 64): `SELECT_READ`, `_WRITE`, `_EXCEPT`.
    #[inline(always)]
    fn mask_of(&self, fd: u32) -> i32 {
        let bit = |set: u64, flag: i32| (set.wrapping_shr(fd) & 1) as i32 * flag;
        bit(self.read, SELECT_READ)
            | bit(self.write, SELECT_WRITE)
            | bit(self.except, SELECT_EXCEPT)
    }
}

/// One `bpf_loop` step: descriptor `index`, reported if any set holds it; returns 1 (stop) once
/// no set holds a higher one. The sets are only read: a step that changed them (clearing each
/// bit it reported) gave the verifier a new state at every step, and Linux 6.1 refused the
/// program at a million instructions.
#[inline(never)]
extern "C" fn select_step(index: u32, sets: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the pointer the program gave it, to its live `SelectSets`.
    let sets = unsafe { &mut *(sets as *mut SelectSets) };
    let any = sets.read | sets.write | sets.except;
    if any.wrapping_shr(index) == 0 {
        return 1;
    }
    let mask = sets.mask_of(index);
    if mask != 0 {
        on_ready_fd(index as i32, mask, VIA_SELECT);
        sets.seen += 1;
    }
    0
}

/// The call's `ready` count and its sets, if it reported any.
#[inline(always)]
fn select_result(ctx: &TracePointContext) -> Option<(u64, SelectSets)> {
    let call = syscall::take(CALL_SELECT)?;
    let ready = ret(ctx);
    if !examined(ready) {
        return None;
    }
    Some((ready as u64, SelectSets::read(call.ptr, call.aux, call.aux2)))
}

#[inline(always)]
fn on_select_result<const BOUND: u64>(ctx: &TracePointContext) -> u32 {
    let Some((ready, mut sets)) = select_result(ctx) else {
        return 0;
    };
    for _ in 0..BOUND {
        if !sets.report_next() {
            break;
        }
    }
    unexamined(ready.saturating_sub(sets.seen));
    0
}

/// A ready descriptor of poll or select: reported if it is a TCP socket. Not inlined, like
/// [`on_ready`].
#[inline(never)]
fn on_ready_fd(fd: i32, mask: i32, via: u8) {
    if let Some(sk) = sock::sock_of_fd(fd as i64) {
        on_ready(sk, fd, mask, via);
    }
}

/// Whether a result of `ready` entries is to be examined: not when it has none, nor where the
/// loader asked for readiness only when it can matter (`watch`, `agent`) and the calling
/// process holds no socket the kernel had news of; such entries are counted.
#[inline(always)]
fn examined(ready: i64) -> bool {
    ready > 0 && examined_in(ready, (bpf_get_current_pid_tgid() >> 32) as u32)
}

/// [`examined`] for a program without an entry program, which would have let the agent's own
/// calls go.
#[inline(always)]
fn examined_at_exit(ready: i64) -> bool {
    if ready <= 0 {
        return false;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    tgid != conf!(self_tgid) && examined_in(ready, tgid)
}

/// [`examined`] for a result of `ready` entries (at least one) in process `tgid`.
#[inline(always)]
fn examined_in(ready: i64, tgid: u32) -> bool {
    if conf!(flags) & FLAG_READINESS_ON_ATTENTION == 0 || policy::needs_attention(tgid) {
        return true;
    }
    emit::count(COUNTER_READINESS_NOT_NEEDED, ready as u64);
    false
}

/// Counts ready entries the bounded loops did not examine, in the processes the filters let
/// through.
#[inline(always)]
fn unexamined(entries: u64) {
    if entries > 0 && emit::process_wanted((bpf_get_current_pid_tgid() >> 32) as u32) {
        emit::count(COUNTER_READINESS_UNEXAMINED, entries);
    }
}

/// Not inlined: as a BPF subprogram its many exits converge at one return, so the verifier
/// checks each loop iteration once instead of every path through all the iterations after it.
#[inline(never)]
fn on_ready(sk: u64, fd: i32, mask: i32, via: u8) {
    // Routine masks (IN, OUT) come and go on a busy socket (servers re-arm write interest per
    // reply): only the mechanism is part of what a summary stands for. HUP/RDHUP/ERR are
    // notable and always reported. (The epoll loop tries the fast path before calling this;
    // reads and writes set the trust it relies on.)
    let signature = via as u32;
    let Some(ends) = sock::tcp_endpoints(sk) else {
        return;
    };
    let health = sock::health(sk);
    let notable = mask & HANGUP_OR_ERROR != 0 || policy::notable_socket(ends.state, &health);
    let now = owner::now();
    let due =
        policy::tally(sk, Path::Readiness, 0, notable, ends.state, signature, (now, now), None);
    let info = owner::touch(sk);
    // Healthy readiness tallied before a change is not reported on its own (one more record
    // inside these bounded loops would multiply the verifier's work): it stays counted in
    // `COUNTER_IO_SUMMARISED`, and this call is reported with its own mask and state.
    let Some(due) = due else {
        return;
    };
    let snapshot = sock::snapshot(sk, ends.state, health);
    let obs = Observation {
        kind: KIND_READINESS,
        fd,
        value: mask,
        bytes: 0,
        calls: due.this.calls,
        via,
        snapshot,
        started_ns: due.this.first_ns,
        ended_ns: due.this.last_ns,
    };
    emit::observed_as(sk, &ends, &obs, &info);
}
