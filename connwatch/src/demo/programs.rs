//! The demo's small programs: each falls into one trap (and one does everything right). Each
//! runs as its own process (the connwatch binary, re-executed), its client in one network
//! namespace and its server thread in another, so the two sides talk over a veth link.

use std::{
    ffi::CString,
    fs::File,
    io::{self, BufRead, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::correlate::Kind;

/// Every program and the finding it should produce (`None`: the well-behaved one).
pub const PROGRAMS: &[(&str, Option<Kind>)] = &[
    ("close-wait-leak", Some(Kind::CloseWaitLeak)),
    ("eof-ignored", Some(Kind::EofIgnored)),
    ("write-after-fin", Some(Kind::WriteAfterPeerClose)),
    ("half-open", Some(Kind::HalfOpenWrite)),
    ("soerr-healthy", Some(Kind::SoErrorFalseHealthy)),
    ("rst-unnoticed", Some(Kind::ResetUnnoticed)),
    ("err-ignored", Some(Kind::ErrorIgnored)),
    ("conn-unverified", Some(Kind::ConnectUnverified)),
    ("well-behaved", None),
];

/// Where a program's server lives.
pub struct Place {
    /// The server's network namespace (a /run/netns path).
    pub server_netns: String,
    pub server: Ipv4Addr,
    pub port: u16,
}

/// Runs one program: waits for `go` on stdin, plays its part, then holds its sockets until
/// stdin closes (the demo ends).
pub fn run(name: &str, place: &Place) -> io::Result<()> {
    name_thread(name);
    let mut stdin = io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let held = play(name, place, &mut stdin)?;
    // Hold every socket until the demo is over: leaks must stay leaks while it watches.
    let _ = stdin.read_to_end(&mut Vec::new());
    drop(held);
    Ok(())
}

fn play(name: &str, place: &Place, stdin: &mut impl BufRead) -> io::Result<Vec<Held>> {
    let addr = SocketAddrV4::new(place.server, place.port);
    let mut held = Vec::new();
    match name {
        "close-wait-leak" => {
            held.push(serve(place, name, |s| Ok(Held::Stream(s)))?);
            drop(TcpStream::connect(addr)?);
        }
        "eof-ignored" => {
            held.push(serve(place, name, |s| {
                let epoll = Epoll::watch(&s)?;
                // The bug: readiness is taken to mean data; the 0 from recv is never read as EOF.
                for _ in 0..3 {
                    epoll.wait()?;
                    let _ = (&s).read(&mut [0; 512])?;
                }
                Ok(Held::Stream(s))
            })?);
            drop(TcpStream::connect(addr)?);
        }
        "write-after-fin" => {
            held.push(serve(place, name, |mut s| {
                wait_for_peer_close(&s)?;
                // The bug: told the peer closed (POLLRDHUP), it writes a reply anyway; the
                // peer has gone and answers with RST.
                s.write_all(b"late reply")?;
                Ok(Held::Nothing)
            })?);
            drop(TcpStream::connect(addr)?);
        }
        "half-open" => {
            held.push(serve(place, name, |s| Ok(Held::Stream(s)))?);
            let mut client = TcpStream::connect(addr)?;
            // The demo cuts the server's link: from now on nothing arrives there.
            println!("cut-link");
            io::stdout().flush()?;
            stdin.read_line(&mut String::new())?;
            // The bug: writes keep succeeding, so the peer must be alive.
            for _ in 0..12 {
                client.write_all(&[b'.'; 100])?;
                thread::sleep(Duration::from_millis(250));
            }
            held.push(Held::Stream(client));
        }
        "soerr-healthy" => {
            held.push(serve(place, name, |mut s| {
                // A pooled connection, idle while the peer closed it (the program is not
                // told: it neither reads nor polls).
                wait_for_kernel_state(&s, connwatch_common::tcp::TCP_CLOSE_WAIT)?;
                // The bug: SO_ERROR == 0 taken as "healthy", so the request goes out.
                let healthy = s.take_error()?.is_none();
                assert!(healthy, "SO_ERROR is 0 in CLOSE_WAIT");
                s.write_all(b"request")?;
                Ok(Held::Nothing)
            })?);
            drop(TcpStream::connect(addr)?);
        }
        "rst-unnoticed" => {
            held.push(serve(place, name, |s| Ok(Held::Stream(s)))?);
            abort(TcpStream::connect(addr)?)?;
        }
        "err-ignored" => {
            held.push(serve(place, name, |s| {
                let first = (&s).read(&mut [0; 512]);
                assert!(first.is_err(), "the reset is reported");
                // The bug: as if it were a one-off, read again.
                let _ = (&s).read(&mut [0; 512]);
                Ok(Held::Nothing)
            })?);
            abort(TcpStream::connect(addr)?)?;
        }
        "conn-unverified" => {
            let closed = SocketAddrV4::new(place.server, place.port + 1);
            let fd = connect_nonblocking(closed)?;
            wait_writable(fd)?;
            // The bug: writable after connect taken to mean connected.
            // SAFETY: a valid fd; the buffer outlives the call.
            unsafe { libc::send(fd, b"hello".as_ptr().cast(), 5, libc::MSG_NOSIGNAL) };
            // SAFETY: closing our own fd.
            unsafe { libc::close(fd) };
        }
        "well-behaved" => well_behaved(place)?,
        other => return Err(io::Error::other(format!("no demo program {other}"))),
    }
    Ok(held)
}

/// Everything right: a request and reply read to EOF, SO_ERROR read after an async connect,
/// and a reset answered by closing.
fn well_behaved(place: &Place) -> io::Result<()> {
    let addr = SocketAddrV4::new(place.server, place.port);
    let server = serve(place, "well-behaved", |mut s| {
        let mut request = [0; 7];
        s.read_exact(&mut request)?;
        s.write_all(b"reply")?;
        Ok(Held::Nothing)
    })?;
    let mut client = TcpStream::connect(addr)?;
    client.write_all(b"request")?;
    let mut reply = Vec::new();
    client.read_to_end(&mut reply)?;
    drop(client);
    drop(server);

    let fd = connect_nonblocking(SocketAddrV4::new(place.server, place.port + 1))?;
    wait_writable(fd)?;
    let mut error: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: a valid fd and out-pointers to locals.
    unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut error).cast(), &mut len)
    };
    assert_eq!(error, libc::ECONNREFUSED, "the refused connect is found");
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };

    let elsewhere =
        Place { port: place.port + 2, server_netns: place.server_netns.clone(), ..*place };
    let resetter = serve(&elsewhere, "well-behaved", |s| abort(s).map(|()| Held::Nothing))?;
    let client = TcpStream::connect(SocketAddrV4::new(place.server, elsewhere.port))?;
    let _ = (&client).read(&mut [0; 16]);
    drop(client);
    drop(resetter);
    Ok(())
}

