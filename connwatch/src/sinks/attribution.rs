//! Who a process is, as operators group processes: its cgroup v2 path, and the container,
//! Kubernetes pod or systemd unit that path shows.

use std::{collections::HashMap, fs};

/// Where a process lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The cgroup v2 path (`/system.slice/nginx.service`); empty when unknown (process gone).
    pub cgroup: String,
    /// A container id (docker, containerd, cri-o), when the path shows one.
    pub container: Option<String>,
    /// A Kubernetes pod uid, when the path shows one.
    pub pod: Option<String>,
    /// A systemd unit (`nginx.service`), when the path ends in one.
    pub unit: Option<String>,
}

impl Attribution {
    /// Parses a cgroup v2 path.
    pub fn of_path(path: &str) -> Self {
        let mut found = Self { cgroup: path.to_string(), ..Self::default() };
        for part in path.split('/') {
            if let Some(uid) = pod_uid(part) {
                found.pod = Some(uid);
            }
            if let Some(id) = container_id(part) {
                found.container = Some(id);
            }
        }
        found.unit = path
            .rsplit('/')
            .next()
            .filter(|last| last.ends_with(".service") && found.container.is_none())
            .map(str::to_string);
        found
    }
}

/// `kubepods-burstable-pod1234_5678.slice` (systemd driver) or `pod1234-5678` (cgroupfs).
fn pod_uid(part: &str) -> Option<String> {
    let at = part.rfind("pod")?;
    let uid = part[at + 3..].trim_end_matches(".slice").replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// `docker-<64 hex>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, or a bare
/// 64-hex directory (`/docker/<id>`, cgroupfs drivers).
fn container_id(part: &str) -> Option<String> {
    let trimmed = part.trim_end_matches(".scope");
    let id = ["docker-", "cri-containerd-", "crio-", "containerd-", "libpod-"]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))
        .unwrap_or(trimmed);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// The cgroup v2 path of a process, from /proc/PID/cgroup (`0::/path`).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_string)
}

/// Attributions by pid, looked up once per process (bounded; the oldest half is dropped when
/// full, and a reused pid is looked up again after that).
pub struct AttributionCache {
    by_pid: HashMap<u32, (u64, Attribution)>,
    lookups: u64,
    capacity: usize,
}

impl AttributionCache {
    pub fn new(capacity: usize) -> Self {
        Self { by_pid: HashMap::new(), lookups: 0, capacity: capacity.max(2) }
    }

    pub fn get(&mut self, pid: u32) -> Attribution {
        if let Some((_, found)) = self.by_pid.get(&pid) {
            return found.clone();
        }
        if self.by_pid.len() >= self.capacity {
            let mut ages: Vec<u64> = self.by_pid.values().map(|(age, _)| *age).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.by_pid.retain(|_, (age, _)| *age > cutoff);
        }
        self.lookups += 1;
        let found = cgroup_of(pid).map(|path| Attribution::of_path(&path)).unwrap_or_default();
        self.by_pid.insert(pid, (self.lookups, found.clone()));
        found
    }
}

/// Caps how many distinct values a label may take: the first `max` are kept, every later one
/// becomes `other`, so a host with thousands of short-lived process names cannot blow up the
/// series count.
pub struct LabelCap {
    max: usize,
    kept: std::collections::HashSet<String>,
}

pub const OVERFLOW: &str = "other";

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self { max, kept: Default::default() }
    }

    pub fn value(&mut self, value: &str) -> String {
        if self.kept.contains(value) {
            return value.to_string();
        }
        if self.kept.len() < self.max {
            self.kept.insert(value.to_string());
            return value.to_string();
        }
        OVERFLOW.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_pods_and_units_are_recognised() {
        let id = "4f1c2b9d8e7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";
        let docker = Attribution::of_path(&format!("/system.slice/docker-{id}.scope"));
        assert_eq!((docker.container.as_deref(), docker.unit), (Some(id), None));
        let k8s = Attribution::of_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{id}.scope"
        ));
        assert_eq!(k8s.pod.as_deref(), Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        assert_eq!(k8s.container.as_deref(), Some(id));
        let unit = Attribution::of_path("/system.slice/nginx.service");
        assert_eq!((unit.unit.as_deref(), unit.container), (Some("nginx.service"), None));
        let plain = Attribution::of_path("/user.slice/user-0.slice/session-3.scope");
        assert_eq!((plain.container, plain.pod, plain.unit), (None, None, None));
    }

    #[test]
    fn label_values_are_capped_with_an_overflow_value() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.value("nginx"), "nginx");
        assert_eq!(cap.value("redis"), "redis");
        assert_eq!(cap.value("postgres"), OVERFLOW);
        assert_eq!(cap.value("nginx"), "nginx", "kept values stay");
    }
}
