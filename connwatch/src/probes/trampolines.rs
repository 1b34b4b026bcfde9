//! Whether the kernel loads BPF trampoline programs (fentry, fexit) at all, asked once with one
//! trivial program, before any variant looks its function up: that look reads `/proc/kallsyms`
//! and parses the kernel's BTF (about 0.1 s of CPU at start-up, and tens of MiB), which a kernel
//! that refuses the program type (a security policy, say; this host) would waste.
//!
//! The probe is a `BPF_PROG_TYPE_TRACING` program with no attach target: a kernel that offers
//! the type rejects it with EINVAL and says in the verifier log that it needs one; a kernel that
//! does not rejects it before the verifier runs, with an empty log.

use std::sync::OnceLock;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD` (include/uapi/linux/bpf.h), up to
/// `expected_attach_type`; the kernel takes the fields after them as zero.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Why this kernel refuses fentry and fexit programs, or `None` when it loads them (or when
/// the probe could not tell: the variants then find out for themselves).
pub fn refused() -> Option<String> {
    static REFUSED: OnceLock<Option<String>> = OnceLock::new();
    REFUSED.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut log = [0u8; 256];
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: [0; 16],
        prog_ifindex: 0,
        expected_attach_type: BPF_TRACE_FENTRY,
    };
    // SAFETY: `attr` and the buffers it points to outlive the call; the size is the struct's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            size_of::<ProgLoad>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor this call just opened.
        unsafe { libc::close(fd as i32) };
        return None;
    }
    let error = std::io::Error::last_os_error();
    let judged = log.iter().any(|&b| b != 0);
    match error.raw_os_error() {
        // Refused before the verifier looked: the program type itself.
        Some(libc::EPERM | libc::EACCES) if !judged => {
            Some(format!("the kernel refused to load this program type ({error})"))
        }
        Some(libc::EINVAL) if !judged => {
            Some("this kernel has no BPF trampolines (fentry, fexit)".to_string())
        }
        _ => None,
    }
}
