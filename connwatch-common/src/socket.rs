//! Values of the kernel maps that give each socket its identity and owner.

use crate::assert_size;

/// `tgid` of an owner nobody has seen in process context yet. Never a real process: pid 0 is the
/// idle task, which owns no sockets.
pub const OWNER_UNKNOWN: u32 = 0;

/// The process that last touched a socket in process context (connect, accept, send, recv,
/// close, listen).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
assert_size!(Owner, 24);

impl Owner {
    pub const UNKNOWN: Self = Self { tgid: OWNER_UNKNOWN, _pad: 0, comm: [0; 16] };
}

/// One socket's life as the kernel map records it, keyed by the `struct sock` address.
///
/// The address alone is not an identity: sockets are freed and their memory reused. `birth_ns`
/// (set when a connection starts: connect, listen, or a child created from a listener) tells two
/// lives at one address apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub birth_ns: u64,
    pub owner: Owner,
}
assert_size!(SocketInfo, 32);

/// A listening socket, found again when it spawns a child in softirq context. Keyed by network
/// namespace (the `struct net` address) and port because the child has no pointer to its parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub net: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}
assert_size!(ListenerKey, 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::SocketInfo {}
    unsafe impl aya::Pod for super::ListenerKey {}
}
