//! Epoll registrations made before connwatch started. The kernel learns registrations at
//! `epoll_ctl(ADD)`; those older than connwatch (an agent restarted under a long-running
//! server) are read from `/proc/PID/fdinfo/EPFD` instead and put into `EPOLL_WATCH` as the
//! kernel would have: the registered descriptor, which the epoll result program resolves to
//! its socket inside the process whenever the registration is reported.

use std::{fs, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, MapError},
};
use connwatch_common::{
    names::{MAP_EPOLL_WATCH, MAX_EPOLL_REGISTRATIONS},
    socket::{EpollKey, EpollTarget},
};

/// At most this many are seeded: the rest of the map is left for registrations made from now.
pub const SEED_LIMIT: usize = MAX_EPOLL_REGISTRATIONS as usize / 2;

/// `BPF_NOEXIST`: a registration the kernel learnt since the programs attached is kept.
const NO_EXIST: u64 = 1;

/// One registration of an epoll file, from its fdinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The registered descriptor, as numbered in the process that registered it.
    pub fd: i32,
    pub data: u64,
    /// The registered file's inode number: the descriptor still names that file only if
    /// `/proc/PID/fd/FD` reads `socket:[INODE]`.
    pub inode: u64,
}

/// Every registration in the text of `/proc/PID/fdinfo/EPFD`
/// (`tfd: 5 events: 19 data: 5 pos:0 ino:2d03 sdev:8`, hex where the kernel prints hex).
pub fn parse_fdinfo(text: &str) -> Vec<Registration> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Registration> {
    let mut words = line.split_whitespace();
    if words.next()? != "tfd:" {
        return None;
    }
    let fd = words.next()?.parse().ok()?;
    let (mut data, mut inode) = (None, None);
    while let Some(word) = words.next() {
        match word {
            "data:" => data = u64::from_str_radix(words.next()?, 16).ok(),
            _ => {
                if let Some(hex) = word.strip_prefix("ino:") {
                    inode = u64::from_str_radix(hex, 16).ok();
                }
            }
        }
    }
    Some(Registration { fd, data: data?, inode: inode? })
}

/// Seeds `EPOLL_WATCH` with the socket registrations of every process but connwatch itself;
/// returns how many. Processes that exit or close descriptors meanwhile are passed over.
pub fn seed(ebpf: &mut Ebpf, self_pid: u32) -> Result<usize, MapError> {
    let map = ebpf.map_mut(MAP_EPOLL_WATCH).expect("connwatch-ebpf defines EPOLL_WATCH");
    let mut watch: HashMap<_, EpollKey, EpollTarget> = HashMap::try_from(map)?;
    let mut seeded = 0;
    for (tgid, epfd, registration) in socket_registrations(Path::new("/proc"), self_pid) {
        if seeded == SEED_LIMIT {
            break;
        }
        let key = EpollKey { tgid, epfd, data: registration.data };
        let target = EpollTarget { fd: registration.fd, _pad: 0 };
        match watch.insert(key, target, NO_EXIST) {
            Ok(()) => seeded += 1,
            // Learnt by the kernel since it attached (EEXIST): the kernel's is the newer.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(seeded)
}

/// `(process, epoll fd, registration)` for every registration of a socket that its process
/// still holds under the registered number.
fn socket_registrations(
    proc: &Path,
    self_pid: u32,
) -> impl Iterator<Item = (u32, i32, Registration)> + '_ {
    let pids = fs::read_dir(proc).into_iter().flatten().flatten().filter_map(move |entry| {
        entry.file_name().to_str()?.parse::<u32>().ok().filter(|&pid| pid != self_pid)
    });
    pids.flat_map(move |pid| {
        let process = proc.join(pid.to_string());
        let fd_dir = process.join("fd");
        let epolls: Vec<i32> = fs::read_dir(&fd_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fd| fs::read_link(fd.path()).is_ok_and(|l| l == Path::new(EVENTPOLL)))
            .filter_map(|fd| fd.file_name().to_str()?.parse().ok())
            .collect();
        epolls.into_iter().flat_map(move |epfd| {
            let text = fs::read_to_string(process.join("fdinfo").join(epfd.to_string()));
            let fd_dir = fd_dir.clone();
            parse_fdinfo(&text.unwrap_or_default())
                .into_iter()
                .filter(move |r| {
                    let link = fs::read_link(fd_dir.join(r.fd.to_string()));
                    link.is_ok_and(|l| l.to_str() == Some(&format!("socket:[{}]", r.inode)))
                })
                .map(move |r| (pid, epfd, r))
        })
    })
}

const EVENTPOLL: &str = "anon_inode:[eventpoll]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_become_registrations() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n\
                    tfd:        5 events:       19 data:                5  pos:0 ino:2d03 sdev:8\n\
                    tfd:       12 events: 80002019 data:     7f3a2c001230  pos:0 ino:3f1 sdev:8\n";
        assert_eq!(
            parse_fdinfo(text),
            [
                Registration { fd: 5, data: 5, inode: 0x2d03 },
                Registration { fd: 12, data: 0x7f3a_2c00_1230, inode: 0x3f1 },
            ]
        );
    }

    #[test]
    fn a_line_without_data_or_inode_is_passed_over() {
        assert_eq!(parse_fdinfo("tfd: 5 events: 19 pos:0 ino:2d03\ntfd: 6 data: 1\n"), []);
    }

    /// This test's own epoll registration of a TCP socket is found, under the fd it holds.
    #[test]
    fn a_live_registration_is_found_in_proc() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0);
        let fd = listener.as_raw_fd();
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0xfeed };
        assert_eq!(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) }, 0);
        let me = std::process::id();
        let found: Vec<_> = socket_registrations(Path::new("/proc"), 0)
            .filter(|(pid, e, _)| (*pid, *e) == (me, epfd))
            .collect();
        unsafe { libc::close(epfd) };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].2.fd, found[0].2.data), (fd, 0xfeed));
    }
}
