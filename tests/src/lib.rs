//! Harness for connwatch's privileged integration tests: throwaway network namespaces joined by
//! veth, scripted peers in their own processes, and a tracer that waits for events.
//!
//! Test ports are below 32768, outside Linux's default ephemeral range: tests filter on their
//! ports in the kernel, and no other connection's client port may ever match them.

pub mod agent;
pub mod firewall;
pub mod netns;
pub mod peer;
pub mod session;
pub mod watching;

pub use connwatch_servers as servers;
pub use netns::{Netns, Topology};
pub use peer::Peer;
pub use session::Session;
pub use watching::Watching;

/// Integration tests load eBPF programs and create namespaces: they need root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "connwatch's integration tests need root (eBPF and network namespaces); run `sudo cargo xtask test`"
    );
}
