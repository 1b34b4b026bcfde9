//! Each process's metric series, found once. Building a process's labels (its name and cgroup,
//! both capped) and finding a series by them cost more than counting the event, and the agent
//! counts millions a second under churn; a series found is kept as its handle (a counter or
//! histogram shares its value with the family's).

use std::collections::HashMap;

use prometheus_client::metrics::counter::Counter;

use crate::{
    decode::{Direction, Owner},
    sinks::{
        metrics::{Metrics, ProcessLabels, ResetLabels},
        shared_histogram::Local,
    },
};

/// Processes whose series are kept; all are forgotten when more come (found again on use).
const PROCESSES_HELD: usize = 4096;

/// A process (pid 0: unknown) by its pid and name: a process renamed by exec is another.
type ProcessKey = (u32, [u8; 16]);

pub struct ProcessSeries {
    labels: ProcessLabels,
    resets: [Option<Counter>; 2],
    retransmits: Option<Counter>,
    /// This thread's observations, added to the family's at each [`SeriesCache::flush`].
    rtt: Option<Local>,
    duration: Option<Local>,
    /// Found since the last flush (its key is in [`SeriesCache::found`]).
    found: bool,
}

impl ProcessSeries {
    /// Series are created on first use: a process with no resets exports no reset series.
    pub fn reset(&mut self, metrics: &Metrics, direction: Direction) -> &Counter {
        let labels = &self.labels;
        self.resets[direction as usize].get_or_insert_with(|| {
            let labels = ResetLabels {
                direction: direction.name().into(),
                comm: labels.comm.clone(),
                cgroup: labels.cgroup.clone(),
            };
            metrics.resets.get_or_create(&labels).clone()
        })
    }

    pub fn retransmits(&mut self, metrics: &Metrics) -> &Counter {
        let labels = &self.labels;
        self.retransmits.get_or_insert_with(|| metrics.retransmits.get_or_create(labels).clone())
    }

    pub fn rtt(&mut self, metrics: &Metrics) -> &mut Local {
        let labels = &self.labels;
        self.rtt.get_or_insert_with(|| metrics.rtt.get_or_create(labels).local())
    }

    pub fn duration(&mut self, metrics: &Metrics) -> &mut Local {
        let labels = &self.labels;
        self.duration.get_or_insert_with(|| metrics.duration.get_or_create(labels).local())
    }

    fn flush(&mut self) {
        self.rtt.iter_mut().chain(&mut self.duration).for_each(Local::flush);
    }
}

#[derive(Default)]
pub struct SeriesCache {
    /// Keys are pids and kernel process names: foldhash rather than SipHash.
    by_process: HashMap<ProcessKey, ProcessSeries, foldhash::fast::RandomState>,
    /// The processes found since the last flush: only they can hold observations, and a
    /// flush after every batch read must not walk thousands of idle processes.
    found: Vec<ProcessKey>,
}

impl SeriesCache {
    pub fn key(owner: Option<&Owner>) -> ProcessKey {
        let mut name = [0; 16];
        if let Some(o) = owner {
            let bytes = o.comm.as_bytes();
            name[..bytes.len()].copy_from_slice(bytes);
        }
        (owner.map_or(0, |o| o.pid), name)
    }

    /// Adds the observations held for the processes found since the last flush (no other
    /// holds any) to the exported histograms.
    pub fn flush(&mut self) {
        for key in self.found.drain(..) {
            if let Some(series) = self.by_process.get_mut(&key) {
                series.found = false;
                series.flush();
            }
        }
    }

    /// The process's series, its labels made by `labels` (comm, cgroup) the first time.
    pub fn get(
        &mut self,
        key: ProcessKey,
        labels: impl FnOnce() -> (String, String),
    ) -> &mut ProcessSeries {
        if !self.by_process.contains_key(&key) && self.by_process.len() >= PROCESSES_HELD {
            // Dropped, each series adds what it holds.
            self.by_process.clear();
            self.found.clear();
        }
        let series = self.by_process.entry(key).or_insert_with(|| {
            let (comm, cgroup) = labels();
            ProcessSeries {
                labels: ProcessLabels { comm, cgroup },
                resets: [None, None],
                retransmits: None,
                rtt: None,
                duration: None,
                found: false,
            }
        });
        if !series.found {
            series.found = true;
            self.found.push(key);
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(registry: &prometheus_client::registry::Registry) -> String {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, registry).unwrap();
        body
    }

    #[test]
    fn a_kept_series_counts_into_the_exported_family_and_unused_ones_stay_absent() {
        let (metrics, registry) = Metrics::new(1 << 20);
        let mut cache = SeriesCache::default();
        let owner = Owner { pid: 7, comm: "nginx".into() };
        let mut made = 0;
        for _ in 0..3 {
            let series = cache.get(SeriesCache::key(Some(&owner)), || {
                made += 1;
                ("nginx".into(), "/system.slice/nginx.service".into())
            });
            series.reset(&metrics, Direction::Tx).inc();
        }
        assert_eq!(made, 1, "labels made once per process");
        let body = page(&registry);
        let line = |name: &str| body.lines().find(|l| l.starts_with(name)).map(str::to_owned);
        let resets = line("connwatch_resets_total{").expect("the reset series");
        assert!(resets.contains("direction=\"tx\"") && resets.ends_with(" 3"), "{resets}");
        assert!(!body.contains("direction=\"rx\""), "no rx series without an rx reset");
        assert!(line("connwatch_retransmits_total{").is_none(), "no retransmit series");
    }

    #[test]
    fn each_flush_adds_what_the_processes_found_since_the_last_one_observed() {
        let (metrics, registry) = Metrics::new(1 << 20);
        let mut cache = SeriesCache::default();
        let observe = |cache: &mut SeriesCache, pid: u32, comm: &str| {
            let key = SeriesCache::key(Some(&Owner { pid, comm: comm.into() }));
            cache.get(key, || (comm.into(), String::new())).rtt(&metrics).observe(0.001);
        };
        let count = |comm: &str| {
            let body = page(&registry);
            let prefix = format!("connwatch_tcp_rtt_seconds_count{{comm=\"{comm}\"");
            body.lines()
                .find(|l| l.starts_with(&prefix))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        observe(&mut cache, 7, "nginx");
        observe(&mut cache, 8, "redis");
        assert_eq!(count("nginx").as_deref(), Some("0"), "held until the flush");
        cache.flush();
        assert_eq!((count("nginx").as_deref(), count("redis").as_deref()), (Some("1"), Some("1")));
        observe(&mut cache, 8, "redis");
        observe(&mut cache, 8, "redis");
        cache.flush();
        assert_eq!((count("nginx").as_deref(), count("redis").as_deref()), (Some("1"), Some("3")));
        assert!(cache.found.is_empty(), "nothing left to flush");
    }

    #[test]
    fn a_renamed_process_and_an_unknown_owner_are_other_processes() {
        let named = Owner { pid: 7, comm: "sh".into() };
        let renamed = Owner { pid: 7, comm: "nginx".into() };
        assert_ne!(SeriesCache::key(Some(&named)), SeriesCache::key(Some(&renamed)));
        assert_ne!(SeriesCache::key(Some(&named)), SeriesCache::key(None));
    }
}
