//! Reads from kernel structs at offsets the loader took from the running kernel's BTF.

use aya_ebpf::helpers::{
    bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};
use connwatch_common::{
    config::{OFFSET_ABSENT, PROTO_TYPE_BYTES, SOCK_HEAD_BYTES},
    event::{EventHeader, SockSnapshot},
    socket::SocketEntry,
    tcp::{AF_INET, AF_INET6, IPPROTO_TCP, S_IFMT, S_IFSOCK, SOCK_STREAM},
};

use crate::{config::conf, zero::zero};

/// `base + offset`, unless the base is null or the loader found no such field.
#[inline(always)]
fn address(base: u64, offset: u32) -> Option<u64> {
    (base != 0 && offset != OFFSET_ABSENT).then(|| base + offset as u64)
}

/// Reads a `T` at `base + offset`; a faulting address is an error, never a crash.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, i64> {
    let at = address(base, offset).ok_or(-1)?;
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(at as *const T) }.map_err(|e| e as i64)
}

/// Bytes read whole from a kernel struct, word-aligned: the compiler copies a byte array a
/// byte at a time (two instructions a byte, each walked by the verifier), a word-aligned one
/// a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Window<const N: usize>([u8; N]);

/// The `N` bytes (whole words, so the read is exactly `N` bytes) at `base + offset`.
#[inline(always)]
fn read_window<const N: usize>(base: u64, offset: u32) -> Option<Window<N>> {
    const { assert!(N % 8 == 0, "a window is whole words") };
    read(base, offset).ok()
}

/// The parts of a socket every event carries, read before reserving ring-buffer space so
/// filtered events cost no reservation.
#[derive(Clone, Copy)]
pub struct Endpoints {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub state: u8,
    /// IPv4 addresses as stored, network order (IPv6 ones are read only when an event is
    /// written). Words rather than byte arrays (see `Window`).
    pub saddr4: u32,
    pub daddr4: u32,
}

/// `N` bytes at `offset` of a window read from `base`.
#[inline(always)]
fn field<const N: usize>(window: &[u8], base: u32, offset: u32) -> Option<[u8; N]> {
    let at = offset.checked_sub(base)? as usize;
    let bytes = window.get(at..at + N)?;
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    Some(out)
}

/// `Some` for a TCP socket of family AF_INET or AF_INET6 (MPTCP and UDP are skipped). Two
/// helper calls: the head of `sock_common` and the type/protocol pair, each read whole.
#[inline(always)]
pub fn tcp_endpoints(sk: u64) -> Option<Endpoints> {
    let ends = inet_endpoints(sk)?;
    let pt_base = conf!(sock.proto_type);
    let Window(pt) = read_window::<{ PROTO_TYPE_BYTES as usize }>(sk, pt_base)?;
    let protocol = u16::from_ne_bytes(field(&pt, pt_base, conf!(sock.protocol))?);
    let sk_type = u16::from_ne_bytes(field(&pt, pt_base, conf!(sock.sk_type))?);
    (protocol == IPPROTO_TCP && sk_type == SOCK_STREAM).then_some(ends)
}

/// The endpoints of `sk` if it is TCP: from the head alone where it is known already (`entry`:
/// its `SOCKETS` entry, which only TCP sockets get), else checked.
#[inline(always)]
pub fn endpoints_of(sk: u64, entry: Option<*mut SocketEntry>) -> Option<Endpoints> {
    match entry {
        Some(_) => inet_endpoints(sk),
        None => tcp_endpoints(sk),
    }
}

/// The endpoints of an AF_INET or AF_INET6 socket from the head of `sock_common` alone (one
/// helper call): enough for a socket known to be TCP (it has a `SOCKETS` entry: only TCP
/// sockets get one, and a TCP socket's memory is only ever reused by another).
#[inline(always)]
pub fn inet_endpoints(sk: u64) -> Option<Endpoints> {
    let base = conf!(sock.head);
    let Window(head) = read_window::<{ SOCK_HEAD_BYTES as usize }>(sk, base)?;
    let family = u16::from_ne_bytes(field(&head, base, conf!(sock.family))?);
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(Endpoints {
        family,
        sport: u16::from_ne_bytes(field(&head, base, conf!(sock.num))?),
        dport: u16::from_be_bytes(field(&head, base, conf!(sock.dport))?),
        state: field::<1>(&head, base, conf!(sock.state))?[0],
        saddr4: u32::from_ne_bytes(field(&head, base, conf!(sock.rcv_saddr))?),
        daddr4: u32::from_ne_bytes(field(&head, base, conf!(sock.daddr))?),
    })
}

