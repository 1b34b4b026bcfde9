//! Attaching each hook with the best mechanism the running kernel offers.

use aya::Ebpf;

use super::{
    AttachMode, ProbeError,
    hooks::{HOOKS, Hook, Mechanism, Role, Variant},
    layouts::Layouts,
    link::{Failure, Kernel, Link, attach_one},
    offered::{Absent, missing},
};

/// A hook that is live in the kernel.
#[derive(Debug)]
pub struct Attached {
    pub hook: &'static Hook,
    pub variant: Variant,
    pub(super) link: Link,
}

/// An optional hook this kernel could not attach, or attached only in a reduced variant.
#[derive(Debug)]
pub struct Skipped {
    pub hook: &'static Hook,
    /// "unavailable: why (and what goes missing)" or "reduced: what it gives up (why)".
    pub reason: String,
}

/// What to leave unattached although the kernel offers it.
pub struct Leave<'a> {
    /// Hooks (`category:name`), as if this kernel lacked them.
    pub hooks: &'a [String],
    /// Variants that read a syscall's arguments at its exit, as on kernels before 5.15.
    pub args_at_exit: bool,
    /// The programs' work: each hook runs a program that returns at once (`--hooks-only`).
    pub work: bool,
}

pub fn attach_all(
    ebpf: &mut Ebpf,
    mode: AttachMode,
    layouts: &Layouts,
    leave: Leave,
) -> Result<(Vec<Attached>, Vec<Skipped>), ProbeError> {
    let wanted = match mode {
        AttachMode::Prefer(mechanism) => Some(mechanism),
        AttachMode::Auto => None,
    };
    let mut attacher = Attacher {
        ebpf,
        kernel: Kernel { layouts, btf: None },
        refused: Vec::new(),
        wanted,
        leave_args_at_exit: leave.args_at_exit,
        leave_work: leave.work,
    };
    let mut attached: Vec<Attached> = Vec::new();
    let mut skipped = Vec::new();
    for hook in HOOKS {
        if !needed(hook, &attached) {
            continue;
        }
        let tried = if leave.hooks.contains(&hook.id()) {
            Tried::left_out()
        } else {
            attacher.try_variants(hook, preference(hook, mode))
        };
        if let Some(wanted) = wanted
            && tried.live.as_ref().is_none_or(|l| l.variant.mechanism != wanted)
            && hook.variants.iter().any(|v| v.mechanism == wanted)
            && !tried.wanted_excused
        {
            // An explicit mode is a promise that this kernel offers the mechanism.
            return Err(ProbeError::Mode {
                mode: wanted.name().replace('_', "-"),
                hook: hook.id(),
                reasons: joined(&tried.reasons),
            });
        }
        let reasons = joined(&tried.reasons);
        match (tried.live, hook.role) {
            (Some(live), _) => {
                if let Some(gives_up) = live.variant.gives_up {
                    let reason = format!("reduced: {gives_up} ({reasons})");
                    skipped.push(Skipped { hook, reason });
                }
                attached.push(live)
            }
            (None, Role::Events) => return Err(ProbeError::Attach { hook: hook.id(), reasons }),
            (None, Role::Observation | Role::Precision(_)) => {
                let stand_ins = HOOKS.iter().filter(|h| h.instead_of == Some(&hook.id())).count();
                let consequence = match stand_ins {
                    0 => format!("without it, {}", hook.role.without()),
                    n => format!("{n} syscall hooks stand in for it"),
                };
                let reason = format!("unavailable: {reasons} ({consequence})");
                skipped.push(Skipped { hook, reason })
            }
        }
    }
    Ok((attached, skipped))
}

/// Whether `hook` is wanted, given the hooks attached before it: a stand-in only where its
/// primary is not attached; a syscall entry that keeps arguments only where its exit is
/// attached in a variant that reads them from it.
fn needed(hook: &Hook, attached: &[Attached]) -> bool {
    let live = |id: &str| attached.iter().find(|a| a.hook.id() == id);
    if let Some(primary) = hook.instead_of
        && live(primary).is_some()
    {
        return false;
    }
    hook.keeps_args_for.is_none_or(|exit| live(exit).is_some_and(|a| !a.variant.args_at_exit))
}

/// Loads and attaches variants, remembering what the kernel refused.
struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    kernel: Kernel<'a>,
    /// Programs the kernel refused, why, and whether its verifier did: a family's other hooks
    /// do not ask again (a refusal can cost the verifier seconds).
    refused: Vec<(&'static str, String, bool)>,
    /// The mechanism an explicit `--attach` names.
    wanted: Option<Mechanism>,
    /// Variants that read syscall arguments at exit are not tried.
    leave_args_at_exit: bool,
    /// Each variant attaches a program that returns at once instead of its own.
    leave_work: bool,
}

