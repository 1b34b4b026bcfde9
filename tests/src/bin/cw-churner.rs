//! A small, correct churn program: a server thread echoes one byte per connection and closes;
//! the client connects, writes one byte, reads the echo and closes with SO_LINGER 0 (an RST),
//! up to RATE connections a second (0: as fast as it can). `cw-churner PORT SECONDS RATE`;
//! prints the number of connections made.
//! Several run side by side to check that socket identities hold under concurrency.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, seconds, rate] = args.as_slice() else {
        eprintln!("usage: cw-churner PORT SECONDS RATE");
        std::process::exit(2);
    };
    let rate: u64 = rate.parse().expect("rate");
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.parse().expect("port"));
    let listener = TcpListener::bind(addr).expect("bind");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_ok() {
                let _ = stream.write_all(&byte);
            }
        }
    });
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds.parse().expect("seconds"));
    let mut made = 0u64;
    while Instant::now() < until {
        // Pacing: connection n starts no earlier than n / RATE seconds in.
        if let Some(offset) = (made * 1_000_000).checked_div(rate) {
            let due = start + Duration::from_micros(offset);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(b"x").expect("write");
        let mut echo = [0u8; 1];
        stream.read_exact(&mut echo).expect("read the echo");
        abort(&stream);
        made += 1;
    }
    println!("{made}");
}

/// SO_LINGER 0: close sends RST, so the client's port is free at once.
fn abort(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid fd and a linger struct of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
}
