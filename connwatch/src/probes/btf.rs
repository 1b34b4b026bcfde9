//! Struct offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux), so the programs walk
//! `struct sock` and task -> files -> fd table correctly on any kernel, never at offsets
//! hard-coded from one kernel's headers.

use btf_rs::{Backend, Btf, BtfType, Type};
use connwatch_common::config::{
    OFFSET_ABSENT, PROTO_TYPE_BYTES, SOCK_HEAD_BYTES, SockOffsets, TaskOffsets,
};
use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {VMLINUX_BTF}: {0} (connwatch needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y, as every major distribution ships)"
    )]
    Unavailable(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {path}")]
    NoMember { strukt: String, path: String },
    #[error(
        "kernel BTF: {strukt}.{path} is a bitfield; connwatch needs Linux 5.6 or newer \
         (where it is a plain field)"
    )]
    Bitfield { strukt: String, path: String },
    #[error("kernel BTF: {0}")]
    Parse(String),
    #[error(
        "kernel BTF: {what} do not fit in {bytes} bytes; this kernel's struct sock is laid out unlike any connwatch knows"
    )]
    Layout { what: &'static str, bytes: u32 },
}

/// The start of a `bytes`-long window holding every `(offset, size)` field.
fn window(fields: &[(u32, u32)], bytes: u32, what: &'static str) -> Result<u32, BtfError> {
    let start = fields.iter().map(|&(offset, _)| offset).min().unwrap_or(0);
    let end = fields.iter().map(|&(offset, size)| offset + size).max().unwrap_or(0);
    if end - start > bytes {
        return Err(BtfError::Layout { what, bytes });
    }
    Ok(start)
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Maps the kernel's BTF where the kernel allows it (6.18 does): read in place, it costs a
    /// 1 MB index, where parsing it whole took 30 MB at start-up (heaptrack). Where the mapping
    /// is refused, it is read and parsed.
    pub fn load() -> Result<Self, BtfError> {
        Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(VMLINUX_BTF, Backend::Cache))
            .map(|btf| Self { btf })
            .map_err(|e| BtfError::Unavailable(e.to_string()))
    }

    /// Byte offset of a member path such as `__sk_common.skc_daddr`, descending through
    /// anonymous structs and unions the way C does.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut current = self.named_struct(strukt)?;
        let mut offset_bits = 0;
        for name in path.split('.') {
            let (bits, member_type) = self
                .find_member(&current, name)?
                .ok_or_else(|| BtfError::NoMember { strukt: strukt.into(), path: path.into() })?;
            if bits % 8 != 0 {
                return Err(BtfError::Bitfield { strukt: strukt.into(), path: path.into() });
            }
            offset_bits += bits;
            current = member_type;
        }
        Ok(offset_bits / 8)
    }

    /// Like [`Self::offset_of`], but a member this kernel lacks (IPv6 fields without
    /// CONFIG_IPV6) becomes [`OFFSET_ABSENT`], which the programs skip.
    pub fn optional_offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        match self.offset_of(strukt, path) {
            Err(BtfError::NoMember { .. }) => Ok(OFFSET_ABSENT),
            other => other,
        }
    }

    pub fn sock_offsets(&self) -> Result<SockOffsets, BtfError> {
        let sk = |path: &str| self.offset_of("sock", path);
        let mut offsets = SockOffsets {
            daddr: sk("__sk_common.skc_daddr")?,
            rcv_saddr: sk("__sk_common.skc_rcv_saddr")?,
            dport: sk("__sk_common.skc_dport")?,
            num: sk("__sk_common.skc_num")?,
            family: sk("__sk_common.skc_family")?,
            state: sk("__sk_common.skc_state")?,
            net: sk("__sk_common.skc_net")?,
            v6_daddr: self.optional_offset_of("sock", "__sk_common.skc_v6_daddr")?,
            v6_rcv_saddr: self.optional_offset_of("sock", "__sk_common.skc_v6_rcv_saddr")?,
            err: sk("sk_err")?,
            protocol: sk("sk_protocol")?,
            sk_type: sk("sk_type")?,
            // tcp_sock and inet_connection_sock both begin with struct sock, so these offsets
            // apply to the same pointer.
            rto_retransmits: self.offset_of("inet_connection_sock", "icsk_retransmits")?,
            snd_una: self.offset_of("tcp_sock", "snd_una")?,
            write_seq: self.offset_of("tcp_sock", "write_seq")?,
            head: 0,
            proto_type: 0,
            srtt_us: self.offset_of("tcp_sock", "srtt_us")?,
            lock_owned: sk("sk_lock.owned")?,
        };
        let o = &offsets;
        // (offset, size) of what each window must hold, so one read covers them all.
        let head =
            [(o.daddr, 4), (o.rcv_saddr, 4), (o.dport, 2), (o.num, 2), (o.family, 2), (o.state, 1)];
        offsets.head =
            window(&head, SOCK_HEAD_BYTES, "sock_common's addresses, ports, family and state")?;
        let proto_type = [(offsets.protocol, 2), (offsets.sk_type, 2)];
        offsets.proto_type =
            window(&proto_type, PROTO_TYPE_BYTES, "sock's sk_type and sk_protocol")?;
        Ok(offsets)
    }

    pub fn task_offsets(&self) -> Result<TaskOffsets, BtfError> {
        // 6.13 made the file's reference count a file_ref_t (`f_ref`, one less than the
        // references); before, an atomic_long_t `f_count` held them.
        let (file_count, file_count_bias) = match self.offset_of("file", "f_ref") {
            Ok(offset) => (offset, 1),
            Err(BtfError::NoMember { .. }) => (self.offset_of("file", "f_count")?, 0),
            Err(other) => return Err(other),
        };
        Ok(TaskOffsets {
            task_files: self.offset_of("task_struct", "files")?,
            files_fdt: self.offset_of("files_struct", "fdt")?,
            fdt_fd: self.offset_of("fdtable", "fd")?,
            fdt_max_fds: self.offset_of("fdtable", "max_fds")?,
            file_inode: self.offset_of("file", "f_inode")?,
            file_private_data: self.offset_of("file", "private_data")?,
            inode_mode: self.offset_of("inode", "i_mode")?,
            socket_sk: self.offset_of("socket", "sk")?,
            file_count,
            file_count_bias,
            switches: self.switches_offset()?,
        })
    }

    /// `task_struct.nvcsw`, where `nivcsw` follows it (as on every kernel so far), else
    /// [`OFFSET_ABSENT`]: the programs then never trust a send's kept start.
    fn switches_offset(&self) -> Result<u32, BtfError> {
        let voluntary = self.offset_of("task_struct", "nvcsw")?;
        let involuntary = self.offset_of("task_struct", "nivcsw")?;
        Ok(if involuntary == voluntary + 8 { voluntary } else { OFFSET_ABSENT })
    }

    /// Whether the kernel has BPF helper `name` (`bpf_task_pt_regs`, say): the kernel's
    /// `enum bpf_func_id` names every helper it has.
    pub fn has_helper(&self, name: &str) -> Result<bool, BtfError> {
        let wanted = format!("BPF_FUNC_{}", name.trim_start_matches("bpf_"));
        let types = self
            .btf
            .resolve_types_by_name("bpf_func_id")
            .map_err(|e| BtfError::Parse(e.to_string()))?;
        for t in types {
            if let Type::Enum(e) = t {
                return Ok(e
                    .members
                    .iter()
                    .any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == wanted)));
            }
        }
        Ok(false)
    }

    fn named_struct(&self, name: &str) -> Result<Type, BtfError> {
        let types =
            self.btf.resolve_types_by_name(name).map_err(|e| BtfError::Parse(e.to_string()))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| BtfError::NoStruct(name.into()))
    }

    /// Finds `name` among the members of `container` (a struct or union), searching anonymous
    /// members recursively. Returns the member's bit offset and its (typedef-stripped) type.
    fn find_member(&self, container: &Type, name: &str) -> Result<Option<(u32, Type)>, BtfError> {
        let members = match container {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for member in members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.strip(self.chained(member)?)?;
            if member_name == name {
                return Ok(Some((member.bit_offset(), member_type)));
            }
            if member_name.is_empty()
                && let Some((bits, found)) = self.find_member(&member_type, name)?
            {
                return Ok(Some((member.bit_offset() + bits, found)));
            }
        }
        Ok(None)
    }

    fn chained(&self, t: &dyn BtfType) -> Result<Type, BtfError> {
        self.btf.resolve_chained_type(t).map_err(|e| BtfError::Parse(e.to_string()))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type, BtfError> {
        for _ in 0..16 {
            t = match &t {
                Type::Typedef(x) => self.chained(x)?,
                Type::Volatile(x) | Type::Const(x) | Type::Restrict(x) => self.chained(x)?,
                Type::TypeTag(x) => self.chained(x)?,
                _ => return Ok(t),
            };
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        match KernelBtf::load() {
            Ok(btf) => Some(btf),
            Err(e) => {
                eprintln!("skipped: this kernel has no BTF ({e})");
                None
            }
        }
    }

    /// `skc_daddr` and `skc_rcv_saddr` sit in an anonymous struct inside an anonymous union at
    /// the very start of `struct sock_common`; `skc_dport` follows the 4-byte hash. Stable since
    /// Linux 3.x, so they check the descent through anonymous members on any kernel.
    #[test]
    fn members_inside_anonymous_unions_are_found() {
        let Some(btf) = kernel() else { return };
        assert_eq!(btf.offset_of("sock", "__sk_common.skc_daddr").unwrap(), 0);
        assert_eq!(btf.offset_of("sock", "__sk_common.skc_rcv_saddr").unwrap(), 4);
        assert_eq!(btf.offset_of("sock", "__sk_common.skc_dport").unwrap(), 12);
        assert_eq!(btf.offset_of("sock", "__sk_common.skc_num").unwrap(), 14);
    }

    #[test]
    fn every_offset_the_programs_need_resolves() {
        let Some(btf) = kernel() else { return };
        let sock = btf.sock_offsets().unwrap();
        assert!(sock.state > sock.family && sock.err > sock.state, "{sock:?}");
        assert_eq!(sock.head, 0, "skc_daddr opens sock_common");
        assert!(sock.proto_type <= sock.protocol.min(sock.sk_type));
        assert_ne!(sock.v6_daddr, OFFSET_ABSENT, "this kernel has IPv6");
        assert!(sock.lock_owned > sock.state, "sk_lock follows sock_common: {sock:?}");
        let task = btf.task_offsets().unwrap();
        assert!(task.task_files > 0 && task.socket_sk > 0, "{task:?}");
        assert_ne!(task.switches, OFFSET_ABSENT, "nivcsw follows nvcsw: {task:?}");
    }

    /// `bpf_task_pt_regs` came in 5.15 (this host runs 6.18), `bpf_ktime_get_ns` in 4.1; no
    /// kernel has the made-up one.
    #[test]
    fn helpers_are_found_by_name() {
        let Some(btf) = kernel() else { return };
        assert!(btf.has_helper("bpf_task_pt_regs").unwrap());
        assert!(btf.has_helper("bpf_ktime_get_ns").unwrap());
        assert!(!btf.has_helper("bpf_no_such_helper").unwrap());
    }

    #[test]
    fn windows_hold_their_fields_or_say_why_not() {
        assert_eq!(window(&[(12, 2), (0, 4), (18, 1)], 24, "x").unwrap(), 0);
        assert_eq!(window(&[(500, 2), (502, 2)], 8, "x").unwrap(), 500);
        assert!(matches!(window(&[(0, 4), (30, 2)], 24, "x"), Err(BtfError::Layout { .. })));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let Some(btf) = kernel() else { return };
        assert!(matches!(btf.offset_of("sock", "no_such_member"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.offset_of("no_such_struct_xyz", "x"), Err(BtfError::NoStruct(_))));
        assert_eq!(btf.optional_offset_of("sock", "no_such_member").unwrap(), OFFSET_ABSENT);
    }
}