/// What trying one hook's variants came to.
struct Tried {
    live: Option<Attached>,
    /// Why each variant passed over or tried did not attach.
    reasons: Vec<(Option<Mechanism>, String)>,
    /// The wanted mechanism's variant failed for a reason that is not the mechanism's: the
    /// kernel lacks the hook's tracepoint or function altogether, or its verifier refused
    /// connwatch's program. The hook then falls back as under auto.
    wanted_excused: bool,
}

impl Tried {
    fn left_out() -> Self {
        Self {
            live: None,
            reasons: vec![(None, "left out by request".into())],
            wanted_excused: true,
        }
    }
}

impl Attacher<'_> {
    /// The first of `variants` that attaches.
    fn try_variants(&mut self, hook: &'static Hook, variants: Vec<Variant>) -> Tried {
        let mut tried = Tried { live: None, reasons: Vec::new(), wanted_excused: false };
        for variant in variants {
            if variant.args_at_exit && self.leave_args_at_exit {
                // Left out on request, as on a kernel without it: an explicit mode falls back.
                tried.reasons.push((
                    Some(variant.mechanism),
                    "reads the call's arguments from its registers, and --args-at-entry asks \
                     for them kept at entry"
                        .into(),
                ));
                tried.wanted_excused |= Some(variant.mechanism) == self.wanted;
                continue;
            }
            let wanted = Some(variant.mechanism) == self.wanted;
            let mut fail = |reason: String, excused: bool| {
                tried.reasons.push((Some(variant.mechanism), reason));
                tried.wanted_excused |= wanted && excused;
            };
            let variant = match (self.leave_work, variant.reaching_only()) {
                (false, _) => variant,
                (true, Ok(empty)) => empty,
                (true, Err(reason)) => {
                    fail(reason.into(), false);
                    continue;
                }
            };
            if let Some(absent) = missing(hook, &variant) {
                let excused = matches!(absent, Absent::Target(_));
                fail(absent.into_reason(), excused);
                continue;
            }
            if let Some((_, reason, by_verifier)) =
                self.refused.iter().find(|(p, ..)| variant.programs().any(|v| v == *p))
            {
                fail(reason.clone(), *by_verifier);
                continue;
            }
            match attach_one(self.ebpf, hook, variant, &mut self.kernel) {
                Ok(link) => {
                    tried.live = Some(Attached { hook, variant, link });
                    break;
                }
                Err(Failure::Load { program, reason, by_verifier }) => {
                    self.refused.push((program, reason.clone(), by_verifier));
                    fail(reason, by_verifier);
                }
                Err(Failure::Attach(reason)) => fail(reason, false),
            }
        }
        tried
    }
}

/// Why each variant failed, one clause per reason: "raw_tracepoint, tracepoint: this kernel has
/// no sock:sock_send_length tracepoint; fentry: ...".
fn joined(reasons: &[(Option<Mechanism>, String)]) -> String {
    let mut clauses: Vec<(Vec<&str>, &str)> = Vec::new();
    for (mechanism, reason) in reasons {
        let name = mechanism.map(Mechanism::name);
        match clauses.iter_mut().find(|(_, r)| r == reason) {
            Some((names, _)) => names.extend(name),
            None => clauses.push((name.into_iter().collect(), reason)),
        }
    }
    let clause = |(names, reason): &(Vec<&str>, &str)| match names.is_empty() {
        true => reason.to_string(),
        false => format!("{}: {reason}", names.join(", ")),
    };
    clauses.iter().map(clause).collect::<Vec<_>>().join("; ")
}

/// The hook's variants, with the preferred mechanism (if any) moved to the front.
fn preference(hook: &Hook, mode: AttachMode) -> Vec<Variant> {
    let mut variants = hook.variants.to_vec();
    if let AttachMode::Prefer(mechanism) = mode {
        variants.sort_by_key(|v| v.mechanism != mechanism);
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reason_shared_by_several_mechanisms_is_said_once() {
        let missing = "this kernel has no sock:sock_send_length tracepoint".to_string();
        let reasons = [
            (Some(Mechanism::RawTracepoint), missing.clone()),
            (Some(Mechanism::Fentry), "the kernel refused to load this program type".into()),
            (Some(Mechanism::Tracepoint), missing),
            (None, "left out by request".into()),
        ];
        assert_eq!(
            joined(&reasons),
            "raw_tracepoint, tracepoint: this kernel has no sock:sock_send_length tracepoint; \
             fentry: the kernel refused to load this program type; left out by request"
        );
    }
}
