//! A scripted TCP peer for the integration tests: one command per stdin line, one `ok ...` or
//! `err ...` line per command on stdout. Plain libc syscalls, so what the kernel sees is exactly
//! what the test asked for.
//!
//! Commands: `listen ADDR PORT`, `accept`, `connect ADDR PORT`, `connect-nb ADDR PORT`,
//! `wait-writable`, `write BYTES`, `burst COUNT BYTES`, `recv`, `recv-bytes TOTAL`, `read-eof`,
//! `so-error`, `epoll-add fd|ptr` (to the peer's one epoll instance), `epoll-wait`, `poll`, `select`, `linger0`, `close`,
//! `close-listener`, `refuse-flood ADDR PORT COUNT`, `write-every MS COUNT BYTES` (a periodic
//! writer), `heartbeat BYTES TIMEOUT_MS` (send, await a reply, close if none), `fork-writer`
//! (a child process that shares the connection, writes one byte on it and holds it until this
//! peer dies), `keepalive IDLE INTVL CNT` (seconds, probes), `echo COUNT` (answer COUNT
//! one-byte requests), `ping-every MS COUNT` (a heartbeat: one byte out, its echo back, a
//! pause), `crowd epoll|poll|select ADDR PORT COUNT` (COUNT connections to this peer's own
//! listener, each with a byte to read, the last one's client closed; waits until one
//! epoll_wait, poll or select reports them all, the last one with its RDHUP or, for select,
//! readable), `exit`.

use std::{
    io::{self, BufRead, Write},
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
};

fn main() {
    let mut peer =
        Peer { listener: -1, conn: -1, epoll: -1, token: Box::new(0), crowd: Vec::new() };
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["exit"] => break,
            words => peer.command(words),
        };
        let mut out = io::stdout().lock();
        match reply {
            Ok(text) => writeln!(out, "ok {text}"),
            Err(e) => writeln!(out, "err {}", errno_name(&e)),
        }
        .and_then(|()| out.flush())
        .expect("stdout");
    }
}

struct Peer {
    listener: i32,
    conn: i32,
    epoll: i32,
    /// A heap object whose address serves as epoll user data (`epoll-add ptr`).
    token: Box<u64>,
    /// Both ends of every `epoll-crowd` connection, held open until the peer exits.
    crowd: Vec<i32>,
}

type Reply = Result<String, io::Error>;

