//! Prometheus metrics (the official `prometheus-client` crate): what the agent exports.
//! Names are a stable interface (dashboards and alerts depend on them); labels are bounded:
//! never pid, port, address, fd or socket id (those are in the JSON findings), and comm and
//! cgroup values are capped (`--max-label-values`, then `other`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets},
    registry::Registry,
};

use super::shared_histogram::SharedHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub kind: String,
    pub comm: String,
    pub cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    pub comm: String,
    pub cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResetLabels {
    pub direction: String,
    pub comm: String,
    pub cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

/// The name of every metric the agent exports, as it appears in the exposition (counters
/// with `_total`). Dashboards may query these and nothing else; a family shows on /metrics
/// once it has a series.
pub const EXPORTED: &[&str] = &[
    "connwatch_findings_total",
    "connwatch_problem_sockets",
    "connwatch_sockets",
    "connwatch_resets_total",
    "connwatch_retransmits_total",
    "connwatch_tcp_rtt_seconds",
    "connwatch_connection_duration_seconds",
    "connwatch_events_total",
    "connwatch_events_lost_total",
    "connwatch_events_skipped_total",
    "connwatch_tracked_sockets",
    "connwatch_sockets_evicted_total",
    "connwatch_findings_withheld_total",
    "connwatch_ring_buffer_bytes",
    "connwatch_ring_buffer_used_bytes",
    "connwatch_network_namespaces",
    "connwatch_build_info",
];

/// Every metric the agent exports. Clones share the same values.
#[derive(Clone)]
pub struct Metrics {
    pub findings: Family<FindingLabels, Counter>,
    pub problem_sockets: Family<FindingLabels, Gauge>,
    pub sockets: Family<StateLabels, Gauge>,
    pub resets: Family<ResetLabels, Counter>,
    pub retransmits: Family<ProcessLabels, Counter>,
    /// Filled by every correlator thread: see [`SharedHistogram`].
    pub rtt: Family<ProcessLabels, SharedHistogram, fn() -> SharedHistogram>,
    pub duration: Family<ProcessLabels, SharedHistogram, fn() -> SharedHistogram>,
    pub events: Family<TypeLabels, Counter>,
    pub events_lost: Family<TypeLabels, Counter>,
    pub events_skipped: Family<HookLabels, Counter>,
    pub tracked_sockets: Gauge,
    pub sockets_evicted: Counter,
    pub findings_withheld: Counter,
    pub ring_buffer_bytes: Gauge,
    pub ring_buffer_used_bytes: Gauge,
    pub network_namespaces: Gauge,
}

impl Metrics {
    /// The metrics, and the registry that exposes them (read-only from then on).
    pub fn new(ring_buffer_bytes: u32) -> (Self, Arc<Registry>) {
        let metrics = Self {
            findings: Family::default(),
            problem_sockets: Family::default(),
            sockets: Family::default(),
            resets: Family::default(),
            retransmits: Family::default(),
            // 10 µs (loopback) to ~21 s.
            rtt: Family::new_with_constructor(|| {
                SharedHistogram::new(exponential_buckets(1e-5, 2.0, 22))
            }),
            // 1 ms to ~12 days.
            duration: Family::new_with_constructor(|| {
                SharedHistogram::new(exponential_buckets(1e-3, 4.0, 15))
            }),
            events: Family::default(),
            events_lost: Family::default(),
            events_skipped: Family::default(),
            tracked_sockets: Gauge::default(),
            sockets_evicted: Counter::default(),
            findings_withheld: Counter::default(),
            ring_buffer_bytes: Gauge::default(),
            ring_buffer_used_bytes: Gauge::default(),
            network_namespaces: Gauge::default(),
        };
        metrics.ring_buffer_bytes.set(i64::from(ring_buffer_bytes));
        let mut r = Registry::with_prefix("connwatch");
        let m = metrics.clone();
        r.register("findings", "Misjudged liveness found, by kind and process", m.findings);
        r.register(
            "problem_sockets",
            "Sockets in a finding's condition now (a CLOSE_WAIT leak still open, a half-open \
             connection still written to); falls when the socket closes",
            m.problem_sockets,
        );
        r.register(
            "sockets",
            "TCP sockets on the host by state, every network namespace (sock_diag)",
            m.sockets,
        );
        r.register("resets", "TCP resets received (rx) or sent (tx), by process", m.resets);
        r.register("retransmits", "TCP retransmissions, by process", m.retransmits);
        r.register(
            "tcp_rtt_seconds",
            "Smoothed RTT of connections, as their reads and writes found it, by process",
            m.rtt,
        );
        r.register(
            "connection_duration_seconds",
            "How long connections lived, from connect, listen or accept to CLOSE, by process",
            m.duration,
        );
        r.register("events", "Kernel records delivered, by type", m.events);
        r.register("events_lost", "Kernel records lost (ring buffer full), by type", m.events_lost);
        r.register(
            "events_skipped",
            "Hook hits the kernel skipped because a BPF program was already running on that CPU \
             (events lost), by hook",
            m.events_skipped,
        );
        r.register("tracked_sockets", "Sockets the correlator tracks now", m.tracked_sockets);
        r.register(
            "sockets_evicted",
            "Sockets dropped from tracking because --max-sockets was reached",
            m.sockets_evicted,
        );
        r.register(
            "findings_withheld",
            "Timer findings not reported because events were lost while they ripened",
            m.findings_withheld,
        );
        r.register("ring_buffer_bytes", "Size of the kernel ring buffer", m.ring_buffer_bytes);
        r.register(
            "ring_buffer_used_bytes",
            "Bytes waiting in the kernel ring buffer when it was last drained (against \
             connwatch_ring_buffer_bytes: how close it came to losing events)",
            m.ring_buffer_used_bytes,
        );
        r.register(
            "network_namespaces",
            "Network namespaces the last inventory covered",
            m.network_namespaces,
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("build_info", "connwatch's version", build);
        (metrics, Arc::new(r))
    }
}

/// The exposition for a scrape: OpenMetrics when the scraper asks for it, otherwise the
/// Prometheus text format. Returns (content type, body).
pub fn expose(registry: &Registry, accept: Option<&str>) -> (&'static str, Bytes) {
    // Encoded straight into the buffer that becomes the response body: no copy on the way out.
    let mut body = BytesMut::new();
    // Writing into memory cannot fail.
    let content_type = if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        let _ = prometheus_client::encoding::text::encode(&mut body, registry);
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, registry);
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (content_type, body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_lists_every_metric_once_each_has_a_series() {
        let (m, registry) = Metrics::new(1);
        let p = || ProcessLabels { comm: "c".into(), cgroup: "/".into() };
        let f = FindingLabels { kind: "k".into(), comm: "c".into(), cgroup: "/".into() };
        m.findings.get_or_create(&f).inc();
        m.problem_sockets.get_or_create(&f).inc();
        m.sockets.get_or_create(&StateLabels { state: "LISTEN".into() }).inc();
        let r = ResetLabels { direction: "rx".into(), comm: "c".into(), cgroup: "/".into() };
        m.resets.get_or_create(&r).inc();
        m.retransmits.get_or_create(&p()).inc();
        m.rtt.get_or_create(&p()).local().observe(0.001);
        m.duration.get_or_create(&p()).local().observe(2.0);
        m.events.get_or_create(&TypeLabels { r#type: "state".into() }).inc();
        m.events_lost.get_or_create(&TypeLabels { r#type: "state".into() }).inc();
        m.events_skipped
            .get_or_create(&HookLabels { hook: "sock:inet_sock_set_state".into() })
            .inc();
        let (_, page) = expose(&registry, None);
        let page = std::str::from_utf8(&page).expect("the page is text");
        let mut names: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        names.sort_unstable();
        let mut expected = EXPORTED.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    #[test]
    fn names_are_fixed_and_both_formats_are_served() {
        let (m, registry) = Metrics::new(1 << 20);
        let labels = FindingLabels {
            kind: "close-wait-leak".into(),
            comm: "app".into(),
            cgroup: "/x".into(),
        };
        m.findings.get_or_create(&labels).inc();
        m.sockets.get_or_create(&StateLabels { state: "CLOSE_WAIT".into() }).set(3);
        let (kind, text) = expose(&registry, None);
        let text = std::str::from_utf8(&text).expect("the page is text");
        assert!(kind.starts_with("text/plain; version=0.0.4"));
        assert!(text.contains(
            "connwatch_findings_total{kind=\"close-wait-leak\",comm=\"app\",cgroup=\"/x\"} 1"
        ));
        assert!(text.contains("connwatch_sockets{state=\"CLOSE_WAIT\"} 3"));
        assert!(text.contains("connwatch_build_info{version="));
        let (kind, open) = expose(&registry, Some("application/openmetrics-text;version=1.0.0"));
        assert!(kind.starts_with("application/openmetrics-text"));
        assert!(open.ends_with(b"# EOF\n"));
    }
}
