//! Classic tracepoint record layouts of the running kernel, turned into the offsets the
//! `tp_*` programs read. A tracepoint whose layout is missing or unexpected only disables its
//! classic variant; the reason is kept for the attach error.

use std::collections::HashMap;

use connwatch_common::config::TracepointFields;

use super::tracefs::{Format, TracefsError};

#[derive(Debug, Default)]
pub struct Layouts {
    pub fields: TracepointFields,
    /// `category:name` -> why its classic variant cannot be used.
    problems: HashMap<String, TracefsError>,
}

impl Layouts {
    pub fn problem(&self, tracepoint: &str) -> Option<&TracefsError> {
        self.problems.get(tracepoint)
    }
}

/// Reads every layout from the mounted tracefs.
pub fn read_all() -> Layouts {
    from_formats(Format::read)
}

const POINTER: u32 = 8;
const INT: u32 = 4;
const LONG: u32 = 8;

/// Builds the offsets from a format source (tracefs, or fixtures in tests).
pub fn from_formats(read: impl Fn(&str, &str) -> Result<Format, TracefsError>) -> Layouts {
    let mut layouts = Layouts::default();
    let f = &mut layouts.fields;
    let mut problems = HashMap::new();
    let mut take =
        |category: &str, name: &str, fill: &mut dyn FnMut(&Format) -> Result<(), TracefsError>| {
            if let Err(e) = read(category, name).and_then(|format| fill(&format)) {
                problems.insert(format!("{category}:{name}"), e);
            }
        };
    take("sock", "inet_sock_set_state", &mut |fmt| {
        f.set_state_skaddr = fmt.offset("skaddr", POINTER)?;
        f.set_state_oldstate = fmt.offset("oldstate", INT)?;
        f.set_state_newstate = fmt.offset("newstate", INT)?;
        Ok(())
    });
    take("tcp", "tcp_receive_reset", &mut |fmt| {
        f.receive_reset_skaddr = fmt.offset("skaddr", POINTER)?;
        Ok(())
    });
    take("tcp", "tcp_send_reset", &mut |fmt| {
        f.send_reset_skaddr = fmt.offset("skaddr", POINTER)?;
        Ok(())
    });
    take("tcp", "tcp_retransmit_skb", &mut |fmt| {
        f.retransmit_skaddr = fmt.offset("skaddr", POINTER)?;
        Ok(())
    });
    take("sock", "sock_send_length", &mut |fmt| {
        f.send_length_sk = fmt.offset("sk", POINTER)?;
        f.send_length_ret = fmt.offset("ret", INT)?;
        Ok(())
    });
    take("sock", "sock_recv_length", &mut |fmt| {
        f.recv_length_sk = fmt.offset("sk", POINTER)?;
        f.recv_length_ret = fmt.offset("ret", INT)?;
        Ok(())
    });
    // The programs read every syscall record at one base: `ret` for exits, and arguments at
    // 8-byte steps from the first for entries. Each hooked syscall is checked against it.
    take("syscalls", "sys_exit_accept4", &mut |fmt| {
        f.sys_exit_ret = fmt.offset("ret", LONG)?;
        Ok(())
    });
    take("syscalls", "sys_enter_connect", &mut |fmt| {
        f.sys_enter_arg0 = syscall_arguments(fmt)?.first().copied().unwrap_or_default();
        Ok(())
    });
    for name in SYSCALL_EXITS {
        let ret = f.sys_exit_ret;
        take("syscalls", name, &mut |fmt| match fmt.offset("ret", LONG)? {
            offset if offset == ret => Ok(()),
            _ => Err(unexpected(fmt, "ret")),
        });
    }
    for name in SYSCALL_ENTRIES {
        let arg0 = f.sys_enter_arg0;
        take("syscalls", name, &mut |fmt| {
            let offsets = syscall_arguments(fmt)?;
            match offsets.iter().enumerate().all(|(i, &o)| o == arg0 + 8 * i as u32) {
                true => Ok(()),
                false => Err(unexpected(fmt, "arguments at 8-byte steps")),
            }
        });
    }
    layouts.problems = problems;
    layouts
}

/// The syscall records the programs read (besides accept4's and connect's, read above).
const SYSCALL_EXITS: &[&str] = &[
    "sys_exit_accept",
    "sys_exit_getsockopt",
    "sys_exit_connect",
    "sys_exit_epoll_wait",
    "sys_exit_epoll_pwait",
    "sys_exit_epoll_pwait2",
    "sys_exit_poll",
    "sys_exit_ppoll",
    "sys_exit_select",
    "sys_exit_pselect6",
    "sys_exit_read",
    "sys_exit_recvfrom",
    "sys_exit_recvmsg",
    "sys_exit_write",
    "sys_exit_sendto",
    "sys_exit_sendmsg",
];
const SYSCALL_ENTRIES: &[&str] = &[
    "sys_enter_getsockopt",
    "sys_enter_close",
    "sys_enter_epoll_ctl",
    "sys_enter_epoll_wait",
    "sys_enter_epoll_pwait",
    "sys_enter_epoll_pwait2",
    "sys_enter_poll",
    "sys_enter_ppoll",
    "sys_enter_select",
    "sys_enter_pselect6",
    "sys_enter_read",
    "sys_enter_recvfrom",
    "sys_enter_recvmsg",
    "sys_enter_write",
    "sys_enter_sendto",
    "sys_enter_sendmsg",
];