impl Peer {
    fn command(&mut self, words: &[&str]) -> Reply {
        match words {
            ["listen", addr, port] => {
                let addr = sockaddr(addr, port);
                self.listener = socket_for(&addr)?;
                let one: i32 = 1;
                setsockopt(self.listener, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
                with_sockaddr(&addr, |sa, len| {
                    check(unsafe { libc::bind(self.listener, sa, len) })
                })?;
                check(unsafe { libc::listen(self.listener, 128) })?;
                Ok("listening".into())
            }
            ["accept"] => {
                self.conn = check(unsafe {
                    libc::accept(self.listener, std::ptr::null_mut(), std::ptr::null_mut())
                })?;
                Ok(format!("accepted {}", self.conn))
            }
            ["connect", addr, port] => {
                let addr = sockaddr(addr, port);
                self.conn = socket_for(&addr)?;
                with_sockaddr(&addr, |sa, len| {
                    check(unsafe { libc::connect(self.conn, sa, len) })
                })?;
                Ok(format!("connected {}", local_port(self.conn)?))
            }
            ["connect-nb", addr, port] => {
                let addr = sockaddr(addr, port);
                self.conn = socket_for(&addr)?;
                let flags = check(unsafe { libc::fcntl(self.conn, libc::F_GETFL) })?;
                check(unsafe { libc::fcntl(self.conn, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
                with_sockaddr(&addr, |sa, len| {
                    check(unsafe { libc::connect(self.conn, sa, len) })
                })?;
                Ok("connected".into())
            }
            ["wait-writable"] => {
                let mut fd = libc::pollfd { fd: self.conn, events: libc::POLLOUT, revents: 0 };
                check(unsafe { libc::poll(&mut fd, 1, 10_000) })?;
                Ok(format!("revents {}", fd.revents))
            }
            ["burst", count, bytes] => {
                let buf = vec![b'x'; bytes.parse().expect("byte count")];
                let count: u32 = count.parse().expect("count");
                for _ in 0..count {
                    let n = unsafe {
                        libc::send(self.conn, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
                    };
                    if check_len(n)? != buf.len() {
                        return Err(io::Error::other("short send"));
                    }
                }
                Ok(format!("sent {count}"))
            }
            ["recv"] => {
                let mut buf = [0u8; 4096];
                let n = check_len(unsafe {
                    libc::recv(self.conn, buf.as_mut_ptr().cast(), buf.len(), 0)
                })?;
                Ok(format!("received {n}"))
            }
            ["recv-bytes", total] => {
                let total: usize = total.parse().expect("byte count");
                let (mut got, mut calls) = (0, 0u32);
                let mut buf = [0u8; 65536];
                while got < total {
                    let n = check_len(unsafe {
                        libc::recv(self.conn, buf.as_mut_ptr().cast(), buf.len(), 0)
                    })?;
                    calls += 1;
                    if n == 0 {
                        return Err(io::Error::other("early EOF"));
                    }
                    got += n;
                }
                Ok(format!("received {got} in {calls} calls"))
            }
            ["so-error"] => {
                let mut value: i32 = 0;
                let mut len = size_of::<i32>() as libc::socklen_t;
                check(unsafe {
                    libc::getsockopt(
                        self.conn,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut value as *mut i32).cast(),
                        &mut len,
                    )
                })?;
                Ok(if value == 0 {
                    "0".into()
                } else {
                    errno_name(&io::Error::from_raw_os_error(value))
                })
            }
            ["epoll-add", data] => {
                if self.epoll < 0 {
                    self.epoll = check(unsafe { libc::epoll_create1(0) })?;
                }
                let data = match *data {
                    "fd" => self.conn as u64,
                    "ptr" => &*self.token as *const u64 as u64,
                    other => panic!("epoll data {other}: fd or ptr"),
                };
                let mut event = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                    u64: data,
                };
                check(unsafe {
                    libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, self.conn, &mut event)
                })?;
                Ok(format!("data {data}"))
            }
            ["crowd", how, addr, port, count] => {
                let count = count.parse().expect("count");
                let accepted = self.crowd(&sockaddr(addr, port), count)?;
                match *how {
                    "epoll" => epoll_all(&accepted),
                    "poll" => poll_all(&accepted),
                    "select" => select_all(&accepted),
                    other => panic!("crowd {other}: epoll, poll or select"),
                }
            }
            ["epoll-wait"] => {
                let mut event = libc::epoll_event { events: 0, u64: 0 };
                let n = check(unsafe { libc::epoll_wait(self.epoll, &mut event, 1, 10_000) })?;
                let mask = event.events;
                Ok(format!("ready {n} mask {mask:#x}"))
            }
            ["poll"] => {
                let mut fd = libc::pollfd {
                    fd: self.conn,
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                };
                let n = check(unsafe { libc::poll(&mut fd, 1, 10_000) })?;
                Ok(format!("ready {n} revents {:#x}", fd.revents))
            }
            ["select"] => {
                let mut read: libc::fd_set = unsafe { zeroed() };
                unsafe { libc::FD_SET(self.conn, &mut read) };
                let mut timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
                let n = check(unsafe {
                    libc::select(
                        self.conn + 1,
                        &mut read,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        &mut timeout,
                    )
                })?;
                Ok(format!("ready {n}"))
            }
            ["write-every", ms, count, bytes] => {
                let buf = vec![b'h'; bytes.parse().expect("byte count")];
                let (ms, count): (u64, u32) =
                    (ms.parse().expect("ms"), count.parse().expect("count"));
                for _ in 0..count {
                    let n = unsafe {
                        libc::send(self.conn, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
                    };
                    check_len(n)?;
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                Ok(format!("wrote {count} times"))
            }
            ["heartbeat", bytes, timeout_ms] => {
                let buf = vec![b'?'; bytes.parse().expect("byte count")];
                check_len(unsafe {
                    libc::send(self.conn, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
                })?;
                let mut fd = libc::pollfd { fd: self.conn, events: libc::POLLIN, revents: 0 };
                let ready =
                    check(unsafe { libc::poll(&mut fd, 1, timeout_ms.parse().expect("timeout")) })?;
                if ready == 0 {
                    check(unsafe { libc::close(self.conn) })?;
                    return Ok("dead-peer-closed".into());
                }
                Ok("alive".into())
            }
            ["write", bytes] => {
                let buf = vec![b'x'; bytes.parse().expect("byte count")];
                let n = unsafe {
                    libc::send(self.conn, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
                };
                Ok(format!("wrote {}", check_len(n)?))
            }
            ["read-eof"] => {
                let mut buf = [0u8; 4096];
                loop {
                    let n = check_len(unsafe {
                        libc::recv(self.conn, buf.as_mut_ptr().cast(), buf.len(), 0)
                    })?;
                    if n == 0 {
                        return Ok("eof".into());
                    }
                }
            }
            ["fork-writer"] => {
                let (mut ready, mut done) = ([0i32; 2], [0u8; 1]);
                check(unsafe { libc::pipe(ready.as_mut_ptr()) })?;
                let child = check(unsafe { libc::fork() })?;
                if child == 0 {
                    // The child: dies with this peer, uses the shared socket, then holds it.
                    unsafe {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        libc::send(self.conn, b"!".as_ptr().cast(), 1, libc::MSG_NOSIGNAL);
                        libc::write(ready[1], b"w".as_ptr().cast(), 1);
                        loop {
                            libc::pause();
                        }
                    }
                }
                unsafe { libc::close(ready[1]) };
                // Returns once the child has written.
                check_len(unsafe { libc::read(ready[0], done.as_mut_ptr().cast(), 1) })?;
                unsafe { libc::close(ready[0]) };
                Ok(format!("forked {child}"))
            }
            ["keepalive", idle, intvl, cnt] => {
                let one: i32 = 1;
                setsockopt(self.conn, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &one)?;
                for (name, value) in [
                    (libc::TCP_KEEPIDLE, idle),
                    (libc::TCP_KEEPINTVL, intvl),
                    (libc::TCP_KEEPCNT, cnt),
                ] {
                    let value: i32 = value.parse().expect("a number");
                    setsockopt(self.conn, libc::IPPROTO_TCP, name, &value)?;
                }
                Ok("keepalive on".into())
            }
            ["echo", count] => {
                let mut byte = [0u8; 1];
                for _ in 0..count.parse::<u32>().expect("count") {
                    if check_len(unsafe { libc::recv(self.conn, byte.as_mut_ptr().cast(), 1, 0) })?
                        == 0
                    {
                        return Err(io::Error::other("early EOF"));
                    }
                    check_len(unsafe {
                        libc::send(self.conn, byte.as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
                    })?;
                }
                Ok(format!("echoed {count}"))
            }
            ["ping-every", ms, count] => {
                let mut byte = [b'p'; 1];
                for _ in 0..count.parse::<u32>().expect("count") {
                    check_len(unsafe {
                        libc::send(self.conn, byte.as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
                    })?;
                    if check_len(unsafe { libc::recv(self.conn, byte.as_mut_ptr().cast(), 1, 0) })?
                        == 0
                    {
                        return Err(io::Error::other("the peer closed"));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().expect("ms")));
                }
                Ok(format!("pinged {count}"))
            }
            ["linger0"] => {
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                setsockopt(self.conn, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
                Ok("linger0".into())
            }
            ["close"] => {
                check(unsafe { libc::close(self.conn) })?;
                Ok("closed".into())
            }
            ["close-listener"] => {
                check(unsafe { libc::close(self.listener) })?;
                Ok("closed".into())
            }
            ["refuse-flood", addr, port, count] => {
                let addr = sockaddr(addr, port);
                let count: u32 = count.parse().expect("count");
                for _ in 0..count {
                    let fd = socket_for(&addr)?;
                    let rc = with_sockaddr(&addr, |sa, len| {
                        check(unsafe { libc::connect(fd, sa, len) })
                    });
                    unsafe { libc::close(fd) };
                    match rc {
                        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                        Err(e) => return Err(e),
                        Ok(_) => {
                            return Err(io::Error::other("connect to a closed port succeeded"));
                        }
                    }
                }
                Ok(format!("flooded {count}"))
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

impl Peer {
    /// `count` connections to this peer's own listener, each with a byte to read, the last
    /// one's client closed; returns the accepted fds.
    fn crowd(&mut self, addr: &SocketAddr, count: usize) -> io::Result<Vec<i32>> {
        let mut accepted = Vec::with_capacity(count);
        let mut client = -1;
        for _ in 0..count {
            client = socket_for(addr)?;
            with_sockaddr(addr, |sa, len| check(unsafe { libc::connect(client, sa, len) }))?;
            let fd = check(unsafe {
                libc::accept(self.listener, std::ptr::null_mut(), std::ptr::null_mut())
            })?;
            check_len(unsafe { libc::send(client, b"x".as_ptr().cast(), 1, 0) })?;
            self.crowd.extend([client, fd]);
            accepted.push(fd);
        }
        check(unsafe { libc::close(client) })?;
        Ok(accepted)
    }
}

/// Each call reports every fd (each has a byte to read); the FIN may land after the first.
const CROWD_CALLS: usize = 100;

/// `fd F index I of N`: the last fd, once one epoll_wait reported it with EPOLLRDHUP.
fn epoll_all(fds: &[i32]) -> Reply {
    let epoll = check(unsafe { libc::epoll_create1(0) })?;
    for &fd in fds {
        let mut event =
            libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: fd as u64 };
        check(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) })?;
    }
    let last = *fds.last().expect("a crowd");
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; fds.len()];
    for _ in 0..CROWD_CALLS {
        let n = check(unsafe {
            libc::epoll_wait(epoll, events.as_mut_ptr(), fds.len() as i32, 10_000)
        })? as usize;
        let found = events[..n].iter().position(|e| e.u64 == last as u64);
        if let Some(index) = found
            && events[index].events & libc::EPOLLRDHUP as u32 != 0
        {
            return Ok(format!("fd {last} index {index} of {n}"));
        }
    }
    Err(io::Error::other("no EPOLLRDHUP"))
}

/// `fd F index I of N`: the last fd, once one poll reported it with POLLRDHUP.
fn poll_all(fds: &[i32]) -> Reply {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 })
        .collect();
    let index = fds.len() - 1;
    for _ in 0..CROWD_CALLS {
        let n = check(unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as _, 10_000) })?;
        if polled[index].revents & libc::POLLRDHUP != 0 {
            return Ok(format!("fd {} index {index} of {n}", fds[index]));
        }
    }
    Err(io::Error::other("no POLLRDHUP"))
}

/// `fd F index I of N`: the last fd, once one select reported it readable (all of the crowd's
/// descriptors must be below `FD_SETSIZE`).
fn select_all(fds: &[i32]) -> Reply {
    let index = fds.len() - 1;
    let highest = fds.iter().copied().max().expect("a crowd");
    for _ in 0..CROWD_CALLS {
        let mut read: libc::fd_set = unsafe { zeroed() };
        for &fd in fds {
            unsafe { libc::FD_SET(fd, &mut read) };
        }
        let mut timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
        let n = check(unsafe {
            libc::select(
                highest + 1,
                &mut read,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut timeout,
            )
        })?;
        if unsafe { libc::FD_ISSET(fds[index], &read) } {
            return Ok(format!("fd {} index {index} of {n}", fds[index]));
        }
    }
    Err(io::Error::other("never readable"))
}

fn sockaddr(addr: &str, port: &str) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().expect("IP address"), port.parse().expect("port"))
}

fn socket_for(addr: &SocketAddr) -> io::Result<i32> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    check(unsafe { libc::socket(family, libc::SOCK_STREAM, 0) })
}

fn with_sockaddr<T>(
    addr: &SocketAddr,
    f: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> T,
) -> T {
    match addr {
        SocketAddr::V4(v4) => {
            let mut sa: libc::sockaddr_in = unsafe { zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_port = v4.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            f((&sa as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_port = v6.port().to_be();
            sa.sin6_addr.s6_addr = v6.ip().octets();
            f((&sa as *const libc::sockaddr_in6).cast(), size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn local_port(fd: i32) -> io::Result<u16> {
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    check(unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in6).cast(), &mut len) })?;
    // sin_port and sin6_port sit at the same offset.
    Ok(u16::from_be(sa.sin6_port))
}

fn setsockopt<T>(fd: i32, level: i32, name: i32, value: &T) -> io::Result<i32> {
    check(unsafe {
        libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as u32)
    })
}

fn check(rc: i32) -> io::Result<i32> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn check_len(n: isize) -> io::Result<usize> {
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(n) => format!("E{n}"),
        None => e.to_string(),
    }
}
