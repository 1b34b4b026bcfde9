//! Loading one variant's programs, attaching them to their hook, and detaching them.

use std::error::Error as _;

use aya::{
    Btf, Ebpf,
    programs::{
        FEntry, FExit, KProbe, Program, ProgramError, RawTracePoint, TracePoint,
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId,
    },
};

use super::{
    Attached,
    hooks::{Hook, Mechanism, Variant},
    layouts::Layouts,
};

/// A variant's attachments, kept to detach them.
#[derive(Debug)]
pub enum Link {
    /// The lead's link, then its understudy's where the variant has one.
    Raw(RawTracePointLinkId, Option<RawTracePointLinkId>),
    Tracepoint(TracePointLinkId),
    /// One per function.
    Kprobe(Vec<KProbeLinkId>),
    /// `(program, link)` per function.
    Trampoline(Vec<(&'static str, TrampolineLink)>),
}

/// A fentry or fexit program's link.
#[derive(Debug)]
pub enum TrampolineLink {
    Entry(FEntryLinkId),
    Exit(FExitLinkId),
}

/// What attaching needs from the kernel beyond the object: tracefs record layouts, and its
/// BTF for fentry (read on first use).
pub struct Kernel<'a> {
    pub layouts: &'a Layouts,
    pub btf: Option<Btf>,
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
pub enum Failure {
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

pub fn attach_one(
    ebpf: &mut Ebpf,
    hook: &Hook,
    variant: Variant,
    kernel: &mut Kernel<'_>,
) -> Result<Link, Failure> {
    let attach = |e| Failure::Attach(describe(e));
    match variant.mechanism {
        Mechanism::RawTracepoint => {
            let lead = raw_on(ebpf, hook, variant.program)?;
            // The understudy is the lead's own code: where the lead loads, so does it.
            let understudy = match variant.understudy.map(|u| raw_on(ebpf, hook, u.program)) {
                Some(Err(failure)) => {
                    typed::<RawTracePoint>(ebpf, variant.program).map(|p| p.detach(lead));
                    return Err(failure);
                }
                Some(Ok(link)) => Some(link),
                None => None,
            };
            Ok(Link::Raw(lead, understudy))
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
            for (function, name) in variant.functions.iter().zip(variant.per_function) {
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

/// The raw tracepoint program `name`, loaded and attached to `hook`'s tracepoint.
fn raw_on(
    ebpf: &mut Ebpf,
    hook: &Hook,
    name: &'static str,
) -> Result<RawTracePointLinkId, Failure> {
    let attach = |e| Failure::Attach(describe(e));
    let program: &mut RawTracePoint = program(ebpf, name)?.try_into().map_err(attach)?;
    load_once(name, program.fd().is_ok(), || program.load())?;
    program.attach(hook.name).map_err(attach)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Program, Failure> {
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
        Link::Raw(lead, understudy) => {
            typed::<RawTracePoint>(ebpf, name).map(|p| p.detach(lead));
            if let (Some(u), Some(id)) = (attached.variant.understudy, understudy) {
                typed::<RawTracePoint>(ebpf, u.program).map(|p| p.detach(id));
            }
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
    &'a mut P: TryFrom<&'a mut Program>,
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
