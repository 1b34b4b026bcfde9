//! The inventory, taken on its own thread (the only one that keeps the capabilities to enter
//! other network namespaces) and handed to the agent as updates: at start, the sockets that
//! predate it; then, every `--inventory-interval`, the host's sockets by state.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use connwatch_common::tcp::{TCP_CLOSE, TCP_CLOSE_WAIT, state_name};

use super::caps;
use crate::{
    correlate::liveness::{Settings, SocketProber},
    decode::{Comm, Detail, Event, Family, Owner, SockId, TcpState},
    inventory::socket_settings,
    inventory::{
        self, SeenSocket,
        owners::{self, Holder},
    },
};

/// A socket in CLOSE_WAIT when the agent started, and the process holding it.
pub struct SeenAtStart {
    pub socket: SeenSocket,
    pub holder: Holder,
}

impl SeenAtStart {
    /// Whether the `--pid`, `--port` and `--comm` filters let it through.
    pub fn wanted(&self, f: &crate::probes::Filters) -> bool {
        let ports = [self.socket.local.port(), self.socket.remote.port()];
        (f.pids.is_empty() || f.pids.contains(&self.holder.pid))
            && (f.ports.is_empty() || ports.iter().any(|p| f.ports.contains(p)))
            && f.comm.as_ref().is_none_or(|c| *c == self.holder.comm)
    }

    /// The fact the correlator learns: held, peer closed, since before the agent.
    pub fn event(&self, sock: SockId, now: u64) -> Event {
        let owner = Owner { pid: self.holder.pid, comm: Comm::from(self.holder.comm.as_str()) };
        let state = TcpState::new(TCP_CLOSE_WAIT).expect("a valid state");
        seen(sock, self.socket.local, self.socket.remote, now, Some(owner), state, true)
    }
}

/// The fact that a socket known from the start has left CLOSE_WAIT or gone.
pub fn gone(sock: SockId, local: SocketAddr, remote: SocketAddr, now: u64) -> Event {
    let state = TcpState::new(TCP_CLOSE).expect("a valid state");
    seen(sock, local, remote, now, None, state, false)
}

fn seen(
    sock: SockId,
    local: SocketAddr,
    remote: SocketAddr,
    now: u64,
    owner: Option<Owner>,
    state: TcpState,
    at_start: bool,
) -> Event {
    let family = if local.is_ipv4() { Family::Inet } else { Family::Inet6 };
    Event {
        ts_ns: now,
        until_ns: now,
        owner,
        sock,
        family,
        local,
        remote,
        detail: Detail::Seen { state, at_start },
    }
}

pub struct Update {
    pub namespaces: usize,
    pub by_state: BTreeMap<&'static str, u64>,
    /// Cookies of every socket in CLOSE_WAIT now, sorted.
    pub close_wait_cookies: Vec<u64>,
    /// The first update only: CLOSE_WAIT sockets some process holds.
    pub at_start: Vec<SeenAtStart>,
}

pub struct InventoryFeed {
    updates: Receiver<Update>,
    first: Option<Update>,
    problem: Option<String>,
    probes: mpsc::Sender<ProbeRequest>,
}

/// A socket's settings, asked of the inventory thread (the one with CAP_SYS_PTRACE).
struct ProbeRequest {
    pid: u32,
    fd: i32,
    local: SocketAddr,
    remote: SocketAddr,
    reply: mpsc::Sender<Option<Settings>>,
}

/// The liveness audit's prober for the agent: it asks the inventory thread.
pub struct ThreadProber(mpsc::Sender<ProbeRequest>);

impl SocketProber for ThreadProber {
    fn settings(
        &mut self,
        pid: u32,
        fd: i32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<Settings> {
        let (reply, answer) = mpsc::channel();
        self.0.send(ProbeRequest { pid, fd, local, remote, reply }).ok()?;
        answer.recv_timeout(Duration::from_secs(2)).ok().flatten()
    }
}

impl InventoryFeed {
    /// Starts the inventory thread and waits for its first look.
    pub fn start(interval: Duration) -> anyhow::Result<Self> {
        let (send, updates) = mpsc::channel();
        let (first_send, first) = mpsc::channel();
        let (probes, requests) = mpsc::channel::<ProbeRequest>();
        std::thread::Builder::new().name("inventory".into()).spawn(move || {
            if let Err(e) = caps::keep_only(&caps::INVENTORY) {
                eprintln!("connwatch: inventory thread: cannot drop capabilities: {e}");
            }
            let _ = first_send.send(take(true));
            let mut next = Instant::now() + interval;
            loop {
                match requests.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(r) => {
                        let _ = r
                            .reply
                            .send(socket_settings::read(r.pid, r.fd, r.local, r.remote).ok());
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return, // the agent is gone
                    Err(RecvTimeoutError::Timeout) => {}
                }
                next = Instant::now() + interval;
                match take(false) {
                    Ok(update) => {
                        if send.send(update).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("connwatch: inventory: {e}"),
                }
            }
        })?;
        let (first, problem) = match first.recv()? {
            Ok(update) => (Some(update), None),
            Err(e) => (None, Some(format!("startup inventory failed: {e}"))),
        };
        Ok(Self { updates, first, problem, probes })
    }

    /// A prober for the liveness audit that asks this feed's thread.
    pub fn prober(&self) -> ThreadProber {
        ThreadProber(self.probes.clone())
    }

    pub fn problem(&self) -> Option<String> {
        self.problem.clone()
    }

    /// The next update, if one is waiting.
    pub fn next(&mut self) -> Option<Update> {
        self.first.take().or_else(|| self.updates.try_recv().ok())
    }
}

fn take(at_start: bool) -> Result<Update, inventory::InventoryError> {
    let inventory::Look { namespaces, sockets } = inventory::look()?;
    let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut close_wait_cookies = Vec::new();
    for s in &sockets {
        *by_state.entry(state_name(s.state).unwrap_or("UNKNOWN")).or_default() += 1;
        if s.state == TCP_CLOSE_WAIT {
            close_wait_cookies.push(s.cookie);
        }
    }
    close_wait_cookies.sort_unstable();
    let mut found = Vec::new();
    if at_start && !close_wait_cookies.is_empty() {
        let holders = owners::by_inode();
        for socket in sockets.into_iter().filter(|s| s.state == TCP_CLOSE_WAIT && s.inode != 0) {
            if let Some(holder) = holders.get(&socket.inode) {
                found.push(SeenAtStart { holder: holder.clone(), socket });
            }
        }
    }
    Ok(Update { namespaces, by_state, close_wait_cookies, at_start: found })
}
