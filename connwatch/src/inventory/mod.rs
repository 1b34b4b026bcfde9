//! The second source of kernel truth beside `probes/`: the TCP sockets that exist right now, in
//! every network namespace, with the processes that hold them. At start it finds what predates
//! the agent (a CLOSE_WAIT leak older than connwatch is still a leak); afterwards it gives the
//! host's socket counts by state.

pub mod netns;
pub mod owners;
pub mod sock_diag;
pub mod socket_settings;

use std::net::SocketAddr;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("sock_diag netlink query failed: {0} (the agent needs root or CAP_NET_ADMIN)")]
    Netlink(std::io::Error),
    #[error("malformed sock_diag reply: {0}")]
    Reply(String),
    #[error("entering network namespace {path}: {source} (needs CAP_SYS_ADMIN and CAP_SYS_PTRACE)")]
    Namespace { path: String, source: std::io::Error },
}

/// One TCP socket as sock_diag reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenSocket {
    /// The network namespace (inode of its `ns/net` file).
    pub netns: u64,
    /// Kernel TCP state (`TCP_ESTABLISHED` ..).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's inode, which /proc/PID/fd links name (`socket:[inode]`); 0 for sockets no
    /// descriptor holds (TIME_WAIT, orphans).
    pub inode: u64,
    /// The kernel's socket cookie: stable for the socket's life, unique on the host.
    pub cookie: u64,
}

/// Every TCP socket in every network namespace, read now.
pub fn sockets() -> Result<Vec<SeenSocket>, InventoryError> {
    look().map(|look| look.sockets)
}

/// One look at the host: how many network namespaces, and their TCP sockets.
pub struct Look {
    pub namespaces: usize,
    pub sockets: Vec<SeenSocket>,
}

pub fn look() -> Result<Look, InventoryError> {
    let namespaces = netns::all();
    let mut sockets = Vec::new();
    for ns in &namespaces {
        match netns::within(ns, || sock_diag::tcp_sockets(ns.inode)) {
            Ok(found) => sockets.extend(found),
            // The agent's own namespace must work: anything else there is a real problem.
            Err(e) if ns.path.starts_with("/proc/self") => return Err(e),
            // A namespace whose last process exits meanwhile cannot be entered: skip it.
            Err(_) => {}
        }
    }
    Ok(Look { namespaces: namespaces.len(), sockets })
}
