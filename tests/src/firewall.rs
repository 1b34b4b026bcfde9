//! Black holes for half-open connections: nftables rules inside a test namespace.

use std::process::Command;

use crate::Netns;

/// Drops every TCP segment arriving in `ns` for `port`: the peer's writes vanish unacknowledged.
/// nftables is installed by `cargo xtask test`.
pub fn drop_tcp_input(ns: &Netns, port: u16) {
    let rule = format!("add rule inet cwtest input tcp dport {port} drop");
    for command in [
        "add table inet cwtest",
        "add chain inet cwtest input { type filter hook input priority 0 ; }",
        &rule,
    ] {
        let mut args = vec!["netns", "exec", &ns.name, "nft"];
        args.extend(command.split(' '));
        let output = Command::new("ip").args(&args).output().expect("run ip netns exec nft");
        assert!(
            output.status.success(),
            "nft {command} failed (nftables is installed by `cargo xtask test`): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
