//! A JSON object written piece by piece into a byte buffer, for the one line per event that
//! `trace --json` writes. `write!` through `core::fmt` cost about half of trace's CPU under
//! churn (`perf`: the formatting machinery, padding, and a buffered write per piece); numbers
//! go through `itoa`, strings through serde_json, and everything else is copied as bytes.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
};

#[derive(Default)]
pub struct JsonLine {
    bytes: Vec<u8>,
}

impl JsonLine {
    /// Empties the line, keeping its room.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// JSON text as it is: punctuation, keys, names known to need no escaping.
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.bytes.extend_from_slice(text.as_bytes());
        self
    }

    pub fn uint(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.bytes.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    /// A JSON string, quoted and escaped by serde_json (process names may hold anything).
    pub fn string(&mut self, text: &str) -> &mut Self {
        // Writing into a Vec cannot fail, and a `str` always serialises.
        let _ = serde_json::to_writer(&mut self.bytes, text);
        self
    }

    /// Lowercase hexadecimal, no prefix.
    pub fn hex(&mut self, n: u64) -> &mut Self {
        let digits = (64 - (n | 1).leading_zeros()).div_ceil(4);
        for shift in (0..digits).rev() {
            self.bytes.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
        }
        self
    }

    /// An address as `IpAddr`'s `Display` writes it.
    pub fn ip(&mut self, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => self.ipv4(v4),
            // Rare on the hot path; the standard library knows the compression rules.
            IpAddr::V6(v6) => {
                let _ = write!(self.bytes, "{v6}");
                self
            }
        }
    }

    fn ipv4(&mut self, ip: Ipv4Addr) -> &mut Self {
        let [a, b, c, d] = ip.octets();
        self.uint(a).raw(".").uint(b).raw(".").uint(c).raw(".").uint(d)
    }
}

#[cfg(test)]
mod tests {
    use super::JsonLine;

    fn written(f: impl FnOnce(&mut JsonLine)) -> String {
        let mut line = JsonLine::default();
        f(&mut line);
        String::from_utf8(line.as_bytes().to_vec()).expect("UTF-8")
    }

    #[test]
    fn numbers_and_addresses_read_as_the_standard_formatting_writes_them() {
        for n in [0, 1, 9, 10, 0xabc, 0x10, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(written(|l| _ = l.uint(n)), n.to_string());
            assert_eq!(written(|l| _ = l.hex(n)), format!("{n:x}"));
        }
        assert_eq!(written(|l| _ = l.uint(-1i32)), "-1");
        for ip in
            ["0.0.0.0", "127.0.0.1", "255.255.255.255", "::1", "2001:db8::1", "::ffff:1.2.3.4"]
        {
            let ip: std::net::IpAddr = ip.parse().expect("literal");
            assert_eq!(written(|l| _ = l.ip(ip)), ip.to_string());
        }
    }

    #[test]
    fn strings_read_back_as_themselves() {
        for text in ["nginx", "", "quo\"te\\n", "tab\there\u{1}", "naïve €", "\u{1f}end"] {
            let json = written(|l| _ = l.string(text));
            let back: String =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
            assert_eq!(back, text);
        }
    }
}