/// What a program keeps open until the demo ends.
pub enum Held {
    Stream(TcpStream),
    Thread(thread::JoinHandle<io::Result<Held>>),
    Nothing,
}

/// Starts a server thread in the server's namespace; returns once it listens. The thread
/// accepts one connection and hands it to `behave`.
fn serve(
    place: &Place,
    name: &str,
    behave: impl FnOnce(TcpStream) -> io::Result<Held> + Send + 'static,
) -> io::Result<Held> {
    let netns = File::open(&place.server_netns)?;
    let name = name.to_string();
    let addr = SocketAddrV4::new(place.server, place.port);
    let (listening, is_listening) = mpsc::channel();
    let thread = thread::spawn(move || {
        name_thread(&name);
        // SAFETY: a valid namespace fd; setns affects this thread only.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::bind(addr)?;
        let _ = listening.send(());
        let (stream, _) = listener.accept()?;
        behave(stream)
    });
    is_listening.recv().map_err(|_| io::Error::other("the demo server could not listen"))?;
    Ok(Held::Thread(thread))
}

/// Closes with SO_LINGER 0: the peer receives an RST.
fn abort(stream: TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid fd and a linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    drop(stream);
    Ok(())
}

/// Waits (without reading) until the peer has closed its side.
fn wait_for_peer_close(s: &TcpStream) -> io::Result<()> {
    let mut fd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut fd, 1, 10_000) } != 1 {
        return Err(io::Error::other("the peer did not close"));
    }
    Ok(())
}

/// Waits until the kernel has the socket in `state`, asking through TCP_INFO (which tells
/// the application nothing connwatch counts as being told).
fn wait_for_kernel_state(s: &TcpStream, state: u8) -> io::Result<()> {
    for _ in 0..1000 {
        // SAFETY: tcp_info is plain integers; the kernel fills at most `len` bytes.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid fd and out-pointers to locals.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if info.tcpi_state == state {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::other("the socket never reached the expected state"))
}

fn connect_nonblocking(addr: SocketAddrV4) -> io::Result<i32> {
    // SAFETY: plain socket calls on a socket we own; sockaddr_in is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
        let rc = libc::connect(fd, (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as u32);
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn wait_writable(fd: i32) -> io::Result<()> {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pollfd, 1, 10_000) } != 1 {
        return Err(io::Error::other("connect did not finish"));
    }
    Ok(())
}

/// epoll on one socket, as an event loop would use it.
struct Epoll(i32);

impl Epoll {
    fn watch(s: &TcpStream) -> io::Result<Self> {
        // SAFETY: plain epoll calls on fds we own; the event struct is fully initialised.
        unsafe {
            let epfd = libc::epoll_create1(0);
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: s.as_raw_fd() as u64,
            };
            if epfd < 0
                || libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut event) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(Self(epfd))
        }
    }

    fn wait(&self) -> io::Result<()> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: a valid epoll fd and room for one event.
        if unsafe { libc::epoll_wait(self.0, &mut event, 1, 10_000) } != 1 {
            return Err(io::Error::other("nothing became ready"));
        }
        Ok(())
    }
}

/// Names this thread (the kernel's `comm`), so findings name the program, not "connwatch".
fn name_thread(name: &str) {
    let name = CString::new(&name[..name.len().min(15)]).expect("no NUL in a program name");
    // SAFETY: a valid NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
