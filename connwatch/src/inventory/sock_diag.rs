//! TCP sockets of the current network namespace, through netlink sock_diag (the rust-netlink
//! crates build and parse the messages).

use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::{InventoryError, SeenSocket};

/// Every IPv4 and IPv6 TCP socket in this thread's network namespace, in every state.
pub fn tcp_sockets(netns: u64) -> Result<Vec<SeenSocket>, InventoryError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(InventoryError::Netlink)?;
    socket.bind_auto().map_err(InventoryError::Netlink)?;
    socket.connect(&NetlinkAddr::new(0, 0)).map_err(InventoryError::Netlink)?;
    let mut found = Vec::new();
    for (family, any) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
        dump(&socket, family, any, netns, &mut found)?;
    }
    Ok(found)
}

fn dump(
    socket: &Socket,
    family: u8,
    any: SocketId,
    netns: u64,
    found: &mut Vec<SeenSocket>,
) -> Result<(), InventoryError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: any,
    });
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0).map_err(InventoryError::Netlink)?;

    let mut buffer = vec![0; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0).map_err(InventoryError::Netlink)?;
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buffer[offset..size])
                .map_err(|e| InventoryError::Reply(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let h = &response.header;
                    let id = &h.socket_id;
                    found.push(SeenSocket {
                        netns,
                        state: h.state,
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                        inode: u64::from(h.inode),
                        cookie: u64::from_ne_bytes(id.cookie),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(InventoryError::Reply(format!("netlink error {e:?}")));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}
