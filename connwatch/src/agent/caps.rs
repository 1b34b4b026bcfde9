//! Capabilities after start-up: once the programs are attached, the agent keeps only what its
//! inventory needs, on the one thread that runs it.

use caps::{CapSet, Capability, CapsHashSet};

/// What the inventory thread keeps: entering other network namespaces (setns needs
/// CAP_SYS_ADMIN) and reading other processes' /proc entries (ns/net and fd links need ptrace
/// read access).
pub const INVENTORY: [Capability; 3] =
    [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

/// Reduces the calling thread's effective and permitted sets to `keep` (capabilities are per
/// thread: threads created later inherit the reduced sets).
pub fn keep_only(keep: &[Capability]) -> anyhow::Result<()> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    caps::clear(None, CapSet::Inheritable)?;
    Ok(())
}
