//! Which process holds which socket: /proc/PID/fd links name `socket:[inode]`.

use std::{collections::HashMap, fs};

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// Socket inode -> the first process found holding it.
pub fn by_inode() -> HashMap<u64, Holder> {
    let mut holders = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return holders;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we look: whatever cannot be read is skipped.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let comm = comm(pid).unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let text = target.to_string_lossy();
            if let Some(inode) =
                text.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')?.parse().ok())
            {
                holders.entry(inode).or_insert_with(|| Holder { pid, comm: comm.clone() });
            }
        }
    }
    holders
}

/// A process's name, as the kernel keeps it.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_string())
}
