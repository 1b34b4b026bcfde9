//! A connwatch tracer inside a test, collecting events until the test has what it waits for.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use connwatch::{
    Tracer,
    decode::{Detail, Event},
    probes::{AttachMode, LoadOptions, hooks::Mechanism},
    sinks::Summary,
};

/// Upper bound on waiting for an expected event; reaching it fails the test.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Session {
    pub tracer: Tracer,
    pub events: Vec<Event>,
    /// Ring-buffer records taken so far (a record may hold several events).
    pub records: u64,
    started: Instant,
}

impl Session {
    pub fn start(mut options: LoadOptions) -> Self {
        if options.attach == AttachMode::Auto {
            options.attach = attach_from_env();
        }
        let tracer = Tracer::start(&options).unwrap_or_else(|e| panic!("starting connwatch: {e}"));
        Self { tracer, events: Vec::new(), records: 0, started: Instant::now() }
    }

    /// Checks that the session lost nothing it could have kept, and returns the hits the
    /// kernel skipped, by hook. No record may be lost for want of ring-buffer space. Skips are
    /// the kernel's: a hit that interrupts connwatch's own program on its CPU, where that
    /// program has no understudy (classic tracepoints, kprobes and fentry, as the VM runs them;
    /// see `connwatch::probes::skips`). They are counted, and must stay rare: at most one per
    /// 1,000 events.
    pub fn assert_nothing_lost_but_rare_skips(&self, what: &str) -> BTreeMap<String, u64> {
        let lost = self.tracer.ring_lost_total();
        assert_eq!(lost, 0, "{what}: {lost} records lost for want of ring-buffer space");
        let skips = self.tracer.kernel_skips();
        let skipped: u64 = skips.values().sum();
        assert!(
            skipped * 1000 <= self.events.len() as u64,
            "{what}: the kernel skipped {skipped} hits in {} events: {skips:?}",
            self.events.len()
        );
        skips
    }

    /// Collects events until `done` holds for all collected so far.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&[Event]) -> bool) {
        self.wait(what, None, done);
    }

    /// Like [`Self::wait_until`], but gives up (returning false) once the kernel has skipped a
    /// hit of `hook`: the awaited event may have been that hit (see `connwatch::probes::skips`).
    /// Where this kernel skips `hook`'s hits without counting them, a timeout gives up too.
    pub fn wait_until_unless_skipped(
        &mut self,
        what: &str,
        hook: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> bool {
        self.wait(what, Some(hook), done)
    }

    fn wait(&mut self, what: &str, hook: Option<&str>, done: impl Fn(&[Event]) -> bool) -> bool {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            self.records += self.tracer.poll(&mut self.events) as u64;
            if done(&self.events) {
                return true;
            }
            if hook.is_some_and(|hook| self.tracer.kernel_skips().contains_key(hook)) {
                return false;
            }
            if Instant::now() >= deadline {
                if let Some(hook) = hook.filter(|hook| self.skips_uncounted(hook)) {
                    eprintln!(
                        "timed out waiting for {what}; the kernel may have skipped it on {hook} uncounted"
                    );
                    return false;
                }
                panic!("timed out waiting for {what}; events:\n{}", self.dump());
            }
            self.tracer.wait(Duration::from_millis(50));
        }
    }

    /// Whether this kernel skips `hook`'s hits without counting them.
    fn skips_uncounted(&self, hook: &str) -> bool {
        self.tracer.ready().uncounted_skips.iter().any(|h| h == hook)
    }

    /// Ends tracing: detaches, drains what is left, and returns the account.
    pub fn finish(&mut self) -> Summary {
        self.tracer.detach();
        loop {
            match self.tracer.poll(&mut self.events) {
                0 => break,
                taken => self.records += taken as u64,
            }
        }
        self.tracer.summary(self.started.elapsed())
    }

    pub fn dump(&self) -> String {
        self.events.iter().map(|e| format!("  {}\n", describe(e))).collect()
    }
}

/// `CONNWATCH_TEST_ATTACH=<mode>` (set by `cargo xtask vm-test`) runs every session that does
/// not choose a mechanism itself in that `--attach` mode; unset or `auto`, with each hook's own
/// choice.
pub fn attach_from_env() -> AttachMode {
    let mechanism = match std::env::var("CONNWATCH_TEST_ATTACH").as_deref() {
        Err(_) | Ok("auto") => return AttachMode::Auto,
        Ok("tracepoint") => Mechanism::Tracepoint,
        Ok("raw-tracepoint") => Mechanism::RawTracepoint,
        Ok("kprobe") => Mechanism::Kprobe,
        Ok("fentry") => Mechanism::Fentry,
        Ok(other) => panic!(
            "CONNWATCH_TEST_ATTACH={other}: expected auto, tracepoint, raw-tracepoint, kprobe or \
             fentry"
        ),
    };
    AttachMode::Prefer(mechanism)
}

/// One event on one line, for failure messages.
pub fn describe(e: &Event) -> String {
    let owner = e.owner.as_ref().map_or("?".to_string(), |o| format!("{}/{}", o.pid, o.comm));
    format!("{owner} {} {} -> {} {}", e.sock, e.local, e.remote, e.detail)
}

/// The `(old, new)` state names of a state event.
pub fn transition(e: &Event) -> Option<(&'static str, &'static str)> {
    match &e.detail {
        Detail::State { old, new } => Some((old.name(), new.name())),
        _ => None,
    }
}
