//! A connection's family and two endpoints in 38 bytes, where a `Family` and two
//! `SocketAddr`s take 65: every tracked socket keeps them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::decode::Family;

// Bits of `Ends::kinds`.
const LOCAL_V6: u8 = 1;
const REMOTE_V6: u8 = 2;
const FAMILY_INET6: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    ips: [[u8; 16]; 2],
    ports: [u16; 2],
    kinds: u8,
}

impl Ends {
    pub fn new(family: Family, local: SocketAddr, remote: SocketAddr) -> Self {
        let (local_ip, local_v6) = ip_bytes(local.ip());
        let (remote_ip, remote_v6) = ip_bytes(remote.ip());
        let bit = |on: bool, bit: u8| if on { bit } else { 0 };
        Self {
            ips: [local_ip, remote_ip],
            ports: [local.port(), remote.port()],
            kinds: bit(local_v6, LOCAL_V6)
                | bit(remote_v6, REMOTE_V6)
                | bit(family == Family::Inet6, FAMILY_INET6),
        }
    }

    pub fn family(&self) -> Family {
        if self.kinds & FAMILY_INET6 != 0 { Family::Inet6 } else { Family::Inet }
    }

    pub fn local(&self) -> SocketAddr {
        self.addr(0, LOCAL_V6)
    }

    pub fn remote(&self) -> SocketAddr {
        self.addr(1, REMOTE_V6)
    }

    fn addr(&self, end: usize, v6: u8) -> SocketAddr {
        let bytes = self.ips[end];
        let ip = if self.kinds & v6 != 0 {
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        };
        SocketAddr::new(ip, self.ports[end])
    }
}

fn ip_bytes(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, false)
        }
        IpAddr::V6(v6) => (v6.octets(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::Ends;
    use crate::decode::Family;

    #[test]
    fn endpoints_come_back_as_given() {
        let cases = [
            (Family::Inet, "10.0.0.1:40000", "10.0.0.2:80"),
            (Family::Inet6, "[::ffff:10.0.0.1]:1", "[fe80::1]:65535"),
            // A v4-mapped peer stays IPv6; an IPv4 end stays IPv4, whatever the family says.
            (Family::Inet6, "0.0.0.0:0", "[::ffff:0.0.0.0]:0"),
        ];
        for (family, local, remote) in cases {
            let (local, remote) = (local.parse().unwrap(), remote.parse().unwrap());
            let ends = Ends::new(family, local, remote);
            assert_eq!((ends.family(), ends.local(), ends.remote()), (family, local, remote));
        }
    }
}
