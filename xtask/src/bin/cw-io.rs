//! `cw-io`: small-message request/response traffic on established loopback connections for a
//! fixed time, for `cargo xtask bench`.
//!
//! The connections are opened before the clock starts and closed after it stops, so the timed
//! part is pure I/O: every client connection keeps one request of `--message-bytes` in flight;
//! the server echoes it back and the client sends the next one on receiving the reply. Both
//! sides are epoll loops (one thread each by default), as in a typical event-driven server, so
//! every operation goes through send, recv and epoll_wait.
//!
//! Prints one JSON object: round trips ("operations"), elapsed seconds, their rates.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// How long past its duration a run may take before it is abandoned.
const GRACE: Duration = Duration::from_secs(10);
/// epoll_wait's batch size.
const MAX_EVENTS: usize = 64;

#[derive(Parser)]
#[command(
    name = "cw-io",
    about = "Request/response ping-pong on loopback connections for a fixed time"
)]
struct Args {
    /// How long to exchange messages, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Established connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Bytes per request and per reply. At most 4096, so that a reply always fits in the
    /// socket buffers and a blocking write never waits for the peer.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    message_bytes: u32,
    /// Threads on each side; the connections are shared out among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (clients, servers) = connect_pairs(args.connections)?;
    let message = args.message_bytes as usize;
    let duration = Duration::from_secs_f64(args.seconds);
    thread::spawn(move || {
        thread::sleep(duration + GRACE);
        eprintln!("cw-io: still running {} s after the deadline", GRACE.as_secs());
        std::process::exit(1);
    });

    let threads = args.threads.min(args.connections) as usize;
    let start_line = Arc::new(Barrier::new(threads + 1));
    let servers: Vec<_> = share_out(servers, threads)
        .into_iter()
        .map(|streams| thread::spawn(move || echo(streams, message)))
        .collect();
    let clients: Vec<_> = share_out(clients, threads)
        .into_iter()
        .map(|streams| {
            let start_line = Arc::clone(&start_line);
            thread::spawn(move || {
                start_line.wait();
                ping(streams, message, Instant::now() + duration)
            })
        })
        .collect();
    start_line.wait();
    let started = Instant::now();
    let mut operations = 0;
    for client in clients {
        operations += client.join().expect("client thread panicked").context("client")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for server in servers {
        server.join().expect("server thread panicked").context("server")?;
    }

    let bytes = operations * 2 * message as u64;
    println!(
        "{}",
        serde_json::json!({
            "operations": operations,
            "elapsed_s": elapsed,
            "per_second": operations as f64 / elapsed,
            "bytes": bytes,
            "bytes_per_second": bytes as f64 / elapsed,
            "connections": args.connections,
            "message_bytes": message,
            "threads": threads,
        })
    );
    if operations == 0 {
        bail!("no round trip completed");
    }
    Ok(())
}

/// `count` established loopback connections: (client ends, server ends).
fn connect_pairs(count: u32) -> anyhow::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the loopback listener")?;
    let addr = listener.local_addr()?;
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let client = TcpStream::connect(addr).context("connecting")?;
        let (server, _) = listener.accept().context("accepting")?;
        // Requests and replies are single small writes: send each at once, as RPC clients do.
        for stream in [&client, &server] {
            stream.set_nodelay(true)?;
        }
        clients.push(client);
        servers.push(server);
    }
    Ok((clients, servers))
}

/// Deals `streams` out to `threads` groups, round-robin.
fn share_out(streams: Vec<TcpStream>, threads: usize) -> Vec<Vec<TcpStream>> {
    let mut groups: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, stream) in streams.into_iter().enumerate() {
        groups[index % threads].push(stream);
    }
    groups
}

/// One connection's end: the stream and how much of the current message has arrived.
struct Peer {
    stream: TcpStream,
    received: usize,
}

impl Peer {
    /// Reads what is there of the current message; true once it is complete.
    /// Err(UnexpectedEof) when the peer closed.
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.stream.read(&mut buf[self.received..]) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                self.received += n;
                let complete = self.received == buf.len();
                if complete {
                    self.received = 0;
                }
                Ok(complete)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Client side: keeps one request in flight per connection until the deadline, then shuts
/// each connection down once its last reply is in. Returns the round trips completed.
fn ping(streams: Vec<TcpStream>, message: usize, deadline: Instant) -> io::Result<u64> {
    let request = vec![b'q'; message];
    let epoll = Epoll::new()?;
    let mut peers = Vec::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        epoll.add(&stream, index as u64)?;
        stream.write_all(&request)?;
        peers.push(Peer { stream, received: 0 });
    }
    let mut buf = vec![0; message];
    let mut in_flight = peers.len();
    let mut operations = 0;
    while in_flight > 0 {
        let ready = epoll.wait()?;
        // One clock read per batch, not per reply.
        let sending = Instant::now() < deadline;
        for index in ready {
            let peer = &mut peers[index as usize];
            if !peer.receive(&mut buf)? {
                continue;
            }
            operations += 1;
            if sending {
                peer.stream.write_all(&request)?;
            } else {
                peer.stream.shutdown(std::net::Shutdown::Write)?;
                epoll.remove(&peer.stream)?;
                in_flight -= 1;
            }
        }
    }
    Ok(operations)
}

/// Server side: echoes every complete request until each client has shut its connection down.
fn echo(streams: Vec<TcpStream>, message: usize) -> io::Result<()> {
    let epoll = Epoll::new()?;
    let mut peers = Vec::new();
    for (index, stream) in streams.into_iter().enumerate() {
        epoll.add(&stream, index as u64)?;
        peers.push(Peer { stream, received: 0 });
    }
    let mut buf = vec![0; message];
    let mut open = peers.len();
    while open > 0 {
        for index in epoll.wait()? {
            let peer = &mut peers[index as usize];
            match peer.receive(&mut buf) {
                Ok(true) => peer.stream.write_all(&buf)?,
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    epoll.remove(&peer.stream)?;
                    open -= 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// A level-triggered epoll instance whose entries carry the caller's index.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, stream: &TcpStream, index: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: index };
        self.ctl(libc::EPOLL_CTL_ADD, stream, &mut event)
    }

    fn remove(&self, stream: &TcpStream) -> io::Result<()> {
        // The event is ignored for EPOLL_CTL_DEL but must be non-null on old kernels.
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        self.ctl(libc::EPOLL_CTL_DEL, stream, &mut event)
    }

    fn ctl(
        &self,
        op: libc::c_int,
        stream: &TcpStream,
        event: &mut libc::epoll_event,
    ) -> io::Result<()> {
        // SAFETY: both descriptors are open and `event` is valid for the call.
        let ret = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, stream.as_raw_fd(), event) };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// The indices of the ready entries (waits up to 1 s, then returns none).
    fn wait(&self) -> io::Result<impl Iterator<Item = u64>> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: `events` has room for MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), MAX_EVENTS as i32, 1000)
        };
        let n = match n {
            n if n >= 0 => n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => 0,
            _ => return Err(io::Error::last_os_error()),
        };
        Ok(events.into_iter().take(n).map(|event| event.u64))
    }
}
