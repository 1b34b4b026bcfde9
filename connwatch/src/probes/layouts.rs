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
    let mut take = |category: &str, name: &str, fill: &mut dyn FnMut(&Format) -> Result<(), TracefsError>| {
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
        Ok(())
    });
    take("sock", "sock_recv_length", &mut |fmt| {
        f.recv_length_sk = fmt.offset("sk", POINTER)?;
        Ok(())
    });
    // Every syscalls:sys_exit_* record shares one layout; accept4's stands for them all.
    take("syscalls", "sys_exit_accept4", &mut |fmt| {
        f.sys_exit_ret = fmt.offset("ret", LONG)?;
        Ok(())
    });
    layouts.problems = problems;
    layouts
}