/// Copies the socket's addresses into a reserved header.
#[inline(always)]
pub fn fill_addresses(sk: u64, ends: &Endpoints, header: &mut EventHeader) {
    zero(&mut header.saddr);
    zero(&mut header.daddr);
    if ends.family == AF_INET {
        header.saddr[..4].copy_from_slice(&ends.saddr4.to_ne_bytes());
        header.daddr[..4].copy_from_slice(&ends.daddr4.to_ne_bytes());
    } else {
        read_into(sk, conf!(sock.v6_rcv_saddr), &mut header.saddr);
        read_into(sk, conf!(sock.v6_daddr), &mut header.daddr);
    }
}

/// Reads `into.len()` bytes at `base + offset` straight into `into`, which keeps its zeroes
/// where the read fails: no copy through the stack (a byte array is copied a byte at a time).
#[inline(always)]
fn read_into(base: u64, offset: u32, into: &mut [u8]) {
    if let Some(at) = address(base, offset) {
        // SAFETY: the helper checks the address and fails instead of faulting.
        let _ = unsafe { bpf_probe_read_kernel_buf(at as *const u8, into) };
    }
}

/// Positive errno stored in the socket (`sk->sk_err`).
#[inline(always)]
pub fn error(sk: u64) -> i32 {
    read(sk, conf!(sock.err)).unwrap_or(0)
}

/// What decides whether an application's call is notable: the pending error and the
/// retransmission timeouts without progress.
#[derive(Clone, Copy)]
pub struct Health {
    pub sk_err: i32,
    pub rto_retransmits: u8,
}

#[inline(always)]
pub fn health(sk: u64) -> Health {
    Health {
        sk_err: error(sk),
        rto_retransmits: read(sk, conf!(sock.rto_retransmits)).unwrap_or(0),
    }
}

/// The socket as the application's call found it: `state` and `health` as already read,
/// plus the bytes written and not acknowledged.
#[inline(always)]
pub fn snapshot(sk: u64, state: u8, health: Health) -> SockSnapshot {
    let (una, srtt_us) = una_and_srtt_us(sk);
    let written: u32 = read(sk, conf!(sock.write_seq)).unwrap_or(0);
    SockSnapshot {
        state,
        rto_retransmits: health.rto_retransmits,
        _pad: [0; 2],
        sk_err: health.sk_err,
        unacked_bytes: written.wrapping_sub(una),
        srtt_us,
    }
}

/// `snd_una` and the smoothed round-trip time (µs): one read where they sit close, as on 6.18
/// (8 bytes apart); two otherwise, as on 6.1.
#[inline(always)]
fn una_and_srtt_us(sk: u64) -> (u32, u32) {
    let (una_at, srtt_at) = (conf!(sock.snd_una), conf!(sock.srtt_us));
    if let Some((low, window)) = close_pair(sk, una_at, srtt_at, 4) {
        let una = field(&window, low, una_at).map_or(0, u32::from_ne_bytes);
        let srtt = field(&window, low, srtt_at).map_or(0, u32::from_ne_bytes);
        return (una, srtt >> 3);
    }
    (read(sk, una_at).unwrap_or(0), srtt_us(sk))
}

/// Where two fields of `base` at `a` and `b` (`len` bytes each at most) lie within 16 bytes:
/// those 16 bytes, read with one helper call, and where they start. `None` where the fields
/// lie further apart (or the read failed): the caller reads them one by one.
#[inline(always)]
fn close_pair(base: u64, a: u32, b: u32, len: u32) -> Option<(u32, [u8; 16])> {
    let low = a.min(b);
    if a.max(b) - low > 16 - len {
        return None;
    }
    let Window(pair) = read_window::<16>(base, low)?;
    Some((low, pair))
}

