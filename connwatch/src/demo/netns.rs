//! Network namespaces that exist for one run (a demo, a test) and are always removed, even
//! when it panics.

use std::process::Command;

/// Runs `ip` with arguments; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One named network namespace; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        // A namespace left behind by a killed run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics when it fails.
    pub fn exec(&self, command: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        ip(&args);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A client and a server namespace joined by a veth pair, with IPv4 and IPv6 addresses.
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
    server_link: String,
}

impl Topology {
    pub const CLIENT_V4: &str = "10.201.0.1";
    pub const SERVER_V4: &str = "10.201.0.2";
    pub const CLIENT_V6: &str = "fd00:c0:ffee::1";
    pub const SERVER_V6: &str = "fd00:c0:ffee::2";

    /// `tag` must be unique among concurrent users (at most 8 characters).
    pub fn new(tag: &str) -> Self {
        assert!(tag.len() <= 8, "interface names are limited to 15 bytes");
        let pid = std::process::id();
        let client = Netns::new(format!("cw-{tag}-c-{pid}"));
        let server = Netns::new(format!("cw-{tag}-s-{pid}"));
        let (veth_c, veth_s) = Self::veths(tag);
        let _ = Command::new("ip").args(["link", "del", &veth_c]).output();
        ip(&["link", "add", &veth_c, "type", "veth", "peer", "name", &veth_s]);
        ip(&["link", "set", &veth_c, "netns", &client.name]);
        ip(&["link", "set", &veth_s, "netns", &server.name]);
        for (ns, dev, v4, v6) in [
            (&client, &veth_c, Self::CLIENT_V4, Self::CLIENT_V6),
            (&server, &veth_s, Self::SERVER_V4, Self::SERVER_V6),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.exec(&["ip", "-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        Self { client, server, server_link: veth_s }
    }

    fn veths(tag: &str) -> (String, String) {
        (format!("cwc{tag}"), format!("cws{tag}"))
    }

    /// Takes the server's link down: whatever the client sends now vanishes (a black hole).
    pub fn cut_server_link(&self) {
        self.server.exec(&["ip", "link", "set", &self.server_link, "down"]);
    }
}
