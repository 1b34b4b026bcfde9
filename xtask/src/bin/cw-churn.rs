//! `cw-churn`: TCP connection churn on loopback for a fixed time, for `cargo xtask bench`.
//!
//! One acceptor thread accepts and closes at once; connector threads connect, wait for the
//! server's FIN (read returns 0) and close. Nothing uses SO_LINGER: every connection is a normal
//! FIN/FIN close with the same TCP events.
//!
//! TIME_WAIT: the server closes first, so it holds TIME_WAIT, which pins no client port. The
//! clients use few source addresses (127.0.0.2..) and the bench reuses one server port across
//! runs, so connect() walks the same 4-tuples again within seconds and each new SYN recycles
//! the server's TIME_WAIT for its tuple. That bounds TIME_WAITs to about source addresses x
//! ephemeral ports, below net.ipv4.tcp_max_tw_buckets: past that limit the kernel drops
//! TIME_WAITs, and the peer's late FIN or ACK then draws RSTs that would change the events.
//!
//! Prints one JSON object: completed connections, elapsed seconds, rate and failed attempts.

use std::{
    io, mem,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// How long past its duration a run may take before it is abandoned.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "cw-churn",
    about = "Connect/accept/close on loopback as fast as possible for a fixed time"
)]
struct Args {
    /// How long to churn, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Connector threads (one acceptor thread runs besides them).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    connectors: u32,
    /// Listener port on 127.0.0.1 (0: any free port). Reuse one port across runs so that the
    /// 4-tuples, and with them the server's TIME_WAITs, are recycled.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Client source addresses, from 127.0.0.2 upwards. Each adds up to one ephemeral port
    /// range of TIME_WAITs; more than 4 can overflow the default tcp_max_tw_buckets.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=249))]
    source_addresses: u32,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

#[derive(Default)]
struct Tally {
    completed: u64,
    failed: u64,
    first_error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // std sets SO_REUSEADDR, so a fixed port can be bound again while TIME_WAITs hold it.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .with_context(|| format!("binding the listener to 127.0.0.1:{}", args.port))?;
    let server = match listener.local_addr()? {
        std::net::SocketAddr::V4(addr) => addr,
        std::net::SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
    };
    let listener_fd = listener.as_raw_fd();
    let acceptor = thread::spawn(move || accept_and_close(&listener));

    let duration = Duration::from_secs_f64(args.seconds);
    // A connection blocks until its handshake and the server's FIN complete; if that stalls
    // (an accept error, a dropped SYN waiting for its retransmission), end the run anyway.
    thread::spawn(move || {
        thread::sleep(duration + GRACE);
        eprintln!("cw-churn: connections still open {} s after the deadline", GRACE.as_secs());
        std::process::exit(1);
    });
    let start_line = Arc::new(Barrier::new(args.connectors as usize + 1));
    let connectors: Vec<_> = (0..args.connectors)
        .map(|index| {
            let start_line = Arc::clone(&start_line);
            let sources = source_addresses(index, args.connectors, args.source_addresses);
            thread::spawn(move || {
                start_line.wait();
                connect_until(Instant::now() + duration, server, &sources)
            })
        })
        .collect();
    start_line.wait();
    let started = Instant::now();
    let mut total = Tally::default();
    for connector in connectors {
        let tally = connector.join().expect("connector thread panicked");
        total.completed += tally.completed;
        total.failed += tally.failed;
        total.first_error = total.first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();

    // shutdown() on a listening socket wakes the blocked accept() with EINVAL.
    // SAFETY: the listener is alive until the acceptor thread returns.
    unsafe { libc::shutdown(listener_fd, libc::SHUT_RDWR) };
    acceptor.join().expect("acceptor thread panicked");

    println!(
        "{}",
        serde_json::json!({
            "connections": total.completed,
            "elapsed_s": elapsed,
            "per_second": total.completed as f64 / elapsed,
            "failed": total.failed,
            "first_error": total.first_error,
            "connectors": args.connectors,
            "source_addresses": args.source_addresses,
        })
    );
    if total.completed == 0 {
        bail!("no connection completed");
    }
    Ok(())
}

/// Accepts and closes (by dropping the stream) until the listener is shut down.
fn accept_and_close(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(_) => return,
        }
    }
}

/// Connector `index` of `connectors` takes every `connectors`-th address from 127.0.0.2, so
/// threads do not compete for one address's ports (they share one only when outnumbering them).
fn source_addresses(index: u32, connectors: u32, count: u32) -> Vec<Ipv4Addr> {
    let address = |n: u32| Ipv4Addr::new(127, 0, 0, 2 + n as u8);
    let mine: Vec<_> = (index..count).step_by(connectors as usize).map(address).collect();
    if mine.is_empty() { vec![address(index % count)] } else { mine }
}

fn connect_until(deadline: Instant, server: SocketAddrV4, sources: &[Ipv4Addr]) -> Tally {
    let mut tally = Tally::default();
    for source in sources.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        match one_connection(*source, server) {
            Ok(()) => tally.completed += 1,
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert_with(|| format!("{source} -> {server}: {e}"));
            }
        }
    }
    tally
}

/// connect, read until the server's FIN, close.
fn one_connection(source: Ipv4Addr, server: SocketAddrV4) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor this function owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else; OwnedFd closes it on every path.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // Let connect() pick the port for the full 4-tuple instead of bind() reserving one per
    // address: bind(addr, 0) would skip every port still held by a TIME_WAIT.
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            mem::size_of_val(&one) as libc::socklen_t,
        )
    })?;
    sockaddr_call(fd, SocketAddrV4::new(source, 0), libc::bind)?;
    sockaddr_call(fd, server, libc::connect)?;
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`.
        match unsafe { libc::read(fd, (&raw mut byte).cast(), 1) } {
            0 => break,
            n if n > 0 => continue,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
    drop(socket);
    Ok(())
}

fn sockaddr_call(
    fd: RawFd,
    addr: SocketAddrV4,
    call: unsafe extern "C" fn(RawFd, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> io::Result<()> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the duration of the call.
    check(unsafe { call(fd, (&raw const sin).cast(), mem::size_of_val(&sin) as libc::socklen_t) })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