/// Offsets of a sys_enter record's arguments (every field after `__syscall_nr`), each 8 bytes.
fn syscall_arguments(fmt: &Format) -> Result<Vec<u32>, TracefsError> {
    let args: Vec<_> = fmt
        .fields
        .iter()
        .filter(|f| !f.name.starts_with("common_") && f.name != "__syscall_nr")
        .collect();
    if args.is_empty() || args.iter().any(|f| f.size != 8) {
        return Err(unexpected(fmt, "8-byte arguments"));
    }
    Ok(args.iter().map(|f| f.offset).collect())
}

fn unexpected(fmt: &Format, what: &str) -> TracefsError {
    TracefsError::NoField { tracepoint: fmt.tracepoint.clone(), field: what.into() }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;

    /// A format source reading tests/fixtures/formats/<kernel>/<name>.format.
    fn fixtures(kernel: &str) -> impl Fn(&str, &str) -> Result<Format, TracefsError> {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats").join(kernel);
        move |category, name| match fs::read_to_string(dir.join(format!("{name}.format"))) {
            Ok(text) => Format::parse(&format!("{category}:{name}"), &text),
            Err(_) => Err(TracefsError::Missing { category: category.into(), name: name.into() }),
        }
    }

    #[test]
    fn linux_6_18_layouts() {
        let layouts = from_formats(fixtures("6.18"));
        let f = layouts.fields;
        assert_eq!((f.set_state_skaddr, f.set_state_oldstate, f.set_state_newstate), (8, 16, 20));
        assert_eq!(f.receive_reset_skaddr, 8);
        assert_eq!(f.send_reset_skaddr, 16);
        assert_eq!(f.retransmit_skaddr, 16);
        assert_eq!((f.send_length_sk, f.recv_length_sk), (8, 8));
        assert_eq!((f.send_length_ret, f.recv_length_ret), (20, 20));
        assert_eq!((f.sys_exit_ret, f.sys_enter_arg0), (16, 16));
        assert!(layouts.problem("syscalls:sys_enter_getsockopt").is_none());
        for tp in [
            "sock:inet_sock_set_state",
            "tcp:tcp_send_reset",
            "tcp:tcp_retransmit_skb",
            "sock:sock_send_length",
        ] {
            assert!(layouts.problem(tp).is_none(), "{tp}: {:?}", layouts.problem(tp));
        }
    }

    #[test]
    fn linux_6_1_layouts_and_missing_tracepoints() {
        let layouts = from_formats(fixtures("6.1"));
        let f = layouts.fields;
        assert_eq!((f.set_state_skaddr, f.set_state_oldstate, f.set_state_newstate), (8, 16, 20));
        assert_eq!((f.send_reset_skaddr, f.retransmit_skaddr, f.receive_reset_skaddr), (16, 16, 8));
        // 6.1 has no sock_send_length (added in 6.4): only that hook's classic variant is off.
        match layouts.problem("sock:sock_send_length") {
            Some(TracefsError::Missing { name, .. }) => assert_eq!(name, "sock_send_length"),
            other => panic!("expected a missing tracepoint, got {other:?}"),
        }
        assert!(layouts.problem("tcp:tcp_send_reset").is_none());
    }

    #[test]
    fn the_two_kernels_really_differ() {
        // tcp_send_reset: 4-byte IPv4 arrays in 6.1, sockaddr_in6-sized arrays in 6.18.
        let read = |kernel| fixtures(kernel)("tcp", "tcp_send_reset").unwrap();
        let (old, new) = (read("6.1"), read("6.18"));
        assert_eq!(old.field("saddr").map(|f| f.size), Some(4));
        assert_eq!(new.field("saddr").map(|f| f.size), Some(28));
        assert!(old.field("sport").is_some() && new.field("sport").is_none());
        assert!(fixtures("6.18")("tcp", "tcp_retransmit_skb").unwrap().field("err").is_some());
        assert!(fixtures("6.1")("tcp", "tcp_retransmit_skb").unwrap().field("err").is_none());
    }

    #[test]
    fn a_field_of_unexpected_size_disables_the_classic_variant() {
        let text = "format:\n\tfield:unsigned int skaddr;\toffset:8;\tsize:4;\tsigned:0;\n";
        let layouts =
            from_formats(|category, name| Format::parse(&format!("{category}:{name}"), text));
        match layouts.problem("tcp:tcp_receive_reset") {
            Some(TracefsError::NoField { field, .. }) => assert_eq!(field, "skaddr (8 bytes)"),
            other => panic!("expected NoField, got {other:?}"),
        }
    }

    #[test]
    fn format_lines_parse_names_offsets_and_sizes() {
        let text = "name: x\nID: 1\nformat:\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
                    \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
                    \tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\nprint fmt: \"x\"\n";
        let format = Format::parse("t:x", text).unwrap();
        let names: Vec<(&str, u32, u32)> =
            format.fields.iter().map(|f| (f.name.as_str(), f.offset, f.size)).collect();
        assert_eq!(names, [("skaddr", 8, 8), ("saddr_v6", 40, 16), ("reason", 28, 4)]);
        assert!(matches!(
            Format::parse("t:x", "\tfield:int x;\toffset:zz;\tsize:4;\n"),
            Err(TracefsError::Malformed { .. })
        ));
    }
}
