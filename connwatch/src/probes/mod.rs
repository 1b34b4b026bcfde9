//! Loading connwatch's eBPF object into the running kernel and attaching its hooks.
//!
//! Everything kernel-specific is discovered here at load time: tracefs record layouts, struct
//! offsets from BTF, which attach mechanism each hook can use.

mod attach;
pub mod btf;
pub mod cost;
pub mod epoll_seed;
pub mod hooks;
pub mod layouts;
mod link;
mod offered;
pub mod privileges;
mod skips;
pub mod tracefs;
mod trampolines;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapError},
};
use connwatch_common::{
    config::{
        Config, FILTER_COMM, FILTER_PIDS, FILTER_PORTS, FLAG_ALL_IO, FLAG_CALL_REGS,
        FLAG_CLOSING_TOGETHER, FLAG_ESTABLISHED_CARRIED, FLAG_OPENING_IN_BIRTH,
        FLAG_READINESS_ON_ATTENTION, OFFSET_ABSENT, TaskOffsets,
    },
    names::{
        GLOBAL_CONFIG, MAP_EPOLL_WATCH, MAP_EVENTS, MAP_PID_FILTER, MAP_PORT_FILTER,
        MAX_FILTER_PIDS, MAX_FILTER_PORTS, MAX_RINGS,
    },
};
use thiserror::Error;

pub use attach::{Attached, Skipped};
use btf::{BtfError, KernelBtf};
use hooks::Mechanism;
use privileges::NotPrivileged;
pub use skips::kernel_at_least;
use tracefs::TracefsError;

/// The compiled connwatch-ebpf object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connwatch"));

/// Which mechanism hooks should prefer when several work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Each hook's own preference (the cheapest that works).
    #[default]
    Auto,
    /// Prefer this mechanism wherever a hook has it; others are the fallback.
    Prefer(Mechanism),
}

/// What the kernel programs should let through (checked in the kernel, before any
/// ring-buffer reservation).
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub comm: Option<String>,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub attach: AttachMode,
    /// Power of two, multiple of the page size: shared by the ring buffers.
    pub ring_buffer_bytes: u32,
    /// Ring buffers to spread the records over, by socket address (1 to [`MAX_RINGS`]): one
    /// per correlator thread, so that no one thread reads every record.
    pub rings: usize,
    pub filters: Filters,
    /// Report every recv, send and readiness call instead of summarising busy sockets.
    pub all_io: bool,
    /// Examine readiness results of every process (`trace`). `watch` and `agent` turn it off:
    /// a process is then looked at only while it holds a socket the kernel had news of (a
    /// failed connect, peer closed, reset, error, retransmitting), since no finding rests on
    /// the readiness of a healthy connection; the rest is counted (`readiness_not_needed`).
    pub healthy_readiness: bool,
    /// Report the state changes of a socket its application has closed together, when it
    /// reaches CLOSE (`watch` and `agent`: no finding rests on them any more), instead of each
    /// as it happens (`trace`).
    pub closing_together: bool,
    /// Leave the state change that begins a life (connect, listen, a listener's child) to its
    /// birth, which every later record of the life carries, instead of reporting it (`watch`
    /// and `agent`: the correlator takes it from the birth; `trace` reports it).
    pub opening_in_birth: bool,
    /// Let the socket's next record (normally its connect or accept record) carry a
    /// connection's change to ESTABLISHED instead of a record of its own (`watch` and `agent`;
    /// `trace` reports it as it happens).
    pub established_carried: bool,
    /// Hooks (`category:name`) not to attach, as if this kernel lacked them: their stand-ins
    /// (if any) attach instead.
    pub left_out: Vec<String>,
    /// Keep the readiness calls' arguments at their entry, as on kernels without
    /// `bpf_task_pt_regs` (before 5.15) or off x86-64, even where their exit could read them.
    pub args_at_entry: bool,
    /// Attach every hook with a program that returns at once, and report nothing: what
    /// reaching the hooks costs this kernel (`--hooks-only`, for `cargo xtask bench`).
    pub hooks_only: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            attach: AttachMode::Auto,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            rings: 1,
            filters: Filters::default(),
            all_io: false,
            healthy_readiness: true,
            closing_together: false,
            opening_in_birth: false,
            established_carried: false,
            left_out: Vec::new(),
            args_at_entry: false,
            hooks_only: false,
        }
    }
}

pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;

/// The size of `rings` ring buffers unless `--ring-buffer-size` says otherwise: 8 MiB, or
/// 1 MiB each where that is more. On 16 CPUs, sixteen rings of 512 KiB each held about 13 ms
/// of a churning host's records, and a thread that waited longer for a CPU lost some
/// (docs/benchmarks.md, session 17).
pub fn default_ring_bytes(rings: usize) -> u32 {
    let each_at_least = 1 << 20;
    (each_at_least * rings as u32).next_power_of_two().max(DEFAULT_RING_BUFFER_BYTES)
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    NotPrivileged(#[from] NotPrivileged),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("invalid option: {0}")]
    Option(String),
    #[error("loading connwatch's eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("setting up kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("cannot attach {hook}: {reasons}")]
    Attach { hook: String, reasons: String },
    #[error(
        "--attach {mode}: cannot attach {hook} that way: {reasons} (--attach auto uses what \
         this kernel offers)"
    )]
    Mode { mode: String, hook: String, reasons: String },
}

