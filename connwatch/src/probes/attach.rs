//! Attaching each hook with the best mechanism the running kernel offers.

use std::error::Error as _;

use aya::{
    Btf, Ebpf,
    programs::{
        FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint, fentry::FEntryLinkId,
        fexit::FExitLinkId, kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};

use super::{
    AttachMode, ProbeError, functions,
    hooks::{HOOKS, Hook, Mechanism, Role, Variant},
    layouts::Layouts,
    tracefs,
};

/// A hook that is live in the kernel.
#[derive(Debug)]
pub struct Attached {
    pub hook: &'static Hook,
    pub variant: Variant,
    link: Link,
}

#[derive(Debug)]
enum Link {
    Raw(RawTracePointLinkId),
    Tracepoint(TracePointLinkId),
    /// One per function.
    Kprobe(Vec<KProbeLinkId>),
    /// `(program, link)` per function.
    Trampoline(Vec<(&'static str, TrampolineLink)>),
}

/// A fentry or fexit program's link.
#[derive(Debug)]
enum TrampolineLink {
    Entry(FEntryLinkId),
    Exit(FExitLinkId),
}

/// An optional hook this kernel could not attach, or attached only in a reduced variant.
#[derive(Debug)]
pub struct Skipped {
    pub hook: &'static Hook,
    /// "unavailable: why (and what goes missing)" or "reduced: what it gives up (why)".
    pub reason: String,
}

pub fn attach_all(
    ebpf: &mut Ebpf,
    mode: AttachMode,
    layouts: &Layouts,
    left_out: &[String],
) -> Result<(Vec<Attached>, Vec<Skipped>), ProbeError> {
    let mut attached: Vec<Attached> = Vec::new();
    let mut skipped = Vec::new();
    let mut kernel = Kernel { layouts, btf: None };
    // Programs the kernel refused: a family's other hooks do not ask again (a refusal can
    // cost the verifier seconds).
    let mut refused: Vec<(&'static str, String, bool)> = Vec::new();
    for hook in HOOKS {
        if let Some(primary) = hook.instead_of
            && attached.iter().any(|a| a.hook.id() == primary)
        {
            continue;
        }
        let mut reasons: Vec<(Option<Mechanism>, String)> = Vec::new();
        let mut live = None;
        let variants = if left_out.contains(&hook.id()) {
            reasons.push((None, "left out by request".to_string()));
            Vec::new()
        } else {
            preference(hook, mode)
        };
        let wanted = match mode {
            AttachMode::Prefer(mechanism) => Some(mechanism),
            AttachMode::Auto => None,
        };
        // The kernel lacks what the wanted mechanism would attach to (not the mechanism), or
        // its verifier refused connwatch's program for it: the hook falls back as under auto.
        let (mut wanted_target_absent, mut wanted_unverified) = (false, false);
        for variant in variants {
            if let Some(absent) = missing(hook, &variant) {
                if let Absent::Target(_) = absent {
                    wanted_target_absent |= Some(variant.mechanism) == wanted;
                }
                reasons.push((Some(variant.mechanism), absent.into_reason()));
                continue;
            }
            if let Some((_, reason, by_verifier)) =
                refused.iter().find(|(p, ..)| variant.programs().any(|v| v == *p))
            {
                reasons.push((Some(variant.mechanism), reason.clone()));
                wanted_unverified |= *by_verifier && Some(variant.mechanism) == wanted;
                continue;
            }
            match attach_one(ebpf, hook, variant, &mut kernel) {
                Ok(link) => {
                    live = Some(Attached { hook, variant, link });
                    break;
                }
                Err(Failure::Load { program, reason, by_verifier }) => {
                    reasons.push((Some(variant.mechanism), reason.clone()));
                    refused.push((program, reason, by_verifier));
                    wanted_unverified |= by_verifier && Some(variant.mechanism) == wanted;
                }
                Err(Failure::Attach(reason)) => reasons.push((Some(variant.mechanism), reason)),
            }
        }
        if let Some(wanted) = wanted
            && live.as_ref().is_none_or(|l| l.variant.mechanism != wanted)
            && hook.variants.iter().any(|v| v.mechanism == wanted)
            && !left_out.contains(&hook.id())
            && !wanted_target_absent
            && !wanted_unverified
        {
            // An explicit mode is a promise that this kernel offers the mechanism: a hook
            // that has a variant of it gets that one, unless the kernel lacks the hook's
            // tracepoint or function altogether, or its verifier refuses that one program.
            return Err(ProbeError::Mode {
                mode: wanted.name().replace('_', "-"),
                hook: hook.id(),
                reasons: joined(&reasons),
            });
        }
        match (live, hook.role) {
            (Some(live), _) => {
                if let Some(gives_up) = live.variant.gives_up {
                    let reason = format!("reduced: {gives_up} ({})", joined(&reasons));
                    skipped.push(Skipped { hook, reason });
                }
                attached.push(live)
            }
            (None, Role::Events) => {
                return Err(ProbeError::Attach { hook: hook.id(), reasons: joined(&reasons) });
            }
            (None, Role::Observation | Role::Precision(_)) => {
                let stand_ins = HOOKS.iter().filter(|h| h.instead_of == Some(&hook.id())).count();
                let consequence = match stand_ins {
                    0 => format!("without it, {}", hook.role.without()),
                    n => format!("{n} syscall hooks stand in for it"),
                };
                skipped.push(Skipped {
                    hook,
                    reason: format!("unavailable: {} ({consequence})", joined(&reasons)),
                })
            }
        }
    }
    Ok((attached, skipped))
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

/// What the running kernel lacks for a variant.
enum Absent {
    /// The tracepoint or kernel function the variant attaches to.
    Target(String),
    /// The mechanism itself (kprobes).
    Mechanism(String),
}

impl Absent {
    fn into_reason(self) -> String {
        match self {
            Self::Target(reason) | Self::Mechanism(reason) => reason,
        }
    }
}

/// What the running kernel lacks for this variant, if anything (checked before anything is
/// loaded).
fn missing(hook: &Hook, variant: &Variant) -> Option<Absent> {
    match variant.mechanism {
        Mechanism::RawTracepoint | Mechanism::Tracepoint => {
            (!tracefs::exists(hook.category, hook.name))
                .then(|| Absent::Target(format!("this kernel has no {} tracepoint", hook.id())))
        }
        Mechanism::Kprobe | Mechanism::Fentry | Mechanism::Fexit => {
            if variant.mechanism == Mechanism::Kprobe
                && let Some(reason) = functions::kprobes_missing()
            {
                return Some(Absent::Mechanism(reason));
            }
            let absent: Vec<&str> =
                variant.functions.iter().copied().filter(|f| !functions::exists(f)).collect();
            (!absent.is_empty()).then(|| {
                Absent::Target(format!(
                    "this kernel has no function {} to attach to",
                    absent.join(", ")
                ))
            })
        }
    }
}

/// What attaching needs from the kernel beyond the object: tracefs record layouts, and its
/// BTF for fentry (read on first use).
struct Kernel<'a> {
    layouts: &'a Layouts,
    btf: Option<Btf>,
}

impl Kernel<'_> {
    fn btf(&mut self) -> Result<&Btf, Failure> {
        if self.btf.is_none() {
            let btf = Btf::from_sys_fs()
                .map_err(|e| Failure::Attach(format!("reading the kernel's BTF: {e}")))?;
            self.btf = Some(btf);
        }
        Ok(self.btf.as_ref().expect("just read"))
    }
}

/// Why a variant did not attach: a program was refused, or it loaded and this hook would not
/// take it.
enum Failure {
    /// The kernel would not load the program: `by_verifier` when its verifier judged this
    /// program (connwatch's program, not the mechanism, is at fault on this kernel), not when
    /// the kernel refused the program type itself.
    Load {
        program: &'static str,
        reason: String,
        by_verifier: bool,
    },
    Attach(String),
}

impl Failure {
    fn load(program: &'static str, error: ProgramError) -> Self {
        let by_verifier = matches!(&error, ProgramError::LoadError { verifier_log, .. }
            if !verifier_log.to_string().trim().is_empty());
        Self::Load { program, reason: describe(error), by_verifier }
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    hook: &Hook,
    variant: Variant,
    kernel: &mut Kernel<'_>,
) -> Result<Link, Failure> {
    let attach = |e| Failure::Attach(describe(e));
    match variant.mechanism {
        Mechanism::RawTracepoint => {
            let program: &mut RawTracePoint =
                program(ebpf, variant.program)?.try_into().map_err(attach)?;
            load_once(variant.program, program.fd().is_ok(), || program.load())?;
            program.attach(hook.name).map(Link::Raw).map_err(attach)
        }
        Mechanism::Tracepoint => {
            if let Some(problem) = kernel.layouts.problem(&hook.id()) {
                return Err(Failure::Attach(problem.to_string()));
            }
            let program: &mut TracePoint =
                program(ebpf, variant.program)?.try_into().map_err(attach)?;
            load_once(variant.program, program.fd().is_ok(), || program.load())?;
            program.attach(hook.category, hook.name).map(Link::Tracepoint).map_err(attach)
        }
        Mechanism::Kprobe => {
            let program: &mut KProbe =
                program(ebpf, variant.program)?.try_into().map_err(attach)?;
            load_once(variant.program, program.fd().is_ok(), || program.load())?;
            let mut links = Vec::new();
            for function in variant.functions {
                match program.attach(function, 0) {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        links.into_iter().for_each(|link| drop(program.detach(link)));
                        return Err(Failure::Attach(format!("{function}: {}", describe(e))));
                    }
                }
            }
            Ok(Link::Kprobe(links))
        }
        Mechanism::Fentry | Mechanism::Fexit => {
            let mut links = Vec::new();
            for (function, name) in variant.functions.iter().zip(variant.fentry_programs) {
                match trampoline_on(ebpf, variant.mechanism, function, name, kernel) {
                    Ok(link) => links.push((*name, link)),
                    Err(failure) => {
                        detach_trampolines(ebpf, links);
                        return Err(failure);
                    }
                }
            }
            Ok(Link::Trampoline(links))
        }
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, Failure> {
    ebpf.program_mut(name)
        .ok_or_else(|| Failure::Attach(format!("program {name} missing from connwatch-ebpf")))
}

/// `name` (a fentry or fexit program) loaded for (bound to) `function`, and attached.
fn trampoline_on(
    ebpf: &mut Ebpf,
    mechanism: Mechanism,
    function: &str,
    name: &'static str,
    kernel: &mut Kernel<'_>,
) -> Result<TrampolineLink, Failure> {
    let btf = kernel.btf()?;
    let program = program(ebpf, name)?;
    let attached = |e| Failure::Attach(format!("{function}: {}", describe(e)));
    if mechanism == Mechanism::Fexit {
        let program: &mut FExit = program.try_into().map_err(attached)?;
        load_once(name, program.fd().is_ok(), || program.load(function, btf))?;
        return program.attach().map(TrampolineLink::Exit).map_err(attached);
    }
    let program: &mut FEntry = program.try_into().map_err(attached)?;
    load_once(name, program.fd().is_ok(), || program.load(function, btf))?;
    program.attach().map(TrampolineLink::Entry).map_err(attached)
}

fn detach_trampolines(ebpf: &mut Ebpf, links: Vec<(&'static str, TrampolineLink)>) {
    for (name, link) in links {
        match link {
            TrampolineLink::Entry(id) => typed::<FEntry>(ebpf, name).map(|p| p.detach(id)),
            TrampolineLink::Exit(id) => typed::<FExit>(ebpf, name).map(|p| p.detach(id)),
        };
    }
}

/// Loads a program unless an earlier hook of its family did (one verification, several
/// attachments).
fn load_once(
    name: &'static str,
    loaded: bool,
    load: impl FnOnce() -> Result<(), ProgramError>,
) -> Result<(), Failure> {
    if loaded { Ok(()) } else { load().map_err(|e| Failure::load(name, e)) }
}

pub fn detach(ebpf: &mut Ebpf, attached: Attached) {
    let name = attached.variant.program;
    // A failed detach leaves the link to be closed when the Ebpf is dropped.
    match attached.link {
        Link::Raw(id) => {
            typed::<RawTracePoint>(ebpf, name).map(|p| p.detach(id));
        }
        Link::Tracepoint(id) => {
            typed::<TracePoint>(ebpf, name).map(|p| p.detach(id));
        }
        Link::Kprobe(ids) => {
            typed::<KProbe>(ebpf, name).map(|p| ids.into_iter().try_for_each(|id| p.detach(id)));
        }
        Link::Trampoline(links) => detach_trampolines(ebpf, links),
    }
}

/// The loaded program `name`, as the type its links need.
fn typed<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)?.try_into().ok()
}

/// An error with its causes, and the verifier's last words when it rejected the program.
fn describe(error: ProgramError) -> String {
    if let ProgramError::LoadError { io_error, verifier_log } = &error {
        // The whole log can run to thousands of lines: its last ones say why.
        let log = verifier_log.to_string();
        if log.trim().is_empty() {
            // Refused before the verifier ran: the program type itself (fentry under a
            // kernel or security policy that forbids tracing programs, say).
            return format!("the kernel refused to load this program type ({io_error})");
        }
        let tail: Vec<&str> = log.lines().rev().filter(|l| !l.trim().is_empty()).take(4).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return format!("the verifier refused it ({io_error}): {}", tail.join(" | "));
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
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