/// Smoothed round-trip time, microseconds (`tcp_sock.srtt_us` holds it << 3).
#[inline(always)]
pub fn srtt_us(sk: u64) -> u32 {
    read::<u32>(sk, conf!(sock.srtt_us)).unwrap_or(0) >> 3
}

/// The socket's network namespace (`struct net` address).
#[inline(always)]
pub fn net(sk: u64) -> u64 {
    read(sk, conf!(sock.net)).unwrap_or(0)
}

/// Resolves the current task's file descriptor to its `struct sock`:
/// task -> files -> fdt -> fd[fd] -> file -> (socket inode?) -> private_data (socket) -> sk.
/// Returns `None` for closed fds and for anything that is not a socket.
#[inline(always)]
pub fn sock_of_fd(fd: i64) -> Option<u64> {
    sock_of_file(file_of_fd(fd)?)
}

/// The current task's `struct file` for `fd`. The walk from the task to its fd table is plain
/// loads: the task comes typed (`bpf_get_current_task_btf`), so the verifier types every
/// pointer read from it and lets the program load through them, a fault caught by the kernel
/// (three helper calls fewer: 30-40 ns a hit on close, accept and connect here). The array's
/// slot is a pointer to a pointer, which the verifier leaves untyped: read with the helper, as
/// the file behind it.
#[inline(always)]
pub fn file_of_fd(fd: i64) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the helper has no preconditions; the verifier types its result.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let (files_at, fdt_at) = (conf!(task.task_files), conf!(task.files_fdt));
    let (max_fds_at, fd_at) = (conf!(task.fdt_max_fds), conf!(task.fdt_fd));
    // SAFETY (each load): a typed task and pointers loaded from it, at offsets of their
    // structs' fields taken from the kernel's BTF; the verifier checks each against the type.
    let files: *const u8 = unsafe { typed_load(task, files_at)? };
    let fdt: *const u8 = unsafe { typed_load(files, fdt_at)? };
    let max_fds: u32 = unsafe { typed_load(fdt, max_fds_at)? };
    if fd as u64 >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = unsafe { typed_load(fdt, fd_at)? };
    read(fd_array, (fd as u32).checked_mul(8)?).ok()
}

/// The `T` at `offset` in the struct at `base`, a pointer the verifier typed (BTF), by one
/// load; `None` for a null `base` or a field the loader did not find.
///
/// # Safety
/// `base` is typed for the verifier, and `offset` is one of its struct's fields, of type `T`.
#[inline(always)]
unsafe fn typed_load<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    let at = address(base as u64, offset)?;
    // SAFETY: the caller's contract; the kernel catches a faulting load and yields zero.
    Some(unsafe { core::ptr::read_volatile(at as *const T) })
}

/// The `struct sock` behind an open file, if the file is a socket.
#[inline(always)]
pub fn sock_of_file(file: u64) -> Option<u64> {
    let (inode_at, data_at) = (conf!(task.file_inode), conf!(task.file_private_data));
    // One read where the two pointers sit side by side, as on 6.18; otherwise the private data
    // is read only once the inode says socket (6.1).
    let (inode, socket) = match close_pair(file, inode_at, data_at, 8) {
        Some((low, pair)) => {
            let pointer_at = |at| field(&pair, low, at).map(u64::from_ne_bytes);
            (pointer_at(inode_at)?, pointer_at(data_at))
        }
        None => (read(file, inode_at).ok()?, None),
    };
    let mode: u16 = read(inode, conf!(task.inode_mode)).ok()?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket = match socket {
        Some(socket) => socket,
        None => read(file, data_at).ok()?,
    };
    let sk: u64 = read(socket, conf!(task.socket_sk)).ok()?;
    (sk != 0).then_some(sk)
}

/// How many references the open file has (descriptors in any process, in-flight passes, and
/// calls in progress on it); 1 when unknown, so a close counts as the last.
#[inline(always)]
pub fn file_references(file: u64) -> i64 {
    match read::<i64>(file, conf!(task.file_count)) {
        Ok(count) => count + conf!(task.file_count_bias) as i64,
        Err(_) => 1,
    }
}