/// connwatch's programs, loaded and attached. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    pub attached: Vec<Attached>,
    /// Optional hooks this kernel could not attach, with the reason.
    pub skipped: Vec<Skipped>,
    /// Epoll registrations older than connwatch, read from `/proc` once the hooks were live.
    pub epoll_seeded: usize,
}

impl Probes {
    pub fn load(options: &LoadOptions) -> Result<Self, ProbeError> {
        privileges::check()?;
        privileges::lift_memlock_limit();
        validate(options)?;
        tracefs::ensure_mounted()?;
        // Let go of the kernel's BTF before aya reads its own copy: held together, they made
        // start-up's peak memory.
        let (sock, task, call_regs) = {
            let btf = KernelBtf::load()?;
            let (sock, task) = (btf.sock_offsets()?, btf.task_offsets()?);
            (sock, task, reads_call_regs(&btf, &task)?)
        };
        let layouts = layouts::read_all();
        let config = Config {
            self_tgid: std::process::id(),
            flags: flag_bits(options) | if call_regs { FLAG_CALL_REGS } else { 0 },
            comm: options.filters.comm.as_deref().map(comm_bytes).unwrap_or_default(),
            wakeup_bytes: u64::from(options.each_ring_bytes() / 4),
            rings: options.rings as u32,
            _pad: 0,
            tracepoints: layouts.fields,
            sock,
            task,
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(GLOBAL_CONFIG, &config, true);
        for (index, ring) in MAP_EVENTS.into_iter().enumerate() {
            let used = index < options.rings;
            loader
                .map_max_entries(ring, if used { options.each_ring_bytes() } else { page_size() });
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        fill_filters(&mut ebpf, &options.filters)?;
        let (attached, skipped) = attach::attach_all(
            &mut ebpf,
            options.attach,
            &layouts,
            attach::Leave {
                hooks: &options.left_out,
                args_at_exit: options.args_at_entry,
                work: options.hooks_only,
            },
        )?;
        // After attaching: a registration made meanwhile is learnt by the kernel, and kept.
        let epoll_seeded = epoll_seed::seed(&mut ebpf, std::process::id())
            .map_err(|source| ProbeError::Map { map: MAP_EPOLL_WATCH, source })?;
        Ok(Self { ebpf, attached, skipped, epoll_seeded })
    }

    /// `(hook, hits the kernel skipped)` for every attached hook (see [`skips`]).
    pub fn kernel_skips(&self) -> Vec<(String, u64)> {
        skips::read(&self.ebpf, &self.attached)
    }

    /// `(hook, skipped hits its understudy handled)` for every attached hook with one.
    pub fn kernel_covered(&self) -> Vec<(String, u64)> {
        skips::covered(&self.ebpf, &self.attached)
    }

    /// Run counts and times per hook, while `kernel.bpf_stats_enabled` is 1 (see [`cost`]).
    pub fn cost(&self) -> Option<std::collections::BTreeMap<String, cost::ProgramCost>> {
        cost::read(&self.ebpf, &self.attached)
    }

    /// Attached hooks whose skipped hits this kernel does not count (see [`skips::uncounted`]).
    pub fn uncounted_skips(&self) -> Vec<String> {
        skips::uncounted(&self.attached)
    }

    /// Detaches every program now (the maps stay readable for a final drain).
    pub fn detach(&mut self) {
        for attached in self.attached.drain(..) {
            link::detach(&mut self.ebpf, attached);
        }
    }
}

/// How many ring buffers `threads` correlator threads read on this kernel: one each where its
/// verifier has been seen to check the programs for several in about the time it takes for one
/// (6.18: a 0.5 s `watch` run took 1.89 s wall with 8, 1.82 s with one). Linux 6.1's had not finished in 10 minutes under
/// emulation (`cargo xtask vm-test`), where one ring takes about one; there the threads share
/// one ring buffer, split by address on the reading thread, as before.
pub fn ring_count(threads: usize) -> usize {
    if kernel_at_least(MANY_RINGS_FROM) { threads.clamp(1, MAX_RINGS) } else { 1 }
}

/// The oldest kernel several ring buffers are loaded on (the newest one tested).
pub const MANY_RINGS_FROM: (u32, u32) = (6, 18);

impl LoadOptions {
    /// Each ring buffer's share of `ring_buffer_bytes`: a power of two, at least a page.
    pub fn each_ring_bytes(&self) -> u32 {
        let share = self.ring_buffer_bytes / self.rings.max(1) as u32;
        (1 << share.max(1).ilog2()).max(page_size())
    }

    /// What the ring buffers hold together: less than `ring_buffer_bytes` where its share is
    /// not a power of two.
    pub fn ring_bytes_total(&self) -> u32 {
        self.each_ring_bytes() * self.rings.max(1) as u32
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u32 }
}

fn validate(options: &LoadOptions) -> Result<(), ProbeError> {
    let bytes = options.ring_buffer_bytes;
    let page = page_size();
    if !bytes.is_power_of_two() || bytes < page {
        return Err(ProbeError::Option(format!(
            "ring buffer size {bytes} must be a power of two and at least the page size ({page})"
        )));
    }
    if !(1..=MAX_RINGS).contains(&options.rings) {
        return Err(ProbeError::Option(format!(
            "{} ring buffers asked for; connwatch has 1 to {MAX_RINGS}",
            options.rings
        )));
    }
    let filters = &options.filters;
    if filters.pids.len() > MAX_FILTER_PIDS as usize {
        return Err(ProbeError::Option(format!("at most {MAX_FILTER_PIDS} --pid values")));
    }
    if filters.ports.len() > MAX_FILTER_PORTS as usize {
        return Err(ProbeError::Option(format!("at most {MAX_FILTER_PORTS} --port values")));
    }
    if let Some(comm) = &filters.comm
        && (comm.is_empty() || comm.len() > 15)
    {
        return Err(ProbeError::Option(format!(
            "--comm {comm:?}: the kernel keeps 1 to 15 bytes of a process name"
        )));
    }
    Ok(())
}

/// Whether the programs can read the current syscall's number (x86-64, `bpf_task_pt_regs`) and
/// the thread's context switches: what keeps a send's start where the send itself changed the
/// socket.
fn reads_call_regs(btf: &KernelBtf, task: &TaskOffsets) -> Result<bool, ProbeError> {
    Ok(cfg!(target_arch = "x86_64")
        && task.switches != OFFSET_ABSENT
        && btf.has_helper("bpf_task_pt_regs")?)
}

fn flag_bits(options: &LoadOptions) -> u32 {
    let filters = &options.filters;
    let mut bits = if options.all_io { FLAG_ALL_IO } else { 0 };
    if !options.healthy_readiness {
        bits |= FLAG_READINESS_ON_ATTENTION;
    }
    if options.closing_together {
        bits |= FLAG_CLOSING_TOGETHER;
    }
    if options.opening_in_birth {
        bits |= FLAG_OPENING_IN_BIRTH;
    }
    if options.established_carried {
        bits |= FLAG_ESTABLISHED_CARRIED;
    }
    if !filters.pids.is_empty() {
        bits |= FILTER_PIDS;
    }
    if !filters.ports.is_empty() {
        bits |= FILTER_PORTS;
    }
    if filters.comm.is_some() {
        bits |= FILTER_COMM;
    }
    bits
}

/// The kernel's `comm`: up to 15 bytes, NUL-padded to 16.
fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut bytes = [0; 16];
    let len = comm.len().min(15);
    bytes[..len].copy_from_slice(&comm.as_bytes()[..len]);
    bytes
}

fn fill_filters(ebpf: &mut Ebpf, filters: &Filters) -> Result<(), ProbeError> {
    let map_err = |map| move |source| ProbeError::Map { map, source };
    let pid_map = ebpf.map_mut(MAP_PID_FILTER).expect("connwatch-ebpf defines PID_FILTER");
    let mut pids: HashMap<_, u32, u8> =
        HashMap::try_from(pid_map).map_err(map_err(MAP_PID_FILTER))?;
    for pid in &filters.pids {
        pids.insert(pid, 1, 0).map_err(map_err(MAP_PID_FILTER))?;
    }
    let port_map = ebpf.map_mut(MAP_PORT_FILTER).expect("connwatch-ebpf defines PORT_FILTER");
    let mut ports: HashMap<_, u16, u8> =
        HashMap::try_from(port_map).map_err(map_err(MAP_PORT_FILTER))?;
    for port in &filters.ports {
        ports.insert(port, 1, 0).map_err(map_err(MAP_PORT_FILTER))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_buffers_share_the_size_in_powers_of_two_of_at_least_a_page() {
        let options =
            |bytes, rings| LoadOptions { ring_buffer_bytes: bytes, rings, ..Default::default() };
        assert_eq!(options(8 << 20, 1).each_ring_bytes(), 8 << 20);
        assert_eq!(options(8 << 20, 4).each_ring_bytes(), 2 << 20);
        assert_eq!(options(8 << 20, 3).each_ring_bytes(), 2 << 20, "rounded down");
        assert_eq!(options(page_size(), 8).each_ring_bytes(), page_size());
    }

    /// The ring buffers are named twice: in `names.rs`, which the loader sizes and reads, and
    /// as the statics of the eBPF side's `rings!`. A ring only one side knew would keep the
    /// object's default size, or never be read.
    #[test]
    fn the_object_declares_every_ring_buffer_the_loader_sizes_and_no_other() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for ring in MAP_EVENTS {
            assert!(object.maps.contains_key(ring), "{ring} is not declared by the eBPF side");
        }
        let declared = object.maps.keys().filter(|name| name.starts_with("EVENTS")).count();
        assert_eq!(declared, MAP_EVENTS.len(), "rings declared: {:?}", object.maps.keys());
    }
}
