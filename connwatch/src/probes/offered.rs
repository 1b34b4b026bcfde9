//! What the running kernel offers a hook's variant, checked before anything is loaded: the
//! tracepoint; for kprobe, fentry and fexit the kernel function, which a function the compiler
//! inlined everywhere lacks (no symbol, nothing to attach to); and kprobes and trampolines at
//! all.

use std::{collections::HashSet, path::Path, sync::OnceLock};

use super::{
    hooks::{Hook, Mechanism, Variant},
    tracefs::{self, TRACEFS},
    trampolines,
};

/// What the running kernel lacks for a variant.
pub enum Absent {
    /// The tracepoint or kernel function the variant attaches to.
    Target(String),
    /// The mechanism itself (kprobes, trampolines).
    Mechanism(String),
}

impl Absent {
    pub fn into_reason(self) -> String {
        match self {
            Self::Target(reason) | Self::Mechanism(reason) => reason,
        }
    }
}

/// What the running kernel lacks for this variant, if anything (checked before anything is
/// loaded).
pub fn missing(hook: &Hook, variant: &Variant) -> Option<Absent> {
    if variant.args_at_exit && !cfg!(target_arch = "x86_64") {
        // Its program reads x86-64 registers; the next variant keeps the arguments at entry.
        return Some(Absent::Mechanism("reads syscall arguments at exit on x86-64 only".into()));
    }
    match variant.mechanism {
        Mechanism::RawTracepoint | Mechanism::Tracepoint => {
            (!tracefs::exists(hook.category, hook.name))
                .then(|| Absent::Target(format!("this kernel has no {} tracepoint", hook.id())))
        }
        Mechanism::Kprobe | Mechanism::Fentry | Mechanism::Fexit => {
            let unavailable = match variant.mechanism {
                Mechanism::Kprobe => kprobes_missing(),
                _ => trampolines::refused(),
            };
            if let Some(reason) = unavailable {
                return Some(Absent::Mechanism(reason));
            }
            let absent: Vec<&str> =
                variant.functions.iter().copied().filter(|f| !exists(f)).collect();
            (!absent.is_empty()).then(|| {
                Absent::Target(format!(
                    "this kernel has no function {} to attach to",
                    absent.join(", ")
                ))
            })
        }
    }
}

/// The kernel's text symbols (`/proc/kallsyms`, types `t`/`T`), read once.
fn text_symbols() -> &'static HashSet<String> {
    static SYMBOLS: OnceLock<HashSet<String>> = OnceLock::new();
    SYMBOLS.get_or_init(|| {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        text_symbols_of(&kallsyms)
    })
}

fn text_symbols_of(kallsyms: &str) -> HashSet<String> {
    kallsyms
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            // Built-in functions only: a module's symbols carry `[module]` after the name.
            (matches!(kind, "t" | "T") && fields.next().is_none()).then(|| name.to_string())
        })
        .collect()
}

/// Whether `function` is a function of the running kernel that can be attached to.
pub fn exists(function: &str) -> bool {
    text_symbols().contains(function)
}

/// Why this kernel offers no kprobes, or `None` when it does: the kprobe PMU (4.17+) or
/// tracefs `kprobe_events`, one of which every kernel built with CONFIG_KPROBES has.
pub fn kprobes_missing() -> Option<String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe");
    let events = Path::new(TRACEFS).join("kprobe_events");
    if pmu.exists() || events.exists() {
        return None;
    }
    Some(format!(
        "this kernel has no kprobes (built without CONFIG_KPROBES: neither {} nor {} exists)",
        pmu.display(),
        events.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_builtin_text_symbols_count() {
        let kallsyms = "ffffffff81e83e90 T sk_error_report\n\
                        ffffffff820917f0 t tcp_v4_send_reset\n\
                        ffffffff82276348 D tcp_hashinfo\n\
                        ffffffffc0a01000 t veth_open\t[veth]\n";
        let symbols = text_symbols_of(kallsyms);
        assert!(symbols.contains("sk_error_report"));
        assert!(symbols.contains("tcp_v4_send_reset"));
        assert!(!symbols.contains("tcp_hashinfo"), "data, not a function");
        assert!(!symbols.contains("veth_open"), "a module's function");
    }
}
