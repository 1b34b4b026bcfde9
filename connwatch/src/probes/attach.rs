//! Attaching each hook with the best mechanism the running kernel offers.

use std::error::Error as _;

use aya::{
    Ebpf,
    programs::{
        ProgramError, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};

use super::{
    AttachMode, ProbeError,
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
    // Programs the kernel refused: a family's other hooks do not ask again (a refusal can
    // cost the verifier seconds).
    let mut refused: Vec<(&'static str, String)> = Vec::new();
    for hook in HOOKS {
        if let Some(primary) = hook.instead_of
            && attached.iter().any(|a| a.hook.id() == primary)
        {
            continue;
        }
        let mut reasons = Vec::new();
        let mut live = None;
        let variants = if left_out.contains(&hook.id()) {
            reasons.push("left out by request".to_string());
            Vec::new()
        } else if !tracefs::exists(hook.category, hook.name) {
            reasons.push(format!("this kernel has no {} tracepoint", hook.id()));
            Vec::new()
        } else {
            preference(hook, mode)
        };
        for variant in variants {
            if let Some((_, reason)) = refused.iter().find(|(p, _)| *p == variant.program) {
                reasons.push(format!("{}: {reason}", variant.mechanism));
                continue;
            }
            match attach_one(ebpf, hook, variant, layouts) {
                Ok(link) => {
                    live = Some(Attached { hook, variant, link });
                    break;
                }
                Err(Failure::Load(reason)) => {
                    reasons.push(format!("{}: {reason}", variant.mechanism));
                    refused.push((variant.program, reason));
                }
                Err(Failure::Attach(reason)) => {
                    reasons.push(format!("{}: {reason}", variant.mechanism))
                }
            }
        }
        match (live, hook.role) {
            (Some(live), _) => {
                if let Some(gives_up) = live.variant.gives_up {
                    let reason = format!("reduced: {gives_up} ({})", reasons.join("; "));
                    skipped.push(Skipped { hook, reason });
                }
                attached.push(live)
            }
            (None, Role::Events) => {
                return Err(ProbeError::Attach { hook: hook.id(), reasons: reasons.join("; ") });
            }
            (None, Role::Observation | Role::Precision(_)) => {
                let stand_ins = HOOKS.iter().filter(|h| h.instead_of == Some(&hook.id())).count();
                let consequence = match stand_ins {
                    0 => format!("without it, {}", hook.role.without()),
                    n => format!("{n} syscall hooks stand in for it"),
                };
                skipped.push(Skipped {
                    hook,
                    reason: format!("unavailable: {} ({consequence})", reasons.join("; ")),
                })
            }
        }
    }
    Ok((attached, skipped))
}

/// The hook's variants, with the preferred mechanism (if any) moved to the front.
fn preference(hook: &Hook, mode: AttachMode) -> Vec<Variant> {
    let mut variants = hook.variants.to_vec();
    if let AttachMode::Prefer(mechanism) = mode {
        variants.sort_by_key(|v| v.mechanism != mechanism);
    }
    variants
}

/// Why a variant did not attach: the program was refused (by the verifier, say), or it loaded
/// and this hook would not take it.
enum Failure {
    Load(String),
    Attach(String),
}

fn attach_one(
    ebpf: &mut Ebpf,
    hook: &Hook,
    variant: Variant,
    layouts: &Layouts,
) -> Result<Link, Failure> {
    let program = ebpf.program_mut(variant.program).ok_or_else(|| {
        Failure::Load(format!("program {} missing from connwatch-ebpf", variant.program))
    })?;
    let attach = |e| Failure::Attach(describe(e));
    match variant.mechanism {
        Mechanism::RawTracepoint => {
            let program: &mut RawTracePoint = program.try_into().map_err(attach)?;
            load_once(program.fd().is_ok(), || program.load())?;
            program.attach(hook.name).map(Link::Raw).map_err(attach)
        }
        Mechanism::Tracepoint => {
            if let Some(problem) = layouts.problem(&hook.id()) {
                return Err(Failure::Attach(problem.to_string()));
            }
            let program: &mut TracePoint = program.try_into().map_err(attach)?;
            load_once(program.fd().is_ok(), || program.load())?;
            program.attach(hook.category, hook.name).map(Link::Tracepoint).map_err(attach)
        }
    }
}

/// Loads a program unless an earlier hook of its family did (one verification, several
/// attachments).
fn load_once(loaded: bool, load: impl FnOnce() -> Result<(), ProgramError>) -> Result<(), Failure> {
    if loaded { Ok(()) } else { load().map_err(|e| Failure::Load(describe(e))) }
}

pub fn detach(ebpf: &mut Ebpf, attached: Attached) {
    let Some(program) = ebpf.program_mut(attached.variant.program) else {
        return;
    };
    // A failed detach leaves the link to be closed when the Ebpf is dropped.
    let _ = match attached.link {
        Link::Raw(id) => <&mut RawTracePoint>::try_from(program).and_then(|p| p.detach(id)),
        Link::Tracepoint(id) => <&mut TracePoint>::try_from(program).and_then(|p| p.detach(id)),
    };
}

/// An error with its causes, and the verifier's last words when it rejected the program.
fn describe(error: ProgramError) -> String {
    if let ProgramError::LoadError { io_error, verifier_log } = &error {
        // The whole log can run to thousands of lines: its last ones say why.
        let log = verifier_log.to_string();
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
