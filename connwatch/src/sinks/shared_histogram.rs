//! A Prometheus histogram that many threads fill without taking turns: each observes into a
//! [`Local`] of its own and adds what it holds to the shared counts in one step
//! ([`Local::flush`], after each batch of events it reads). prometheus-client's `Histogram`
//! takes a mutex per observation: on 16 CPUs the agent's 16 correlator threads, each observing
//! every connection's round-trip times and duration, waited on it, fell behind their ring
//! buffers and lost 11-12% of events (docs/benchmarks.md, session 17). Exported through
//! prometheus-client's own encoder, as its `Histogram` is.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// The shared counts. Clones share them.
#[derive(Clone, Debug)]
pub struct SharedHistogram {
    /// Upper bounds, the last `+Inf`.
    bounds: Arc<[f64]>,
    totals: Arc<Mutex<Totals>>,
}

#[derive(Debug)]
struct Totals {
    /// Observations per bucket (not cumulative), as `bounds`.
    counts: Vec<u64>,
    sum: f64,
}

impl SharedHistogram {
    /// Buckets with these upper bounds (ascending), and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds.into_iter().chain([f64::INFINITY]).collect();
        let totals = Totals { counts: vec![0; bounds.len()], sum: 0.0 };
        Self { bounds, totals: Arc::new(Mutex::new(totals)) }
    }

    /// A thread's own view: its observations stay in it until flushed.
    pub fn local(&self) -> Local {
        let counts = vec![0; self.bounds.len()].into();
        Local { shared: self.clone(), counts, sum: 0.0, observed: 0 }
    }

    fn totals(&self) -> MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Observations one thread made and has not added to the shared counts yet. Dropped, it adds
/// them first.
#[derive(Debug)]
pub struct Local {
    shared: SharedHistogram,
    counts: Box<[u64]>,
    sum: f64,
    /// How many observations `counts` holds: a flush with none is one comparison (the agent
    /// flushes every process's series after each batch it reads).
    observed: u64,
}

impl Local {
    pub fn observe(&mut self, value: f64) {
        // The first bucket whose bound holds it; NaN goes to +Inf, as in prometheus-client.
        let bucket = self.shared.bounds.iter().position(|&bound| value <= bound);
        self.counts[bucket.unwrap_or(self.counts.len() - 1)] += 1;
        self.sum += value;
        self.observed += 1;
    }

    /// Adds what this thread observed to the shared counts, in one step.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.observed) == 0 {
            return;
        }
        let mut totals = self.shared.totals();
        for (total, count) in totals.counts.iter_mut().zip(self.counts.iter_mut()) {
            *total += std::mem::take(count);
        }
        totals.sum += std::mem::take(&mut self.sum);
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.flush();
    }
}

impl TypedMetric for SharedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SharedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, buckets) = {
            let totals = self.totals();
            let counts = totals.counts.iter().copied();
            (totals.sum, self.bounds.iter().copied().zip(counts).collect::<Vec<_>>())
        };
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        metrics::histogram::Histogram,
        registry::{Metric, Registry},
    };

    use super::SharedHistogram;

    fn page(name: &str, metric: impl Metric) -> String {
        let mut registry = Registry::default();
        registry.register(name, "help", metric);
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
        body
    }

    #[test]
    fn exports_what_prometheus_clients_histogram_exports_once_flushed() {
        let bounds = [0.001, 0.01, 0.1];
        let values = [0.0005, 0.001, 0.02, 0.5, 7.0, f64::NAN];
        let theirs = Histogram::new(bounds);
        let ours = SharedHistogram::new(bounds);
        let (mut a, mut b) = (ours.local(), ours.local());
        for (i, &v) in values.iter().enumerate() {
            theirs.observe(v);
            if i % 2 == 0 {
                a.observe(v);
            } else {
                b.observe(v);
            }
        }
        let unflushed = page("h", ours.clone());
        assert!(
            unflushed.lines().any(|l| l == "h_count 0"),
            "nothing before a flush:\n{unflushed}"
        );
        a.flush();
        drop(b);
        // NaN makes both sums NaN: everything else must match line for line.
        let lines = |page: &str| {
            page.lines().filter(|l| !l.starts_with("h_sum")).map(str::to_owned).collect::<Vec<_>>()
        };
        let (theirs, ours) = (page("h", theirs), page("h", ours));
        assert_eq!(lines(&ours), lines(&theirs));
        assert!(ours.lines().any(|l| l == "h_bucket{le=\"+Inf\"} 6"), "{ours}");
    }

    #[test]
    fn sums_what_every_thread_observed() {
        let shared = SharedHistogram::new([1.0, 2.0]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let mut local = shared.local();
                s.spawn(move || {
                    for _ in 0..1000 {
                        local.observe(1.5);
                    }
                    local.flush();
                    local.observe(0.5);
                });
            }
        });
        let body = page("h", shared);
        for line in [
            "h_bucket{le=\"1.0\"} 4",
            "h_bucket{le=\"2.0\"} 4004",
            "h_bucket{le=\"+Inf\"} 4004",
            "h_count 4004",
            "h_sum 6002.0",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
        }
    }
}
