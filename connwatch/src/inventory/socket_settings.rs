//! A socket's own settings, read through a duplicate of its holder's descriptor
//! (`pidfd_getfd`, Linux 5.6+, needs CAP_SYS_PTRACE): keepalive, TCP_USER_TIMEOUT and
//! TCP_INFO's view of it. The duplicate is closed at once.

use std::{
    fs, io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{FromRawFd as _, OwnedFd},
};

use crate::correlate::liveness::{Settings, SocketProber};

/// Reads settings with pidfd_getfd in the calling thread (which needs CAP_SYS_PTRACE).
pub struct PidfdProber;

impl SocketProber for PidfdProber {
    fn settings(
        &mut self,
        pid: u32,
        fd: i32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<Settings> {
        read(pid, fd, local, remote).ok()
    }
}

/// The settings of `pid`'s `fd`, if it is still the socket with these endpoints.
pub fn read(pid: u32, fd: i32, local: SocketAddr, remote: SocketAddr) -> io::Result<Settings> {
    let socket = duplicate(pid, fd)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    if endpoint(raw, libc::getsockname)? != local || endpoint(raw, libc::getpeername)? != remote {
        return Err(io::Error::other("the descriptor now holds another connection"));
    }
    // SAFETY: tcp_info is plain integers.
    let info: libc::tcp_info = getsockopt(raw, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(Settings {
        state: info.tcpi_state,
        keepalive: getsockopt::<i32>(raw, libc::SOL_SOCKET, libc::SO_KEEPALIVE)? != 0,
        keep_idle_s: getsockopt::<i32>(raw, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)? as u32,
        keep_intvl_s: getsockopt::<i32>(raw, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)? as u32,
        keep_cnt: getsockopt::<i32>(raw, libc::IPPROTO_TCP, libc::TCP_KEEPCNT)? as u32,
        user_timeout_ms: getsockopt::<u32>(raw, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT)?,
        idle_ms: info.tcpi_last_data_sent.min(info.tcpi_last_data_recv),
        rtt_us: info.tcpi_rtt,
        retries2: fs::read_to_string("/proc/sys/net/ipv4/tcp_retries2")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(15),
    })
}

fn duplicate(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; each returned descriptor is owned right away.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&pidfd);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, raw, fd, 0);
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

fn getsockopt<T: Copy>(fd: i32, level: i32, name: i32) -> io::Result<T> {
    // SAFETY: T is a plain C value type; the kernel writes at most `len` bytes into it.
    unsafe {
        let mut value: T = zeroed();
        let mut len = size_of::<T>() as libc::socklen_t;
        if libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    }
}

type NameCall = unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32;

/// The socket's local or peer address; IPv4-mapped IPv6 shown as IPv4, as events show it.
fn endpoint(fd: i32, call: NameCall) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is large enough for any address; the kernel fills `len` bytes.
    unsafe {
        let mut sa: libc::sockaddr_storage = zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if call(fd, (&raw mut sa).cast(), &mut len) != 0 {
            return Err(io::Error::last_os_error());
        }
        match i32::from(sa.ss_family) {
            libc::AF_INET => {
                let v4 = &*(&raw const sa).cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(v4.sin_port)))
            }
            libc::AF_INET6 => {
                let v6 = &*(&raw const sa).cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
                let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                Ok(SocketAddr::new(ip, u16::from_be(v6.sin6_port)))
            }
            _ => Err(io::Error::other("not an IP socket")),
        }
    }
}
