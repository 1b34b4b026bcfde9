//! Network namespaces, found through /proc/*/ns/net, and work done inside one.

use std::{fs, os::fd::AsRawFd as _, path::PathBuf};

use super::InventoryError;

/// A network namespace and a path through which it can be entered.
#[derive(Clone, Debug)]
pub struct Netns {
    pub inode: u64,
    pub path: PathBuf,
}

/// Every network namespace some process is in (one entry each), the agent's own first.
pub fn all() -> Vec<Netns> {
    let mut found: Vec<Netns> = Vec::new();
    let own = PathBuf::from("/proc/self/ns/net");
    if let Some(inode) = inode_of(&own) {
        found.push(Netns { inode, path: own });
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        // A process may exit meanwhile, or hide its namespace: skip it.
        if let Some(inode) = inode_of(&path)
            && !found.iter().any(|n| n.inode == inode)
        {
            found.push(Netns { inode, path });
        }
    }
    found
}

/// The namespace's inode, from the link's text `net:[4026531840]`.
fn inode_of(path: &std::path::Path) -> Option<u64> {
    let target = fs::read_link(path).ok()?;
    let text = target.to_string_lossy();
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Runs `work` on a thread that has entered `ns` (namespaces belong to threads; the thread
/// ends with the work, so nothing else ever runs in the namespace).
pub fn within<T: Send>(
    ns: &Netns,
    work: impl FnOnce() -> Result<T, InventoryError> + Send,
) -> Result<T, InventoryError> {
    let failed = |source| InventoryError::Namespace { path: ns.path.display().to_string(), source };
    let file = fs::File::open(&ns.path).map_err(failed)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; setns changes this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(failed(std::io::Error::last_os_error()));
                }
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
