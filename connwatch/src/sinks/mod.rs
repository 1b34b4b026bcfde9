//! Where events go: aligned human lines or JSON Lines (a public interface: docs/json.md).

pub mod attribution;
pub mod clock;
pub mod findings;
mod human;
mod json;
mod json_line;
pub mod metrics;
pub mod shared_histogram;
pub mod summary;

use std::io;

pub use clock::WallClock;
pub use human::HumanSink;
pub use json::JsonSink;
pub use summary::Summary;

use crate::{correlate::Finding, decode::Event};

/// What was attached, announced once everything is live.
#[derive(Clone, Debug)]
pub struct Ready {
    /// `(hook, mechanism)` for every attached hook.
    pub hooks: Vec<(String, &'static str)>,
    /// `(hook, reason)` for optional hooks this kernel could not attach.
    pub degraded: Vec<(String, String)>,
    /// Hooks whose hits the kernel may skip without counting them (classic tracepoints before
    /// Linux 6.7): losses there go unreported.
    pub uncounted_skips: Vec<String>,
    pub ring_buffer_bytes: u32,
    /// Epoll registrations older than connwatch, learnt from `/proc` at start.
    pub epoll_registrations_seeded: usize,
}

pub trait Sink {
    fn ready(&mut self, ready: &Ready) -> io::Result<()>;
    fn event(&mut self, event: &Event) -> io::Result<()>;
    fn finding(&mut self, finding: &Finding) -> io::Result<()>;
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}
