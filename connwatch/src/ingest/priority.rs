//! The priority of the threads that drain the kernel's ring buffers.
//!
//! A ring buffer holds a few milliseconds of records on a busy host; its reader has to run
//! before it fills. When a workload keeps every CPU busy, a reader at the default priority gets
//! only its fair share of one, and the kernel drops records: on 16 CPUs under 32 churning
//! processes, up to 2% of events were lost at nice 0 and none at nice -10 (docs/benchmarks.md,
//! session 21). The readers' own work is bounded by the events they read: a higher priority
//! changes when they run, not how much.

use std::io;

/// The default `--nice`.
pub const DEFAULT_NICE: i32 = -10;

/// Sets the calling thread's nice value, which every thread it starts afterwards inherits (on
/// Linux a nice value belongs to a thread): call it before the readers start.
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: a plain syscall on the calling thread (`who` 0), no memory passed.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// [`set_nice`] for a command's threads, unless `nice` is 0; a failure (no CAP_SYS_NICE) is
/// reported and the command goes on at the priority it has.
pub fn raise_readers(nice: i32) {
    if nice == 0 {
        return;
    }
    if let Err(e) = set_nice(nice) {
        eprintln!(
            "connwatch: cannot run the ring-buffer readers at nice {nice} ({e}): that needs \
             root or CAP_SYS_NICE. Going on at the current priority: on a host whose CPUs are \
             all busy, events may be lost (each one is counted); --nice 0 silences this."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::set_nice;

    /// The nice value of the calling thread, as the kernel reports it.
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Field 19 (nice), counted from after the command name's closing parenthesis.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_thread_started_after_the_change_inherits_it() {
        let before = own_nice();
        // The lowest priority: moving towards it needs no privilege.
        let inherited = std::thread::spawn(|| {
            set_nice(19).expect("lowering one's own priority is always allowed");
            std::thread::spawn(own_nice).join().unwrap()
        });
        assert_eq!(inherited.join().unwrap(), 19);
        assert_eq!(own_nice(), before, "other threads keep theirs");
    }
}
