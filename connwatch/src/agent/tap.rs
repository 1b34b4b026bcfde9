//! What the agent does with each event before its correlator joins it: count it in the
//! metrics, give it the identity the inventory knows its socket by, and note the connections
//! that ended. It runs on whichever thread reads the event's ring buffer.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use connwatch_common::socket::BIRTH_ADOPTED;

use super::series::SeriesCache;
use crate::{
    correlate::Tap,
    decode::{Detail, Event, SockId},
    sinks::{
        attribution::{Attribution, AttributionCache, LabelCap},
        metrics::Metrics,
    },
};

/// Bounded labels for the processes that own sockets, shared by every thread that labels.
pub struct Labeler {
    attribution: AttributionCache,
    comms: LabelCap,
    cgroups: LabelCap,
}

impl Labeler {
    pub fn new(max_label_values: usize) -> Self {
        Self {
            attribution: AttributionCache::new(4096),
            comms: LabelCap::new(max_label_values),
            cgroups: LabelCap::new(max_label_values),
        }
    }

    /// Bounded labels (comm, cgroup) for a socket's owner, and its attribution.
    pub fn labels(&mut self, owner: Option<u32>, comm: &str) -> (String, String, Attribution) {
        let attribution = owner.map(|pid| self.attribution.get(pid)).unwrap_or_default();
        let comm = self.comms.value(if comm.is_empty() { "unknown" } else { comm });
        let cgroup = self.cgroups.value(&attribution.cgroup);
        (comm, cgroup, attribution)
    }
}

/// Sockets first known from the startup inventory, and the kernel identities joined to them.
#[derive(Default)]
pub struct Joins {
    /// Sockets the inventory found in CLOSE_WAIT: by endpoints, with their cookie and identity.
    pub seen_at_start: HashMap<(SocketAddr, SocketAddr), (u64, SockId)>,
    /// Kernel identities of sockets first known from the inventory.
    pub aliases: HashMap<SockId, SockId>,
}

impl Joins {
    /// The identity the inventory gave `event`'s socket, when it has one: a socket older than
    /// the agent is known by its endpoints until the kernel reports it, and the kernel meets
    /// it mid-life, under an adopted (odd) birth. A new connection that happens to reuse the
    /// endpoints has a birth the kernel saw, and stays its own.
    fn joined(&mut self, event: &Event) -> Option<SockId> {
        if let Some(alias) = self.aliases.get(&event.sock) {
            return Some(*alias);
        }
        let (_, seen) = *self.seen_at_start.get(&(event.local, event.remote))?;
        self.aliases.insert(event.sock, seen);
        Some(seen)
    }
}

/// One thread's tap.
pub struct AgentTap {
    metrics: Metrics,
    /// Each process's series, found once (per thread).
    series: SeriesCache,
    labeler: Arc<Mutex<Labeler>>,
    joins: Arc<RwLock<Joins>>,
    ended: Vec<SockId>,
}

impl AgentTap {
    pub fn new(metrics: Metrics, labeler: Arc<Mutex<Labeler>>, joins: Arc<RwLock<Joins>>) -> Self {
        Self { metrics, series: SeriesCache::default(), labeler, joins, ended: Vec::new() }
    }
}

impl Tap for AgentTap {
    fn tap(&mut self, event: &mut Event) {
        let owner = event.owner.as_ref();
        let labeler = &self.labeler;
        let labels = || {
            let comm = owner.map(|o| o.comm.to_string()).unwrap_or_default();
            let mut labeler = labeler.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (comm, cgroup, _) = labeler.labels(owner.map(|o| o.pid), &comm);
            (comm, cgroup)
        };
        let metrics = &self.metrics;
        match &event.detail {
            Detail::Reset { direction, .. } => {
                let series = self.series.get(SeriesCache::key(owner), labels);
                series.reset(metrics, *direction).inc();
            }
            Detail::Retransmit { .. } => {
                self.series.get(SeriesCache::key(owner), labels).retransmits(metrics).inc();
            }
            Detail::Send { snapshot, .. } | Detail::Recv { snapshot, .. }
                if snapshot.srtt_us > 0 =>
            {
                let rtt = f64::from(snapshot.srtt_us) / 1e6;
                self.series.get(SeriesCache::key(owner), labels).rtt(metrics).observe(rtt);
            }
            // A life measured from its birth (connect, listen, a listener's child); sockets
            // older than the agent have no birth to measure from.
            Detail::State { new, .. }
                if new.name() == "CLOSE"
                    && owner.is_some()
                    && event.sock.birth_ns & BIRTH_ADOPTED == 0
                    && event.sock.birth_ns < event.ts_ns =>
            {
                let lived = (event.ts_ns - event.sock.birth_ns) as f64 / 1e9;
                self.series.get(SeriesCache::key(owner), labels).duration(metrics).observe(lived);
            }
            _ => {}
        }
        // Only adopted identities are ever joined: other events need no lock.
        if event.sock.birth_ns & BIRTH_ADOPTED != 0 {
            let mut joins = self.joins.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(sock) = joins.joined(event) {
                event.sock = sock;
            }
        }
        if ends_connection(&event.detail) {
            self.ended.push(event.sock);
        }
    }

    fn ended(&mut self) -> Vec<SockId> {
        std::mem::take(&mut self.ended)
    }

    fn flush(&mut self) {
        self.series.flush();
    }
}

/// Events after which the connection is over for the application.
fn ends_connection(detail: &Detail) -> bool {
    match detail {
        Detail::Close { others, .. } => *others == 0,
        Detail::State { new, .. } => new.name() == "CLOSE",
        Detail::Seen { state, .. } => state.name() == "CLOSE",
        Detail::Destroy { .. } => true,
        _ => false,
    }
}
